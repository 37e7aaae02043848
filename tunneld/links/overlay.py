"""The flannel-style host overlay: a tun device <-> one subnet per host over UDP.

Three parts, kept apart so an encrypted transport can replace the plain one:
* the registry (`tunneld.registry`): this host's subnet and the other hosts,
  from the config file or etcd, with live change callbacks;
* the router (`tunneld.proto.overlay.OverlayRouter`): LPM route table, TTL,
  ICMP net-unreachable and the registered-source check, sans-IO;
* the transport: `PlainTransport`, flannel's UDP backend (the raw IPv4
  packet is the UDP payload, one port on every host), or, with
  `encryption = "wireguard"`, `links.overlay_wg.WireguardTransport`. A
  transport maps a registry `Host` to a destination object the router hands
  back per packet (`destination`, `prune`), sends packets the router accepted
  (`send`, then `flush` once per batch), and owns its socket's receive path,
  which hands payloads to `router.inbound` and writes them to the device.

Like flannel, the device gets its subnet's network address as a /32 and one
route for the whole network. Hot path as in links/vxlan.py: readers on the loop,
a bounded drain per wake-up into preallocated buffers, packets read at HEADROOM
(room for a transport header), no per-packet logging or allocation.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import os
import socket
import time
from ipaddress import IPv4Interface
from typing import Any

from tunneld.errors import SetupError
from tunneld.kernel.tun import TunDevice
from tunneld.kernel.udp import open_udp
from tunneld.links.base import Link
from tunneld.proto.counters import Counters
from tunneld.proto.overlay import SEND_ICMP, OverlayRouter, OverlayRxDrop, OverlayTxDrop
from tunneld.registry.base import Host, Registry

log = logging.getLogger("tunneld.overlay")

HEADROOM = 16  # a transport header (WireGuard's is 16) goes in front of the packet
TAILROOM = 32  # WireGuard's padding to 16 and Poly1305 tag go after it
BUFFER_SIZE = 65536
BATCH = 64
LIVE_FIELDS = ("hosts",)  # applied by SIGHUP without a rebuild
# Every `now` of this link and its transport: CLOCK_BOOTTIME seconds, as the
# WireGuard link (a suspended host does not keep stale session keys).
boottime = functools.partial(time.clock_gettime, time.CLOCK_BOOTTIME)


class PlainTransport:
    """flannel's UDP backend: sendto(public_ip, port) of the raw IPv4 packet."""

    backend_type = "udp"
    overhead = 20 + 8  # outer IPv4 + UDP
    rx_reasons, tx_reasons = OverlayRxDrop, OverlayTxDrop

    def __init__(self, cfg: Any, counters: Counters) -> None:
        self.cfg, self.counters = cfg, counters
        self.sock: socket.socket | None = None
        self.router: OverlayRouter | None = None
        self.dev_fd = -1

    def backend_data(self) -> dict[str, Any]:
        """This host's lease BackendData (flannel's udp backend publishes none)."""
        return {}

    def open(self, mtu: int) -> socket.socket:
        self.sock = open_udp(str(self.cfg.public_ip), self.cfg.port)
        self._rx_buf = bytearray(BUFFER_SIZE)
        self._rx_view = memoryview(self._rx_buf)
        return self.sock

    def attach(self, router: OverlayRouter, dev_fd: int, loop: Any) -> None:
        """Start delivering: datagrams go through `router.inbound` to the device `dev_fd`."""
        self.router, self.dev_fd = router, dev_fd

    def destination(self, host: Host) -> tuple[str, int] | None:
        """The sendto address for `host`, or None when this transport cannot reach it."""
        if host.backend_type != self.backend_type:
            return None
        return (host.public_ip, self.cfg.port)

    def prune(self, hosts: Any) -> None:
        """Forget state for hosts no longer in `hosts` (the plain transport keeps none)."""

    def send(self, buf: memoryview, n: int, dest: tuple[str, int], now: float) -> int:
        """Send the packet at buf[HEADROOM:HEADROOM+n]; 1 if sent, else 0 (counted)."""
        datagram = buf[HEADROOM : HEADROOM + n]
        try:
            self.sock.sendto(datagram, dest)  # type: ignore[union-attr]
        except OSError as exc:  # ENOBUFS, ECONNREFUSED after an ICMP, unreachable...
            reason = _send_drop(exc)
            self.counters.tx_dropped[reason] += 1
            return 0
        self.counters.tx_bytes += n
        return 1

    def flush(self, now: float) -> None:
        """End of a device batch (nothing is queued here)."""

    def on_readable(self) -> None:
        recv, buf, view = self.sock.recvfrom_into, self._rx_buf, self._rx_view  # type: ignore[union-attr]
        inbound, write, fd, c = self.router.inbound, os.write, self.dev_fd, self.counters  # type: ignore[union-attr]
        for _ in range(BATCH):
            try:
                n, addr = recv(buf)
            except BlockingIOError:
                break
            except OSError:  # ECONNREFUSED and friends: survive, keep draining
                c.rx_dropped[OverlayRxDrop.SOCKET_ERROR] += 1
                continue
            length = inbound(buf, 0, n, addr[0])
            if length < 0:
                continue
            try:
                write(fd, view[:length])
            except OSError:  # EIO while the device is down
                c.rx_dropped[OverlayRxDrop.DEVICE_ERROR] += 1
                continue
            c.rx_packets += 1
            c.rx_bytes += n

    def show(self) -> dict[str, Any]:
        return {}

    def route_show(self, dest: Any) -> dict[str, Any]:
        """Extra `show` fields for one route (per-peer state of an encrypted transport)."""
        return {}

    def close(self) -> None:
        self.router, self.dev_fd = None, -1
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _send_drop(exc: OSError) -> OverlayTxDrop:
    full = exc.errno in (errno.ENOBUFS, errno.EAGAIN)
    return OverlayTxDrop.NO_BUFFER if full else OverlayTxDrop.SEND_ERROR


def make_transport(cfg: Any, counters: Counters | None) -> tuple[Any, Counters]:
    """The transport for `cfg.encryption` and counters shaped for its drop reasons
    (a rebuild's previous counters are kept, re-shaped when the encryption changed)."""
    if cfg.encryption == "wireguard":
        from tunneld.links.overlay_wg import WireguardTransport

        kind: Any = WireguardTransport
    elif cfg.encryption == "none":
        kind = PlainTransport
    else:
        raise SetupError(f"interfaces.{cfg.name}.encryption: unknown {cfg.encryption!r}")
    fresh = Counters(kind.rx_reasons, kind.tx_reasons)
    if counters is not None:
        _carry_over(counters, fresh)
    return kind(cfg, fresh), fresh


def _carry_over(old: Counters, new: Counters) -> None:
    new.rx_packets, new.rx_bytes = old.rx_packets, old.rx_bytes
    new.tx_packets, new.tx_bytes = old.tx_packets, old.tx_bytes
    before, after = old.as_dict(), new.as_dict()  # reasons in enum order, valued 0..n-1
    for key, counts in (("rx_dropped", new.rx_dropped), ("tx_dropped", new.tx_dropped)):
        was: Any = before[key]
        for i, name in enumerate(after[key]):  # type: ignore[arg-type]
            counts[i] = was.get(name, 0)


def make_registry(cfg: Any, on_change: Any, transport: Any) -> Registry:
    """The registry for `cfg.registry`; an etcd lease publishes the transport's backend."""
    if cfg.registry == "etcd":
        from tunneld.registry.etcd import EtcdRegistry

        return EtcdRegistry(cfg, on_change, transport.backend_type, transport.backend_data())
    from tunneld.registry.static import StaticRegistry

    return StaticRegistry(cfg, on_change)


class OverlayLink(Link):
    type_name = "overlay"

    def __init__(self, cfg: Any, loop: Any, counters: Counters | None = None) -> None:
        super().__init__(cfg, loop, counters)
        self.transport, self.counters = make_transport(cfg, counters)
        self.registry = make_registry(cfg, self._on_hosts_changed, self.transport)
        self.router: OverlayRouter | None = None
        self.dev: TunDevice | None = None
        self.mtu = 0
        self._unreachable_hosts: set[Host] = set()

    async def start(self) -> None:
        cfg = self.cfg
        try:
            await self.registry.start()
            subnet, network = self.registry.subnet, self.registry.network
            assert subnet is not None and network is not None
            self.router = OverlayRouter(subnet, network, self.counters)
            self._on_hosts_changed(list(self.registry.hosts.values()), [])
            self.mtu = cfg.mtu or self._default_mtu()
            sock = self.transport.open(self.mtu)
            self.dev = self.open_device(cfg.name, "tun")
            self.netlink.configure_link(self.dev.name, self.mtu,
                                   [IPv4Interface((subnet.network_address, 32))])  # fmt: skip
            self.netlink.add_routes(self.dev.name, [network])
        except BaseException:
            await self._close()
            raise
        self._setup_buffers()
        self.transport.attach(self.router, self.dev.fd, self.loop)
        self.watch(self.dev.fd, self._on_tun_readable)
        self.watch(sock.fileno(), self.transport.on_readable)
        log.info("%s: subnet %s of %s, %d other host(s), mtu %d", self.name, subnet, network,
                 len(self.registry.hosts), self.mtu)  # fmt: skip

    def _default_mtu(self) -> int:
        underlay = self.netlink.link_mtu_for_address(str(self.cfg.public_ip)) or 1500
        return underlay - self.transport.overhead

    def _setup_buffers(self) -> None:
        self._tx_buf = bytearray(BUFFER_SIZE)
        self._tx_view = memoryview(self._tx_buf)
        self._tx_read = [self._tx_view[HEADROOM : BUFFER_SIZE - TAILROOM]]  # reused readv arg

    # --- control plane: registry changes -----------------------------------------------

    def _on_hosts_changed(self, added: list[Host], removed: list[Host]) -> None:
        router = self.router
        if router is None:  # before start: start() applies the whole table
            return
        for host in removed:
            router.remove_route(host.subnet)
            self._unreachable_hosts.discard(host)
            log.info("%s: route %s via %s removed", self.name, host.subnet, host.public_ip)
        for host in added:
            dest = self.transport.destination(host)
            if dest is None:
                if host not in self._unreachable_hosts:
                    self._unreachable_hosts.add(host)
                    log.warning("%s: host %s (%s) uses backend %r; this interface speaks %r: "
                                "no route", self.name, host.public_ip, host.subnet,
                                host.backend_type, self.transport.backend_type)  # fmt: skip
                continue
            router.add_route(host.subnet, host.public_ip, dest)
            log.info("%s: route %s via %s", self.name, host.subnet, host.public_ip)
        self.transport.prune(self.registry.hosts.values())

    # --- data plane -------------------------------------------------------------------------

    def _on_tun_readable(self) -> None:
        now, readv, fd, buf, view, into = (boottime(), os.readv, self.dev.fd,  # type: ignore[union-attr]
                                           self._tx_buf, self._tx_view, self._tx_read)  # fmt: skip
        outbound, send, write = self.router.outbound, self.transport.send, os.write  # type: ignore[union-attr]
        c = self.counters
        sent = 0
        for _ in range(BATCH):
            try:
                n = readv(fd, into)
            except BlockingIOError:
                break
            except OSError:
                c.tx_dropped[OverlayTxDrop.DEVICE_ERROR] += 1
                break
            dest = outbound(buf, HEADROOM, n, now)
            if dest is None:
                continue
            if dest is SEND_ICMP:
                try:
                    write(fd, self.router.icmp_buf[: self.router.icmp_len])  # type: ignore[union-attr]
                except OSError:
                    c.tx_dropped[OverlayTxDrop.DEVICE_ERROR] += 1
                continue
            sent += send(view, n, dest, now)
        c.tx_packets += sent
        self.transport.flush(now)

    # --- lifecycle and show --------------------------------------------------------------

    def reload(self, cfg: Any) -> bool:
        same = {f: getattr(cfg, f) for f in LIVE_FIELDS}
        if dataclasses.replace(self.cfg, **same) != cfg:
            return False
        if not self.registry.reload(cfg):
            return False
        self.cfg = cfg
        self.transport.cfg = cfg
        return True

    def show(self) -> dict[str, Any]:
        cfg, reg = self.cfg, self.registry
        routes = self.router.routes() if self.router is not None else []
        return {
            "type": "overlay",
            "subnet": str(reg.subnet) if reg.subnet else None,
            "network": str(reg.network) if reg.network else None,
            "public_ip": str(cfg.public_ip),
            "port": cfg.port,
            "encryption": cfg.encryption,
            "mtu": self.mtu,
            "routes": [self._route_show(net, ip) for net, ip in routes],
            "registry": reg.status(),
            "counters": self.counters.as_dict(),
            **self.transport.show(),
        }

    def _route_show(self, net: Any, ip: str) -> dict[str, Any]:
        route = self.router.table.get(net) if self.router is not None else None
        extra = self.transport.route_show(route.destination) if route is not None else {}
        return {"subnet": str(net), "public_ip": ip, **extra}

    async def stop(self) -> None:
        await self._close()

    async def _close(self) -> None:
        self.unwatch_all()
        self.transport.close()
        if self.dev is not None:
            self.dev.close()  # closing the last fd removes the tun and its routes
            self.dev = None
        try:
            await self.registry.stop()
        except Exception:
            log.exception("%s: stopping the registry", self.name)
