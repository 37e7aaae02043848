"""Three VTEPs on one underlay segment: two tunnelds and a kernel vxlan device.

Every VTEP floods BUM frames to the other two (all-zeros FDB entries). A
broadcast must reach both others; once MACs are learned, unicast must go only
to its owner. Both are counted on the wire, in each underlay namespace.
"""

from __future__ import annotations

import time

import pytest
from scapy.all import ARP, ICMP, VXLAN, rdpcap

from tests.netns.vxlan_helpers import vxlan_config
from tunneld.testbed import wait_for

pytestmark = pytest.mark.netns("tcpdump", "bridge", "ethtool")


def _inner(pcap: str, layer) -> list:
    return [p[VXLAN].payload for p in rdpcap(pcap) if VXLAN in p and layer in p[VXLAN].payload]


def test_flood_reaches_all_then_unicast_only_its_owner(testbed, three_hosts):
    h1, h2, h3 = three_hosts
    ips = [h.ip for h in three_hosts]
    d1 = h1.ns.spawn_tunneld(vxlan_config(h1.ip, [ips[1], ips[2]], "10.88.0.1/24"), "t1")
    d2 = h2.ns.spawn_tunneld(vxlan_config(h2.ip, [ips[0], ips[2]], "10.88.0.2/24"), "t2")
    h3.ns.add_kernel_vxlan(
        "vx0", local=h3.ip, dev=h3.iface, flood=[ips[0], ips[1]], address="10.88.0.3/24"
    )

    # ARP request from h1 for 10.88.0.3: a broadcast, replicated to both others.
    with (
        h2.ns.capture(h2.iface, "udp port 4789") as at2,
        h3.ns.capture(h3.iface, "udp port 4789") as at3,
    ):
        wait_for(
            lambda: h1.ns.ping("10.88.0.3", count=1, timeout=1)[1] == 1,
            10,
            what="ping h1 -> kernel VTEP",
        )
        time.sleep(0.5)
    for pcap in (at2, at3):
        requests = [a for a in _inner(pcap, ARP) if a[ARP].op == 1 and a[ARP].pdst == "10.88.0.3"]
        assert requests, (
            f"broadcast ARP request not replicated: {[p.summary() for p in rdpcap(pcap)]}"
        )

    # Learned both ways now: 20 unicast pings h1 -> h3 must not touch h2.
    with (
        h2.ns.capture(h2.iface, "udp port 4789") as at2,
        h3.ns.capture(h3.iface, "udp port 4789") as at3,
    ):
        assert h1.ns.ping("10.88.0.3", count=20, interval=0.05) == (20, 20)
        time.sleep(0.5)
    echo_to_h3 = [p for p in _inner(at3, ICMP) if p[ICMP].type == 8]
    echo_at_h2 = [p for p in _inner(at2, ICMP) if p[ICMP].type == 8]
    assert len(echo_to_h3) >= 20
    assert echo_at_h2 == [], f"{len(echo_at_h2)} unicast frames leaked to a non-owner"

    # And the two tunnelds reach each other through the same mesh.
    assert h2.ns.ping("10.88.0.1", count=3) == (3, 3)
    fdb1 = {e["remote"] for e in d1.show()["interfaces"]["vx0"]["fdb"]}
    assert {h2.ip, h3.ip} <= fdb1
    assert d2.alive
