"""The daemon's own log lines: key=value, under journald (JOURNAL_STREAM) without our
timestamps and with a syslog priority, elsewhere with them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _run_daemon(tmp_path: Path, journal: bool) -> list[str]:
    sock = tmp_path / "ctl.sock"
    cfg = tmp_path / "site.toml"
    cfg.write_text(f'[daemon]\ncontrol_socket = "{sock}"\nlog_level = "info"\n')
    with open(tmp_path / "stderr", "w+") as log:
        st = os.fstat(log.fileno())
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        if journal:
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        argv = [sys.executable, "-m", "tunneld", "--config", str(cfg)]
        proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env)
        try:
            deadline = time.monotonic() + 10
            while not sock.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert sock.exists(), (tmp_path / "stderr").read_text()
            cfg.write_text(cfg.read_text() + "[interfaces.vx0]\ntype = 'vxlan'\nvni = 'x'\n")
            proc.send_signal(signal.SIGHUP)
            while "reload" not in (tmp_path / "stderr").read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=5) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return (tmp_path / "stderr").read_text().splitlines()


@pytest.mark.parametrize("journal", [True, False], ids=["journald", "plain"])
def test_daemon_lines_are_key_value(tmp_path: Path, journal: bool):
    lines = _run_daemon(tmp_path, journal)
    start = r"<[2-7]>" if journal else r"ts=\d{4}-\d\d-\d\dT[\d:.]+Z "
    for line in lines:
        assert re.match(start + r"level=(debug|info|warning|error) logger=\S+ ", line), line
        assert journal is ("ts=" not in line), line
    rejected = next(line for line in lines if "event=reload_failed" in line)
    assert "level=error" in rejected and "interfaces.vx0.vni" in rejected
    assert any('msg="tunneld up' in line for line in lines), lines
