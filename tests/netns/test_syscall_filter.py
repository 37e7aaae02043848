"""The unit's SystemCallFilter=@system-service and RestrictAddressFamilies hold.

systemd is not PID 1 here, so the filter is checked the other way round: the daemon runs
under strace(1) through a whole life (start with a WireGuard and a VXLAN link, traffic both
ways, the switch to `[daemon] user`, a SIGHUP that adds a peer, a scrape of /metrics,
SIGTERM), and every system call it made must be in systemd's own expansion of
@system-service (`systemd-analyze syscall-filter`), every socket() family in the unit's
RestrictAddressFamilies.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from tests.netns.test_least_privilege import _config, _secret, workdir  # noqa: F401
from tests.netns.vxlan_helpers import offload_line
from tests.netns.wg_helpers import Keys, PeerSpec, WgGo, wait_ping
from tunneld.testbed import wait_for
from tunneld.testbed.daemon import TunneldProcess

pytestmark = [
    pytest.mark.netns("wireguard-go", "wg", "strace", "systemd-analyze", "useradd", "userdel"),
    pytest.mark.offload_default_only,
]
UNIT = os.path.join(os.path.dirname(__file__), "..", "..", "systemd", "tunneld.service")
CALL = re.compile(r"^(?:\d+\s+)?(?:<\.\.\. )?([a-z_0-9]+)(?:\(| resumed>)")
FAMILY = re.compile(r"\bsocket\((AF_[A-Z0-9]+)")


def expand(group: str, seen: set[str] | None = None) -> set[str]:
    """systemd's own list of a syscall group, nested groups expanded."""
    seen = set() if seen is None else seen
    out = subprocess.run(["systemd-analyze", "syscall-filter", group], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    calls: set[str] = set()
    for line in out.splitlines()[1:]:
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        if word.startswith("@"):
            if word not in seen:
                seen.add(word)
                calls |= expand(word, seen)
        else:
            calls.add(word)
    return calls


def unit_value(key: str) -> list[str]:
    for line in open(UNIT).read().splitlines():
        if line.startswith(f"{key}="):
            return line.split("=", 1)[1].split()
    raise KeyError(key)


def test_every_syscall_and_family_is_allowed(testbed, two_hosts, system_user, workdir):  # noqa: F811
    h1, h2 = two_hosts
    allowed = expand(unit_value("SystemCallFilter")[0])
    assert {"capset", "setuid", "ioctl", "sendmsg"} <= allowed  # the expansion worked
    families = set(unit_value("RestrictAddressFamilies"))
    td_keys, go_keys, other = Keys.new(), Keys.new(), Keys.new()
    go = WgGo.start(h2.ns, testbed.ifname("wg"), go_keys, 51820, "10.77.0.2/24")
    go.set_peer(td_keys.public_b64, ["10.77.0.1/32"])
    user = system_user.pw_name
    key_file = _secret(os.path.join(workdir, "wg0.key"), td_keys.private_b64)
    sock, cfg = os.path.join(workdir, "ctl.sock"), os.path.join(workdir, "site.toml")
    peer = PeerSpec(go_keys.public_b64, ["10.77.0.2/32"], endpoint=f"{h2.ip}:51820")
    vxlan = (f'\n[interfaces.vx0]\ntype = "vxlan"\nvni = 42\nlocal = "{h1.ip}"\n'
             f'flood = ["{h2.ip}"]\n') + offload_line(None)  # fmt: skip

    def config(peers: list[PeerSpec]) -> str:
        text = _config(user, sock, key_file, peers) + vxlan
        return text.replace("[daemon]\n", '[daemon]\nmetrics_listen = "127.0.0.1:9586"\n', 1)

    _secret(cfg, config([peer]), owner=system_user)
    trace, log_path = os.path.join(workdir, "strace.out"), os.path.join(workdir, "daemon.log")
    argv = ["strace", "-f", "-qq", "-o", trace, sys.executable, "-m", "tunneld", "--config", cfg]
    with open(log_path, "wb") as log:
        tracer = h1.ns.popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    daemon = None
    try:
        wait_for(lambda: os.path.exists(f"/proc/{tracer.pid}/task/{tracer.pid}/children")
                 and open(f"/proc/{tracer.pid}/task/{tracer.pid}/children").read().split(),
                 10, what="the traced daemon")  # fmt: skip
        pid = int(open(f"/proc/{tracer.pid}/task/{tracer.pid}/children").read().split()[0])
        daemon = TunneldProcess(h1.ns, "traced", tracer, cfg, sock, log_path)
        daemon.wait_ready(30)
        wait_for(lambda: "running as" in daemon.stderr(), 10, what="the switch to the user")
        wait_ping(h1.ns, "10.77.0.2", timeout=30)
        assert h1.ns.ping("10.77.0.2", count=3) == (3, 3)
        fetch = "import urllib.request as u; u.urlopen('http://127.0.0.1:9586/metrics').read()"
        h1.ns.run([sys.executable, "-c", fetch])
        _secret(cfg, config([peer, PeerSpec(other.public_b64, ["10.77.0.9/32"])]),
                owner=system_user)  # fmt: skip
        os.kill(pid, signal.SIGHUP)
        wait_for(lambda: "reloaded" in daemon.stderr(), 20, what="reload under strace")
        os.kill(pid, signal.SIGTERM)
        assert tracer.wait(30) == 0, daemon.stderr()[-2000:]
    finally:
        if tracer.poll() is None:
            tracer.kill()
            tracer.wait()
        go.stop()
    calls, used_families = set(), set()
    with open(trace) as f:
        for line in f:
            match = CALL.match(line)
            if match:
                calls.add(match.group(1))
            used_families |= set(FAMILY.findall(line))
    assert len(calls) > 40, sorted(calls)  # the trace really holds the run
    assert calls <= allowed, f"outside @system-service: {sorted(calls - allowed)}"
    assert {"AF_NETLINK", "AF_INET"} <= used_families
    assert used_families <= families, f"not in RestrictAddressFamilies: {used_families - families}"
