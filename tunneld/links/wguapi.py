"""The WireGuard UAPI (wireguard.com/xplatform) on a running WireGuard link.

Spec: wireguard.com/xplatform "Configuration Protocol"; the codec is the sans-IO
tunneld/proto/wg/uapi.py, which also documents the folding of peer blocks. This module
turns a get into a `DeviceState` and applies a set's operations to a WireguardLink.

Theory of operation. A set is applied in two steps. First the operations are folded,
in order, over the link's current state: the peers as PeerConfig records (what the
config path uses), the private key, the listen port and the fwmark; then the peer change
is prepared with `prepare_peers`, SIGHUP's code, which resolves endpoints. Nothing runs
yet. Then it is committed, the step that can fail first: a listen port change binds the
new sockets (EADDRINUSE: nothing changed, as wireguard-go answers), the fwmark goes on
the sockets (SO_MARK), the private key into the core, and the peers through
`commit_reload` (sessions of unchanged peers kept; allowed ips into the cryptokey table
and, for a `tunneld --config` interface, kernel routes). An endpoint given in the
request is set even when it equals the configured one (roaming may have moved it). A
prefix given to one peer leaves any other peer that held it (wireguard-go's table
insert). Deviation: a peer that `replace_peers` removes and the same request lists again
keeps its sessions (its settings are replaced; wireguard-go would start it afresh), so
`wg setconf` of the running config does not cut the tunnels.

Runtime only: the link's `cfg` records what runs, so `tunneld show` and a later get see
the change; a reload that re-applies the file replaces it (links/wireguard.py reload).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import time
from typing import Any

from tunneld.config import PeerConfig, Secret
from tunneld.errors import SetupError
from tunneld.kernel.udp import UdpPort, set_mark
from tunneld.links.datapath import boottime
from tunneld.proto.wg import public_key as derive_public_key
from tunneld.proto.wg.uapi import (
    ZERO_KEY,
    DeviceState,
    Operation,
    PeerState,
    PeerUpdate,
    ReplacePeers,
    SetFwmark,
    SetListenPort,
    SetPrivateKey,
    UapiError,
)

log = logging.getLogger("tunneld.wireguard")
_KEEP: Any = object()


def uapi_state(link: Any) -> DeviceState:
    """The link as a get=1 answer describes it (peers in the order they were added)."""
    iface = link.iface
    if iface is None:
        raise UapiError(errno.ENODEV, f"{link.name} is not running")
    now, wall = boottime(), time.time()
    peers = []
    for peer in iface.peers:
        at = peer.latest_handshake_at
        ns = 0 if at is None else max(0, int((wall - (now - at)) * 1e9))
        peers.append(PeerState(peer.public_key, peer.preshared_key, peer.endpoint, ns,
                               peer.rx_bytes, peer.tx_bytes, peer.persistent_keepalive,
                               tuple(peer.user_data or ())))  # fmt: skip
    private = iface.private_key if link.has_private_key else None
    return DeviceState(private, link.listen_port, link.fwmark, tuple(peers))


def apply_uapi(link: Any, ops: list[Operation]) -> None:
    """Apply a set=1 request's operations (module docstring). Raises UapiError only."""
    if link.iface is None:
        raise UapiError(errno.ENODEV, f"{link.name} is not running")
    private: Any = _KEEP
    own = link.iface.public_key if link.has_private_key else None
    port: int | None = None
    mark: int | None = None
    peers: dict[bytes, PeerConfig] = {p.public_key: p for p in link.cfg.peers}
    endpoints: dict[bytes, tuple[str, int]] = {}
    for op in ops:
        if isinstance(op, SetPrivateKey):
            private = op.private_key
            own = None if private is None else derive_public_key(private)
            peers.pop(own, None)  # type: ignore[arg-type]
        elif isinstance(op, SetListenPort):
            port = op.port
        elif isinstance(op, SetFwmark):
            mark = op.fwmark
        elif isinstance(op, ReplacePeers):
            peers.clear()
            endpoints.clear()
        elif op.public_key != own:  # a peer with our own key is ignored, as wireguard-go
            _fold_peer(peers, endpoints, op)
    try:
        plan = link.prepare_peers(dataclasses.replace(link.cfg, peers=tuple(peers.values())))
    except SetupError as exc:  # endpoints are IP literals: not expected
        raise UapiError(errno.EIO, str(exc)) from None
    assert plan is not None  # only the peers differ
    _commit(link, plan, private, port, mark, endpoints)


def _fold_peer(peers: dict[bytes, PeerConfig], endpoints: dict[bytes, tuple[str, int]],
               op: PeerUpdate) -> None:  # fmt: skip
    key = op.public_key
    current = peers.get(key)
    if op.remove:
        peers.pop(key, None)
        endpoints.pop(key, None)
        return
    if current is None and op.update_only:
        return
    base = current or PeerConfig(public_key=key)
    changes: dict[str, Any] = {}
    if op.preshared_key is not None:
        psk = op.preshared_key
        changes["preshared_key"] = None if psk == ZERO_KEY else Secret(psk)
    if op.endpoint is not None:
        endpoints[key] = changes["endpoint"] = (str(op.endpoint[0]), op.endpoint[1])
    if op.persistent_keepalive_interval is not None:
        changes["persistent_keepalive"] = op.persistent_keepalive_interval or None
    nets = [] if op.replace_allowed_ips else list(base.allowed_ips)
    nets += [net for net in dict.fromkeys(op.allowed_ips) if net not in nets]
    taken = set(op.allowed_ips)
    for other in [p for k, p in peers.items() if k != key and taken & set(p.allowed_ips)]:
        kept = tuple(net for net in other.allowed_ips if net not in taken)
        peers[other.public_key] = dataclasses.replace(other, allowed_ips=kept)
    peers[key] = dataclasses.replace(base, allowed_ips=tuple(nets), **changes)


def _commit(link: Any, plan: Any, private: Any, port: int | None, mark: int | None,
            endpoints: dict[bytes, tuple[str, int]]) -> None:  # fmt: skip
    """Sockets first (the step that can fail, before anything changed), then the rest."""
    if port is not None and (port == 0 or port != link.listen_port):
        _rebind(link, port)
    if mark is not None and mark != link.fwmark:
        try:
            for udp in link.port.ports():
                set_mark(udp.sock, mark)
        except SetupError as exc:
            raise UapiError(errno.EPERM, str(exc)) from None
        link.fwmark = mark
        log.info("%s: fwmark %s", link.name, mark or "off")
    if private is not _KEEP:
        same = link.has_private_key and private == link.iface.private_key
        link.iface.set_private_key(private)  # the same key again: a no-op, as wireguard-go
        link.has_private_key = private is not None
        if not same:
            log.info("%s: private key %s", link.name, "changed" if private else "removed")
    link.commit_reload(plan)  # the peers: SIGHUP's code (sessions of the others kept)
    changes: dict[str, Any] = {"listen_port": link.listen_port}
    if private is not _KEEP and private is not None:
        changes["private_key"] = Secret(private)
    has_fwmark = hasattr(link.cfg, "fwmark")  # the config's `fwmark` key
    auto = getattr(link, "auto_fwmark", 0)  # a full tunnel's own mark: the file says 0
    if has_fwmark:
        changes["fwmark"] = 0 if auto and link.fwmark == auto else link.fwmark
    link.cfg = dataclasses.replace(link.cfg, **changes)
    # what no config says (no key; a mark without the key) makes a reload rebuild
    link.runtime_only = not link.has_private_key or (bool(link.fwmark) and not has_fwmark)
    now = boottime()
    for key, (host, peer_port) in endpoints.items():  # set even if equal to the file's
        if link.iface.peer(key) is not None:
            endpoint = link._endpoint_of(PeerConfig(public_key=key, endpoint=(host, peer_port)))
            link.iface.update_peer(key, now, endpoint=endpoint)
    link._after_batch(now)


def _rebind(link: Any, port: int) -> None:
    """New sockets on `port` (0: random) before the old ones close; EADDRINUSE if taken."""
    old4, old6, old_port = link.sock4, link.sock6, link.listen_port
    link.sock4 = link.sock6 = None  # what _open_sockets leaves unset stays unset (no IPv6)
    try:
        link._open_sockets(port or None)  # marked with the current fwmark
    except SetupError as exc:
        for sock in (link.sock4, link.sock6):
            if sock is not None and sock not in (old4, old6):
                sock.close()
        link.sock4, link.sock6, link.listen_port = old4, old6, old_port
        raise UapiError(errno.EADDRINUSE, str(exc)) from None  # any bind failure, as wg-go
    offload = link.cfg.offload
    new = [UdpPort(s, offload, offload) if s is not None else None
           for s in (link.sock4, link.sock6)]  # fmt: skip
    for udp in link.port.replace_ports(new[0], new[1]):
        _unwatch(link, udp.fileno())
        udp.close()
    for udp in link.port.ports():
        link.watch(udp.fileno(), link.port.on_readable, udp)
    log.info("%s: listening on UDP %d", link.name, link.listen_port)


def _unwatch(link: Any, fd: int) -> None:
    link.loop.remove_reader(fd)
    if fd in link._readers:
        link._readers.remove(fd)
