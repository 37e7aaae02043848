"""Path MTU at the tunnel's edge: default MTUs per family, ICMP errors into the device.

Default MTU (`mtu` unset): the underlay's MTU minus the exact overhead for the underlay's
family (`OVERHEAD`): WireGuard 60 / 80 (outer IPv4 or IPv6 + UDP 8 + data header 16 + tag
16), the plain overlay 28 / 48, VXLAN 50 / 70 (the tap MTU is the inner L3 MTU, so the
inner Ethernet header counts too). WireGuard follows wg-quick's `set_mtu_up`: the largest
route MTU towards the peer endpoints (the default route's when there are none, else 1500);
wg-quick subtracts 80 whatever the family, tunneld 80 only when an endpoint is IPv6 (or none
is known) and 60 when all are IPv4.

Theory of operation (the exception path; the data path never calls in here unless a send
failed). The outer sockets set DF (kernel/udp.py). A datagram larger than the path MTU the
kernel knows (the route's, or one an ICMP frag-needed / Packet Too Big from a router on the
path taught it) fails with EMSGSIZE, also after a GSO send fell back to one datagram at a
time. The link then calls `TooBig.reply` with the inner packet (or the first segment of a
super-packet; WireGuard recovers it from the sealed datagram, `Interface.unseal_sent`):
1. counts the drop (the owner's PACKET_TOO_BIG reason);
2. takes a token from a per-inner-source bucket (20 per second, burst 10): an oversized flood
   costs one counter increment per packet, not an ICMP and a probe each;
3. asks the kernel for the path MTU to the outer destination (`kernel.udp.path_mtu`, a
   connected probe socket) and computes the usable inner MTU: path - overhead, rounded down
   to a multiple of 16 for WireGuard (its padding: a 1300-byte path leaves 1232, not 1240,
   or packets of 1233..1240 bytes would be padded past the path);
4. writes ICMP fragmentation-needed (IPv4 with DF) or ICMPv6 Packet Too Big (proto/frames.py)
   carrying that MTU into the device, sourced from the original destination (as a router
   beyond the tunnel would: the host's own tunnel address as the source is a martian to its
   kernel), in an Ethernet frame with the MACs swapped on a tap.
IPv4 without DF: dropped and counted, no ICMP (RFC 1191 sends frag-needed only for DF; tunneld
does not fragment inner packets). Modern senders set DF (Linux does by default).
"""

from __future__ import annotations

import errno
import ipaddress
from typing import Any

from tunneld.kernel.udp import path_mtu
from tunneld.proto import frames
from tunneld.proto.gso import VNET_HDR_LEN
from tunneld.proto.wg.ratelimit import TokenBucket

EMSGSIZE = errno.EMSGSIZE
# Outer headers per underlay family (4 / 6), as each type's device MTU must leave room for.
OVERHEAD = {
    "wireguard": {4: 20 + 8 + 32, 6: 40 + 8 + 32},
    "overlay": {4: 20 + 8, 6: 40 + 8},
    "overlay-wireguard": {4: 20 + 8 + 32, 6: 40 + 8 + 32},
    "vxlan": {4: 20 + 8 + 8 + 14, 6: 40 + 8 + 8 + 14},
}
DEFAULT_UNDERLAY_MTU = 1500
ICMP_RATE, ICMP_BURST = 20.0, 10  # per inner source, per interface
MAX_PATHS_SHOWN = 32
_ETH_IPV4, _ETH_IPV6 = b"\x08\x00", b"\x86\xdd"


def overhead(kind: str, family: int) -> int:
    return OVERHEAD[kind][family]


def default_mtu(kind: str, underlay: int | None, family: int) -> int:
    """The device MTU for an underlay MTU (None: unknown, 1500) of `family` (4 or 6)."""
    return (underlay or DEFAULT_UNDERLAY_MTU) - OVERHEAD[kind][family]


def usable_mtu(kind: str, path: int, family: int) -> int:
    """The largest inner packet that fits a path MTU of `path` to a peer of `family`."""
    usable = path - OVERHEAD[kind][family]
    return usable & ~15 if kind in ("wireguard", "overlay-wireguard") else usable


def wireguard_default_mtu(endpoints: list[str], netlink: Any) -> tuple[int, str]:
    """wg-quick's set_mtu_up for the endpoints' hosts (IP addresses; names are skipped):
    (mtu, a line saying how it was found, for the log and check-config)."""
    best, via = 0, ""
    for host in endpoints:
        mtu = netlink.route_mtu(host)
        if mtu is not None and mtu > best:
            best, via = mtu, f"route to {host}"
    if not best:
        best, via = (netlink.route_mtu(None) or 0), "default route"
    if not best:
        best, via = DEFAULT_UNDERLAY_MTU, "no route: 1500"
    family = 6 if not endpoints or any(":" in h for h in endpoints) else 4
    over = OVERHEAD["wireguard"][family]
    return best - over, f"{best} ({via}) - {over} (IPv{family} underlay)"


class TooBig:
    """ICMP errors for packets too big for the path (see the module docstring).

    `dev`: the link's device (write, writev, vnet_hdr); `l2_len`: 14 on a tap, else 0;
    `kind`: a key of OVERHEAD; `drops[reason]` counts every packet dropped for its size;
    `source`: the address the link's sockets are bound to (None for a wildcard)."""

    def __init__(self, dev: Any, l2_len: int, kind: str, drops: Any, reason: int,
                 source: str | None = None) -> None:  # fmt: skip
        self.dev, self.l2, self.kind, self.source = dev, l2_len, kind, source
        self.drops, self.reason = drops, reason
        self.icmp_sent = 0
        self.icmp_suppressed = 0  # errors the per-source limit held back
        self.paths: dict[str, int] = {}  # outer destination -> last path MTU learned
        self._bucket = TokenBucket(ICMP_RATE, ICMP_BURST)
        self._out = memoryview(bytearray(VNET_HDR_LEN + 14 + frames.IPV6_MIN_MTU))
        self.probe = path_mtu  # a kernel seam: tests may replace it

    def reply(self, buf: Any, off: int, n: int, addr: Any, now: float, count: int = 1) -> None:
        """`count` packets to the outer `addr` failed with EMSGSIZE; the first is at
        buf[off:off+n] (an Ethernet frame on a tap, else an IP packet)."""
        self.drops[self.reason] += count
        l2, pkt = self.l2, off + self.l2
        if n - l2 < frames.IPV4_HLEN:
            return
        src = buf[pkt + 12 : pkt + 16] if buf[pkt] >> 4 == 4 else buf[pkt + 8 : pkt + 24]
        if not self._bucket.allow(bytes(src), now):
            self.icmp_suppressed += 1
            return
        path = self.probe(addr, self.source)
        if path is None:
            return
        family = 6 if len(addr) == 4 or ":" in str(addr[0]) else 4
        mtu = usable_mtu(self.kind, path, family)
        if len(self.paths) >= MAX_PATHS_SHOWN:
            self.paths.clear()
        self.paths[str(addr[0])] = path
        if mtu <= 0 or n - l2 <= mtu:
            return  # not about this packet's size (the path grew again): nothing to say
        self._write(buf, pkt, n - l2, mtu)

    def _write(self, buf: Any, pkt: int, n: int, mtu: int) -> None:
        out, head = self._out, VNET_HDR_LEN + 14
        version = buf[pkt] >> 4
        original = buf[pkt : pkt + n]
        if version == 4:
            length = frames.build_frag_needed_v4(original, out[head:], max(mtu, 68))
        elif version == 6:
            length = frames.build_packet_too_big_v6(original, out[head:], mtu)
        else:
            return
        if not length:
            return  # IPv4 without DF, an ICMP error, a bad source: counted, not answered
        start = head
        if self.l2:  # swap the MACs: from the original destination to its source
            start -= 14
            out[start : start + 6] = buf[pkt - 8 : pkt - 2]
            out[start + 6 : start + 12] = buf[pkt - 14 : pkt - 8]
            out[start + 12 : head] = _ETH_IPV4 if version == 4 else _ETH_IPV6
        if self.dev.vnet_hdr:
            start -= VNET_HDR_LEN
            out[start : start + VNET_HDR_LEN] = bytes(VNET_HDR_LEN)
        try:
            self.dev.write(out[start : head + length])
        except OSError:  # EIO while the device is down: the drop is counted already
            return
        self.icmp_sent += 1

    def show(self) -> dict[str, Any]:
        return {"icmp_too_big_sent": self.icmp_sent,
                "icmp_too_big_suppressed": self.icmp_suppressed,
                "path_mtu": dict(self.paths)}  # fmt: skip


# --- TCP MSS clamping (`mss_clamp`) --------------------------------------------------------
#
# Per-packet cost: none when off (the links bind the plain functions). When on, the links
# wrap two seams once at start: the send of one in-place packet (after the segmenter has
# completed a NEEDS_CSUM checksum: SYNs are never super-packets) and the device writer's
# `put` (inbound, every type), so SYN and SYN-ACK are clamped in both directions.


def mss_limits(setting: bool | int, mtu: int) -> tuple[int, int] | None:
    """(IPv4 MSS, IPv6 MSS) for a config's `mss_clamp` on a device of `mtu` (None: off):
    true derives them from the MTU (minus 40 / 60: IP and TCP headers), a number is the
    MSS for both families."""
    if setting is True:
        return (mtu - 40, mtu - 60)
    if setting is False or not setting:
        return None
    return (int(setting), int(setting))


def clamping_put(put: Any, l2_len: int, limits: tuple[int, int]) -> Any:
    """A DeviceWriter.put(buf, off, n) that clamps a SYN's MSS first (`l2_len` 14: Ethernet
    frames, IPv4/IPv6 ethertypes only)."""
    clamp, mss4, mss6 = frames.clamp_mss, limits[0], limits[1]
    if not l2_len:

        def put_ip(buf: Any, off: int, n: int) -> None:
            clamp(buf, off, n, mss4, mss6)
            put(buf, off, n)

        return put_ip

    def put_frame(buf: Any, off: int, n: int) -> None:
        if n > 14 and buf[off + 12] in (0x08, 0x86):
            clamp(buf, off + 14, n - 14, mss4, mss6)
        put(buf, off, n)

    return put_frame


def describe_default_mtu(cfg: Any, netlink: Any) -> str:
    """`check-config`'s line for an interface whose `mtu` is unset: the value the daemon
    would set on this host and how it is found (names in endpoints are not resolved)."""
    if cfg.type == "wireguard":
        hosts = [host for host, _ in (p.endpoint for p in cfg.peers if p.endpoint)]
        mtu, how = wireguard_default_mtu([h for h in hosts if _is_ip(h)], netlink)
    else:
        mtu, how = underlay_default_mtu(cfg, netlink)
    return f"{mtu} = {how}"


def underlay_default_mtu(cfg: Any, netlink: Any) -> tuple[int, str]:
    """A VXLAN or overlay interface's default MTU: the MTU of the device holding its
    underlay address (`local` / `public_ip`) minus the family's overhead; (mtu, how)."""
    if cfg.type == "vxlan":
        kind, address = "vxlan", cfg.local
    else:
        kind = "overlay" if cfg.encryption == "none" else "overlay-wireguard"
        address = cfg.public_ip
    underlay = netlink.link_mtu_for_address(str(address))
    where = f"device with {address}" if underlay else f"no device has {address} here: 1500"
    over = OVERHEAD[kind][address.version]
    how = f"{underlay or DEFAULT_UNDERLAY_MTU} ({where}) - {over} (IPv{address.version} underlay)"
    return default_mtu(kind, underlay, address.version), how


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return False
    return True
