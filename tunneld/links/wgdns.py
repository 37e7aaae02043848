"""Peer endpoints given as DNS names: resolved off the loop, followed when they move.

The decisions (when, and whether an answer replaces the endpoint in use) are the
sans-IO core's, tunneld/proto/reresolve.py (reresolve-dns.sh's rules). This module runs
them for one WireGuard link: lookups in the loop's executor through the link's resolver
seam (`resolve_endpoint_async`), one loop timer for the earliest deadline of all names,
a changed endpoint applied with `Interface.update_peer` and logged once.

A name that does not resolve at start is not fatal: the peer starts without an
endpoint (it can still be reached by the other side, whose packets set it by
roaming) and the name is retried with backoff.

Test-only knob (environment, read at start and logged as a warning): TUNNELD_TEST_
RERESOLVE_INTERVAL (seconds) replaces the periodic lookup's REFRESH_INTERVAL, which
also caps the retry backoff.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import Any

from tunneld.errors import SetupError
from tunneld.links.datapath import boottime
from tunneld.links.wgport import format_endpoint, peer_id
from tunneld.proto.reresolve import REFRESH_INTERVAL, EndpointName

log = logging.getLogger("tunneld.wireguard")


class EndpointNames:
    """The names of one link's peers (by public key) and their lookups."""

    def __init__(self, link: Any, interval: float | None) -> None:
        self.link = link
        self.interval = interval or REFRESH_INTERVAL
        self.names: dict[bytes, EndpointName] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def first(self, p: Any, resolve: Any) -> tuple[Any, ...] | None:
        """Start-up: the endpoint of config peer `p` (None when it has none, or when its
        name does not resolve yet: logged, retried). A literal's error still raises."""
        if p.endpoint is None:
            return None
        host, port = p.endpoint
        if not _is_name(host):
            return await resolve(p)  # type: ignore[no-any-return]
        entry = EndpointName(host, port, boottime(), self.interval)
        self.names[p.public_key] = entry
        entry.begin(boottime())
        try:
            address = await resolve(p)
        except SetupError as exc:
            delay = entry.failed(boottime())
            log.warning("%s: peer %s: %s; no endpoint until it resolves (retry in %gs)",
                        self.link.name, peer_id(p.public_key), exc, delay)  # fmt: skip
            return None
        entry.resolved(boottime(), address, None, "start")
        log.info("%s: peer %s: endpoint %s is %s", self.link.name, peer_id(p.public_key),
                 entry.name, format_endpoint(address))  # fmt: skip
        return address  # type: ignore[no-any-return]

    def sync(self, peers: Any) -> None:
        """After a reload: follow the names of `peers` (new names start from their
        reload-time answer; a peer whose endpoint is now a literal or gone is dropped)."""
        now, keep = boottime(), {}
        for p in peers:
            if p.endpoint is None or not _is_name(p.endpoint[0]):
                continue
            entry = self.names.get(p.public_key)
            if entry is None or (entry.host, entry.port) != tuple(p.endpoint):
                entry = EndpointName(p.endpoint[0], p.endpoint[1], now, self.interval)
                peer = self.link.iface.peer(p.public_key) if self.link.iface else None
                if peer is not None and peer.endpoint is not None:
                    entry.address = peer.endpoint  # resolved by prepare_reload
            keep[p.public_key] = entry
        self.names = keep
        self.arm()

    def show(self, public_key: bytes) -> dict[str, object]:
        entry = self.names.get(public_key)
        return entry.show() if entry is not None else {}

    def arm(self) -> None:
        """One loop timer for the earliest deadline of all names."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        iface = self.link.iface
        if self._closed or iface is None:
            return
        deadlines = []
        for key, entry in self.names.items():
            peer = iface.peer(key)
            at = entry.next_deadline(peer.latest_handshake_at if peer is not None else None)
            if at is not None:
                deadlines.append(at)
        if deadlines:
            delay = max(0.0, min(deadlines) - boottime())
            self._timer = self.link.loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        iface, now = self.link.iface, boottime()
        for key, entry in self.names.items():
            peer = iface.peer(key) if iface is not None else None
            if peer is None:
                continue
            reason = entry.due(now, peer.latest_handshake_at, peer.last_sent_handshake)
            if reason is not None:
                entry.begin(now)
                task = self.link.loop.create_task(self._lookup(key, entry, reason))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        self.arm()

    async def _lookup(self, key: bytes, entry: EndpointName, reason: str) -> None:
        link = self.link
        try:
            address = await link.lookup_name(entry.host, entry.port)
        except (SetupError, ValueError) as exc:  # ValueError: getaddrinfo's UnicodeError
            delay = entry.failed(boottime())
            if entry.failures == 1 or entry.address is None:
                log.warning("%s: peer %s: %s (%s lookup; retry in %gs)", link.name,
                            peer_id(key), exc, reason, delay)  # fmt: skip
        else:
            self._apply(key, entry, address, reason)
        finally:
            if entry.in_flight:
                entry.in_flight = False  # cancelled: the next deadline retries
            self.arm()

    def _apply(self, key: bytes, entry: EndpointName, address: Any, reason: str) -> None:
        link, now = self.link, boottime()
        peer = link.iface.peer(key) if link.iface is not None else None
        if self.names.get(key) is not entry or peer is None:
            return  # removed or replaced by a reload meanwhile
        if not entry.resolved(now, address, peer.endpoint, reason):
            return
        log.info("%s: peer %s: endpoint %s moved: %s -> %s (%s lookup)", link.name,
                 peer_id(key), entry.name, format_endpoint(peer.endpoint),
                 format_endpoint(address), reason)  # fmt: skip
        keepalive = peer.persistent_keepalive or None  # re-armed: a first endpoint starts it
        link.iface.update_peer(key, now, endpoint=address, persistent_keepalive=keepalive)
        link.iface.endpoint_moved(peer, now)  # an initiation in flight went elsewhere
        link.after_endpoint_change(now)

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in list(self._tasks):
            task.cancel()


def _is_name(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False
