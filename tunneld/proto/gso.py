"""TSO/USO super-packets <-> wire-sized packets (sans-IO), for IFF_VNET_HDR tun/tap devices.

* `struct virtio_net_hdr` (include/uapi/linux/virtio_net.h; little-endian on a modern tun):
  flags, gso_type, hdr_len, gso_size, csum_start, csum_offset. For tap, csum_start and
  hdr_len count from the Ethernet header.
* `Segmenter` (device -> wire): splits what the kernel hands us as the tcp_gso_segment /
  __udp_gso_segment code would: IPv4 ID + i, total length and header checksum (RFC 791);
  IPv6 payload length (RFC 8200); TCP sequence + i * gso_size, FIN and PSH only on the last
  segment, CWR only on the first (RFC 3168 6.1.2); UDP length; a full L4 checksum per
  segment (RFC 1071, pseudo-header RFC 793 / RFC 768 / RFC 8200 8.1; a UDP 0 is sent as
  0xffff). The kernel's hdr_len is only bounds-checked: it fills in skb_headlen(), which
  can be the whole first segment on a forwarding path (wireguard-go notes the same), so
  the header length is parsed from the packet.
* `Coalescer` (wire -> device): merges a batch under wireguard-go's rules (tun/
  offload_linux.go, themselves the kernel's GRO self-tests) into super-packets written with
  NEEDS_CSUM and the pseudo-header sum in the L4 checksum field, gathered without copying.
  Simpler than wireguard-go in one way: a packet only ever extends its flow's latest run
  (no prepending, no reaching back past a packet that started a newer run), so the order
  of packets within a flow is always kept, and writes follow their first packet.

Where inner checksums are verified before merging (`verify`): a merged super-packet goes
to the kernel as CHECKSUM_PARTIAL, which the stack believes without looking, so a segment
corrupted on the wire would be blessed. The links pass verify=False for WireGuard: the
AEAD authenticated exactly the bytes the peer's kernel produced (the kernel's WireGuard
marks decrypted packets CHECKSUM_UNNECESSARY for the same reason). They pass verify=True
for VXLAN (the outer UDP checksum may be zero, so nothing else protects the inner frame)
and for the plain overlay (likewise unauthenticated). A packet that fails is written
unmerged with an all-zero header, so the kernel checks it and drops it itself.

All buffers belong to the caller; nothing here raises on peer input (drop and count).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from enum import IntEnum
from typing import Final

from tunneld.native import checksum

VNET_HDR_LEN: Final = 10
VNET_HDR: Final = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start/offset
F_NEEDS_CSUM: Final = 1
F_DATA_VALID: Final = 2
GSO_NONE: Final = 0
GSO_TCPV4: Final = 1
GSO_UDP: Final = 3  # UFO (IP fragmentation): never granted to the device, so rejected
GSO_TCPV6: Final = 4
GSO_UDP_L4: Final = 5
GSO_ECN: Final = 0x80
# The kernel refuses a UDP_L4 write of more than UDP_MAX_SEGMENTS segments: 64 before
# Linux 6.9 (since then 128); the coalescer keeps to the older bound.
UDP_MAX_SEGMENTS: Final = 64
# A TCP run ends at 64 segments, as the kernel's own GRO does: tiny segments (an MSS of 48)
# would otherwise make one gather write of more than IOV_MAX (1024) buffers, which fails.
TCP_MAX_SEGMENTS: Final = 64

_ETH_IPV4, _ETH_IPV6, _ETH_VLAN, _ETH_QINQ = 0x0800, 0x86DD, 0x8100, 0x88A8
_TCP, _UDP = 6, 17
_FIN, _PSH, _ACK, _CWR = 0x01, 0x08, 0x10, 0x80
_U16: Final = struct.Struct("!H")
_U32: Final = struct.Struct("!I")
_V4_ID_ON: Final = struct.Struct("!HHHH")  # IPv4 ID, flags/fragment, TTL/protocol, checksum
_MAX_HDR: Final = 18 + 60 + 60  # VLAN-tagged Ethernet + IPv4 with options + TCP with options


class GsoDrop(IntEnum):
    """Why Segmenter.prepare() refused a read (values index the caller's drops list)."""

    BAD_VNET_HDR = 0  # short header, unknown gso_type/flags, csum_start/offset outside
    BAD_GSO_PACKET = 1  # packet disagrees with its header: protocol, lengths, gso_size 0, ...
    TOO_MANY_SEGMENTS = 2  # more segments than max_segments


def _fold(s: int) -> int:
    """Ones'-complement fold of a non-negative int to 16 bits (0 stays 0)."""
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _check_l2(l2_len: int) -> None:
    if l2_len not in (0, 14):
        raise ValueError("l2_len is 0 (tun: IP first) or 14 (tap: Ethernet first)")


class Segmenter:
    """Splits one device read (virtio_net_hdr + packet/frame) into wire-sized packets.

    Usage per read: c = prepare(buf, off, n); if c and in_place: send buf[off+10:off+n];
    elif c: write(out, start, stride) and send the c segments. prepare() keeps a reference
    to buf until the next prepare(); buf must stay unchanged until write() returns.
    """

    def __init__(self, l2_len: int, drops: list[int], max_segments: int = 1024) -> None:
        """l2_len: 0 for tun (IP first), 14 for tap (Ethernet first). drops: a list indexed
        by GsoDrop (len >= len(GsoDrop)); prepare() increments drops[reason]."""
        _check_l2(l2_len)
        if len(drops) < len(GsoDrop):
            raise ValueError("drops needs one counter per GsoDrop member")
        self._l2, self._drops, self._max = l2_len, drops, max_segments
        self.count = 0  # number of segments (0 after a drop)
        self.seg_len = 0  # bytes of every segment but the last (headers + gso_size payload)
        self.last_len = 0  # bytes of the last segment
        self.in_place = False  # True: send buf[off+10:off+n] as it is (no write())
        self.hdr_len = 0  # headers of each segment (L2 + IP + L4), parsed, not the kernel's
        self.gso_size = 0  # payload bytes of every segment but the last
        self._tmpl = memoryview(bytearray(_MAX_HDR))  # headers shared by every segment
        self._src: memoryview = self._tmpl
        self._payload_at = self._ip = self._l4 = self._csum_at = 0
        self._v4 = self._tcp = False
        self._id0 = self._seq0 = self._first_flags = self._last_flags = 0
        self._ip_full = self._ip_last = self._init_full = self._init_last = 0
        self._frag_word = self._ttl_proto = 0
        self.super_packets = self.segments = 0  # statistics for `show`: reads split, pieces

    def prepare(self, buf: memoryview, off: int, n: int) -> int:
        """buf[off:off+10] is the virtio_net_hdr, buf[off+10:off+n] the packet/frame. Parse
        and validate; return the segment count (>= 1), or 0 after counting a GsoDrop (never
        raises on any content). GSO_NONE returns 1 with in_place set, the checksum completed
        in place first if NEEDS_CSUM; so does a GSO packet that fits one segment."""
        if off < 0 or n < 0 or off + n > len(buf):
            raise ValueError("buf[off:off+n] falls outside buf")
        self.count, self.in_place = 0, False
        if n < VNET_HDR_LEN:
            return self._drop(GsoDrop.BAD_VNET_HDR)
        hdr: tuple[int, int, int, int, int, int] = VNET_HDR.unpack_from(buf, off)
        flags, gso_type, hdr_len, gso_size, cstart, coff = hdr
        plen = n - VNET_HDR_LEN
        needs_csum = flags & F_NEEDS_CSUM
        if flags & ~(F_NEEDS_CSUM | F_DATA_VALID) or (needs_csum and cstart + coff + 2 > plen):
            return self._drop(GsoDrop.BAD_VNET_HDR)
        pkt = off + VNET_HDR_LEN
        if gso_type == GSO_NONE:
            if not plen:
                return self._drop(GsoDrop.BAD_GSO_PACKET)
            if needs_csum:
                _complete_in_place(buf, pkt + cstart, pkt + coff + cstart, pkt + plen)
            return self._single(plen)
        kind = gso_type & ~GSO_ECN
        if kind not in (GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4) or (
            gso_type & GSO_ECN and kind == GSO_UDP_L4
        ):
            return self._drop(GsoDrop.BAD_VNET_HDR)
        if hdr_len > plen or not gso_size or not self._parse(buf, pkt, plen, kind):
            return self._drop(GsoDrop.BAD_GSO_PACKET)
        if needs_csum and (cstart != self._l4 or coff != self._csum_at - self._l4):
            return self._drop(GsoDrop.BAD_GSO_PACKET)
        payload = plen - self.hdr_len
        if payload <= 0:
            return self._drop(GsoDrop.BAD_GSO_PACKET)
        count = -(-payload // gso_size)
        if count > self._max:
            return self._drop(GsoDrop.TOO_MANY_SEGMENTS)
        self.gso_size, self.count, self._src, self._payload_at = gso_size, count, buf, pkt
        if count == 1:
            self._finish_single(buf, pkt, plen)
            return self._single(plen)
        self.seg_len = self.hdr_len + gso_size
        self.last_len = self.hdr_len + payload - (count - 1) * gso_size
        self._build_template(buf, pkt)
        self.super_packets += 1
        self.segments += count
        return count

    def _drop(self, reason: GsoDrop) -> int:
        self._drops[reason] += 1
        return 0

    def _single(self, plen: int) -> int:
        self.count, self.in_place, self.seg_len, self.last_len = 1, True, plen, plen
        return 1

    def _parse(self, buf: memoryview, pkt: int, plen: int, kind: int) -> bool:
        """Offsets (relative to the frame) of IP and L4 from the packet itself; False when the
        packet is not the IPv4/IPv6 + TCP/UDP that gso_type says, or lengths disagree."""
        ip, want = self._l2, 0
        if ip:
            if plen < 18:
                return False
            ethertype = _U16.unpack_from(buf, pkt + 12)[0]
            if ethertype in (_ETH_VLAN, _ETH_QINQ):  # one tag: tun inserts the skb's VLAN tag
                ip, ethertype = 18, _U16.unpack_from(buf, pkt + 16)[0]
            want = 4 if ethertype == _ETH_IPV4 else 6 if ethertype == _ETH_IPV6 else -1
        if plen < ip + 20:
            return False
        version = buf[pkt + ip] >> 4
        if want and version != want:
            return False
        proto = _UDP if kind == GSO_UDP_L4 else _TCP
        if version == 4 and kind != GSO_TCPV6:
            ihl = (buf[pkt + ip] & 0x0F) * 4
            total, frag = _U16.unpack_from(buf, pkt + ip + 2)[0], buf[pkt + ip + 6] & 0x3F
            if ihl < 20 or total != plen - ip or frag or buf[pkt + ip + 7]:
                return False
            if buf[pkt + ip + 9] != proto or plen < ip + ihl:
                return False
        elif version == 6 and kind != GSO_TCPV4 and plen >= ip + 40:
            ihl = 40  # extension headers are not segmented here (none on TSO/USO output)
            if _U16.unpack_from(buf, pkt + ip + 4)[0] != plen - ip - 40:
                return False
            if buf[pkt + ip + 6] != proto:
                return False
        else:
            return False
        l4 = ip + ihl
        if proto == _TCP:
            thl = (buf[pkt + l4 + 12] >> 4) * 4 if plen >= l4 + 20 else 0
            if thl < 20 or plen < l4 + thl:
                return False
            self.hdr_len, self._csum_at = l4 + thl, l4 + 16
        else:
            if plen < l4 + 8 or _U16.unpack_from(buf, pkt + l4 + 4)[0] != plen - l4:
                return False
            self.hdr_len, self._csum_at = l4 + 8, l4 + 6
        self._ip, self._l4, self._v4, self._tcp = ip, l4, version == 4, proto == _TCP
        return True

    def _finish_single(self, buf: memoryview, pkt: int, plen: int) -> None:
        """A GSO packet that is its own only segment: checksums completed in place."""
        ip, l4 = pkt + self._ip, pkt + self._l4
        if self._v4:
            buf[ip + 10 : ip + 12] = b"\0\0"
            _U16.pack_into(buf, ip + 10, checksum(buf[ip:l4]) ^ 0xFFFF)
        at = pkt + self._csum_at
        buf[at : at + 2] = b"\0\0"
        l4len = plen - self._l4
        c = checksum(buf[l4 : pkt + plen], self._pseudo(buf, ip, l4len)) ^ 0xFFFF
        _U16.pack_into(buf, at, c if c or self._tcp else 0xFFFF)

    def _pseudo(self, buf: memoryview, ip: int, l4len: int) -> int:
        """Folded pseudo-header sum: addresses, protocol, L4 length (RFC 793, RFC 8200 8.1)."""
        addrs = checksum(buf[ip + 12 : ip + 20]) if self._v4 else checksum(buf[ip + 8 : ip + 40])
        return _fold(addrs + (_TCP if self._tcp else _UDP) + l4len)

    def _build_template(self, buf: memoryview, pkt: int) -> None:
        """The headers of a full-size middle segment, with checksums zeroed, plus the
        per-segment constants write() needs (pseudo-header sums, IPv4 header sums)."""
        hl, ip, l4, gso = self.hdr_len, self._ip, self._l4, self.gso_size
        tmpl = self._tmpl
        tmpl[:hl] = buf[pkt : pkt + hl]
        full_l4, last_l4 = hl - l4 + gso, self.last_len - l4
        tmpl[self._csum_at : self._csum_at + 2] = b"\0\0"
        if self._tcp:
            flags = tmpl[l4 + 13]
            self._seq0 = _U32.unpack_from(tmpl, l4 + 4)[0]
            self._first_flags = flags & ~(_FIN | _PSH)
            self._last_flags = flags & ~_CWR
            tmpl[l4 + 13] = flags & ~(_FIN | _PSH | _CWR)
        else:
            _U16.pack_into(tmpl, l4 + 4, full_l4)
        if self._v4:
            self._id0, self._frag_word, self._ttl_proto = _V4_ID_ON.unpack_from(tmpl, ip + 4)[:3]
            _V4_ID_ON.pack_into(tmpl, ip + 4, 0, self._frag_word, self._ttl_proto, 0)
            _U16.pack_into(tmpl, ip + 2, 0)
            base = checksum(tmpl[ip:l4])  # without ID, total length and checksum
            self._ip_full = _fold(base + full_l4 + l4 - ip)
            self._ip_last = _fold(base + last_l4 + l4 - ip)
            _U16.pack_into(tmpl, ip + 2, full_l4 + l4 - ip)
        else:
            _U16.pack_into(tmpl, ip + 4, full_l4 + l4 - ip - 40)
        self._init_full = self._pseudo(buf, pkt + ip, full_l4)
        self._init_last = self._pseudo(buf, pkt + ip, last_l4)

    def write(self, out: memoryview, start: int, stride: int) -> None:
        """After prepare() returned c >= 1 with in_place False: segment i goes to
        out[start + i*stride : start + i*stride + (seg_len, or last_len for the last)],
        every header fixed and every checksum complete. stride >= seg_len; out must not
        overlap the source packet. Allocates nothing but memoryview slices."""
        count, hl, seg_len = self.count, self.hdr_len, self.seg_len
        if self.in_place or not count or stride < seg_len:
            raise ValueError("write() needs a prepare() that returned segments to copy")
        if start < 0 or start + (count - 1) * stride + self.last_len > len(out):
            raise ValueError("the segments do not fit in out")
        src, p, gso, tmpl = self._src, self._payload_at + hl, self.gso_size, self._tmpl[:hl]
        ip, l4, at, v4, tcp = self._ip, self._l4, self._csum_at, self._v4, self._tcp
        ip_sum, init, ident, seq = self._ip_full, self._init_full, self._id0, self._seq0
        frag, ttl_proto, first_flags = self._frag_word, self._ttl_proto, self._first_flags
        csum, pack16, pack32 = checksum, _U16.pack_into, _U32.pack_into
        pack_v4 = _V4_ID_ON.pack_into
        last = count - 1
        for i in range(count):
            d = start + i * stride
            out[d : d + hl] = tmpl
            if i == last:
                seg_len, ip_sum, init = self.last_len, self._ip_last, self._init_last
                self._patch_last(out, d)
            elif not i and tcp:
                out[d + l4 + 13] = first_flags
            out[d + hl : d + seg_len] = src[p : p + seg_len - hl]  # the last may be short
            p += gso
            if v4:
                s = ip_sum + ident  # the header's sum without its ID, plus the ID: one fold
                s = ((s & 0xFFFF) + (s >> 16)) ^ 0xFFFF
                pack_v4(out, d + ip + 4, ident, frag, ttl_proto, s)
                ident = (ident + 1) & 0xFFFF
            if tcp:
                pack32(out, d + l4 + 4, seq)
                seq = (seq + gso) & 0xFFFFFFFF
                pack16(out, d + at, csum(out[d + l4 : d + seg_len], init) ^ 0xFFFF)
            else:
                pack16(out, d + at, (csum(out[d + l4 : d + seg_len], init) ^ 0xFFFF) or 0xFFFF)

    def _patch_last(self, out: memoryview, d: int) -> None:
        """The last segment's lengths (and TCP flags) differ from the template's."""
        ip, l4, last = d + self._ip, d + self._l4, self.last_len
        if self._v4:
            _U16.pack_into(out, ip + 2, last - self._ip)
        else:
            _U16.pack_into(out, ip + 4, last - self._ip - 40)
        if self._tcp:
            out[l4 + 13] = self._last_flags
        else:
            _U16.pack_into(out, l4 + 4, last - self._l4)


def _complete_in_place(buf: memoryview, start: int, at: int, end: int) -> None:
    """NEEDS_CSUM on a single packet: fold buf[start:end] into the partial sum the kernel
    left at buf[at:at+2] and store the complement there (skb_checksum_help: 0 -> 0xffff)."""
    initial = _U16.unpack_from(buf, at)[0]
    buf[at : at + 2] = b"\0\0"
    _U16.pack_into(buf, at, (checksum(buf[start:end], initial) ^ 0xFFFF) or 0xFFFF)


_NO_KIND, _TCP4, _TCP6, _UDP4, _UDP6 = 0, 1, 2, 3, 4
_GSO_OF_KIND: Final = (GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, GSO_UDP_L4)
_ZERO_HDR: Final = memoryview(bytes(VNET_HDR_LEN))
_MF, _FRAG_OFFSET = 0x2000, 0x1FFF
_ETHERTYPE: Final = (_ETH_IPV4, 0, _ETH_IPV6)  # indexed by version & 2
# IPv4 without options + TCP: version/IHL, ToS, total length, fragment, TTL, addresses,
# ports, seq, ack, data offset/reserved/flags; + UDP: ..., ports, UDP length
_V4_TCP: Final = struct.Struct("!BBHxxHBxxxQIIIH")
_V4_UDP: Final = struct.Struct("!BBHxxHBxxxQIH")
_V6_FIRST: Final = struct.Struct("!IHBB")  # version/class/flow label, payload length, next, hops
_TCP_META: Final = struct.Struct("!IIH")  # seq, ack, data offset/reserved/flags
_U64: Final = struct.Struct("!Q")
_Key = int | bytes  # a flow: IPv4 addresses << 32 | ports, or IPv6 addresses + ports


class _Run:
    """One device write being built: a head packet and the packets merged behind it.
    Offsets (l4, hl) count from the start of the head's frame."""

    __slots__ = ("head", "tail", "segs", "open", "kind", "seq_next", "ack", "sig", "gso",
                 "l4len", "limit", "l4", "hl", "psh", "csum", "asum", "opts", "eth")  # fmt: skip

    def __init__(self) -> None:
        self.head = self.tail = self.segs = self.kind = self.seq_next = self.ack = 0
        self.sig = self.gso = self.l4len = self.limit = self.l4 = self.hl = 0
        self.csum = 0  # head's L4 checksum: 0 not checked yet, 1 good, -1 bad
        self.asum = -1  # folded sum of the addresses, computed on first use
        self.open = self.psh = False  # open: more packets may be appended
        self.opts: bytes | None = None  # the head's TCP options, once a packet tries to merge
        self.eth = b""  # ... and its Ethernet header (tap)


class Coalescer:
    """Merges a batch of decapsulated/decrypted packets (or tap frames) into super-packets.

    add() each packet, then flush() once: one write callback per device write. Packets are
    held by reference, never copied; a merged run's head has its headers rewritten in place.
    """

    def __init__(self, l2_len: int, verify: bool, udp: bool, max_packets: int = 1024) -> None:
        """l2_len: 0 (tun) or 14 (tap). verify: check each TCP/UDP checksum before merging
        (a packet that fails is written unmerged: the kernel then drops it itself). udp:
        merge UDP too (only when the device granted TUN_F_USO4/6; else UDP passes
        unmerged). max_packets: how many add() calls may precede one flush()."""
        _check_l2(l2_len)
        self._l2, self._verify, self._udp, self._max = l2_len, verify, udp, max_packets
        self.pending = 0  # packets added since the last flush()
        self._bufs: list[memoryview] = [_ZERO_HDR] * max_packets
        self._offs = [0] * max_packets
        self._lens = [0] * max_packets
        self._next = [-1] * max_packets  # the next packet of the same run, -1 at its end
        self._pool = [_Run() for _ in range(max_packets)]  # the run headed by packet i
        self._runs = self._pool[:]  # runs in the order of their head packets
        self._nruns = 0
        self._tcp_flows: dict[_Key, _Run] = {}  # addresses + ports -> the flow's latest run
        self._udp_flows: dict[_Key, _Run] = {}
        self._hdrs = memoryview(bytearray(VNET_HDR_LEN * max_packets))
        self._hdr_views = [self._hdrs[k * 10 : k * 10 + 10] for k in range(max_packets)]

    def add(self, buf: memoryview, off: int, n: int) -> None:
        """Queue the packet/frame buf[off:off+n] (buf writable: a merged run's head is
        rewritten). The caller keeps buf unchanged until flush() returns; the coalescer keeps
        a reference until a later add() replaces it. Raises ValueError past max_packets (a
        caller bug: flush first)."""
        i = self.pending
        if i >= self._max or off < 0 or n < 0 or off + n > len(buf):
            raise ValueError("add(): flush() first, or buf[off:off+n] is outside buf")
        self.pending = i + 1
        self._bufs[i], self._offs[i], self._lens[i], self._next[i] = buf, off, n, -1
        l2 = self._l2
        ip, plen = off + l2, n - l2
        if plen >= 28:
            b0 = buf[ip]
            if l2 and _U16.unpack_from(buf, off + 12)[0] != _ETHERTYPE[b0 >> 4 & 2]:
                pass  # not IP, VLAN-tagged, or an ethertype that disagrees: never merged
            elif b0 == 0x45 and buf[ip + 9] == _TCP and plen >= 40:  # one unpack for both
                _, tos, total, frag, ttl, addrs, ports, seq, ack, dflags = _V4_TCP.unpack_from(
                    buf, ip
                )
                if not frag & _FRAG_OFFSET:  # sig: ToS, DF (and the reserved bit), TTL
                    self._tcp(i, buf, off, ip + 20, plen - 20, addrs << 32 | ports,
                              not frag & _MF and total == plen, tos << 24 | frag << 8 | ttl,
                              _TCP4, seq, ack, dflags)  # fmt: skip
                    return
            elif b0 == 0x45 and buf[ip + 9] == _UDP and self._udp:
                _, tos, total, frag, ttl, addrs, ports, length = _V4_UDP.unpack_from(buf, ip)
                if not frag & _FRAG_OFFSET:
                    fits = not frag & _MF and total == plen and length == plen - 20
                    self._udp_add(i, buf, off, ip + 20, plen - 20, addrs << 32 | ports, fits,
                                  tos << 24 | frag << 8 | ttl, _UDP4)  # fmt: skip
                    return
            elif b0 >> 4 == 4 and self._v4_other(i, buf, ip, plen):
                return
            elif b0 >> 4 == 6 and self._v6(i, buf, off, ip, plen):
                return
        self._start(i, None, None, False)

    def _v4_other(self, i: int, buf: memoryview, ip: int, plen: int) -> bool:
        """IPv4 TCP/UDP that never merges (options, a TCP header cut short) still ends its
        flow's run, so nothing of that flow is written ahead of it. False: not TCP/UDP
        with ports (a bad IHL, a later fragment, another protocol)."""
        ihl, frag, proto = (buf[ip] & 0x0F) * 4, _U16.unpack_from(buf, ip + 6)[0], buf[ip + 9]
        if ihl < 20 or plen < ihl + 4 or frag & _FRAG_OFFSET:
            return False
        if proto != _TCP and (proto != _UDP or not self._udp):
            return False
        addrs, ports = _U64.unpack_from(buf, ip + 12)[0], _U32.unpack_from(buf, ip + ihl)[0]
        self._start(i, addrs << 32 | ports, self._tcp_flows if proto == _TCP else self._udp_flows,
                    False)  # fmt: skip
        return True

    def _v6(self, i: int, buf: memoryview, off: int, ip: int, plen: int) -> bool:
        """IPv6 TCP/UDP; any other next header (extension headers) is never merged."""
        word, length, proto, hops = _V6_FIRST.unpack_from(buf, ip)
        if plen < 48 or (proto != _TCP and (proto != _UDP or not self._udp)):
            return False
        # version, traffic class, flow label (the kernel's GRO keys on it too), hop limit
        key, fits, sig = buf[ip + 8 : ip + 44].tobytes(), length == plen - 40, word << 8 | hops
        if proto == _UDP:
            fits = fits and _U16.unpack_from(buf, ip + 44)[0] == plen - 40
            self._udp_add(i, buf, off, ip + 40, plen - 40, key, fits, sig, _UDP6)
        elif plen < 60:
            self._start(i, key, self._tcp_flows, False)
        else:
            seq, ack, dflags = _TCP_META.unpack_from(buf, ip + 44)
            self._tcp(i, buf, off, ip + 40, plen - 40, key, fits, sig, _TCP6, seq, ack, dflags)
        return True

    def _tcp(self, i: int, buf: memoryview, off: int, l4: int, l4len: int, key: _Key,
             fits: bool, sig: int, kind: int, seq: int, ack: int, dflags: int) -> None:  # fmt: skip
        """Extend the flow's latest run, or start a new run that becomes the latest.
        dflags: the TCP data offset, reserved bits and flags (bytes 12-13)."""
        thl = dflags >> 12 << 2
        payload = l4len - thl
        # Only ACK or ACK|PSH, no reserved/AE bits, a payload, the header inside.
        fits = fits and thl >= 20 and payload > 0 and dflags & 0x0FF7 == _ACK
        run, csum = self._tcp_flows.get(key), 0
        if (fits and run is not None and run.open and run.seq_next == seq and run.ack == ack
                and run.sig == sig and payload <= run.gso and run.l4len + payload <= run.limit
                and run.hl == l4 - off + thl):  # fmt: skip
            opts = run.opts if run.opts is not None else self._remember_head(run)
            if (thl == 20 or buf[l4 + 20 : l4 + thl] == opts) and (
                not self._l2 or buf[off : off + 14] == run.eth
            ):
                csum = self._checks_out(run, buf, l4, l4len, _TCP) if self._verify else 1
                if csum > 0:
                    self._next[run.tail] = i
                    run.tail, run.segs, run.l4len = i, run.segs + 1, run.l4len + payload
                    run.seq_next = (seq + payload) & 0xFFFFFFFF
                    if dflags & _PSH:  # PSH ends a run and moves to the merged header
                        run.open, run.psh = False, True
                    elif payload < run.gso or run.segs >= TCP_MAX_SEGMENTS:
                        run.open = False  # nothing follows a short segment; runs stay short
                    return
        run = self._start(i, key, self._tcp_flows, fits and not dflags & _PSH)
        run.kind, run.l4, run.hl, run.gso, run.l4len = kind, l4 - off, l4 - off, payload, l4len
        run.hl += thl
        run.seq_next, run.ack, run.sig, run.csum = (seq + payload) & 0xFFFFFFFF, ack, sig, csum
        run.limit = 65535 - 20 if kind == _TCP4 else 65535  # IPv4 total / IPv6 payload length

    def _udp_add(self, i: int, buf: memoryview, off: int, l4: int, l4len: int, key: _Key,
                 fits: bool, sig: int, kind: int) -> None:  # fmt: skip
        """As _tcp: equal sizes, a shorter one ends the run, at most UDP_MAX_SEGMENTS."""
        payload = l4len - 8
        fits = fits and payload > 0
        run, csum = self._udp_flows.get(key), 0
        if (fits and run is not None and run.open and run.sig == sig and payload <= run.gso
                and run.l4len + payload <= run.limit):  # fmt: skip
            if run.opts is None:
                self._remember_head(run)
            if not self._l2 or buf[off : off + 14] == run.eth:
                csum = self._checks_out(run, buf, l4, l4len, _UDP) if self._verify else 1
                if csum > 0:
                    self._next[run.tail] = i
                    run.tail, run.segs, run.l4len = i, run.segs + 1, run.l4len + payload
                    if payload < run.gso or run.segs >= UDP_MAX_SEGMENTS:
                        run.open = False
                    return
        run = self._start(i, key, self._udp_flows, fits)
        run.kind, run.l4, run.hl, run.gso, run.l4len = kind, l4 - off, l4 - off + 8, payload, l4len
        run.sig, run.csum = sig, csum
        run.limit = 65535 - 20 if kind == _UDP4 else 65535

    def _remember_head(self, run: _Run) -> bytes:
        """The head's TCP options and Ethernet header as bytes, taken on its first merge
        attempt (comparing bytes with a view is three times faster than two views)."""
        hb, ho = self._bufs[run.head], self._offs[run.head]
        run.eth = hb[ho : ho + self._l2].tobytes()
        run.opts = hb[ho + run.l4 + 20 : ho + run.hl].tobytes()
        return run.opts

    def _checks_out(self, run: _Run, buf: memoryview, l4: int, l4len: int, proto: int) -> int:
        """1: merge (verify off, or both checksums good); 0: the head's is bad (the packet
        unchecked); -1: the packet's is bad. The head is checked on its first merge only."""
        if not self._verify:
            return 1
        if not run.csum:
            hb, ho = self._bufs[run.head], self._offs[run.head]
            run.csum = 1 if self._valid(run, hb, ho + run.l4, run.l4len, proto) else -1
        if run.csum < 0:
            return 0
        return 1 if self._valid(run, buf, l4, l4len, proto) else -1

    def _valid(self, run: _Run, buf: memoryview, l4: int, l4len: int, proto: int) -> bool:
        """The L4 checksum over buf[l4:l4+l4len] with the run's (same) addresses. A zero UDP
        checksum (none sent, IPv4) cannot be verified, so it does not merge."""
        if proto == _UDP and not (buf[l4 + 6] | buf[l4 + 7]):
            return False
        return checksum(buf[l4 : l4 + l4len], _fold(self._asum(run) + proto + l4len)) == 0xFFFF

    def _asum(self, run: _Run) -> int:
        if run.asum < 0:
            hb, ip = self._bufs[run.head], self._offs[run.head] + self._l2
            v4 = run.kind in (_TCP4, _UDP4)
            run.asum = checksum(hb[ip + 12 : ip + 20] if v4 else hb[ip + 8 : ip + 40])
        return run.asum

    def _start(self, i: int, key: _Key | None, flows: dict[_Key, _Run] | None,
               fits: bool) -> _Run:  # fmt: skip
        run = self._pool[i]
        run.head = run.tail = i
        run.segs, run.open, run.psh, run.csum, run.asum = 1, fits, False, 0, -1
        run.kind = _NO_KIND  # callers that parsed TCP/UDP set theirs
        run.opts = None
        self._runs[self._nruns] = run
        self._nruns += 1
        if flows is not None and key is not None:
            flows[key] = run
        return run

    def flush(self, write: Callable[[list[memoryview]], object]) -> int:
        """Call write(views) once per device write, in the order of each write's first
        packet: views = [virtio_net_hdr (10 bytes), head packet (headers + its payload),
        payload of packet 2, payload of packet 3, ...], a gather list into the caller's
        buffers and the coalescer's header buffers, valid only during the call. Merged:
        NEEDS_CSUM, TCPV4/TCPV6/UDP_L4, the pseudo-header sum in the L4 checksum field;
        unmerged: an all-zero header. Resets (also when write raises); returns the number
        of writes."""
        bufs, offs, lens, nxt, runs = self._bufs, self._offs, self._lens, self._next, self._runs
        try:
            for k in range(self._nruns):
                run = runs[k]
                h = run.head
                buf, off = bufs[h], offs[h]
                if run.segs == 1:
                    write([_ZERO_HDR, buf[off : off + lens[h]]])
                    continue
                views = [self._seal(run, k, buf, off), buf[off : off + lens[h]]]
                hl, j = run.hl, nxt[h]
                while j >= 0:
                    views.append(bufs[j][offs[j] + hl : offs[j] + lens[j]])
                    j = nxt[j]
                write(views)
            return self._nruns
        finally:
            self.pending = self._nruns = 0
            self._tcp_flows.clear()
            self._udp_flows.clear()

    def _seal(self, run: _Run, k: int, buf: memoryview, off: int) -> memoryview:
        """Rewrite the head's headers for the merged length; return its virtio_net_hdr."""
        ip, l4, l4len, kind = off + self._l2, off + run.l4, run.l4len, run.kind
        if kind in (_TCP4, _UDP4):
            _U16.pack_into(buf, ip + 2, l4len + 20)
            buf[ip + 10 : ip + 12] = b"\0\0"
            _U16.pack_into(buf, ip + 10, checksum(buf[ip : ip + 20]) ^ 0xFFFF)
        else:
            _U16.pack_into(buf, ip + 4, l4len)
        tcp = kind <= _TCP6
        pseudo = _fold(self._asum(run) + (_TCP if tcp else _UDP) + l4len)
        if tcp:
            if run.psh:
                buf[l4 + 13] |= _PSH
            _U16.pack_into(buf, l4 + 16, pseudo)
        else:
            _U16.pack_into(buf, l4 + 4, l4len)
            _U16.pack_into(buf, l4 + 6, pseudo)
        VNET_HDR.pack_into(self._hdrs, k * VNET_HDR_LEN, F_NEEDS_CSUM, _GSO_OF_KIND[kind],
                           run.hl, run.gso, run.l4, 16 if tcp else 6)  # fmt: skip
        return self._hdr_views[k]
