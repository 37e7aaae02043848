"""L2 over WireGuard (issue 10, acceptance 6): two sites, each one tunneld with wg0 and a
VXLAN vx0 whose `local` is wg0's address (configs/l2-over-wireguard.toml's shape).

vx0 is written before wg0 in both files: the daemon starts wg0 first anyway (the VXLAN
socket binds wg0's address). vx0's default MTU is wg0's minus VXLAN's 50; a ping of
exactly that size with DF crosses. ARP, ping and iperf3 (both ways) cross the VXLAN
addresses, and a capture on the underlay shows only WireGuard: every UDP datagram is to
or from port 51820, none is VXLAN's 4789.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.netns.wg_helpers import Keys, wg_show
from tunneld.testbed import wait_for

pytestmark = pytest.mark.netns("ping", "iperf3", "tcpdump")

WG_PORT, VX_PORT = 51820, 4789


def _frames(pcap: str, bpf: str = "") -> list[str]:
    """tcpdump's one-line summaries of the frames of `pcap` that match `bpf`."""
    out = subprocess.run(["tcpdump", "-r", pcap, "-n", "-q", *bpf.split()], check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    return out.splitlines()


def _site(n: int, keys: Keys, peer: Keys, peer_ip: str) -> str:
    other = 3 - n
    return f"""
[daemon]
log_level = "info"

[interfaces.vx0]
type = "vxlan"
vni = 100
local = "10.99.0.{n}"
port = {VX_PORT}
flood = ["10.99.0.{other}"]
address = ["10.88.0.{n}/24"]

[interfaces.wg0]
type = "wireguard"
address = ["10.99.0.{n}/24"]
listen_port = {WG_PORT}
private_key = "{keys.private_b64}"

[[interfaces.wg0.peers]]
public_key = "{peer.public_b64}"
endpoint = "{peer_ip}:{WG_PORT}"
allowed_ips = ["10.99.0.{other}/32"]
"""


def test_vxlan_over_tunneld_wireguard_between_two_sites(testbed):
    a, b = testbed.two_hosts()
    ka, kb = Keys.new(), Keys.new()
    da = a.ns.spawn_tunneld(_site(1, ka, kb, b.ip), "site-a")
    db = b.ns.spawn_tunneld(_site(2, kb, ka, a.ip), "site-b")
    wait_for(lambda: a.ns.ping("10.88.0.2", count=1, timeout=1)[1] == 1, 15,
             what="first ping across vx0 (ARP flooded through wg0)")  # fmt: skip

    show = da.show()["interfaces"]
    wg_mtu, vx_mtu = show["wg0"]["mtu"], show["vx0"]["mtu"]
    assert vx_mtu == wg_mtu - 50, show["vx0"].get("mtu_source")
    fdb = {e["remote"] for e in show["vx0"]["fdb"] if not e["static"]}
    assert fdb == {"10.99.0.2"}, show["vx0"]["fdb"]  # learned: site B's MAC behind its wg0

    with a.ns.capture(a.iface, "udp") as pcap:
        assert a.ns.ping("10.88.0.2", count=5, interval=0.1) == (5, 5)
        assert b.ns.ping("10.88.0.1", count=3, interval=0.1, size=vx_mtu - 28,
                         dont_fragment=True) == (3, 3)  # fmt: skip  # the full stacked MTU
        up = a.ns.iperf3_pair(b.ns, "10.88.0.2", seconds=1)
        down = a.ns.iperf3_pair(b.ns, "10.88.0.2", seconds=1, reverse=True)
    assert up["bytes"] > 1_000_000 and down["bytes"] > 1_000_000, (up, down)
    assert len(_frames(pcap)) > 500  # the pings' and iperf3's datagrams went through here
    assert _frames(pcap, f"not port {WG_PORT}") == []  # WireGuard only...
    assert _frames(pcap, f"port {VX_PORT}") == []  # ...and never a VXLAN datagram
    for d in (da, db):
        peers = wg_show(d)["peers"]
        assert peers[0]["rx_bytes"] > 1_000_000 and d.alive


@pytest.mark.offload_default_only
def test_vxlan_address_goes_on_its_bridge_and_only_ours_comes_off(testbed):
    """With `bridge`, `address` is the bridge's (a bridge port's own address never gets
    what the bridge receives); stop takes back what tunneld added, not what was there."""
    a, b = testbed.two_hosts()
    bridge = testbed.ifname("br")
    a.ns.ip("link", "add", bridge, "type", "bridge")
    a.ns.add_addrs(bridge, "10.66.0.1/24")  # the bridge's own, before tunneld
    config = f"""
[interfaces.vx0]
type = "vxlan"
vni = 7
local = "{a.ip}"
bridge = "{bridge}"
address = ["10.88.0.1/24", "10.66.0.1/24"]
"""
    daemon = a.ns.spawn_tunneld(config, "bridged")

    def inet(dev: str) -> set[str]:
        out = a.ns.ip("-o", "-4", "addr", "show", "dev", dev).stdout
        return {line.split()[3] for line in out.splitlines()}

    assert inet(bridge) == {"10.88.0.1/24", "10.66.0.1/24"}
    assert inet("vx0") == set()
    assert daemon.stop(timeout=2) == 0
    assert inet(bridge) == {"10.66.0.1/24"}


@pytest.mark.offload_default_only
def test_reload_adding_vxlan_over_wireguard_starts_the_carrier_first(testbed):
    """A SIGHUP that adds vx0 (written first) and wg0 under it starts wg0 first too."""
    a, b = testbed.two_hosts()
    ka, kb = Keys.new(), Keys.new()
    plain = f'[interfaces.vx9]\ntype = "vxlan"\nvni = 9\nlocal = "{a.ip}"\n'
    daemon = a.ns.spawn_tunneld(plain, "reloaded")
    daemon.rewrite_config(_site(1, ka, kb, b.ip) + "\n" + plain)
    daemon.reload()

    def up() -> dict | None:
        shown = daemon.show()["interfaces"]
        return shown if {"vx0", "wg0", "vx9"} <= set(shown) else None

    shown = wait_for(up, 10, what="vx0 and wg0 added by the reload")
    assert shown["vx0"]["mtu"] == shown["wg0"]["mtu"] - 50
    assert daemon.alive and "reload rejected" not in daemon.stderr()
