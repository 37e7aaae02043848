"""A small WireGuard mesh: two tunneld hosts and two wireguard-go hosts, every one
peered with the other three, on one bridged underlay (hub namespace).

  ns1  tunneld      10.77.0.1   behind it: nothing
  ns2  tunneld      10.77.0.2   behind it: 10.78.2.1 (allowed 10.78.0.0/16 on ns1)
  ns3  wireguard-go 10.77.0.3   behind it: 10.78.3.1 (allowed 10.78.3.0/24 on ns1)
  ns4  wireguard-go 10.77.0.4

Cryptokey routing by longest match: from ns1, 10.78.3.1 goes to ns3 (the /24)
although ns2's /16 also covers it, 10.78.2.1 to ns2. A packet whose inner
source is not in its sender's allowed_ips is dropped and counted.
"""

from __future__ import annotations

import sys
import textwrap

import pytest

from tests.netns.wg_helpers import (
    Keys,
    PeerSpec,
    WgGo,
    tunneld_peer,
    tunneld_wg_config,
    wait_ping,
    wg_show,
)

pytestmark = pytest.mark.netns("wireguard-go", "wg")

PORT = 51820
ALLOWED = {  # what every other node allows for node N
    1: ["10.77.0.1/32"],
    2: ["10.77.0.2/32", "10.78.0.0/16"],
    3: ["10.77.0.3/32", "10.78.3.0/24"],
    4: ["10.77.0.4/32"],
}


@pytest.fixture
def mesh(testbed):
    hosts = testbed.hub_hosts(4)
    keys = {n: Keys.new() for n in ALLOWED}
    nodes = {}
    for n in (3, 4):
        h = hosts[n - 1]
        go = WgGo.start(h.ns, testbed.ifname(f"wg{n}"), keys[n], PORT, f"10.77.0.{n}/24")
        for m in ALLOWED:
            if m != n:
                go.set_peer(keys[m].public_b64, ALLOWED[m], f"{hosts[m - 1].ip}:{PORT}")
        nodes[n] = go
    hosts[2].ns.add_addrs("lo", "10.78.3.1/32")
    hosts[1].ns.add_addrs("lo", "10.78.2.1/32")
    for n in (1, 2):
        peers = [PeerSpec(keys[m].public_b64, ALLOWED[m], f"{hosts[m - 1].ip}:{PORT}")
                 for m in ALLOWED if m != n]  # fmt: skip
        config = tunneld_wg_config(keys[n], [f"10.77.0.{n}/24"], peers, listen_port=PORT)
        nodes[n] = hosts[n - 1].ns.spawn_tunneld(config, f"tunneld{n}")
    return hosts, keys, nodes


def test_mesh_routes_by_allowed_ips(mesh):
    hosts, keys, nodes = mesh
    ns = {n: hosts[n - 1].ns for n in ALLOWED}
    wait_ping(ns[1], "10.77.0.2")
    for src, dst in [(1, "10.77.0.2"), (1, "10.77.0.3"), (1, "10.77.0.4"), (2, "10.77.0.1"),
                     (2, "10.77.0.3"), (2, "10.77.0.4"), (3, "10.77.0.4"), (4, "10.77.0.1"),
                     (1, "10.78.3.1"), (1, "10.78.2.1")]:  # fmt: skip
        wait_ping(ns[src], dst, timeout=10)
        assert ns[src].ping(dst, count=3) == (3, 3), (src, dst)
    show = wg_show(nodes[1])
    assert len(show["peers"]) == 3
    by_key = {p["public_key"]: p for p in show["peers"]}
    assert by_key[keys[3].public_b64]["allowed_ips"] == ALLOWED[3]
    for m in (2, 3, 4):
        assert by_key[keys[m].public_b64]["rx_bytes"] > 0, m
    # 10.78.3.1 went to ns3 (longest match), not to ns2's /16: ns3's wireguard-go
    # counted tunneld's packets, and ns1 accepted the reply's inner source from ns3.
    assert show["counters"]["rx_dropped"]["not_allowed_source"] == 0


_SPOOF = textwrap.dedent("""
    import socket, sys
    from scapy.all import ICMP, IP, raw
    src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    for i in range(n):
        s.sendto(raw(IP(src=src, dst=dst) / ICMP(id=77, seq=i) / b"spoofed"), (dst, 0))
""")


@pytest.mark.parametrize("sender", [2, 4], ids=["from-tunneld", "from-wireguard-go"])
def test_inner_source_not_in_allowed_ips_is_dropped(mesh, sender):
    """The sender's tunnel carries a packet whose inner source belongs to another peer
    (10.77.0.3) or to nobody (10.99.0.9): ns1 drops and counts both."""
    hosts, keys, nodes = mesh
    ns1, ns = hosts[0].ns, hosts[sender - 1].ns
    wait_ping(ns, "10.77.0.1")
    before = wg_show(nodes[1])["counters"]["rx_dropped"]["not_allowed_source"]
    for src in ("10.77.0.3", "10.99.0.9"):
        ns.run([sys.executable, "-c", _SPOOF, src, "10.77.0.1", "5"])
    peer = keys[sender].public_b64

    def dropped() -> int:
        return wg_show(nodes[1])["counters"]["rx_dropped"]["not_allowed_source"] - before

    from tunneld.testbed import wait_for

    wait_for(lambda: dropped() >= 10, 5, what="10 spoofed packets counted")
    assert dropped() == 10
    assert ns1.ping(f"10.77.0.{sender}", count=3) == (3, 3)  # the peer itself is fine
    assert tunneld_peer(nodes[1], peer)["rx_bytes"] > 0
