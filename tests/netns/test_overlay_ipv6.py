"""The overlay over an IPv6 underlay with dual-stack inner addresses (flannel's dual stack).

Three hosts on one hub segment talk over their IPv6 underlay addresses only
(public_ip = fdXX::N); each holds an IPv4 subnet of 10.9.0.0/16 and an IPv6 subnet
of fd7e:9::/48, with the device on both subnets' first addresses (/32 and /128).
Every pair pings over IPv4 and IPv6, with the static registry (plain and WireGuard
transports) and with the etcd registry, where a real etcd (reached over IPv6 too)
holds flannel's dual-stack leases: one key per host, `10.9.N.0-24&fd7e:9:0:M::-64`,
with PublicIP "0.0.0.0" and PublicIPv6. A dual-stack lease written by hand in
flannel's format becomes routes that the data path uses (a capture at that lease's
PublicIPv6 sees the raw IPv4 and IPv6 packets in UDP).
"""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap

import pytest
from scapy.all import UDP, IPv6, rdpcap

from tests.netns.test_overlay_etcd import Etcd
from tests.netns.wg_helpers import Keys
from tunneld.testbed import wait_for
from tunneld.testbed.transfer import tcp_both_ways

pytestmark = pytest.mark.netns("tcpdump", "etcd", "etcdctl")

NETWORK, NETWORK6 = "10.9.0.0/16", "fd7e:9::/48"
PORT = 8285
PREFIX = "/coreos.com/network"
TCP_BYTES = 8 * 2**20  # each way
# flannel pkg/subnet/subnet.go subnetRegex (a key flannel can parse), with the prefix
FLANNEL_KEY = re.compile(r"(\d+\.\d+.\d+.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$")


def v4(i: int) -> str:
    return f"10.9.{i}.0"


def v6(i: int) -> str:
    return f"fd7e:9:0:{i:x}::"


def static_config(dev: str, me: int, hosts: list, encryption: str, keys: list) -> str:
    text = textwrap.dedent(f"""
        [interfaces.{dev}]
        type = "overlay"
        network = "{NETWORK}"
        ipv6_network = "{NETWORK6}"
        public_ip = "{hosts[me - 1].ip6}"
        subnet = "{v4(me)}/24"
        ipv6_subnet = "{v6(me)}/64"
        encryption = "{encryption}"
    """)
    if encryption == "wireguard":
        text += f'private_key = "{keys[me - 1][0]}"\nlisten_port = 51820\n'
    for i in range(1, len(hosts) + 1):
        if i == me:
            continue
        text += (f'[[interfaces.{dev}.hosts]]\nsubnet = "{v4(i)}/24"\n'
                 f'ipv6_subnet = "{v6(i)}/64"\npublic_ip = "{hosts[i - 1].ip6}"\n')  # fmt: skip
        if encryption == "wireguard":
            text += f'public_key = "{keys[i - 1][1]}"\n'
    return text


def keypairs(n: int) -> list[tuple[str, str]]:
    return [(k.private_b64, k.public_b64) for k in (Keys.new() for _ in range(n))]


def ping_all_pairs(hosts, addresses: list[tuple[str, str]]) -> None:
    for i, h in enumerate(hosts):
        for j, (four, six) in enumerate(addresses):
            if i != j:
                for dst in (four, six):
                    got = h.ns.ping(dst, count=2, interval=0.05, timeout=2)
                    assert got[1] >= 1, (i, j, dst, got)


SPOOFER = """
import socket, sys
from scapy.all import IPv6, UDP, Raw
src, dst, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind((src, 0))
for inner in ("fd7e:9:0:3::5", "fd7e:9:0:1::5"):
    s.sendto(bytes(IPv6(src=inner, dst="fd7e:9:0:1::") / UDP(sport=9, dport=9) / Raw(b"x")),
             (dst, port))
"""


def iface(daemon, dev: str) -> dict:
    return daemon.show()["interfaces"][dev]


@pytest.mark.parametrize("encryption", ["none", "wireguard"])
def test_static_dual_stack_over_ipv6_underlay(testbed, three_hosts, encryption):
    dev, hosts = testbed.ifname("ov"), three_hosts
    keys = keypairs(3) if encryption == "wireguard" else []
    daemons = [h.ns.spawn_tunneld(static_config(dev, i, hosts, encryption, keys), name=f"t{i}")
               for i, h in enumerate(hosts, 1)]  # fmt: skip
    ping_all_pairs(hosts, [(v4(i), v6(i)) for i in (1, 2, 3)])
    # TCP inside over IPv6 both ways, every byte checked (offload on: TSO6 super-packets)
    results = tcp_both_ways(hosts[0].ns, hosts[1].ns, v6(2), TCP_BYTES, timeout=60)
    assert not [p for r in results for p in r.problems()], results
    for r in results:
        print(
            f"{encryption} inner IPv6 {r.direction}: {TCP_BYTES * 8 / r.seconds / 1e6:.0f} Mbit/s"
        )
    show = iface(daemons[0], dev)
    assert (show["subnet"], show["ipv6_subnet"]) == ("10.9.1.0/24", "fd7e:9:0:1::/64")
    assert show["ipv6_network"] == NETWORK6
    assert [(r["subnet"], r["ipv6_subnet"], r["public_ip"]) for r in show["routes"]] == [
        ("10.9.2.0/24", "fd7e:9:0:2::/64", hosts[1].ip6),
        ("10.9.3.0/24", "fd7e:9:0:3::/64", hosts[2].ip6),
    ]
    rx = show["counters"]["rx_dropped"]
    assert rx["spoofed_source"] == 0 and rx["unknown_source"] == 0, rx
    # the device: the subnets' first addresses, one route per network (flannel's layout)
    addrs = hosts[0].ns.run(["ip", "-o", "addr", "show", "dev", dev]).stdout
    assert "inet 10.9.1.0/32" in addrs and "inet6 fd7e:9:0:1::/128" in addrs, addrs
    routes6 = hosts[0].ns.run(["ip", "-6", "route", "show", "dev", dev]).stdout
    assert "fd7e:9::/48" in routes6, routes6
    if encryption == "none":  # the wire: IPv6 outer, the raw inner packet as the UDP payload
        h1 = hosts[0]
        with h1.ns.capture(h1.iface, f"ip6 and udp port {PORT}", count=4) as pcap:
            assert h1.ns.ping(v6(2), count=1, timeout=2)[1] == 1
            assert h1.ns.ping(v4(2), count=1, timeout=2)[1] == 1
        got = {bytes(p[UDP].payload)[0] >> 4 for p in rdpcap(pcap) if IPv6 in p and UDP in p}
        assert got == {4, 6}, got
        # host 2 speaking for host 3's (and host 1's) IPv6 subnet is dropped and counted
        hosts[1].ns.run([sys.executable, "-c", SPOOFER, hosts[1].ip6, h1.ip6, str(PORT)])
        wait_for(lambda: iface(daemons[0], dev)["counters"]["rx_dropped"]["spoofed_source"] >= 2,
                 5, 0.1, what="spoofed IPv6 sources counted")  # fmt: skip
        assert iface(daemons[0], dev)["counters"]["rx_dropped"]["spoofed_source"] == 2
    else:
        peers = [r.get("latest_handshake", 0) for r in show["routes"]]
        assert all(peers), show["routes"]


@pytest.fixture
def etcd6(testbed):
    x = testbed.subnet_octet
    etcd = Etcd.__new__(Etcd)
    etcd.ns = testbed.add_ns("etcd")
    testbed.attach(etcd.ns, [f"192.168.{x}.100/24", f"fd{x:02x}::100/64"])
    etcd.ip, etcd.url = f"fd{x:02x}::100", f"http://[fd{x:02x}::100]:2379"
    etcd.data = os.path.join(testbed.tmpdir, "etcd-data")
    etcd.log = os.path.join(testbed.tmpdir, "etcd.log")
    etcd.proc = None
    etcd.start()
    config = {"Network": NETWORK, "EnableIPv6": True, "IPv6Network": NETWORK6,
              "Backend": {"Type": "udp"}}  # fmt: skip
    etcd.put(f"{PREFIX}/config", json.dumps(config))
    return etcd


def etcd_config(dev: str, host, url: str) -> str:
    return textwrap.dedent(f"""
        [interfaces.{dev}]
        type = "overlay"
        public_ip = "{host.ip6}"
        registry = "etcd"
        etcd_endpoints = ["{url}"]
        lease_ttl = 60
    """)


def test_etcd_dual_stack_leases_and_a_hand_written_flannel_lease(testbed, etcd6):
    dev, etcd = testbed.ifname("ov"), etcd6
    hosts = testbed.hub_hosts(4)  # the fourth only captures: the hand-written lease's host
    # host 1's lease from before IPv6 was enabled: flannel deletes such a lease, so do we
    stale = f"{PREFIX}/subnets/10.9.50.0-24"
    etcd.put(stale, json.dumps({"PublicIP": "0.0.0.0", "PublicIPv6": hosts[0].ip6,
                                "BackendType": "udp"}))  # fmt: skip
    daemons = [h.ns.spawn_tunneld(etcd_config(dev, h, etcd.url), name=f"t{i}")
               for i, h in enumerate(hosts[:3], 1)]  # fmt: skip
    shows = [iface(d, dev) for d in daemons]
    pairs = [(s["subnet"], s["ipv6_subnet"]) for s in shows]
    assert all(four and six and six.endswith("/64") for four, six in pairs), pairs
    assert len({six for _, six in pairs}) == 3 and "fd7e:9::/64" not in pairs  # SubnetMin
    ping_all_pairs(hosts[:3], [(f.split("/")[0], s.split("/")[0]) for f, s in pairs])

    # our leases as flannel writes and reads them: one key with both subnets
    keys = etcd.ctl("get", "--prefix", "--keys-only", f"{PREFIX}/subnets/").stdout.split()
    assert len(keys) == 3 and stale not in keys, keys
    for key in keys:
        m = FLANNEL_KEY.search(key)
        assert m and m.group(3), key
        lease = json.loads(etcd.get(key))
        host = next(h for h, (f, s) in zip(hosts, pairs, strict=False)
                    if f == f"{m.group(1)}/{m.group(2)}")  # fmt: skip
        assert lease["PublicIP"] == "0.0.0.0" and lease["PublicIPv6"] == host.ip6, lease
        assert lease["BackendType"] == "udp"

    # a dual-stack lease written by hand in flannel's format becomes routes
    h4 = hosts[3]
    hand = {"PublicIP": "0.0.0.0", "PublicIPv6": h4.ip6, "BackendType": "udp",
            "BackendData": None, "BackendV6Data": None}  # fmt: skip
    etcd.put(f"{PREFIX}/subnets/10.9.200.0-24&fd7e:9:0:c8::-64", json.dumps(hand))
    for d in daemons:
        wait_for(lambda d=d: ("10.9.200.0/24", "fd7e:9:0:c8::/64", h4.ip6) in
                 [(r["subnet"], r.get("ipv6_subnet"), r["public_ip"])
                  for r in iface(d, dev)["routes"]], 5, 0.1, what="hand-written lease")  # fmt: skip
    with h4.ns.capture(h4.iface, f"ip6 and udp dst port {PORT}", count=2) as pcap:
        hosts[0].ns.ping("10.9.200.1", count=1, timeout=0.3)
        hosts[0].ns.ping("fd7e:9:0:c8::1", count=1, timeout=0.3)
    inner = [bytes(p[UDP].payload) for p in rdpcap(pcap) if IPv6 in p and UDP in p]
    assert {b[0] >> 4 for b in inner} == {4, 6}, inner
    assert all(p[IPv6].src == hosts[0].ip6 for p in rdpcap(pcap) if IPv6 in p)

    # a restarted host gets both its subnets back (the lease was not revoked)
    assert daemons[1].stop() == 0
    again = hosts[1].ns.spawn_tunneld(etcd_config(dev, hosts[1], etcd.url), name="t2again")
    show = iface(again, dev)
    assert (show["subnet"], show["ipv6_subnet"]) == pairs[1]
    assert hosts[0].ns.ping(pairs[1][1].split("/")[0], count=1, timeout=2) == (1, 1)


def test_etcd_dual_stack_wireguard_over_ipv6(testbed, etcd6):
    dev, etcd = testbed.ifname("ov"), etcd6
    config = {"Network": NETWORK, "EnableIPv6": True, "IPv6Network": NETWORK6,
              "Backend": {"Type": "wireguard"}}  # fmt: skip
    etcd.put(f"{PREFIX}/config", json.dumps(config))
    hosts, keys = testbed.hub_hosts(2), keypairs(2)
    daemons = [h.ns.spawn_tunneld(etcd_config(dev, h, etcd.url) + 'encryption = "wireguard"\n'
                                  f'private_key = "{k[0]}"\n', name=f"t{i}")
               for i, (h, k) in enumerate(zip(hosts, keys, strict=True), 1)]  # fmt: skip
    pairs = [(iface(d, dev)["subnet"], iface(d, dev)["ipv6_subnet"]) for d in daemons]
    ping_all_pairs(hosts, [(f.split("/")[0], s.split("/")[0]) for f, s in pairs])
    key = next(k for k in etcd.ctl("get", "--prefix", "--keys-only", f"{PREFIX}/subnets/")
               .stdout.split() if pairs[0][0].replace("/", "-") in k)  # fmt: skip
    lease = json.loads(etcd.get(key))
    data = {"PublicKey": keys[0][1], "Port": 51820}
    assert lease["BackendData"] == lease["BackendV6Data"] == data, lease  # as flannel writes
    assert lease["PublicIPv6"] == hosts[0].ip6
    route = iface(daemons[0], dev)["routes"][0]
    assert route["endpoint"] == f"[{hosts[1].ip6}]:51820" and route["latest_handshake"], route
