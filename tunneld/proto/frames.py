"""L3 packet helpers for the overlay and WireGuard links (sans-IO).

* IPv4 header (RFC 791 section 3.1) and IPv6 header (RFC 8200 section 3):
  version, address offsets, lengths.
* The Internet checksum (RFC 1071), computed as `int.from_bytes(data) % 0xFFFF`:
  2**16 == 1 (mod 0xFFFF), so the value of the data is congruent to the sum of
  its 16-bit words, and the one's-complement sum is that residue (0xFFFF for a
  non-zero multiple). One C-speed bigint operation instead of a word loop.
* TTL / hop-limit decrement for forwarding (RFC 1812 section 5.3.1; RFC 8200
  section 3), the IPv4 checksum patched incrementally with RFC 1624 eqn. 3:
  HC' = ~(~HC + ~m + m').
* ICMPv4 errors (RFC 792: type 3 destination unreachable, type 11 time
  exceeded; RFC 1191 section 4: code 4 fragmentation needed with the next-hop MTU),
  quoting the offending IP header and the first 64 bits of its data.
  Not sent (length 0 returned) where RFC 1122 section 3.2.2 / RFC 1812 section
  4.3.2.7 forbid it: about an ICMP error, a non-initial fragment, or a packet
  whose source is not a unicast host (0/8, 127/8, 224/4 and up) or whose
  destination is multicast/broadcast.
* ICMPv6 Packet Too Big (RFC 4443 section 3.2), quoting as much of the packet as
  fits in the IPv6 minimum MTU (1280), not sent about an ICMPv6 error or from an
  unspecified, loopback or multicast source (RFC 4443 section 2.4 (e)); and ICMPv6
  destination unreachable code 0 (no route, RFC 4443 section 3.1) for the overlay,
  also never to a multicast destination.
  Frag-needed and Packet Too Big are sourced from the original destination, as a
  router beyond the tunnel would send them: the tunnel host's own address as the
  source would be dropped by its kernel as a martian.
* TCP MSS clamping (RFC 879, RFC 6691; OpenVPN's mssfix, tinc's ClampMSS): the MSS
  option of a SYN (or SYN-ACK) lowered in place, the TCP checksum patched with
  RFC 1624 eqn. 3.

Functions take a buffer and the offset of the IP header in it; data-path ones
(`ip_version`, `packet_length`, `decrement_*`) allocate nothing and never raise
on malformed input given a buffer at least as long as documented.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final

Buffer = bytes | bytearray | memoryview

IPV4_HLEN: Final = 20
IPV6_HLEN: Final = 40
IPV4_SRC: Final = 12  # offsets inside the IP header
IPV4_DST: Final = 16
IPV4_TTL: Final = 8
IPV4_CSUM: Final = 10
IPV6_SRC: Final = 8
IPV6_DST: Final = 24
IPV6_HOP_LIMIT: Final = 7
IPPROTO_ICMP: Final = 1
IPPROTO_TCP: Final = 6
IPPROTO_ICMPV6: Final = 58
IPV4_DF: Final = 0x4000  # in the flags/fragment-offset word

ICMP_DEST_UNREACH: Final = 3
ICMP_NET_UNREACH: Final = 0
ICMP_TIME_EXCEEDED: Final = 11
ICMP_EXC_TTL: Final = 0
ICMP_FRAG_NEEDED: Final = 4
ICMPV6_PACKET_TOO_BIG: Final = 2
IPV6_MIN_MTU: Final = 1280
ICMPV6_HOP_LIMIT: Final = 64
ICMP_ERROR_TYPES: Final = frozenset((3, 4, 5, 11, 12))  # never answer these (RFC 1122 3.2.2)
ICMP_TTL: Final = 64
IPTOS_PREC_INTERNETCONTROL: Final = 0xC0  # RFC 1812 4.3.2.5: precedence 6 for ICMP errors

_U16: Final = struct.Struct("!H")
_U32: Final = struct.Struct("!I")
_V4_HDR: Final = struct.Struct("!BBHHHBBH4sI")  # the 20-byte IPv4 header
_ICMP_HDR: Final = struct.Struct("!BBHI")  # type, code, checksum, unused/rest
_V4_META: Final = struct.Struct("!BxHxxHxBxxII")  # ver/IHL, total len, frag, proto, src, dst


def ip_version(buf: Buffer, off: int = 0) -> int:
    """4 or 6 (or whatever the first nibble says; 0 for an empty buffer)."""
    return buf[off] >> 4 if len(buf) > off else 0


def packet_length(buf: Buffer, off: int, avail: int) -> int:
    """Length the IP header claims (IPv4 total length, IPv6 40 + payload length).

    0 if buf[off:off+avail] is not a plausible IPv4/IPv6 packet of at most
    `avail` bytes; WireGuard uses this to strip padding after decryption.
    """
    if avail < IPV4_HLEN:
        return 0
    version = buf[off] >> 4
    if version == 4:
        (length,) = _U16.unpack_from(buf, off + 2)
        if (buf[off] & 0x0F) < 5 or length < IPV4_HLEN:
            return 0
    elif version == 6 and avail >= IPV6_HLEN:
        length = _U16.unpack_from(buf, off + 4)[0] + IPV6_HLEN
    else:
        return 0
    return length if length <= avail else 0


def inner_src(buf: Buffer, off: int = 0) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Source address of the IP packet at buf[off:], or None (control plane / tests)."""
    return _address(buf, off, IPV4_SRC, IPV6_SRC)


def inner_dst(buf: Buffer, off: int = 0) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Destination address of the IP packet at buf[off:], or None (control plane / tests)."""
    return _address(buf, off, IPV4_DST, IPV6_DST)


def _address(
    buf: Buffer, off: int, v4: int, v6: int
) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    version = ip_version(buf, off)
    if version == 4 and len(buf) >= off + IPV4_HLEN:
        return ipaddress.IPv4Address(bytes(buf[off + v4 : off + v4 + 4]))
    if version == 6 and len(buf) >= off + IPV6_HLEN:
        return ipaddress.IPv6Address(bytes(buf[off + v6 : off + v6 + 16]))
    return None


# -- checksums -------------------------------------------------------------------


def internet_checksum(data: Buffer) -> int:
    """RFC 1071 checksum of `data` (odd lengths padded with a zero byte)."""
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8
    residue = value % 0xFFFF
    # residue 0: the one's-complement sum is 0xFFFF (checksum 0) unless all data is zero.
    return 0xFFFF - residue if residue or not value else 0


def ipv4_header_checksum(buf: Buffer, off: int = 0) -> int:
    """Checksum the IPv4 header at buf[off:] should carry (its checksum field counted as 0)."""
    hlen = (buf[off] & 0x0F) << 2
    value = int.from_bytes(buf[off : off + hlen], "big")
    (field,) = _U16.unpack_from(buf, off + IPV4_CSUM)
    residue = (value - (field << ((hlen - IPV4_CSUM - 2) * 8))) % 0xFFFF
    return 0xFFFF - residue if residue else 0  # the version nibble makes the header non-zero


def set_ipv4_checksum(buf: bytearray | memoryview, off: int = 0) -> None:
    _U16.pack_into(buf, off + IPV4_CSUM, ipv4_header_checksum(buf, off))


def ipv4_checksum_ok(buf: Buffer, off: int = 0) -> bool:
    """True if the IPv4 header at buf[off:] sums to 0xFFFF (RFC 1071 verification)."""
    hlen = (buf[off] & 0x0F) << 2
    return int.from_bytes(buf[off : off + hlen], "big") % 0xFFFF == 0


# -- forwarding ----------------------------------------------------------------------


def decrement_ttl_ipv4(buf: bytearray | memoryview, off: int = 0) -> int:
    """Decrement the TTL of the IPv4 header at buf[off:] and patch its checksum (RFC 1624).

    Returns the new TTL, or 0 without touching the packet when the TTL is 0 or
    1 (it would hit zero: the caller drops it and may send time exceeded).
    """
    ttl = buf[off + IPV4_TTL]
    if ttl <= 1:
        return 0
    old_word = (ttl << 8) | buf[off + IPV4_TTL + 1]  # m: TTL and protocol share a word
    buf[off + IPV4_TTL] = ttl - 1
    (checksum,) = _U16.unpack_from(buf, off + IPV4_CSUM)
    # HC' = ~(~HC + ~m + m')  (RFC 1624 eqn. 3), one's-complement arithmetic
    total = (~checksum & 0xFFFF) + (~old_word & 0xFFFF) + (old_word - 0x100)
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    _U16.pack_into(buf, off + IPV4_CSUM, ~total & 0xFFFF)
    return ttl - 1


def decrement_hop_limit_ipv6(buf: bytearray | memoryview, off: int = 0) -> int:
    """IPv6 counterpart of `decrement_ttl_ipv4` (no header checksum in IPv6)."""
    hop_limit = buf[off + IPV6_HOP_LIMIT]
    if hop_limit <= 1:
        return 0
    buf[off + IPV6_HOP_LIMIT] = hop_limit - 1
    return hop_limit - 1


# -- ICMPv4 errors -------------------------------------------------------------------


def build_icmp_error_v4(
    original: Buffer,
    src: bytes,
    out: bytearray | memoryview,
    icmp_type: int,
    code: int,
    rest: int = 0,
) -> int:
    """Write an ICMPv4 error about `original` (an IPv4 packet) into out[0:n]; return n.

    `src` (4 bytes) is our address, the error's source; its destination is the
    original's source. `rest` is the header's second word (RFC 1191: the next-hop
    MTU for frag-needed). `out` needs 20 + 8 + 60 + 8 = 96 bytes. Returns 0, writing
    nothing, when no error may be sent (see module docstring) or `original` is
    not a well-formed IPv4 header.
    """
    avail = len(original)
    if avail < IPV4_HLEN:
        return 0
    ver_ihl, total_len, frag, proto, orig_src, orig_dst = _V4_META.unpack_from(original, 0)
    hlen = (ver_ihl & 0x0F) << 2
    if ver_ihl >> 4 != 4 or hlen < IPV4_HLEN or hlen > avail or frag & 0x1FFF:
        return 0
    if proto == IPPROTO_ICMP and (avail <= hlen or original[hlen] in ICMP_ERROR_TYPES):
        return 0
    first = orig_src >> 24
    if first == 0 or first == 127 or first >= 224 or orig_dst >> 28 >= 0xE:
        return 0
    if len(src) != 4:
        raise ValueError("src must be a 4-byte IPv4 address")
    quoted: int = min(hlen + 8, avail, max(total_len, hlen))
    length = IPV4_HLEN + 8 + quoted
    _V4_HDR.pack_into(
        out, 0, 0x45, IPTOS_PREC_INTERNETCONTROL, length, 0, 0, ICMP_TTL, IPPROTO_ICMP, 0,
        bytes(src), orig_src,
    )  # fmt: skip
    _ICMP_HDR.pack_into(out, IPV4_HLEN, icmp_type, code, 0, rest)
    out[IPV4_HLEN + 8 : length] = original[:quoted]
    _U16.pack_into(out, IPV4_HLEN + 2, internet_checksum(out[IPV4_HLEN:length]))
    set_ipv4_checksum(out, 0)
    return length


def build_icmp_net_unreachable_v4(original: Buffer, src: bytes, out: bytearray | memoryview) -> int:
    """ICMP destination unreachable, code 0 (net unreachable), RFC 792. See build_icmp_error_v4."""
    return build_icmp_error_v4(original, src, out, ICMP_DEST_UNREACH, ICMP_NET_UNREACH)


def build_icmp_time_exceeded_v4(original: Buffer, src: bytes, out: bytearray | memoryview) -> int:
    """ICMP time exceeded in transit (type 11 code 0), RFC 792. See build_icmp_error_v4."""
    return build_icmp_error_v4(original, src, out, ICMP_TIME_EXCEEDED, ICMP_EXC_TTL)


def build_frag_needed_v4(original: Buffer, out: bytearray | memoryview, mtu: int) -> int:
    """ICMP fragmentation needed and DF set (type 3 code 4) with next-hop MTU `mtu`
    (RFC 1191 section 4), about `original`, sourced from its destination (see the module
    docstring); into out[0:n] (96 bytes), returns n. 0, writing nothing, when no error
    may be sent (see build_icmp_error_v4) or `original` does not have DF set (a router
    would fragment it)."""
    if len(original) < IPV4_HLEN or not _U16.unpack_from(original, 6)[0] & IPV4_DF:
        return 0
    if not 0 < mtu <= 0xFFFF:
        raise ValueError("mtu must be 1..65535")
    dst = bytes(original[IPV4_DST : IPV4_DST + 4])
    return build_icmp_error_v4(original, dst, out, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, mtu)


# -- ICMPv6 errors -------------------------------------------------------------------

_V6_HDR: Final = struct.Struct("!IHBB16s16s")  # ver/class/flow, payload length, next, hops
_ICMPV6_ERROR_MAX: Final = 127  # types 0..127 are errors (RFC 4443 section 2.1)


def build_packet_too_big_v6(original: Buffer, out: bytearray | memoryview, mtu: int) -> int:
    """ICMPv6 Packet Too Big (RFC 4443 section 3.2) with MTU `mtu` about `original` (an
    IPv6 packet), sourced from its destination, to its source; into out[0:n] (`out`
    needs IPV6_MIN_MTU = 1280 bytes), returns n. 0, writing nothing, when no error may
    be sent (see the module docstring) or `original` is not an IPv6 header."""
    avail = len(original)
    if avail < IPV6_HLEN or original[0] >> 4 != 6:
        return 0
    src, dst = bytes(original[IPV6_SRC : IPV6_SRC + 16]), bytes(original[IPV6_DST : IPV6_DST + 16])
    first = src[0]
    if first == 0xFF or src == bytes(16) or src == bytes(15) + b"\x01":
        return 0  # multicast, unspecified, loopback source
    if dst[0] == 0xFF:  # allowed (RFC 4443 2.4 (e.3)), but sourced from the original
        return 0  # destination it would carry a group as its source
    if original[6] == IPPROTO_ICMPV6 and (
        avail <= IPV6_HLEN or original[IPV6_HLEN] <= _ICMPV6_ERROR_MAX
    ):
        return 0  # never about an ICMPv6 error (or a truncated one)
    if not 0 < mtu <= 0xFFFFFFFF:
        raise ValueError("mtu must be 1..2**32-1")
    quoted = min(avail, IPV6_MIN_MTU - IPV6_HLEN - 8)
    plen = 8 + quoted
    _V6_HDR.pack_into(out, 0, 0x60000000, plen, IPPROTO_ICMPV6, ICMPV6_HOP_LIMIT, dst, src)
    _ICMP_HDR.pack_into(out, IPV6_HLEN, ICMPV6_PACKET_TOO_BIG, 0, 0, mtu)
    out[IPV6_HLEN + 8 : IPV6_HLEN + plen] = original[:quoted]
    # RFC 4443 section 2.3: the checksum covers the pseudo-header (RFC 8200 section 8.1)
    pseudo = dst + src + _U32.pack(plen) + b"\x00\x00\x00" + bytes((IPPROTO_ICMPV6,))
    csum = internet_checksum(pseudo + bytes(out[IPV6_HLEN : IPV6_HLEN + plen]))
    _U16.pack_into(out, IPV6_HLEN + 2, csum)
    return IPV6_HLEN + plen


ICMPV6_DEST_UNREACH: Final = 1
ICMPV6_NO_ROUTE: Final = 0


def build_icmpv6_no_route(
    original: Buffer, src: bytes, out: bytearray | memoryview, quote: int = 128
) -> int:
    """ICMPv6 destination unreachable, code 0 (no route to destination), RFC 4443
    section 3.1, about `original` (an IPv6 packet), from `src` (16 bytes: the router's
    address) to its source, quoting at most `quote` bytes of it; into out[0:n] (`out`
    needs 48 + quote bytes), returns n. 0, writing nothing, when no error may be sent
    (RFC 4443 section 2.4 (e): about an ICMPv6 error, to a multicast destination, from an
    unspecified, loopback or multicast source) or `original` is not an IPv6 header."""
    avail = len(original)
    if avail < IPV6_HLEN or original[0] >> 4 != 6:
        return 0
    orig_src = bytes(original[IPV6_SRC : IPV6_SRC + 16])
    if orig_src[0] == 0xFF or orig_src == bytes(16) or orig_src == bytes(15) + b"\x01":
        return 0
    if original[IPV6_DST] == 0xFF:
        return 0  # to a multicast group (router solicitations, MLD reports...)
    if original[6] == IPPROTO_ICMPV6 and (
        avail <= IPV6_HLEN or original[IPV6_HLEN] <= _ICMPV6_ERROR_MAX
    ):
        return 0
    if len(src) != 16:
        raise ValueError("src must be a 16-byte IPv6 address")
    plen = 8 + min(avail, quote)
    _V6_HDR.pack_into(out, 0, 0x60000000, plen, IPPROTO_ICMPV6, ICMPV6_HOP_LIMIT, src, orig_src)
    _ICMP_HDR.pack_into(out, IPV6_HLEN, ICMPV6_DEST_UNREACH, ICMPV6_NO_ROUTE, 0, 0)
    out[IPV6_HLEN + 8 : IPV6_HLEN + plen] = original[: plen - 8]
    pseudo = bytes(src) + orig_src + _U32.pack(plen) + b"\x00\x00\x00" + bytes((IPPROTO_ICMPV6,))
    _U16.pack_into(
        out, IPV6_HLEN + 2, internet_checksum(pseudo + bytes(out[IPV6_HLEN : IPV6_HLEN + plen]))
    )
    return IPV6_HLEN + plen


# -- TCP MSS clamping ----------------------------------------------------------------

TCP_SYN: Final = 0x02
TCPOPT_EOL: Final = 0
TCPOPT_NOP: Final = 1
TCPOPT_MSS: Final = 2


def clamp_mss(buf: bytearray | memoryview, off: int, n: int, mss4: int, mss6: int) -> bool:
    """Lower the MSS option of a TCP SYN (SYN-ACK too) in the IP packet at buf[off:off+n]
    to `mss4` (IPv4) or `mss6` (IPv6), patching the TCP checksum incrementally (RFC 1624
    eqn. 3: HC' = ~(~HC + ~m + m')). True if the packet was changed. Anything else (not
    TCP, not a SYN, a non-initial fragment, IPv6 extension headers, no MSS option, an MSS
    already small enough, a truncated or malformed header) is left as it is; never raises
    on content. The checksum must be complete (not a NEEDS_CSUM partial sum)."""
    if n < IPV4_HLEN + 20:
        return False
    version = buf[off] >> 4
    if version == 4:
        hlen = (buf[off] & 0x0F) << 2
        if (
            buf[off + 9] != IPPROTO_TCP
            or hlen < IPV4_HLEN
            or _U16.unpack_from(buf, off + 6)[0] & 0x1FFF
        ):
            return False
        tcp, mss = off + hlen, mss4
    elif version == 6:
        if buf[off + 6] != IPPROTO_TCP:
            return False
        tcp, mss = off + IPV6_HLEN, mss6
    else:
        return False
    end = off + n
    if tcp + 20 > end or not buf[tcp + 13] & TCP_SYN:
        return False
    opt, opt_end = tcp + 20, min(tcp + ((buf[tcp + 12] >> 4) << 2), end)
    while opt < opt_end:
        kind = buf[opt]
        if kind == TCPOPT_EOL:
            return False
        if kind == TCPOPT_NOP:
            opt += 1
            continue
        if opt + 1 >= opt_end or buf[opt + 1] < 2:
            return False
        if kind == TCPOPT_MSS:
            return buf[opt + 1] == 4 and opt + 4 <= opt_end and _set_mss(buf, tcp, opt + 2, mss)
        opt += buf[opt + 1]
    return False


def _set_mss(buf: bytearray | memoryview, tcp: int, at: int, mss: int) -> bool:
    (old,) = _U16.unpack_from(buf, at)
    if old <= mss:
        return False
    _U16.pack_into(buf, at, mss)
    m, m_new = old, mss
    if (at - tcp) & 1:  # after an odd number of NOPs: the value straddles two 16-bit words
        m, m_new = ((m & 0xFF) << 8) | (m >> 8), ((m_new & 0xFF) << 8) | (m_new >> 8)
    (checksum,) = _U16.unpack_from(buf, tcp + 16)
    # HC' = ~(~HC + ~m + m')  (RFC 1624 eqn. 3); a byte-swapped word adds byte-swapped
    total = (~checksum & 0xFFFF) + (~m & 0xFFFF) + m_new
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    _U16.pack_into(buf, tcp + 16, ~total & 0xFFFF)
    return True
