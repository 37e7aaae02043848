"""The daemon: start every link, serve the control socket, reload on SIGHUP, stop on SIGTERM.

Theory of operation. `run()` builds links in config order; if one fails, the ones
already up are torn down and the error propagates (exit 1). Once every link is up
and the control socket is bound, READY=1 goes to systemd. Signals only set state:
SIGTERM/SIGINT set the stop event, SIGHUP schedules a reload. A reload is a
transaction: the whole new file is validated first, and any error leaves the
running config in force. Shutdown is bounded (STOP_TIMEOUT) so systemd never has
to SIGKILL us.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

from tunneld import config as config_mod
from tunneld import native
from tunneld.errors import ConfigError, SetupError, TunneldError
from tunneld.kernel.systemd import Notifier
from tunneld.links.base import Link, link_class
from tunneld.runtime.control import ControlServer
from tunneld.runtime.metrics import MetricsServer, loop_snapshot

log = logging.getLogger("tunneld")
STOP_TIMEOUT = 1.5


class Daemon:
    def __init__(self, cfg: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.cfg = cfg
        self.loop = loop
        self.links: dict[str, Link] = {}
        self.notifier = Notifier()
        self.control = ControlServer(cfg.daemon.control_socket, self.handle_request)
        self._stop = asyncio.Event()
        self._reloading: asyncio.Task[None] | None = None
        self.metrics: MetricsServer | None = None

    async def run(self) -> int:
        self.control.claim()  # a bad control_socket path fails before any device exists
        try:
            for name, iface in self.cfg.interfaces.items():
                await self._start_link(name, iface, None)
            await self.control.start()
            self._start_metrics()
        except BaseException:
            await self._stop_metrics()
            await self._stop_links()
            raise
        self._install_signals()
        log.info("tunneld up: %s (native helpers: %s)", ", ".join(self.links) or "no interfaces",
                 native.IMPLEMENTATION)  # fmt: skip
        self.notifier.ready(f"{len(self.links)} interface(s) up")
        await self._stop.wait()
        self.notifier.stopping()
        log.info("shutting down")
        await self.control.stop()
        await self._stop_metrics()
        await self._stop_links()
        return 0

    def _start_metrics(self) -> None:
        """[daemon] metrics_listen: /metrics reads `show` of every link on the loop per scrape."""
        listen = self.cfg.daemon.metrics_listen
        if listen is not None:
            read = lambda: {n: link.show() for n, link in self.links.items()}  # noqa: E731
            self.metrics = MetricsServer(listen, loop_snapshot(self.loop, read))
            self.metrics.start()

    async def _stop_metrics(self) -> None:
        if self.metrics is not None:
            await self.metrics.stop()
            self.metrics = None

    def request_stop(self) -> None:
        self._stop.set()

    def _install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.request_stop)
        self.loop.add_signal_handler(signal.SIGHUP, self._schedule_reload)

    def _schedule_reload(self) -> None:
        if self._reloading is None or self._reloading.done():
            self._reloading = self.loop.create_task(self.reload())

    async def _start_link(self, name: str, iface: Any, old: Link | None) -> None:
        cls = link_class(iface.type)
        link = cls(iface, self.loop, old.counters if old and old.type_name == iface.type else None)
        await link.start()
        self.links[name] = link
        log.info("%s: %s link up", name, iface.type)

    async def _stop_links(self) -> None:
        links, self.links = list(self.links.values()), {}
        for link in reversed(links):
            try:
                await asyncio.wait_for(link.stop(), STOP_TIMEOUT / max(1, len(links)))
            except Exception:
                log.exception("%s: error while stopping", link.name)

    async def reload(self) -> None:
        """SIGHUP: validate the whole new config, then apply the difference."""
        self.notifier.reloading()
        try:
            new = config_mod.load(self.cfg.path)
            if new.daemon.control_socket != self.cfg.daemon.control_socket:
                raise ConfigError(
                    self.cfg.path, "daemon.control_socket", "cannot change on reload; restart"
                )
        except TunneldError as exc:
            log.error("reload rejected, running config unchanged: %s", exc)
            self.notifier.ready("reload rejected")
            return
        try:
            await self._apply(new)
        except SetupError as exc:
            log.error("reload partly failed: %s", exc)
        self.notifier.ready(f"{len(self.links)} interface(s) up")

    async def _apply(self, new: Any) -> None:
        old_ifaces = self.cfg.interfaces
        self.cfg = new
        logging.getLogger().setLevel(new.daemon.log_level.upper())
        for name in [n for n in self.links if n not in new.interfaces]:
            link = self.links.pop(name)
            await link.stop()
            log.info("%s: removed", name)
        for name, iface in new.interfaces.items():
            link = self.links.get(name)
            if link is None:
                await self._start_link(name, iface, None)
            elif old_ifaces.get(name) == iface:
                continue
            elif link.type_name == iface.type and link.reload(iface):
                log.info("%s: reloaded in place", name)
            else:
                await link.stop()
                del self.links[name]
                await self._start_link(name, iface, link)
                log.info("%s: rebuilt for the new config", name)

    def handle_request(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        if cmd == "show":
            iface = request.get("iface")
            if iface is not None and iface not in self.links:
                return {"error": f"no such interface: {iface}"}
            names = [iface] if iface else list(self.links)
            return {"native": native.IMPLEMENTATION,
                    "interfaces": {n: self.links[n].show() for n in names}}  # fmt: skip
        if cmd == "ping":
            return {"ok": True}
        return {"error": f"unknown command: {cmd!r}"}


def run(cfg: Any) -> int:
    """Run the daemon in the foreground until SIGTERM/SIGINT; returns the exit code."""
    from tunneld.runtime.loop import new_event_loop

    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    daemon = Daemon(cfg, loop)
    try:
        return loop.run_until_complete(daemon.run())
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
