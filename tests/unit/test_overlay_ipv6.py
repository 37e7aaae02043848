"""IPv6 in the overlay: flannel's dual-stack config and leases, IPv6 routing, the config keys.

Reference: flannel-io/flannel pkg/subnet/config.go (CheckNetworkConfig's IPv6 defaults),
pkg/subnet/subnet.go (LeaseAttrs, subnetRegex, MakeSubnetKey), pkg/subnet/etcd/registry.go
(one key per lease, both subnets in it) and pkg/backend/wireguard/wireguard.go
(newSubnetAttrs: the same BackendData in BackendV6Data).
"""

from __future__ import annotations

import json
import re
from ipaddress import IPv4Network, IPv6Address, IPv6Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6EchoRequest, IPv6
from scapy.packet import Raw

from tunneld.config import loads
from tunneld.errors import ConfigError
from tunneld.proto.counters import Counters
from tunneld.proto.overlay import (
    SEND_ICMP,
    OverlayRouter,
    OverlayRxDrop,
    OverlayTxDrop,
)
from tunneld.registry.flannel import (
    lease_value,
    parse_lease,
    parse_network_config,
    parse_subnet_key,
    parse_subnet_keys,
    subnet_key,
    wireguard_backend_data,
)

PREFIX = "/coreos.com/network"
# flannel pkg/subnet/subnet.go: a key flannel's ParseSubnetKey accepts
FLANNEL_SUBNET_REGEX = re.compile(r"(\d+\.\d+.\d+.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$")
KEY = b"\x11" * 32

# --- network config ------------------------------------------------------------------------


def test_dual_stack_network_config_with_flannels_defaults() -> None:
    # the dual-stack example of flannel's Documentation/configuration.md
    cfg = parse_network_config(json.dumps({
        "EnableIPv4": True, "EnableIPv6": True, "Network": "10.42.0.0/16",
        "IPv6Network": "2001:cafe:42::/56", "Backend": {"Type": "vxlan"},
    }))  # fmt: skip
    six = cfg.ipv6
    assert six is not None and six.network == IPv6Network("2001:cafe:42::/56")
    assert six.subnet_len == 64  # a /62 or wider network: /64 per host
    assert six.subnet_min == IPv6Address("2001:cafe:42:1::")  # the first subnet is skipped
    assert six.subnet_max == IPv6Address("2001:cafe:42:ff::")
    assert six.pool_size() == 255
    assert six.free_subnets({IPv6Network("2001:cafe:42:1::/64")}, limit=2) == [
        IPv6Network("2001:cafe:42:2::/64"),
        IPv6Network("2001:cafe:42:3::/64"),
    ]
    small = parse_network_config(
        '{"Network": "10.0.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/120"}'
    )
    assert small.ipv6 is not None and small.ipv6.subnet_len == 122  # prefix + 2
    v4only = parse_network_config('{"Network": "10.0.0.0/16", "IPv6Network": "fd00::/48"}')
    assert v4only.ipv6 is None  # flannel reads IPv6Network only with EnableIPv6


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ({"EnableIPv6": True}, "IPv6Network None is not an IPv6 prefix"),
        ({"EnableIPv6": True, "IPv6Network": "10.1.0.0/16"}, "is not an IPv6 prefix"),
        ({"EnableIPv6": "yes", "IPv6Network": "fd00::/48"}, "EnableIPv6 must be true or false"),
        ({"EnableIPv6": True, "IPv6Network": "fd00::/125"}, "too small; the smallest is a /124"),
        ({"EnableIPv6": True, "IPv6Network": "fd00::/48", "IPv6SubnetLen": 127},
         "must be at most 126"),
        ({"EnableIPv6": True, "IPv6Network": "fd00::/48", "IPv6SubnetLen": 49},
         "fewer than four subnets"),
        ({"EnableIPv6": True, "IPv6Network": "fd00::/48", "IPv6SubnetMin": "fd00:0:0:1::1"},
         "not on an IPv6SubnetLen (/64) boundary"),
        ({"EnableIPv6": True, "IPv6Network": "fd00::/48", "IPv6SubnetMax": "fd01::"},
         "is not in IPv6Network"),
        ({"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd00::/48"},
         "EnableIPv4 is false"),
    ],
)  # fmt: skip
def test_bad_ipv6_network_config_names_the_field(doc: dict, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_network_config(json.dumps({"Network": "10.0.0.0/16", **doc}))


# --- subnet keys ---------------------------------------------------------------------------

KEYS = [  # (key tail, IPv4 subnet, IPv6 subnet or None)
    ("10.5.1.0-24", "10.5.1.0/24", None),
    ("10.5.1.0-24&fd10:5:0:1::-64", "10.5.1.0/24", "fd10:5:0:1::/64"),
    ("10.42.7.0-24&2001:cafe:42:7::-64", "10.42.7.0/24", "2001:cafe:42:7::/64"),
    ("10.0.0.4-30&fd00::40-122", "10.0.0.4/30", "fd00::40/122"),
]


@pytest.mark.parametrize(("tail", "four", "six"), KEYS)
def test_subnet_keys_round_trip_in_flannels_form(tail: str, four: str, six: str | None) -> None:
    subnet, subnet6 = IPv4Network(four), IPv6Network(six) if six else None
    key = subnet_key(PREFIX, subnet, subnet6)
    assert key == f"{PREFIX}/subnets/{tail}"
    m = FLANNEL_SUBNET_REGEX.search(key)
    assert m is not None and (m.group(3) or None) == (six.split("/")[0] if six else None)
    assert parse_subnet_keys(PREFIX, key.encode()) == (subnet, subnet6)
    assert parse_subnet_key(PREFIX, key) == subnet


@pytest.mark.parametrize(
    "tail",
    ["10.5.1.0-24&FD10:5:0:1::-64",  # flannel's regex: lower-case hex only
     "10.5.1.0-24&fd10:5:0:1::1-64",  # host bits
     "10.5.1.0-24&fd10:5:0:1::-129", "10.5.1.0-24&-64", "10.5.1.0-24&", "10.5.1.0-24&10.5.2.0-24",
     "fd10:5:0:1::-64", "10.5.1.0-24-x"],
)  # fmt: skip
def test_other_keys_are_not_subnets(tail: str) -> None:
    assert parse_subnet_keys(PREFIX, f"{PREFIX}/subnets/{tail}") is None


# --- lease values --------------------------------------------------------------------------

FLANNEL_DUAL = (  # json.Marshal(LeaseAttrs) of a dual-stack flannel host (vxlan backend)
    '{"PublicIP":"192.168.77.2","PublicIPv6":"fd00::2","BackendType":"vxlan",'
    '"BackendData":{"VNI":1,"VtepMAC":"7a:3b:9c:00:11:22"},'
    '"BackendV6Data":{"VNI":1,"VtepMAC":"7a:3b:9c:00:11:23"}}'
)
FLANNEL_V4 = '{"PublicIP":"192.168.77.3","PublicIPv6":null,"BackendType":"udp"}'
SUBNET, SUBNET6 = IPv4Network("10.5.2.0/24"), IPv6Network("fd10:5:0:2::/64")


def test_flannels_dual_stack_lease_read_for_either_underlay() -> None:
    four = parse_lease(SUBNET, FLANNEL_DUAL, SUBNET6, family=4)
    six = parse_lease(SUBNET, FLANNEL_DUAL, SUBNET6, family=6)
    assert (four.public_ip, four.ipv6_subnet, four.backend_type) == ("192.168.77.2", SUBNET6,
                                                                    "vxlan")  # fmt: skip
    assert six.public_ip == "fd00::2" and six.ipv6_subnet == SUBNET6
    assert parse_lease(SUBNET, FLANNEL_V4).public_ip == "192.168.77.3"
    with pytest.raises(ValueError, match="no PublicIPv6"):
        parse_lease(SUBNET, FLANNEL_V4, family=6)
    ipv6_only = '{"PublicIP":"0.0.0.0","PublicIPv6":"fd00::9","BackendType":"udp"}'
    with pytest.raises(ValueError, match="PublicIP is 0.0.0.0"):
        parse_lease(SUBNET, ipv6_only, SUBNET6, family=4)
    for bad in ('{"PublicIP":"0.0.0.0","PublicIPv6":"10.0.0.1"}', '{"PublicIPv6":"fd00::1"}',
                '{"PublicIP":"1.2.3.4","PublicIPv6":7}'):  # fmt: skip
        with pytest.raises(ValueError, match="is not an IPv"):
            parse_lease(SUBNET, bad, family=6)


def test_our_lease_values_round_trip_and_keep_the_ipv4_form() -> None:
    # an IPv4-only lease is byte for byte what tunneld wrote before (reuse compares bytes)
    assert lease_value("192.168.77.1", "udp", {}) == (
        '{"PublicIP":"192.168.77.1","BackendType":"udp","BackendData":{}}'
    )
    data = wireguard_backend_data(KEY, 51820)
    text = lease_value("0.0.0.0", "wireguard", data, "fd00::1", data)
    doc = json.loads(text)
    assert doc == {"PublicIP": "0.0.0.0", "PublicIPv6": "fd00::1", "BackendType": "wireguard",
                   "BackendData": data, "BackendV6Data": data}  # fmt: skip
    host = parse_lease(SUBNET, text, SUBNET6, family=6)
    assert (host.public_ip, host.public_key, host.port) == ("fd00::1", KEY, 51820)
    # flannel's wireguard backend with only BackendV6Data filled still yields the key
    v6_data_only = json.dumps({"PublicIP": "0.0.0.0", "PublicIPv6": "fd00::1",
                               "BackendType": "wireguard", "BackendV6Data": data})  # fmt: skip
    assert parse_lease(SUBNET, v6_data_only, SUBNET6, family=6).public_key == KEY


# --- routing -------------------------------------------------------------------------------

OFF = 16
OWN4, NET4 = IPv4Network("10.5.1.0/24"), IPv4Network("10.5.0.0/16")
OWN6, NET6 = IPv6Network("fd10:5:0:1::/64"), IPv6Network("fd10:5::/48")
DEST2 = ("fd00::2", 8285)


def slot(pkt: object) -> tuple[bytearray, int]:
    raw = bytes(pkt)  # type: ignore[call-overload]
    buf = bytearray(OFF + len(raw) + 32)
    buf[OFF : OFF + len(raw)] = raw
    return buf, len(raw)


@pytest.fixture
def router() -> OverlayRouter:
    r = OverlayRouter(OWN4, NET4, Counters(OverlayRxDrop, OverlayTxDrop), own_subnet6=OWN6,
                      network6=NET6)  # fmt: skip
    r.add_route(IPv4Network("10.5.2.0/24"), "fd00::2", DEST2)
    r.add_route(IPv6Network("fd10:5:0:2::/64"), "fd00::2", DEST2)
    return r


def v6packet(src: str, dst: str, hlim: int = 64) -> IPv6:
    return IPv6(src=src, dst=dst, hlim=hlim) / UDP(sport=1, dport=2) / Raw(b"x" * 24)


def test_ipv6_outbound_routes_by_destination_and_decrements_the_hop_limit(router) -> None:
    buf, n = slot(v6packet("fd10:5:0:1::", "fd10:5:0:2::7"))
    assert router.outbound(buf, OFF, n, 0.0) == DEST2
    assert IPv6(bytes(buf[OFF : OFF + n])).hlim == 63
    v4 = IP(src="10.5.1.0", dst="10.5.2.9") / UDP()
    buf, n = slot(v4)
    assert router.outbound(buf, OFF, n, 0.0) == DEST2  # IPv4 unchanged beside it
    assert router.routes(6) == [(IPv6Network("fd10:5:0:2::/64"), "fd00::2")]
    assert router.routes() == [(IPv4Network("10.5.2.0/24"), "fd00::2")]
    for pkt, reason in (
        (v6packet("fd10:5:0:1::", "fd10:5:0:2::7", hlim=1), OverlayTxDrop.TTL_EXPIRED),
        (bytes(v6packet("fd10:5:0:1::", "fd10:5:0:2::7"))[:60], OverlayTxDrop.TRUNCATED),
        (bytes(v6packet("fd10:5:0:1::", "fd10:5:0:2::7"))[:39], OverlayTxDrop.TRUNCATED),
    ):
        before = router.counters.tx_dropped[reason]
        buf, n = slot(pkt)
        assert router.outbound(buf, OFF, n, 0.0) is None
        assert router.counters.tx_dropped[reason] == before + 1


def test_ipv6_no_route_gets_icmpv6_no_route_from_the_networks_address(router) -> None:
    original = IPv6(src="fd10:5:0:1::", dst="fd10:5:0:99::1") / ICMPv6EchoRequest(data=b"x" * 300)
    buf, n = slot(original)
    assert router.outbound(buf, OFF, n, 0.0) is SEND_ICMP
    reply = IPv6(bytes(router.icmp_buf[: router.icmp_len]))
    assert (reply.src, reply.dst) == ("fd10:5::", "fd10:5:0:1::")
    error = reply[ICMPv6DestUnreach]
    assert (error.type, error.code) == (1, 0)
    chksum = error.cksum
    del error.cksum
    assert IPv6(bytes(reply))[ICMPv6DestUnreach].cksum == chksum  # scapy recomputes it
    assert bytes(error.payload)[:40] == bytes(original)[:40]  # the offending header quoted
    assert router.icmp_len == 48 + 128
    # none to a multicast destination (router solicitations on the tun), none for errors
    for pkt in (IPv6(src="fd10:5:0:1::", dst="ff02::2") / UDP(),
                IPv6(src="fd10:5:0:1::", dst="fd10:5:0:99::1") / ICMPv6DestUnreach()):  # fmt: skip
        buf, n = slot(pkt)
        assert router.outbound(buf, OFF, n, 1.0) is None
    assert router.counters.tx_dropped[OverlayTxDrop.ICMP_SUPPRESSED] == 2


def test_ipv6_inbound_checks_the_source_against_the_senders_ipv6_subnet(router) -> None:
    buf, n = slot(v6packet("fd10:5:0:2::7", "fd10:5:0:1::"))
    assert router.inbound(buf, OFF, n, "fd00::2") == n
    rx = router.counters.rx_dropped
    for src in ("fd10:5:0:3::1", "fd10:5:0:1::5", "fd99::1"):  # nobody's, ours, outside
        buf, n = slot(v6packet(src, "fd10:5:0:1::"))
        assert router.inbound(buf, OFF, n, "fd00::2") == -1
    assert rx[OverlayRxDrop.SPOOFED_SOURCE] == 3
    buf, n = slot(v6packet("fd10:5:0:2::7", "fd10:5:0:1::", hlim=1))
    assert router.inbound(buf, OFF, n, "fd00::2") == -1 and rx[OverlayRxDrop.TTL_EXPIRED] == 1


def test_ipv6_without_an_ipv6_network_is_not_carried() -> None:
    r = OverlayRouter(OWN4, NET4, Counters(OverlayRxDrop, OverlayTxDrop))
    r.add_route(IPv4Network("10.5.2.0/24"), "192.168.77.2", ("192.168.77.2", 8285))
    buf, n = slot(v6packet("fd10:5:0:1::", "fd10:5:0:2::7"))
    assert r.outbound(buf, OFF, n, 0.0) is None
    assert r.counters.tx_dropped[OverlayTxDrop.NOT_IPV4] == 1
    assert r.inbound(buf, OFF, n, "192.168.77.2") == -1
    assert r.counters.rx_dropped[OverlayRxDrop.NOT_IPV4] == 1
    with pytest.raises(ValueError, match="carries no IPv6"):
        r.add_route(IPv6Network("fd10:5:0:2::/64"), "192.168.77.2", None)


# --- config --------------------------------------------------------------------------------

BASE = """
[interfaces.ov0]
type = "overlay"
network = "10.5.0.0/16"
public_ip = "fd00::1"
subnet = "10.5.1.0/24"
"""
HOST = '[[interfaces.ov0.hosts]]\nsubnet = "10.5.2.0/24"\npublic_ip = "fd00::2"\n'


def test_dual_stack_static_config() -> None:
    text = BASE + 'ipv6_network = "fd10:5::/48"\nipv6_subnet = "fd10:5:0:1::/64"\n'
    cfg = loads(text + HOST + 'ipv6_subnet = "fd10:5:0:2::/64"\n').interfaces["ov0"]
    assert (cfg.ipv6_network, cfg.ipv6_subnet_len) == (IPv6Network("fd10:5::/48"), 64)
    assert cfg.ipv6_subnet == IPv6Network("fd10:5:0:1::/64")
    assert cfg.hosts[0].ipv6_subnet == IPv6Network("fd10:5:0:2::/64")
    assert loads(text + HOST).interfaces["ov0"].hosts[0].ipv6_subnet is None  # IPv4 only
    assert loads(BASE).interfaces["ov0"].ipv6_network is None


@pytest.mark.parametrize(
    ("extra", "key", "reason"),
    [
        ('ipv6_subnet = "fd10:5:0:1::/64"\n', "ipv6_subnet", "needs ipv6_network"),
        ('ipv6_network = "fd10:5::/48"\n', "ipv6_subnet", "missing required key"),
        ('ipv6_network = "10.6.0.0/16"\n', "ipv6_network", "is not an IPv6 prefix"),
        ('ipv6_network = "fd10:5::/48"\nipv6_subnet = "fd10:6:0:1::/64"\n', "ipv6_subnet",
         "outside ipv6_network"),
        ('ipv6_network = "fd10:5::/48"\nipv6_subnet = "fd10:5:0:1::/80"\n', "ipv6_subnet",
         "not a /64"),
        ('ipv6_network = "fd10:5::/48"\nipv6_subnet_len = 127\nipv6_subnet = "fd10:5::/127"\n',
         "ipv6_subnet_len", "out of range 50..126"),
        ('ipv6_network = "fd10:5::/48"\nipv6_subnet = "fd10:5:0:1::/64"\n' + HOST
         + 'ipv6_subnet = "fd10:5:0:1::/64"\n', "hosts[0].ipv6_subnet", "duplicate ipv6_subnet"),
        (HOST + 'ipv6_subnet = "fd10:5:0:2::/64"\n', "hosts[0].ipv6_subnet",
         "needs ipv6_network"),
    ],
)  # fmt: skip
def test_bad_ipv6_overlay_config(extra: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads(BASE + extra, "site.toml")
    text = str(info.value)
    assert f"interfaces.ov0.{key}" in text and reason in text, text


def test_show_text_names_the_ipv6_network_and_each_hosts_ipv6_subnet() -> None:
    from tunneld.show import format_show

    reply = {"version": 1, "interfaces": {"flannel0": {
        "type": "overlay", "subnet": "10.5.1.0/24", "network": "10.5.0.0/16",
        "ipv6_subnet": "fd10:5:0:1::/64", "ipv6_network": "fd10:5::/48",
        "routes": [{"subnet": "10.5.2.0/24", "ipv6_subnet": "fd10:5:0:2::/64",
                    "public_ip": "fd00::2"}, {"subnet": "10.5.3.0/24", "public_ip": "fd00::3"}],
    }}}  # fmt: skip
    text = format_show(reply, now=0)
    assert "ipv6 network: fd10:5::/48  ipv6 subnet: fd10:5:0:1::/64" in text
    assert "10.5.2.0/24 + fd10:5:0:2::/64 via fd00::2" in text
    assert "10.5.3.0/24 via fd00::3" in text


# --- properties (Hypothesis): outside input never raises, one reason per drop ------------

V6_PACKETS = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda src, dst, hlim, body, cut: bytes(
            IPv6(src=str(src), dst=str(dst), hlim=hlim) / Raw(body)
        )[:cut],
        st.sampled_from(["fd10:5:0:1::", "fd10:5:0:2::9", "fd10:5:0:3::1", "ff02::1", "::"]),
        st.sampled_from(["fd10:5:0:2::7", "fd10:5:0:1::", "fd10:5:0:99::", "ff02::2"]),
        st.integers(0, 255),
        st.binary(max_size=60),
        st.integers(0, 120),
    ),
)


@settings(max_examples=300, deadline=None)
@given(V6_PACKETS)
def test_router_with_ipv6_never_raises_and_counts_every_drop_once(data: bytes) -> None:
    r = OverlayRouter(OWN4, NET4, Counters(OverlayRxDrop, OverlayTxDrop), own_subnet6=OWN6,
                      network6=NET6)  # fmt: skip
    r.add_route(IPv6Network("fd10:5:0:2::/64"), "fd00::2", DEST2)
    buf = bytearray(data)
    n = r.inbound(buf, 0, len(buf), "fd00::2")
    assert (n == -1 and sum(r.counters.rx_dropped) == 1) or (
        0 < n <= len(data) and sum(r.counters.rx_dropped) == 0
    )
    if n > 0 and data[0] >> 4 == 6:
        assert buf[7] == data[7] - 1 and buf[8:n] == data[8:n]
    buf = bytearray(data)
    dest = r.outbound(buf, 0, len(buf), 0.0)
    dropped = sum(r.counters.tx_dropped)
    if dest is None:
        assert dropped in (1, 2)
    elif dest is SEND_ICMP:
        error = bytes(r.icmp_buf[: r.icmp_len])
        assert error[0] >> 4 == 6 and error[8:24] == r.icmp_source6 and error[24:40] == data[8:24]
        assert dropped == 1
    else:
        assert dest == DEST2 and dropped == 0 and buf[7] == data[7] - 1


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789abcdefABCDEF.:-&/x", max_size=40))
def test_subnet_keys_never_raise(tail: str) -> None:
    pair = parse_subnet_keys(PREFIX, f"{PREFIX}/subnets/{tail}")
    if pair is not None:  # whatever was accepted is written and read back the same
        assert parse_subnet_keys(PREFIX, subnet_key(PREFIX, *pair)) == pair
        assert tail.islower() or not any(c.isalpha() for c in tail.partition("&")[2])


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 2**32 - 1), st.integers(8, 30), st.integers(0, 2**128 - 1), st.integers(8, 126)
)
def test_subnet_keys_round_trip_for_any_pair(a4: int, l4: int, a6: int, l6: int) -> None:
    four = IPv4Network((a4 >> (32 - l4) << (32 - l4), l4))
    six = IPv6Network((a6 >> (128 - l6) << (128 - l6), l6))
    key = subnet_key(PREFIX, four, six)
    assert FLANNEL_SUBNET_REGEX.search(key)
    assert parse_subnet_keys(PREFIX, key) == (four, six)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["PublicIP", "PublicIPv6", "BackendType", "BackendData", "BackendV6Data"]),
        st.one_of(st.none(), st.integers(), st.text(max_size=12),
                  st.sampled_from(["0.0.0.0", "10.0.0.1", "fd00::1", "wireguard", "udp"]),
                  st.dictionaries(st.sampled_from(["PublicKey", "Port"]), st.integers())),
    ),
    st.sampled_from([4, 6]),
)  # fmt: skip
def test_lease_values_never_raise_but_value_error(doc: dict, family: int) -> None:
    try:
        host = parse_lease(SUBNET, json.dumps(doc), SUBNET6, family)
    except ValueError:
        return
    assert host.ipv6_subnet == SUBNET6
    assert ":" in host.public_ip if family == 6 else "." in host.public_ip


def test_static_registry_reloads_a_hosts_ipv6_subnet_and_refuses_a_new_ipv6_network() -> None:
    import asyncio

    from tunneld.registry.static import StaticRegistry

    def cfg(network6: str, host6: str) -> object:
        text = BASE + f'ipv6_network = "{network6}"\nipv6_subnet = "{network6[:-5]}:0:1::/64"\n'
        return loads(text + HOST + f'ipv6_subnet = "{host6}"\n').interfaces["ov0"]

    changes: list = []
    reg = StaticRegistry(cfg("fd10:5::/48", "fd10:5:0:2::/64"), lambda a, r: changes.append((a, r)))
    asyncio.run(reg.start())
    assert (reg.subnet6, reg.network6) == (OWN6, NET6)
    assert [h.ipv6_subnet for h in changes[0][0]] == [IPv6Network("fd10:5:0:2::/64")]
    assert reg.reload(cfg("fd10:5::/48", "fd10:5:0:7::/64"))
    added, removed = changes[-1]
    assert [h.ipv6_subnet for h in added] == [IPv6Network("fd10:5:0:7::/64")]
    assert [h.ipv6_subnet for h in removed] == [IPv6Network("fd10:5:0:2::/64")]
    assert not reg.reload(cfg("fd10:6::/48", "fd10:6:0:2::/64"))  # the link is rebuilt


def test_masquerade_sources_of_a_dual_stack_overlay_include_its_ipv6_network() -> None:
    import types

    from tunneld.links.nat import sources

    text = BASE + 'ipv6_network = "fd10:5::/48"\nipv6_subnet = "fd10:5:0:1::/64"\n'
    cfg = loads(text).interfaces["ov0"]
    assert sources(cfg) == [NET4, NET6]
    etcd = loads(BASE.replace('subnet = "10.5.1.0/24"', 'registry = "etcd"').replace(
        'network = "10.5.0.0/16"', "")).interfaces["ov0"]  # fmt: skip
    link = types.SimpleNamespace(registry=types.SimpleNamespace(network=NET4, network6=NET6))
    assert sources(etcd) == [] and sources(etcd, link) == [NET4, NET6]
