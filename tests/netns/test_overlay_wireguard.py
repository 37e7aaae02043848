"""The overlay with `encryption = "wireguard"`: flannel's wireguard backend, in tunneld.

* Three hosts with a static registry ping each other over WireGuard; the
  underlay carries only WireGuard messages on UDP 51820 (handshake types 1/2,
  transport type 4), never flannel-UDP's raw IPv4 in 8285.
* Three hosts with etcd: their leases are flannel's wireguard-backend JSON
  (pkg/backend/wireguard/wireguard.go newSubnetAttrs: "BackendType":
  "wireguard", "BackendData": {"PublicKey": base64, "Port": 51820}), read back
  with etcdctl; every pair pings.
* A wireguard-go host set up by hand from the leases, the way flannel's backend
  does it (device.go: peer endpoint PublicIP:Port, allowed ips the subnet; the
  device gets its subnet's address as a /32 and one route for the network),
  exchanges pings both ways with a tunneld host.
"""

from __future__ import annotations

import base64
import json
import textwrap

import pytest
from scapy.all import IP, UDP, rdpcap

from tests.netns.test_overlay_etcd import Etcd, etcd_config
from tests.netns.wg_helpers import Keys, WgGo
from tunneld.testbed import wait_for

pytestmark = pytest.mark.netns("tcpdump")

NETWORK = "10.5.0.0/16"
WG_PORT = 51820
PLAIN_PORT = 8285
PREFIX = "/coreos.com/network"
ETCD_NETWORK = "10.6.0.0/16"


def subnet_of(i: int) -> str:
    return f"10.5.{i}.0/24"


def wg_static_config(dev: str, me: int, hosts: list, keys: list[Keys],
                     members: list[int] | None = None) -> str:  # fmt: skip
    """tunneld config for host `me` (1-based): static registry, WireGuard transport,
    listing the other hosts of `members` (default: all)."""
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
        encryption = "wireguard"
        private_key = "{keys[me - 1].private_b64}"
    """)
    for i in members or range(1, len(hosts) + 1):
        if i != me:
            text += (f'[[interfaces.{dev}.hosts]]\nsubnet = "{subnet_of(i)}"\n'
                     f'public_ip = "{hosts[i - 1].ip}"\n'
                     f'public_key = "{keys[i - 1].public_b64}"\n')  # fmt: skip
    return text


def first_ping(ns, dst: str, timeout: float = 10.0) -> None:
    """Until one ping answers (the first one waits for a handshake)."""
    wait_for(lambda: ns.ping(dst, count=1, timeout=1)[1] == 1, timeout,
             what=f"first ping {dst} from {ns.name}")  # fmt: skip


def handshake_lines(daemon, peer: Keys) -> int:
    """How many handshakes with `peer` the daemon logged."""
    tag = f"peer {peer.public_b64[:8]}"
    return sum(tag in line and "handshake complete" in line
               for line in daemon.stderr().splitlines())  # fmt: skip


def iface(daemon, dev: str) -> dict:
    return daemon.show()["interfaces"][dev]


def wg_message_type(payload: bytes) -> int:
    """WireGuard's type byte (1-4) when the 3 reserved bytes are zero, else 0."""
    if len(payload) < 4 or payload[1:4] != b"\0\0\0" or payload[0] not in (1, 2, 3, 4):
        return 0
    return payload[0]


def test_static_three_hosts_ping_over_wireguard_and_the_wire_is_wireguard(testbed, three_hosts):
    dev, hosts = testbed.ifname("ov"), three_hosts
    keys = [Keys.new() for _ in hosts]
    h1, h2 = hosts[0], hosts[1]
    with h1.ns.capture(h1.iface, "udp", count=6) as pcap:
        daemons = [h.ns.spawn_tunneld(wg_static_config(dev, i, hosts, keys), name=f"t{i}")
                   for i, h in enumerate(hosts, 1)]  # fmt: skip
        first_ping(h1.ns, "10.5.2.0")  # h1 initiates: initiation, response, transport
        assert h1.ns.ping("10.5.2.0", count=2, interval=0.05) == (2, 2)
    datagrams = [p for p in rdpcap(pcap) if UDP in p and IP in p]
    assert len(datagrams) >= 6, [p.summary() for p in datagrams]
    kinds = set()
    for p in datagrams:
        payload = bytes(p[UDP].payload)
        assert p[UDP].sport == p[UDP].dport == WG_PORT, p.summary()
        assert {p[IP].src, p[IP].dst} == {h1.ip, h2.ip}, p.summary()
        kind = wg_message_type(payload)
        assert kind, payload[:8].hex()
        kinds.add(kind)
        if kind == 4:  # header 16 + padded payload + tag 16
            assert len(payload) >= 32 and (len(payload) - 32) % 16 == 0
        assert not payload.startswith(b"\x45")  # never a raw IPv4 packet
    assert {1, 2, 4} <= kinds, kinds

    for i, h in enumerate(hosts, 1):
        for j in range(1, 4):
            if j != i:
                first_ping(h.ns, f"10.5.{j}.0")
                assert h.ns.ping(f"10.5.{j}.0", count=2, interval=0.05) == (2, 2), (i, j)

    # no flannel-UDP on the wire: a capture while every pair pings sees only 51820
    with h1.ns.capture(h1.iface, "udp", count=8) as pcap:
        for dst in ("10.5.2.0", "10.5.3.0"):
            assert h1.ns.ping(dst, count=2, interval=0.05) == (2, 2)
    datagrams = [p for p in rdpcap(pcap) if UDP in p]
    assert len(datagrams) >= 8
    assert all(p[UDP].dport == WG_PORT and p[UDP].sport == WG_PORT for p in datagrams)
    assert not [p for p in datagrams if PLAIN_PORT in (p[UDP].sport, p[UDP].dport)]
    assert {wg_message_type(bytes(p[UDP].payload)) for p in datagrams} == {4}

    show = iface(daemons[0], dev)
    assert show["type"] == "overlay" and show["encryption"] == "wireguard"
    assert show["public_key"] == keys[0].public_b64 and show["listen_port"] == WG_PORT
    assert show["mtu"] == 1500 - 60
    assert [r["subnet"] for r in show["routes"]] == [subnet_of(2), subnet_of(3)]
    for r, k, h in zip(show["routes"], keys[1:], hosts[1:], strict=True):
        assert r["public_ip"] == h.ip and r["public_key"] == k.public_b64
        assert r["endpoint"] == f"{h.ip}:{WG_PORT}"
        assert r["latest_handshake"] > 0 and r["rx_bytes"] > 0 and r["tx_bytes"] > 0
    counters = show["counters"]
    assert counters["rx_packets"] >= 4 and counters["tx_packets"] >= 4
    assert not any(counters["rx_dropped"].values()), counters
    text = json.dumps(daemons[0].show())
    assert keys[0].private_b64 not in text  # no secrets in show


def test_sighup_adds_and_removes_peers_and_keeps_sessions(testbed, three_hosts):
    dev, hosts = testbed.ifname("ov"), three_hosts
    keys = [Keys.new() for _ in hosts]
    d1 = hosts[0].ns.spawn_tunneld(wg_static_config(dev, 1, hosts, keys, [1, 2]), name="t1")
    for i, h in enumerate(hosts[1:], 2):
        h.ns.spawn_tunneld(wg_static_config(dev, i, hosts, keys), name=f"t{i}")
    first_ping(hosts[0].ns, "10.5.2.0")
    d1.rewrite_config(wg_static_config(dev, 1, hosts, keys, [1, 2, 3]))
    d1.reload()
    wait_for(lambda: len(iface(d1, dev)["routes"]) == 2, 5, what="route and peer after HUP")
    first_ping(hosts[0].ns, "10.5.3.0")
    before = {r["subnet"]: r for r in iface(d1, dev)["routes"]}[subnet_of(3)]
    handshakes = handshake_lines(d1, keys[2])
    assert handshakes >= 1
    d1.rewrite_config(wg_static_config(dev, 1, hosts, keys, [1, 3]))
    d1.reload()
    wait_for(lambda: len(iface(d1, dev)["routes"]) == 1, 5, what="removal after HUP")
    assert hosts[0].ns.ping("10.5.3.0", count=2, interval=0.05) == (2, 2)
    after = iface(d1, dev)["routes"][0]
    assert after["subnet"] == subnet_of(3)
    assert handshake_lines(d1, keys[2]) == handshakes  # the session was kept
    assert abs(after["latest_handshake"] - before["latest_handshake"]) <= 1
    assert after["tx_bytes"] > before["tx_bytes"]
    assert hosts[0].ns.ping("10.5.2.0", count=1, timeout=0.5)[1] == 0
    assert "removed" in d1.stderr() and d1.alive


@pytest.fixture
def wg_fleet(testbed):
    """Four hosts on one segment and an etcd whose network config asks for wireguard."""
    hosts = testbed.hub_hosts(4)
    etcd = Etcd(testbed, f"192.168.{testbed.subnet_octet}.100")
    etcd.start()
    backend = {"Type": "wireguard", "ListenPort": WG_PORT}
    etcd.put(f"{PREFIX}/config", json.dumps({"Network": ETCD_NETWORK, "Backend": backend}))
    return testbed.ifname("ov"), hosts, etcd


def wg_etcd_config(dev: str, host, url: str, keys: Keys) -> str:
    return etcd_config(dev, host, url, extra=f'encryption = "wireguard"\n'
                                             f'private_key = "{keys.private_b64}"\n')  # fmt: skip


def leases(etcd: Etcd) -> dict[str, dict]:
    """Every lease under <prefix>/subnets/, JSON-decoded, by subnet ("10.6.1.0/24")."""
    out = etcd.ctl("get", "--prefix", f"{PREFIX}/subnets/").stdout.splitlines()
    found = {}
    for key, value in zip(out[0::2], out[1::2], strict=True):
        found[key.rsplit("/", 1)[1].replace("-", "/")] = json.loads(value)
    return found


def check_wireguard_lease(lease: dict, public_ip: str, keys: Keys) -> None:
    """flannel's lease.LeaseAttrs with the wireguard backend's BackendData."""
    assert lease["PublicIP"] == public_ip and lease["BackendType"] == "wireguard", lease
    data = lease["BackendData"]
    assert set(data) == {"PublicKey", "Port"}, data
    assert isinstance(data["PublicKey"], str) and type(data["Port"]) is int
    assert base64.b64decode(data["PublicKey"], validate=True) == keys.public
    assert data["Port"] == WG_PORT


@pytest.mark.netns("etcd", "etcdctl")
def test_etcd_leases_are_flannel_wireguard_and_all_pairs_ping(wg_fleet):
    dev, hosts, etcd = wg_fleet
    keys = [Keys.new() for _ in hosts[:3]]
    daemons = [h.ns.spawn_tunneld(wg_etcd_config(dev, h, etcd.url, k), name=f"t{i}")
               for i, (h, k) in enumerate(zip(hosts[:3], keys, strict=True), 1)]  # fmt: skip
    subnets = [iface(d, dev)["subnet"] for d in daemons]
    assert len(set(subnets)) == 3, subnets
    found = leases(etcd)
    assert sorted(found) == sorted(subnets), found
    for subnet, h, k in zip(subnets, hosts[:3], keys, strict=True):
        check_wireguard_lease(found[subnet], h.ip, k)
    for d in daemons:
        wait_for(lambda d=d: len(iface(d, dev)["routes"]) == 2, 5, 0.1, what="routes")
    for i, h in enumerate(hosts[:3]):
        for j, subnet in enumerate(subnets):
            if i != j:
                first_ping(h.ns, subnet.split("/")[0])
    show = iface(daemons[0], dev)
    assert show["encryption"] == "wireguard" and show["public_key"] == keys[0].public_b64
    by_subnet = {r["subnet"]: r for r in show["routes"]}
    for subnet, k in zip(subnets[1:], keys[1:], strict=True):
        assert by_subnet[subnet]["public_key"] == k.public_b64
        assert by_subnet[subnet]["latest_handshake"] > 0


@pytest.mark.netns("etcd", "etcdctl", "wireguard-go", "wg")
def test_wireguard_go_host_configured_from_a_lease_talks_to_tunneld(wg_fleet):
    dev, hosts, etcd = wg_fleet
    h1, h2 = hosts[0], hosts[1]
    k1, k2 = Keys.new(), Keys.new()
    d1 = h1.ns.spawn_tunneld(wg_etcd_config(dev, h1, etcd.url, k1), name="t1")
    s1 = iface(d1, dev)["subnet"]

    # h2 plays a flannel wireguard host: it publishes its lease (newSubnetAttrs) ...
    s2 = "10.6.200.0/24" if s1 != "10.6.200.0/24" else "10.6.201.0/24"
    etcd.put(f"{PREFIX}/subnets/{s2.replace('/', '-')}", json.dumps({
        "PublicIP": h2.ip, "PublicIPv6": None, "BackendType": "wireguard",
        "BackendData": {"PublicKey": k2.public_b64, "Port": WG_PORT}}))  # fmt: skip
    # ... and configures its device from the other lease (device.go addPeer, Configure)
    lease = leases(etcd)[s1]
    check_wireguard_lease(lease, h1.ip, k1)
    wg = WgGo.start(h2.ns, h2.ns.testbed.ifname("wg"), k2, WG_PORT, f"{s2.split('/')[0]}/32")
    try:
        wg.set_peer(lease["BackendData"]["PublicKey"], [s1],
                    endpoint=f"{lease['PublicIP']}:{lease['BackendData']['Port']}")  # fmt: skip
        h2.ns.ip("route", "add", ETCD_NETWORK, "dev", wg.name)
        wait_for(lambda: s2 in [r["subnet"] for r in iface(d1, dev)["routes"]], 5, 0.1,
                 what="tunneld's route to the wireguard-go host")  # fmt: skip

        first_ping(h1.ns, s2.split("/")[0])  # tunneld initiates
        assert h1.ns.ping(s2.split("/")[0], count=3, interval=0.05) == (3, 3)
        assert h2.ns.ping(s1.split("/")[0], count=3, interval=0.05) == (3, 3)
        peer = wg.peer(k1.public_b64)
        assert peer["latest_handshake"] > 0 and peer["rx_bytes"] > 0 and peer["tx_bytes"] > 0
        route = {r["subnet"]: r for r in iface(d1, dev)["routes"]}[s2]
        assert route["public_key"] == k2.public_b64 and route["latest_handshake"] > 0
    finally:
        wg.stop()
