"""SIGHUP that drops nothing (issue 8 acceptance 6), against real peers in namespaces.

ns1 runs one tunneld with a WireGuard interface (wg0) and a VXLAN interface (vx0); ns2 has a
wireguard-go peer (10.77.0.2) and kernel vxlan devices for VNI 42 (10.88.0.2) and VNI 43
(10.89.0.2, on port 4790); ns3 and ns4 each run one more wireguard-go (10.77.0.3, .4).
While ns1 pings 10.77.0.2 and 10.88.0.2 every 20 ms, a SIGHUP removes the ns3 peer, adds
the ns4 peer, changes the ns2 peer's keepalive and a static FDB entry, and adds vx1: not
one ping is lost, the ns2 session is the same (no new handshake, its counters keep
growing), the new peer and interface answer, the removed peer does not. Then a file whose
apply fails half-way (a new interface whose device name is taken, beside a peer removal)
and a file with a bad key file change nothing, again without losing a ping.
"""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from tests.netns.wg_helpers import Keys, WgGo, tunneld_peer, wait_ping, wg_show
from tunneld.testbed import wait_for

pytestmark = pytest.mark.netns("wireguard-go", "wg", "bridge", "ethtool")

WG_PORT, TD_PORT = 51820, 51821
STATIC_MAC = "02:00:00:00:00:aa"
INTERVAL = 0.02


def site(td: Keys, peers: list[tuple[Keys, str, str, int | None]], fdb_remote: str,
         local: str, flood: str, *, vx1: bool = False, extra: str = "") -> str:  # fmt: skip
    """The whole file: wg0 with `peers` (keys, inner address, endpoint ip, keepalive), vx0
    with one static entry toward `fdb_remote`, and vx1 when asked."""
    text = (f'[daemon]\nlog_level = "info"\n\n[interfaces.wg0]\ntype = "wireguard"\n'
            f'address = ["10.77.0.1/24"]\nlisten_port = {TD_PORT}\n'
            f'private_key = "{td.private_b64}"\n')  # fmt: skip
    for keys, inner, endpoint, keepalive in peers:
        text += (f'[[interfaces.wg0.peers]]\npublic_key = "{keys.public_b64}"\n'
                 f'allowed_ips = ["{inner}/32"]\nendpoint = "{endpoint}:{WG_PORT}"\n')  # fmt: skip
        text += f"persistent_keepalive = {keepalive}\n" if keepalive else ""
    text += (f'\n[interfaces.vx0]\ntype = "vxlan"\nvni = 42\naddress = ["10.88.0.1/24"]\n'
             f'local = "{local}"\nflood = ["{flood}"]\n[[interfaces.vx0.fdb]]\n'
             f'mac = "{STATIC_MAC}"\nremote = "{fdb_remote}"\n')  # fmt: skip
    if vx1:
        text += (f'\n[interfaces.vx1]\ntype = "vxlan"\nvni = 43\nport = 4790\n'
                 f'address = ["10.89.0.1/24"]\nlocal = "{local}"\n'
                 f'flood = ["{flood}"]\n')  # fmt: skip
    return text + extra


def start_pings(ns, *targets: str, count: int) -> list[subprocess.Popen]:
    return [ns.popen(["ping", "-n", "-q", "-i", str(INTERVAL), "-c", str(count), "-W", "1", dst],
                     stdout=subprocess.PIPE, text=True) for dst in targets]  # fmt: skip


def lost(procs: list[subprocess.Popen], count: int) -> list[int]:
    """Pings lost by each of `procs` (each sent `count`)."""
    out = []
    for proc in procs:
        text, _ = proc.communicate(timeout=count * INTERVAL + 30)
        m = re.search(r"(\d+) packets transmitted, (\d+) received", text)
        assert m and int(m.group(1)) == count, text
        out.append(count - int(m.group(2)))
    return out


def reloaded(daemon, marker: str, times: int) -> bool:
    return daemon.stderr().count(marker) >= times


@pytest.fixture
def site_up(testbed):
    h1, h2, h3, h4 = testbed.hub_hosts(4)
    td = Keys.new()
    gos = {}
    for host, inner in ((h2, "10.77.0.2"), (h3, "10.77.0.3"), (h4, "10.77.0.4")):
        keys = Keys.new()
        go = WgGo.start(host.ns, testbed.ifname(f"wg{inner[-1]}"), keys, WG_PORT, f"{inner}/24")
        go.set_peer(td.public_b64, ["10.77.0.1/32"])
        gos[inner] = go
    h2.ns.add_kernel_vxlan("vx0", vni=42, local=h2.ip, dev=h2.iface, flood=[h1.ip],
                           address="10.88.0.2/24")  # fmt: skip
    h2.ns.add_kernel_vxlan("vx1", vni=43, local=h2.ip, dev=h2.iface, port=4790, flood=[h1.ip],
                           address="10.89.0.2/24")  # fmt: skip
    go2, go3, go4 = (gos[a] for a in ("10.77.0.2", "10.77.0.3", "10.77.0.4"))
    first = [(go2.keys, "10.77.0.2", h2.ip, None), (go3.keys, "10.77.0.3", h3.ip, None)]
    daemon = h1.ns.spawn_tunneld(site(td, first, h3.ip, h1.ip, h2.ip))
    for dst in ("10.77.0.2", "10.77.0.3", "10.88.0.2"):
        wait_ping(h1.ns, dst)
    return h1, h2, h3, h4, td, go2, go3, go4, daemon


def test_reload_keeps_sessions_and_traffic_and_a_failed_one_changes_nothing(site_up, testbed):
    h1, h2, h3, h4, td, go2, go3, go4, daemon = site_up
    before = tunneld_peer(daemon, go2.keys.public_b64)
    vx0_before = daemon.show("vx0")["interfaces"]["vx0"]["counters"]
    assert before["latest_handshake"] > 0

    # --- a good reload under traffic -------------------------------------------------------
    count = 250  # 5 s at 20 ms
    pings = start_pings(h1.ns, "10.77.0.2", "10.88.0.2", count=count)
    time.sleep(1.5)
    second = [(go2.keys, "10.77.0.2", h2.ip, 5), (go4.keys, "10.77.0.4", h4.ip, None)]
    good = site(td, second, h4.ip, h1.ip, h2.ip, vx1=True)
    daemon.rewrite_config(good)
    daemon.reload()
    wait_for(lambda: reloaded(daemon, "reloaded:", 1), 5, what="the reload")
    wait_ping(h1.ns, "10.77.0.4", timeout=5)  # the added peer
    assert h1.ns.ping("10.89.0.2", count=2, timeout=2)[1] >= 1  # the added interface
    assert lost(pings, count) == [0, 0], daemon.stderr()

    after = tunneld_peer(daemon, go2.keys.public_b64)
    assert after["latest_handshake"] == before["latest_handshake"], "a new handshake"
    assert after["persistent_keepalive"] == 5
    assert after["rx_bytes"] > before["rx_bytes"] and after["tx_bytes"] > before["tx_bytes"]
    peers = {p["public_key"] for p in wg_show(daemon)["peers"]}
    assert peers == {go2.keys.public_b64, go4.keys.public_b64}
    assert h1.ns.ping("10.77.0.3", count=2, timeout=1)[1] == 0  # the removed peer
    vx0 = daemon.show("vx0")["interfaces"]["vx0"]
    assert {"mac": STATIC_MAC, "remote": h4.ip, "static": True, "age": None} in vx0["fdb"]
    assert vx0["counters"]["tx_packets"] >= vx0_before["tx_packets"] + count  # kept
    assert "rebuilt" not in daemon.stderr() and "restored" not in daemon.stderr()

    # --- a file whose apply fails half-way: a device name taken, and a peer removed --------
    h1.ns.ip("link", "add", "vxbusy", "type", "bridge")  # a device of another kind
    count = 100
    pings = start_pings(h1.ns, "10.77.0.2", "10.88.0.2", count=count)
    time.sleep(0.5)
    broken = site(td, second[:1], h4.ip, h1.ip, h2.ip, vx1=True,
                  extra='\n[interfaces.vxbusy]\ntype = "vxlan"\nvni = 44\nport = 4791\n'
                        f'local = "{h1.ip}"\n')  # fmt: skip
    daemon.rewrite_config(broken)
    daemon.reload()
    wait_for(lambda: reloaded(daemon, "reload failed", 1), 5, what="the failed reload")
    assert lost(pings, count) == [0, 0], daemon.stderr()
    assert "vxbusy" in daemon.stderr().split("reload failed", 1)[1].splitlines()[0]
    shown = daemon.show()["interfaces"]
    assert set(shown) == {"wg0", "vx0", "vx1"}
    assert {p["public_key"] for p in shown["wg0"]["peers"]} == peers  # nothing applied
    assert h1.ns.ping("10.77.0.4", count=2, timeout=2)[1] >= 1

    # --- a bad key file: rejected at load, nothing changes ---------------------------------
    key_file = os.path.join(testbed.tmpdir, "wg0.key")
    with open(key_file, "w") as f:
        f.write(td.private_b64 + "\n")
    os.chmod(key_file, 0o644)  # readable by others: refused
    daemon.rewrite_config(good.replace(f'private_key = "{td.private_b64}"',
                                       f'private_key_file = "{key_file}"'))  # fmt: skip
    daemon.reload()
    wait_for(lambda: reloaded(daemon, "reload rejected", 1), 5, what="the rejected reload")
    assert "private_key_file" in daemon.stderr()
    assert h1.ns.ping("10.77.0.2", count=3, timeout=2) == (3, 3)
    assert h1.ns.ping("10.88.0.2", count=3, timeout=2) == (3, 3)
    final = tunneld_peer(daemon, go2.keys.public_b64)
    assert final["latest_handshake"] == before["latest_handshake"]
    assert daemon.alive


@pytest.mark.netns("etcd", "etcdctl")
def test_sighup_while_waiting_for_etcd_is_held_until_up(testbed):
    """A daemon whose overlay waits for etcd (not running yet) gets two SIGHUPs: it stays
    alive, comes up once etcd answers, then runs one reload of the file as it is then."""
    import json
    import sys

    from tests.netns.test_overlay_etcd import PREFIX, Etcd, etcd_config
    from tunneld.testbed.daemon import TunneldProcess, _with_control_socket

    (h1,) = testbed.hub_hosts(1)
    etcd = Etcd(testbed, f"192.168.{testbed.subnet_octet}.100")
    etcd.start()  # the network config goes in first (kept in etcd's data dir), then etcd
    etcd.put(f"{PREFIX}/config", json.dumps({"Network": "10.6.0.0/16", "Backend": {"Type": "udp"}}))
    etcd.stop()  # down: the daemon waits for it
    dev = testbed.ifname("ov")
    workdir = os.path.join(testbed.tmpdir, "held")
    os.makedirs(workdir)
    sock, path, log_path = (os.path.join(workdir, n) for n in ("ctl.sock", "t.toml", "log"))
    with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(_with_control_socket(etcd_config(dev, h1, etcd.url), sock))
    with open(log_path, "wb") as log:
        argv = [sys.executable, "-m", "tunneld", "--config", path]
        proc = h1.ns.popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    daemon = TunneldProcess(h1.ns, "held", proc, path, sock, log_path)
    wait_for(lambda: "retrying (attempt 1)" in daemon.stderr() or not daemon.alive, 15,
             what="the daemon waiting for etcd")  # fmt: skip
    vxlan = (f'\n[interfaces.vx0]\ntype = "vxlan"\nvni = 42\nlocal = "{h1.ip}"\n'
             f'flood = ["{h1.ip.rsplit(".", 1)[0]}.2"]\n')  # fmt: skip
    daemon.rewrite_config(etcd_config(dev, h1, etcd.url) + vxlan)
    daemon.reload()
    daemon.reload()
    time.sleep(0.5)
    assert daemon.alive, daemon.stderr()
    etcd.start()
    daemon.wait_ready(30)
    wait_for(lambda: "reloaded:" in daemon.stderr(), 10, what="the held reload")
    assert set(daemon.show()["interfaces"]) == {dev, "vx0"}
    assert daemon.stderr().count("reloaded:") == 1, daemon.stderr()
    # exit 0; not timed here: with an etcd registry the process sometimes exits ~2 s after
    # its links are down (seen 1 run in 5; reported, not this test's subject)
    assert daemon.stop(timeout=10) == 0


def test_overlay_hosts_change_without_losing_a_ping(testbed):
    """Overlay (static registry) on four tunneld hosts: h1's SIGHUP removes h3 and adds h4
    while h1 pings h2 every 20 ms; no ping lost, h4 answers, h3 no longer does."""
    from tests.netns.test_overlay_static import static_config

    hosts = testbed.hub_hosts(4)
    dev = testbed.ifname("ov")
    d1 = hosts[0].ns.spawn_tunneld(static_config(dev, 1, hosts, [1, 2, 3]), name="t1")
    for i in (2, 3, 4):
        hosts[i - 1].ns.spawn_tunneld(static_config(dev, i, hosts, [1, 2, 3, 4]), name=f"t{i}")
    for dst in ("10.5.2.0", "10.5.3.0"):
        wait_ping(hosts[0].ns, dst)
    rx_before = d1.show()["interfaces"][dev]["counters"]["rx_packets"]
    count = 150
    pings = start_pings(hosts[0].ns, "10.5.2.0", count=count)
    time.sleep(1.0)
    d1.rewrite_config(static_config(dev, 1, hosts, [1, 2, 4]))
    d1.reload()
    wait_for(lambda: reloaded(d1, "reloaded:", 1), 5, what="the reload")
    wait_ping(hosts[0].ns, "10.5.4.0", timeout=5)
    assert lost(pings, count) == [0], d1.stderr()
    shown = d1.show()["interfaces"][dev]
    assert [r["subnet"] for r in shown["routes"]] == ["10.5.2.0/24", "10.5.4.0/24"]
    assert shown["counters"]["rx_packets"] >= rx_before + count  # counters kept
    assert hosts[0].ns.ping("10.5.3.0", count=1, timeout=1)[1] == 0
    assert "rebuilt" not in d1.stderr()
