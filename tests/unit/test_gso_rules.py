"""Coalescer merging rules: sequences of scapy-built packets that must or must not merge.

Each case lists packets (valid checksums unless the case corrupts one) and the expected
grouping into device writes. Every merged write is then checked the way the kernel would
treat it: its virtio_net_hdr fields, its lengths, its payload (the members' payloads in
order), and, once the kernel completes the NEEDS_CSUM checksum, scapy's checksums.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet, Raw

from tests.unit.test_gso import TIMESTAMPS, ones_sum, payload_bytes
from tunneld.proto import gso
from tunneld.proto.gso import Coalescer

SEQ = 1_000_000
MAC_A, MAC_B = "02:00:00:00:00:01", "02:00:00:00:00:02"


def tcp(seq: int = SEQ, n: int = 1000, v: int = 4, ip: dict | None = None,
        tcp: dict | None = None, eth: dict | None = None, vlan: bool = False) -> bytes:  # fmt: skip
    l3: Packet
    if v == 4:
        l3 = IP(**{"src": "10.0.0.1", "dst": "10.0.0.2", "ttl": 64, "flags": "DF", **(ip or {})})
    else:
        l3 = IPv6(**{"src": "fd00::1", "dst": "fd00::2", "fl": 7, **(ip or {})})
    fields = {"sport": 40000, "dport": 5201, "seq": seq, "ack": 9, "flags": "A"}
    pkt = l3 / TCP(**{**fields, "options": TIMESTAMPS, **(tcp or {})}) / Raw(payload_bytes(n, seq))
    return _frame(pkt, eth, vlan)


def udp(n: int = 1000, v: int = 4, sport: int = 40000, ip: dict | None = None,
        eth: dict | None = None, seed: int = 0) -> bytes:  # fmt: skip
    l3: Packet = (
        IP(src="10.0.0.1", dst="10.0.0.2", **(ip or {}))
        if v == 4
        else IPv6(src="fd00::1", dst="fd00::2", **(ip or {}))
    )
    return _frame(l3 / UDP(sport=sport, dport=4789) / Raw(payload_bytes(n, seed)), eth, False)


def _frame(pkt: Packet, eth: dict | None, vlan: bool) -> bytes:
    if eth is None:
        return bytes(pkt)
    l2 = Ether(**{"src": MAC_A, "dst": MAC_B, **eth})
    return bytes(l2 / Dot1Q(vlan=3) / pkt if vlan else l2 / pkt)


def cut_tcp(v: int) -> bytes:
    """A packet of the test flow whose TCP header is cut after 12 bytes (lengths agree)."""
    head = bytes(TCP(sport=40000, dport=5201, seq=SEQ + 1000, ack=9, flags="A"))[:12]
    if v == 4:
        return bytes(IP(src="10.0.0.1", dst="10.0.0.2", flags="DF", proto=6) / Raw(head))
    return bytes(IPv6(src="fd00::1", dst="fd00::2", fl=7, nh=6) / Raw(head))


def corrupt(raw: bytes) -> bytes:
    """Flip a payload bit without fixing the checksum."""
    return raw[:-1] + bytes([raw[-1] ^ 0x01])


def zero_udp_checksum(raw: bytes, l2: int = 0) -> bytes:
    out = bytearray(raw)
    out[l2 + 26 : l2 + 28] = b"\0\0"  # IPv4: "no checksum"
    return bytes(out)


@dataclass(frozen=True)
class Rule:
    name: str
    packets: list[bytes]
    groups: list[list[int]]
    l2: int = 0
    verify: bool = True
    udp: bool = True
    extra: dict = field(default_factory=dict)


E = {}  # the default Ethernet header
RULES = [
    # --- TCP: must merge
    Rule("adjacent", [tcp(), tcp(SEQ + 1000)], [[0, 1]]),
    Rule("adjacent-ipv6", [tcp(v=6), tcp(SEQ + 1000, v=6)], [[0, 1]]),
    Rule("three-then-shorter", [tcp(), tcp(SEQ + 1000), tcp(SEQ + 2000, 10)], [[0, 1, 2]]),
    Rule("second-psh", [tcp(), tcp(SEQ + 1000, tcp={"flags": "PA"})], [[0, 1]]),
    Rule(
        "ipv4-id-and-window-differ",
        [tcp(), tcp(SEQ + 1000, ip={"id": 9}, tcp={"window": 3})],
        [[0, 1]],
    ),  # fmt: skip
    Rule("no-options", [tcp(tcp={"options": []}), tcp(SEQ + 1000, tcp={"options": []})], [[0, 1]]),
    Rule("tap", [tcp(eth=E), tcp(SEQ + 1000, eth=E)], [[0, 1]], l2=14),
    Rule("tap-ipv6", [tcp(v=6, eth=E), tcp(SEQ + 1000, v=6, eth=E)], [[0, 1]], l2=14),
    Rule("bad-checksum-verify-off", [tcp(), corrupt(tcp(SEQ + 1000))], [[0, 1]], verify=False),
    Rule("seq-wraps", [tcp(2**32 - 500), tcp(500)], [[0, 1]]),
    # --- TCP: must not merge
    Rule("different-ack", [tcp(), tcp(SEQ + 1000, tcp={"ack": 10})], [[0], [1]]),
    Rule("seq-gap", [tcp(), tcp(SEQ + 1001)], [[0], [1]]),
    Rule("seq-overlap", [tcp(), tcp(SEQ + 999)], [[0], [1]]),
    Rule("retransmit", [tcp(), tcp()], [[0], [1]]),
    *(
        Rule(f"flags-{f}", [tcp(), tcp(SEQ + 1000, tcp={"flags": f})], [[0], [1]])
        for f in ("SA", "FA", "RA", "UA", "EA", "CA", "P", "")
    ),
    Rule("flags-ae-bit", [tcp(), tcp(SEQ + 1000, tcp={"flags": 0x110})], [[0], [1]]),
    Rule("reserved-bit", [tcp(), tcp(SEQ + 1000, tcp={"reserved": 1})], [[0], [1]]),
    Rule("head-syn", [tcp(tcp={"flags": "SA"}), tcp(SEQ + 1000)], [[0], [1]]),
    Rule("pure-ack-follows", [tcp(), tcp(SEQ + 1000, 0)], [[0], [1]]),
    Rule(
        "different-tsval",
        [
            tcp(),
            tcp(
                SEQ + 1000,
                tcp={"options": [("NOP", None), ("NOP", None), ("Timestamp", (1001, 2000))]},
            ),
        ],
        [[0], [1]],
    ),  # fmt: skip
    Rule("options-differ-in-length", [tcp(), tcp(SEQ + 1000, tcp={"options": []})], [[0], [1]]),
    Rule("different-ttl", [tcp(), tcp(SEQ + 1000, ip={"ttl": 63})], [[0], [1]]),
    Rule("different-tos", [tcp(), tcp(SEQ + 1000, ip={"tos": 4})], [[0], [1]]),
    Rule("ecn-ce-mark", [tcp(ip={"tos": 2}), tcp(SEQ + 1000, ip={"tos": 3})], [[0], [1]]),
    Rule("different-df", [tcp(), tcp(SEQ + 1000, ip={"flags": 0})], [[0], [1]]),
    Rule(
        "ipv4-options",
        [
            tcp(ip={"options": [IPOption(b"\x01\x01\x01\x00")]}),
            tcp(SEQ + 1000, ip={"options": [IPOption(b"\x01\x01\x01\x00")]}),
        ],
        [[0], [1]],
    ),  # fmt: skip
    Rule("fragment", [tcp(), tcp(SEQ + 1000, ip={"flags": "MF"})], [[0], [1]]),
    Rule("after-psh", [tcp(tcp={"flags": "PA"}), tcp(SEQ + 1000)], [[0], [1]]),
    Rule("after-short", [tcp(), tcp(SEQ + 1000, 10), tcp(SEQ + 1010)], [[0, 1], [2]]),
    Rule("longer-than-head", [tcp(n=500), tcp(SEQ + 500)], [[0], [1]]),
    Rule("different-port", [tcp(), tcp(SEQ + 1000, tcp={"dport": 5202})], [[0], [1]]),
    Rule("different-destination", [tcp(), tcp(SEQ + 1000, ip={"dst": "10.0.0.3"})], [[0], [1]]),
    Rule("bad-checksum", [tcp(), corrupt(tcp(SEQ + 1000))], [[0], [1]]),
    Rule("bad-head-checksum", [corrupt(tcp()), tcp(SEQ + 1000), tcp(SEQ + 2000)], [[0], [1, 2]]),
    Rule(
        "bad-middle-checksum", [tcp(), corrupt(tcp(SEQ + 1000)), tcp(SEQ + 2000)], [[0], [1], [2]]
    ),  # fmt: skip
    Rule(
        "over-65535",
        [tcp(n=30000), tcp(SEQ + 30000, n=30000), tcp(SEQ + 60000, n=30000)],
        [[0, 1], [2]],
    ),  # fmt: skip
    Rule(
        "ipv6-over-65535",
        [tcp(v=6, n=32000), tcp(SEQ + 32000, v=6, n=32000), tcp(SEQ + 64000, v=6, n=2000)],
        [[0, 1], [2]],
    ),  # fmt: skip
    Rule("ipv6-traffic-class", [tcp(v=6), tcp(SEQ + 1000, v=6, ip={"tc": 4})], [[0], [1]]),
    Rule("ipv6-hop-limit", [tcp(v=6), tcp(SEQ + 1000, v=6, ip={"hlim": 9})], [[0], [1]]),
    Rule("ipv6-flow-label", [tcp(v=6), tcp(SEQ + 1000, v=6, ip={"fl": 8})], [[0], [1]]),
    Rule(
        "ipv6-extension-header",
        [
            bytes(
                IPv6(src="fd00::1", dst="fd00::2")
                / IPv6ExtHdrHopByHop()
                / TCP(seq=s, flags="A")
                / Raw(payload_bytes(1000))
            )
            for s in (SEQ, SEQ + 1000)
        ],
        [[0], [1]],
    ),  # fmt: skip
    Rule(
        "tap-different-mac",
        [tcp(eth=E), tcp(SEQ + 1000, eth={"src": "02:00:00:00:00:09"})],
        [[0], [1]],
        l2=14,
    ),  # fmt: skip
    Rule("tap-vlan", [tcp(eth=E, vlan=True), tcp(SEQ + 1000, eth=E, vlan=True)], [[0], [1]], l2=14),
    Rule("tcp-and-udp-same-ports", [tcp(), udp()], [[0], [1]]),
    # --- UDP
    Rule("udp-equal", [udp(), udp(seed=1), udp(seed=2)], [[0, 1, 2]]),
    Rule("udp-ipv6-equal", [udp(v=6), udp(v=6, seed=1)], [[0, 1]]),
    Rule("udp-tap", [udp(eth=E), udp(eth=E, seed=1)], [[0, 1]], l2=14),
    Rule("udp-shorter-ends-run", [udp(), udp(10), udp()], [[0, 1], [2]]),
    Rule("udp-larger-after-smaller", [udp(500), udp(1000)], [[0], [1]]),
    Rule("udp-off", [udp(), udp(seed=1)], [[0], [1]], udp=False),
    Rule("udp-different-port", [udp(), udp(sport=1)], [[0], [1]]),
    Rule("udp-different-ttl", [udp(), udp(ip={"ttl": 1})], [[0], [1]]),
    Rule(
        "udp-no-checksum-verify",
        [zero_udp_checksum(udp()), zero_udp_checksum(udp(seed=1))],
        [[0], [1]],
    ),  # fmt: skip
    Rule(
        "udp-no-checksum-trusted",
        [zero_udp_checksum(udp()), zero_udp_checksum(udp(seed=1))],
        [[0, 1]],
        verify=False,
    ),  # fmt: skip
    Rule("udp-bad-checksum", [udp(), corrupt(udp(seed=1))], [[0], [1]]),
    Rule(
        "udp-64-segments", [udp(100, seed=i) for i in range(65)], [list(range(64)), [64]]
    ),  # fmt: skip
    # --- order: per flow, and writes in the order of their first packet
    Rule(
        "interleaved-flows",
        [tcp(), tcp(tcp={"sport": 1}), tcp(SEQ + 1000), tcp(SEQ + 1000, tcp={"sport": 1})],
        [[0, 2], [1, 3]],
    ),  # fmt: skip
    Rule("pure-ack-between", [tcp(), tcp(SEQ + 1000, 0), tcp(SEQ + 1000)], [[0], [1], [2]]),
    Rule(
        "other-traffic-between",
        [tcp(), bytes(IP(dst="10.0.0.2") / ICMP()), tcp(SEQ + 1000)],
        [[0, 2], [1]],
    ),  # fmt: skip
    Rule(
        "new-run-after-ack-change",
        [tcp(), tcp(SEQ + 1000, tcp={"ack": 10}), tcp(SEQ + 2000, tcp={"ack": 10})],
        [[0], [1, 2]],
    ),  # fmt: skip
    Rule(
        "non-ip-tap-frame",
        [bytes(Ether(type=0x0806) / Raw(bytes(60))), tcp(eth=E)],
        [[0], [1]],
        l2=14,
    ),  # fmt: skip
    Rule("tiny", [b"\x45", b""], [[0], [1]]),
    Rule("tcp-header-cut-short-between", [tcp(), cut_tcp(4), tcp(SEQ + 1000)], [[0], [1], [2]]),
    Rule(
        "ipv6-tcp-header-cut-short-between",
        [tcp(v=6), cut_tcp(6), tcp(SEQ + 1000, v=6)],
        [[0], [1], [2]],
    ),  # fmt: skip
    Rule(
        "ipv4-options-between",
        [tcp(), tcp(SEQ + 1000, ip={"options": [IPOption(b"\x01" * 4)]}), tcp(SEQ + 1000)],
        [[0], [1], [2]],
    ),  # fmt: skip
]


def flush_all(rule: Rule) -> list[list[bytes]]:
    co = Coalescer(rule.l2, rule.verify, rule.udp)
    bufs = [memoryview(bytearray(p)) for p in rule.packets]
    for b in bufs:
        co.add(b, 0, len(b))
    writes: list[list[bytes]] = []
    assert co.flush(lambda views: writes.append([bytes(v) for v in views])) == len(writes)
    return writes


def kernel_completes(l2: int, write: bytes) -> bytes:
    """What the kernel makes of a NEEDS_CSUM write: the partial sum left in the field, the
    rest of the L4 bytes added, the complement stored (skb_checksum_help)."""
    flags, _, _, _, start, offset = gso.VNET_HDR.unpack_from(write)
    assert flags == gso.F_NEEDS_CSUM
    pkt = bytearray(write[10:])
    at = start + offset
    partial = struct.unpack_from("!H", pkt, at)[0]
    pkt[at : at + 2] = b"\0\0"
    struct.pack_into("!H", pkt, at, (ones_sum(bytes(pkt[start:]), partial) ^ 0xFFFF) or 0xFFFF)
    return bytes(pkt)


def parse_raw(l2: int, raw: bytes) -> Packet:
    if l2:
        return Ether(raw)
    return IP(raw) if raw[0] >> 4 == 4 else IPv6(raw)


def check_merged(rule: Rule, views: list[bytes], members: list[bytes]) -> None:
    l2 = rule.l2
    flags, gso_type, hdr_len, gso_size, start, offset = gso.VNET_HDR.unpack(views[0])
    head = members[0]
    v = head[l2] >> 4
    ihl = 20 if v == 4 else 40
    is_tcp = (head[l2 + 9] if v == 4 else head[l2 + 6]) == 6
    thl = (head[l2 + ihl + 12] >> 4) * 4 if is_tcp else 8
    assert (start, hdr_len, gso_size) == (l2 + ihl, l2 + ihl + thl, len(head) - l2 - ihl - thl)
    if is_tcp:
        assert (offset, gso_type) == (16, gso.GSO_TCPV4 if v == 4 else gso.GSO_TCPV6)
    else:
        assert (offset, gso_type) == (6, gso.GSO_UDP_L4)
    assert views[2:] == [m[hdr_len:] for m in members[1:]]  # a gather list, no copies
    merged = kernel_completes(l2, b"".join(views))
    pkt = parse_raw(l2, merged)
    l4 = pkt[TCP] if is_tcp else pkt[UDP]
    assert bytes(l4.payload) == b"".join(m[hdr_len:] for m in members)
    if IP in pkt:
        assert pkt[IP].len == len(merged) - l2
    else:
        assert pkt[IPv6].plen == len(merged) - l2 - 40
    fresh = pkt.copy()
    if IP in fresh:
        del fresh[IP].chksum
    del (fresh[TCP] if is_tcp else fresh[UDP]).chksum
    again = type(pkt)(bytes(fresh))
    assert bytes(again) == merged  # every checksum as scapy computes it
    if is_tcp:  # PSH moves from the last member to the merged header
        assert int(pkt[TCP].flags) & 0x08 == int(parse_raw(l2, members[-1])[TCP].flags) & 0x08


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_coalescer_rules(rule: Rule) -> None:
    writes = flush_all(rule)
    assert len(writes) == len(rule.groups)
    for group, views in zip(rule.groups, writes, strict=True):
        members = [rule.packets[i] for i in group]
        if len(group) == 1:
            assert views == [bytes(10), members[0]]  # unmerged, untouched, all-zero header
        else:
            check_merged(rule, views, members)


def test_past_max_packets_is_a_caller_bug() -> None:
    co = Coalescer(0, True, True, max_packets=2)
    buf = memoryview(bytearray(tcp()))
    co.add(buf, 0, len(buf))
    co.add(buf, 0, len(buf))
    with pytest.raises(ValueError):
        co.add(buf, 0, len(buf))
    assert co.flush(lambda views: None) == 2
    co.add(buf, 0, len(buf))  # flush made room again
    with pytest.raises(ValueError):
        co.add(buf, 0, len(buf) + 1)


def test_flush_resets_even_when_the_write_fails() -> None:
    co = Coalescer(0, True, True)
    bufs = [memoryview(bytearray(p)) for p in (tcp(), tcp(tcp={"sport": 1}))]
    for b in bufs:
        co.add(b, 0, len(b))

    def failing(views: list[memoryview]) -> None:
        raise OSError("EIO")

    with pytest.raises(OSError):
        co.flush(failing)
    assert co.pending == 0
    assert co.flush(lambda views: None) == 0


def test_packets_at_an_offset_in_a_shared_buffer() -> None:
    """Packets laid out in one arena at a stride, as the links receive them."""
    packets = [tcp(SEQ + 1000 * i) for i in range(4)]
    stride = 1200
    arena = memoryview(bytearray(16 + stride * len(packets)))
    for i, p in enumerate(packets):
        arena[16 + i * stride : 16 + i * stride + len(p)] = p
    co = Coalescer(0, True, True)
    for i, p in enumerate(packets):
        co.add(arena, 16 + i * stride, len(p))
    writes: list[list[bytes]] = []
    assert co.flush(lambda views: writes.append([bytes(v) for v in views])) == 1
    check_merged(Rule("arena", packets, [[0, 1, 2, 3]]), writes[0], packets)
