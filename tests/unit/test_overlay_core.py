"""The overlay's sans-IO forwarding core: LPM, TTL, ICMP net-unreachable, source checks.

Packets are built with scapy; every drop is asserted by its counter reason.
"""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest
from scapy.layers.inet import ICMP, IP, UDP, IPerror, UDPerror
from scapy.packet import Raw

from tunneld.proto.counters import Counters
from tunneld.proto.frames import ipv4_checksum_ok
from tunneld.proto.overlay import (
    OWN,
    SEND_ICMP,
    OverlayRouter,
    OverlayRxDrop,
    OverlayTxDrop,
)

OFF = 16
OWN_SUBNET = IPv4Network("10.5.1.0/24")
NETWORK = IPv4Network("10.5.0.0/16")
DEST2, DEST3 = ("192.168.77.2", 8285), ("192.168.77.3", 8285)


def slot(pkt: bytes | IP) -> tuple[bytearray, int]:
    raw = bytes(pkt)
    buf = bytearray(OFF + len(raw) + 32)
    buf[OFF : OFF + len(raw)] = raw
    return buf, len(raw)


@pytest.fixture
def router() -> OverlayRouter:
    r = OverlayRouter(OWN_SUBNET, NETWORK, Counters(OverlayRxDrop, OverlayTxDrop))
    r.add_route(IPv4Network("10.5.2.0/24"), "192.168.77.2", DEST2)
    r.add_route(IPv4Network("10.5.3.0/24"), "192.168.77.3", DEST3)
    return r


def tx(r: OverlayRouter, reason: OverlayTxDrop) -> int:
    return r.counters.tx_dropped[reason]


def rx(r: OverlayRouter, reason: OverlayRxDrop) -> int:
    return r.counters.rx_dropped[reason]


# --- route table ---------------------------------------------------------------------------


def test_longest_prefix_wins_and_removal_falls_back(router: OverlayRouter) -> None:
    router.add_route(IPv4Network("10.5.0.0/16"), "192.168.77.9", ("192.168.77.9", 8285))
    router.add_route(IPv4Network("10.5.3.128/25"), "192.168.77.8", ("192.168.77.8", 8285))
    for dst, expected in (("10.5.3.200", "192.168.77.8"), ("10.5.3.1", "192.168.77.3"),
                          ("10.5.99.1", "192.168.77.9"), ("10.5.2.1", "192.168.77.2")):  # fmt: skip
        buf, n = slot(IP(dst=dst) / UDP())
        assert router.outbound(buf, OFF, n, 0.0)[0] == expected, dst
    router.remove_route(IPv4Network("10.5.3.128/25"))
    buf, n = slot(IP(dst="10.5.3.200") / UDP())
    assert router.outbound(buf, OFF, n, 0.0) == DEST3
    buf, n = slot(IP(src="10.5.1.0", dst="10.5.1.7") / UDP())  # own subnet beats the /16
    assert router.outbound(buf, OFF, n, 0.0) is SEND_ICMP


# --- outbound (device -> underlay) -----------------------------------------------------------


def test_outbound_picks_the_owner_and_decrements_ttl(router: OverlayRouter) -> None:
    buf, n = slot(IP(src="10.5.1.0", dst="10.5.3.9", ttl=64) / ICMP())
    assert router.outbound(buf, OFF, n, 0.0) == DEST3
    out = IP(bytes(buf[OFF : OFF + n]))
    assert out.ttl == 63 and ipv4_checksum_ok(buf, OFF)
    buf, n = slot(IP(src="10.5.1.0", dst="10.5.2.1") / UDP(dport=53))
    assert router.outbound(buf, OFF, n, 0.0) == DEST2


@pytest.mark.parametrize("dst", ["10.5.77.1", "10.5.1.20", "172.16.0.1"])
def test_no_owner_or_own_subnet_answers_net_unreachable(router: OverlayRouter, dst: str) -> None:
    offender = IP(src="10.5.1.0", dst=dst, ttl=64) / UDP(sport=1234, dport=53) / Raw(b"q" * 40)
    buf, n = slot(offender)
    assert router.outbound(buf, OFF, n, 0.0) is SEND_ICMP
    reply = IP(bytes(router.icmp_buf[: router.icmp_len]))
    # from the overlay's own address, not the device's (a local source would be a martian)
    assert (reply.src, reply.dst, reply.proto) == ("10.5.0.0", "10.5.1.0", 1)
    assert (reply[ICMP].type, reply[ICMP].code) == (3, 0)
    # RFC 792: the offender's IP header plus the first 64 bits of its data, checksums valid
    assert bytes(reply[ICMP].payload) == bytes(offender)[:28]
    assert reply[IPerror].dst == dst and reply[UDPerror].sport == 1234
    fresh = IP(bytes(reply))
    del fresh.chksum, fresh[ICMP].chksum  # scapy recomputes both on build
    rebuilt = IP(bytes(fresh))
    assert (rebuilt.chksum, rebuilt[ICMP].chksum) == (reply.chksum, reply[ICMP].chksum)
    assert tx(router, OverlayTxDrop.NO_ROUTE) == 1


def test_icmp_errors_are_rate_limited(router: OverlayRouter) -> None:
    sent = 0
    for _ in range(50):
        buf, n = slot(IP(src="10.5.1.0", dst="10.9.0.1") / UDP())
        sent += router.outbound(buf, OFF, n, 100.0) is SEND_ICMP
    assert sent == 10
    assert tx(router, OverlayTxDrop.NO_ROUTE) == 50
    assert tx(router, OverlayTxDrop.ICMP_SUPPRESSED) == 40
    buf, n = slot(IP(src="10.5.1.0", dst="10.9.0.1") / UDP())
    assert router.outbound(buf, OFF, n, 100.5) is SEND_ICMP  # tokens refill at 10/s


@pytest.mark.parametrize("offender", [
    IP(src="10.5.1.0", dst="10.9.0.1") / ICMP(type=3, code=1) / Raw(b"x" * 28),  # an error
    IP(src="10.5.1.0", dst="10.9.0.1", frag=10) / Raw(b"x" * 16),  # not the first fragment
    IP(src="0.0.0.0", dst="10.9.0.1") / UDP(),
    IP(src="224.0.0.5", dst="10.9.0.1") / UDP(),
])  # fmt: skip
def test_no_icmp_about_errors_fragments_or_non_unicast(router: OverlayRouter, offender) -> None:
    buf, n = slot(offender)
    assert router.outbound(buf, OFF, n, 0.0) is None
    assert tx(router, OverlayTxDrop.ICMP_SUPPRESSED) == 1


def test_icmp_echo_to_nowhere_still_gets_an_error(router: OverlayRouter) -> None:
    buf, n = slot(IP(src="10.5.1.0", dst="10.9.0.1") / ICMP(type=8))
    assert router.outbound(buf, OFF, n, 0.0) is SEND_ICMP


@pytest.mark.parametrize("ttl", [0, 1])
def test_outbound_ttl_expiry_is_dropped(router: OverlayRouter, ttl: int) -> None:
    buf, n = slot(IP(src="10.5.1.0", dst="10.5.2.1", ttl=ttl) / UDP())
    assert router.outbound(buf, OFF, n, 0.0) is None
    assert tx(router, OverlayTxDrop.TTL_EXPIRED) == 1


def test_outbound_non_ipv4_and_truncated(router: OverlayRouter) -> None:
    ipv6 = bytes.fromhex("6000000000003aff") + bytes(32)
    buf, n = slot(ipv6)
    assert router.outbound(buf, OFF, n, 0.0) is None
    assert tx(router, OverlayTxDrop.NOT_IPV4) == 1
    raw = bytes(IP(dst="10.5.2.1") / UDP() / Raw(b"z" * 20))
    for cut in (0, 10, 19, len(raw) - 1):
        buf, _ = slot(raw)
        assert router.outbound(buf, OFF, cut, 0.0) is None
    assert tx(router, OverlayTxDrop.TRUNCATED) == 4


# --- inbound (underlay -> device) ------------------------------------------------------------


def test_inbound_accepts_registered_sources_only(router: OverlayRouter) -> None:
    pkt = IP(src="10.5.2.0", dst="10.5.1.0", ttl=63) / ICMP()
    buf, n = slot(bytes(pkt) + b"pad")  # trailing bytes beyond the IP total length
    assert router.inbound(buf, OFF, n, "192.168.77.2") == len(pkt)
    assert IP(bytes(buf[OFF : OFF + len(pkt)])).ttl == 62 and ipv4_checksum_ok(buf, OFF)
    assert router.inbound(buf, OFF, n, "192.168.77.9") == -1
    assert rx(router, OverlayRxDrop.UNKNOWN_SOURCE) == 1


def test_inbound_bad_payloads_are_counted_by_reason(router: OverlayRouter) -> None:
    src = "192.168.77.3"
    cases = [
        (b"\x60" + bytes(47), OverlayRxDrop.NOT_IPV4),
        (b"hello world, not a packet", OverlayRxDrop.NOT_IPV4),
        (b"", OverlayRxDrop.TRUNCATED),
        (bytes(IP(dst="10.5.1.0") / UDP())[:12], OverlayRxDrop.TRUNCATED),
        (bytes(IP(dst="10.5.1.0") / UDP() / Raw(b"y" * 30))[:40], OverlayRxDrop.TRUNCATED),
        (bytes(IP(src="10.5.3.1", dst="10.5.1.0", ttl=1) / UDP()), OverlayRxDrop.TTL_EXPIRED),
        (bytes(IP(src="10.5.3.1", dst="10.5.1.0", ttl=0) / UDP()), OverlayRxDrop.TTL_EXPIRED),
    ]
    for payload, reason in cases:
        buf, n = slot(payload)
        before = rx(router, reason)
        assert router.inbound(buf, OFF, n, src) == -1, payload
        assert rx(router, reason) == before + 1


def test_route_changes_update_the_accepted_sources(router: OverlayRouter) -> None:
    router.add_route(IPv4Network("10.5.4.0/24"), "192.168.77.2", DEST2)  # a second subnet
    router.remove_route(IPv4Network("10.5.2.0/24"))
    assert "192.168.77.2" in router.sources
    router.remove_route(IPv4Network("10.5.4.0/24"))
    assert "192.168.77.2" not in router.sources
    assert [(str(n), ip) for n, ip in router.routes()] == [("10.5.3.0/24", "192.168.77.3")]
    assert router.table.get(OWN_SUBNET) is OWN
    with pytest.raises(ValueError):
        router.add_route(OWN_SUBNET, "192.168.77.9", DEST2)


def test_icmp_source_avoids_our_own_address() -> None:
    first = OverlayRouter(
        IPv4Network("10.5.0.0/24"), NETWORK, Counters(OverlayRxDrop, OverlayTxDrop)
    )
    buf, n = slot(IP(src="10.5.0.0", dst="10.9.0.1") / UDP())
    assert first.outbound(buf, OFF, n, 0.0) is SEND_ICMP
    assert IP(bytes(first.icmp_buf[: first.icmp_len])).src == "10.5.0.1"
