"""Overlay over WireGuard, inner-source spoofing (issue 9): host B's kernel routes packets
whose source is host C's overlay address (or A's own) into B's overlay device; tunneld B
seals them to A under B's key, and A drops them after decryption, counted as
`not_allowed_source` (cryptokey routing: the source must route back to the sending peer).
B's packet from its own subnet, and every ping between the hosts, still get through.
The plain-overlay version is test_overlay_spoof.py; the in-process one is
tests/unit/test_overlay_wg.py."""

from __future__ import annotations

import sys

import pytest
from scapy.all import rdpcap
from scapy.layers.inet import ICMP, IP

from tests.netns.test_overlay_spoof import LEGIT, SPOOFED
from tests.netns.test_overlay_wireguard import first_ping, wg_static_config
from tests.netns.wg_helpers import Keys
from tunneld.testbed import wait_for

pytestmark = [pytest.mark.netns("tcpdump"), pytest.mark.offload_default_only]

# Runs in B's namespace: each hex argument is an IPv4 packet, written whole (IP_HDRINCL: the
# kernel keeps the forged source) and routed by its destination, into B's overlay device.
INJECT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for packet in map(bytes.fromhex, sys.argv[1:]):
    s.sendto(packet, (socket.inet_ntoa(packet[16:20]), 0))
"""


def test_inner_source_of_another_host_is_dropped_after_decryption(testbed, three_hosts):
    dev, hosts = testbed.ifname("ov"), three_hosts
    keys = [Keys.new() for _ in hosts]
    daemons = [h.ns.spawn_tunneld(wg_static_config(dev, i, hosts, keys), name=f"t{i}")
               for i, h in enumerate(hosts, 1)]  # fmt: skip
    a, b = hosts[0], hosts[1]
    first_ping(b.ns, "10.5.1.0")  # B -> A has a session

    def counters() -> dict:
        return daemons[0].show(dev)["interfaces"][dev]["counters"]

    before = counters()

    def arrived() -> bool:
        now = counters()
        return (now["rx_packets"] > before["rx_packets"]
                and now["rx_dropped"]["not_allowed_source"]
                >= before["rx_dropped"]["not_allowed_source"] + 3)  # fmt: skip

    with a.ns.capture(dev) as pcap:  # no filter: the tun's frames are raw IP (no link header)
        b.ns.run([sys.executable, "-c", INJECT, *(bytes(p).hex() for p in [*SPOOFED, LEGIT])])
        try:
            wait_for(arrived, 5, what="delivery and drops")
        except TimeoutError:
            raise AssertionError((before, counters())) from None
    after = counters()
    drops = {k: v - before["rx_dropped"][k] for k, v in after["rx_dropped"].items()}
    assert {k: v for k, v in drops.items() if v} == {"not_allowed_source": 3}, drops
    assert after["rx_packets"] == before["rx_packets"] + 1

    frames = [IP(bytes(p)) for p in rdpcap(pcap)]
    on_device = [p for p in frames if IP in p and p[IP].dst == "10.5.1.0"]
    assert [(p[IP].src, p[ICMP].seq) for p in on_device] == [("10.5.2.0", 4)]
    for i, h in enumerate(hosts, 1):  # everyone still reaches everyone
        for j in range(1, 4):
            if j != i:
                first_ping(h.ns, f"10.5.{j}.0")
                assert h.ns.ping(f"10.5.{j}.0", count=2, interval=0.05) == (2, 2), (i, j)
    assert all(d.alive for d in daemons)
