"""Malformed input is dropped and counted, never raised; Hypothesis round trips and order.

* A table of malformed virtio_net_hdrs and super-packets, each with the GsoDrop it counts.
* GSO_NONE + NEEDS_CSUM: the checksum completed in place is the one scapy computes.
* Hypothesis: random cases split and coalesce back byte for byte; random bytes and random
  headers never raise and count exactly one reason; the coalescer keeps every packet once,
  per-flow order, and writes in the order of their first packet, whatever the batch.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from tests.unit.test_gso import (
    HDR,
    Case,
    assert_checksums_valid,
    build,
    check_segments,
    coalesce,
    expected_groups,
    kernel_read,
    l4_offset,
    merged_read,
    ones_sum,
    payload_bytes,
    split,
    super_read,
    with_partial_csum,
)
from tunneld.proto import gso
from tunneld.proto.gso import Coalescer, GsoDrop, Segmenter

TCP4 = Case("tcp4", payload=3000, gso=1000)
TCP6 = Case("tcp6", v=6, payload=3000, gso=1000)
UDP4 = Case("udp4", proto="udp", payload=3000, gso=1000)
TAP4 = Case("tap4", l2=14, payload=3000, gso=1000)


@dataclass(frozen=True)
class Malformed:
    name: str
    reason: GsoDrop
    mutate: Callable[[list[int], bytearray], bytes]  # header fields (mutable), packet -> packet
    case: Case = TCP4
    max_segments: int = 1024


def hdr(**fields: int) -> Callable[[list[int], bytearray], bytes]:
    names = ["flags", "gso_type", "hdr_len", "gso_size", "csum_start", "csum_offset"]

    def mutate(h: list[int], raw: bytearray) -> bytes:
        for name, value in fields.items():
            h[names.index(name)] = value
        return bytes(raw)

    return mutate


def poke(at: int, value: bytes) -> Callable[[list[int], bytearray], bytes]:
    def mutate(h: list[int], raw: bytearray) -> bytes:
        raw[at : at + len(value)] = value
        return bytes(raw)

    return mutate


def plus_one(at: int) -> Callable[[list[int], bytearray], bytes]:
    def mutate(h: list[int], raw: bytearray) -> bytes:
        struct.pack_into("!H", raw, at, struct.unpack_from("!H", raw, at)[0] + 1)
        return bytes(raw)

    return mutate


B, P, T = GsoDrop.BAD_VNET_HDR, GsoDrop.BAD_GSO_PACKET, GsoDrop.TOO_MANY_SEGMENTS
MALFORMED = [
    Malformed("unknown-flag-rsc-info", B, hdr(flags=4)),
    Malformed("unknown-flag-high", B, hdr(flags=0x81)),
    *(Malformed(f"gso-type-{t}", B, hdr(gso_type=t)) for t in (2, 3, 6, 0x7F, 0x83)),
    Malformed("ecn-on-udp", B, hdr(gso_type=gso.GSO_UDP_L4 | gso.GSO_ECN), UDP4),
    Malformed("csum-start-outside", B, hdr(csum_start=3040)),
    Malformed("csum-offset-outside", B, hdr(csum_offset=0xFFFF)),
    Malformed("csum-field-straddles-end", B, hdr(csum_start=3038, csum_offset=1)),
    Malformed("csum-start-not-at-l4", P, hdr(csum_start=24)),
    Malformed("csum-offset-not-tcp-check", P, hdr(csum_offset=6)),
    Malformed("csum-offset-not-udp-check", P, hdr(csum_offset=16), UDP4),
    Malformed("gso-size-0", P, hdr(gso_size=0)),
    Malformed("hdr-len-beyond-packet", P, hdr(hdr_len=3041)),
    Malformed("tcpv6-on-ipv4", P, hdr(gso_type=gso.GSO_TCPV6)),
    Malformed("tcpv4-on-ipv6", P, hdr(gso_type=gso.GSO_TCPV4), TCP6),
    Malformed("udp-l4-on-tcp", P, hdr(gso_type=gso.GSO_UDP_L4, csum_offset=6)),
    Malformed("tcp-on-udp", P, hdr(gso_type=gso.GSO_TCPV4, csum_offset=16), UDP4),
    Malformed("ipv4-total-length-disagrees", P, plus_one(2)),
    Malformed("ipv6-payload-length-disagrees", P, plus_one(4), TCP6),
    Malformed("udp-length-disagrees", P, plus_one(24), UDP4),
    Malformed("ipv4-more-fragments", P, poke(6, b"\x20")),
    Malformed("ipv4-fragment-offset", P, poke(7, b"\x01")),
    Malformed("ipv4-ihl-4", P, poke(0, b"\x44")),
    Malformed("ip-version-5", P, poke(0, b"\x55")),
    Malformed("ipv6-extension-header", P, poke(6, b"\x00"), TCP6),
    Malformed("tcp-data-offset-4", P, poke(32, b"\x40")),
    Malformed("truncated-ip-header", P, lambda h, raw: truncate(h, raw, 12)),
    Malformed("truncated-tcp-header", P, lambda h, raw: truncate(h, raw, 30)),
    # with NEEDS_CSUM the header is checked first: its checksum field lies past the end
    Malformed("truncated-before-csum-field", B, lambda h, raw: bytes(raw[:30])),
    Malformed("truncated-payload", P, lambda h, raw: bytes(raw[:-1])),
    Malformed("headers-only", P, lambda h, raw: _headers_only(raw)),
    Malformed("tap-arp-ethertype", P, poke(12, b"\x08\x06"), TAP4),
    Malformed("tap-ethertype-says-ipv6", P, poke(12, b"\x86\xdd"), TAP4),
    Malformed("tap-truncated-ethernet", P, lambda h, raw: truncate(h, raw, 16), TAP4),
    Malformed("too-many-segments", T, hdr(), TCP4, max_segments=2),
    Malformed("gso-none-empty", P, lambda h, raw: (hdr(gso_type=0, flags=0)(h, raw), b"")[1]),
    Malformed("gso-none-csum-outside", B, hdr(gso_type=0, csum_start=3000, csum_offset=100)),
]


def truncate(h: list[int], raw: bytearray, n: int) -> bytes:
    h[0] = gso.F_DATA_VALID  # no csum_start to check against the length
    return bytes(raw[:n])


def _headers_only(raw: bytearray) -> bytes:
    out = bytearray(raw[:40])
    struct.pack_into("!H", out, 2, 40)
    return bytes(out)


@pytest.mark.parametrize("bad", MALFORMED, ids=lambda m: m.name)
def test_malformed_read_is_dropped_and_counted(bad: Malformed) -> None:
    read = super_read(bad.case)
    fields, raw = list(HDR.unpack(read[:10])), bytearray(read[10:])
    packet = bad.mutate(fields, raw)
    drops = [0] * len(GsoDrop)
    seg = Segmenter(bad.case.l2, drops, max_segments=bad.max_segments)
    buf = memoryview(bytearray(HDR.pack(*fields) + packet))
    assert seg.prepare(buf, 0, len(buf)) == 0
    assert seg.count == 0 and not seg.in_place
    assert drops == [int(r == bad.reason) for r in GsoDrop]
    with pytest.raises(ValueError):  # nothing to write after a drop: a caller bug
        seg.write(memoryview(bytearray(65536)), 0, 2000)


def test_short_virtio_header_is_dropped() -> None:
    drops = [0] * len(GsoDrop)
    buf = memoryview(bytearray(super_read(TCP4)))
    assert Segmenter(0, drops).prepare(buf, 0, 9) == 0
    assert drops[GsoDrop.BAD_VNET_HDR] == 1


def test_the_kernels_hdr_len_is_not_trusted() -> None:
    """The kernel reports skb_headlen(), e.g. headers plus the first segment when
    forwarding: the segments come out the same whatever hdr_len says within the packet."""
    read = super_read(TCP4)
    expected = split(TCP4, read)
    for hdr_len in (0, 20, 1040, len(read) - 10):
        fields = list(HDR.unpack(read[:10]))
        fields[2] = hdr_len
        assert split(TCP4, HDR.pack(*fields) + read[10:]) == expected


def test_gso_read_without_needs_csum_is_still_checksummed() -> None:
    """A forwarded GRO packet may arrive CHECKSUM_UNNECESSARY (DATA_VALID, no csum_start)."""
    read = super_read(TCP4)
    expected = split(TCP4, read)
    fields = list(HDR.unpack(read[:10]))
    fields[0], fields[4], fields[5] = gso.F_DATA_VALID, 0, 0
    assert split(TCP4, HDR.pack(*fields) + read[10:]) == expected


NONE_CASES = [
    Case("tcp4-tun"),
    Case("tcp6-tun", v=6, options=True),
    Case("udp4-tun", proto="udp"),
    Case("udp6-tap", l2=14, v=6, proto="udp"),
    Case("tcp4-tap", l2=14),
]


def gso_none_read(case: Case, raw: bytes, flags: int = gso.F_NEEDS_CSUM) -> bytes:
    l4 = l4_offset(case)
    partial = with_partial_csum(case, raw)
    # hdr_len/gso_size are ignored for GSO_NONE; give them junk the kernel never sends
    return HDR.pack(flags, gso.GSO_NONE, 99, 1448, l4, 16 if case.proto == "tcp" else 6) + partial


@pytest.mark.parametrize("case", NONE_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("size", [0, 1, 333, 1400])
def test_gso_none_needs_csum_gives_the_checksum_scapy_computes(case: Case, size: int) -> None:
    raw = bytes(build(case, payload_bytes(size, size)))
    buf = memoryview(bytearray(gso_none_read(case, raw)))
    seg = Segmenter(case.l2, [0, 0, 0])
    assert seg.prepare(buf, 0, len(buf)) == 1 and seg.in_place
    assert seg.seg_len == seg.last_len == len(raw)
    assert bytes(buf[10:]) == raw  # scapy's bytes, its checksum included


def test_gso_none_checksum_zero_is_sent_as_ffff() -> None:
    """skb_checksum_help stores CSUM_MANGLED_0 for a computed 0 (the same value in ones'
    complement); scapy writes 0x0000 for TCP, and both verify."""
    case = Case("tcp4")
    raw = bytearray(bytes(build(case, b"\0\0" + payload_bytes(100))))
    l4 = l4_offset(case)
    addrs = bytes(raw[12:20]) + struct.pack("!HH", 6, len(raw) - l4)
    raw[l4 + 16 : l4 + 18] = b"\0\0"
    word = 0xFFFF - ones_sum(addrs + bytes(raw[l4:]))  # makes the sum 0xffff: checksum 0
    raw[l4 + 20 : l4 + 22] = struct.pack("!H", word)  # the payload's first word
    assert IP(bytes(build(case, bytes(raw[l4 + 20 :]))))[TCP].chksum == 0  # scapy: 0x0000
    buf = memoryview(bytearray(gso_none_read(case, bytes(raw))))
    assert Segmenter(0, [0, 0, 0]).prepare(buf, 0, len(buf)) == 1
    assert struct.unpack_from("!H", buf, 10 + l4 + 16)[0] == 0xFFFF
    assert ones_sum(addrs + bytes(buf[10 + l4 :])) == 0xFFFF  # verifies


@pytest.mark.parametrize("flags", [0, gso.F_DATA_VALID])
def test_gso_none_without_needs_csum_is_left_alone(flags: int) -> None:
    raw = bytes(build(TCP4, payload_bytes(500)))
    read = gso_none_read(TCP4, raw, flags)
    buf = memoryview(bytearray(read))
    assert Segmenter(0, [0, 0, 0]).prepare(buf, 0, len(buf)) == 1
    assert bytes(buf) == read


@st.composite
def cases(draw: st.DrawFn) -> Case:
    l2, v = draw(st.sampled_from([0, 14])), draw(st.sampled_from([4, 6]))
    proto = draw(st.sampled_from(["tcp", "udp"]))
    size = draw(st.integers(1, 1500))
    count = draw(st.integers(1, min(64, 64000 // size)))
    payload = draw(st.integers((count - 1) * size + 1, count * size))
    flags = "A" + "".join(f for f in "PFC" if draw(st.booleans())) if proto == "tcp" else "A"
    options = proto == "tcp" and draw(st.booleans())
    vlan = bool(l2) and draw(st.integers(0, 4)) == 0
    return Case("drawn", l2, v, proto, flags, options, payload, size, vlan)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_split_then_coalesce_round_trips(case: Case) -> None:
    read = super_read(case)
    segs = split(case, read)
    check_segments(case, read, segs)
    groups = expected_groups(case)
    writes = coalesce(case.l2, segs)
    assert len(writes) == len(groups)
    for group, got in zip(groups, writes, strict=True):
        members = [segs[i] for i in group]
        assert got == (bytes(10) + members[0] if len(group) == 1 else merged_read(case, members))
    if len(groups) == 1 and case.count > 1:
        assert writes == [read]


vnet_headers = st.tuples(
    st.sampled_from([0, 1, 2, 3, 4]),
    st.sampled_from([0, 1, 3, 4, 5, 0x81, 0x84, 0x85, 7]),
    st.integers(0, 0xFFFF) | st.integers(0, 120),
    st.integers(0, 0xFFFF) | st.integers(0, 1500),
    st.integers(0, 0xFFFF) | st.integers(0, 80),
    st.integers(0, 0xFFFF) | st.sampled_from([6, 16]),
)


def prepare_survives(l2: int, read: bytes, max_segments: int = 1024) -> None:
    """Never raises; 0 counts exactly one reason; else the segments can be written."""
    drops = [0] * len(GsoDrop)
    seg = Segmenter(l2, drops, max_segments)
    buf = memoryview(bytearray(read))
    count = seg.prepare(buf, 0, len(buf))
    if not count:
        assert sum(drops) == 1
        return
    assert drops == [0] * len(GsoDrop) and count <= max_segments
    if not seg.in_place:
        assert seg.hdr_len < seg.seg_len and seg.hdr_len < seg.last_len <= seg.seg_len
        out = memoryview(bytearray(count * seg.seg_len))
        seg.write(out, 0, seg.seg_len)


@settings(max_examples=400, deadline=None)
@given(l2=st.sampled_from([0, 14]), header=vnet_headers, body=st.binary(max_size=200))
def test_random_header_and_bytes_never_raise(l2: int, header: tuple[int, ...], body: bytes) -> None:
    prepare_survives(l2, HDR.pack(*header) + body)


@settings(max_examples=400, deadline=None)
@given(
    case=st.sampled_from([TCP4, TCP6, UDP4, TAP4, replace(UDP4, v=6, l2=14)]),
    field=st.none() | st.tuples(st.integers(0, 5), st.integers(0, 0xFFFF) | st.integers(0, 60)),
    flips=st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=2),
    cut=st.none() | st.integers(0, 3100),
)
def test_mutated_super_packets_never_raise(
    case: Case, field: tuple[int, int] | None, flips: list[tuple[int, int]], cut: int | None
) -> None:
    """One header field replaced, a few bytes flipped, maybe cut short."""
    read = bytearray(super_read(case))
    if field is not None:
        fields = list(HDR.unpack(read[:10]))
        fields[field[0]] = field[1] & (0xFF if field[0] < 2 else 0xFFFF)
        read[:10] = HDR.pack(*fields)
    for at, value in flips:
        if at < len(read):
            read[at] = value
    prepare_survives(case.l2, bytes(read if cut is None else read[:cut]), max_segments=3)


def flow_packets(sport: int, count: int, v: int = 4) -> list[bytes]:
    case = Case("flow", v=v, payload=count * 200, gso=200)
    read = kernel_read(case, bytes(build(case, payload_bytes(case.payload, sport), sport=sport)))
    return split(case, read)


POOL = [
    *[("a", p) for p in flow_packets(1, 6)],
    *[("b", p) for p in flow_packets(2, 6)],
    *[("c", p) for p in flow_packets(3, 4, v=6)],
    ("x", bytes(IP(dst="10.1.1.1") / UDP() / b"hello")),
    ("y", b"\x45\x00"),
    ("z", bytes(64)),
]


@settings(max_examples=300, deadline=None)
@given(
    picks=st.lists(st.integers(0, len(POOL) - 1), max_size=40),
    verify=st.booleans(),
    udp=st.booleans(),
    junk=st.lists(st.binary(min_size=0, max_size=80), max_size=3),
)
def test_coalescer_keeps_every_packet_once_and_in_order(
    picks: list[int], verify: bool, udp: bool, junk: list[bytes]
) -> None:
    """Any batch (loss, reordering, duplicates, junk): each packet comes out exactly once,
    a flow's packets in arrival order, writes in the order of their first packet."""
    batch = [(POOL[i][0], bytearray(POOL[i][1])) for i in picks]
    batch += [("j", bytearray(j)) for j in junk]
    co = Coalescer(0, verify, udp)
    for _, raw in batch:
        co.add(memoryview(raw), 0, len(raw))
    order: list[int] = []  # positions in the batch, in the order they reach the device
    index = {id(raw): k for k, (_, raw) in enumerate(batch)}
    heads: list[int] = []

    def write(views: list[memoryview]) -> None:
        members = [index[id(v.obj)] for v in views[1:]]
        heads.append(members[0])
        order.extend(members)
        assert len(members) == 1 or views[0][0] == gso.F_NEEDS_CSUM

    assert co.flush(write) == len(heads)
    assert sorted(order) == list(range(len(batch)))
    assert heads == sorted(heads)
    for flow in "abc":
        arrived = [k for k, (f, _) in enumerate(batch) if f == flow]
        assert [k for k in order if batch[k][0] == flow] == arrived


@pytest.mark.parametrize("case", [TCP4, TAP4], ids=lambda c: c.name)
def test_write_checks_its_arguments(case: Case) -> None:
    seg = Segmenter(case.l2, [0, 0, 0])
    buf = memoryview(bytearray(super_read(case)))
    assert seg.prepare(buf, 0, len(buf)) == 3
    with pytest.raises(ValueError):
        seg.write(memoryview(bytearray(10000)), 0, seg.seg_len - 1)  # stride too small
    with pytest.raises(ValueError):
        seg.write(memoryview(bytearray(2 * seg.seg_len)), 0, seg.seg_len)  # out too small
    with pytest.raises(ValueError):
        seg.prepare(buf, 0, len(buf) + 1)  # n beyond buf: a caller bug
    with pytest.raises(ValueError):
        Segmenter(4, [0, 0, 0])
    with pytest.raises(ValueError):
        Segmenter(0, [0])


def test_segments_verify_with_scapy_at_any_stride_and_start() -> None:
    read = super_read(TAP4)
    for start, extra in ((0, 0), (16, 32), (7, 1)):
        for raw in split(TAP4, read, start, extra):
            assert_checksums_valid(TAP4, raw)
            assert Ether(raw)[IP].len == len(raw) - 14
