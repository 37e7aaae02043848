"""IPv6 link-local underlay addresses (issue 9), VXLAN and the plain overlay: a scoped
`local` / `public_ip` ("fe80::...%veth") and peers on the same link. Two tunneld hosts,
each with a decoy interface whose fe80::/64
route is preferred (metric 1), so only a socket bound to the scoped address reaches the
peer. Before the fix the scope was lost at bind (EINVAL: the daemon did not start), and a
static remote written with its scope never matched the unscoped source that recvfrom reports.
"""

from __future__ import annotations

import pytest

from tests.netns.test_wireguard_link_local import _link_local
from tests.netns.vxlan_helpers import vxlan_config
from tunneld.testbed import wait_for

pytestmark = [pytest.mark.netns(), pytest.mark.offload_default_only]


def _decoy(testbed, host, tag: str) -> None:
    decoy, other_end = testbed.ifname(f"{tag}c"), testbed.ifname(f"{tag}e")
    host.ns.ip("link", "add", decoy, "type", "veth", "peer", "name", other_end)
    for dev in (decoy, other_end):
        host.ns.ip("link", "set", dev, "up")
    host.ns.ip("-6", "route", "add", "fe80::/64", "dev", decoy, "metric", "1")


def test_vxlan_between_link_local_vteps(testbed, two_hosts):
    h1, h2 = two_hosts
    _decoy(testbed, h1, "a")
    _decoy(testbed, h2, "b")
    ll1, ll2 = _link_local(h1.ns, h1.iface), _link_local(h2.ns, h2.iface)
    static_mac = "02:00:00:00:77:02"
    d1 = h1.ns.spawn_tunneld(
        vxlan_config(
            f"{ll1}%{h1.iface}",
            [f"{ll2}%{h1.iface}"],
            "10.88.0.1/24",
            fdb=[(static_mac, f"{ll2}%{h1.iface}")],
        ),  # fmt: skip
        "t1",
    )
    d2 = h2.ns.spawn_tunneld(vxlan_config(f"{ll2}%{h2.iface}", [ll1], "10.88.0.2/24"), "t2")
    h2.ns.ip("link", "set", "vx0", "address", static_mac)  # h2's tap is the static MAC
    wait_for(lambda: h1.ns.ping("10.88.0.2", count=1, timeout=1)[1] == 1, 10, what="ping")
    assert h1.ns.ping("10.88.0.2", count=3, interval=0.2) == (3, 3)
    assert h2.ns.ping("10.88.0.1", count=3, interval=0.2) == (3, 3)
    vx1 = d1.show("vx0")["interfaces"]["vx0"]
    assert vx1["flood"] == [ll2]
    entry = next(e for e in vx1["fdb"] if e["mac"] == static_mac)
    assert entry == {"mac": static_mac, "remote": ll2, "static": True, "age": None}
    assert vx1["counters"]["rx_dropped"]["not_allowed_source"] == 0
    learned = [e for e in d2.show("vx0")["interfaces"]["vx0"]["fdb"] if not e["static"]]
    assert learned and all(e["remote"] == ll1 for e in learned)


def _overlay_config(dev: str, own_ip: str, own: int, other_ip: str, other: int) -> str:
    return (
        f'[interfaces.{dev}]\ntype = "overlay"\nnetwork = "10.5.0.0/16"\nsubnet_len = 24\n'
        f'public_ip = "{own_ip}"\nregistry = "static"\nsubnet = "10.5.{own}.0/24"\n'
        f'[[interfaces.{dev}.hosts]]\nsubnet = "10.5.{other}.0/24"\npublic_ip = "{other_ip}"\n'
    )


def test_plain_overlay_between_link_local_hosts(testbed, two_hosts):
    """The overlay's public_ip may be link-local too: the scoped address binds the socket to
    its interface, and a host listed with its scope matches the unscoped source recvfrom
    reports (before the fix: EINVAL at start)."""
    h1, h2 = two_hosts
    _decoy(testbed, h1, "a")
    _decoy(testbed, h2, "b")
    ll1, ll2 = _link_local(h1.ns, h1.iface), _link_local(h2.ns, h2.iface)
    dev = testbed.ifname("ov")
    d1 = h1.ns.spawn_tunneld(
        _overlay_config(dev, f"{ll1}%{h1.iface}", 1, f"{ll2}%{h1.iface}", 2), "t1"
    )
    h2.ns.spawn_tunneld(_overlay_config(dev, f"{ll2}%{h2.iface}", 2, f"{ll1}%{h2.iface}", 1), "t2")
    wait_for(lambda: h1.ns.ping("10.5.2.0", count=1, timeout=1)[1] == 1, 10, what="ping")
    assert h2.ns.ping("10.5.1.0", count=3, interval=0.2) == (3, 3)
    show = d1.show(dev)["interfaces"][dev]
    assert show["routes"][0]["public_ip"] == ll2
    assert not any(show["counters"]["rx_dropped"].values()), show["counters"]
