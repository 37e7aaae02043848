"""The flannel-UDP overlay's forwarding decisions, sans-IO.

Wire format (DESIGN.md "Overlay", flannel's UDP backend, backend/udp/proxy_amd64.c):
the UDP payload is the raw IPv4 packet, no header, the same port on every host.
IPv6 inside (flannel's dual-stack leases, `IPv6Network`): the payload is the raw
IPv6 packet, told apart by its version nibble (flannel's UDP backend itself carries
IPv4 only; its other backends route IPv6 the same way, one subnet per host).

Theory of operation
-------------------
* The route table is `proto.routing.PrefixTable` (longest-prefix match): each
  other host's subnet maps to a `_Route` holding its public ip and an opaque
  destination object (whatever the transport registered for the host: a
  `(public_ip, port)` tuple for the plain transport, a peer for an encrypted
  one); this host's own subnet maps to `OWN`. TTL decrement and the ICMP error
  come from `proto.frames`.
* `OverlayRouter.outbound` is the device -> underlay direction (RFC 791 header
  checks; RFC 1812 5.3.1 TTL): a packet for a subnet nobody owns, or for this
  host's own subnet (misrouted into the device), is answered with an ICMP
  destination-unreachable code 0 (net unreachable, RFC 792) written into
  `icmp_buf`, rate-limited by a token bucket. Its source is the overlay
  network's own address (10.5.0.0 for 10.5.0.0/16: flannel never leases the
  first subnet, so no host has it), acting as the overlay's router: flannel uses
  the device's address, which the kernel drops as a martian (a local source
  arriving on an interface), so its errors never reach the sender. Then the TTL is decremented with
  an incremental checksum update (RFC 1624 eqn. 3), dropping at zero, exactly
  as flannel's proxy does; the return value is the owner's destination object.
* `OverlayRouter.inbound` is underlay -> device: the datagram's source address
  must be a registered host's public ip (flannel accepts anything; we drop and
  count), the payload must be a whole IPv4 packet whose inner source lies in a
  subnet that same host leased (SPOOFED_SOURCE otherwise: a host must not speak
  for another host's, or this host's, addresses; the WireGuard transport checks
  the same against the peer, see links/overlay_wg.py), and its TTL is decremented
  like flannel's udp_to_tun does (TTL <= 1 is dropped). Returns the IP total
  length to write to the device.
* IPv6 (when the router has `network6`): the same decisions on the IPv6 header
  (RFC 8200 section 3): a whole packet (40 bytes + payload length), the longest
  match on the destination (outbound) or source (inbound, the same spoofing check
  against the sender's IPv6 subnet), the hop limit decremented (no checksum), and
  for no route an ICMPv6 destination unreachable code 0 (RFC 4443 section 3.1) from
  the IPv6 network's own address, rate-limited by the same bucket. Without
  `network6` an IPv6 packet is NOT_IPV4, as before.
* Every drop increments one counter reason and returns None / -1; nothing
  raises, logs or allocates beyond Python ints per packet.
"""

from __future__ import annotations

from enum import IntEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from tunneld.proto.counters import Counters
from tunneld.proto.frames import (
    build_icmp_net_unreachable_v4,
    build_icmpv6_no_route,
    decrement_hop_limit_ipv6,
    decrement_ttl_ipv4,
)
from tunneld.proto.routing import PrefixTable

IPV4_MIN_HEADER = 20
IPV6_HEADER = 40
ICMP_ERROR_MAX = 20 + 8 + 60 + 8  # IP + ICMP headers, the quoted header and 64 bits
ICMPV6_QUOTE = 128  # bytes of the offending packet an ICMPv6 error quotes
ICMPV6_ERROR_MAX = IPV6_HEADER + 8 + ICMPV6_QUOTE
ICMP_RATE, ICMP_BURST = 10.0, 10  # errors per second, burst


class OverlayRxDrop(IntEnum):
    """Datagrams from the underlay that never reach the device."""

    UNKNOWN_SOURCE = 0  # source address is no registered host's public ip
    NOT_IPV4 = 1  # neither IPv4 nor (with an IPv6 network) IPv6
    TRUNCATED = 2  # shorter than 20 bytes, than the header length or than the total length
    TTL_EXPIRED = 3
    SOCKET_ERROR = 4
    DEVICE_ERROR = 5
    SPOOFED_SOURCE = 6  # inner source is not in a subnet the sending host leased


class OverlayTxDrop(IntEnum):
    """Packets read from the device that are not sent to any host."""

    NOT_IPV4 = 0  # neither IPv4 nor (with an IPv6 network) IPv6: e.g. IPv6 on a v4-only overlay
    TRUNCATED = 1
    NO_ROUTE = 2  # no host owns the destination, or it is this host's own subnet
    ICMP_SUPPRESSED = 3  # the NO_ROUTE packets that got no ICMP (rate limit, RFC 1122 rules)
    TTL_EXPIRED = 4
    NO_BUFFER = 5
    SEND_ERROR = 6
    DEVICE_ERROR = 7
    # proto.gso.GsoDrop, in its order (the link's segmenter counts them)
    BAD_VNET_HDR = 8
    BAD_GSO_PACKET = 9
    TOO_MANY_SEGMENTS = 10
    PACKET_TOO_BIG = 11  # larger than the path to the host (EMSGSIZE; links/pmtu.py)


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


OWN = _Marker("OWN")  # table value for this host's own subnet
SEND_ICMP = _Marker("SEND_ICMP")  # outbound result: write icmp_buf[:icmp_len] to the device


def ipv4_header_error(buf: Any, off: int, n: int) -> int:
    """0 for a whole IPv4 packet at buf[off:off+n]; else 1 (not IPv4) or 2 (truncated)."""
    if n < 1 or buf[off] >> 4 != 4:
        return 1 if n >= 1 else 2
    if n < IPV4_MIN_HEADER:
        return 2
    ihl = (buf[off] & 0x0F) * 4
    total = (buf[off + 2] << 8) | buf[off + 3]
    if ihl < IPV4_MIN_HEADER or total < ihl or total > n:
        return 2
    return 0


def ipv6_header_error(buf: Any, off: int, n: int) -> int:
    """0 for a whole IPv6 packet at buf[off:off+n] (its version nibble already checked);
    else 2 (truncated: under 40 bytes or shorter than 40 + payload length)."""
    if n < IPV6_HEADER or IPV6_HEADER + ((buf[off + 4] << 8) | buf[off + 5]) > n:
        return 2
    return 0


class OverlayRouter:
    """Forwarding decisions for one overlay interface.

    `own_subnet` is this host's lease; its network address is the device's /32.
    `network` is the whole overlay; ICMP errors come from its network address
    (or, when that is this host's own address, the next one). `counters` is
    shared with the link.
    `own_subnet6` / `network6`: this host's IPv6 subnet and the IPv6 network (flannel's
    IPv6Subnet / IPv6Network), both or neither; without them IPv6 is not carried.
    `table` and `sources` are mutated by the control plane (route changes) on
    the loop thread, between packets.
    """

    def __init__(self, own_subnet: IPv4Network, network: IPv4Network, counters: Counters,
                 icmp_rate: float = ICMP_RATE, icmp_burst: int = ICMP_BURST, *,
                 own_subnet6: IPv6Network | None = None,
                 network6: IPv6Network | None = None) -> None:  # fmt: skip
        self.counters = counters
        self.table: PrefixTable[Any] = PrefixTable()
        self.sources: dict[str, int] = {}  # public ip -> number of subnets it owns
        self.icmp_buf = bytearray(max(ICMP_ERROR_MAX, ICMPV6_ERROR_MAX))
        self.icmp_len = 0
        self._icmp_rate, self._icmp_burst = icmp_rate, float(icmp_burst)
        self._tokens, self._stamp = float(icmp_burst), float("-inf")
        self.own_subnet = own_subnet
        self.own_address = int(own_subnet.network_address)
        router = network.network_address
        if int(router) == self.own_address:
            router += 1
        self.icmp_source = router.packed
        self.table.insert(own_subnet, OWN)
        if (own_subnet6 is None) != (network6 is None):
            raise ValueError("own_subnet6 and network6 come together")
        self.own_subnet6, self.network6 = own_subnet6, network6
        self.v6 = own_subnet6 is not None
        self.icmp_source6 = b""
        if own_subnet6 is not None and network6 is not None:
            router6 = network6.network_address
            if router6 == own_subnet6.network_address:
                router6 += 1
            self.icmp_source6 = router6.packed
            self.table.insert(own_subnet6, OWN)

    # --- control plane -------------------------------------------------------------------

    def add_route(
        self, subnet: IPv4Network | IPv6Network, public_ip: str, destination: Any
    ) -> None:
        """Route `subnet` (an IPv4 or, with network6, IPv6 one) to `destination`;
        datagrams from `public_ip` are accepted."""
        if subnet in (self.own_subnet, self.own_subnet6):
            raise ValueError(f"{subnet} is this host's own subnet")
        if subnet.version == 6 and not self.v6:
            raise ValueError(f"{subnet}: this overlay carries no IPv6")
        self.remove_route(subnet)
        self.table.insert(subnet, _Route(public_ip, destination))
        self.sources[public_ip] = self.sources.get(public_ip, 0) + 1

    def remove_route(self, subnet: IPv4Network | IPv6Network) -> None:
        route = self.table.get(subnet)
        if not isinstance(route, _Route):
            return
        self.table.remove(subnet)
        left = self.sources[route.public_ip] - 1
        if left:
            self.sources[route.public_ip] = left
        else:
            del self.sources[route.public_ip]

    def routes(self, version: int = 4) -> list[tuple[Any, str]]:
        """(subnet, public ip) of the other hosts' routes of one IP version, in order."""
        kind = IPv4Network if version == 4 else IPv6Network
        found = [
            (kind(net), r.public_ip)
            for net, r in self.table.items()
            if isinstance(r, _Route) and net.version == version
        ]
        return sorted(found, key=lambda item: (item[0].network_address, item[0].prefixlen))

    # --- data plane ------------------------------------------------------------------------

    def outbound(self, buf: Any, off: int, n: int, now: float) -> Any:
        """Decide for the packet read from the device into buf[off:off+n].

        Returns the owner's destination object (TTL already decremented in
        place; send buf[off:off+n]), SEND_ICMP (write icmp_buf[:icmp_len] to the
        device), or None after counting a drop reason.
        """
        tx = self.counters.tx_dropped
        if self.v6 and n and buf[off] >> 4 == 6:
            return self._outbound6(buf, off, n, now)
        bad = ipv4_header_error(buf, off, n)
        if bad:
            tx[OverlayTxDrop.NOT_IPV4 if bad == 1 else OverlayTxDrop.TRUNCATED] += 1
            return None
        route = self.table.lookup_v4(buf, off + 16)
        if route is None or route is OWN:
            tx[OverlayTxDrop.NO_ROUTE] += 1
            if self._net_unreachable(buf, off, now):
                return SEND_ICMP
            tx[OverlayTxDrop.ICMP_SUPPRESSED] += 1
            return None
        if not decrement_ttl_ipv4(buf, off):
            tx[OverlayTxDrop.TTL_EXPIRED] += 1
            return None
        return route.destination

    def _outbound6(self, buf: Any, off: int, n: int, now: float) -> Any:
        """`outbound` for an IPv6 packet (RFC 8200; RFC 4443 section 3.1 for no route)."""
        tx = self.counters.tx_dropped
        if ipv6_header_error(buf, off, n):
            tx[OverlayTxDrop.TRUNCATED] += 1
            return None
        route = self.table.lookup_v6(buf, off + 24)
        if route is None or route is OWN:
            tx[OverlayTxDrop.NO_ROUTE] += 1
            if self._no_route6(buf, off, n, now):
                return SEND_ICMP
            tx[OverlayTxDrop.ICMP_SUPPRESSED] += 1
            return None
        if not decrement_hop_limit_ipv6(buf, off):
            tx[OverlayTxDrop.TTL_EXPIRED] += 1
            return None
        return route.destination

    def inbound(self, buf: Any, off: int, n: int, source: str) -> int:
        """Check the datagram payload buf[off:off+n] received from `source` (an IP string).

        Returns the number of bytes to write to the device from buf[off:] (the IP
        total length; TTL already decremented), or -1 after counting a drop.
        """
        rx = self.counters.rx_dropped
        if source not in self.sources:
            rx[OverlayRxDrop.UNKNOWN_SOURCE] += 1
            return -1
        if self.v6 and n and buf[off] >> 4 == 6:
            return self._inbound6(buf, off, n, source)
        bad = ipv4_header_error(buf, off, n)
        if bad:
            rx[OverlayRxDrop.NOT_IPV4 if bad == 1 else OverlayRxDrop.TRUNCATED] += 1
            return -1
        route = self.table.lookup_v4(buf, off + 12)  # the inner source's owner
        if route is None or route is OWN or route.public_ip != source:
            rx[OverlayRxDrop.SPOOFED_SOURCE] += 1
            return -1
        if not decrement_ttl_ipv4(buf, off):
            rx[OverlayRxDrop.TTL_EXPIRED] += 1
            return -1
        return int((buf[off + 2] << 8) | buf[off + 3])

    def _inbound6(self, buf: Any, off: int, n: int, source: str) -> int:
        """`inbound` for an IPv6 packet: whole, from the sender's IPv6 subnet, hop limit."""
        rx = self.counters.rx_dropped
        if ipv6_header_error(buf, off, n):
            rx[OverlayRxDrop.TRUNCATED] += 1
            return -1
        route = self.table.lookup_v6(buf, off + 8)  # the inner source's owner
        if route is None or route is OWN or route.public_ip != source:
            rx[OverlayRxDrop.SPOOFED_SOURCE] += 1
            return -1
        if not decrement_hop_limit_ipv6(buf, off):
            rx[OverlayRxDrop.TTL_EXPIRED] += 1
            return -1
        return int(IPV6_HEADER + ((buf[off + 4] << 8) | buf[off + 5]))

    # --- ICMP errors -------------------------------------------------------------------------

    def _net_unreachable(self, buf: Any, off: int, now: float) -> bool:
        """Build ICMP net-unreachable for the packet at buf[off:] into icmp_buf (RFC 792).

        False when none may be sent: RFC 1122 3.2.2's cases (see proto.frames),
        or the rate limit.
        """
        if not self._take_token(now):
            return False
        n = (buf[off + 2] << 8) | buf[off + 3]
        original = memoryview(buf)[off : off + n]  # an allocation only on this rare path
        self.icmp_len = build_icmp_net_unreachable_v4(original, self.icmp_source, self.icmp_buf)
        if self.icmp_len:
            return True
        self._tokens += 1.0  # not sent: give the token back
        return False

    def _no_route6(self, buf: Any, off: int, n: int, now: float) -> bool:
        """Build ICMPv6 no-route for the IPv6 packet at buf[off:off+n] into icmp_buf."""
        if not self._take_token(now):
            return False
        original = memoryview(buf)[off : off + n]  # rare path, as for IPv4
        self.icmp_len = build_icmpv6_no_route(
            original, self.icmp_source6, self.icmp_buf, ICMPV6_QUOTE
        )
        if self.icmp_len:
            return True
        self._tokens += 1.0
        return False

    def _take_token(self, now: float) -> bool:
        tokens = min(self._icmp_burst, self._tokens + (now - self._stamp) * self._icmp_rate)
        self._stamp = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True


class _Route:
    __slots__ = ("public_ip", "destination")

    def __init__(self, public_ip: str, destination: Any) -> None:
        self.public_ip, self.destination = public_ip, destination

    def __repr__(self) -> str:
        return f"_Route({self.public_ip!r}, {self.destination!r})"


def own_address(subnet: IPv4Network) -> IPv4Address:
    """The device's /32 (flannel: the subnet's network address)."""
    return subnet.network_address


def own_address6(subnet: IPv6Network) -> IPv6Address:
    """The device's IPv6 /128: the IPv6 subnet's first address (flannel's ConfigureV6)."""
    return subnet.network_address
