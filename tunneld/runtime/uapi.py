"""The WireGuard UAPI sockets: `<dir>/<IFACE>.sock`, as wireguard-go serves them for wg(8).

Spec: wireguard.com/xplatform "Configuration Protocol" (the codec and its errnos:
tunneld/proto/wg/uapi.py; applying a set: tunneld/links/wguapi.py).

Theory of operation. `UapiServer` is one Unix stream socket for one interface. Each
connection gets a `UapiReader`; every complete request is answered in order (`get=1`:
the state and errno=0; `set=1`: errno=0 once applied, or the error's errno), so wg(8),
which sends one request and reads to the `errno=` line, and clients that send several
requests on one connection both work. The link is looked up per request through
`get_link()`, so a link rebuilt by a reload is served without a new socket. Bounds:
at most `max_clients` connections at once (more are closed at once), requests of at
most MAX_REQUEST_BYTES / MAX_LINES (else errno=-EMSGSIZE and close), and a connection
silent for `read_timeout` seconds is closed. The socket is born 0600 (umask) in a
directory created 0700 when missing; a path that is not a stale socket of ours is
refused and left alone; stop() removes our socket and nothing else.

`UapiSockets` keeps one server per WireGuard interface of the daemon: `sync(names)`
after start and after every reload opens the missing ones and closes the gone ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
from collections.abc import Callable, Iterable
from typing import Any

from tunneld.errors import SetupError
from tunneld.proto.wg.uapi import GET, UapiError, UapiReader, render_errno, render_get

log = logging.getLogger("tunneld.uapi")
DEFAULT_DIR = "/var/run/wireguard"  # where wg(8) and wg-quick look (wireguard-tools ipc.h)
MAX_CLIENTS = 16
READ_TIMEOUT = 10.0  # seconds a connection may stay silent
WRITE_TIMEOUT = 10.0  # seconds a client may take to read an answer
ERRNO_UNKNOWN = 55  # wireguard-go's IpcErrorUnknown (-55, ENOANO): an unexpected failure


def socket_path(directory: str, iface: str) -> str:
    return os.path.join(directory, f"{iface}.sock")


def claim_path(path: str) -> None:
    """Make `path` free to bind (creating its directory 0700), or raise SetupError touching
    nothing: only a socket of our uid that nothing answers (ECONNREFUSED) is removed."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise SetupError(f"UAPI socket directory {directory}: {exc.strerror}") from None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
        raise SetupError(
            f"UAPI socket {path}: the path exists and is not a stale socket of ours; "
            "refusing to replace it (remove it or choose another uapi_dir)"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        with contextlib.suppress(FileNotFoundError):
            now = os.lstat(path)
            if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                log.info("removing stale UAPI socket %s", path)
                os.unlink(path)
        return
    except OSError as exc:
        raise SetupError(f"UAPI socket {path}: {exc.strerror or exc}") from None
    finally:
        probe.close()
    raise SetupError(f"UAPI socket {path}: another process serves this interface")


class UapiServer:
    """One interface's UAPI socket (module docstring). `get_link()` returns the running
    WireguardLink (uapi_get / uapi_set) or None while there is none."""

    def __init__(
        self,
        path: str,
        get_link: Callable[[], Any],
        *,
        max_clients: int = MAX_CLIENTS,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        self.path, self._get_link = path, get_link
        self.max_clients, self.read_timeout = max_clients, read_timeout
        self.clients = 0
        self.refused = 0
        self.requests = 0
        self.errors = 0  # requests answered with a nonzero errno
        self._server: asyncio.AbstractServer | None = None
        self._inode: tuple[int, int] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        claim_path(self.path)
        old_umask = os.umask(0o177)  # born 0600: no window with a wider mode
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=self.path)
        except OSError as exc:
            raise SetupError(f"UAPI socket {self.path}: {exc.strerror}") from None
        finally:
            os.umask(old_umask)
        st = os.lstat(self.path)
        self._inode = (st.st_dev, st.st_ino)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        # PermissionError: after `[daemon] user` the root-owned directory is not ours to
        # write; the socket stays (root's, 0600) and the next start removes it as stale
        with contextlib.suppress(FileNotFoundError, PermissionError):
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:  # ours, nothing else
                os.unlink(self.path)
        self._inode = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.clients >= self.max_clients:
            self.refused += 1
            writer.close()
            return
        self.clients += 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._converse(reader, writer)
        except (TimeoutError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.clients -= 1
            if task is not None:
                self._tasks.discard(task)
            writer.close()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = UapiReader()
        while True:
            data = await asyncio.wait_for(reader.read(65536), self.read_timeout)
            if not data:
                with contextlib.suppress(UapiError):
                    request = parser.finish()
                    if request is not None:
                        await self._answer(request)  # cut off by EOF: applied, as wireguard-go
                return
            parser.feed(data)
            while True:
                try:
                    request = parser.next_request()
                except UapiError as exc:
                    self.errors += 1
                    log.warning("UAPI %s: %s (errno %d)", self.path, exc.reason, -exc.errno)
                    writer.write(render_errno(exc.errno))
                    await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
                    if exc.fatal:
                        return
                    continue
                if request is None:
                    break
                writer.write(await self._answer(request))
                await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)

    async def _answer(self, request: Any) -> bytes:
        self.requests += 1
        link = self._get_link()
        try:
            if link is None:
                raise UapiError(errno.ENODEV, "the interface is not running")
            if request is GET:
                return render_get(link.uapi_get())
            link.uapi_set(request)
            await link.apply_kernel()  # routes and rules, off the loop (wg set allowed-ips)
            return render_errno(0)
        except UapiError as exc:
            self.errors += 1
            log.warning("UAPI %s: %s (errno %d)", self.path, exc.reason, -exc.errno)
            return render_errno(exc.errno)
        except Exception:
            self.errors += 1
            log.exception("UAPI %s: unexpected failure", self.path)
            return render_errno(ERRNO_UNKNOWN)


class UapiSockets:
    """The daemon's UAPI servers, one per WireGuard interface (module docstring)."""

    def __init__(self, directory: str, lookup: Callable[[str], Any]) -> None:
        """`lookup(name)`: the running link of that name, or None."""
        self.directory, self._lookup = directory, lookup
        self.servers: dict[str, UapiServer] = {}

    async def sync(self, names: Iterable[str]) -> None:
        """Serve exactly `names`; a socket that cannot be opened is logged, not fatal."""
        wanted = set(names)
        for name in [n for n in self.servers if n not in wanted]:
            await self.servers.pop(name).stop()
        for name in sorted(wanted - self.servers.keys()):
            server = UapiServer(socket_path(self.directory, name),
                                lambda n=name: self._lookup(n))  # fmt: skip
            try:
                await server.start()
            except SetupError as exc:
                log.error("%s: no UAPI socket (wg(8) cannot reach it): %s", name, exc)
                continue
            self.servers[name] = server
            log.info("%s: UAPI on %s", name, server.path)

    async def stop(self) -> None:
        await self.sync(())
