"""The unit's MemoryDenyWriteExecute=yes holds: tunneld moves WireGuard and VXLAN traffic
under PR_SET_MDWE (no W+X mapping, no exec gained by mprotect), the kernel's version of
the same rule. cryptography, PyNaCl (cffi), uvloop and the native helper all load and run.

systemd is not PID 1 here, so the daemon is started through a small wrapper that sets
PR_SET_MDWE (inherited across execve) and execs it. The wrapper is shown to bite: a cffi
callback, which needs W+X memory, fails under it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.netns.vxlan_helpers import offload_line
from tests.netns.wg_helpers import Keys, PeerSpec, WgGo, tunneld_wg_config, wait_ping
from tunneld.testbed import wait_for
from tunneld.testbed.daemon import TunneldProcess, _with_control_socket

pytestmark = [pytest.mark.netns("wireguard-go", "wg", "iperf3"),
              pytest.mark.offload_default_only]  # fmt: skip

MDWE = textwrap.dedent("""\
    import ctypes, os, sys
    PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1  # include/uapi/linux/prctl.h (Linux 6.3)
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0):
        sys.exit("PR_SET_MDWE: " + os.strerror(ctypes.get_errno()))
    os.execv(sys.argv[1], sys.argv[1:])
    """)


def under_mdwe(*argv: str) -> list[str]:
    return [sys.executable, "-c", MDWE, sys.executable, *argv]


def test_the_wrapper_refuses_write_execute_memory():
    probe = "import cffi; cffi.FFI().callback('int(int)', lambda x: x)"
    out = subprocess.run(under_mdwe("-c", probe), capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "write+execute" in out.stderr, out.stderr
    # ... and the rule survives execve (the daemon runs in the exec'd image)
    get = "import ctypes; print(ctypes.CDLL(None).prctl(66, 0, 0, 0, 0))"  # PR_GET_MDWE
    out = subprocess.run(under_mdwe("-c", get), capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "1", out


def test_traffic_under_memory_deny_write_execute(testbed, two_hosts):
    h1, h2 = two_hosts
    td_keys, go_keys = Keys.new(), Keys.new()
    go = WgGo.start(h2.ns, testbed.ifname("wg"), go_keys, 51820, "10.77.0.2/24")
    go.set_peer(td_keys.public_b64, ["10.77.0.1/32"])
    peer = PeerSpec(go_keys.public_b64, ["10.77.0.2/32"], endpoint=f"{h2.ip}:51820")
    text = tunneld_wg_config(td_keys, ["10.77.0.1/24"], [peer], listen_port=51821) + (
        f'\n[interfaces.vx0]\ntype = "vxlan"\nvni = 42\naddress = ["10.88.0.1/24"]\n'
        f'local = "{h1.ip}"\nflood = ["{h2.ip}"]\n'
    ) + offload_line(None)  # fmt: skip
    workdir = testbed.tmpdir
    sock, cfg, log_path = f"{workdir}/mdwe.sock", f"{workdir}/mdwe.toml", f"{workdir}/mdwe.log"
    with open(cfg, "w") as f:
        f.write(_with_control_socket(text, sock))
    h2.ns.add_kernel_vxlan(
        "vx0", vni=42, local=h2.ip, dev=h2.iface, flood=[h1.ip], address="10.88.0.2/24"
    )
    with open(log_path, "wb") as log:
        argv = under_mdwe("-m", "tunneld", "--config", cfg)
        proc = h1.ns.popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    daemon = TunneldProcess(h1.ns, "mdwe", proc, cfg, sock, log_path)
    try:
        daemon.wait_ready()
        wait_ping(h1.ns, "10.77.0.2")
        wait_for(lambda: h1.ns.ping("10.88.0.2", count=1, timeout=1)[1] == 1, 10, what="vxlan")
        assert h1.ns.iperf3_pair(h2.ns, "10.77.0.2", seconds=2)["bytes"] > 1_000_000
        assert h1.ns.iperf3_pair(h2.ns, "10.88.0.2", seconds=2, port=5202)["bytes"] > 1_000_000
        assert daemon.alive, daemon.stderr()
        assert daemon.stop() == 0, daemon.stderr()
    finally:
        if daemon.alive:
            daemon.kill()
        go.stop()
