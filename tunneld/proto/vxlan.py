"""VXLAN encapsulation core, RFC 7348 (sans-IO).

Wire format (RFC 7348 section 5, "VXLAN Frame Format"): after the outer UDP
header, an 8-byte VXLAN header

    word 0: flags (8 bits: R R R R I R R R) | reserved (24 bits)
    word 1: VNI (24 bits)                    | reserved (8 bits)

followed by the inner Ethernet frame (no FCS). The I flag (0x08) "MUST be set to
1 for a valid VNI"; reserved bits "MUST be set to zero on transmission".

Receive policy for reserved bits: RFC 7348 section 5 says they are "ignored on
receipt". The Linux vxlan driver instead drops any frame carrying a flag or
reserved bit it did not consume (vxlan_rcv's "unprocessed flags remaining" check:
strict for robustness and for future extensions such as GBP and GPE). tunneld
interoperates with the kernel and follows the kernel: the flags word must be
exactly 0x08000000 and the low byte of the VNI word zero, else BAD_FLAGS.

Destination UDP port is the configured one (IANA 4789, section 5 "Outer UDP
Header"). The source port "SHOULD" be a hash of the inner frame's headers to
give ECMP entropy, in the dynamic/private range (section 5). `flow_hash` mirrors
the kernel's `udp_flow_src_port`: a hash of the inner IPv4/IPv6 addresses,
protocol and L4 ports (TCP, UDP, UDP-Lite, SCTP, DCCP; ports omitted for
fragments and for IPv6 extension headers, which are not walked), falling back to
the Ethernet destination/source/type for other frames; one 802.1Q/802.1ad tag is
skipped. The hash is CRC-32 (`zlib.crc32`, C speed, over memoryview slices).
`port_from_hash` scales it into [port_min, port_max] by multiply-shift like the
kernel. A kernel vxlan device without `srcport MIN MAX` uses the netns's
`ip_local_port_range`, whose default is 32768..60999: that is our default.

Data path (`VxlanPort`): `encap` writes the header into the caller's headroom
and returns the destination (a remote string from the FDB, or FLOOD); `decap`
validates, learns (RFC 7348 section 4, "learning the association of inner source
MAC to outer source IP") and returns the inner frame's length. Bad peer input is
counted under a `VxlanDrop` reason and returns -1; nothing raises or logs.
Counting is of drops only: the link counts rx/tx packets and bytes once the
frame is delivered or sent, and may count its own I/O failures under the
link-level members (DEVICE_WRITE_ERROR, SOCKET_ERROR, DEVICE_ERROR, SEND_*, UNREACHABLE).
"""

from __future__ import annotations

import struct
import zlib
from enum import IntEnum
from typing import Final

from tunneld.proto.counters import Counters
from tunneld.proto.fdb import MAC_MASK, MULTICAST_BIT, Fdb, Remote

VXLAN_HDR: Final = struct.Struct("!II")
VXLAN_LEN: Final = 8
I_FLAG: Final = 0x08
I_FLAG_WORD: Final = I_FLAG << 24
VNI_MAX: Final = (1 << 24) - 1
ETH_HLEN: Final = 14
VLAN_HLEN: Final = 4
VLAN_TPIDS: Final = frozenset((0x8100, 0x88A8))
ETH_P_IP: Final = 0x0800
ETH_P_IPV6: Final = 0x86DD
PORT_MIN_DEFAULT: Final = 32768  # net.ipv4.ip_local_port_range default
PORT_MAX_DEFAULT: Final = 60999
# IP protocols whose first 4 payload bytes are source and destination ports.
PORT_PROTOS: Final = frozenset((6, 17, 33, 132, 136))  # TCP UDP DCCP SCTP UDP-Lite

# VXLAN header plus the first 8 bytes of the inner frame: the low 48 bits of the
# trailing Q are the inner source MAC (inner bytes 6..11).
_RX_HDR: Final = struct.Struct("!II4xQ")
_U64: Final = struct.Struct("!Q")
_U16: Final = struct.Struct("!H")
_V4_FIELDS: Final = struct.Struct("!B5xHxB")  # version/IHL, flags+fragment offset, (TTL), protocol
# Ethernet + option-less IPv4 + ports: ethertype, version/IHL, fragment, protocol, saddr..dport.
_ETH_IPV4: Final = struct.Struct("!12xHB5xHxB2x12s")
# Ethernet + IPv6 + ports: ethertype, next header, saddr..dport.
_ETH_IPV6: Final = struct.Struct("!12xH6xBx36s")


class _Flood:
    __slots__ = ()

    def __repr__(self) -> str:
        return "FLOOD"


FLOOD: Final = _Flood()
"""`encap` result: send to every remote in `fdb.flood_list()` (head-end replication)."""


class VxlanDrop(IntEnum):
    """Receive drop reasons (show: `rx_dropped`)."""

    SHORT = 0  # shorter than the VXLAN header + an Ethernet header (22 bytes)
    BAD_FLAGS = 1  # I flag clear, or any reserved bit set (kernel-strict, see module doc)
    WRONG_VNI = 2  # valid header for a VNI this port does not serve
    OVERSIZED = 3  # inner frame > MTU + 14 (+ 4 when VLAN-tagged)
    NOT_ALLOWED_SOURCE = 4  # inner source MAC is static on another remote
    BAD_SOURCE_MAC = 5  # inner source MAC is multicast/broadcast or all-zeros
    DEVICE_WRITE_ERROR = 6  # link: writing the inner frame to the tap failed (EIO, ...)
    SOCKET_ERROR = 7  # link: recv on the UDP socket failed (ECONNREFUSED from an ICMP error, ...)
    FDB_FULL = 8  # source MAC not learned: max_learned reached (the frame is still delivered)


class VxlanTxDrop(IntEnum):
    """Transmit drop reasons (show: `tx_dropped`)."""

    NO_DESTINATION = 0  # unknown unicast or BUM with an empty flood list
    SHORT_FRAME = 1  # frame shorter than an Ethernet header
    OVERSIZED_FRAME = 2  # frame > MTU + 14 (+ 4 when VLAN-tagged)
    SEND_BUFFER_FULL = 3  # link: ENOBUFS / EAGAIN on send
    UNREACHABLE = 4  # link: ENETUNREACH / EHOSTUNREACH / ECONNREFUSED
    SEND_ERROR = 5  # link: any other OSError from send
    DEVICE_ERROR = 6  # link: reading a frame from the tap failed
    # proto.gso.GsoDrop, in its order, from GSO_TX_REASONS on (the segmenter counts them)
    BAD_VNET_HDR = 7  # the tap's virtio_net_hdr makes no sense
    BAD_GSO_PACKET = 8  # a super-frame that disagrees with its header
    TOO_MANY_SEGMENTS = 9  # a super-frame with more segments than the link splits
    PACKET_TOO_BIG = 10  # link: larger than the path to the remote (EMSGSIZE; links/pmtu.py)


GSO_TX_REASONS: Final = int(VxlanTxDrop.BAD_VNET_HDR)


def write_header(buf: memoryview | bytearray, offset: int, vni: int) -> None:
    """Write the 8-byte header for `vni` at buf[offset:offset+8]."""
    VXLAN_HDR.pack_into(buf, offset, I_FLAG_WORD, vni << 8)


def parse_header(data: bytes | bytearray | memoryview) -> tuple[int, int]:
    """(flags byte, vni) of a VXLAN payload; ValueError if shorter than 8 bytes.

    For tests and tools: reports flags as found and does not apply the receive
    policy (the data path is `VxlanPort.decap`).
    """
    if len(data) < VXLAN_LEN:
        raise ValueError(f"VXLAN header needs {VXLAN_LEN} bytes, got {len(data)}")
    word0, word1 = VXLAN_HDR.unpack_from(data, 0)
    return word0 >> 24, word1 >> 8


def flow_hash(buf: memoryview | bytearray, offset: int, length: int) -> int:
    """32-bit hash of the inner flow of the Ethernet frame at buf[offset:offset+length].

    `length` must be >= 14. Same flow -> same hash; used for the source port.
    The common case (untagged IPv4 without options carrying ports) is one
    unpack and one crc32; everything else goes through `_flow_hash_general`,
    which gives the same value for that case (CRC-32 chains).
    """
    if length >= 38:
        ethertype, ver_ihl, frag, proto, addrs_ports = _ETH_IPV4.unpack_from(buf, offset)
        if ethertype == ETH_P_IP and ver_ihl == 0x45 and proto in PORT_PROTOS and not frag & 0x3FFF:
            return zlib.crc32(addrs_ports, proto)
    return _flow_hash_general(buf, offset, length)


def _flow_hash_general(buf: memoryview | bytearray, offset: int, length: int) -> int:
    if length >= 58:  # untagged IPv6 whose next header carries ports: one unpack, one crc32
        ethertype, next_header, addrs_ports = _ETH_IPV6.unpack_from(buf, offset)
        if ethertype == ETH_P_IPV6 and next_header in PORT_PROTOS:
            return zlib.crc32(addrs_ports, next_header)
    end = offset + length
    (ethertype,) = _U16.unpack_from(buf, offset + 12)
    l3 = offset + ETH_HLEN
    if ethertype in VLAN_TPIDS and length >= ETH_HLEN + VLAN_HLEN:
        (ethertype,) = _U16.unpack_from(buf, offset + 16)
        l3 += VLAN_HLEN
    if ethertype == ETH_P_IP and l3 + 20 <= end:
        ver_ihl, frag, proto = _V4_FIELDS.unpack_from(buf, l3)
        h = zlib.crc32(buf[l3 + 12 : l3 + 20], proto)  # saddr, daddr
        l4 = l3 + ((ver_ihl & 0x0F) << 2)
        if proto in PORT_PROTOS and not frag & 0x3FFF and l4 + 4 <= end:
            h = zlib.crc32(buf[l4 : l4 + 4], h)  # sport, dport
        return h
    if ethertype == ETH_P_IPV6 and l3 + 40 <= end:
        next_header = buf[l3 + 6]
        h = zlib.crc32(buf[l3 + 8 : l3 + 40], next_header)  # saddr, daddr
        if next_header in PORT_PROTOS and l3 + 44 <= end:
            h = zlib.crc32(buf[l3 + 40 : l3 + 44], h)  # sport, dport
        return h
    return zlib.crc32(buf[offset : offset + ETH_HLEN])  # dst, src, type


def port_from_hash(
    h: int, port_min: int = PORT_MIN_DEFAULT, port_max: int = PORT_MAX_DEFAULT
) -> int:
    """Scale a 32-bit hash into [port_min, port_max] by multiply-shift, as the kernel does."""
    return port_min + ((h * (port_max - port_min + 1)) >> 32)


class VxlanPort:
    """One VNI on one interface: encap toward the FDB's remotes, decap + learning.

    `mtu` is the tap device's MTU (the inner L3 MTU); frames up to mtu + 14
    bytes, or mtu + 18 with one VLAN tag, pass. `counters` must have been built
    as `Counters(VxlanDrop, VxlanTxDrop)`.
    """

    __slots__ = (
        "vni",
        "fdb",
        "counters",
        "mtu",
        "learning",
        "port_min",
        "port_max",
        "_vni_word",
        "_max_frame",
        "_port_span",
        "_table",
        "_rx_dropped",
        "_tx_dropped",
    )

    def __init__(
        self,
        vni: int,
        fdb: Fdb,
        counters: Counters,
        mtu: int,
        learning: bool,
        *,
        port_min: int = PORT_MIN_DEFAULT,
        port_max: int = PORT_MAX_DEFAULT,
    ) -> None:
        if not 0 <= vni <= VNI_MAX:
            raise ValueError(f"VNI must be 0..{VNI_MAX}, got {vni}")
        if not 0 < port_min <= port_max <= 0xFFFF:
            raise ValueError(f"bad source port range {port_min}..{port_max}")
        if len(counters.rx_dropped) != len(VxlanDrop) or len(counters.tx_dropped) != len(
            VxlanTxDrop
        ):
            raise ValueError("counters must be Counters(VxlanDrop, VxlanTxDrop)")
        self.vni, self.fdb, self.counters = vni, fdb, counters
        self.mtu, self.learning = mtu, learning
        self.port_min, self.port_max = port_min, port_max
        self._vni_word = vni << 8
        self._port_span = port_max - port_min + 1
        self._max_frame = mtu + ETH_HLEN
        self._table = fdb.table  # never rebound by Fdb
        self._rx_dropped = counters.rx_dropped
        self._tx_dropped = counters.tx_dropped

    def encap(
        self, slot: memoryview, headroom: int, frame_len: int, now: float
    ) -> Remote | _Flood | None:
        """Header for the frame at slot[headroom:headroom+frame_len] -> slot[headroom-8:headroom].

        Returns the destination remote (a string owned by the FDB) for a known
        unicast or static destination, FLOOD for broadcast/multicast/unknown
        unicast when the flood list is non-empty, or None after counting a
        VxlanTxDrop. The datagram to send is slot[headroom-8:headroom+frame_len].
        `headroom` >= 8 is the caller's duty.
        """
        if frame_len < ETH_HLEN:
            self._tx_dropped[VxlanTxDrop.SHORT_FRAME] += 1
            return None
        if frame_len > self._max_frame and not self._vlan_fits(slot, headroom, frame_len):
            self._tx_dropped[VxlanTxDrop.OVERSIZED_FRAME] += 1
            return None
        VXLAN_HDR.pack_into(slot, headroom - VXLAN_LEN, I_FLAG_WORD, self._vni_word)
        entry = self._table.get(_U64.unpack_from(slot, headroom)[0] >> 16)
        if entry is not None and now < entry.expires:
            return entry.remote
        if self.fdb.flood:
            return FLOOD
        self._tx_dropped[VxlanTxDrop.NO_DESTINATION] += 1
        return None

    def source_port(self, slot: memoryview, headroom: int, frame_len: int) -> int:
        """UDP source port for the frame at slot[headroom:headroom+frame_len] (frame_len >= 14)."""
        if frame_len >= 38:  # flow_hash's common case inlined: saves a call (~100 ns)
            ethertype, ver_ihl, frag, proto, addrs_ports = _ETH_IPV4.unpack_from(slot, headroom)
            if (
                ethertype == ETH_P_IP
                and ver_ihl == 0x45
                and proto in PORT_PROTOS
                and not frag & 0x3FFF
            ):
                return self.port_min + ((zlib.crc32(addrs_ports, proto) * self._port_span) >> 32)
        h = _flow_hash_general(slot, headroom, frame_len)
        return self.port_min + ((h * self._port_span) >> 32)

    def decap(self, data: memoryview, length: int, src_ip: Remote, now: float) -> int:
        """Validate the UDP payload data[0:length] from `src_ip`; learn; return the frame length.

        On success the inner frame is data[8:8+n] and n is returned. On bad input
        a VxlanDrop reason is counted and -1 returned. `src_ip` is the address
        string `recvfrom` reported; it is stored in the FDB when learning.
        A frame whose source MAC is static on another remote is dropped
        (NOT_ALLOWED_SOURCE) whether or not learning is on; the kernel only
        checks with learning on, but a static entry is a claim about where a MAC
        lives, and a spoofed source should not reach the tap either way.
        """
        drops = self._rx_dropped
        if length < VXLAN_LEN + ETH_HLEN:
            drops[VxlanDrop.SHORT] += 1
            return -1
        flags, vni_word, src = _RX_HDR.unpack_from(data, 0)
        if flags != I_FLAG_WORD or vni_word & 0xFF:
            drops[VxlanDrop.BAD_FLAGS] += 1
            return -1
        if vni_word != self._vni_word:
            drops[VxlanDrop.WRONG_VNI] += 1
            return -1
        n = length - VXLAN_LEN
        if n > self._max_frame and not self._vlan_fits(data, VXLAN_LEN, n):
            drops[VxlanDrop.OVERSIZED] += 1
            return -1
        src &= MAC_MASK
        if not src or src & MULTICAST_BIT:
            drops[VxlanDrop.BAD_SOURCE_MAC] += 1
            return -1
        entry = self._table.get(src)
        if entry is None:
            if self.learning and not self.fdb.learn_key(src, src_ip, now):
                drops[VxlanDrop.FDB_FULL] += 1  # not learned; delivered, as the bridge does
        elif entry.static:
            if entry.remote != src_ip:
                drops[VxlanDrop.NOT_ALLOWED_SOURCE] += 1
                return -1
        elif self.learning:  # refresh, or move to the new remote (VM migration)
            entry.remote = src_ip
            entry.seen = now
            entry.expires = now + self.fdb.lifetime
        return n

    def _vlan_fits(self, buf: memoryview | bytearray, frame_off: int, frame_len: int) -> bool:
        """An oversize-by-at-most-4 frame is fine if it carries an 802.1Q/802.1ad tag."""
        return (
            frame_len <= self._max_frame + VLAN_HLEN
            and _U16.unpack_from(buf, frame_off + 12)[0] in VLAN_TPIDS
        )
