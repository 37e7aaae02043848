"""ICMP frag-needed, ICMPv6 Packet Too Big and TCP MSS clamping, against scapy.

scapy builds the originals and parses the results; every checksum is compared with the
one scapy computes for the same bytes (scapy verifies nothing on its own, so the tests
recompute: `chksum=None` and rebuild).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror
from scapy.layers.inet6 import ICMPv6EchoRequest, ICMPv6PacketTooBig, IPerror6, IPv6
from scapy.packet import Raw

from tunneld.proto.frames import (
    IPV6_MIN_MTU,
    build_frag_needed_v4,
    build_packet_too_big_v6,
    clamp_mss,
)


def tcp_ok(pkt: IP | IPv6) -> bool:
    """The TCP checksum of pkt equals the one scapy computes from scratch."""
    again = pkt.__class__(bytes(pkt))
    want = again[TCP].chksum
    del again[TCP].chksum
    return bool(pkt.__class__(bytes(again))[TCP].chksum == want)


# -- frag-needed ---------------------------------------------------------------------


def test_frag_needed_quotes_and_carries_the_mtu() -> None:
    original = bytes(
        IP(src="10.77.0.1", dst="10.77.0.2", flags="DF")
        / TCP(sport=4000, dport=80)
        / Raw(b"x" * 1300)
    )
    out = bytearray(96)
    n = build_frag_needed_v4(original, out, 1232)
    assert n == 20 + 8 + 28
    reply = IP(bytes(out[:n]))
    assert (reply.src, reply.dst) == ("10.77.0.2", "10.77.0.1")  # from the original destination
    assert (reply[ICMP].type, reply[ICMP].code, reply[ICMP].nexthopmtu) == (3, 4, 1232)
    assert reply.chksum == IP(bytes(IP(bytes(out[:n]), chksum=None))).chksum
    assert reply[ICMP].chksum == ICMP(bytes(ICMP(bytes(reply[ICMP]), chksum=None))).chksum
    assert reply[IPerror].dst == "10.77.0.2" and reply[TCPerror].dport == 80
    assert bytes(out[28:n]) == original[:28]


def test_frag_needed_not_without_df_nor_about_icmp_errors() -> None:
    out = bytearray(96)
    no_df = bytes(IP(src="10.77.0.1", dst="10.77.0.2") / UDP() / Raw(b"x" * 100))
    assert build_frag_needed_v4(no_df, out, 1232) == 0
    error = bytes(IP(src="10.77.0.1", dst="10.77.0.2", flags="DF") / ICMP(type=3, code=4))
    assert build_frag_needed_v4(error, out, 1232) == 0
    assert build_frag_needed_v4(b"\x45\x00", out, 1232) == 0
    assert out == bytearray(96)


# -- Packet Too Big ------------------------------------------------------------------


@pytest.mark.parametrize("payload", [100, 1400, 60000])
def test_packet_too_big_quotes_at_most_1280(payload: int) -> None:
    original = bytes(
        IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=4000, dport=80) / Raw(b"y" * payload)
    )
    out = bytearray(IPV6_MIN_MTU)
    n = build_packet_too_big_v6(original, out, 1232)
    assert n == min(48 + len(original), IPV6_MIN_MTU)
    reply = IPv6(bytes(out[:n]))
    assert (reply.src, reply.dst, reply.nh, reply.plen) == ("fd00::2", "fd00::1", 58, n - 40)
    ptb = reply[ICMPv6PacketTooBig]
    assert (ptb.type, ptb.code, ptb.mtu) == (2, 0, 1232)
    want = ptb.cksum
    del ptb.cksum
    assert IPv6(bytes(reply))[ICMPv6PacketTooBig].cksum == want
    assert reply[IPerror6].dst == "fd00::2"
    assert bytes(out[48:n]) == original[: n - 48]


@pytest.mark.parametrize(
    "original",
    [
        IPv6(src="fd00::1", dst="fd00::2") / ICMPv6PacketTooBig(mtu=1280),  # an ICMPv6 error
        IPv6(src="ff02::1", dst="fd00::2") / UDP(),
        IPv6(src="fd00::1", dst="ff0e::1") / UDP() / Raw(b"m" * 1400),
        IPv6(src="::", dst="fd00::2") / UDP(),
        IPv6(src="::1", dst="fd00::2") / UDP(),
        IP(src="10.0.0.1", dst="10.0.0.2") / UDP(),
        Raw(b"\x60" + bytes(20)),
    ],
    ids=[
        "icmpv6-error",
        "src-multicast",
        "dst-multicast",
        "src-unspecified",
        "src-loopback",
        "ipv4",
        "short",
    ],
)
def test_packet_too_big_suppressed(original: object) -> None:
    out = bytearray(IPV6_MIN_MTU)
    assert build_packet_too_big_v6(bytes(original), out, 1280) == 0
    assert out == bytearray(IPV6_MIN_MTU)


def test_packet_too_big_about_an_echo_request_is_sent() -> None:
    original = bytes(IPv6(src="fd00::1", dst="fd00::2") / ICMPv6EchoRequest(data=b"z" * 1400))
    out = bytearray(IPV6_MIN_MTU)
    assert build_packet_too_big_v6(original, out, 1300) == IPV6_MIN_MTU


# -- MSS clamping --------------------------------------------------------------------

OPTION_SETS = [
    [("MSS", 1460)],
    [("NOP", None), ("MSS", 1460)],  # the value at an odd offset
    [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)],
    [("SAckOK", b""), ("Timestamp", (123456, 0)), ("NOP", None), ("MSS", 65495)],
    [("NOP", None), ("NOP", None), ("NOP", None), ("MSS", 8960), ("WScale", 2)],
]


def syn(version: int, options: list, flags: str = "S", payload: bytes = b"") -> IP | IPv6:
    ip = IP(src="10.0.0.1", dst="10.0.0.2") if version == 4 else IPv6(src="fd::1", dst="fd::2")
    return ip / TCP(sport=40000, dport=5201, flags=flags, seq=7, options=options) / Raw(payload)


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("flags", ["S", "SA"])
@pytest.mark.parametrize("options", OPTION_SETS, ids=range(len(OPTION_SETS)))
def test_clamp_rewrites_mss_with_a_valid_checksum(version: int, flags: str, options: list) -> None:
    pkt = syn(version, options, flags)
    buf = bytearray(b"\xee" * 8 + bytes(pkt) + b"\xee" * 3)  # at an offset, with slack
    n = len(bytes(pkt))
    assert clamp_mss(buf, 8, n, 1380, 1360)
    out = (IP if version == 4 else IPv6)(bytes(buf[8 : 8 + n]))
    assert dict(out[TCP].options)["MSS"] == (1380 if version == 4 else 1360)
    assert tcp_ok(out)
    others = [o for o in out[TCP].options if o[0] != "MSS"]
    before = (IP if version == 4 else IPv6)(bytes(pkt))
    assert others == [o for o in before[TCP].options if o[0] != "MSS"]
    assert buf[:8] == b"\xee" * 8 and buf[8 + n :] == b"\xee" * 3
    if version == 4:
        assert out.chksum == IP(bytes(IP(bytes(out), chksum=None))).chksum  # untouched


@settings(max_examples=300, deadline=None)
@given(
    version=st.sampled_from([4, 6]),
    mss=st.integers(1, 0xFFFF),
    limit=st.integers(88, 0xFFFF),
    nops=st.integers(0, 3),
    payload=st.binary(max_size=9),
)
def test_clamp_never_raises_checksum_always_valid(version, mss, limit, nops, payload) -> None:
    pkt = syn(version, [("NOP", None)] * nops + [("MSS", mss), ("WScale", 3)], payload=payload)
    raw = bytes(pkt)
    buf = bytearray(raw)
    changed = clamp_mss(buf, 0, len(buf), limit, limit)
    assert changed == (mss > limit)
    out = (IP if version == 4 else IPv6)(bytes(buf))
    assert dict(out[TCP].options)["MSS"] == min(mss, limit)
    assert tcp_ok(out)
    for cut in range(0, len(raw), 7):  # truncated copies: never raise
        clamp_mss(bytearray(raw[:cut]), 0, cut, limit, limit)


@pytest.mark.parametrize(
    "pkt",
    [
        IP(src="10.0.0.1", dst="10.0.0.2") / TCP(flags="A", options=[("MSS", 1460)]),
        IP(src="10.0.0.1", dst="10.0.0.2") / TCP(flags="S", options=[("WScale", 7)]),
        IP(src="10.0.0.1", dst="10.0.0.2") / TCP(flags="S", options=[("MSS", 1200)]),
        IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / Raw(b"\x02" * 40),
        IP(src="10.0.0.1", dst="10.0.0.2", frag=5) / TCP(flags="S", options=[("MSS", 1460)]),
        IPv6(src="fd::1", dst="fd::2", nh=0) / Raw(bytes(8)) / TCP(flags="S"),
        Raw(b"\x45" + bytes(50)),
    ],
    ids=["ack", "no-mss", "mss-small", "udp", "fragment", "ext-header", "garbage"],
)
def test_clamp_leaves_other_packets_alone(pkt: object) -> None:
    raw = bytes(pkt)
    buf = bytearray(raw)
    assert not clamp_mss(buf, 0, len(buf), 1380, 1360)
    assert bytes(buf) == raw
