"""The UAPI codec (tunneld/proto/wg/uapi.py) against wireguard.com/xplatform's examples and
wireguard-go's semantics: framing, every key, folding of peer blocks, errnos, bounds."""

from __future__ import annotations

import errno
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunneld.proto.wg.uapi import (
    GET,
    ZERO_KEY,
    DeviceState,
    PeerState,
    PeerUpdate,
    ReplacePeers,
    SetFwmark,
    SetListenPort,
    SetPrivateKey,
    UapiError,
    UapiReader,
    parse_set,
    render_errno,
    render_get,
)

K1, K2, K3 = bytes(range(32)), bytes(range(1, 33)), bytes([0xAB] * 32)
net = ipaddress.ip_network

# The example set request of wireguard.com/xplatform (keys as written there).
XPLATFORM_SET = (
    "set=1\n"
    "private_key=e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a\n"
    "fwmark=0\n"
    "listen_port=12912\n"
    "replace_peers=true\n"
    "public_key=b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33\n"
    "preshared_key=188515093e952f5f22e865cef3012e72f8b5f0b598ac0309d5dacce3b70fcf52\n"
    "replace_allowed_ips=true\n"
    "allowed_ip=192.168.4.4/32\n"
    "endpoint=[abcd:23::33%2]:51820\n"
    "public_key=58402e695ba1772b1cc9309755f043251ea77fdcf10fbe63989ceb7e19321376\n"
    "replace_allowed_ips=true\n"
    "allowed_ip=192.168.4.6/32\n"
    "persistent_keepalive_interval=111\n"
    "endpoint=182.122.22.19:3233\n"
    "public_key=662e14fd594556f522604703340351258903b64f35553763f19426ab2a515c58\n"
    "endpoint=5.152.198.39:51820\n"
    "replace_allowed_ips=true\n"
    "allowed_ip=192.168.4.10/32\n"
    "allowed_ip=192.168.4.11/32\n"
    "public_key=e818b58db5274087fcc1be5dc728cf53d3b5726b4cef6b9bab8f8f8c2452c25c\n"
    "remove=true\n"
    "\n"
)


def one(data: str | bytes):
    reader = UapiReader()
    reader.feed(data.encode() if isinstance(data, str) else data)
    return reader.next_request()


def bad(data: str | bytes) -> UapiError:
    with pytest.raises(UapiError) as info:
        one(data)
    return info.value


def test_xplatform_example_parses_to_the_documented_operations():
    ops = one(XPLATFORM_SET)
    assert ops[:4] == [
        SetPrivateKey(bytes.fromhex(XPLATFORM_SET.split("\n")[1].split("=")[1])),
        SetFwmark(0),
        SetListenPort(12912),
        ReplacePeers(),
    ]
    first, second, third, fourth = ops[4:]
    assert first.replace_allowed_ips and first.allowed_ips == (net("192.168.4.4/32"),)
    assert first.endpoint == (ipaddress.ip_address("abcd:23::33%2"), 51820)
    assert first.preshared_key is not None and not first.remove
    assert second.persistent_keepalive_interval == 111
    assert second.endpoint == (ipaddress.ip_address("182.122.22.19"), 3233)
    assert third.allowed_ips == (net("192.168.4.10/32"), net("192.168.4.11/32"))
    assert fourth.remove and fourth.allowed_ips == ()


def test_get_framing_and_several_requests_on_one_connection():
    reader = UapiReader()
    reader.feed(b"get=1\n\nset=1\nlisten_port=1\n\nget")
    assert reader.next_request() is GET
    assert reader.next_request() == [SetListenPort(1)]
    assert reader.next_request() is None  # incomplete: more bytes needed
    reader.feed(b"=1\n")
    assert reader.next_request() is None
    reader.feed(b"\n")
    assert reader.next_request() is GET


def test_byte_at_a_time_gives_the_same_requests():
    reader, got = UapiReader(), []
    for b in (XPLATFORM_SET + "get=1\n\n").encode():
        reader.feed(bytes([b]))
        req = reader.next_request()
        if req is not None:
            got.append(req)
    assert got == [one(XPLATFORM_SET), GET]


def test_empty_set_is_a_no_op_and_zero_keys_mean_none():
    assert one("set=1\n\n") == []
    ops = one(f"set=1\nprivate_key={ZERO_KEY.hex()}\npublic_key={K1.hex()}\n"
              f"preshared_key={ZERO_KEY.hex()}\n\n")  # fmt: skip
    assert ops == [SetPrivateKey(None), PeerUpdate(K1, preshared_key=ZERO_KEY)]


def test_peer_blocks_fold_like_wireguard_go_line_by_line():
    ops = one(f"set=1\npublic_key={K1.hex()}\nallowed_ip=10.0.0.0/24\nreplace_allowed_ips=true\n"
              "allowed_ip=10.1.0.1/24\nendpoint=1.2.3.4:5\nendpoint=[::1]:6\n"
              "persistent_keepalive_interval=25\npersistent_keepalive_interval=0\n"
              f"public_key={K2.hex()}\nremove=true\nallowed_ip=10.9.0.0/16\n"
              f"public_key={K3.hex()}\nupdate_only=true\nprotocol_version=1\n\n")  # fmt: skip
    a, b, c = ops
    assert a.replace_allowed_ips and a.allowed_ips == (net("10.1.0.0/24"),)  # host bits masked
    assert a.endpoint == (ipaddress.ip_address("::1"), 6)
    assert a.persistent_keepalive_interval == 0
    assert b == PeerUpdate(K2, remove=True)  # lines after remove are checked, not applied
    assert c == PeerUpdate(K3, update_only=True)


def test_eof_applies_a_cut_off_set_like_wireguard_go():
    reader = UapiReader()
    reader.feed(b"set=1\nlisten_port=7")
    assert reader.next_request() is None
    assert reader.finish() == [SetListenPort(7)]
    reader = UapiReader()
    reader.feed(b"get=1\n")
    assert reader.finish() is None


@pytest.mark.parametrize(
    ("request_text", "code"),
    [
        ("set=1\nlisten_port\n\n", errno.EPROTO),  # no '='
        ("set=1\nlisten_port=65536\n\n", errno.EINVAL),
        ("set=1\nlisten_port=-1\n\n", errno.EINVAL),
        ("set=1\nlisten_port=+1\n\n", errno.EINVAL),
        ("set=1\nlisten_port= 1\n\n", errno.EINVAL),
        ("set=1\nlisten_port=0x10\n\n", errno.EINVAL),
        ("set=1\nfwmark=4294967296\n\n", errno.EINVAL),
        ("set=1\nreplace_peers=false\n\n", errno.EINVAL),
        ("set=1\nprivate_key=00\n\n", errno.EINVAL),
        ("set=1\nprivate_key=" + "g" * 64 + "\n\n", errno.EINVAL),
        ("set=1\nprivate_key=" + " 0" * 32 + "\n\n", errno.EINVAL),  # fromhex would take it
        ("set=1\nbogus=1\n\n", errno.EINVAL),
        ("set=1\n=1\n\n", errno.EINVAL),
        ("set=1\nallowed_ip=10.0.0.0/8\n\n", errno.EINVAL),  # a peer key before any peer
        (f"set=1\npublic_key={K1.hex()}\nlisten_port=1\n\n", errno.EINVAL),  # device key after
        (f"set=1\npublic_key={K1.hex()}\nallowed_ip=10.0.0.1\n\n", errno.EINVAL),  # no /len
        (f"set=1\npublic_key={K1.hex()}\nallowed_ip=10.0.0.0/33\n\n", errno.EINVAL),
        (f"set=1\npublic_key={K1.hex()}\nallowed_ip=host/32\n\n", errno.EINVAL),
        (f"set=1\npublic_key={K1.hex()}\nendpoint=example.com:1\n\n", errno.EINVAL),
        (f"set=1\npublic_key={K1.hex()}\nendpoint=1.2.3.4\n\n", errno.EINVAL),
        (f"set=1\npublic_key={K1.hex()}\nendpoint=1.2.3.4:65536\n\n", errno.EINVAL),
        (f"set=1\npublic_key={K1.hex()}\nendpoint=::1:5\n\n", errno.EINVAL),  # v6 needs []
        (f"set=1\npublic_key={K1.hex()}\nendpoint=[1.2.3.4]:5\n\n", errno.EINVAL),
        (f"set=1\npublic_key={K1.hex()}\nremove=yes\n\n", errno.EINVAL),
        (f"set=1\npublic_key={K1.hex()}\nupdate_only=1\n\n", errno.EINVAL),
        (f"set=1\npublic_key={K1.hex()}\nprotocol_version=2\n\n", errno.EINVAL),
        (f"set=1\npublic_key={K1.hex()}\npersistent_keepalive_interval=65536\n\n", errno.EINVAL),
        (f"set=1\npublic_key={K1.hex()}\nremove=true\nallowed_ip=x\n\n", errno.EINVAL),
        ("get=1\nprivate_key=00\n\n", errno.EINVAL),
        ("set=1\nlisten_port=\xe9\n\n", errno.EINVAL),
    ],
)
def test_malformed_set_lines_get_wireguard_go_errnos(request_text, code):
    err = bad(request_text.encode("latin-1"))
    assert err.errno == code and not err.fatal
    assert render_errno(err.errno) == f"errno=-{code}\n\n".encode()


def test_a_malformed_request_leaves_the_connection_in_sync():
    reader = UapiReader()
    reader.feed(b"set=1\nlisten_port=x\nfwmark=1\n\nget=1\n\n")
    with pytest.raises(UapiError):
        reader.next_request()
    assert reader.next_request() is GET


@pytest.mark.parametrize("data", [b"nope=1\n\n", b"\n", b"get=2\n\n"])
def test_unknown_operations(data):
    err = bad(data)
    assert err.errno == errno.EINVAL


def test_request_size_and_line_count_are_bounded():
    reader = UapiReader(max_bytes=1000, max_lines=10)
    reader.feed(b"set=1\n" + b"fwmark=1\n" * 20)
    with pytest.raises(UapiError) as info:
        reader.next_request()
    assert info.value.errno == errno.EMSGSIZE and info.value.fatal and reader.broken
    reader.feed(b"get=1\n\n")  # a broken connection reads nothing more
    assert reader.next_request() is None
    reader = UapiReader(max_bytes=100, max_lines=1000)
    reader.feed(b"set=1\n" + b"x" * 200)  # one long line, no end yet
    with pytest.raises(UapiError) as info:
        reader.next_request()
    assert info.value.errno == errno.EMSGSIZE
    reader = UapiReader(max_bytes=100)
    reader.feed(b"set=1\n" + b"fwmark=1\n" * 20 + b"\n")  # complete but too large
    with pytest.raises(UapiError):
        reader.next_request()


def test_render_get_matches_wireguard_go_layout():
    peer = PeerState(K2, None, ("10.0.0.2", 51820), 1_700_000_000_123_456_789, 10, 20, 25,
                     (net("10.0.0.2/32"), net("fd00::/64")))  # fmt: skip
    six = PeerState(K3, K1, ("fd00::2", 5, 0, 0), 0, 0, 0, 0, ())
    text = render_get(DeviceState(K1, 51820, 0x1234, (peer, six))).decode()
    assert text == (
        f"private_key={K1.hex()}\nlisten_port=51820\nfwmark=4660\n"
        f"public_key={K2.hex()}\npreshared_key={ZERO_KEY.hex()}\nprotocol_version=1\n"
        "endpoint=10.0.0.2:51820\nlast_handshake_time_sec=1700000000\n"
        "last_handshake_time_nsec=123456789\ntx_bytes=20\nrx_bytes=10\n"
        "persistent_keepalive_interval=25\nallowed_ip=10.0.0.2/32\nallowed_ip=fd00::/64\n"
        f"public_key={K3.hex()}\npreshared_key={K1.hex()}\nprotocol_version=1\n"
        "endpoint=[fd00::2]:5\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\n"
        "tx_bytes=0\nrx_bytes=0\npersistent_keepalive_interval=0\nerrno=0\n\n"
    )
    empty = render_get(DeviceState(None, 0, 0, ())).decode()
    assert empty == "errno=0\n\n"  # no key, no port, no mark: nothing but the status


keys = st.binary(min_size=32, max_size=32)
prefixes = st.one_of(
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)).map(
        lambda t: ipaddress.IPv4Network((t[0], t[1]), strict=False)
    ),
    st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 128)).map(
        lambda t: ipaddress.IPv6Network((t[0], t[1]), strict=False)
    ),
)
endpoints = st.one_of(
    st.none(),
    st.tuples(st.ip_addresses(), st.integers(0, 65535)),
)
peer_states = st.builds(
    PeerState, keys, st.one_of(st.none(), keys), endpoints.map(
        lambda e: None if e is None else ((str(e[0]), e[1]) if e[0].version == 4
                                          else (str(e[0]), e[1], 0, 0))),
    st.integers(0, 2**62), st.integers(0, 2**62), st.integers(0, 2**62), st.integers(0, 65535),
    st.lists(prefixes, max_size=4, unique=True).map(tuple),
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(
    st.builds(DeviceState, st.one_of(st.none(), keys), st.integers(0, 65535),
              st.integers(0, 2**32 - 1), st.lists(peer_states, max_size=4).map(tuple))
)  # fmt: skip
def test_a_get_answer_read_back_as_a_set_restores_the_state(state):
    """Round trip: the get answer, minus the read-only keys, is a valid set request whose
    operations carry exactly the state (what `wg showconf | wg setconf` relies on)."""
    text = render_get(state).decode()
    assert text.endswith("errno=0\n\n")
    read_only = ("last_handshake_time_sec", "last_handshake_time_nsec", "rx_bytes", "tx_bytes")
    lines = [ln for ln in text.split("\n")[:-3] if ln.split("=")[0] not in read_only]
    ops = parse_set(lines)
    device = [op for op in ops if not isinstance(op, PeerUpdate)]
    want_device = []
    if state.private_key is not None:
        want_device.append(SetPrivateKey(None if state.private_key == ZERO_KEY
                                         else state.private_key))  # fmt: skip
    if state.listen_port:
        want_device.append(SetListenPort(state.listen_port))
    if state.fwmark:
        want_device.append(SetFwmark(state.fwmark))
    assert device == want_device
    peers = [op for op in ops if isinstance(op, PeerUpdate)]
    assert len(peers) == len(state.peers)
    for got, want in zip(peers, state.peers, strict=True):
        assert got.public_key == want.public_key
        assert got.preshared_key == (want.preshared_key or ZERO_KEY)
        assert got.allowed_ips == want.allowed_ips
        assert got.persistent_keepalive_interval == want.persistent_keepalive_interval
        if want.endpoint is None:
            assert got.endpoint is None
        else:
            assert (str(got.endpoint[0]), got.endpoint[1]) == want.endpoint[:2]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_requests_or_uapi_errors_only(data):
    reader = UapiReader(max_bytes=256, max_lines=16)
    reader.feed(data)
    for _ in range(50):
        try:
            if reader.next_request() is None:
                break
        except UapiError as err:
            assert err.errno > 0
            if err.fatal:
                break
    try:
        reader.finish()
    except UapiError:
        pass
