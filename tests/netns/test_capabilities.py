"""Without CAP_NET_ADMIN the daemon says which capability it needs and exits 1."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.netns("setpriv")

CONFIG = """\
[daemon]
control_socket = "{sock}"
[interfaces.vx0]
type = "vxlan"
vni = 42
local = "127.0.0.1"
"""


def test_missing_cap_net_admin_is_a_clear_error(testbed, tmp_path):
    ns = testbed.add_ns("nocap")
    cfg = tmp_path / "site.toml"
    cfg.write_text(CONFIG.format(sock=tmp_path / "ctl.sock"))
    out = ns.run(
        [
            "setpriv",
            "--bounding-set=-net_admin",
            "--inh-caps=-all",
            sys.executable,
            "-m",
            "tunneld",
            "--config",
            str(cfg),
        ],
        check=False,
        timeout=30,
    )
    assert out.returncode == 1, (out.returncode, out.stderr)
    assert "CAP_NET_ADMIN" in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    # nothing left behind: no tap, no socket
    assert "vx0" not in ns.ip("-o", "link").stdout
    assert not (tmp_path / "ctl.sock").exists()
    # and the same config runs fine with the capability
    ok = ns.popen(
        [sys.executable, "-m", "tunneld", "--config", str(cfg)], stderr=subprocess.PIPE, text=True
    )
    try:
        from tunneld.testbed import wait_for

        wait_for(lambda: (tmp_path / "ctl.sock").exists() or ok.poll() is not None, 10)
        assert ok.poll() is None
    finally:
        ok.terminate()
        assert ok.wait(5) == 0
