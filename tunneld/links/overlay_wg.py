"""The overlay's WireGuard transport: flannel's wireguard backend, in userspace.

Spec: the WireGuard whitepaper and wireguard.com/protocol (the sans-IO core in
tunneld/proto/wg, whose interface.py documents the calling contract), and
flannel's wireguard backend for what the overlay means by it
(flannel-io/flannel pkg/backend/wireguard: wireguard.go, wireguard_network.go,
device.go): one WireGuard device, one UDP port (ListenPort, default 51820) on
every address (of the underlay's family: IPv4, or IPv6 with an IPv6 public_ip);
every other host is a peer whose public key and port come from its lease
(BackendData {"PublicKey", "Port"}), whose endpoint is PublicIP:Port (PublicIPv6
on an IPv6 underlay) and whose allowed ips are its subnet and, dual-stack, its
IPv6 subnet (one device for both, like flannel's Mode "auto"); no persistent
keepalive, no preshared key.

Theory of operation. The overlay link keeps its router (LPM over the subnets,
TTL, ICMP, registered-source check); this transport is the router's
destination for every reachable host: `destination(host)` adds (or updates)
the host's `Peer` and returns it, so a route lookup yields the peer to encrypt
to. `prune(hosts)` removes the peers no host refers to any more. A peer's
`user_data` is its current `Host`.
* The plumbing (sockets, sealing and sending, receiving and opening, actions, the
  deadline timer) is the WireGuard port the WireGuard link uses too
  (links/wgport.py); this transport only adapts it to the overlay.
* Outbound (`send`, `send_segments`): the packet (or a prepared super-packet) is in
  the link's buffer at HEADROOM; the port seals it and sends it to the peer's
  endpoint. No session yet: the core stages the packets and asks for a handshake,
  which `flush` (once per device batch) sends.
* Inbound (`_deliver`, per packet the port opened): the core has checked the inner
  source against the sender's subnet (cryptokey routing: `_allowed_source` asks the
  router's table whether that source routes back to the same peer); `router.inbound`
  applies the overlay's own checks with the sender's registered public ip as the
  source (WireGuard authenticated it; the outer address may be a NAT's), and the
  packet goes to the device writer (coalesced without re-verifying checksums: the
  AEAD vouches for them).

Counters: the overlay's drop reasons keep their values; the core's `WgDrop`
reasons follow them, and the core counts into offset views of the same lists.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterable
from enum import IntEnum
from typing import Any

from tunneld.kernel.udp import UdpPort, open_udp_any
from tunneld.links.datapath import DeviceWriter, boottime
from tunneld.links.overlay import HEADROOM
from tunneld.links.wgport import WireguardPort, format_endpoint, peer_id
from tunneld.proto.counters import Counters, OffsetCounts
from tunneld.proto.overlay import OverlayRouter, OverlayRxDrop, OverlayTxDrop
from tunneld.proto.wg import Interface, Peer, WgDrop, encode_key
from tunneld.registry.base import Host
from tunneld.registry.flannel import wireguard_backend_data

log = logging.getLogger("tunneld.overlay")

# outer IPv4 20 + UDP 8 + WireGuard data header 16 + Poly1305 tag 16. flannel
# subtracts 80 (room for an IPv6 outer header) whatever the underlay; the default
# MTU uses the underlay's own family (links/pmtu.py: 60 for IPv4, 80 for IPv6).
OVERHEAD_V4 = 20 + 8 + 32


def _combined(name: str, first: type[IntEnum]) -> Any:
    members = [(m.name, int(m)) for m in first]
    members += [(m.name, len(first) + int(m)) for m in WgDrop]
    return IntEnum(name, members)  # type: ignore[misc]


OverlayWgRxDrop = _combined("OverlayWgRxDrop", OverlayRxDrop)
OverlayWgTxDrop = _combined("OverlayWgTxDrop", OverlayTxDrop)


class WireguardTransport:
    """The overlay transport for `encryption = "wireguard"` (see the module docstring)."""

    backend_type = "wireguard"
    overhead = OVERHEAD_V4
    pmtu_kind = "overlay-wireguard"  # links/pmtu.py: 60 / 80, the usable MTU rounded to 16
    rx_reasons, tx_reasons = OverlayWgRxDrop, OverlayWgTxDrop
    verify_inner = False  # the AEAD authenticated the packets (links/wgport.py)

    def __init__(self, cfg: Any, counters: Counters) -> None:
        self.cfg, self.counters = cfg, counters
        self.iface = Interface(
            cfg.private_key.value, rng=os.urandom, allowed_source=self._allowed_source,
            rx_dropped=OffsetCounts(counters.rx_dropped, len(OverlayRxDrop)),  # type: ignore[arg-type]
            tx_dropped=OffsetCounts(counters.tx_dropped, len(OverlayTxDrop)),  # type: ignore[arg-type]
        )  # fmt: skip
        self.public_key = self.iface.public_key
        self.port: UdpPort | None = None
        self.router: OverlayRouter | None = None
        self.writer: DeviceWriter | None = None
        self.wg: WireguardPort | None = None
        self.too_big: Any = None  # a links.pmtu.TooBig, set by the link once the device is open
        self._v6 = False  # the underlay (the port's family), set by open()

    def backend_data(self) -> dict[str, Any]:
        """This host's lease BackendData, as flannel's wireguard backend writes it."""
        return wireguard_backend_data(self.public_key, self.cfg.listen_port)

    # --- lifecycle -------------------------------------------------------------------

    def open(self, mtu: int, sock: Any = None) -> UdpPort:
        """Bind the WireGuard port on every address of the underlay's family (public_ip's:
        IPv4 or IPv6), as a WireGuard device does.

        `sock`: an already open socket, or a fake with sendto/recvfrom_into (tests; then
        without GSO/GRO)."""
        self.iface.mtu = mtu
        if sock is None:
            offload = getattr(self.cfg, "offload", False)
            family = socket.AF_INET6 if self.cfg.public_ip.version == 6 else socket.AF_INET
            self.port = UdpPort(open_udp_any(self.cfg.listen_port, family), offload,
                                offload)  # fmt: skip
        else:
            family = getattr(sock, "family", socket.AF_INET)
            self.port = UdpPort(sock)
        self._v6 = family == socket.AF_INET6
        return self.port

    def attach(self, router: OverlayRouter, writer: DeviceWriter, loop: Any) -> None:
        """Start delivering to the device writer and running the core's timers."""
        self.router, self.writer = router, writer
        reasons = {"full": OverlayTxDrop.NO_BUFFER, "unreachable": OverlayTxDrop.SEND_ERROR,
                   "send_error": OverlayTxDrop.SEND_ERROR,
                   "socket_error": OverlayRxDrop.SOCKET_ERROR}  # fmt: skip
        self.wg = WireguardPort(self.cfg.name, self.iface, loop, self.counters, reasons)
        self.wg.too_big = self.too_big
        # a segment buffer whenever the device hands over super-packets to split
        # the port picks a socket by the endpoint's shape: (ip, port) or (ip, port, 0, 0)
        sock4, sock6 = (None, self.port) if self._v6 else (self.port, None)
        self.wg.attach(sock4, sock6, self._deliver, writer, writer.vnet)
        log.info("%s: WireGuard public key %s, listening on UDP %d, %d peer(s)", self.cfg.name,
                 encode_key(self.public_key), self.cfg.listen_port,
                 len(self.iface.peers))  # fmt: skip
        self.flush(boottime())

    def close(self) -> None:
        if self.wg is not None:
            self.wg.close()  # wipes the session keys, closes the UDP port
            self.wg = None
        else:
            for peer in self.iface.peers:
                self.iface.remove_peer(peer.public_key)
            if self.port is not None:
                self.port.close()
        self.port = None
        self.router, self.writer = None, None

    # --- peers (control plane) ---------------------------------------------------------

    def endpoint_of(self, host: Host) -> tuple[Any, ...]:
        """The socket address recvfrom reports for the host: (ip, port), or (ip, port, 0, 0)
        on an IPv6 underlay (links/wgport.py tells the families apart by length)."""
        port = host.port or self.cfg.listen_port
        return (host.public_ip, port, 0, 0) if ":" in host.public_ip else (host.public_ip, port)

    def destination(self, host: Host) -> Peer | None:
        """The host's peer (added, or updated keeping its sessions); None: unreachable."""
        if host.backend_type != self.backend_type or host.public_key is None:
            return None
        if host.public_key == self.public_key:
            log.warning("%s: host %s (%s) has this host's own public key; no route",
                        self.cfg.name, host.public_ip, host.subnet)  # fmt: skip
            return None
        now, endpoint = boottime(), self.endpoint_of(host)
        peer = self.iface.peer(host.public_key)
        if peer is None:
            peer = self.iface.add_peer(host.public_key, None, endpoint, None, now)
            log.info("%s: peer %s (%s) at %s", self.cfg.name, peer_id(host.public_key),
                     host.subnet, format_endpoint(endpoint))  # fmt: skip
        else:
            was: Any = peer.user_data
            if was is None or self.endpoint_of(was) != endpoint:  # else keep what roaming learned
                self.iface.update_peer(host.public_key, now, endpoint=endpoint)
        peer.user_data = host
        return peer

    def prune(self, hosts: Iterable[Host]) -> None:
        """Remove the peers whose key no current host of this backend carries; a peer
        left (several subnets under one key) points at a host still registered."""
        live = {h for h in hosts if h.backend_type == self.backend_type}
        keep = {h.public_key: h for h in live}
        for peer in self.iface.peers:
            host = keep.get(peer.public_key)
            if host is not None:
                if peer.user_data not in live:
                    peer.user_data = host
            else:
                self.iface.remove_peer(peer.public_key)
                log.info("%s: peer %s removed", self.cfg.name, peer_id(peer.public_key))

    def _allowed_source(self, peer: Peer, packet: memoryview) -> bool:
        """Cryptokey routing, inbound: the inner source (IPv4, or IPv6 when the overlay
        carries it: the host's IPv6 subnet is among its allowed ips) must route back to
        the sender."""
        router = self.router
        if router is None:
            return False
        version = packet[0] >> 4
        if version == 4:
            route = router.table.lookup_v4(packet, 12)
        elif version == 6 and router.v6 and len(packet) >= 40:
            route = router.table.lookup_v6(packet, 8)
        else:
            return False
        return getattr(route, "destination", None) is peer

    # --- data plane ----------------------------------------------------------------------

    def send(self, buf: memoryview, n: int, peer: Peer, now: float) -> int:
        """Seal the packet at buf[HEADROOM:HEADROOM+n] (buf has TAILROOM after it) and
        send it; 1 if sent, 0 if staged for a handshake or dropped (counted)."""
        return self.wg.send_packet(peer, buf, HEADROOM - 16, n, now)  # type: ignore[union-attr]

    def send_segments(self, seg: Any, peer: Peer, now: float) -> int:
        """A prepared super-packet as one sealed GSO run; datagrams sent."""
        return self.wg.send_segments(peer, seg, now)  # type: ignore[union-attr]

    def on_readable(self) -> None:
        self.wg.on_readable(self.port)  # type: ignore[union-attr,arg-type]

    def _deliver(self, peer: Peer, view: memoryview, off: int, n: int) -> None:
        host: Any = peer.user_data
        length = self.router.inbound(view, off, n, host.public_ip)  # type: ignore[union-attr]
        if length >= 0:
            self.writer.put(view, off, length)  # type: ignore[union-attr]
            c = self.counters
            c.rx_packets += 1
            c.rx_bytes += n + 32

    def flush(self, now: float) -> None:
        """After a batch: send what the core queued, re-arm the timer if needed."""
        if self.wg is not None:
            self.wg.after_batch(now)

    # --- show ------------------------------------------------------------------------------

    def show(self) -> dict[str, Any]:
        """The interface-level WireGuard fields (no secrets)."""
        return {"encryption": "wireguard", "public_key": encode_key(self.public_key),
                "listen_port": self.cfg.listen_port}  # fmt: skip

    def route_show(self, peer: Any) -> dict[str, Any]:
        """Per route: its peer's key, endpoint, latest handshake (Unix s, 0: never), bytes."""
        if not isinstance(peer, Peer):
            return {}
        endpoint = peer.endpoint
        return {
            "public_key": encode_key(peer.public_key),
            "endpoint": format_endpoint(endpoint) if endpoint else None,
            "latest_handshake": peer.latest_handshake(boottime(), time.time()),
            "rx_bytes": peer.rx_bytes,
            "tx_bytes": peer.tx_bytes,
            "handshakes": peer.handshakes,
        }
