"""`[daemon] user`: after start-up the daemon is that user with CAP_NET_ADMIN alone, and
traffic, reloads (a new peer, its allowed-ips route) and key files still work.

A system user is created for the test (unique name, removed at teardown). ns1 runs tunneld
(WireGuard); ns2 and ns3 each run a wireguard-go. The private key file stays root's, mode
0600: unreadable by the user, so a reload must keep the key read at start. A new key file
the user cannot read fails the reload with the file named; once chowned it works.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

from tests.netns.wg_helpers import Keys, PeerSpec, WgGo, new_psk, tunneld_wg_config, wait_ping
from tests.runtime.test_systemd_notify import NotifySocket
from tunneld.kernel.privileges import CAP_NET_ADMIN, capabilities
from tunneld.testbed import wait_for
from tunneld.testbed.daemon import TunneldProcess

pytestmark = [pytest.mark.netns("wireguard-go", "wg", "useradd", "userdel", "setpriv"),
              pytest.mark.offload_default_only]  # fmt: skip


@pytest.fixture
def workdir():
    path = tempfile.mkdtemp(prefix="tunneld-user-", dir="/tmp")
    os.chmod(path, 0o755)  # the user must reach its config file
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _secret(path: str, text: str, owner: pwd.struct_passwd | None = None) -> str:
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(text + "\n")
    if owner is not None:
        os.chown(path, owner.pw_uid, owner.pw_gid)
    return path


def _config(user: str, sock: str, key_file: str, peers: list[PeerSpec]) -> str:
    """The UAPI socket goes beside the control socket (never the host's /var/run/wireguard)."""
    text = tunneld_wg_config(Keys.new(), ["10.77.0.1/24"], peers, listen_port=51821)
    # the key comes from a root-only file instead
    text = re.sub(r'(?m)^private_key = ".*"$', f'private_key_file = "{key_file}"', text, count=1)
    uapi = os.path.join(os.path.dirname(sock), "uapi")
    head = f'[daemon]\ncontrol_socket = "{sock}"\nuapi_dir = "{uapi}"\nuser = "{user}"\n'
    return text.replace("[daemon]\n", head, 1)


def test_runs_as_the_user_with_cap_net_admin_only(testbed, three_hosts, system_user, workdir):
    h1, h2, h3 = three_hosts
    td_keys, go_keys, go3_keys = Keys.new(), Keys.new(), Keys.new()
    go = WgGo.start(h2.ns, testbed.ifname("wg"), go_keys, 51820, "10.77.0.2/24")
    go.set_peer(td_keys.public_b64, ["10.77.0.1/32"])
    go3 = WgGo.start(h3.ns, testbed.ifname("wh"), go3_keys, 51820, "10.77.0.3/24")
    go3.set_peer(td_keys.public_b64, ["10.77.0.1/32"])
    user = system_user.pw_name
    key_file = _secret(os.path.join(workdir, "wg0.key"), td_keys.private_b64)  # root's, 0600
    sock, cfg = os.path.join(workdir, "ctl.sock"), os.path.join(workdir, "site.toml")
    peer2 = PeerSpec(go_keys.public_b64, ["10.77.0.2/32"], endpoint=f"{h2.ip}:51820")
    _secret(cfg, _config(user, sock, key_file, [peer2]), owner=system_user)
    log_path = os.path.join(workdir, "daemon.log")
    notify = NotifySocket(os.path.join(workdir, "notify.sock"))
    os.chmod(notify.path, 0o777)  # as systemd's /run/systemd/notify: any service user may send
    notify.start_reader()
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "200000"}
    with open(log_path, "wb") as log:
        argv = [sys.executable, "-m", "tunneld", "--config", cfg]
        proc = h1.ns.popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log,
                           stderr=subprocess.STDOUT)  # fmt: skip
    daemon = TunneldProcess(h1.ns, "tunneld", proc, cfg, sock, log_path)
    try:
        daemon.wait_ready()
        wait_for(lambda: "running as" in daemon.stderr(), 5, what="privilege drop logged")
        wait_for(lambda: notify.seen("READY"), 5, what="READY=1 after the switch")
        assert notify.seen("READY")[0][1] == proc.pid
        status = open(f"/proc/{proc.pid}/status").read()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1:] == [str(system_user.pw_uid)] * 4, uid_line
        gid_line = next(line for line in status.splitlines() if line.startswith("Gid:"))
        assert gid_line.split()[1:] == [str(system_user.pw_gid)] * 4, gid_line
        caps = capabilities(proc.pid)
        assert caps["CapEff"] == caps["CapPrm"] == 1 << CAP_NET_ADMIN, caps
        assert caps["CapInh"] == caps["CapAmb"] == 0, caps
        for task in os.listdir(f"/proc/{proc.pid}/task"):  # no thread kept more
            assert capabilities(f"{proc.pid}/task/{task}")["CapEff"] in (0, 1 << CAP_NET_ADMIN)

        wait_ping(h1.ns, "10.77.0.2")
        assert h1.ns.ping("10.77.0.2", count=3) == (3, 3)
        assert os.path.exists(os.path.join(workdir, "uapi", "wg0.sock"))  # opened before the switch

        # SIGHUP adding a peer: its route is installed (CAP_NET_ADMIN at work), it answers,
        # and the root-only private key file was not re-read (the key from start is kept)
        peer3 = PeerSpec(go3_keys.public_b64, ["10.77.0.3/32"], endpoint=f"{h3.ip}:51820")
        _secret(cfg, _config(user, sock, key_file, [peer2, peer3]), owner=system_user)
        daemon.reload()
        wait_for(lambda: "reloaded" in daemon.stderr(), 30, what="reload as the user")
        wait_ping(h1.ns, "10.77.0.3")
        routes = h1.ns.ip("route", "show", "dev", "wg0").stdout
        assert "10.77.0.3" in routes, (routes, daemon.stderr())
        assert h1.ns.ping("10.77.0.2", count=2) == (2, 2), daemon.stderr()[-4000:]

        # a new key file the user cannot read: the reload fails naming it; chowned, it works
        psk_file = _secret(os.path.join(workdir, "peer3.psk"), new_psk())
        peer3.preshared_key = None
        text = _config(user, sock, key_file, [peer2, peer3]).replace(
            f'public_key = "{go3_keys.public_b64}"',
            f'public_key = "{go3_keys.public_b64}"\npreshared_key_file = "{psk_file}"',
        )
        _secret(cfg, text, owner=system_user)
        daemon.reload()
        wait_for(lambda: "reload rejected" in daemon.stderr(), 30, what="rejected reload")
        rejected = daemon.stderr().split("reload rejected", 1)[1].splitlines()[0]
        assert psk_file in rejected and f"chown {user}" in rejected, rejected
        os.chown(psk_file, system_user.pw_uid, system_user.pw_gid)
        daemon.reload()
        wait_for(lambda: daemon.stderr().count("reloaded") >= 2, 30, what="reload with the psk")
        assert h1.ns.ping("10.77.0.2", count=2) == (2, 2), daemon.stderr()[-4000:]
        assert daemon.alive
        pings = len(notify.seen("WATCHDOG"))  # the user's pings still reach the socket
        wait_for(lambda: len(notify.seen("WATCHDOG")) > pings, 5, what="a watchdog ping")
        assert daemon.stop() == 0, daemon.stderr()[-3000:]
        wait_for(lambda: notify.seen("STOPPING"), 5, what="STOPPING=1")
    finally:
        if daemon.alive:
            daemon.kill()
        go.stop()
        go3.stop()
        notify.close()


def test_without_cap_setuid_the_switch_is_a_clear_error(testbed, two_hosts, system_user, workdir):
    h1, _ = two_hosts
    sock, cfg = os.path.join(workdir, "ctl.sock"), os.path.join(workdir, "site.toml")
    key_file = _secret(os.path.join(workdir, "wg0.key"), Keys.new().private_b64)
    _secret(cfg, _config(system_user.pw_name, sock, key_file, []))
    out = h1.ns.run(["setpriv", "--bounding-set=-setuid,-setgid", "--inh-caps=-all",
                     sys.executable, "-m", "tunneld", "--config", cfg],
                    check=False, timeout=30)  # fmt: skip
    assert out.returncode == 1, (out.returncode, out.stderr)
    assert "CAP_SETUID" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert "wg0" not in h1.ns.ip("-o", "link").stdout  # everything of the start torn down
    assert not os.path.exists(sock)
