"""The WireGuard data plane: a tun device <-> the WireGuard protocol over UDP.

Spec: the WireGuard whitepaper and wireguard.com/protocol; the protocol itself is
the sans-IO core in tunneld/proto/wg (interface.py documents its contract). This
module only moves bytes between the kernel and that core.

Hot path (DESIGN.md): the tun fd and the UDP socket(s) are readers on the loop;
each wake-up drains at most BATCH packets into one preallocated buffer per
direction. Outbound, the inner packet is read at HEADROOM (16: the transport
header), its inner destination picks the peer (cryptokey routing, longest
match), and the core seals it in place; `sendto` sends the slice. Inbound, a
datagram is received at offset 0 and decrypted in place to offset 16, which is
what goes to the tun. Nothing per packet logs, raises or builds bytes.

Time: the core's `now` is CLOCK_BOOTTIME seconds (as the kernel's WireGuard, so
a suspended host does not keep stale keys); the one DeadlineTimer runs in the
loop's clock, so a deadline is converted as loop.time() + (deadline - boot_now).
The core is asked for `next_deadline()` once per batch; the timer is re-armed
only when the earliest deadline moves earlier (an early wake-up is harmless).

Sockets: one IPv4 wildcard socket on listen_port (a random port when unset) and,
when the host has IPv6, an IPv6-only wildcard socket on the same port. Peer
endpoints are socket address tuples: (ip, port) for IPv4 and (ip, port, 0, 0)
for IPv6, as recvfrom returns them, so the core's roaming test is plain `==`.

Test-only knobs (environment, read at start and logged as a warning; never set
them in production): TUNNELD_TEST_REKEY_AFTER_TIME (seconds) shortens the
protocol's REKEY_AFTER_TIME for rekey interop tests. The cookie threshold is the
config's `handshake_load_threshold` (handshake messages per second).
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import ipaddress
import logging
import os
import socket
import time
from enum import IntEnum
from typing import Any

from tunneld.errors import SetupError
from tunneld.kernel.tun import TunDevice
from tunneld.kernel.udp import open_udp_any
from tunneld.links.base import Link
from tunneld.proto.counters import Counters
from tunneld.proto.routing import PrefixTable
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
from tunneld.runtime.deadlines import DeadlineTimer

log = logging.getLogger("tunneld.wireguard")

HEADROOM = 16  # the transport header (type, receiver, counter) goes here
TAILROOM = 32  # padding to 16 plus the Poly1305 tag
BUFFER_SIZE = 65536
BATCH = 64
BIND_ATTEMPTS = 8  # random ports tried to find one free for both IPv4 and IPv6

# The core's reasons plus the link's own (kernel seams), valued on after WgDrop so
# the counter lists can be handed to the core as they are.
_LINK_REASONS = (
    "NO_ROUTE",  # tx: no peer's allowed_ips holds the inner destination
    "NOT_IP",  # tx: the tun gave something that is not an IPv4/IPv6 packet
    "SOCKET_ERROR",  # rx: recvfrom failed (e.g. ECONNREFUSED after an ICMP)
    "DEVICE_ERROR",  # tun read or write failed (e.g. EIO while the device is down)
    "SEND_BUFFER_FULL",  # tx: ENOBUFS / EAGAIN
    "UNREACHABLE",  # tx: ENETUNREACH, EHOSTUNREACH, ECONNREFUSED, no socket of that family
    "SEND_ERROR",  # tx: any other sendto error
)
WgLinkDrop = IntEnum(  # type: ignore[misc]
    "WgLinkDrop",
    [(m.name, int(m)) for m in WgDrop]
    + [(name, len(WgDrop) + i) for i, name in enumerate(_LINK_REASONS)],
)
_SEND_ERRORS = {
    errno.ENOBUFS: WgLinkDrop.SEND_BUFFER_FULL,
    errno.EAGAIN: WgLinkDrop.SEND_BUFFER_FULL,
    errno.ENETUNREACH: WgLinkDrop.UNREACHABLE,
    errno.EHOSTUNREACH: WgLinkDrop.UNREACHABLE,
    errno.ECONNREFUSED: WgLinkDrop.UNREACHABLE,
    errno.EADDRNOTAVAIL: WgLinkDrop.UNREACHABLE,
}
_boottime = functools.partial(time.clock_gettime, time.CLOCK_BOOTTIME)
LIVE_FIELDS = ("peers", "handshake_load_threshold")  # applied by SIGHUP without a rebuild


def resolve_endpoint(host: str, port: int) -> tuple[Any, ...]:
    """A config endpoint as a socket address tuple (IPv4 preferred for DNS names)."""
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise SetupError(f"endpoint {host}:{port}: cannot resolve ({exc.strerror})") from None
        infos.sort(key=lambda i: i[0] != socket.AF_INET)
        ip = ipaddress.ip_address(infos[0][4][0].split("%")[0])
    if ip.version == 4:
        return (str(ip), port)
    return (str(ip), port, 0, 0)


def format_endpoint(endpoint: Any) -> str | None:
    if endpoint is None:
        return None
    if len(endpoint) == 2:
        return f"{endpoint[0]}:{endpoint[1]}"
    return f"[{endpoint[0]}]:{endpoint[1]}"


def _peer_id(public_key: bytes) -> str:
    return encode_key(public_key)[:8] + "…"


def _env_float(name: str) -> float | None:
    text = os.environ.get(name)
    if not text:
        return None
    log.warning("%s=%s is set: a TEST-ONLY setting, never for production", name, text)
    return float(text)


class WireguardLink(Link):
    type_name = "wireguard"

    def __init__(self, cfg: Any, loop: Any, counters: Counters | None = None) -> None:
        super().__init__(cfg, loop, counters)
        self.counters = counters or Counters(WgLinkDrop, WgLinkDrop)
        self.dev: TunDevice | None = None
        self.sock4: socket.socket | None = None
        self.sock6: socket.socket | None = None
        self.listen_port = 0
        self.mtu = cfg.mtu or 1420
        self.routes: PrefixTable[Peer] = PrefixTable()
        self.iface: Interface | None = None
        self._timer: DeadlineTimer | None = None
        self._armed: float | None = None  # the boot-clock deadline the timer is set for

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.cfg
        rekey = _env_float("TUNNELD_TEST_REKEY_AFTER_TIME")
        c = self.counters
        self.iface = Interface(
            cfg.private_key.value, rng=os.urandom, allowed_source=self._allowed_source,
            mtu=self.mtu, rx_dropped=c.rx_dropped, tx_dropped=c.tx_dropped,
            under_load_threshold=float(cfg.handshake_load_threshold),
            **({"rekey_after_time": rekey} if rekey is not None else {}),
        )  # fmt: skip
        try:
            peers = [(p, self._endpoint_of(p)) for p in cfg.peers]
            self._open_sockets(cfg.listen_port)
            self.dev = self.open_device(cfg.name, "tun")
            self.netlink.configure_link(self.dev.name, self.mtu, cfg.address)
            now = _boottime()
            for p, endpoint in peers:
                self._add_peer(p, endpoint, now)
            self._add_kernel_routes([net for p in cfg.peers for net in p.allowed_ips])
        except BaseException:
            self._close()
            raise
        self._setup_buffers()
        self._timer = DeadlineTimer(self.loop, self._on_deadline)
        self.watch(self.dev.fd, self._on_tun_readable)
        for sock in (self.sock4, self.sock6):
            if sock is not None:
                self.watch(sock.fileno(), self._on_udp_readable, sock)
        families = "IPv4 and IPv6" if self.sock6 else "IPv4"
        log.info("%s: public key %s, listening on UDP %d (%s), %d peer(s), mtu %d", self.name,
                 encode_key(self.iface.public_key), self.listen_port, families, len(cfg.peers),
                 self.mtu)  # fmt: skip
        self._after_batch(_boottime())  # persistent keepalives bring tunnels up at once

    def _open_sockets(self, port: int | None) -> None:
        for _ in range(1 if port else BIND_ATTEMPTS):
            self.sock4 = open_udp_any(port or 0, socket.AF_INET)
            self.listen_port = self.sock4.getsockname()[1]
            try:
                self.sock6 = open_udp_any(self.listen_port, socket.AF_INET6)
                return
            except SetupError as exc:
                if port is None and "in use" in str(exc):
                    self.sock4.close()
                    continue  # that random port is taken for IPv6: draw another
                log.info("%s: no IPv6 socket (%s); IPv4 only", self.cfg.name, exc)
                return
            except OSError as exc:  # EAFNOSUPPORT: IPv6 disabled
                log.info("%s: no IPv6 socket (%s); IPv4 only", self.cfg.name, exc.strerror)
                return
        raise SetupError(f"{self.cfg.name}: found no UDP port free for both IPv4 and IPv6")

    def _setup_buffers(self) -> None:
        self._tx_view = memoryview(bytearray(BUFFER_SIZE))
        self._tx_read = [self._tx_view[HEADROOM : BUFFER_SIZE - TAILROOM]]  # reused readv arg
        self._rx_buf = bytearray(BUFFER_SIZE)
        self._rx_view = memoryview(self._rx_buf)
        self._rx_out = self._rx_view[HEADROOM:]  # decrypt in place, after the header

    async def stop(self) -> None:
        self._close()

    def _close(self) -> None:
        self.unwatch_all()
        if self._timer is not None:
            self._timer.cancel()
        if self.iface is not None:
            for peer in self.iface.peers:  # wipes the session keys
                self.iface.remove_peer(peer.public_key)
        for sock in (self.sock4, self.sock6):
            if sock is not None:
                sock.close()
        self.sock4 = self.sock6 = None
        if self.dev is not None:
            self.dev.close()  # closing the last fd removes the tun and its routes
            self.dev = None

    # --- peers and routes (control plane) ------------------------------------------

    def _endpoint_of(self, p: Any) -> tuple[Any, ...] | None:
        return None if p.endpoint is None else resolve_endpoint(*p.endpoint)

    def _add_peer(self, p: Any, endpoint: Any, now: float) -> None:
        assert self.iface is not None
        psk = p.preshared_key.value if p.preshared_key is not None else None
        peer = self.iface.add_peer(p.public_key, psk, endpoint, p.persistent_keepalive, now)
        peer.user_data = p.allowed_ips
        for net in p.allowed_ips:
            self.routes.insert(net, peer)

    def _add_kernel_routes(self, nets: list[Any]) -> None:
        for net in nets:
            if net.prefixlen == 0:
                log.warning("%s: routing all of %s through the tunnel (allowed_ips %s); the "
                            "peer endpoints must stay reachable outside it", self.name,
                            "IPv4" if net.version == 4 else "IPv6", net)  # fmt: skip
        if nets and self.dev is not None:
            self.netlink.add_routes(self.dev.name, nets)

    def _allowed_source(self, peer: Peer, packet: memoryview) -> bool:
        """Cryptokey routing, inbound: the inner source must route back to the sender."""
        if packet[0] >> 4 == 4:
            return self.routes.lookup_v4(packet, 12) is peer
        return self.routes.lookup_v6(packet, 8) is peer

    def reload(self, cfg: Any) -> bool:
        """Peers are added, removed and updated live (sessions kept); False otherwise."""
        same = {f: getattr(cfg, f) for f in LIVE_FIELDS}
        if dataclasses.replace(self.cfg, **same) != cfg or self.iface is None:
            return False
        old = {p.public_key: p for p in self.cfg.peers}
        new = {p.public_key: p for p in cfg.peers}
        now, iface = _boottime(), self.iface
        iface.under_load_threshold = float(cfg.handshake_load_threshold)
        for key in old.keys() - new.keys():
            iface.remove_peer(key)
            log.info("%s: peer %s removed", self.name, _peer_id(key))
        for key, p in new.items():
            if key not in old:
                self._add_peer(p, self._reload_endpoint(p, None), now)
                log.info("%s: peer %s added", self.name, _peer_id(key))
            elif p != old[key]:
                self._update_peer(old[key], p, now)
        self._reroute(old.values(), cfg.peers)
        self.cfg = cfg
        self._after_batch(now)
        return True

    def _reload_endpoint(self, p: Any, fallback: Any) -> Any:
        try:
            return self._endpoint_of(p)
        except SetupError as exc:
            log.error("%s: %s; endpoint left unchanged", self.name, exc)
            return fallback

    def _update_peer(self, was: Any, p: Any, now: float) -> None:
        assert self.iface is not None
        changes: dict[str, Any] = {}
        if p.preshared_key != was.preshared_key:
            changes["preshared_key"] = p.preshared_key.value if p.preshared_key else None
        if p.endpoint != was.endpoint:  # else keep what roaming learned
            peer = self.iface.peer(p.public_key)
            changes["endpoint"] = self._reload_endpoint(p, peer.endpoint if peer else None)
        if p.persistent_keepalive != was.persistent_keepalive:
            changes["persistent_keepalive"] = p.persistent_keepalive
        peer = self.iface.update_peer(p.public_key, now, **changes)
        peer.user_data = p.allowed_ips
        log.info("%s: peer %s updated", self.name, _peer_id(p.public_key))

    def _reroute(self, old_peers: Any, new_peers: Any) -> None:
        assert self.iface is not None
        before = {net for p in old_peers for net in p.allowed_ips}
        after = {net for p in new_peers for net in p.allowed_ips}
        self.routes.clear()
        for p in new_peers:
            peer = self.iface.peer(p.public_key)
            for net in p.allowed_ips:
                self.routes.insert(net, peer)
        if self.dev is not None and before - after:
            self.netlink.remove_routes(self.dev.name, sorted(before - after, key=str))
        self._add_kernel_routes(sorted(after - before, key=str))

    # --- data plane ----------------------------------------------------------------

    def _on_tun_readable(self) -> None:
        now, readv, view, into = _boottime(), os.readv, self._tx_view, self._tx_read
        fd, encrypt = self.dev.fd, self.iface.encrypt  # type: ignore[union-attr]
        route4, route6 = self.routes.lookup_v4, self.routes.lookup_v6
        sock4, sock6, c = self.sock4, self.sock6, self.counters
        drops = c.tx_dropped
        for _ in range(BATCH):
            try:
                n = readv(fd, into)
            except BlockingIOError:
                break
            except OSError:
                drops[WgLinkDrop.DEVICE_ERROR] += 1
                break
            version = view[HEADROOM] >> 4
            if version == 4 and n >= 20:
                peer = route4(view, HEADROOM + 16)
            elif version == 6 and n >= 40:
                peer = route6(view, HEADROOM + 24)
            else:
                drops[WgLinkDrop.NOT_IP] += 1
                continue
            if peer is None:
                drops[WgLinkDrop.NO_ROUTE] += 1
                continue
            m = encrypt(peer, view, 0, n, now)
            if not m:
                continue  # staged for a handshake, or no endpoint (counted by the core)
            endpoint = peer.endpoint
            sock = sock4 if len(endpoint) == 2 else sock6
            try:
                sock.sendto(view[:m], endpoint)  # type: ignore[union-attr]
            except OSError as exc:
                drops[_SEND_ERRORS.get(exc.errno, WgLinkDrop.SEND_ERROR)] += 1
                continue
            except AttributeError:  # an IPv6 endpoint and no IPv6 socket
                drops[WgLinkDrop.UNREACHABLE] += 1
                continue
            c.tx_packets += 1
            c.tx_bytes += m
        self._after_batch(now)

    def _on_udp_readable(self, sock: socket.socket) -> None:
        now, recv, buf, view = _boottime(), sock.recvfrom_into, self._rx_buf, self._rx_view
        out = self._rx_out
        receive, fd = self.iface.receive, self.dev.fd  # type: ignore[union-attr]
        write, c = os.write, self.counters
        for _ in range(BATCH):
            try:
                n, addr = recv(buf)
            except BlockingIOError:
                break
            except OSError:  # ECONNREFUSED and friends: survive, keep draining
                c.rx_dropped[WgLinkDrop.SOCKET_ERROR] += 1
                continue
            m = receive(view[:n], addr, now, out)
            if m < 0:
                continue  # handshake message, or a drop the core counted
            c.rx_packets += 1
            c.rx_bytes += n
            if m == 0:
                continue  # keepalive
            try:
                write(fd, out[:m])
            except OSError:  # EIO while the device is down
                c.rx_dropped[WgLinkDrop.DEVICE_ERROR] += 1
        self._after_batch(now)

    # --- control plane: actions and the deadline -----------------------------------

    def _after_batch(self, now: float) -> None:
        iface = self.iface
        if iface.actions_pending:  # type: ignore[union-attr]
            self._perform(iface.take_actions(now, time.time()))  # type: ignore[union-attr]
        deadline = iface.next_deadline()  # type: ignore[union-attr]
        if deadline is None or (self._armed is not None and self._armed <= deadline):
            return
        if self._timer is None:
            return
        self._armed = deadline
        self._timer.arm(self.loop.time() + max(0.0, deadline - now))

    def _on_deadline(self, _loop_now: float) -> None:
        self._armed = None
        if self.iface is None or self.dev is None:
            return
        now = _boottime()
        self._perform(self.iface.on_deadline(now, time.time()))
        self._after_batch(now)

    def _perform(self, actions: list[Any]) -> None:
        for action in actions:
            if type(action) is SendDatagram:
                self._send_control(action.data, action.endpoint)
            elif type(action) is KeypairInstalled:
                log.info("%s: peer %s: handshake complete (%s)", self.name,
                         _peer_id(action.public_key),
                         "we initiated" if action.initiator else "peer initiated")  # fmt: skip
            elif type(action) is EndpointChanged:
                log.info("%s: peer %s: endpoint now %s", self.name,
                         _peer_id(action.public_key), format_endpoint(action.endpoint))  # fmt: skip
            elif type(action) is HandshakeGaveUp:
                log.info("%s: peer %s: no handshake response; giving up until there is "
                         "traffic for it", self.name, _peer_id(action.public_key))  # fmt: skip
            elif type(action) is KeysZeroed:
                log.info("%s: peer %s: keys erased after 3 x REJECT_AFTER_TIME unused",
                         self.name, _peer_id(action.public_key))  # fmt: skip

    def _send_control(self, data: bytes, endpoint: Any) -> None:
        sock = self.sock4 if len(endpoint) == 2 else self.sock6
        c = self.counters
        if sock is None:
            c.tx_dropped[WgLinkDrop.UNREACHABLE] += 1
            return
        try:
            sock.sendto(data, endpoint)
        except OSError as exc:
            c.tx_dropped[_SEND_ERRORS.get(exc.errno, WgLinkDrop.SEND_ERROR)] += 1
            return
        c.tx_packets += 1
        c.tx_bytes += len(data)

    # --- show ----------------------------------------------------------------------

    def show(self) -> dict[str, Any]:
        now, wall, iface = _boottime(), time.time(), self.iface
        peers = []
        for peer in iface.peers if iface is not None else []:
            entry = peer.show(now, wall)
            entry["endpoint"] = format_endpoint(peer.endpoint)
            nets: Any = peer.user_data or ()
            entry["allowed_ips"] = [str(net) for net in nets]
            peers.append(entry)
        return {
            "type": "wireguard",
            "public_key": encode_key(iface.public_key) if iface is not None else None,
            "listen_port": self.listen_port,
            "mtu": self.mtu,
            "address": [str(a) for a in self.cfg.address],
            "peers": peers,
            "counters": self.counters.as_dict(),
        }
