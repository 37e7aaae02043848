"""The control socket: JSON lines over a Unix stream socket, mode 0600.

Request: one JSON object per line, `{"cmd": "show", "iface": null}`.
Reply: one JSON object per line, always carrying `"version": 1`; errors are
`{"version": 1, "error": "..."}`. One path per instance: a live daemon already
behind the path is an error; a stale socket left by a crashed run (ours, nothing
answering) is replaced; anything else at the path is refused and left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
from collections.abc import Callable
from typing import Any

from tunneld.errors import SetupError

log = logging.getLogger("tunneld.control")
PROTOCOL_VERSION = 1
MAX_REQUEST = 64 * 1024  # bytes per request line
MAX_CLIENTS = 16  # concurrent connections
READ_TIMEOUT = 10.0  # seconds a connection may stay silent
WRITE_TIMEOUT = 10.0  # seconds a client may take to read a reply

Handler = Callable[[dict[str, Any]], dict[str, Any]]


_KINDS = ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
          (stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))  # fmt: skip


def claim_socket_path(path: str) -> None:
    """Make `path` free to bind, or raise SetupError touching nothing.

    Only a stale socket may be removed: a Unix socket (not a symlink to one) owned by our
    uid that nothing answers (connect gives ECONNREFUSED). A regular file, a directory, a
    symlink, a live socket or another user's socket is refused.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:  # nothing there to refuse: make its directory if missing
        try:
            os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
        except OSError as exc:
            raise SetupError(
                f"control socket {path}: cannot create its directory: {exc.strerror or exc}"
            ) from None
        return
    except NotADirectoryError:
        raise SetupError(
            f"control socket {path}: a parent of the path is not a directory"
        ) from None
    if not stat.S_ISSOCK(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a socket")
        raise SetupError(
            f"control socket {path}: the path is {kind}, not a stale socket; refusing to "
            "replace it (remove it yourself or choose another daemon.control_socket)"
        )
    if st.st_uid != os.geteuid():
        raise SetupError(
            f"control socket {path}: the socket is owned by uid {st.st_uid}, not by us "
            f"(uid {os.geteuid()}); refusing to replace it"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        _remove_stale(path, st)
        return
    except FileNotFoundError:
        return
    except OSError as exc:
        raise SetupError(f"control socket {path}: {exc.strerror or exc}") from None
    finally:
        probe.close()
    raise SetupError(f"control socket {path}: another tunneld is running there")


def _remove_stale(path: str, seen: os.stat_result) -> None:
    """Unlink the stale socket, unless the path changed since we looked at it."""
    with contextlib.suppress(FileNotFoundError):
        now = os.lstat(path)
        if (now.st_dev, now.st_ino) != (seen.st_dev, seen.st_ino):
            raise SetupError(f"control socket {path}: changed while being checked; try again")
        log.info("removing stale control socket %s", path)
        os.unlink(path)


class ControlServer:
    """The daemon's side. Bounded: at most `max_clients` connections at once (one more is
    answered with an error and closed), requests of at most MAX_REQUEST bytes (a longer
    line gets an error and the connection is closed), and a client that sends nothing for
    `read_timeout` seconds, or does not read its reply within WRITE_TIMEOUT, is dropped."""

    def __init__(
        self,
        path: str,
        handler: Handler,
        max_clients: int = MAX_CLIENTS,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        self.path, self._handler = path, handler
        self.max_clients, self.read_timeout = max_clients, read_timeout
        self.clients = 0
        self.refused = 0
        self._server: asyncio.AbstractServer | None = None
        self._inode: tuple[int, int] | None = None

    def claim(self) -> None:
        """Refuse (SetupError) a path that is not free or our own stale socket."""
        claim_socket_path(self.path)

    async def start(self) -> None:
        claim_socket_path(self.path)
        old_umask = os.umask(0o177)  # the socket is born 0600: no window with a wider mode
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=self.path, limit=MAX_REQUEST
            )
        except OSError as exc:
            raise SetupError(f"control socket {self.path}: {exc.strerror}") from None
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        st = os.lstat(self.path)
        self._inode = (st.st_dev, st.st_ino)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 0.5)
        # PermissionError: `[daemon] user` cannot write the root-owned directory; the next
        # start replaces our stale socket (and systemd removes its RuntimeDirectory).
        with contextlib.suppress(FileNotFoundError, PermissionError):
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:  # remove our socket, nothing else
                os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.clients >= self.max_clients:
            self.refused += 1
            writer.write(self._error(f"too many control clients (limit {self.max_clients})"))
            writer.close()
            return
        self.clients += 1
        try:
            while line := await asyncio.wait_for(reader.readline(), self.read_timeout):
                writer.write(json.dumps(self._answer(line)).encode() + b"\n")
                await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
        except ValueError:  # readline's LimitOverrunError: the line is longer than the limit
            writer.write(self._error(f"request longer than {MAX_REQUEST} bytes"))
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            self.clients -= 1
            writer.close()

    @staticmethod
    def _error(text: str) -> bytes:
        return json.dumps({"version": PROTOCOL_VERSION, "error": text}).encode() + b"\n"

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("request must be a JSON object")
            reply = self._handler(request)
        except (ValueError, KeyError, TypeError, RecursionError) as exc:  # nested too deep
            reply = {"error": f"bad request: {exc}"}
        except Exception as exc:  # a bug must not take the daemon down
            log.exception("control request failed")
            reply = {"error": f"internal error: {exc}"}
        return {"version": PROTOCOL_VERSION, **reply}


def request(path: str, message: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Client side: send one request, read one reply. Raises SetupError with a clear cause."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        sock.sendall(json.dumps(message).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    except FileNotFoundError:
        raise SetupError(f"no tunneld control socket at {path} (is the daemon running?)") from None
    except ConnectionRefusedError:
        raise SetupError(f"no daemon behind {path} (stale socket)") from None
    except PermissionError:
        raise SetupError(
            f"{path}: permission denied (the socket is 0600; run as its owner)"
        ) from None
    except OSError as exc:
        raise SetupError(f"control socket {path}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    try:
        reply: dict[str, Any] = json.loads(data)
    except ValueError:
        raise SetupError(f"control socket {path}: malformed reply") from None
    return reply
