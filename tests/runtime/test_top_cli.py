"""`tunneld top` against a real daemon process: `--once` for scripts, and the live view on
a pseudo-terminal (cbreak while it runs, `q` and Ctrl-C quit, the terminal mode restored)."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from tunneld.top import ENTER, LEAVE


def _wait(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture
def daemon_socket(tmp_path: Path):
    sock = tmp_path / "ctl.sock"
    cfg = tmp_path / "site.toml"
    cfg.write_text(f'[daemon]\ncontrol_socket = "{sock}"\n')
    log = open(tmp_path / "daemon.log", "w+")
    argv = [sys.executable, "-m", "tunneld", "--config", str(cfg)]
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait(lambda: sock.exists() or proc.poll() is not None)
        assert proc.poll() is None, (tmp_path / "daemon.log").read_text()
        yield str(sock)
    finally:
        proc.kill()
        proc.wait()
        log.close()


def test_once_prints_one_plain_frame(daemon_socket):
    out = subprocess.run([sys.executable, "-m", "tunneld", "top", "--socket", daemon_socket,
                          "--once", "--interval", "0.2"], capture_output=True, text=True,
                         timeout=20)  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("tunneld top") and "0 interface(s), 0 peer(s)" in lines[0]
    assert lines[1].split()[:3] == ["NAME", "RX", "bit/s"]
    assert "\x1b" not in out.stdout and all(len(line) <= 80 for line in lines)


def test_no_daemon_exits_1(tmp_path: Path):
    out = subprocess.run([sys.executable, "-m", "tunneld", "top", "--socket",
                          str(tmp_path / "none.sock"), "--once"], capture_output=True, text=True,
                         timeout=20)  # fmt: skip
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def _on_pty(socket_path: str) -> tuple[subprocess.Popen, int, int]:
    """`tunneld top` with a new pty as its controlling terminal; returns (proc, master, slave)."""
    master, slave = os.openpty()
    os.set_blocking(master, False)

    def controlling_tty() -> None:  # runs in the child after setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [sys.executable, "-m", "tunneld", "top", "--socket", socket_path, "--interval", "0.2"],
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
        preexec_fn=controlling_tty, env={**os.environ, "COLUMNS": "80", "LINES": "24"},
    )  # fmt: skip
    return proc, master, slave


def _read_until(master: int, needle: str, timeout: float = 10.0) -> str:
    data = b""
    deadline = time.monotonic() + timeout
    while needle.encode() not in data and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                data += os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
    return data.decode(errors="replace")


@pytest.mark.parametrize("key", [b"q", b"\x03"], ids=["q", "ctrl-c"])
def test_live_view_on_a_pty_quits_and_restores_the_terminal(daemon_socket, key):
    proc, master, slave = _on_pty(daemon_socket)
    try:
        before = termios.tcgetattr(slave)
        assert before[3] & termios.ICANON and before[3] & termios.ECHO
        screen = _read_until(master, "HISTORY")
        assert ENTER in screen and "tunneld top" in screen, screen
        running = termios.tcgetattr(slave)
        assert not running[3] & (termios.ICANON | termios.ECHO), "cbreak while it runs"
        assert running[3] & termios.ISIG, "Ctrl-C still raises SIGINT"
        screen = _read_until(master, "HISTORY")  # a second frame: the refresh loop runs
        os.write(master, key)
        assert proc.wait(timeout=5) == 0
        rest = _read_until(master, LEAVE, timeout=2)
        assert LEAVE in rest, rest
        assert termios.tcgetattr(slave) == before, "terminal mode restored on exit"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)


def test_without_a_terminal_sigint_quits_cleanly(daemon_socket):
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunneld", "top", "--socket", daemon_socket, "--interval", "0.2"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        os.set_blocking(proc.stdout.fileno(), False)
        screen = _read_until(proc.stdout.fileno(), "HISTORY")
        assert ENTER in screen, screen
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=5)
        assert proc.returncode == 0 and err == b"", err
        assert out.endswith(LEAVE.encode())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
