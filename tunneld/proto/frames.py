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
  exceeded), quoting the offending IP header and the first 64 bits of its data.
  Not sent (length 0 returned) where RFC 1122 section 3.2.2 / RFC 1812 section
  4.3.2.7 forbid it: about an ICMP error, a non-initial fragment, or a packet
  whose source is not a unicast host (0/8, 127/8, 224/4 and up) or whose
  destination is multicast/broadcast.

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

ICMP_DEST_UNREACH: Final = 3
ICMP_NET_UNREACH: Final = 0
ICMP_TIME_EXCEEDED: Final = 11
ICMP_EXC_TTL: Final = 0
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
    original: Buffer, src: bytes, out: bytearray | memoryview, icmp_type: int, code: int
) -> int:
    """Write an ICMPv4 error about `original` (an IPv4 packet) into out[0:n]; return n.

    `src` (4 bytes) is our address, the error's source; its destination is the
    original's source. `out` needs 20 + 8 + 60 + 8 = 96 bytes. Returns 0, writing
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
    _ICMP_HDR.pack_into(out, IPV4_HLEN, icmp_type, code, 0, 0)
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
