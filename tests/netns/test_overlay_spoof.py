"""Plain overlay, inner-source spoofing (issue 9): host B sends A a packet whose inner source
is host C's overlay address (or A's own): A drops it and counts `spoofed_source`, while B's
packets from its own subnet, and every ping between the hosts, still get through."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP

from tests.netns.test_overlay_static import PORT, static_config
from tests.netns.vxlan_helpers import send_udp
from tunneld.testbed import wait_for

pytestmark = [pytest.mark.netns("tcpdump"), pytest.mark.offload_default_only]

# From host B to host A (10.5.1.0): three inner sources B did not lease, and one it did
SPOOFED = [
    IP(src="10.5.3.0", dst="10.5.1.0", ttl=64) / ICMP(id=7, seq=1),  # host C's address
    IP(src="10.5.3.99", dst="10.5.1.0", ttl=64) / ICMP(id=7, seq=2),  # in C's subnet
    IP(src="10.5.1.7", dst="10.5.1.0", ttl=64) / ICMP(id=7, seq=3),  # A's own subnet
]
LEGIT = IP(src="10.5.2.0", dst="10.5.1.0", ttl=64) / ICMP(id=7, seq=4)


def test_inner_source_of_another_host_is_dropped_and_counted(testbed, three_hosts):
    dev = testbed.ifname("ov")
    hosts = three_hosts
    daemons = [h.ns.spawn_tunneld(static_config(dev, i, hosts, [1, 2, 3]), name=f"t{i}")
               for i, h in enumerate(hosts, 1)]  # fmt: skip
    a, b = hosts[0], hosts[1]
    assert b.ns.ping("10.5.1.0", count=2, interval=0.1, timeout=2) == (2, 2)

    def counters() -> dict:
        return daemons[0].show(dev)["interfaces"][dev]["counters"]

    before = counters()
    with a.ns.capture(dev) as pcap:  # no filter: the tun's frames are raw IP (no link header)
        send_udp(b.ns, a.ip, PORT, [bytes(p).hex() for p in [*SPOOFED, LEGIT]])
        wait_for(lambda: counters()["rx_packets"] > before["rx_packets"], 5, what="delivery")
    after = counters()
    assert after["rx_dropped"]["spoofed_source"] == before["rx_dropped"]["spoofed_source"] + 3
    assert after["rx_dropped"]["unknown_source"] == before["rx_dropped"]["unknown_source"]
    assert after["rx_packets"] == before["rx_packets"] + 1

    from scapy.all import rdpcap

    frames = [IP(bytes(p)) for p in rdpcap(pcap)]
    on_device = [p for p in frames if IP in p and p[IP].dst == "10.5.1.0"]
    assert [(p[IP].src, p[ICMP].seq) for p in on_device] == [("10.5.2.0", 4)]
    for i, h in enumerate(hosts, 1):  # everyone still reaches everyone
        for j in range(1, 4):
            if j != i:
                wait_for(lambda h=h, j=j: h.ns.ping(f"10.5.{j}.0", count=1, timeout=1)[1] == 1,
                         5, what=f"ping {i} -> {j}")  # fmt: skip
