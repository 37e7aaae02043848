"""The daemon: start every link, serve the control socket, reload on SIGHUP, stop on SIGTERM.

Theory of operation. `run()` builds links in config order; if one fails, the ones
already up are torn down and the error propagates (exit 1). Once every link is up
and the control socket is bound, READY=1 goes to systemd. Signals only set state:
SIGTERM/SIGINT set the stop event (during start-up they cancel it: what is up is
stopped again and the exit code is 0), SIGHUP schedules a reload. A SIGHUP that comes
during start-up (an etcd registry waiting for a lease, say) or during a reload is
held, and one reload runs once the daemon is up or that reload is done.

A reload is a transaction (runtime/reload.py): the whole new file is loaded and
validated (key files read), then everything that can fail is prepared without
touching the running links (in-place plans, added interfaces started beside them),
then the swap and the commit; on any error, whatever its type, what was prepared is
closed, the old links and `self.cfg` stay in force, the error is logged, and READY=1
still follows RELOADING=1 with the error in STATUS=. `self.cfg` is always the config
the running links were built from. Shutdown is bounded (STOP_TIMEOUT) so systemd
never has to SIGKILL us; a reload under way is cancelled first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from typing import Any

from tunneld import config as config_mod
from tunneld import native
from tunneld.errors import ConfigError, TunneldError
from tunneld.kernel.systemd import Notifier
from tunneld.links.base import Link, link_class
from tunneld.links.nat import NatTable
from tunneld.links.stacking import start_order
from tunneld.runtime.control import ControlServer
from tunneld.runtime.hooks import run_hooks
from tunneld.runtime.metrics import MetricsServer, loop_snapshot
from tunneld.runtime.reload import Transaction
from tunneld.runtime.uapi import UapiSockets

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
        self._up = False  # start-up done: a SIGHUP before that is held (reload_held)
        self._reload_held = False
        self._starting: asyncio.Task[None] | None = None  # run()'s start-up, until up
        self.metrics: MetricsServer | None = None
        uapi_dir = getattr(cfg.daemon, "uapi_dir", None)  # WireGuard UAPI (wg(8)), per iface
        self.uapi = UapiSockets(uapi_dir, lambda n: self.links.get(n)) if uapi_dir else None
        self.nat = NatTable(cfg.daemon.control_socket)  # masquerade/forward (links/nat.py)

    async def run(self) -> int:
        self.control.claim()  # a bad control_socket path fails before any device exists
        self.notifier.start_watchdog(self.loop)  # pings from the loop itself, also while starting
        self.notifier.extend_start(self.loop)  # a start waiting for etcd outlives TimeoutStartSec
        self._install_signals()  # SIGTERM now cancels the start; a SIGHUP is held until up
        self._starting = self.loop.create_task(self._start())
        try:
            await self._starting
        except asyncio.CancelledError:
            if not self._stop.is_set():
                raise
            log.info("stopped during start-up")  # what was up is down again (_start)
            self.notifier.stopping()
            return 0
        finally:
            self._starting = None
        log.info("tunneld up: %s (native helpers: %s)", ", ".join(self.links) or "no interfaces",
                 native.IMPLEMENTATION)  # fmt: skip
        self.notifier.ready(f"{len(self.links)} interface(s) up")
        self._up = True
        if self._reload_held:  # a SIGHUP came during start-up: run it now
            self._schedule_reload()
        await self._stop.wait()
        await self._end_reload()
        self.notifier.stopping()
        log.info("shutting down")
        await self.control.stop()
        await self._stop_uapi()
        await self._stop_metrics()
        await self.nat.stop()
        await self._stop_links()
        return 0

    async def _start(self) -> None:
        """Every link, then the control socket and the rest; on any error (or a SIGTERM,
        which cancels this) what was started is stopped again and the error propagates."""
        try:
            for name in start_order(self.cfg.interfaces):  # a VXLAN over wg0 after wg0
                iface = self.cfg.interfaces[name]
                self.notifier.status(f"starting {name} ({iface.type})")
                self.links[name] = await self._start_link(name, iface, None)
            await self.nat.start(self.cfg, self.links)  # one nft table, once the links are up
            self._start_metrics()  # before the control socket: a taken port leaves nothing
            await self.control.start()
            await self._sync_uapi()
            self._drop_privileges()  # last: every device and socket of the start is open
        except BaseException as exc:
            self.notifier.status(f"start failed: {exc or type(exc).__name__}")
            await self.control.stop()  # removes only a socket this run bound
            await self._stop_uapi()
            await self._stop_metrics()
            await self.nat.stop()
            await self._stop_links()
            raise

    async def _sync_uapi(self) -> None:
        """One UAPI socket per running WireGuard interface (after start and every reload)."""
        if self.uapi is not None:
            await self.uapi.sync(
                n for n, link in self.links.items() if link.type_name == "wireguard"
            )

    async def _stop_uapi(self) -> None:
        if self.uapi is not None:
            await self.uapi.stop()

    def _start_metrics(self) -> None:
        """[daemon] metrics_listen: /metrics reads `show` of every link on the loop per scrape."""
        listen = self.cfg.daemon.metrics_listen
        if listen is not None:
            read = lambda: {n: link.show() for n, link in self.links.items()}  # noqa: E731
            self.metrics = MetricsServer(listen, loop_snapshot(self.loop, read))
            self.metrics.start()

    def _drop_privileges(self) -> None:
        """[daemon] user: everything is open; become that user with CAP_NET_ADMIN alone."""
        user = self.cfg.daemon.user
        if user is None:
            return
        from tunneld.kernel import netlink
        from tunneld.kernel.privileges import drop_privileges

        entry = drop_privileges(user)
        netlink.renew_worker()  # capabilities are per thread: the old worker lost its own
        log.info("running as %s (uid %d), capabilities left: CAP_NET_ADMIN", user, entry.pw_uid)

    async def _stop_metrics(self) -> None:
        if self.metrics is not None:
            await self.metrics.stop()
            self.metrics = None

    def request_stop(self) -> None:
        self._stop.set()
        starting = self._starting  # during start-up: stop starting (run() returns 0)
        if starting is not None and not starting.cancelling():
            starting.cancel()

    def _install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.request_stop)
        self.loop.add_signal_handler(signal.SIGHUP, self._schedule_reload)

    def _schedule_reload(self) -> None:
        """SIGHUP: reload now; during start-up or another reload, once that is done (any
        number of SIGHUPs meanwhile make one reload, which reads the file as it is then)."""
        if not self._up or (self._reloading is not None and not self._reloading.done()):
            self._reload_held = True
            return
        self._reloading = self.loop.create_task(self._reload_while_held())

    async def _reload_while_held(self) -> None:
        while self._up:
            self._reload_held = False
            await self.reload()
            if not self._reload_held:
                return

    async def _end_reload(self) -> None:
        """Shutting down: no reload starts from now on; one under way is cancelled (it
        stops the links it started; _stop_links stops the rest)."""
        self._up = False
        task = self._reloading
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _start_link(self, name: str, iface: Any, old: Link | None) -> Link:
        """Start one link (not yet in self.links); `old`: the link it replaces, whose
        counters it takes over when the type is the same."""
        cls = link_class(iface.type)
        await run_hooks(name, "pre_up", iface.pre_up)  # a failure: SetupError, nothing made
        link = cls(iface, self.loop, old.counters if old and old.type_name == iface.type else None)
        await link.start()
        log.info("%s: %s link up", name, iface.type, extra={"iface": name, "event": "link_up"})
        await run_hooks(name, "post_up", iface.post_up)
        return link

    async def _stop_link(self, link: Link, timeout: float = STOP_TIMEOUT) -> None:
        """Stop one link within `timeout` (its down hooks have their own, runtime/hooks.py);
        never raises."""
        await run_hooks(link.name, "pre_down", link.cfg.pre_down)
        try:
            await asyncio.wait_for(link.stop(), timeout)
        except Exception:
            log.exception("%s: error while stopping", link.name)
        log.info("%s: link down", link.name, extra={"iface": link.name, "event": "link_down"})
        await run_hooks(link.name, "post_down", link.cfg.post_down)

    async def _stop_links(self) -> None:
        links, self.links = list(self.links.values()), {}
        for link in reversed(links):
            await self._stop_link(link, STOP_TIMEOUT / max(1, len(links)))

    async def reload(self) -> None:
        """SIGHUP: the new file as one transaction (runtime/reload.py). Never raises (but
        for a cancellation): RELOADING=1 is always followed by READY=1, with the outcome,
        or the error that left the running config in force, in STATUS=."""
        self.notifier.reloading()
        try:
            new = self._load_for_reload()
        except Exception as exc:
            self._reload_done("reload rejected, running config unchanged", exc)
            return
        try:
            await self.nat.prepare(new, self.links)  # `nft -c`: the new NAT rules would apply
            summary = await Transaction(self.cfg, self.links, self._start_link,
                                        self._stop_link).apply(new)  # fmt: skip
        except Exception as exc:
            self._reload_done("reload failed, running config unchanged", exc)
            return
        self.cfg = new
        try:  # committed: an error here is logged; READY=1 still ends the reload
            await self.nat.commit(new, self.links)  # never raises
            await self._sync_uapi()
        except Exception:
            log.exception("reload: error after the commit (the new config is in force)")
        logging.getLogger().setLevel(new.daemon.log_level.upper())
        log.info("reloaded: %s", summary, extra={"event": "reload"})
        self.notifier.ready(f"{len(self.links)} interface(s) up; reloaded: {summary}")

    def _load_for_reload(self) -> Any:
        new = config_mod.load(self.cfg.path)
        if new.daemon.control_socket != self.cfg.daemon.control_socket:
            raise ConfigError(
                self.cfg.path, "daemon.control_socket", "cannot change on reload; restart"
            )
        for key in ("metrics_listen", "user"):  # bound / switched once, at start
            if getattr(new.daemon, key) != getattr(self.cfg.daemon, key):
                reason = "cannot change on reload; restart"
                raise ConfigError(self.cfg.path, f"daemon.{key}", reason)
        return new

    def _reload_done(self, what: str, exc: Exception) -> None:
        fields = {"event": "reload_failed"}
        if isinstance(exc, TunneldError):
            log.error("%s: %s", what, exc, extra=fields)
        else:  # a bug or an unexpected OS error: the traceback helps
            log.error("%s: %s", what, exc, exc_info=exc, extra=fields)
        text = " ".join(str(exc).split()) or type(exc).__name__
        self.notifier.ready(f"{len(self.links)} interface(s) up; {what}: {text}")

    def handle_request(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        if cmd == "show":
            iface = request.get("iface")
            if iface is not None and iface not in self.links:
                return {"error": f"no such interface: {iface}"}
            names = [iface] if iface else list(self.links)
            interfaces = {n: self.links[n].show() for n in names}
            self.nat.annotate(interfaces)  # the NAT rules in force, per interface
            return {"native": native.IMPLEMENTATION, "interfaces": interfaces}
        if cmd == "ping":
            return {"ok": True}
        if cmd == "test_block_loop" and os.environ.get("TUNNELD_TEST_HOOKS") == "1":
            time.sleep(min(float(request.get("seconds", 1.0)), 10.0))  # tests: a wedged loop
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
