"""Segmentation and coalescing (tunneld.proto.gso) against scapy-built super-packets.

One table of cases drives both directions: each case is built by scapy, given the
virtio_net_hdr the kernel writes on a tun/tap read (NEEDS_CSUM, the pseudo-header sum in
the L4 checksum field, hdr_len = the headers), split, every segment checked with scapy
(checksums rebuilt from scratch, IDs, sequence numbers, flags, lengths, payload), then
coalesced again and compared byte for byte with the super-packet the kernel would have
handed us for those segments. The checksum arithmetic here is a word loop of its own, not
tunneld.native's.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet, Raw

from tunneld.proto import gso
from tunneld.proto.gso import Coalescer, GsoDrop, Segmenter

HDR = struct.Struct("<BBHHHH")
ID0, SEQ0, ACK0 = 0xFFF0, 0xFFFFF000, 77  # both counters wrap inside the bigger cases
TIMESTAMPS = [("NOP", None), ("NOP", None), ("Timestamp", (1000, 2000))]
FIN, PSH, ACK, CWR = 0x01, 0x08, 0x10, 0x80


def ones_sum(data: bytes, initial: int = 0) -> int:
    """RFC 1071 sum folded to 16 bits, not inverted (a non-zero multiple of 0xffff -> 0xffff)."""
    if len(data) % 2:
        data += b"\0"
    s = initial + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return s


@dataclass(frozen=True)
class Case:
    name: str
    l2: int = 0  # 0: tun (IP first), 14: tap (Ethernet first)
    v: int = 4
    proto: str = "tcp"
    flags: str = "A"  # the super-packet's TCP flags (scapy letters)
    options: bool = False  # TCP timestamps
    payload: int = 45 * 1448
    gso: int = 1448
    vlan: bool = False  # one 802.1Q tag in front of the IP header (tap)

    @property
    def count(self) -> int:
        return -(-self.payload // self.gso)

    @property
    def ip(self) -> int:  # offset of the IP header in the frame
        return self.l2 + (4 if self.vlan else 0)


CASES = [
    Case("tcp4-tun-45-psh", flags="PA"),
    Case("tcp4-tun-short-last", payload=45 * 1448 - 700),
    Case("tcp4-tun-timestamps", options=True, gso=1436, payload=44 * 1436 + 17),
    Case("tcp6-tun-psh", v=6, payload=44 * 1428, gso=1428, flags="PA"),
    Case("tcp6-tun-timestamps-fin", v=6, options=True, flags="FPA", payload=20000, gso=1416),
    Case("tcp4-tap-timestamps-psh", l2=14, flags="PA", options=True, payload=40000),
    Case("tcp6-tap-fin", l2=14, v=6, flags="FA", payload=30000, gso=1428),
    Case("tcp4-tap-vlan", l2=14, vlan=True, payload=10000),
    Case("tcp4-cwr-ecn", flags="AC", payload=10000),
    Case("tcp4-1-segment", payload=1000),
    Case("tcp6-1-segment-exact-psh", v=6, payload=1448, flags="PA"),
    Case("tcp6-128-segments", v=6, payload=128 * 500, gso=500),
    Case("tcp4-tap-128-segments-short-last", l2=14, payload=127 * 500 + 1, gso=500),
    Case("udp4-tun-short-last", proto="udp", payload=20 * 1400 + 33, gso=1400),
    Case("udp6-tun", v=6, proto="udp", payload=10 * 1200, gso=1200),
    Case("udp4-tap", l2=14, proto="udp", payload=8 * 1000 + 1, gso=1000),
    Case("udp6-tap-128-segments", l2=14, v=6, proto="udp", payload=128 * 400, gso=400),
    Case("udp4-1-segment", proto="udp", payload=300, gso=1400),
]


def payload_bytes(n: int, seed: int = 7) -> bytes:
    return bytes((i * 131 + seed) & 0xFF for i in range(n))


def build(case: Case, data: bytes, **l4_fields: object) -> Packet:
    """The super-packet (or a plain packet) as scapy sees it, lengths and checksums unset."""
    if case.v == 4:
        l3: Packet = IP(src="192.0.2.1", dst="198.51.100.7", id=ID0, ttl=61, tos=0x10, flags="DF")
    else:
        l3 = IPv6(src="2001:db8::1", dst="2001:db8:0:1::2", hlim=61, tc=0x10, fl=0x12345)
    if case.proto == "tcp":
        fields = dict(sport=40000, dport=5201, seq=SEQ0, ack=ACK0, flags=case.flags, window=501)
        fields["options"] = TIMESTAMPS if case.options else []
        fields.update(l4_fields)
        l4: Packet = TCP(**fields)
    else:
        l4 = UDP(sport=40000, dport=4789, **l4_fields)
    pkt = l3 / l4 / Raw(data)
    if case.l2:
        eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        pkt = eth / Dot1Q(vlan=5) / pkt if case.vlan else eth / pkt
    return pkt


def l4_offset(case: Case) -> int:
    return case.ip + (20 if case.v == 4 else 40)


def with_partial_csum(case: Case, raw: bytes) -> bytearray:
    """What the kernel leaves for CHECKSUM_PARTIAL: the folded pseudo-header sum (over the
    L4 length) in the checksum field, not inverted."""
    out, ip, l4 = bytearray(raw), case.ip, l4_offset(case)
    addrs = raw[ip + 12 : ip + 20] if case.v == 4 else raw[ip + 8 : ip + 40]
    proto = 6 if case.proto == "tcp" else 17
    field = l4 + (16 if case.proto == "tcp" else 6)
    out[field : field + 2] = struct.pack(
        "!H", ones_sum(addrs + struct.pack("!HH", proto, len(raw) - l4))
    )
    return out


def kernel_read(case: Case, raw: bytes, gso_size: int | None = None) -> bytes:
    """virtio_net_hdr + packet as a TSO/USO read from the tun/tap delivers it."""
    l4 = l4_offset(case)
    if case.proto == "tcp":
        gso_type = gso.GSO_TCPV4 if case.v == 4 else gso.GSO_TCPV6
        gso_type |= gso.GSO_ECN if raw[l4 + 13] & CWR else 0
        hl, coff = l4 + (raw[l4 + 12] >> 4) * 4, 16
    else:
        gso_type, hl, coff = gso.GSO_UDP_L4, l4 + 8, 6
    hdr = HDR.pack(gso.F_NEEDS_CSUM, gso_type, hl, gso_size or case.gso, l4, coff)
    return hdr + bytes(with_partial_csum(case, raw))


def super_read(case: Case) -> bytes:
    return kernel_read(case, bytes(build(case, payload_bytes(case.payload))))


def parse(case: Case, raw: bytes) -> Packet:
    if case.l2:
        return Ether(raw)
    return IP(raw) if case.v == 4 else IPv6(raw)


def l4_of(pkt: Packet) -> Packet:
    return pkt[TCP] if TCP in pkt else pkt[UDP]


def assert_checksums_valid(case: Case, raw: bytes) -> None:
    """scapy recomputes the IPv4 and L4 checksums from scratch and must agree."""
    pkt = parse(case, raw)
    fresh = pkt.copy()
    if IP in fresh:
        del fresh[IP].chksum
    del l4_of(fresh).chksum
    rebuilt = parse(case, bytes(fresh))
    if IP in pkt:
        assert pkt[IP].chksum == rebuilt[IP].chksum
    assert l4_of(pkt).chksum == l4_of(rebuilt).chksum


def split(case: Case, read: bytes, start: int = 16, extra: int = 24) -> list[bytes]:
    """prepare() + write() into a sentinel-filled buffer; checks the gaps stay untouched.

    The read sits in a larger buffer with junk after it, as in the links' read buffers: a
    segment must never copy past the packet's end (a short last segment once did)."""
    drops = [0] * len(GsoDrop)
    seg = Segmenter(case.l2, drops)
    buf = memoryview(bytearray(read + b"\x55" * 3000))
    count = seg.prepare(buf, 0, len(read))
    assert count == case.count and drops == [0] * len(GsoDrop)
    if seg.in_place:
        assert count == 1 and seg.seg_len == seg.last_len == len(read) - 10
        return [bytes(buf[10 : len(read)])]
    stride = seg.seg_len + extra
    out = memoryview(bytearray(b"\xaa" * (start + count * stride)))
    seg.write(out, start, stride)
    segs = []
    for i in range(count):
        d = start + i * stride
        length = seg.last_len if i == count - 1 else seg.seg_len
        segs.append(bytes(out[d : d + length]))
        assert out[d + length : d + stride] == b"\xaa" * (stride - length)
    assert out[:start] == b"\xaa" * start
    return segs


def segment_flags(case: Case, i: int) -> int:
    flags = int(TCP(flags=case.flags).flags)
    if i < case.count - 1:
        flags &= ~(FIN | PSH)
    if i > 0:
        flags &= ~CWR
    return flags


def check_segments(case: Case, read: bytes, segs: list[bytes]) -> None:
    data = payload_bytes(case.payload)
    assert len(segs) == case.count
    for i, raw in enumerate(segs):
        assert_checksums_valid(case, raw)
        pkt, chunk = parse(case, raw), data[i * case.gso : (i + 1) * case.gso]
        assert bytes(l4_of(pkt).payload) == chunk
        assert raw[: case.ip] == read[10 : 10 + case.ip]  # Ethernet (and VLAN) header copied
        if case.v == 4:
            assert pkt[IP].id == (ID0 + i) & 0xFFFF and pkt[IP].len == len(raw) - case.ip
            assert (pkt[IP].flags, pkt[IP].ttl, pkt[IP].tos) == ("DF", 61, 0x10)
        else:
            assert pkt[IPv6].plen == len(raw) - case.ip - 40
            assert (pkt[IPv6].hlim, pkt[IPv6].tc, pkt[IPv6].fl) == (61, 0x10, 0x12345)
        if case.proto == "tcp":
            tcp = pkt[TCP]
            assert tcp.seq == (SEQ0 + i * case.gso) % 2**32 and tcp.ack == ACK0
            assert int(tcp.flags) == segment_flags(case, i)
            assert tcp.options == (build(case, b"")[TCP].options if case.options else [])
        else:
            assert pkt[UDP].len == 8 + len(chunk)


def expected_groups(case: Case) -> list[list[int]]:
    """The coalescer's rules applied to a split's output."""
    groups: list[list[int]] = []
    extendable = False
    for i in range(case.count):
        flags = segment_flags(case, i) if case.proto == "tcp" else ACK
        mergeable = flags in (ACK, ACK | PSH) and not case.vlan
        if mergeable and extendable:
            groups[-1].append(i)
        else:
            groups.append([i])
        cap = gso.UDP_MAX_SEGMENTS if case.proto == "udp" else gso.TCP_MAX_SEGMENTS
        full = len(groups[-1]) == cap
        extendable = mergeable and not flags & PSH and not full
    return groups


def merged_read(case: Case, segs: list[bytes]) -> bytes:
    """The super-packet the kernel would hand us for these segments: the first one's
    headers, every payload, PSH if the last had it, lengths and checksums rebuilt."""
    head, payloads = parse(case, segs[0]), [bytes(l4_of(parse(case, s)).payload) for s in segs]
    l4 = l4_of(head)
    l4.remove_payload()
    l4.add_payload(Raw(b"".join(payloads)))
    if case.proto == "tcp":
        l4.flags = int(l4.flags) | (int(l4_of(parse(case, segs[-1])).flags) & PSH)
    else:
        del l4.len
    del l4.chksum
    if IP in head:
        del head[IP].len, head[IP].chksum
    else:
        del head[IPv6].plen
    return kernel_read(case, bytes(head), gso_size=len(payloads[0]))


def coalesce(l2: int, packets: list[bytes], verify: bool = True, udp: bool = True) -> list[bytes]:
    co = Coalescer(l2, verify, udp)
    bufs = [memoryview(bytearray(p)) for p in packets]
    for b in bufs:
        co.add(b, 0, len(b))
    writes: list[bytes] = []
    assert co.flush(lambda views: writes.append(b"".join(bytes(v) for v in views))) == len(writes)
    assert co.pending == 0
    return writes


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_split_segments_verify_with_scapy(case: Case) -> None:
    read = super_read(case)
    check_segments(case, read, split(case, read))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_coalescing_a_split_gives_back_the_super_packets(case: Case) -> None:
    read = super_read(case)
    segs = split(case, read)
    groups = expected_groups(case)
    for verify in (True, False):
        writes = coalesce(case.l2, segs, verify)
        assert len(writes) == len(groups)
        for group, got in zip(groups, writes, strict=True):
            if len(group) == 1:
                assert got == bytes(10) + segs[group[0]]  # unmerged: an all-zero header
            else:
                assert got == merged_read(case, [segs[i] for i in group])
    if groups == [list(range(case.count))] and case.count > 1:
        assert writes == [read]  # byte for byte, header included


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_splitting_a_coalesced_write_gives_back_the_segments(case: Case) -> None:
    segs = split(case, super_read(case))
    i = 0
    for group, write in zip(expected_groups(case), coalesce(case.l2, segs), strict=True):
        drops = [0] * len(GsoDrop)
        seg = Segmenter(case.l2, drops)
        buf = memoryview(bytearray(write))
        assert seg.prepare(buf, 0, len(buf)) == len(group)
        if seg.in_place:
            assert [bytes(buf[10:])] == [segs[i]]
        else:
            out = memoryview(bytearray(len(group) * seg.seg_len))
            seg.write(out, 0, seg.seg_len)
            lengths = [seg.seg_len] * (len(group) - 1) + [seg.last_len]
            got = [bytes(out[k * seg.seg_len : k * seg.seg_len + n]) for k, n in enumerate(lengths)]
            assert got == segs[i : i + len(group)]
        i += len(group)
    assert i == case.count


@pytest.mark.parametrize("case", [c for c in CASES if c.count == 1], ids=lambda c: c.name)
def test_one_segment_gso_read_is_completed_in_place(case: Case) -> None:
    read = super_read(case)
    seg = Segmenter(case.l2, [0, 0, 0])
    buf = memoryview(bytearray(read))
    assert seg.prepare(buf, 0, len(buf)) == 1 and seg.in_place
    assert_checksums_valid(case, bytes(buf[10:]))
    assert bytes(buf[10:]) == bytes(build(case, payload_bytes(case.payload)))  # as scapy has it
