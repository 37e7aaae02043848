"""sd_notify against a real daemon process and a real AF_UNIX datagram socket as NOTIFY_SOCKET.

What systemd would see: READY=1 once up, WATCHDOG=1 at half of WATCHDOG_USEC from the
event loop (a loop blocked through the test-only control command stops them, and they
resume), RELOADING=1 with MONOTONIC_USEC then READY=1 on a good and on a bad SIGHUP,
STOPPING=1 on SIGTERM. Every datagram's sender (SCM_CREDENTIALS) is the main pid, as
NotifyAccess=main requires. No root needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tunneld.kernel.systemd import Notifier, watchdog_interval
from tunneld.runtime.control import request

WATCHDOG_USEC = 200_000  # pings every 0.1 s


class NotifySocket:
    """The systemd side: a bound datagram socket that records (time, pid, fields)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.path = path

    def next(self, timeout: float = 10.0) -> tuple[float, int, dict[str, str]]:
        self.sock.settimeout(timeout)
        data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = -1
        for level, kind, blob in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", blob[:12])[0]
        fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        return time.monotonic(), pid, fields

    def start_reader(self) -> None:
        """Read continuously in a thread, as systemd does; messages land in `self.messages`."""
        self.messages: list[tuple[float, int, dict[str, str]]] = []
        self._reading = True

        def read() -> None:
            while self._reading:
                try:
                    self.messages.append(self.next(0.2))
                except (TimeoutError, OSError):
                    continue

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()

    def seen(self, key: str) -> list[tuple[float, int, dict[str, str]]]:
        return [m for m in list(self.messages) if key in m[2]]

    def close(self) -> None:
        self._reading = False
        if getattr(self, "_reader", None) is not None:
            self._reader.join(2)
        self.sock.close()

    def until(self, key: str, timeout: float = 10.0) -> list[tuple[float, int, dict[str, str]]]:
        """Every message up to and including the first one carrying `key`."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            msg = self.next(max(0.1, deadline - time.monotonic()))
            seen.append(msg)
            if key in msg[2]:
                return seen


@pytest.fixture
def watchdog_usec() -> int:
    return WATCHDOG_USEC


@pytest.fixture
def daemon(tmp_path: Path, watchdog_usec: int):
    notify = NotifySocket(tmp_path / "notify.sock")
    cfg = tmp_path / "site.toml"
    sock = tmp_path / "ctl.sock"
    cfg.write_text(f'[daemon]\ncontrol_socket = "{sock}"\n')
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(watchdog_usec),
           "TUNNELD_TEST_HOOKS": "1"}  # fmt: skip
    env.pop("WATCHDOG_PID", None)
    log = open(tmp_path / "daemon.log", "w+")
    argv = [sys.executable, "-m", "tunneld", "--config", str(cfg)]
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc, notify, cfg, sock
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        notify.sock.close()


def test_ready_watchdog_reload_stopping(daemon):
    proc, notify, cfg, _ = daemon
    start = notify.until("READY")
    assert all(pid == proc.pid for _, pid, _ in start)
    assert {"EXTEND_TIMEOUT_USEC": "30000000"} in [m[2] for m in start]  # room to start
    assert start[-1][2]["STATUS"] == "0 interface(s) up"

    pings = [m for m in (notify.next() for _ in range(4)) if "WATCHDOG" in m[2]]
    assert len(pings) >= 3 and all(m[2]["WATCHDOG"] == "1" and m[1] == proc.pid for m in pings)

    proc.send_signal(signal.SIGHUP)  # a good reload (the file is unchanged)
    msgs = notify.until("RELOADING")
    reloading = msgs[-1][2]
    now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert 0 <= now_usec - int(reloading["MONOTONIC_USEC"]) < 5_000_000
    assert "READY" in notify.until("READY")[-1][2]

    cfg.write_text(cfg.read_text() + "[interfaces.vx0]\ntype = 'vxlan'\nvni = 'x'\n")
    proc.send_signal(signal.SIGHUP)  # a bad one: RELOADING, then READY all the same
    assert "MONOTONIC_USEC" in notify.until("RELOADING")[-1][2]
    ready = notify.until("READY")[-1][2]
    assert "reload" in ready.get("STATUS", ""), ready

    proc.send_signal(signal.SIGTERM)
    stopping = notify.until("STOPPING")[-1]
    assert stopping[2]["STOPPING"] == "1" and stopping[1] == proc.pid
    assert proc.wait(5) == 0


@pytest.mark.parametrize("watchdog_usec", [1_000_000])
def test_pings_come_at_half_the_interval(daemon):
    _, notify, _, _ = daemon
    notify.until("READY")
    times = [notify.until("WATCHDOG")[-1][0] for _ in range(5)]
    gaps = sorted(b - a for a, b in zip(times, times[1:], strict=False))
    assert 0.4 <= gaps[len(gaps) // 2] <= 0.8, gaps  # WATCHDOG_USEC / 2 = 0.5 s, not 1 s


def test_a_blocked_loop_stops_the_pings_then_they_resume(daemon):
    proc, notify, _, sock = daemon
    notify.until("READY")
    last_ping = notify.until("WATCHDOG")[-1][0]
    reply: dict = {}
    blocker = threading.Thread(
        target=lambda: reply.update(request(str(sock), {"cmd": "test_block_loop", "seconds": 1.5}))
    )
    blocker.start()
    times = [last_ping]
    while blocker.is_alive() or len(times) < 4:
        at, _, fields = notify.next(5.0)
        if "WATCHDOG" in fields:
            times.append(at)
        if not blocker.is_alive() and len(times) >= 4:
            break
    blocker.join()
    assert reply.get("ok") is True, reply
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert max(gaps) >= 1.2, gaps  # nothing while the loop was blocked for 1.5 s
    assert gaps[-1] < 1.0, gaps  # ... and pings every 0.1 s again afterwards
    assert proc.poll() is None


def test_the_hook_is_off_without_the_test_environment(tmp_path):
    cfg, sock = tmp_path / "site.toml", tmp_path / "ctl.sock"
    cfg.write_text(f'[daemon]\ncontrol_socket = "{sock}"\n')
    env = {k: v for k, v in os.environ.items() if k != "TUNNELD_TEST_HOOKS"}
    proc = subprocess.Popen([sys.executable, "-m", "tunneld", "--config", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        reply = request(str(sock), {"cmd": "test_block_loop", "seconds": 5})
        assert "unknown command" in reply["error"]
    finally:
        proc.terminate()
        proc.wait(5)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "junk"}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4243"}, None),  # for another process
        ({"WATCHDOG_USEC": "10"}, 0.05),  # never a busy loop
    ],
)
def test_watchdog_interval(env, expected):
    assert watchdog_interval(env, 4242) == expected


def test_abstract_socket_and_no_socket(tmp_path):
    name = f"@tunneld-test-{os.getpid()}"
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(b"\0" + name[1:].encode())
    rx.settimeout(5)
    try:
        Notifier({"NOTIFY_SOCKET": name}).status("hello\nworld")
        assert rx.recv(100) == b"STATUS=hello world"  # one line
    finally:
        rx.close()
    off = Notifier({})
    assert not off.enabled
    off.ready("x")  # no socket: nothing happens, nothing raises


def test_children_do_not_inherit_the_notify_socket(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "n.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    notifier = Notifier()
    assert notifier.enabled and notifier.watchdog == 0.5
    assert "NOTIFY_SOCKET" not in os.environ and "WATCHDOG_USEC" not in os.environ
    notifier.close()


def test_a_receiver_that_does_not_read_never_stalls_the_loop(daemon):
    """The queue of an AF_UNIX datagram socket holds net.unix.max_dgram_qlen (10) messages; a
    blocking send would then hang the event loop. Pings to a full queue are dropped."""
    proc, notify, _, sock = daemon
    deadline = time.monotonic() + 10
    while not sock.exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(2.0)  # 20 pings' worth: the queue is full for most of it
    for _ in range(3):
        assert request(str(sock), {"cmd": "ping"}, timeout=2.0)["ok"] is True
    first = [notify.next()[2] for _ in range(3)]
    assert any("READY" in m for m in first), first
    assert "WATCHDOG" in notify.until("WATCHDOG", timeout=5)[-1][2]  # and the pings go on


def test_start_timeout_is_extended_from_the_loop_until_ready(tmp_path):
    rx = NotifySocket(tmp_path / "n.sock")
    notifier = Notifier({"NOTIFY_SOCKET": str(rx.path)})
    loop = asyncio.new_event_loop()
    try:
        notifier.extend_start(loop, every=0.05)
        loop.run_until_complete(asyncio.sleep(0.3))
        notifier.ready("up")
        loop.run_until_complete(asyncio.sleep(0.3))  # no more extensions after READY=1
    finally:
        loop.close()
        notifier.close()
    got = []
    with contextlib.suppress(TimeoutError):
        while True:
            got.append(rx.next(0.2)[2])
    rx.sock.close()
    ready = got.index({"READY": "1", "STATUS": "up"})
    assert ready >= 2 and got[ready + 1 :] == [], got
    assert all(m == {"EXTEND_TIMEOUT_USEC": "150000"} for m in got[:ready]), got
