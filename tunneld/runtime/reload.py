"""SIGHUP as a transaction: the difference between the running config and a new one, applied
all or nothing (DESIGN.md "A SIGHUP with a broken config changes nothing"; issue 8).

Theory of operation. The daemon hands over the running config, its links (the dict it
serves `show` from, kept true at every await) and how to start and stop one link.
`Transaction.apply(new)` has three phases:

1. Prepare, touching nothing that runs. Each interface of the new file is unchanged
   (skipped), added, changed in place (`Link.prepare_reload` returns a plan: names are
   resolved and tables validated here), or rebuilt (a new VNI, port, type...; what can be
   checked before the old link is gone is, by `Link.check_rebuild`). Added
   interfaces are started now, beside the running ones: their devices and sockets open
   while the old links still forward. One that fails because it may need what a removed
   or rebuilt link holds (the same device name or UDP port) waits for phase 2; any other
   failure stops what was started and fails the reload.
2. Swap, the only destructive step, taken only when something needs it: removed links
   are stopped first when a waiting start or a rebuild may need their name or port, each
   rebuilt link is stopped and its successor started with the same counters, and the
   waiting starts run.
   A failure stops every new link and starts the old ones again from their own config
   (same counters; a restarted WireGuard link makes a new handshake), so the old config
   stays in force.
3. Commit, which cannot fail: the in-place plans are applied (peers, FDB entries, hosts,
   flood lists change; sessions, counters and traffic stay), the link dict takes the new
   file's order, then the remaining removed links are stopped.

Any exception from phases 1 and 2 leaves the running config and links as they were and
propagates to the daemon, which logs it and reports it in STATUS=. A cancellation (the
daemon stopping mid-reload) stops the new links and restores nothing.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tunneld.errors import SetupError
from tunneld.links.base import Link, link_class
from tunneld.links.stacking import start_order

log = logging.getLogger("tunneld")

StartLink = Callable[[str, Any, "Link | None"], Awaitable[Link]]  # (name, iface cfg, old)
StopLink = Callable[[Link], Awaitable[None]]  # never raises


@dataclass
class Diff:
    """What a new file changes, by interface name (in the new file's order)."""

    added: dict[str, Any] = field(default_factory=dict)
    in_place: dict[str, tuple[Link, Any]] = field(default_factory=dict)  # (link, plan)
    rebuilt: dict[str, Any] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{what} {', '.join(names)}" for what, names in (
            ("added", list(self.added)), ("changed", list(self.in_place)),
            ("rebuilt", list(self.rebuilt)), ("removed", self.removed)) if names]  # fmt: skip
        return "; ".join(parts) or "no interface changed"


async def _prepare(link: Link, iface: Any) -> Any | None:
    """`link.prepare_reload(iface)`, awaited when a link prepares asynchronously (a name
    resolved off the loop, say)."""
    return await _maybe_await(link.prepare_reload(iface))


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _claims(cfg: Any) -> set[Any]:
    """What a link holds that another cannot take: its device name and UDP ports."""
    ports = {getattr(cfg, "port", None), getattr(cfg, "listen_port", None)} - {None}
    return {("name", cfg.name), *(("port", p) for p in ports)}


class Transaction:
    def __init__(self, running: Any, links: dict[str, Link], start: StartLink,
                 stop: StopLink) -> None:  # fmt: skip
        self.running, self.links, self.start, self.stop = running, links, start, stop
        self._fresh: dict[str, Link] = {}  # started by this transaction, not yet committed
        self._stopped: dict[str, Link] = {}  # running links taken down in phase 2

    async def apply(self, new: Any) -> str:
        """Apply `new` (a validated Config) or raise, changing nothing. Returns a summary."""
        diff = await self._diff(new)
        try:
            waiting = await self._start_added(diff)
            await self._swap(diff, waiting)
        except asyncio.CancelledError:
            await self._stop_fresh()
            raise
        except BaseException:
            await self._roll_back()
            raise
        await self._commit(new, diff)
        return diff.summary()

    # --- phase 1: prepare ------------------------------------------------------------------

    async def _diff(self, new: Any) -> Diff:
        diff, old = Diff(), self.running.interfaces
        for name in start_order(new.interfaces):  # a VXLAN over wg0 after wg0 (stacking.py)
            iface, link = new.interfaces[name], self.links.get(name)
            if link is None:
                diff.added[name] = iface
            elif old.get(name) == iface and not link.drifted(iface):
                continue  # unchanged (a link changed at runtime, by wg set, re-applies it)
            elif link.type_name != iface.type or (plan := await _prepare(link, iface)) is None:
                await _maybe_await(link_class(iface.type).check_rebuild(iface))
                diff.rebuilt[name] = iface
            else:
                diff.in_place[name] = (link, plan)
        diff.removed = [name for name in self.links if name not in new.interfaces]
        return diff

    async def _start_added(self, diff: Diff) -> dict[str, Any]:
        """Start the added interfaces beside the running ones; returns those that must wait
        for phase 2 (they failed and may need what a removed or rebuilt link holds)."""
        freed: set[Any] = set()
        for name in [*diff.removed, *diff.rebuilt]:
            freed |= _claims(self.links[name].cfg)
        waiting: dict[str, Any] = {}
        for name, iface in diff.added.items():
            try:
                self._fresh[name] = await self.start(name, iface, None)
            except SetupError as exc:
                if not _claims(iface) & freed:
                    raise
                log.info("%s: waits for the links it replaces (%s)", name, exc)
                waiting[name] = iface
        return waiting

    # --- phase 2: swap ---------------------------------------------------------------------

    async def _swap(self, diff: Diff, waiting: dict[str, Any]) -> None:
        if waiting or diff.rebuilt:  # a new link may need what a removed one holds
            for name in diff.removed:
                await self._take_down(name)
        for name, iface in diff.rebuilt.items():
            old = await self._take_down(name)
            self._fresh[name] = await self.start(name, iface, old)
        for name, iface in waiting.items():
            self._fresh[name] = await self.start(name, iface, None)

    async def _take_down(self, name: str) -> Link:
        link = self.links.pop(name)
        self._stopped[name] = link
        await self.stop(link)
        return link

    async def _stop_fresh(self) -> None:
        fresh, self._fresh = self._fresh, {}
        for link in reversed(fresh.values()):
            await self.stop(link)

    async def _roll_back(self) -> None:
        """Stop the new links, start the old ones that phase 2 took down (config order)."""
        await self._stop_fresh()
        for name in [n for n in self.running.interfaces if n in self._stopped]:
            old = self._stopped.pop(name)
            try:
                self.links[name] = await self.start(name, old.cfg, old)
                log.info("%s: restored with the running config", name)
            except Exception:
                log.exception("%s: could not be restored after the failed reload", name)
        self._reorder(self.running)

    # --- phase 3: commit -------------------------------------------------------------------

    async def _commit(self, new: Any, diff: Diff) -> None:
        for name, (link, plan) in diff.in_place.items():
            try:
                link.commit_reload(plan)
                await link.apply_kernel()
                log.info("%s: reloaded in place", name)
            except Exception:  # a bug: commit must not fail; keep going with the others
                log.exception("%s: error applying the new config in place", name)
        self.links.update(self._fresh)
        for name in diff.rebuilt:
            log.info("%s: rebuilt for the new config", name)
        for name in diff.added:
            log.info("%s: added", name)
        removed = [self.links.pop(n) for n in diff.removed if n in self.links]
        self._fresh, self._stopped = {}, {}
        self._reorder(new)
        for link in removed:  # `stop` never raises: the commit is done either way
            await self.stop(link)
        for name in diff.removed:
            log.info("%s: removed", name)

    def _reorder(self, cfg: Any) -> None:
        """The link dict in `cfg`'s order (show lists interfaces as the file does)."""
        order = [n for n in cfg.interfaces if n in self.links]
        items = [(n, self.links[n]) for n in order] + [
            (n, link) for n, link in self.links.items() if n not in cfg.interfaces
        ]
        self.links.clear()
        self.links.update(items)
