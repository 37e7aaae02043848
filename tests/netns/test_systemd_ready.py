"""sd_notify with real links: READY=1 only once the devices are up and the control socket is
bound; STATUS= says what is starting; a reload that adds an interface answers READY=1 with
that device up, and one whose device name is taken answers READY=1 with the failure.

NOTIFY_SOCKET is a real AF_UNIX datagram socket (the filesystem is shared with the
namespace); the daemon runs in ns1 (no peer needed: nothing here moves traffic).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.netns.vxlan_helpers import vxlan_config
from tests.runtime.test_systemd_notify import NotifySocket
from tunneld.testbed.daemon import _with_control_socket

pytestmark = [pytest.mark.netns(), pytest.mark.offload_default_only]


def test_ready_after_links_then_reload_outcomes(testbed, two_hosts):
    h1, h2 = two_hosts
    workdir = testbed.tmpdir
    notify = NotifySocket(os.path.join(workdir, "notify.sock"))
    sock, cfg = os.path.join(workdir, "ready.sock"), os.path.join(workdir, "ready.toml")
    base = vxlan_config(h1.ip, [h2.ip], "10.88.0.1/24")
    with open(cfg, "w") as f:
        f.write(_with_control_socket(base, sock))
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path)}
    proc = h1.ns.popen([sys.executable, "-m", "tunneld", "--config", cfg], env=env,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        start = notify.until("READY")
        statuses = [m[2].get("STATUS", "") for m in start]
        assert "starting vx0 (vxlan)" in statuses, statuses
        # at READY=1 the tap is up with its address and the control socket answers
        assert "10.88.0.1/24" in h1.ns.ip("-o", "addr", "show", "dev", "vx0").stdout
        assert "UP" in h1.ns.ip("-o", "link", "show", "vx0").stdout
        assert os.path.exists(sock)
        assert start[-1][2]["STATUS"].startswith("1 interface(s) up")

        extra = f'\n[interfaces.vx1]\ntype = "vxlan"\nvni = 43\nport = 4790\nlocal = "{h1.ip}"\n'
        with open(cfg, "a") as f:
            f.write(extra)
        proc.send_signal(signal.SIGHUP)  # a good reload
        assert "MONOTONIC_USEC" in notify.until("RELOADING")[-1][2]
        ready = notify.until("READY")[-1][2]
        assert ready["STATUS"].startswith("2 interface(s) up"), ready
        assert h1.ns.ip("link", "show", "vx1", check=False).returncode == 0

        h1.ns.ip("link", "add", "vx2", "type", "veth", "peer", "name", "vx2p")  # name taken
        with open(cfg, "a") as f:
            f.write(extra.replace("vx1", "vx2").replace("43", "44").replace("4790", "4791"))
        proc.send_signal(signal.SIGHUP)
        notify.until("RELOADING")
        ready = notify.until("READY")[-1][2]
        assert "failed" in ready["STATUS"] and "vx2" in ready["STATUS"], ready
        assert ready["STATUS"].startswith("2 interface(s) up"), ready

        proc.terminate()
        assert "STOPPING" in notify.until("STOPPING")[-1][2]
        assert proc.wait(5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        notify.sock.close()
