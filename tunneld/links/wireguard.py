"""The WireGuard data plane: a tun device <-> the WireGuard protocol over UDP.

Spec: the WireGuard whitepaper and wireguard.com/protocol; the protocol itself is
the sans-IO core in tunneld/proto/wg (interface.py documents its contract). This
module only moves bytes between the kernel and that core.

Hot path (DESIGN.md): the tun fd and the UDP socket(s) are readers on the loop;
each wake-up drains at most BATCH packets. Outbound, the inner packet is read at
HEADROOM (16: the transport header), its inner destination picks the peer
(cryptokey routing, longest match), and the WireGuard port (links/wgport.py, shared
with the overlay's WireGuard transport) seals and sends it: one packet in place, or a
TSO/USO super-packet split into a run sealed in one call and sent with one UDP GSO
send. Inbound, the port opens each GRO batch and hands the inner packets to the
device writer, which coalesces them on a vnet_hdr tun. Nothing per packet logs,
raises or builds bytes. Time and the deadline timer: see links/wgport.py.

Sockets: one IPv4 wildcard socket on listen_port (a random port when unset) and,
when the host has IPv6, an IPv6-only wildcard socket on the same port. Peer
endpoints are socket address tuples: (ip, port) for IPv4 and (ip, port, 0, 0)
for IPv6, as recvfrom returns them, so the core's roaming test is plain `==`.

Test-only knobs (environment, read at start and logged as a warning; never set
them in production): TUNNELD_TEST_REKEY_AFTER_TIME (seconds) shortens the
protocol's REKEY_AFTER_TIME for rekey interop tests; TUNNELD_TEST_RERESOLVE_INTERVAL
(seconds) shortens the periodic lookup of endpoint names (links/wgdns.py). The cookie
threshold is the config's `handshake_load_threshold` (handshake messages per second).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import logging
import os
import socket
import time
from enum import IntEnum
from typing import Any

from tunneld.errors import SetupError
from tunneld.kernel.netlink import off_loop
from tunneld.kernel.nft import Nft
from tunneld.kernel.tun import TunDevice, describe_offload
from tunneld.kernel.udp import UdpPort, open_udp_any, set_mark
from tunneld.links import pmtu
from tunneld.links.base import HOOK_FIELDS, Link
from tunneld.links.datapath import (
    BATCH,
    TX_BUFFER_SIZE,
    DeviceWriter,
    boottime,
    offload_show,
    segmenter,
)
from tunneld.links.policy import PolicyRouting
from tunneld.links.wgdns import EndpointNames
from tunneld.links.wgport import WireguardPort, format_endpoint, peer_id
from tunneld.proto.counters import Counters, OffsetCounts
from tunneld.proto.gso import VNET_HDR_LEN, GsoDrop
from tunneld.proto.routing import PrefixTable
from tunneld.proto.wg import Interface, Peer, WgDrop, encode_key

log = logging.getLogger("tunneld.wireguard")

HEADROOM = 16  # the transport header (type, receiver, counter) goes here
TAILROOM = 32  # padding to 16 plus the Poly1305 tag
BUFFER_SIZE = TX_BUFFER_SIZE
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
    "PACKET_TOO_BIG",  # tx: larger than the path to the peer (EMSGSIZE; links/pmtu.py)
    *(m.name for m in GsoDrop),  # tx: the segmenter's reasons (a bad virtio_net_hdr, ...)
)
WgLinkDrop = IntEnum(  # type: ignore[misc]
    "WgLinkDrop",
    [(m.name, int(m)) for m in WgDrop]
    + [(name, len(WgDrop) + i) for i, name in enumerate(_LINK_REASONS)],
)
_PORT_REASONS = {
    "full": WgLinkDrop.SEND_BUFFER_FULL,
    "unreachable": WgLinkDrop.UNREACHABLE,
    "send_error": WgLinkDrop.SEND_ERROR,
    "socket_error": WgLinkDrop.SOCKET_ERROR,
}
# applied by SIGHUP without a rebuild
LIVE_FIELDS = ("peers", "handshake_load_threshold", *HOOK_FIELDS)


def numeric_endpoint(host: str, port: int) -> tuple[Any, ...] | None:
    """An IP-literal endpoint as the socket address `recvfrom` reports for it; None for a DNS
    name. An IPv6 scope (`fe80::1%eth0` or `fe80::1%3`) is kept as the tuple's scope id, the
    interface index (a link-local address means nothing without it); `format_endpoint`
    prints it back as `[fe80::1%eth0]:port`. Raises SetupError for a scope naming no
    interface."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return _sockaddr(ip, port)


def _sockaddr(ip: Any, port: int) -> tuple[Any, ...]:
    if ip.version == 4:
        return (str(ip), port)
    scope = ip.scope_id
    if not scope:
        return (str(ip), port, 0, 0)
    bare = str(ip).partition("%")[0]
    try:
        index = int(scope) if scope.isdigit() else socket.if_nametoindex(scope)
        socket.if_indextoname(index)  # a number must name an interface too
    except OSError:
        raise SetupError(
            f"endpoint [{ip}]:{port}: no interface {scope!r} here for the address's scope"
        ) from None
    return (bare, port, 0, index)


def _first_address(host: str, port: int, infos: list[Any]) -> tuple[Any, ...]:
    infos.sort(key=lambda i: i[0] != socket.AF_INET)  # IPv4 preferred, like wg(8)
    return _sockaddr(ipaddress.ip_address(infos[0][4][0]), port)


def resolve_endpoint(host: str, port: int, resolver: Any = socket.getaddrinfo) -> tuple[Any, ...]:
    """A config endpoint as a socket address tuple (IPv4 preferred for DNS names). Blocks on
    DNS: the loop uses `resolve_endpoint_async`."""
    found = numeric_endpoint(host, port)
    if found is not None:
        return found
    try:
        infos = resolver(host, port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise SetupError(f"endpoint {host}:{port}: cannot resolve ({exc.strerror})") from None
    return _first_address(host, port, infos)


async def resolve_endpoint_async(
    loop: Any, host: str, port: int, resolver: Any = socket.getaddrinfo
) -> tuple[Any, ...]:
    """`resolve_endpoint` with the DNS lookup in the loop's executor (the loop keeps going)."""
    found = numeric_endpoint(host, port)
    if found is not None:
        return found
    lookup = functools.partial(resolver, host, port, type=socket.SOCK_DGRAM)
    try:
        infos = await loop.run_in_executor(None, lookup)
    except OSError as exc:
        raise SetupError(f"endpoint {host}:{port}: cannot resolve ({exc.strerror})") from None
    return _first_address(host, port, infos)


@dataclasses.dataclass(frozen=True, slots=True)
class _PeersPlan:
    """A prepared reload: the new config and the resolved endpoint of every peer that is
    new or whose endpoint changed (by public key; None: no endpoint)."""

    cfg: Any
    endpoints: dict[bytes, Any]


def _env_float(name: str) -> float | None:
    text = os.environ.get(name)
    if not text:
        return None
    log.warning("%s=%s is set: a TEST-ONLY setting, never for production", name, text)
    return float(text)


class WireguardLink(Link):
    type_name = "wireguard"
    resolver: Any = staticmethod(socket.getaddrinfo)  # DNS seam (tests: a slow fake)
    nft: Any = Nft()  # a full tunnel's connmark table (links/policy.py); tests: FakeNft

    def __init__(self, cfg: Any, loop: Any, counters: Counters | None = None) -> None:
        super().__init__(cfg, loop, counters)
        self.counters = counters or Counters(WgLinkDrop, WgLinkDrop)
        self.dev: TunDevice | None = None
        self.sock4: socket.socket | None = None
        self.sock6: socket.socket | None = None
        self.listen_port = 0
        self.mtu = cfg.mtu or 0  # 0 until start() computes the default
        self.mtu_source = "config" if cfg.mtu else ""
        self.routes: PrefixTable[Peer] = PrefixTable()
        self._kernel_todo: list[tuple[list[Any], list[Any], tuple[Any, ...]]] = []
        self.iface: Interface | None = None
        self.port: WireguardPort | None = None
        # Runtime state the UAPI (links/wguapi.py) changes; tunneld-wg (wgcli.py) starts a
        # link without a key and leaves the kernel routes to wg-quick, as wireguard-go does.
        self.has_private_key = True
        self.kernel_routes = True
        self.fwmark = int(getattr(cfg, "fwmark", 0) or 0)  # SO_MARK on the UDP sockets, 0: none
        self.runtime_only = False  # the UAPI set what the config cannot say: reload rebuilds
        self.policy: PolicyRouting | None = None  # table/fwmark routing (links/policy.py)
        self.auto_fwmark = 0  # the mark `table = "auto"` chose for a full tunnel (not the file's)
        self.dns: EndpointNames | None = None  # endpoints given as names (links/wgdns.py)

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
        if not self.has_private_key:
            self.iface.set_private_key(None)
        self.port = WireguardPort(self.name, self.iface, self.loop, c, _PORT_REASONS)
        try:
            self.dns = EndpointNames(self, _env_float("TUNNELD_TEST_RERESOLVE_INTERVAL"))
            peers = [(p, await self.dns.first(p, self._resolve)) for p in cfg.peers]  # off-loop
            if not cfg.mtu:  # wg-quick's set_mtu_up, from the resolved endpoints
                hosts = [e[0] for _, e in peers if e is not None]
                self.mtu, self.mtu_source = await off_loop(pmtu.wireguard_default_mtu, hosts,
                                                           self.netlink)  # fmt: skip
                self.iface.mtu = self.mtu
            await self._plan_policy()
            self._open_sockets(cfg.listen_port)
            self.dev = self.open_device(cfg.name, "tun", offload=cfg.offload)
            await off_loop(self.netlink.configure_link, self.dev.name, self.mtu, cfg.address)
            now = boottime()
            for p, endpoint in peers:
                self._add_peer(p, endpoint, now)
            await off_loop(self._add_kernel_routes, [n for p in cfg.peers for n in p.allowed_ips])
            await off_loop(self._sync_rules, cfg.peers)
            await self.policy.install_firewall(self.nft, self.dev.name, cfg.address)
        except BaseException:
            if self.policy is not None:
                await self.policy.remove_firewall(self.nft)
            self._close()
            raise
        self._setup_buffers()
        port, offload = self.port, cfg.offload
        ports = [UdpPort(s, offload, offload) if s is not None else None
                 for s in (self.sock4, self.sock6)]  # fmt: skip
        port.attach(ports[0], ports[1], self._deliver, self._writer, offload)
        self.watch(self.dev.fd, self._on_tun_readable)
        for udp in port.ports():
            self.watch(udp.fileno(), port.on_readable, udp)
        families = "IPv4 and IPv6" if self.sock6 else "IPv4"
        log.info("%s: public key %s, listening on UDP %d (%s), %d peer(s), mtu %d, offload %s",
                 self.name, encode_key(self.iface.public_key), self.listen_port, families,
                 len(cfg.peers), self.mtu, describe_offload(self.dev.offload_flags)
                 if self.dev.vnet_hdr else "off")  # fmt: skip
        self._after_batch(boottime())  # persistent keepalives bring tunnels up at once
        self.dns.arm()

    def _open_sockets(self, port: int | None) -> None:
        """Bind the wildcard sockets (a random port when None), marked with `fwmark`."""
        self._bind_sockets(port)
        for sock in (self.sock4, self.sock6):
            if sock is not None and self.fwmark:
                set_mark(sock, self.fwmark)

    def _bind_sockets(self, port: int | None) -> None:
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
        dev, c = self.dev, self.counters
        assert dev is not None
        vnet = VNET_HDR_LEN if dev.vnet_hdr else 0
        self._tx_view = memoryview(bytearray(BUFFER_SIZE))
        self._tx_read = [self._tx_view[HEADROOM - vnet : BUFFER_SIZE - TAILROOM]]  # readv arg
        gso_reasons = OffsetCounts(c.tx_dropped, int(WgLinkDrop.BAD_VNET_HDR))
        self._segmenter = segmenter(dev, 0, gso_reasons)  # type: ignore[arg-type]
        # verify=False: the AEAD authenticated what the peer's kernel produced (wgport.py)
        self._writer = DeviceWriter(dev, 0, False, self._on_write_error)
        assert self.port is not None
        self.port.too_big = pmtu.TooBig(dev, 0, "wireguard", c.tx_dropped,
                                        WgLinkDrop.PACKET_TOO_BIG)  # fmt: skip
        self._send_packet = self.port.send_packet
        self.mss = pmtu.mss_limits(self.cfg.mss_clamp, self.mtu)
        if self.mss is not None:  # off: the plain functions, no per-packet check
            self._writer.put = pmtu.clamping_put(self._writer.put, 0, self.mss)
            self._send_packet = self._clamped_sender(self.port.send_packet, self.mss)

    @staticmethod
    def _clamped_sender(send: Any, limits: tuple[int, int]) -> Any:
        clamp, mss4, mss6 = pmtu.frames.clamp_mss, limits[0], limits[1]

        def send_packet(peer: Peer, buf: memoryview, off: int, n: int, now: float) -> int:
            clamp(buf, off + HEADROOM, n, mss4, mss6)
            return send(peer, buf, off, n, now)  # type: ignore[no-any-return]

        return send_packet

    def _on_write_error(self, count: int) -> None:
        self.counters.rx_dropped[WgLinkDrop.DEVICE_ERROR] += count
        self.counters.rx_packets -= count  # counted when queued; they never reached the tun

    def _deliver(self, peer: Peer, view: memoryview, off: int, n: int) -> None:
        self._writer.put(view, off, n)  # the core already checked the inner source
        c = self.counters
        c.rx_packets += 1
        c.rx_bytes += n + 32  # the datagram, give or take padding

    async def _plan_policy(self) -> None:
        """Where routes go and the fwmark (`table`, `fwmark`; a full tunnel picks its mark)."""
        self.policy = await off_loop(PolicyRouting.plan, self.name, self.netlink, self.cfg,
                                     self.kernel_routes)  # fmt: skip
        if self.policy.mark != self.fwmark:
            self.fwmark = self.auto_fwmark = self.policy.mark

    async def stop(self) -> None:
        if self.policy is not None:
            await self.policy.remove_firewall(self.nft)
            await off_loop(self.policy.teardown)  # the rules; the routes go with the device
        self._close()

    def _close(self) -> None:
        self.unwatch_all()
        if self.dns is not None:
            self.dns.close()
        if self.policy is not None:
            self.policy.teardown()  # a start that failed half-way (else: done by stop)
        if self.port is not None:
            self.port.close()  # wipes the session keys, closes the UDP ports
        for sock in (self.sock4, self.sock6):
            if sock is not None:
                sock.close()
        self.sock4 = self.sock6 = None
        if self.dev is not None:
            self.dev.close()  # closing the last fd removes the tun and its routes
            self.dev = None

    # --- peers and routes (control plane) ------------------------------------------

    def _endpoint_of(self, p: Any) -> tuple[Any, ...] | None:
        """Blocking (the UAPI's synchronous prepare); start() and SIGHUP use `_resolve`."""
        return None if p.endpoint is None else resolve_endpoint(*p.endpoint, self.resolver)

    async def _resolve(self, p: Any) -> tuple[Any, ...] | None:
        if p.endpoint is None:
            return None
        return await self.lookup_name(*p.endpoint)

    async def lookup_name(self, host: str, port: int) -> tuple[Any, ...]:
        """`host:port` as a socket address, DNS off the loop; SetupError if it does not resolve."""
        return await resolve_endpoint_async(self.loop, host, port, self.resolver)

    def after_endpoint_change(self, now: float) -> None:
        """links/wgdns.py moved a peer's endpoint: send what that made due."""
        self._after_batch(now)

    def _add_peer(self, p: Any, endpoint: Any, now: float) -> None:
        assert self.iface is not None
        psk = p.preshared_key.value if p.preshared_key is not None else None
        peer = self.iface.add_peer(p.public_key, psk, endpoint, p.persistent_keepalive, now)
        peer.user_data = p.allowed_ips
        for net in p.allowed_ips:
            self.routes.insert(net, peer)

    def _add_kernel_routes(self, nets: list[Any]) -> None:
        """Routes through the device, each into its table (links/policy.py; a /0 outside a
        full-tunnel table gets a warning there)."""
        if nets and self.dev is not None and self.kernel_routes and self.policy is not None:
            self.policy.add_routes(self.dev.name, nets)

    def _sync_rules(self, peers: Any) -> None:
        """The full tunnel's rules for the families whose /0 a peer now allows."""
        if self.dev is not None and self.policy is not None:
            self.policy.sync_rules([net for p in peers for net in p.allowed_ips])

    def _allowed_source(self, peer: Peer, packet: memoryview) -> bool:
        """Cryptokey routing, inbound: the inner source must route back to the sender."""
        if packet[0] >> 4 == 4:
            return self.routes.lookup_v4(packet, 12) is peer
        return self.routes.lookup_v6(packet, 8) is peer

    async def prepare_reload(self, cfg: Any) -> Any | None:
        """SIGHUP: `prepare_peers` with the names resolved off the loop (the daemon awaits
        this); None when the change needs a rebuild."""
        if self.runtime_only:  # `wg set` changed what no file says (key removed)
            return None  # a rebuild re-applies the file
        if self.policy is not None and self.policy.needs_rebuild(cfg):
            return None  # a first /0: a rebuild picks the full tunnel's mark and table
        moved = self._moved_peers(cfg)
        if moved is None:
            return None
        return _PeersPlan(cfg, {p.public_key: await self._resolve(p) for p in moved})

    def prepare_peers(self, cfg: Any) -> Any | None:
        """Peers are added, removed and updated live (sessions kept); None otherwise. The
        endpoints of added peers and of peers whose endpoint changed are resolved here, so
        a name that does not resolve fails the reload before anything changed."""
        moved = self._moved_peers(cfg)
        if moved is None:
            return None
        return _PeersPlan(cfg, {p.public_key: self._endpoint_of(p) for p in moved})

    def _moved_peers(self, cfg: Any) -> list[Any] | None:
        """The peers of `cfg` whose endpoint must be resolved (new, or a new endpoint);
        None when `cfg` differs in more than the live fields."""
        same = {f: getattr(cfg, f) for f in LIVE_FIELDS}
        if dataclasses.replace(self.cfg, **same) != cfg or self.iface is None:
            return None
        old = {p.public_key: p for p in self.cfg.peers}
        return [p for p in cfg.peers
                if p.public_key not in old or p.endpoint != old[p.public_key].endpoint]  # fmt: skip

    @classmethod
    async def check_rebuild(cls, cfg: Any) -> None:
        """Every peer's endpoint resolves (off the loop) before the running link goes."""
        loop = asyncio.get_running_loop()
        for p in cfg.peers:
            if p.endpoint is not None:
                await resolve_endpoint_async(loop, *p.endpoint, cls.resolver)

    def commit_reload(self, plan: Any) -> None:
        cfg, endpoints = plan.cfg, plan.endpoints
        assert self.iface is not None
        old = {p.public_key: p for p in self.cfg.peers}
        new = {p.public_key: p for p in cfg.peers}
        now, iface = boottime(), self.iface
        iface.under_load_threshold = float(cfg.handshake_load_threshold)
        for key in old.keys() - new.keys():
            iface.remove_peer(key)
            log.info("%s: peer %s removed", self.name, peer_id(key))
        for key, p in new.items():
            if key not in old:
                self._add_peer(p, endpoints[key], now)
                log.info("%s: peer %s added", self.name, peer_id(key))
            elif p != old[key]:
                self._update_peer(old[key], p, endpoints, now)
        self._reroute(old.values(), cfg.peers)
        self.cfg = cfg
        if self.dns is not None:
            self.dns.sync(cfg.peers)
        self._after_batch(now)

    def _reload_endpoint(self, p: Any, fallback: Any) -> Any:
        """The endpoint of `p`, or `fallback` (logged) when its name does not resolve."""
        try:
            return self._endpoint_of(p)
        except SetupError as exc:
            log.error("%s: %s; endpoint left unchanged", self.name, exc)
            return fallback

    def _update_peer(self, was: Any, p: Any, endpoints: dict[bytes, Any], now: float) -> None:
        assert self.iface is not None
        changes: dict[str, Any] = {}
        if p.preshared_key != was.preshared_key:
            changes["preshared_key"] = p.preshared_key.value if p.preshared_key else None
        if p.endpoint != was.endpoint:  # else keep what roaming learned
            changes["endpoint"] = endpoints[p.public_key]
        if p.persistent_keepalive != was.persistent_keepalive:
            changes["persistent_keepalive"] = p.persistent_keepalive
        peer = self.iface.update_peer(p.public_key, now, **changes)
        peer.user_data = p.allowed_ips
        log.info("%s: peer %s updated", self.name, peer_id(p.public_key))

    def _reroute(self, old_peers: Any, new_peers: Any) -> None:
        assert self.iface is not None
        before = {net for p in old_peers for net in p.allowed_ips}
        after = {net for p in new_peers for net in p.allowed_ips}
        self.routes.clear()
        for p in new_peers:
            peer = self.iface.peer(p.public_key)
            for net in p.allowed_ips:
                self.routes.insert(net, peer)
        # the kernel's routes and rules follow in apply_kernel(), off the loop
        self._kernel_todo.append(
            (sorted(before - after, key=str), sorted(after - before, key=str), tuple(new_peers))
        )

    async def apply_kernel(self) -> None:
        todo, self._kernel_todo = self._kernel_todo, []
        for removed, added, peers in todo:
            try:
                await off_loop(self._kernel_reroute, removed, added, peers)
            except SetupError as exc:  # the peers are in; only a kernel route is missing
                log.error("%s: %s", self.name, exc)
            except Exception:  # a bug: the commit stands; say so
                log.exception("%s: error updating kernel routes", self.name)

    def _kernel_reroute(self, removed: list[Any], added: list[Any], peers: Any) -> None:
        """On the netlink worker: routes of allowed ips no peer has any more go, new ones
        come, and the full tunnel's rules follow the peers' /0s."""
        if self.dev is not None and removed and self.kernel_routes and self.policy:
            self.policy.remove_routes(self.dev.name, removed)
        self._add_kernel_routes(added)
        self._sync_rules(peers)

    # --- data plane ----------------------------------------------------------------

    def _on_tun_readable(self) -> None:
        now, readv, view, into = boottime(), self.dev.readv, self._tx_view, self._tx_read  # type: ignore[union-attr]
        route4, route6 = self.routes.lookup_v4, self.routes.lookup_v6
        port, seg, c = self.port, self._segmenter, self.counters
        send_packet, send_segments = self._send_packet, port.send_segments  # type: ignore[union-attr]
        vnet = VNET_HDR_LEN if seg is not None else 0
        drops, sent = c.tx_dropped, 0
        for _ in range(BATCH):
            try:
                n = readv(into) - vnet
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
            if seg is None:
                sent += send_packet(peer, view, 0, n, now)
            elif seg.prepare(view, HEADROOM - VNET_HDR_LEN, n + VNET_HDR_LEN):
                if seg.in_place:
                    sent += send_packet(peer, view, 0, n, now)
                else:
                    sent += send_segments(peer, seg, now)
        c.tx_packets += sent
        self._after_batch(now)

    # --- control plane: actions and the deadline -----------------------------------

    def _after_batch(self, now: float) -> None:
        if self.port is not None:
            self.port.after_batch(now)

    # --- the WireGuard UAPI (wg, wg-quick): links/wguapi.py ---------------------------

    def uapi_get(self) -> Any:
        """This interface as a get=1 answer states it (proto.wg.uapi.DeviceState)."""
        from tunneld.links.wguapi import uapi_state

        return uapi_state(self)

    def drifted(self, cfg: Any) -> bool:
        return self.runtime_only or self.cfg != cfg

    def uapi_set(self, ops: list[Any]) -> None:
        """Apply a set=1 request's operations at runtime; raises UapiError."""
        from tunneld.links.wguapi import apply_uapi

        apply_uapi(self, ops)

    # --- show ----------------------------------------------------------------------

    def show(self) -> dict[str, Any]:
        now, wall, iface = boottime(), time.time(), self.iface
        peers = []
        for peer in iface.peers if iface is not None else []:
            entry = peer.show(now, wall)
            entry["endpoint"] = format_endpoint(peer.endpoint)
            if self.dns is not None:
                entry.update(self.dns.show(peer.public_key))
            nets: Any = peer.user_data or ()
            entry["allowed_ips"] = [str(net) for net in nets]
            peers.append(entry)
        return {
            "type": "wireguard",
            "public_key": encode_key(iface.public_key) if iface is not None else None,
            "listen_port": self.listen_port,
            "fwmark": self.fwmark,
            "table": self.policy.show() if self.policy is not None else "main",
            "mtu": self.mtu,
            "mtu_source": self.mtu_source,
            "mss_clamp": list(self.mss) if getattr(self, "mss", None) else None,
            "address": [str(a) for a in self.cfg.address],
            "peers": peers,
            "counters": self.counters.as_dict(),
            **(self.port.too_big.show() if self.port and self.port.too_big else {}),
            **offload_show(
                self.dev,
                self.port.ports() if self.port is not None else [],
                getattr(self, "_segmenter", None),
                getattr(self, "_writer", None),
            ),  # fmt: skip
        }
