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
route for the whole network; with IPv6 inside (flannel's dual-stack IPv6Network and
the leases' IPv6Subnet) also the IPv6 subnet's first address as a /128 and one route
for the whole IPv6 network, and each host's IPv6 subnet routes to the same transport
destination as its IPv4 one. The underlay is IPv4 or IPv6 (the family of public_ip;
the hosts' addresses are of the same family). Hot path as in links/vxlan.py: readers on the loop,
a bounded drain per wake-up into preallocated buffers, packets read at HEADROOM
(room for a transport header), no per-packet logging or allocation.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
from ipaddress import IPv4Interface, IPv6Interface
from typing import Any

from tunneld.errors import SetupError
from tunneld.kernel.netlink import off_loop
from tunneld.kernel.tun import TunDevice
from tunneld.kernel.udp import UdpPort, open_udp
from tunneld.links import pmtu
from tunneld.links.base import HOOK_FIELDS, Link
from tunneld.links.datapath import (
    BATCH,
    SEGMENT_BUFFER_SIZE,
    TX_BUFFER_SIZE,
    DeviceWriter,
    RxArena,
    boottime,
    drain_udp,
    offload_show,
    segmenter,
)
from tunneld.proto.counters import Counters, OffsetCounts
from tunneld.proto.gso import VNET_HDR_LEN
from tunneld.proto.overlay import SEND_ICMP, OverlayRouter, OverlayRxDrop, OverlayTxDrop
from tunneld.registry.base import Host, Registry

log = logging.getLogger("tunneld.overlay")

HEADROOM = 16  # a transport header (WireGuard's is 16) goes in front of the packet
TAILROOM = 32  # WireGuard's padding to 16 and Poly1305 tag go after it
BUFFER_SIZE = TX_BUFFER_SIZE
LIVE_FIELDS = ("hosts", *HOOK_FIELDS)  # applied by SIGHUP without a rebuild


class PlainTransport:
    """flannel's UDP backend: the raw IPv4 packet as the payload to (public_ip, port).

    With offload, a super-packet from the tun is split into wire-sized packets back to back in
    `seg_buf` and sent as one UDP GSO run; the socket has UDP_GRO on, and received packets of
    one flow are coalesced into one tun write. Inner checksums are verified before merging
    (verify=True): unlike WireGuard, nothing here authenticates the payload, and a packet a
    sender corrupted must keep its bad checksum rather than be blessed by NEEDS_CSUM.
    """

    backend_type = "udp"
    pmtu_kind = "overlay"  # outer IP + UDP (links/pmtu.py)
    rx_reasons, tx_reasons = OverlayRxDrop, OverlayTxDrop
    verify_inner = True

    def __init__(self, cfg: Any, counters: Counters) -> None:
        self.cfg, self.counters = cfg, counters
        self.port: UdpPort | None = None
        self.router: OverlayRouter | None = None
        self.writer: DeviceWriter | None = None
        self.seg_buf = memoryview(bytearray(0))
        self.too_big: pmtu.TooBig | None = None  # set by the link once the device is open

    def backend_data(self) -> dict[str, Any]:
        """This host's lease BackendData (flannel's udp backend publishes none)."""
        return {}

    def open(self, mtu: int) -> UdpPort:
        offload = self.cfg.offload
        self.port = UdpPort(open_udp(str(self.cfg.public_ip), self.cfg.port), offload, offload)
        self._arena = RxArena()
        if offload:
            self.seg_buf = memoryview(bytearray(SEGMENT_BUFFER_SIZE))
        return self.port

    def attach(self, router: OverlayRouter, writer: DeviceWriter, loop: Any) -> None:
        """Start delivering: datagrams go through `router.inbound` to `writer`."""
        self.router, self.writer = router, writer

    def destination(self, host: Host) -> tuple[str, int] | None:
        """The sendto address for `host`, or None when this transport cannot reach it."""
        if host.backend_type != self.backend_type:
            return None
        return (host.public_ip, self.cfg.port)

    def prune(self, hosts: Any) -> None:
        """Forget state for hosts no longer in `hosts` (the plain transport keeps none)."""

    def send(self, buf: memoryview, n: int, dest: tuple[str, int], now: float) -> int:
        """Send the packet at buf[HEADROOM:HEADROOM+n]; 1 if sent, else 0 (counted)."""
        try:
            self.port.sendto(buf[HEADROOM : HEADROOM + n], dest)  # type: ignore[union-attr]
        except OSError as exc:  # ENOBUFS, ECONNREFUSED after an ICMP, unreachable...
            if exc.errno == pmtu.EMSGSIZE and self.too_big is not None:
                self.too_big.reply(buf, HEADROOM, n, dest, now)
                return 0
            self.counters.tx_dropped[_send_drop(exc.errno or 0)] += 1
            return 0
        self.counters.tx_bytes += n
        return 1

    def send_segments(self, seg: Any, dest: tuple[str, int], now: float) -> int:
        """Split the prepared super-packet and send it as one GSO run; datagrams sent."""
        out, count, stride = self.seg_buf, seg.count, seg.seg_len
        seg.write(out, 0, stride)
        total = (count - 1) * stride + seg.last_len
        port = self.port
        sent = port.send_run(out[:total], stride, dest)  # type: ignore[union-attr]
        c = self.counters
        c.tx_bytes += total if sent == count else sent * stride
        if sent < count:
            if port.last_errno == pmtu.EMSGSIZE and self.too_big is not None:  # type: ignore[union-attr]
                self.too_big.reply(out, 0, seg.seg_len, dest, now, count - sent)
                return sent
            c.tx_dropped[_send_drop(port.last_errno)] += count - sent  # type: ignore[union-attr]
        return sent

    def flush(self, now: float) -> None:
        """End of a device batch (nothing is queued here)."""

    def on_readable(self) -> None:
        drain_udp(self.port, self._arena, self.writer, self._on_datagrams, 0.0,
                  self.counters.rx_dropped, OverlayRxDrop.SOCKET_ERROR)  # fmt: skip

    def _on_datagrams(self, start: int, n: int, size: int, addr: Any, now: float) -> None:
        """One receive: a datagram, or a GRO batch of them, at arena.view[start:start+n]."""
        c = self.counters
        if n <= 0:  # empty, or truncated (MSG_TRUNC)
            c.rx_dropped[OverlayRxDrop.TRUNCATED] += 1
            return
        inbound, put, view = self.router.inbound, self.writer.put, self._arena.view  # type: ignore[union-attr]
        src, end = addr[0], start + n
        for d in range(start, end, size):
            length = min(size, end - d)
            inner = inbound(view, d, length, src)
            if inner < 0:
                continue
            put(view, d, inner)
            c.rx_packets += 1
            c.rx_bytes += length

    def show(self) -> dict[str, Any]:
        return {}

    def route_show(self, dest: Any) -> dict[str, Any]:
        """Extra `show` fields for one route (per-peer state of an encrypted transport)."""
        return {}

    def close(self) -> None:
        self.router, self.writer = None, None
        if self.port is not None:
            self.port.close()
            self.port = None


def _send_drop(err: int) -> OverlayTxDrop:
    full = err in (errno.ENOBUFS, errno.EAGAIN)
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
        self.mtu_source = "config"
        self._unreachable_hosts: set[Host] = set()

    async def start(self) -> None:
        cfg = self.cfg
        try:
            await self.registry.start()
            subnet, network = self.registry.subnet, self.registry.network
            subnet6, network6 = self.registry.subnet6, self.registry.network6
            assert subnet is not None and network is not None
            self.router = OverlayRouter(subnet, network, self.counters, own_subnet6=subnet6,
                                        network6=network6)  # fmt: skip
            self._on_hosts_changed(list(self.registry.hosts.values()), [])
            self.mtu = cfg.mtu or await off_loop(self._default_mtu)
            sock = self.transport.open(self.mtu)
            self.dev = self.open_device(cfg.name, "tun", offload=cfg.offload)
            addresses: list[Any] = [IPv4Interface((subnet.network_address, 32))]
            networks: list[Any] = [network]
            if subnet6 is not None and network6 is not None:
                addresses.append(IPv6Interface((subnet6.network_address, 128)))
                networks.append(network6)
            await off_loop(self.netlink.configure_link, self.dev.name, self.mtu, addresses)
            await off_loop(self.netlink.add_routes, self.dev.name, networks)
        except BaseException:
            await self._close()
            raise
        self._setup_buffers()
        self.transport.attach(self.router, self._writer, self.loop)
        self.watch(self.dev.fd, self._on_tun_readable)
        self.watch(sock.fileno(), self.transport.on_readable)
        log.info("%s: subnet %s of %s%s, %d other host(s), mtu %d", self.name, subnet, network,
                 f", IPv6 subnet {subnet6} of {network6}" if subnet6 else "",
                 len(self.registry.hosts), self.mtu)  # fmt: skip

    def _default_mtu(self) -> int:
        mtu, self.mtu_source = pmtu.underlay_default_mtu(self.cfg, self.netlink)
        return mtu

    def _setup_buffers(self) -> None:
        dev, c = self.dev, self.counters
        assert dev is not None
        vnet = VNET_HDR_LEN if dev.vnet_hdr else 0
        self._tx_buf = bytearray(BUFFER_SIZE)
        self._tx_view = memoryview(self._tx_buf)
        self._tx_read = [self._tx_view[HEADROOM - vnet : BUFFER_SIZE - TAILROOM]]  # readv arg
        offset = int(self.transport.tx_reasons["BAD_VNET_HDR"])  # the GsoDrop reasons
        self._segmenter = segmenter(dev, 0, OffsetCounts(c.tx_dropped, offset))  # type: ignore[arg-type]
        self._writer = DeviceWriter(dev, 0, self.transport.verify_inner, self._on_write_error)
        self._icmp_hdr = bytes(VNET_HDR_LEN)
        kind = self.transport.pmtu_kind
        source = str(self.cfg.public_ip) if kind == "overlay" else None
        reason = self.transport.tx_reasons["PACKET_TOO_BIG"]
        self.transport.too_big = pmtu.TooBig(dev, 0, kind, c.tx_dropped, reason, source)
        self._send = self.transport.send
        self.mss = pmtu.mss_limits(self.cfg.mss_clamp, self.mtu)
        if self.mss is not None:  # off: the plain functions, no per-packet check
            self._writer.put = pmtu.clamping_put(self._writer.put, 0, self.mss)
            self._send = self._clamped_sender(self.transport.send, self.mss)

    @staticmethod
    def _clamped_sender(send: Any, limits: tuple[int, int]) -> Any:
        clamp, mss4, mss6 = pmtu.frames.clamp_mss, limits[0], limits[1]

        def send_packet(buf: memoryview, n: int, dest: Any, now: float) -> int:
            clamp(buf, HEADROOM, n, mss4, mss6)
            return send(buf, n, dest, now)  # type: ignore[no-any-return]

        return send_packet

    def _on_write_error(self, count: int) -> None:
        self.counters.rx_dropped[OverlayRxDrop.DEVICE_ERROR] += count
        self.counters.rx_packets -= count  # counted when queued; they never reached the tun

    # --- control plane: registry changes -----------------------------------------------

    def _on_hosts_changed(self, added: list[Host], removed: list[Host]) -> None:
        router = self.router
        if router is None:  # before start: start() applies the whole table
            return
        for host in removed:
            router.remove_route(host.subnet)
            if host.ipv6_subnet is not None:
                router.remove_route(host.ipv6_subnet)
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
            self._add_route6(router, host, dest)
        self.transport.prune(self.registry.hosts.values())

    def _add_route6(self, router: OverlayRouter, host: Host, dest: Any) -> None:
        """The host's IPv6 subnet to the same destination (WireGuard: its allowed ips gain
        it), when this overlay carries IPv6 and the subnet lies in its IPv6 network."""
        subnet6 = host.ipv6_subnet
        if subnet6 is None:
            return
        network6 = router.network6
        if network6 is None or not subnet6.subnet_of(network6) or subnet6 == router.own_subnet6:
            log.warning("%s: host %s (%s): IPv6 subnet %s is not another host's part of this "
                        "overlay's IPv6 network %s; IPv4 only", self.name, host.public_ip,
                        host.subnet, subnet6, network6)  # fmt: skip
            return
        router.add_route(subnet6, host.public_ip, dest)
        log.info("%s: route %s via %s", self.name, subnet6, host.public_ip)

    # --- data plane -------------------------------------------------------------------------

    def _on_tun_readable(self) -> None:
        now, readv, view, into = boottime(), self.dev.readv, self._tx_view, self._tx_read  # type: ignore[union-attr]
        outbound, transport = self.router.outbound, self.transport  # type: ignore[union-attr]
        send, seg, c = self._send, self._segmenter, self.counters
        vnet = VNET_HDR_LEN if seg is not None else 0
        sent = 0
        for _ in range(BATCH):
            try:
                n = readv(into) - vnet
            except BlockingIOError:
                break
            except OSError:
                c.tx_dropped[OverlayTxDrop.DEVICE_ERROR] += 1
                break
            dest = outbound(view, HEADROOM, n, now)  # before the split: TTL set on the whole
            if dest is None:
                continue
            if dest is SEND_ICMP:
                self._write_icmp()
            elif seg is None:
                sent += send(view, n, dest, now)
            elif seg.prepare(view, HEADROOM - VNET_HDR_LEN, n + VNET_HDR_LEN):
                if seg.in_place:
                    sent += send(view, n, dest, now)
                else:
                    sent += transport.send_segments(seg, dest, now)
        c.tx_packets += sent
        transport.flush(now)

    def _write_icmp(self) -> None:
        router, dev = self.router, self.dev
        icmp = router.icmp_buf[: router.icmp_len]  # type: ignore[union-attr]
        try:
            if dev.vnet_hdr:  # type: ignore[union-attr]
                dev.writev([self._icmp_hdr, icmp])  # type: ignore[union-attr]
            else:
                dev.write(icmp)  # type: ignore[union-attr]
        except OSError:
            self.counters.tx_dropped[OverlayTxDrop.DEVICE_ERROR] += 1

    # --- lifecycle and show --------------------------------------------------------------

    def prepare_reload(self, cfg: Any) -> Any | None:
        """Only the static hosts change live (same subnet and network: the registry takes
        them as they are); the plan is `cfg`. None otherwise: rebuild."""
        same = {f: getattr(cfg, f) for f in LIVE_FIELDS}
        if dataclasses.replace(self.cfg, **same) != cfg:
            return None
        return cfg

    def commit_reload(self, plan: Any) -> None:
        if not self.registry.reload(plan):  # cannot happen for a hosts-only change
            log.error("%s: the registry refused the new hosts; kept the old ones", self.name)
            return
        self.cfg = plan
        self.transport.cfg = plan

    def show(self) -> dict[str, Any]:
        cfg, reg = self.cfg, self.registry
        routes = self.router.routes() if self.router is not None else []
        return {
            "type": "overlay",
            "subnet": str(reg.subnet) if reg.subnet else None,
            "network": str(reg.network) if reg.network else None,
            "ipv6_subnet": str(reg.subnet6) if reg.subnet6 else None,
            "ipv6_network": str(reg.network6) if reg.network6 else None,
            "public_ip": str(cfg.public_ip),
            "port": cfg.port,
            "encryption": cfg.encryption,
            "mtu": self.mtu,
            "mtu_source": self.mtu_source,
            "mss_clamp": list(self.mss) if getattr(self, "mss", None) else None,
            "routes": [self._route_show(net, ip) for net, ip in routes],
            "registry": reg.status(),
            "counters": self.counters.as_dict(),
            **self.transport.show(),
            **(self.transport.too_big.show() if self.transport.too_big is not None else {}),
            **offload_show(
                self.dev,
                [self.transport.port],
                getattr(self, "_segmenter", None),
                getattr(self, "_writer", None),
            ),  # fmt: skip
        }

    def _route_show(self, net: Any, ip: str) -> dict[str, Any]:
        """One entry per host (its IPv4 subnet), with its IPv6 subnet when one is routed."""
        router = self.router
        route = router.table.get(net) if router is not None else None
        extra = self.transport.route_show(route.destination) if route is not None else {}
        host = self.registry.hosts.get(net)
        six = host.ipv6_subnet if host is not None else None
        routed6 = router.table.get(six) if six is not None and router is not None else None
        if route is not None and getattr(routed6, "destination", None) is route.destination:
            extra = {"ipv6_subnet": str(six), **extra}
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
