"""The daemon process end to end without root: show, SIGHUP (good and broken), SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _tunneld(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunneld", *args], capture_output=True, text=True, timeout=20, **kw
    )


def _wait(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture
def daemon(tmp_path: Path):
    sock = tmp_path / "ctl.sock"
    cfg = tmp_path / "site.toml"
    cfg.write_text(f'[daemon]\ncontrol_socket = "{sock}"\nlog_level = "info"\n')
    log = open(tmp_path / "stderr.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunneld", "--config", str(cfg)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        _wait(lambda: sock.exists() or proc.poll() is not None)
        assert proc.poll() is None, (tmp_path / "stderr.log").read_text()
        yield proc, cfg, sock, tmp_path / "stderr.log"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_show_json_envelope(daemon):
    _, _, sock, _ = daemon
    out = _tunneld("show", "--socket", str(sock), "--json")
    assert out.returncode == 0, out.stderr
    from tunneld import native

    assert json.loads(out.stdout) == {"version": 1, "native": native.IMPLEMENTATION,
                                      "interfaces": {}}  # fmt: skip


def test_show_unknown_interface_exits_1(daemon):
    _, _, sock, _ = daemon
    out = _tunneld("show", "--socket", str(sock), "nosuch0")
    assert out.returncode == 1
    assert "no such interface: nosuch0" in out.stderr
    assert "Traceback" not in out.stderr


def test_broken_config_on_sighup_changes_nothing(daemon):
    proc, cfg, sock, log = daemon
    cfg.write_text(cfg.read_text() + "[interfaces.vx0]\ntype = 'vxlan'\nvni = 'x'\n")
    proc.send_signal(signal.SIGHUP)
    _wait(lambda: "reload rejected" in log.read_text())
    assert proc.poll() is None
    assert "interfaces.vx0.vni" in log.read_text()
    assert _tunneld("show", "--socket", str(sock), "--json").returncode == 0


def test_sigterm_exits_0_within_2_seconds_and_removes_socket(daemon):
    proc, _, sock, _ = daemon
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=2) == 0
    assert time.monotonic() - start < 2
    assert not sock.exists()


def test_second_daemon_on_same_socket_refused(daemon):
    _, cfg, _, _ = daemon
    out = _tunneld("--config", str(cfg))
    assert out.returncode == 1
    assert "another tunneld is running" in out.stderr


def test_show_without_daemon_exits_1(tmp_path):
    out = _tunneld("show", "--socket", str(tmp_path / "none.sock"))
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_usage_error_exits_2():
    out = _tunneld("--bogus")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr


def test_genkey_pubkey_match_wg(tmp_path):
    priv = _tunneld("genkey").stdout
    pub = _tunneld("pubkey", input=priv)
    assert pub.returncode == 0
    if os.path.exists("/usr/bin/wg"):
        ref = subprocess.run(["wg", "pubkey"], input=priv, capture_output=True, text=True)
        assert pub.stdout == ref.stdout
    bad = _tunneld("pubkey", input="not-a-key\n")
    assert bad.returncode == 1 and "32 bytes" in bad.stderr


def test_sd_notify_ready_then_stopping(tmp_path: Path):
    import socket

    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = str(tmp_path / "notify.sock")
    notify.bind(notify_path)
    notify.settimeout(10)
    sock = tmp_path / "ctl.sock"
    cfg = tmp_path / "site.toml"
    cfg.write_text(f'[daemon]\ncontrol_socket = "{sock}"\n')
    env = {**os.environ, "NOTIFY_SOCKET": notify_path}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunneld", "--config", str(cfg)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        ready = notify.recv(4096).decode()
        while not ready.startswith("READY=1"):  # STATUS= and EXTEND_TIMEOUT_USEC= come first
            assert "READY" not in ready, ready
            ready = notify.recv(4096).decode()
        assert sock.exists(), "READY=1 only after the control socket is bound"
        proc.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in notify.recv(4096).decode()
        assert proc.wait(timeout=2) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        notify.close()
