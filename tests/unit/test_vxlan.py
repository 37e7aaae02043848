"""VXLAN core (RFC 7348): one table drives encode and decode; rejects counted by reason."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from tunneld.proto.counters import Counters
from tunneld.proto.fdb import Fdb
from tunneld.proto.vxlan import (
    FLOOD,
    PORT_MAX_DEFAULT,
    PORT_MIN_DEFAULT,
    VXLAN_HDR,
    VXLAN_LEN,
    VxlanDrop,
    VxlanPort,
    VxlanTxDrop,
    flow_hash,
    parse_header,
    port_from_hash,
    write_header,
)

MTU = 1450
HEADROOM = 16
A_MAC, B_MAC, C_MAC = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"
VTEP_A, VTEP_B, VTEP_C = "192.168.77.1", "192.168.77.2", "2001:db8::3"


def eth(dst: str = B_MAC, src: str = A_MAC) -> Ether:
    return Ether(dst=dst, src=src)


# (name, inner frame): sizes from the 14-byte minimum to the VLAN-tagged maximum.
FRAMES = [
    ("bare-header", bytes(eth(src=A_MAC, dst=B_MAC) / Raw(b""))[:12] + b"\x88\xb5"),
    ("arp-broadcast", bytes(eth(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="10.88.0.2"))),
    ("ipv4-tcp", bytes(eth() / IP(src="10.88.0.1", dst="10.88.0.2") / TCP() / Raw(b"x" * 100))),
    ("ipv6-udp", bytes(eth() / IPv6(src="fd00::1", dst="fd00::2") / UDP() / Raw(b"y" * 9))),
    ("mtu-max", bytes(eth() / IP() / Raw(b"z" * (MTU - 20)))),
    ("vlan-mtu-max", bytes(eth() / Dot1Q(vlan=7) / IP() / Raw(b"v" * (MTU - 20)))),
]
VNIS = [0, 1, 42, 2**24 - 1]
CASES = [(vni, name, frame) for vni in VNIS for name, frame in FRAMES]


def make_port(vni: int = 42, learning: bool = True, ageing: float = 300.0) -> VxlanPort:
    fdb = Fdb(ageing)
    return VxlanPort(vni, fdb, Counters(VxlanDrop, VxlanTxDrop), MTU, learning)


def slot_with(frame: bytes) -> memoryview:
    slot = memoryview(bytearray(HEADROOM + 9000))
    slot[HEADROOM : HEADROOM + len(frame)] = frame
    return slot


def datagram(vni: int, frame: bytes, flags_word: int = 0x08000000, low: int = 0) -> memoryview:
    return memoryview(bytearray(VXLAN_HDR.pack(flags_word, vni << 8 | low) + frame + b"\xee" * 64))


def drops(port: VxlanPort) -> dict[str, int]:
    """Non-zero drop counters by name (rx and tx)."""
    d = port.counters.as_dict()
    return {k: v for part in ("rx_dropped", "tx_dropped") for k, v in d[part].items() if v}


# -- the shared table --------------------------------------------------------------------


@pytest.mark.parametrize(("vni", "name", "frame"), CASES, ids=[f"{v}-{n}" for v, n, _ in CASES])
def test_encode(vni: int, name: str, frame: bytes) -> None:
    port = make_port(vni)
    port.fdb.set_flood([VTEP_B])
    slot = slot_with(frame)
    assert port.encap(slot, HEADROOM, len(frame), 0.0) is FLOOD
    wire = bytes(slot[HEADROOM - VXLAN_LEN : HEADROOM + len(frame)])
    assert wire[:8] == bytes(VXLAN(flags=0x08, vni=vni))  # scapy agrees on the header
    assert parse_header(wire) == (0x08, vni)
    parsed = VXLAN(wire)
    assert parsed.vni == vni and bytes(parsed.payload) == frame
    assert drops(port) == {}


@pytest.mark.parametrize(("vni", "name", "frame"), CASES, ids=[f"{v}-{n}" for v, n, _ in CASES])
def test_decode(vni: int, name: str, frame: bytes) -> None:
    port = make_port(vni)
    data = memoryview(bytearray(bytes(VXLAN(flags=0x08, vni=vni) / Raw(frame)) + b"\0" * 32))
    n = port.decap(data, VXLAN_LEN + len(frame), VTEP_A, 5.0)
    assert n == len(frame) and bytes(data[VXLAN_LEN : VXLAN_LEN + n]) == frame
    assert drops(port) == {}
    assert port.fdb.lookup(A_MAC, 5.0) == VTEP_A  # learned inner source MAC -> outer source


@pytest.mark.parametrize(("vni", "name", "frame"), CASES, ids=[f"{v}-{n}" for v, n, _ in CASES])
def test_round_trip(vni: int, name: str, frame: bytes) -> None:
    tx, rx = make_port(vni), make_port(vni)
    tx.fdb.add_static(B_MAC, VTEP_B)
    tx.fdb.set_flood([VTEP_B, VTEP_C])
    slot = slot_with(frame)
    dest = tx.encap(slot, HEADROOM, len(frame), 0.0)
    assert dest == (FLOOD if name == "arp-broadcast" else VTEP_B)
    wire = slot[HEADROOM - VXLAN_LEN : HEADROOM + len(frame)]
    assert rx.decap(wire, len(wire), VTEP_A, 0.0) == len(frame)
    assert bytes(wire[VXLAN_LEN:]) == frame


@settings(max_examples=200, deadline=None)
@given(vni=st.integers(0, 2**24 - 1), frame=st.binary(min_size=14, max_size=MTU + 14))
def test_round_trip_property(vni: int, frame: bytes) -> None:
    frame = b"\x02" + frame[1:6] + b"\x02" + frame[7:]  # unicast, non-zero source MAC
    tx, rx = make_port(vni), make_port(vni)
    tx.fdb.set_flood([VTEP_B])
    slot = slot_with(frame)
    assert tx.encap(slot, HEADROOM, len(frame), 0.0) is FLOOD
    wire = slot[HEADROOM - VXLAN_LEN : HEADROOM + len(frame)]
    assert rx.decap(wire, len(wire), VTEP_A, 0.0) == len(frame)
    assert bytes(wire[VXLAN_LEN:]) == frame and drops(rx) == {}


# -- rejections, by reason -----------------------------------------------------------------

GOOD = bytes(eth() / IP() / UDP() / Raw(b"x" * 30))


def test_truncated_byte_at_a_time() -> None:
    port = make_port()
    data = datagram(42, GOOD)
    for length in range(VXLAN_LEN + 14):  # 0..21: header and Ethernet header incomplete
        assert port.decap(data, length, VTEP_A, 0.0) == -1
        assert drops(port) == {"short": length + 1}
    assert port.decap(data, 22, VTEP_A, 0.0) == 14  # a bare Ethernet header is a frame
    assert drops(port) == {"short": 22}


@pytest.mark.parametrize(
    ("flags_word", "low"),
    [
        (0x00000000, 0),  # I flag clear
        (0x0C000000, 0),  # I plus a reserved flag
        (0x88000000, 0),  # I plus G (the GBP extension's bit)
        (0x08800000, 0),  # reserved bits after the flags byte
        (0x08000001, 0),
        (0x04000000, 0),  # the VXLAN-GPE P bit without I
        (0x08000000, 1),  # reserved low byte of the VNI word
        (0x08000000, 0xFF),
    ],
)
def test_reserved_bits_are_dropped_like_the_kernel(flags_word: int, low: int) -> None:
    # RFC 7348 section 5 says "ignored on receipt"; Linux drops unknown flags. We follow Linux.
    port = make_port()
    assert port.decap(datagram(42, GOOD, flags_word, low), 8 + len(GOOD), VTEP_A, 0.0) == -1
    assert drops(port) == {"bad_flags": 1}
    assert port.fdb.lookup(A_MAC, 0.0) is None  # nothing learned from a dropped frame
    assert parse_header(datagram(42, GOOD, flags_word, low)) == (flags_word >> 24, 42)


@pytest.mark.parametrize("vni", [0, 41, 43, 42 << 8, 2**24 - 1])
def test_wrong_vni(vni: int) -> None:
    port = make_port(42)
    assert port.decap(datagram(vni, GOOD), 8 + len(GOOD), VTEP_A, 0.0) == -1
    assert drops(port) == {"wrong_vni": 1}


@pytest.mark.parametrize(
    ("frame", "ok"),
    [
        (bytes(eth() / IP() / Raw(b"z" * (MTU - 20))), True),  # MTU + 14
        (bytes(eth() / IP() / Raw(b"z" * (MTU - 19))), False),  # MTU + 15
        (bytes(eth() / IP() / Raw(b"z" * (MTU - 16))), False),  # MTU + 18, untagged
        (bytes(eth() / Dot1Q() / IP() / Raw(b"z" * (MTU - 20))), True),  # MTU + 18, tagged
        (bytes(eth() / Dot1Q() / IP() / Raw(b"z" * (MTU - 19))), False),  # MTU + 19, tagged
        (
            bytes(
                Ether(dst=B_MAC, src=A_MAC, type=0x88A8) / Dot1Q() / IP() / Raw(b"q" * (MTU - 24))
            ),
            True,
        ),  # 802.1ad outer tag counts as the one tag
    ],
)
def test_oversized(frame: bytes, ok: bool) -> None:
    rx = make_port()
    n = rx.decap(datagram(42, frame), 8 + len(frame), VTEP_A, 0.0)
    assert n == (len(frame) if ok else -1)
    assert drops(rx) == ({} if ok else {"oversized": 1})
    tx = make_port()
    tx.fdb.set_flood([VTEP_B])
    dest = tx.encap(slot_with(frame), HEADROOM, len(frame), 0.0)
    assert dest is (FLOOD if ok else None)
    assert drops(tx) == ({} if ok else {"oversized_frame": 1})


@pytest.mark.parametrize(
    "src", ["ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01", "33:33:00:00:00:01", "00:00:00:00:00:00"]
)
def test_bad_source_mac(src: str) -> None:
    port = make_port()
    frame = bytes(eth(src=src) / IP())
    assert port.decap(datagram(42, frame), 8 + len(frame), VTEP_A, 0.0) == -1
    assert drops(port) == {"bad_source_mac": 1} and len(port.fdb) == 0


@pytest.mark.parametrize("learning", [True, False])
def test_static_mac_from_another_remote_is_not_allowed(learning: bool) -> None:
    port = make_port(learning=learning)
    port.fdb.add_static(A_MAC, VTEP_A)
    frame = bytes(eth(src=A_MAC) / IP())
    data = datagram(42, frame)
    assert port.decap(data, 8 + len(frame), VTEP_C, 0.0) == -1
    assert drops(port) == {"not_allowed_source": 1}
    assert port.decap(data, 8 + len(frame), VTEP_A, 0.0) == len(frame)  # the owner may speak
    assert port.fdb.entries(99.0) == [(A_MAC, VTEP_A, True, None)]  # never moved


# -- learning and forwarding ----------------------------------------------------------------


def test_learning_moves_refreshes_and_ages() -> None:
    port = make_port(ageing=10.0)
    frame = bytes(eth(src=A_MAC) / IP())
    data = datagram(42, frame)
    port.decap(data, 8 + len(frame), VTEP_A, 0.0)
    port.decap(data, 8 + len(frame), VTEP_C, 5.0)  # moved to an IPv6 VTEP
    assert port.fdb.entries(6.0) == [(A_MAC, VTEP_C, False, 1)]
    port.decap(data, 8 + len(frame), VTEP_C, 9.0)
    assert port.fdb.lookup(A_MAC, 18.9) == VTEP_C
    assert port.fdb.lookup(A_MAC, 19.0) is None


def test_learning_off_learns_nothing() -> None:
    port = make_port(learning=False)
    frame = bytes(eth(src=A_MAC) / IP())
    assert port.decap(datagram(42, frame), 8 + len(frame), VTEP_A, 0.0) == len(frame)
    assert len(port.fdb) == 0


def test_encap_destinations() -> None:
    port = make_port(ageing=10.0)
    port.fdb.learn(B_MAC, VTEP_B, 0.0)
    port.fdb.add_static(C_MAC, VTEP_C)
    cases = [
        (B_MAC, 9.9, VTEP_B),
        (B_MAC, 10.0, None),
        (C_MAC, 1e9, VTEP_C),
        ("02:00:00:00:00:99", 0.0, None),
        ("ff:ff:ff:ff:ff:ff", 0.0, None),
        ("01:00:5e:00:00:fb", 0.0, None),
    ]
    for flood in ([], [VTEP_B, VTEP_C]):
        port.fdb.set_flood(flood)
        for dst, now, remote in cases:
            frame = bytes(eth(dst=dst) / IP())
            got = port.encap(slot_with(frame), HEADROOM, len(frame), now)
            assert got == (remote or (FLOOD if flood else None)), (dst, now, flood)
    assert drops(port) == {"no_destination": 4}  # the four BUM/unknown/expired cases, no flood


def test_encap_short_frame() -> None:
    port = make_port()
    port.fdb.set_flood([VTEP_B])
    for n in range(14):
        assert port.encap(slot_with(GOOD), HEADROOM, n, 0.0) is None
    assert drops(port) == {"short_frame": 14}


# -- source port ------------------------------------------------------------------------------


def tcp_frame(sport: int, payload: bytes = b"", ttl: int = 64, ident: int = 1) -> bytes:
    ip = IP(src="10.88.0.1", dst="10.88.0.2", ttl=ttl, id=ident)
    return bytes(eth() / ip / TCP(sport=sport, dport=443) / Raw(payload))


def port_of(port: VxlanPort, frame: bytes) -> int:
    return port.source_port(slot_with(frame), HEADROOM, len(frame))


def test_same_flow_same_port() -> None:
    port = make_port()
    ports = {port_of(port, tcp_frame(40000, b"p" * n, ttl=n + 1, ident=n)) for n in range(50)}
    assert len(ports) == 1
    frame = tcp_frame(40000)
    assert port_of(port, frame) == port_from_hash(flow_hash(slot_with(frame), HEADROOM, len(frame)))


@pytest.mark.parametrize(
    "make",
    [
        lambda i: tcp_frame(1024 + i),
        lambda i: bytes(eth() / IP(src="10.88.0.1", dst=f"10.{i >> 8}.{i & 255}.1") / UDP()),
        lambda i: bytes(eth() / IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=2000 + i)),
        lambda i: bytes(eth() / Dot1Q() / IP() / UDP(dport=i + 1)),
        lambda i: bytes(
            eth()
            / IP(src="10.88.0.1", dst="10.88.0.2", options=b"\x01\x01\x01\x00")
            / TCP(sport=i + 1)
        ),
        lambda i: bytes(Ether(src=f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}", dst=B_MAC) / ARP()),
    ],
    ids=["tcp-sport", "ipv4-dst", "ipv6-sport", "vlan-udp", "ipv4-options", "non-ip"],
)
def test_flows_spread_over_range(make) -> None:  # noqa: ANN001
    port = make_port()
    ports = [port_of(port, make(i)) for i in range(1000)]
    assert all(PORT_MIN_DEFAULT <= p <= PORT_MAX_DEFAULT for p in ports)
    assert len(set(ports)) >= 500


def test_fragments_hash_without_ports() -> None:
    port = make_port()
    first = bytes(eth() / IP(src="10.88.0.1", dst="10.88.0.2", flags="MF") / UDP(sport=5))
    later = bytes(eth() / IP(src="10.88.0.1", dst="10.88.0.2", frag=100, proto=17) / Raw(b"x" * 8))
    assert port_of(port, first) == port_of(port, later)


@given(h=st.integers(0, 2**32 - 1))
def test_port_from_hash_in_range(h: int) -> None:
    assert PORT_MIN_DEFAULT <= port_from_hash(h) <= PORT_MAX_DEFAULT
    assert 5000 <= port_from_hash(h, 5000, 5003) <= 5003


def test_custom_source_port_range() -> None:
    port = VxlanPort(
        42, Fdb(300), Counters(VxlanDrop, VxlanTxDrop), MTU, True, port_min=49152, port_max=49155
    )
    assert {port_of(port, tcp_frame(i)) for i in range(200)} == {49152, 49153, 49154, 49155}


# -- fuzz and misuse ---------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=MTU + 64), header=st.booleans())
def test_random_datagrams_never_raise(data: bytes, header: bool) -> None:
    if header:
        data = VXLAN_HDR.pack(0x08000000, 42 << 8) + data
    port = make_port()
    buf = memoryview(bytearray(data + bytes(16)))
    n = port.decap(buf, len(data), VTEP_A, 0.0)
    dropped = sum(port.counters.rx_dropped)
    assert (n == -1 and dropped == 1) or (n == len(data) - 8 and dropped == 0)


def test_header_helpers() -> None:
    buf = bytearray(10)
    write_header(buf, 2, 0xABCDEF)
    assert bytes(buf[2:]) == b"\x08\x00\x00\x00\xab\xcd\xef\x00"
    assert parse_header(buf[2:]) == (0x08, 0xABCDEF)
    for n in range(8):
        with pytest.raises(ValueError):
            parse_header(bytes(n))
    assert struct.unpack("!II", bytes(VXLAN(vni=7))) == (0x08000000, 7 << 8)


def test_constructor_misuse_raises() -> None:
    with pytest.raises(ValueError):
        VxlanPort(2**24, Fdb(300), Counters(VxlanDrop, VxlanTxDrop), MTU, True)
    with pytest.raises(ValueError):
        VxlanPort(1, Fdb(300), Counters(VxlanTxDrop, VxlanDrop), MTU, True)
    assert repr(FLOOD) == "FLOOD"
