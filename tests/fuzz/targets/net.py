"""Data-plane fuzz targets: VXLAN decap/encap, GSO split and coalesce, overlay, ICMP builders.

Every target builds fresh state per input (cheap here), so a crash reproduces from its
input alone. Multi-mode targets read one selector byte first; make_corpus.py writes seeds
with it.
"""

from __future__ import annotations

import inspect
import struct
from ipaddress import IPv4Network

from tunneld.proto import gso
from tunneld.proto.counters import Counters
from tunneld.proto.fdb import Fdb
from tunneld.proto.frames import (
    build_icmp_error_v4,
    decrement_ttl_ipv4,
    inner_dst,
    inner_src,
    internet_checksum,
    ip_version,
    ipv4_checksum_ok,
    packet_length,
)
from tunneld.proto.gso import Coalescer, GsoDrop, Segmenter
from tunneld.proto.overlay import (
    ICMP_ERROR_MAX,
    SEND_ICMP,
    OverlayRouter,
    OverlayRxDrop,
    OverlayTxDrop,
)
from tunneld.proto.vxlan import (
    FLOOD,
    VxlanDrop,
    VxlanPort,
    VxlanTxDrop,
    flow_hash,
    parse_header,
)

from . import One

# --- VXLAN ---------------------------------------------------------------------------------

VNI = 42
STATIC_MAC = 0x020000000002
STATIC_REMOTE = "192.0.2.2"
VX_SOURCES = ("192.0.2.2", "192.0.2.3", "2001:db8::3")  # the static owner, two others
MAX_LEARNED = 2  # when the FDB has a bound (issue 9's max_learned): a tiny one


def _fdb() -> Fdb:
    bounded = "max_learned" in inspect.signature(Fdb).parameters
    fdb = Fdb(300, max_learned=MAX_LEARNED) if bounded else Fdb(300)  # type: ignore[call-arg]
    fdb.add_static(STATIC_MAC, STATIC_REMOTE)
    fdb.set_flood([STATIC_REMOTE])
    return fdb


def make_vxlan_decap() -> One:
    """One UDP payload decapsulated from three sources, then with three other source MACs
    (past MAX_LEARNED), then the same bytes as a tap frame to encap."""
    full = getattr(VxlanDrop, "FDB_FULL", None)

    def one(data: bytes) -> None:
        fdb = _fdb()
        counters = Counters(VxlanDrop, VxlanTxDrop)
        port = VxlanPort(VNI, fdb, counters, 1450, True)
        rx = counters.rx_dropped
        variants = [(bytes(data), src) for src in VX_SOURCES]
        if len(data) >= 20:  # the same frame from three more MACs: the bound is reached
            variants += [(data[:19] + bytes([(data[19] + k) & 0xFF]) + data[20:], VX_SOURCES[2])
                         for k in (1, 2, 3)]  # fmt: skip
        for i, (datagram, src) in enumerate(variants):
            _decap_one(port, fdb, rx, full, datagram, src, float(i))
        static = fdb.table[STATIC_MAC]
        assert static.static and static.remote == STATIC_REMOTE
        assert len(fdb) <= 1 + MAX_LEARNED, len(fdb)
        _vxlan_encap(port, counters, data)

    return one


def _decap_one(port: VxlanPort, fdb: Fdb, rx: list[int], full: object, datagram: bytes,
               src: str, now: float) -> None:  # fmt: skip
    before = list(rx)
    n = port.decap(memoryview(bytearray(datagram)), len(datagram), src, now)
    grown = [i for i, (a, b) in enumerate(zip(before, rx, strict=True)) if a != b]
    if n < 0:
        assert n == -1 and len(grown) == 1 and sum(rx) == sum(before) + 1, (n, rx)
        return
    assert n == len(datagram) - 8 and n >= 14
    assert grown == [] or (grown == [full] and sum(rx) == sum(before) + 1), grown
    mac = int.from_bytes(datagram[14:20], "big")
    entry = fdb.table.get(mac)
    if mac == STATIC_MAC:
        assert src == STATIC_REMOTE  # a spoofed static MAC never reaches the tap
    elif grown:
        assert entry is None  # delivered, not learned: the table is full
    else:
        assert entry is not None and entry.remote == src and not entry.static


def _vxlan_encap(port: VxlanPort, counters: Counters, frame: bytes) -> None:
    slot = memoryview(bytearray(8 + len(frame)))
    slot[8:] = frame
    tx = counters.tx_dropped
    before = sum(tx)
    dest = port.encap(slot, 8, len(frame), 10.0)
    if dest is None:
        assert sum(tx) == before + 1
        return
    assert sum(tx) == before and parse_header(slot[:8]) == (0x08, VNI)
    assert dest is FLOOD or isinstance(dest, str)
    sport = port.source_port(slot, 8, len(frame))
    assert port.port_min <= sport <= port.port_max
    assert flow_hash(slot, 8, len(frame)) == flow_hash(bytearray(frame), 0, len(frame))


# --- GSO: virtio_net_hdr + super-packet -> segments -----------------------------------------


def _ip_offset(frame: memoryview, l2: int) -> int:
    """Where the IP header starts: after Ethernet (tap) and one 802.1Q/802.1ad tag."""
    if l2 and struct.unpack_from("!H", frame, 12)[0] in (0x8100, 0x88A8):
        return l2 + 4
    return l2


def _l4_checksum_ok(seg: memoryview, ip: int) -> bool:
    """The TCP/UDP checksum of an IPv4/IPv6 segment verifies (RFC 1071, pseudo-header)."""
    if seg[ip] >> 4 == 4:
        hl = (seg[ip] & 0x0F) * 4
        proto, addrs = seg[ip + 9], bytes(seg[ip + 12 : ip + 20])
    else:
        hl, proto, addrs = 40, seg[ip + 6], bytes(seg[ip + 8 : ip + 40])
    l4 = bytes(seg[ip + hl :])
    pseudo = addrs + struct.pack("!HH", proto, len(l4))
    return internet_checksum(pseudo + l4) == 0


def make_gso_segment() -> One:
    """Selector byte (bit 0: tap, bit 1: max_segments 3), then one device read."""

    def one(data: bytes) -> None:
        if not data:
            return
        l2 = 14 if data[0] & 1 else 0
        max_segments = 3 if data[0] & 2 else 1024
        read = memoryview(bytearray(data[1:]))
        drops = [0] * len(GsoDrop)
        seg = Segmenter(l2, drops, max_segments)
        count = seg.prepare(read, 0, len(read))
        if not count:
            assert sum(drops) == 1, drops
            return
        assert drops == [0] * len(GsoDrop) and 1 <= count <= max_segments
        if seg.in_place:
            assert count == 1
            return
        assert seg.hdr_len < seg.seg_len and seg.hdr_len < seg.last_len <= seg.seg_len
        stride = seg.seg_len + 3  # an odd stride, as the links' slots are not packed
        out = memoryview(bytearray(count * stride))
        seg.write(out, 0, stride)
        for i in range(count):
            size = seg.last_len if i == count - 1 else seg.seg_len
            piece = out[i * stride : i * stride + size]
            ip = _ip_offset(piece, l2)
            assert packet_length(piece, ip, size - ip) == size - ip, i
            assert piece[ip] >> 4 == 6 or ipv4_checksum_ok(piece, ip), i
            assert _l4_checksum_ok(piece, ip), i

    return one


# --- GSO: a batch of packets -> coalesced device writes ---------------------------------------


def split_records(body: bytes) -> list[bytes]:
    """2-byte big-endian length, then that many bytes (the last record may be short)."""
    out, at = [], 0
    while at + 2 <= len(body) and len(out) < 64:
        (n,) = struct.unpack_from("!H", body, at)
        out.append(body[at + 2 : at + 2 + n])
        at += 2 + n
    return out


def join_records(packets: list[bytes]) -> bytes:
    return b"".join(struct.pack("!H", len(p)) + p for p in packets)


def make_gso_coalesce() -> One:
    """Selector (bit 0: tap, bit 1: verify, bit 2: merge UDP), then length-prefixed packets.

    Each packet reaches the device exactly once, in order per write; a merged write is a
    super-packet the segmenter (which mirrors the kernel's GSO checks) accepts whole."""

    def one(data: bytes) -> None:
        if not data:
            return
        l2, verify, udp = 14 if data[0] & 1 else 0, bool(data[0] & 2), bool(data[0] & 4)
        packets = [bytearray(p) for p in split_records(data[1:])]
        co = Coalescer(l2, verify, udp, max_packets=64)
        for raw in packets:
            co.add(memoryview(raw), 0, len(raw))
        index = {id(raw): k for k, raw in enumerate(packets)}
        seen: list[int] = []
        merged: list[tuple[bytes, int]] = []

        def write(views: list[memoryview]) -> None:
            members = [index[id(v.obj)] for v in views[1:]]
            seen.extend(members)
            assert members == sorted(members)
            if len(members) > 1:
                assert views[0][0] == gso.F_NEEDS_CSUM
                merged.append((b"".join(bytes(v) for v in views), len(members)))
            else:
                assert bytes(views[0]) == bytes(10)

        writes = co.flush(write)
        assert sorted(seen) == list(range(len(packets))) and writes <= len(packets)
        for read, members in merged:
            drops = [0] * len(GsoDrop)
            buf = memoryview(bytearray(read))
            assert Segmenter(l2, drops).prepare(buf, 0, len(buf)) == members, drops

    return one


# --- overlay (flannel UDP) ---------------------------------------------------------------------

OWN = IPv4Network("10.5.1.0/24")
NETWORK = IPv4Network("10.5.0.0/16")
HOST = "192.0.2.2"


def _router() -> tuple[OverlayRouter, Counters]:
    counters = Counters(OverlayRxDrop, OverlayTxDrop)
    router = OverlayRouter(OWN, NETWORK, counters)
    router.add_route(IPv4Network("10.5.2.0/24"), HOST, (HOST, 8285))
    return router, counters


def make_overlay() -> One:
    """One datagram inbound from a registered and an unknown host, then outbound."""

    def one(data: bytes) -> None:
        router, counters = _router()
        rx, tx = counters.rx_dropped, counters.tx_dropped
        buf = bytearray(data)
        assert router.inbound(buf, 0, len(buf), "192.0.2.9") == -1
        assert rx[OverlayRxDrop.UNKNOWN_SOURCE] == 1 and sum(rx) == 1
        n = router.inbound(buf, 0, len(buf), HOST)
        if n < 0:
            assert n == -1 and sum(rx) == 2
        else:
            _check_forwarded(data, buf, n)
        buf = bytearray(data)
        before = sum(tx)
        dest = router.outbound(buf, 0, len(buf), 1.0)
        if dest is None:
            assert sum(tx) - before in (1, 2), tx
        elif dest is SEND_ICMP:
            assert tx[OverlayTxDrop.NO_ROUTE] == 1 and sum(tx) == before + 1
            _check_icmp(bytes(router.icmp_buf[: router.icmp_len]), data)
        else:
            assert dest == (HOST, 8285) and sum(tx) == before
            _check_forwarded(data, buf, (data[2] << 8) | data[3])

    return one


def _check_forwarded(original: bytes, buf: bytearray, n: int) -> None:
    """A forwarded IPv4 packet: whole, TTL one lower, header checksum still right."""
    assert 20 <= n <= len(original) and n == (original[2] << 8) | original[3]
    assert original[8] > 1 and buf[8] == original[8] - 1
    if ipv4_checksum_ok(original):
        assert ipv4_checksum_ok(buf)
    assert buf[:8] == original[:8] and buf[12:n] == original[12:n]


def _check_icmp(error: bytes, original: bytes) -> None:
    """An ICMPv4 error: valid IPv4 and ICMP checksums, to the original's source, quoting it."""
    assert 36 <= len(error) <= ICMP_ERROR_MAX
    assert error[0] == 0x45 and ipv4_checksum_ok(error) and error[9] == 1
    assert (error[2] << 8) | error[3] == len(error)
    assert internet_checksum(error[20:]) == 0
    assert error[16:20] == original[12:16]
    assert error[28:] == original[: len(error) - 28]


# --- ICMP builders and IP helpers ------------------------------------------------------------


def make_icmp() -> One:
    """Selector (ICMP type and code), then an 'original' packet for the error builders."""

    def one(data: bytes) -> None:
        if not data:
            return
        icmp_type = (3, 11, 3, 12)[data[0] & 3]
        code = data[0] >> 2
        original = data[1:]
        out = bytearray(ICMP_ERROR_MAX)
        n = build_icmp_error_v4(original, b"\x0a\x05\x00\x00", out, icmp_type, code)
        if n:
            _check_icmp(bytes(out[:n]), original)
            assert out[20] == icmp_type and out[21] == code
        length = packet_length(original, 0, len(original))
        assert 0 <= length <= len(original)
        ip_version(original)
        inner_src(original)
        inner_dst(original)
        if len(original) >= 20 and original[0] >> 4 == 4 and original[0] & 0x0F >= 5:
            hdr_ok = len(original) >= (original[0] & 0x0F) * 4 and ipv4_checksum_ok(original)
            buf = bytearray(original)
            ttl = decrement_ttl_ipv4(buf)
            assert ttl == (original[8] - 1 if original[8] > 1 else 0)
            if hdr_ok:
                assert ipv4_checksum_ok(buf)

    return one
