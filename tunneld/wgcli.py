"""`tunneld-wg [-f|--foreground] IFACE`: a userspace WireGuard for wg-quick, like wireguard-go.

Contract (what wg-quick(8) relies on when WG_QUICK_USERSPACE_IMPLEMENTATION=tunneld-wg):
create the tun device IFACE with no key, no peers and no address, listening on a random
UDP port; serve the WireGuard UAPI (wireguard.com/xplatform) on
/var/run/wireguard/IFACE.sock; return to the caller only once that socket accepts
requests (wg-quick runs `wg setconf` right after), going to the background unless
`-f`/`--foreground` or WG_PROCESS_FOREGROUND=1; exit, removing the socket, when the
device is deleted (`wg-quick down` runs `ip link delete`), when the socket is removed,
or on SIGTERM/SIGINT. Routes and addresses are wg-quick's business: this process adds
none (allowed ips go into the cryptokey table only), as wireguard-go.

Background: fork; the child starts a session and forks again; the grandchild opens
the device and the socket and reports "ready" (or the error) through a pipe, and the
first process exits 0 (or prints the error and exits 1). In the background, stdin and
stdout go to /dev/null, and stderr too unless LOG_LEVEL is set (wireguard-go's
variable: debug/verbose, info, error), so a caller reading our output through a pipe
is not kept waiting. Exit codes: 0, 1 (setup failure), 2 (usage).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

from tunneld.config import Secret, WireguardConfig
from tunneld.errors import SetupError
from tunneld.kernel.tun import device_mtu
from tunneld.proto.wg import generate_private_key
from tunneld.runtime.uapi import DEFAULT_DIR, UapiServer, socket_path

log = logging.getLogger("tunneld.wg")
WATCH_INTERVAL = 0.5  # seconds between checks that the device and the socket still exist
READY_TIMEOUT = 30.0  # seconds the first process waits for the background one
_LEVELS = {"debug": "debug", "verbose": "debug", "info": "info", "error": "error"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tunneld-wg",
        description="Userspace WireGuard for wg-quick: creates IFACE and serves the UAPI on "
        f"{DEFAULT_DIR}/IFACE.sock (WG_QUICK_USERSPACE_IMPLEMENTATION=tunneld-wg).",
    )
    parser.add_argument("-f", "--foreground", action="store_true",
                        help="stay in the foreground (also WG_PROCESS_FOREGROUND=1)")  # fmt: skip
    parser.add_argument("iface", metavar="IFACE")
    args = parser.parse_args(argv)
    name = args.iface
    if not 0 < len(name.encode()) < 16 or "/" in name or name in (".", ".."):
        parser.error(f"{name!r} is not a valid interface name (1..15 bytes, no '/')")
    foreground = args.foreground or os.environ.get("WG_PROCESS_FOREGROUND") == "1"
    level = _LEVELS.get(os.environ.get("LOG_LEVEL", "").lower(), "info")
    if foreground:
        _setup_logging(level)
        return _run(name, None)
    return _daemonize(name, level)


def _setup_logging(level: str) -> None:
    from tunneld.runtime import logs

    logs.setup(level)
    logging.getLogger("pyroute2").setLevel(logging.WARNING)  # its debug lines are per message


def _daemonize(name: str, level: str) -> int:
    """Fork twice; the first process returns once the grandchild is serving (module doc)."""
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        return _wait_ready(read_end, name)
    os.close(read_end)
    os.chdir("/")
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    _detach_stdio(keep_stderr="LOG_LEVEL" in os.environ)
    _setup_logging(level)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    code = _run(name, write_end)
    os._exit(code)


def _wait_ready(fd: int, name: str) -> int:
    import select

    with os.fdopen(fd, "rb") as pipe:
        ready, _, _ = select.select([pipe], [], [], READY_TIMEOUT)
        message = pipe.read().decode(errors="replace").strip() if ready else ""
    if message == "ready":
        return 0
    print(f"tunneld-wg: {name}: {message or 'the background process did not start'}",
          file=sys.stderr)  # fmt: skip
    return 1


def _detach_stdio(keep_stderr: bool) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1) if keep_stderr else (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def _run(name: str, ready_fd: int | None) -> int:
    from tunneld.runtime.loop import new_event_loop

    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(WgProcess(name, loop).run(ready_fd))
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


class WgProcess:
    """One tunneld-wg interface: a keyless WireGuard link and its UAPI server."""

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop,
                 uapi_dir: str = DEFAULT_DIR) -> None:  # fmt: skip
        self.name, self.loop = name, loop
        self.path = socket_path(uapi_dir, name)
        self.link: Any = None
        self.server = UapiServer(self.path, lambda: self.link)
        self._stop = asyncio.Event()
        self.why = "stopped"

    async def run(self, ready_fd: int | None) -> int:
        try:
            await self._start()
        except (SetupError, OSError) as exc:
            await self._teardown()
            return _report(ready_fd, f"{exc}", 1)
        _report(ready_fd, "ready", 0)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self._request_stop, f"signal {sig.name}")
        watch = self.loop.create_task(self._watch())
        await self._stop.wait()
        watch.cancel()
        log.info("%s: exiting (%s)", self.name, self.why)
        await self._teardown()
        return 0

    async def _start(self) -> None:
        from tunneld.links.wireguard import WireguardLink

        # No key yet (wg-quick sets it): a placeholder the link never uses for a handshake.
        cfg = WireguardConfig(name=self.name, mtu=1420,  # wireguard-go's; wg-quick sets its own
                              private_key=Secret(generate_private_key(os.urandom)))  # fmt: skip
        link = WireguardLink(cfg, self.loop)
        link.has_private_key = False
        link.kernel_routes = False  # wg-quick adds the routes (and the policy rules)
        await link.start()
        self.link = link
        self.ifindex = socket.if_nametoindex(link.dev.name)
        await self.server.start()
        st = os.lstat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        log.info("%s: up, UAPI on %s, UDP port %d", self.name, self.path, link.listen_port)

    def _request_stop(self, why: str) -> None:
        self.why = why
        self._stop.set()

    async def _watch(self) -> None:
        """Stop when the device is gone (or replaced) or our socket was removed."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            try:
                alive = socket.if_nametoindex(self.name) == self.ifindex
            except OSError:
                alive = False
            if not alive:
                self._request_stop("device deleted")
                return
            self._follow_mtu()
            try:
                st = os.lstat(self.path)
                ours = (st.st_dev, st.st_ino) == self._inode
            except FileNotFoundError:
                ours = False
            if not ours:
                self._request_stop("UAPI socket removed")
                return

    def _follow_mtu(self) -> None:
        """wg-quick sets the MTU after we started (`ip link set mtu`): pad up to it."""
        mtu, link = device_mtu(self.name), self.link
        if mtu and link is not None and mtu != link.mtu:
            link.mtu = link.iface.mtu = mtu
            log.info("%s: device MTU now %d", self.name, mtu)

    async def _teardown(self) -> None:
        await self.server.stop()
        if self.link is not None:
            link, self.link = self.link, None
            with contextlib.suppress(Exception):
                await link.stop()


def _report(fd: int | None, message: str, code: int) -> int:
    """Tell the waiting first process (background mode), or stderr (foreground errors)."""
    if fd is None:
        if code:
            print(f"tunneld-wg: {message}", file=sys.stderr)
        return code
    with contextlib.suppress(OSError):
        os.write(fd, message.encode() + b"\n")
        os.close(fd)
    return code


if __name__ == "__main__":
    sys.exit(main())
