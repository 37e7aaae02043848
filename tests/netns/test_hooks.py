"""pre_up / post_up / pre_down / post_down (runtime/hooks.py) run by a real daemon in a
namespace: in order, with %i expanded, each seeing the device as it should be then (absent
before pre_up, up with its address and routes at post_up, still there at pre_down, gone at
post_down), for a wireguard and a vxlan interface; a failing pre_up stops that interface's
start with an error naming the hook, and the interface already up is taken down."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from tests.netns.wg_helpers import Keys
from tunneld.testbed import wait_for
from tunneld.testbed.daemon import TunneldProcess

pytestmark = [pytest.mark.netns("ip"), pytest.mark.offload_default_only]

# one line per hook: its name, the device (%i) and what the device looks like then
STATE = ("$(ip -o link show %i 2>/dev/null | grep -q ',UP' && echo up || "
         "(ip link show %i >/dev/null 2>&1 && echo down || echo absent))")  # fmt: skip


def hooks(out: str, extra_post_up: str = "") -> str:
    lines = [f'{hook} = ["echo {hook} %i {STATE} >> {out}"]'
             for hook in ("pre_up", "pre_down", "post_down")]  # fmt: skip
    post_up = [
        f"echo post_up %i {STATE} >> {out}",
        f"ip -o -4 addr show dev %i | awk '{{print \\\"  addr\\\", $4}}' >> {out}",
    ]
    if extra_post_up:
        post_up.append(extra_post_up)
    lines.append("post_up = [" + ", ".join(f'"{c}"' for c in post_up) + "]")
    return "\n".join(lines) + "\n"


def config(testbed, host, out: str, vx_pre_up: str | None = None) -> str:
    keys, peer = Keys.new(), Keys.new()
    routes = f"ip route show 10.79.0.0/16 dev %i | sed 's/^/  route /' >> {out}"
    vx_hooks = hooks(out)
    if vx_pre_up is not None:
        vx_hooks = "\n".join(line for line in vx_hooks.splitlines()
                             if not line.startswith("pre_up")) + f"\n{vx_pre_up}\n"  # fmt: skip
    return (
        f'[daemon]\ncontrol_socket = "{testbed.tmpdir}/hooks.sock"\n'
        f'uapi_dir = "{testbed.tmpdir}/uapi"\n\n'
        f'[interfaces.{testbed.ifname("wg")}]\ntype = "wireguard"\n'
        f'private_key = "{keys.private_b64}"\naddress = ["10.78.0.1/24"]\n{hooks(out, routes)}'
        f'[[interfaces.{testbed.ifname("wg")}.peers]]\npublic_key = "{peer.public_b64}"\n'
        f'allowed_ips = ["10.79.0.0/16"]\n\n'
        f'[interfaces.{testbed.ifname("vx")}]\ntype = "vxlan"\nvni = 7\nlocal = "{host.ip}"\n'
        f'address = ["10.88.0.1/24"]\n{vx_hooks}'
    )


def test_hooks_run_in_order_with_the_device_name(testbed, two_hosts):
    h1, _ = two_hosts
    out = os.path.join(testbed.tmpdir, "hooks.out")
    wg, vx = testbed.ifname("wg"), testbed.ifname("vx")
    daemon = h1.ns.spawn_tunneld(config(testbed, h1, out))
    assert daemon.stop() == 0
    with open(out) as f:
        lines = f.read().splitlines()
    assert lines == [
        f"pre_up {wg} absent",  # before the device exists
        f"post_up {wg} up",  # up, addressed and routed
        "  addr 10.78.0.1/24",
        "  route 10.79.0.0/16 proto static ",  # `ip route show ... dev %i` omits the dev
        f"pre_up {vx} absent",
        f"post_up {vx} up",
        "  addr 10.88.0.1/24",
        f"pre_down {vx} up",  # stopped in reverse order, the device still there
        f"post_down {vx} absent",  # and gone after
        f"pre_down {wg} up",
        f"post_down {wg} absent",
    ], daemon.stderr()


def test_a_failing_pre_up_stops_that_interface_with_a_clear_error(testbed, two_hosts):
    h1, _ = two_hosts
    out = os.path.join(testbed.tmpdir, "hooks.out")
    wg, vx = testbed.ifname("wg"), testbed.ifname("vx")
    failing = f'pre_up = ["echo pre_up %i >> {out}", "echo no >&2; exit 7", "echo never >> {out}"]'
    path = os.path.join(testbed.tmpdir, "failing.toml")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(config(testbed, h1, out, vx_pre_up=failing))
    proc = h1.ns.run([sys.executable, "-m", "tunneld", "--config", path], check=False,
                     timeout=30, stdin=subprocess.DEVNULL)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert f"{vx}: pre_up hook `echo no >&2; exit 7` failed: exit status 7; the interface is " \
           "not started" in proc.stderr, proc.stderr  # fmt: skip
    with open(out) as f:
        lines = f.read().splitlines()
    assert [line for line in lines if not line.startswith("  ")] == [
        f"pre_up {wg} absent",
        f"post_up {wg} up",
        f"pre_up {vx}",  # the failing hook's first command ran, its third did not
        f"pre_down {wg} up",  # the start failed: what was up goes down, with its hooks
        f"post_down {wg} absent",
    ], proc.stderr
    assert h1.ns.ip("link", "show", vx, check=False).returncode != 0  # never created


def test_a_reload_changing_only_hooks_keeps_the_interface(testbed, two_hosts):
    h1, _ = two_hosts
    out = os.path.join(testbed.tmpdir, "hooks.out")
    wg = testbed.ifname("wg")
    text = config(testbed, h1, out)
    daemon = h1.ns.spawn_tunneld(text)
    index = h1.ns.ip("-o", "link", "show", wg).stdout.split(":")[0]
    daemon.rewrite_config(text.replace("echo post_down %i", "echo new_post_down %i"))
    daemon.reload()
    wait_for(lambda: "reloaded:" in daemon.stderr(), 10, what="the reload")
    assert h1.ns.ip("-o", "link", "show", wg).stdout.split(":")[0] == index  # not rebuilt
    assert daemon.stop() == 0
    with open(out) as f:
        lines = [line for line in f.read().splitlines() if not line.startswith("  ")]
    assert lines.count(f"pre_up {wg} absent") == 1  # no down/up cycle on the reload
    assert lines[-1] == f"new_post_down {wg} absent", lines  # the file's hooks at stop


@pytest.mark.netns("useradd", "userdel")
def test_down_hooks_after_the_user_switch_keep_cap_net_admin(testbed, two_hosts, system_user):
    """With `[daemon] user`, pre_down runs as that user, and `ip link set` (CAP_NET_ADMIN)
    still works in it, as it does in wg-quick's root-run hooks."""
    h1, _ = two_hosts
    workdir = tempfile.mkdtemp(prefix="tunneld-hooks-", dir="/tmp")
    try:
        os.chmod(workdir, 0o755)
        out = os.path.join(workdir, "hooks.out")
        with open(out, "w"):
            pass
        os.chmod(out, 0o666)
        keys = Keys.new()
        path = os.path.join(workdir, "site.toml")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(f'[daemon]\ncontrol_socket = "{workdir}/ctl.sock"\nuapi_dir = ""\n'
                    f'user = "{system_user.pw_name}"\n\n[interfaces.wg0]\ntype = "wireguard"\n'
                    f'private_key = "{keys.private_b64}"\n'
                    f'pre_down = "ip link set %i mtu 1300 && echo pre_down $(id -u) '
                    f'$(cat /sys/class/net/%i/mtu) >> {out}"\n')  # fmt: skip
        log_path = os.path.join(workdir, "daemon.log")
        with open(log_path, "wb") as log:
            proc = h1.ns.popen([sys.executable, "-m", "tunneld", "--config", path],
                               stdin=subprocess.DEVNULL, stdout=log,
                               stderr=subprocess.STDOUT)  # fmt: skip
        daemon = TunneldProcess(h1.ns, "tunneld", proc, path, f"{workdir}/ctl.sock", log_path)
        daemon.wait_ready()
        wait_for(lambda: "running as" in daemon.stderr(), 5, what="the user switch")
        assert daemon.stop() == 0
        with open(out) as f:
            assert f.read() == f"pre_down {system_user.pw_uid} 1300\n", daemon.stderr()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_a_failing_pre_up_of_an_added_interface_fails_the_reload(testbed, two_hosts):
    """SIGHUP adding an interface whose pre_up fails: the reload fails naming the hook, the
    running interface stays as it was (no hook of its runs), the new device is never made."""
    h1, _ = two_hosts
    out = os.path.join(testbed.tmpdir, "hooks.out")
    wg, vx = testbed.ifname("wg"), testbed.ifname("vx")
    full = config(testbed, h1, out, vx_pre_up='pre_up = "exit 4"')
    first = full[: full.index(f"[interfaces.{vx}]")]
    daemon = h1.ns.spawn_tunneld(first)
    daemon.rewrite_config(full)
    daemon.reload()
    wait_for(lambda: "reload failed" in daemon.stderr(), 10, what="the failed reload")
    failed = daemon.stderr().split("reload failed", 1)[1].splitlines()[0]
    assert f"{vx}: pre_up hook `exit 4` failed: exit status 4" in failed, failed
    assert h1.ns.ip("link", "show", vx, check=False).returncode != 0
    assert daemon.stop() == 0
    with open(out) as f:
        lines = [line for line in f.read().splitlines() if not line.startswith("  ")]
    assert lines == [f"pre_up {wg} absent", f"post_up {wg} up", f"pre_down {wg} up",
                     f"post_down {wg} absent"]  # fmt: skip
