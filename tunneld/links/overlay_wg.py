"""The overlay's WireGuard transport: flannel's wireguard backend, in userspace.

Spec: the WireGuard whitepaper and wireguard.com/protocol (the sans-IO core in
tunneld/proto/wg, whose interface.py documents the calling contract), and
flannel's wireguard backend for what the overlay means by it
(flannel-io/flannel pkg/backend/wireguard: wireguard.go, wireguard_network.go,
device.go): one WireGuard device, one UDP port (ListenPort, default 51820) on
every address; every other host is a peer whose public key and port come from
its lease (BackendData {"PublicKey", "Port"}), whose endpoint is PublicIP:Port
and whose allowed ips are its subnet; no persistent keepalive, no preshared key.

Theory of operation. The overlay link keeps its router (LPM over the subnets,
TTL, ICMP, registered-source check); this transport is the router's
destination for every reachable host: `destination(host)` adds (or updates)
the host's `Peer` and returns it, so a route lookup yields the peer to encrypt
to. `prune(hosts)` removes the peers no host refers to any more. A peer's
`user_data` is its current `Host`.
* Outbound (`send`): the packet is in the link's buffer at HEADROOM; the core
  seals it in place and the datagram goes to the peer's endpoint. No session
  yet: the core stages the packet and asks for a handshake, which `flush`
  (once per device batch) sends.
* Inbound (`on_readable`): a datagram is decrypted in place to offset 16; the
  core checks the inner source against the sender's subnet (cryptokey routing:
  `_allowed_source` asks the router's table whether that source routes back to
  the same peer), then `router.inbound` applies the overlay's own checks with
  the sender's registered public ip as the source (WireGuard authenticated it;
  the outer address may be a NAT's), and the packet goes to the device.
* Time: CLOCK_BOOTTIME seconds (`links.overlay.boottime`), one DeadlineTimer in
  the loop's clock for the core's `next_deadline()`, re-armed after each batch
  only when the earliest deadline moved earlier (a spurious wake-up is harmless).

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

from tunneld.kernel.udp import open_udp_any
from tunneld.links.overlay import BATCH, BUFFER_SIZE, HEADROOM, _send_drop, boottime
from tunneld.proto.counters import Counters
from tunneld.proto.overlay import OverlayRouter, OverlayRxDrop, OverlayTxDrop
from tunneld.proto.wg import (
    EndpointChanged,
    HandshakeGaveUp,
    Interface,
    KeypairInstalled,
    KeysZeroed,
    Peer,
    SendDatagram,
    WgDrop,
    encode_key,
)
from tunneld.registry.base import Host
from tunneld.registry.flannel import wireguard_backend_data
from tunneld.runtime.deadlines import DeadlineTimer

log = logging.getLogger("tunneld.overlay")

# outer IPv4 20 + UDP 8 + WireGuard data header 16 + Poly1305 tag 16. flannel
# subtracts 80 (room for an IPv6 outer header) whatever the underlay; the
# overlay's underlay is IPv4 only, so 60 is exact (padding stops at the MTU).
OVERHEAD_V4 = 20 + 8 + 32


def _combined(name: str, first: type[IntEnum]) -> Any:
    members = [(m.name, int(m)) for m in first]
    members += [(m.name, len(first) + int(m)) for m in WgDrop]
    return IntEnum(name, members)  # type: ignore[misc]


OverlayWgRxDrop = _combined("OverlayWgRxDrop", OverlayRxDrop)
OverlayWgTxDrop = _combined("OverlayWgTxDrop", OverlayTxDrop)


class OffsetCounts:
    """A list-like view of counts[offset:], so the core's WgDrop indices land after
    the overlay's reasons. Used only on drop paths (two calls per drop)."""

    __slots__ = ("counts", "offset")

    def __init__(self, counts: list[int], offset: int) -> None:
        self.counts, self.offset = counts, offset

    def __getitem__(self, index: int) -> int:
        return self.counts[self.offset + index]

    def __setitem__(self, index: int, value: int) -> None:
        self.counts[self.offset + index] = value

    def __len__(self) -> int:
        return len(self.counts) - self.offset


class WireguardTransport:
    """The overlay transport for `encryption = "wireguard"` (see the module docstring)."""

    backend_type = "wireguard"
    overhead = OVERHEAD_V4
    rx_reasons, tx_reasons = OverlayWgRxDrop, OverlayWgTxDrop

    def __init__(self, cfg: Any, counters: Counters) -> None:
        self.cfg, self.counters = cfg, counters
        self.iface = Interface(
            cfg.private_key.value, rng=os.urandom, allowed_source=self._allowed_source,
            rx_dropped=OffsetCounts(counters.rx_dropped, len(OverlayRxDrop)),  # type: ignore[arg-type]
            tx_dropped=OffsetCounts(counters.tx_dropped, len(OverlayTxDrop)),  # type: ignore[arg-type]
        )  # fmt: skip
        self.public_key = self.iface.public_key
        self.sock: socket.socket | None = None
        self.router: OverlayRouter | None = None
        self.dev_fd = -1
        self.loop: Any = None
        self._timer: DeadlineTimer | None = None
        self._armed: float | None = None  # the boot-clock deadline the timer is set for

    def backend_data(self) -> dict[str, Any]:
        """This host's lease BackendData, as flannel's wireguard backend writes it."""
        return wireguard_backend_data(self.public_key, self.cfg.listen_port)

    # --- lifecycle -------------------------------------------------------------------

    def open(self, mtu: int, sock: Any = None) -> socket.socket:
        """Bind the WireGuard port on every IPv4 address (as a WireGuard device does).

        `sock`: an already open socket, or a fake with sendto/recvfrom_into (tests)."""
        self.iface.mtu = mtu
        self.sock = sock if sock is not None else open_udp_any(self.cfg.listen_port, socket.AF_INET)
        self._rx_buf = bytearray(BUFFER_SIZE)
        self._rx_view = memoryview(self._rx_buf)
        self._rx_out = self._rx_view[HEADROOM:]  # decrypt in place, after the header
        return self.sock

    def attach(self, router: OverlayRouter, dev_fd: int, loop: Any) -> None:
        """Start delivering to the device and running the core's timers."""
        self.router, self.dev_fd, self.loop = router, dev_fd, loop
        self._timer = DeadlineTimer(loop, self._on_deadline)
        log.info("%s: WireGuard public key %s, listening on UDP %d, %d peer(s)", self.cfg.name,
                 encode_key(self.public_key), self.cfg.listen_port,
                 len(self.iface.peers))  # fmt: skip
        self.flush(boottime())

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for peer in self.iface.peers:  # wipes the session keys
            self.iface.remove_peer(peer.public_key)
        self.router, self.dev_fd = None, -1
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    # --- peers (control plane) ---------------------------------------------------------

    def endpoint_of(self, host: Host) -> tuple[str, int]:
        return (host.public_ip, host.port or self.cfg.listen_port)

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
            log.info("%s: peer %s (%s) at %s:%d", self.cfg.name, _peer_id(host.public_key),
                     host.subnet, *endpoint)  # fmt: skip
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
                log.info("%s: peer %s removed", self.cfg.name, _peer_id(peer.public_key))

    def _allowed_source(self, peer: Peer, packet: memoryview) -> bool:
        """Cryptokey routing, inbound: the inner IPv4 source must route back to the sender."""
        if packet[0] >> 4 != 4 or self.router is None:
            return False
        route = self.router.table.lookup_v4(packet, 12)
        return getattr(route, "destination", None) is peer

    # --- data plane ----------------------------------------------------------------------

    def send(self, buf: memoryview, n: int, peer: Peer, now: float) -> int:
        """Seal the packet at buf[HEADROOM:HEADROOM+n] (buf has TAILROOM after it) and
        send it; 1 if sent, 0 if staged for a handshake or dropped (counted)."""
        m = self.iface.encrypt(peer, buf, HEADROOM - 16, n, now)
        if not m:
            return 0
        try:
            self.sock.sendto(buf[HEADROOM - 16 : HEADROOM - 16 + m], peer.endpoint)  # type: ignore[union-attr,arg-type]
        except OSError as exc:
            self.counters.tx_dropped[_send_drop(exc)] += 1
            return 0
        self.counters.tx_bytes += m
        return 1

    def on_readable(self) -> None:
        now, recv = boottime(), self.sock.recvfrom_into  # type: ignore[union-attr]
        buf, view, out = self._rx_buf, self._rx_view, self._rx_out
        iface, inbound, write, fd = self.iface, self.router.inbound, os.write, self.dev_fd  # type: ignore[union-attr]
        receive, c = iface.receive, self.counters
        for _ in range(BATCH):
            try:
                n, addr = recv(buf)
            except BlockingIOError:
                break
            except OSError:  # ECONNREFUSED and friends: survive, keep draining
                c.rx_dropped[OverlayRxDrop.SOCKET_ERROR] += 1
                continue
            m = receive(view[:n], addr, now, out)
            if m <= 0:
                continue  # handshake, keepalive, or a drop the core counted
            length = inbound(buf, HEADROOM, m, iface.rx_peer.user_data.public_ip)  # type: ignore[union-attr]
            if length < 0:
                continue
            try:
                write(fd, out[:length])
            except OSError:  # EIO while the device is down
                c.rx_dropped[OverlayRxDrop.DEVICE_ERROR] += 1
                continue
            c.rx_packets += 1
            c.rx_bytes += n
        self.flush(now)

    # --- control plane: actions and the deadline -----------------------------------------

    def flush(self, now: float) -> None:
        """After a batch: send what the core queued, re-arm the timer if needed."""
        iface = self.iface
        if iface.actions_pending:
            self._perform(iface.take_actions(now, time.time()))
        deadline = iface.next_deadline()
        if deadline is None or self._timer is None:
            return
        if self._armed is not None and self._armed <= deadline:
            return
        self._armed = deadline
        self._timer.arm(self.loop.time() + max(0.0, deadline - now))

    def _on_deadline(self, _loop_now: float) -> None:
        self._armed = None
        if self.sock is None:
            return
        now = boottime()
        self._perform(self.iface.on_deadline(now, time.time()))
        self.flush(now)

    def _perform(self, actions: list[Any]) -> None:
        name = self.cfg.name
        for action in actions:
            kind = type(action)
            if kind is SendDatagram:
                self._send_control(action.data, action.endpoint)
            elif kind is KeypairInstalled:
                log.info("%s: peer %s: handshake complete (%s)", name, _peer_id(action.public_key),
                         "we initiated" if action.initiator else "peer initiated")  # fmt: skip
            elif kind is EndpointChanged:
                log.info("%s: peer %s: endpoint now %s:%d", name, _peer_id(action.public_key),
                         *action.endpoint)  # fmt: skip
            elif kind is HandshakeGaveUp:
                log.info("%s: peer %s: no handshake response; giving up until there is traffic "
                         "for it", name, _peer_id(action.public_key))  # fmt: skip
            elif kind is KeysZeroed:
                log.info("%s: peer %s: keys erased after 3 x REJECT_AFTER_TIME unused", name,
                         _peer_id(action.public_key))  # fmt: skip

    def _send_control(self, data: bytes, endpoint: Any) -> None:
        c = self.counters
        try:
            self.sock.sendto(data, endpoint)  # type: ignore[union-attr]
        except OSError as exc:
            c.tx_dropped[_send_drop(exc)] += 1
            return
        except AttributeError:  # closed meanwhile
            c.tx_dropped[OverlayTxDrop.SEND_ERROR] += 1
            return
        c.tx_packets += 1
        c.tx_bytes += len(data)

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
            "endpoint": f"{endpoint[0]}:{endpoint[1]}" if endpoint else None,  # type: ignore[index]
            "latest_handshake": peer.latest_handshake(boottime(), time.time()),
            "rx_bytes": peer.rx_bytes,
            "tx_bytes": peer.tx_bytes,
        }


def _peer_id(public_key: bytes) -> str:
    return encode_key(public_key)[:8] + "…"
