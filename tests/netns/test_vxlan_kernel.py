"""tunneld's vxlan against the Linux kernel's vxlan device (RFC 7348 interop).

ns1 runs tunneld (tap + VXLAN), ns2 a kernel `vxlan` device with an all-zeros
flood entry toward ns1; both sides learn each other. The wire is captured on the
underlay and decoded with scapy, which nobody here wrote.
"""

from __future__ import annotations

import time

import pytest
from scapy.all import UDP, VXLAN, Ether, rdpcap

from tests.netns.vxlan_helpers import link_mac, udp_flows, vxlan_config
from tunneld.testbed import wait_for

pytestmark = pytest.mark.netns("iperf3", "tcpdump", "bridge", "ethtool")


@pytest.fixture
def pair(testbed, two_hosts):
    h1, h2 = two_hosts
    daemon = h1.ns.spawn_tunneld(vxlan_config(h1.ip, [h2.ip], "10.88.0.1/24"))
    h2.ns.add_kernel_vxlan(
        "vx0", vni=42, local=h2.ip, dev=h2.iface, flood=[h1.ip], address="10.88.0.2/24"
    )
    wait_for(
        lambda: h1.ns.ping("10.88.0.2", count=1, timeout=1)[1] == 1,
        10,
        what="first ping through the tunnel",
    )
    return h1, h2, daemon


def test_ping_both_ways_and_fdbs_agree(pair):
    h1, h2, daemon = pair
    assert h1.ns.ping("10.88.0.2", count=5) == (5, 5)
    assert h2.ns.ping("10.88.0.1", count=5) == (5, 5)
    kernel_mac, our_mac = link_mac(h2.ns, "vx0"), link_mac(h1.ns, "vx0")
    fdb = daemon.show("vx0")["interfaces"]["vx0"]["fdb"]
    assert {"mac": kernel_mac, "remote": h2.ip, "static": False} in [
        {k: e[k] for k in ("mac", "remote", "static")} for e in fdb
    ]
    kernel_fdb = h2.ns.run(["bridge", "fdb", "show", "dev", "vx0"]).stdout
    assert f"{our_mac} dst {h1.ip}" in kernel_fdb, kernel_fdb
    counters = daemon.show("vx0")["interfaces"]["vx0"]["counters"]
    assert counters["rx_packets"] >= 10 and counters["tx_packets"] >= 10
    assert not any(counters["rx_dropped"].values()), counters


def test_iperf3_tcp_moves_data_both_ways(pair):
    h1, h2, daemon = pair
    forward = h1.ns.iperf3_pair(h2.ns, "10.88.0.2", seconds=5)
    backward = h1.ns.iperf3_pair(h2.ns, "10.88.0.2", seconds=5, reverse=True, port=5202)
    assert forward["bytes"] > 1_000_000, forward["bits_per_second"]
    assert backward["bytes"] > 1_000_000, backward["bits_per_second"]
    assert daemon.alive


def test_wire_format_vni_port_and_flow_source_ports(pair):
    h1, h2, _ = pair
    with h2.ns.capture(h2.iface, f"udp and src host {h1.ip}") as pcap:
        udp_flows(h1.ns, h2.ns, "10.88.0.2", range(7000, 7016))
        time.sleep(1.0)  # frames still crossing tunneld when the sender exits
    sports_by_flow: dict[int, set[int]] = {}
    for pkt in rdpcap(pcap):
        if VXLAN not in pkt:
            continue
        assert pkt[UDP].dport == 4789
        assert pkt[VXLAN].vni == 42 and pkt[VXLAN].flags == 0x08
        inner = pkt[VXLAN].payload
        assert isinstance(inner, Ether)
        if UDP in inner and 7000 <= inner[UDP].dport < 7016:
            sports_by_flow.setdefault(inner[UDP].dport, set()).add(pkt[UDP].sport)
    assert len(sports_by_flow) == 16, sports_by_flow
    assert all(len(s) == 1 for s in sports_by_flow.values()), "same flow, same source port"
    distinct = {next(iter(s)) for s in sports_by_flow.values()}
    assert len(distinct) >= 2, f"16 flows all used source port {distinct}"


def test_ipv6_underlay_and_ipv6_inner(testbed, two_hosts):
    h1, h2 = two_hosts
    daemon = h1.ns.spawn_tunneld(vxlan_config(h1.ip6, [h2.ip6], "fd88::1/64"))
    h2.ns.add_kernel_vxlan(
        "vx0", vni=42, local=h2.ip6, dev=h2.iface, flood=[h1.ip6], address="fd88::2/64"
    )
    wait_for(
        lambda: h1.ns.ping("fd88::2", count=1, timeout=1)[1] == 1,
        15,
        what="ping6 over an IPv6 underlay",
    )
    assert h2.ns.ping("fd88::1", count=3) == (3, 3)
    shown = daemon.show("vx0")["interfaces"]["vx0"]
    assert shown["mtu"] == 1500 - 70
    assert {e["remote"] for e in shown["fdb"]} == {h2.ip6}
