"""The overlay with a static registry: three hosts on one underlay segment.

Every host pings every other host's overlay address (its subnet's network
address, the device's /32); the underlay carries flannel's UDP format, checked
from a capture decoded by scapy: the UDP payload to port 8285 is the raw IPv4
packet, nothing in front. Bad input from the underlay is dropped and counted.
"""

from __future__ import annotations

import sys
import textwrap

import pytest
from scapy.all import IP, UDP, rdpcap

from tunneld.testbed import wait_for

pytestmark = pytest.mark.netns("tcpdump")

NETWORK = "10.5.0.0/16"
PORT = 8285


def subnet_of(i: int) -> str:
    return f"10.5.{i}.0/24"


def static_config(dev: str, me: int, hosts: list, members: list[int]) -> str:
    """tunneld config for host index `me` (1-based) with static hosts `members`."""
    text = textwrap.dedent(f"""
        [daemon]
        log_level = "debug"
        [interfaces.{dev}]
        type = "overlay"
        network = "{NETWORK}"
        subnet_len = 24
        public_ip = "{hosts[me - 1].ip}"
        registry = "static"
        subnet = "{subnet_of(me)}"
    """)
    for i in members:
        if i != me:
            text += (f'[[interfaces.{dev}.hosts]]\nsubnet = "{subnet_of(i)}"\n'
                     f'public_ip = "{hosts[i - 1].ip}"\n')  # fmt: skip
    return text


@pytest.fixture
def overlay3(testbed, three_hosts):
    dev = testbed.ifname("ov")
    daemons = [h.ns.spawn_tunneld(static_config(dev, i, three_hosts, [1, 2, 3]), name=f"t{i}")
               for i, h in enumerate(three_hosts, 1)]  # fmt: skip
    return dev, three_hosts, daemons


def test_all_pairs_ping_and_the_wire_is_raw_ipv4_in_udp(overlay3):
    dev, hosts, daemons = overlay3
    for i, h in enumerate(hosts, 1):
        for j in range(1, 4):
            if j != i:
                assert h.ns.ping(f"10.5.{j}.0", count=2, interval=0.05, timeout=2) == (2, 2), (i, j)
    show = daemons[0].show()["interfaces"][dev]
    assert show["subnet"] == "10.5.1.0/24" and show["network"] == NETWORK
    assert show["routes"] == [{"subnet": "10.5.2.0/24", "public_ip": hosts[1].ip},
                              {"subnet": "10.5.3.0/24", "public_ip": hosts[2].ip}]  # fmt: skip
    assert show["registry"] == {"kind": "static", "connected": True, "lease_expiry": None}
    assert show["mtu"] == 1500 - 28
    assert show["counters"]["rx_packets"] >= 4 and show["counters"]["tx_packets"] >= 4
    assert not any(show["counters"]["rx_dropped"].values()), show["counters"]

    h1, h2 = hosts[0], hosts[1]
    with h1.ns.capture(h1.iface, f"udp port {PORT}", count=4) as pcap:
        assert h1.ns.ping("10.5.2.0", count=2, interval=0.05) == (2, 2)
    datagrams = [p for p in rdpcap(pcap) if UDP in p]
    assert len(datagrams) >= 4
    for p in datagrams:
        assert p[UDP].sport == p[UDP].dport == PORT
        payload = bytes(p[UDP].payload)
        inner = IP(payload)
        assert inner.version == 4 and inner.len == len(payload)  # no header before the packet
        assert {inner.src, inner.dst} == {"10.5.1.0", "10.5.2.0"}
        assert inner.proto == 1  # ICMP echo / reply
        assert {p[IP].src, p[IP].dst} == {h1.ip, h2.ip}


def test_unreachable_subnet_gets_icmp_and_sighup_adds_a_host(testbed, three_hosts):
    dev = testbed.ifname("ov")
    hosts = three_hosts
    d1 = hosts[0].ns.spawn_tunneld(static_config(dev, 1, hosts, [1, 2]), name="t1")
    hosts[1].ns.spawn_tunneld(static_config(dev, 2, hosts, [1, 2, 3]), name="t2")
    hosts[2].ns.spawn_tunneld(static_config(dev, 3, hosts, [1, 2, 3]), name="t3")
    proc = hosts[0].ns.run(["ping", "-n", "-c", "1", "-W", "1", "10.5.3.0"], check=False)
    assert "Unreachable" in proc.stdout, proc.stdout  # ICMP net unreachable from the device
    counters = d1.show()["interfaces"][dev]["counters"]
    assert counters["tx_dropped"]["no_route"] >= 1
    d1.rewrite_config(static_config(dev, 1, hosts, [1, 2, 3]))
    d1.reload()
    wait_for(lambda: len(d1.show()["interfaces"][dev]["routes"]) == 2, 5, what="route after HUP")
    assert hosts[0].ns.ping("10.5.3.0", count=2, interval=0.05) == (2, 2)
    d1.rewrite_config(static_config(dev, 1, hosts, [1, 3]))
    d1.reload()
    wait_for(lambda: len(d1.show()["interfaces"][dev]["routes"]) == 1, 5, what="removal")
    assert hosts[0].ns.ping("10.5.2.0", count=1, timeout=0.5)[1] == 0
    assert d1.alive


SENDER = """
import socket, sys
from scapy.all import IP, UDP, Raw
src, dst, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
def pkt(ttl=64):
    return IP(src="10.5.2.0", dst="10.5.1.0", ttl=ttl) / UDP(sport=9, dport=9) / Raw(b"x" * 32)
good = pkt()
payloads = {
    "not_ipv4": [b"\\x60" + bytes(47), b"junk that is no packet"],
    "truncated": [bytes(good)[:12], bytes(good)[:40]],
    "ttl_expired": [bytes(pkt(ttl=1)), bytes(pkt(ttl=0))],
}
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
for group in payloads.values():
    for p in group:
        s.sendto(p, (dst, port))
"""


def test_bad_input_is_dropped_and_counted(testbed, three_hosts):
    dev = testbed.ifname("ov")
    h1, h2, h3 = three_hosts
    d1 = h1.ns.spawn_tunneld(static_config(dev, 1, three_hosts, [1, 2]), name="t1")
    h2.ns.spawn_tunneld(static_config(dev, 2, three_hosts, [1, 2]), name="t2")
    assert h2.ns.ping("10.5.1.0", count=1) == (1, 1)
    # h2 is registered with h1: bad payloads from its address (any source port)
    h2.ns.run([sys.executable, "-c", SENDER, h2.ip, h1.ip, str(PORT)])
    # h3 is not registered with h1: even a well-formed packet from it is dropped
    h3.ns.run([sys.executable, "-c", SENDER, h3.ip, h1.ip, str(PORT)])

    def counted():
        rx = d1.show()["interfaces"][dev]["counters"]["rx_dropped"]
        return rx if rx["unknown_source"] >= 6 and rx["ttl_expired"] >= 2 else None

    try:
        rx = wait_for(counted, 5, what="drop counters")
    except TimeoutError:
        raise AssertionError(d1.show()["interfaces"][dev]["counters"]) from None
    assert rx["unknown_source"] == 6
    assert rx["not_ipv4"] == 2 and rx["truncated"] == 2 and rx["ttl_expired"] == 2
    assert h2.ns.ping("10.5.1.0", count=1) == (1, 1)  # still forwarding
