"""The control socket on real asyncio: mode, stale-socket takeover, one daemon per path."""

from __future__ import annotations

import asyncio
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
