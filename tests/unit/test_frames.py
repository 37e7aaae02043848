"""L3 helpers checked against scapy-built and scapy-parsed packets."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from tunneld.proto import frames
from tunneld.proto.frames import (
    build_icmp_net_unreachable_v4,
    build_icmp_time_exceeded_v4,
    decrement_hop_limit_ipv6,
    decrement_ttl_ipv4,
    internet_checksum,
    ip_version,
    ipv4_checksum_ok,
    ipv4_header_checksum,
    packet_length,
)

ROUTER = ipaddress.IPv4Address("10.5.1.0").packed


def v4(**fields: object) -> bytearray:
    pkt = IP(src="10.5.1.2", dst="10.5.9.9", **fields) / UDP(sport=1234, dport=53) / Raw(b"q" * 20)
    return bytearray(bytes(pkt))


ip_fields = st.fixed_dictionaries(
    {
        "ttl": st.integers(0, 255),
        "id": st.integers(0, 0xFFFF),
        "tos": st.integers(0, 255),
        "flags": st.integers(0, 7),
        "frag": st.integers(0, 0x1FFF),
        "options": st.sampled_from([[], b"\x01\x01\x01\x00", b"\x07\x07\x04" + b"\x00" * 5]),
    }
)


@settings(max_examples=300, deadline=None)
@given(fields=ip_fields)
def test_ipv4_checksum_matches_scapy(fields: dict) -> None:
    pkt = v4(**fields)
    scapy_csum = IP(bytes(pkt)).chksum
    assert ipv4_header_checksum(pkt) == scapy_csum
    assert ipv4_checksum_ok(pkt)
    pkt[frames.IPV4_CSUM] ^= 0x40
    assert not ipv4_checksum_ok(pkt)
    assert ipv4_header_checksum(pkt) == scapy_csum  # the field's own value does not count


@settings(max_examples=300, deadline=None)
@given(fields=ip_fields, pad=st.integers(0, 5))
def test_ttl_decrement_incremental_equals_recomputed(fields: dict, pad: int) -> None:
    pkt = bytearray(pad) + v4(**fields)
    view = memoryview(pkt)
    ttl = fields["ttl"]
    new = decrement_ttl_ipv4(view, pad)
    if ttl <= 1:
        assert new == 0 and pkt[pad:] == v4(**fields)  # untouched: the caller drops
        return
    assert new == ttl - 1 == pkt[pad + frames.IPV4_TTL]
    parsed = IP(bytes(pkt[pad:]))
    recomputed = IP(bytes(IP(bytes(pkt[pad:]), chksum=None)))
    assert parsed.chksum == ipv4_header_checksum(pkt, pad) == IP(bytes(recomputed)).chksum
    assert ipv4_checksum_ok(pkt, pad)


def test_ttl_decrement_where_the_new_checksum_is_zero() -> None:
    # RFC 1624 section 3: the naive HC + 0x100 would give 0xFFFF here; eqn. 3 gives 0x0000.
    def header(ident: int, ttl: int) -> bytearray:
        return bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, ident, 0, ttl, 6, 0,
                                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])))  # fmt: skip

    ident = next(i for i in range(0x10000) if internet_checksum(header(i, 63)) == 0)
    pkt = header(ident, 64)
    pkt[10:12] = struct.pack("!H", internet_checksum(pkt))
    assert decrement_ttl_ipv4(pkt) == 63
    assert pkt[10:12] == b"\x00\x00" and ipv4_checksum_ok(pkt)
    assert IP(bytes(pkt)).chksum == IP(bytes(IP(bytes(pkt), chksum=None))).chksum == 0


@given(data=st.binary(max_size=64))
def test_internet_checksum_is_rfc1071(data: bytes) -> None:
    padded = data + b"\x00" * (len(data) & 1)
    total = sum(struct.unpack(f"!{len(padded) // 2}H", padded))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    assert internet_checksum(data) == ~total & 0xFFFF


def test_hop_limit_ipv6() -> None:
    pkt = bytearray(bytes(IPv6(src="fd00::1", dst="fd00::2", hlim=64) / UDP() / Raw(b"x")))
    assert ip_version(pkt) == 6
    assert decrement_hop_limit_ipv6(pkt) == 63 and IPv6(bytes(pkt)).hlim == 63
    pkt[7] = 1
    assert decrement_hop_limit_ipv6(pkt) == 0 and pkt[7] == 1


def test_addresses_and_lengths() -> None:
    p4 = v4()
    p6 = bytes(IPv6(src="fd00::1", dst="fd00::2") / UDP() / Raw(b"x" * 3))
    assert (frames.inner_src(p4), frames.inner_dst(p4)) == (
        ipaddress.ip_address("10.5.1.2"),
        ipaddress.ip_address("10.5.9.9"),
    )
    assert frames.inner_dst(p6) == ipaddress.ip_address("fd00::2")
    assert frames.inner_src(b"\x45") is None and frames.inner_src(b"") is None
    assert p4[frames.IPV4_DST : frames.IPV4_DST + 4] == bytes([10, 5, 9, 9])
    assert p6[frames.IPV6_SRC : frames.IPV6_SRC + 16] == ipaddress.ip_address("fd00::1").packed
    assert packet_length(p4 + b"\0" * 7, 0, len(p4) + 7) == len(p4)  # trailing padding
    assert packet_length(p6, 0, len(p6)) == len(p6)
    assert packet_length(p4, 0, len(p4) - 1) == 0  # claims more than there is
    assert packet_length(b"\x60" + bytes(30), 0, 31) == 0
    assert packet_length(b"\x41" + bytes(30), 0, 31) == 0  # IHL < 5
    assert packet_length(b"", 0, 0) == 0 and ip_version(b"") == 0


def check_icmp_error(original: bytes, icmp_type: int, code: int, out: bytearray, n: int) -> None:
    reply = IP(bytes(out[:n]))
    assert reply.version == 4 and reply.proto == 1 and reply.len == n
    assert reply.src == "10.5.1.0" and reply.dst == IP(original).src
    assert reply.chksum == IP(bytes(IP(bytes(out[:n]), chksum=None))).chksum
    icmp = reply[ICMP]
    assert (icmp.type, icmp.code) == (icmp_type, code)
    assert icmp.chksum == ICMP(bytes(ICMP(bytes(icmp), chksum=None))).chksum
    hlen = (original[0] & 0x0F) * 4
    assert bytes(out[28:n]) == original[: hlen + 8]  # IP header + 64 bits of data (RFC 792)
    assert reply[IPerror].dst == IP(original).dst


@pytest.mark.parametrize("options", [[], b"\x01\x01\x01\x00"])
def test_icmp_net_unreachable_parses_in_scapy(options: object) -> None:
    original = bytes(
        IP(src="10.5.1.2", dst="10.9.9.9", options=options)
        / TCP(sport=40000, dport=443, flags="S")
        / Raw(b"payload" * 10)
    )
    out = bytearray(96)
    n = build_icmp_net_unreachable_v4(memoryview(original), ROUTER, out)
    assert n == 28 + (original[0] & 0x0F) * 4 + 8
    check_icmp_error(original, 3, 0, out, n)
    assert IP(bytes(out[:n]))[TCPerror].dport == 443


def test_icmp_time_exceeded_and_short_original() -> None:
    original = bytes(IP(src="10.5.1.2", dst="10.9.9.9", ttl=1) / UDP(sport=1, dport=2))[:24]
    original = original[:2] + struct.pack("!H", 24) + original[4:]  # 4 bytes of data only
    out = bytearray(96)
    n = build_icmp_time_exceeded_v4(original, ROUTER, out)
    assert n == 28 + 24
    reply = IP(bytes(out[:n]))
    assert (reply[ICMP].type, reply[ICMP].code) == (11, 0)
    assert bytes(out[28:n]) == original


@pytest.mark.parametrize(
    "original",
    [
        IP(src="10.5.1.2", dst="10.9.9.9") / ICMP(type=3, code=1),  # never about an ICMP error
        IP(src="10.5.1.2", dst="10.9.9.9", frag=10) / Raw(b"x" * 8),  # non-initial fragment
        IP(src="0.0.0.0", dst="10.9.9.9") / UDP(),
        IP(src="127.0.0.1", dst="10.9.9.9") / UDP(),
        IP(src="224.0.0.5", dst="10.9.9.9") / UDP(),
        IP(src="10.5.1.2", dst="239.1.1.1") / UDP(),
        IP(src="10.5.1.2", dst="255.255.255.255") / UDP(),
        IPv6(src="fd00::1", dst="fd00::2") / UDP(),
        Raw(b"\x45" + bytes(10)),  # truncated header
        Raw(b"\x46" + bytes(19)),  # IHL says 24 bytes, only 20 present
    ],
    ids=[
        "icmp-error",
        "fragment",
        "src-zero",
        "src-loopback",
        "src-multicast",
        "dst-multicast",
        "dst-broadcast",
        "ipv6",
        "truncated",
        "bad-ihl",
    ],
)
def test_icmp_error_suppressed(original: object) -> None:
    out = bytearray(96)
    assert build_icmp_net_unreachable_v4(bytes(original), ROUTER, out) == 0
    assert out == bytearray(96)


def test_icmp_error_about_echo_request_is_sent() -> None:
    original = bytes(
        IP(src="10.5.1.2", dst="10.9.9.9") / ICMP(type=8, id=7, seq=1) / Raw(b"p" * 40)
    )
    out = bytearray(96)
    n = build_icmp_net_unreachable_v4(original, ROUTER, out)
    check_icmp_error(original, 3, 0, out, n)
