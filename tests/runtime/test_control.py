"""The control socket on real asyncio: mode, stale-socket takeover, one daemon per path."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat

import pytest

from tunneld.errors import SetupError
from tunneld.runtime.control import ControlServer, claim_socket_path, request


def _serve(path: str):
    return ControlServer(path, lambda req: {"echo": req.get("cmd")})


def test_reply_carries_version_and_socket_is_0600(tmp_path):
    path = str(tmp_path / "ctl.sock")

    async def scenario():
        server = _serve(path)
        await server.start()
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
            reply = await asyncio.to_thread(request, path, {"cmd": "show"})
            return mode, reply
        finally:
            await server.stop()

    mode, reply = asyncio.run(scenario())
    assert mode == 0o600
    assert reply == {"version": 1, "echo": "show"}
    assert not os.path.exists(path), "socket removed on stop"


def test_stale_socket_from_crashed_run_is_replaced(tmp_path):
    path = str(tmp_path / "ctl.sock")
    crashed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    crashed.bind(path)
    crashed.close()  # the file stays, nobody listens: what a SIGKILLed daemon leaves
    claim_socket_path(path)
    assert not os.path.exists(path)


def test_live_socket_is_refused(tmp_path):
    path = str(tmp_path / "ctl.sock")
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(path)
    live.listen()
    try:
        with pytest.raises(SetupError, match="another tunneld"):
            claim_socket_path(path)
    finally:
        live.close()


def test_garbage_request_gets_an_error_not_a_crash(tmp_path):
    path = str(tmp_path / "ctl.sock")

    async def scenario():
        server = _serve(path)
        await server.start()
        try:

            def raw() -> bytes:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(2)
                    s.connect(path)
                    s.sendall(b"not json\n[1,2]\n")
                    data = b""
                    while data.count(b"\n") < 2:
                        data += s.recv(4096)
                    return data

            first = await asyncio.to_thread(raw)
            after = await asyncio.to_thread(request, path, {"cmd": "x"})
            return first, after
        finally:
            await server.stop()

    first, after = asyncio.run(scenario())
    lines = first.splitlines()
    assert all(b'"error"' in line and b'"version": 1' in line for line in lines)
    assert after["echo"] == "x"


def test_client_without_daemon_gets_a_clear_error(tmp_path):
    with pytest.raises(SetupError, match="is the daemon running"):
        request(str(tmp_path / "missing.sock"), {"cmd": "show"})


def _connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    s.connect(path)
    return s


def _read_line(s: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_clients_beyond_the_limit_are_refused_and_the_rest_still_served(tmp_path):
    path = str(tmp_path / "ctl.sock")

    async def scenario():
        server = ControlServer(path, lambda req: {"ok": True}, max_clients=3, read_timeout=5)
        await server.start()
        try:

            def flood():
                held = [_connect(path) for _ in range(3)]
                for s in held:  # each held connection is being served
                    s.sendall(b'{"cmd": "ping"}\n')
                    assert b'"ok": true' in _read_line(s)
                extra = [_connect(path) for _ in range(20)]
                replies = [_read_line(s) for s in extra]
                for s in extra + held[1:]:
                    s.close()
                held[0].sendall(b'{"cmd": "ping"}\n')
                still = _read_line(held[0])
                held[0].close()
                return replies, still

            replies, still = await asyncio.to_thread(flood)
            return replies, still, server.refused
        finally:
            await server.stop()

    replies, still, refused = asyncio.run(scenario())
    assert all(b"too many control clients (limit 3)" in r for r in replies)
    assert refused == 20
    assert b'"ok": true' in still


def test_oversized_request_gets_an_error_and_the_connection_closes(tmp_path):
    from tunneld.runtime.control import MAX_REQUEST

    path = str(tmp_path / "ctl.sock")

    async def scenario():
        server = _serve(path)
        await server.start()
        try:

            def big():
                with _connect(path) as s:
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        s.sendall(b"x" * (MAX_REQUEST + 10) + b"\n")
                    first = _read_line(s)
                    rest = s.recv(10)  # closed: b""
                    return first, rest

            out = await asyncio.to_thread(big)
            after = await asyncio.to_thread(request, path, {"cmd": "y"})
            return out, after
        finally:
            await server.stop()

    (first, rest), after = asyncio.run(scenario())
    assert b"request longer than 65536 bytes" in first
    assert rest == b""
    assert after["echo"] == "y"


def test_silent_client_is_dropped_after_the_read_timeout(tmp_path):
    path = str(tmp_path / "ctl.sock")

    async def scenario():
        server = ControlServer(path, lambda req: {}, max_clients=1, read_timeout=0.2)
        await server.start()
        try:

            def silent():
                with _connect(path) as s:
                    return s.recv(10)  # the server closes it (b"") well before the 2 s timeout

            closed = await asyncio.to_thread(silent)
            after = await asyncio.to_thread(request, path, {"cmd": "ping"})
            return closed, after
        finally:
            await server.stop()

    closed, after = asyncio.run(scenario())
    assert closed == b""
    assert after == {"version": 1}, "the slot of the dropped client is free again"


def test_stop_leaves_a_path_that_is_no_longer_our_socket(tmp_path):
    path = tmp_path / "ctl.sock"

    async def scenario():
        server = _serve(str(path))
        await server.start()
        os.unlink(path)
        path.write_text("someone else's file")
        await server.stop()

    asyncio.run(scenario())
    assert path.read_text() == "someone else's file"
