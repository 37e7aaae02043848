"""FDB behaviour on the wire: static entries hold, learned entries age, SIGHUP applies live."""

from __future__ import annotations

import pytest

from tests.netns.vxlan_helpers import link_mac, vxlan_config
from tunneld.testbed import wait_for

pytestmark = pytest.mark.netns("bridge", "ethtool")


def _fdb(daemon) -> dict[str, dict]:
    return {e["mac"]: e for e in daemon.show("vx0")["interfaces"]["vx0"]["fdb"]}


def _kernel_peer(h2, h1_ip: str) -> str:
    h2.ns.ip(
        "link",
        "add",
        "vx0",
        "type",
        "vxlan",
        "id",
        "42",
        "dstport",
        "4789",
        "local",
        h2.ip,
        "dev",
        h2.iface,
    )
    h2.ns.run(["sysctl", "-qw", "net.ipv6.conf.vx0.disable_ipv6=1"])  # no ND/MLD refreshes
    h2.ns.run(["ethtool", "-K", h2.iface, "tx", "off"])
    h2.ns.run(["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vx0", "dst", h1_ip])
    h2.ns.add_addrs("vx0", "10.88.0.2/24")
    h2.ns.ip("link", "set", "vx0", "up")
    return link_mac(h2.ns, "vx0")


def test_static_entry_never_moves(testbed, two_hosts):
    h1, h2 = two_hosts
    elsewhere = h1.ip.rsplit(".", 1)[0] + ".99"  # a VTEP that owns the MAC; not h2
    daemon = h1.ns.spawn_tunneld(vxlan_config(h1.ip, [h2.ip], "10.88.0.1/24"))
    kernel_mac = _kernel_peer(h2, h1.ip)
    daemon.rewrite_config(
        vxlan_config(h1.ip, [h2.ip], "10.88.0.1/24", fdb=[(kernel_mac, elsewhere)])
    )
    daemon.reload()
    wait_for(lambda: kernel_mac in _fdb(daemon), 5, what="static entry applied by SIGHUP")
    # the impostor's ARP requests carry the static MAC from the wrong VTEP: all dropped
    assert h2.ns.ping("10.88.0.1", count=3, interval=0.3, timeout=1)[1] == 0
    entry = _fdb(daemon)[kernel_mac]
    assert entry == {"mac": kernel_mac, "remote": elsewhere, "static": True, "age": None}
    drops = daemon.show("vx0")["interfaces"]["vx0"]["counters"]["rx_dropped"]
    assert drops["not_allowed_source"] >= 1


def test_learned_entry_ages_out(testbed, two_hosts):
    h1, h2 = two_hosts
    daemon = h1.ns.spawn_tunneld(vxlan_config(h1.ip, [h2.ip], "10.88.0.1/24", ageing=2))
    kernel_mac = _kernel_peer(h2, h1.ip)
    wait_for(lambda: h1.ns.ping("10.88.0.2", count=1, timeout=1)[1] == 1, 10, what="ping")
    assert _fdb(daemon)[kernel_mac]["static"] is False
    wait_for(
        lambda: kernel_mac not in _fdb(daemon),
        10,
        interval=0.5,
        what="learned entry to age out after 2 s of silence",
    )


def test_sighup_applies_flood_and_static_without_recreating_the_device(testbed, two_hosts):
    h1, h2 = two_hosts
    daemon = h1.ns.spawn_tunneld(vxlan_config(h1.ip, [], "10.88.0.1/24"))
    kernel_mac = _kernel_peer(h2, h1.ip)
    index_before = h1.ns.ip("-o", "link", "show", "vx0").stdout.split(":")[0]
    assert h1.ns.ping("10.88.0.2", count=2, timeout=1)[1] == 0  # no flood list: ARP goes nowhere
    daemon.rewrite_config(vxlan_config(h1.ip, [h2.ip], "10.88.0.1/24", fdb=[(kernel_mac, h2.ip)]))
    daemon.reload()
    wait_for(
        lambda: daemon.show("vx0")["interfaces"]["vx0"]["flood"] == [h2.ip],
        5,
        what="flood list reloaded",
    )
    assert h1.ns.ping("10.88.0.2", count=3) == (3, 3)
    assert _fdb(daemon)[kernel_mac]["static"] is True
    assert h1.ns.ip("-o", "link", "show", "vx0").stdout.split(":")[0] == index_before
    # a broken config on SIGHUP changes nothing
    daemon.rewrite_config("[interfaces.vx0]\ntype = 'vxlan'\nvni = 99999999\n")
    daemon.reload()
    wait_for(lambda: "reload rejected" in daemon.stderr(), 5, what="rejection logged")
    assert h1.ns.ping("10.88.0.2", count=3) == (3, 3)
    assert daemon.show("vx0")["interfaces"]["vx0"]["flood"] == [h2.ip]
