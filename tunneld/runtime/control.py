"""The control socket: JSON lines over a Unix stream socket, mode 0600.

Request: one JSON object per line, `{"cmd": "show", "iface": null}`.
Reply: one JSON object per line, always carrying `"version": 1`; errors are
`{"version": 1, "error": "..."}`. One path per instance: a live daemon already
behind the path is an error; a stale socket left by a crashed run is replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from tunneld.errors import SetupError

log = logging.getLogger("tunneld.control")
PROTOCOL_VERSION = 1
MAX_REQUEST = 64 * 1024

Handler = Callable[[dict[str, Any]], dict[str, Any]]


def claim_socket_path(path: str) -> None:
    """Make `path` free to bind: refuse if a daemon answers there, remove it if stale."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("removing stale control socket %s", path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except OSError as exc:
        raise SetupError(f"control socket {path}: {exc.strerror}") from None
    finally:
        probe.close()
    raise SetupError(f"control socket {path}: another tunneld is running there")


class ControlServer:
    def __init__(self, path: str, handler: Handler) -> None:
        self.path, self._handler = path, handler
        self._server: asyncio.AbstractServer | None = None

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

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 0.5)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(json.dumps(self._answer(line)).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("request must be a JSON object")
            reply = self._handler(request)
        except (ValueError, KeyError, TypeError) as exc:
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
