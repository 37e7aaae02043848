"""The /metrics endpoint of a real daemon process on 127.0.0.1 (no root, no interfaces).

Parsed with prometheus_client's own parser. A scrape while the event loop is blocked (the
test-only hook) still answers, with the process metrics and tunneld_metrics_snapshot_ok 0,
instead of hanging; metrics_listen cannot change on reload; a taken port fails start-up.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tunneld.runtime.control import request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


def wait(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture
def daemon(tmp_path: Path):
    port, sock, cfg = free_port(), tmp_path / "ctl.sock", tmp_path / "site.toml"
    cfg.write_text(f'[daemon]\ncontrol_socket = "{sock}"\nmetrics_listen = "127.0.0.1:{port}"\n')
    log = tmp_path / "daemon.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tunneld", "--config", str(cfg)],
                                env={**os.environ, "TUNNELD_TEST_HOOKS": "1"},
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait(lambda: sock.exists() or proc.poll() is not None)
        assert proc.poll() is None, log.read_text()
        yield proc, port, sock, cfg, log
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_scrape_and_a_blocked_loop(daemon):
    _, port, sock, _, _ = daemon
    got = scrape(port)
    assert got["tunneld_metrics_snapshot_ok"] == 1 and "process_cpu_seconds_total" in got
    blocker = threading.Thread(
        target=request, args=(str(sock), {"cmd": "test_block_loop", "seconds": 4.0}, 10.0)
    )
    blocker.start()
    blocked = []
    while blocker.is_alive() and not blocked:  # a scrape that meets the blocked loop ...
        got = scrape(port)  # ... is answered from the HTTP thread after the 2 s timeout
        if got["tunneld_metrics_snapshot_ok"] == 0:
            blocked.append(got)
    blocker.join()
    assert blocked, "no scrape saw the blocked loop"
    got = blocked[0]
    assert "process_resident_memory_bytes" in got
    assert scrape(port)["tunneld_metrics_snapshot_ok"] == 1  # the loop is back


def test_metrics_listen_cannot_change_on_reload(daemon):
    proc, port, _, cfg, log = daemon
    cfg.write_text(cfg.read_text().replace(f":{port}", f":{free_port()}"))
    proc.send_signal(signal.SIGHUP)
    wait(lambda: "daemon.metrics_listen: cannot change on reload" in log.read_text())
    assert scrape(port)["tunneld_metrics_snapshot_ok"] == 1  # the running endpoint stays


def test_a_taken_port_fails_start_up(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = tmp_path / "site.toml"
        cfg.write_text(f'[daemon]\ncontrol_socket = "{tmp_path / "c.sock"}"\n'
                       f'metrics_listen = "127.0.0.1:{port}"\n')  # fmt: skip
        out = subprocess.run([sys.executable, "-m", "tunneld", "--config", str(cfg)],
                             capture_output=True, text=True, timeout=20)  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert f"metrics_listen 127.0.0.1:{port}" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "c.sock").exists()


def test_ipv6_listen(tmp_path):
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        port = s.getsockname()[1]
    sock, cfg = tmp_path / "ctl.sock", tmp_path / "site.toml"
    cfg.write_text(f'[daemon]\ncontrol_socket = "{sock}"\nmetrics_listen = "[::1]:{port}"\n')
    proc = subprocess.Popen([sys.executable, "-m", "tunneld", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait(lambda: sock.exists() or proc.poll() is not None)
        with urllib.request.urlopen(f"http://[::1]:{port}/metrics", timeout=10) as r:
            assert b"tunneld_metrics_snapshot_ok 1.0" in r.read()
    finally:
        proc.terminate()
        assert proc.wait(5) == 0
