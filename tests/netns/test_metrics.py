"""`[daemon] metrics_listen`: a real daemon scraped with prometheus_client's own text parser.

ns1 runs one tunneld with a WireGuard link (peer: wireguard-go in ns2) and a VXLAN link
(peer: the kernel's vxlan in ns2). The scrape happens inside ns1 (the endpoint listens on
127.0.0.1 there). Counters must move with a ping and an iperf3 run, the drop counter of
one reason with that bad input, and the peer series carry the wireguard-go key.
"""

from __future__ import annotations

import struct
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.netns.vxlan_helpers import offload_line, send_udp
from tests.netns.wg_helpers import Keys, PeerSpec, WgGo, tunneld_wg_config, wait_ping
from tunneld.testbed import wait_for

pytestmark = [pytest.mark.netns("wireguard-go", "wg", "iperf3"), pytest.mark.offload_default_only]

PORT = 9586  # the documented default: free in a namespace of our own
NAMES = [
    "tunneld_interface_receive_bytes_total",
    "tunneld_interface_transmit_bytes_total",
    "tunneld_interface_receive_packets_total",
    "tunneld_interface_transmit_packets_total",
    "tunneld_interface_dropped_packets_total",
    "tunneld_peer_receive_bytes_total",
    "tunneld_peer_transmit_bytes_total",
    "tunneld_peer_latest_handshake_seconds",
    "tunneld_peer_handshakes_total",
    "tunneld_fdb_entries",
    "tunneld_overlay_routes",
    "tunneld_registry_connected",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
]

FETCH = (
    "import sys, urllib.request\n"
    f"r = urllib.request.urlopen('http://127.0.0.1:{PORT}/metrics', timeout=5)\n"
    "sys.stdout.write(r.headers.get('Content-Type') + '\\n' + r.read().decode())\n"
)


def scrape(ns) -> dict[tuple[str, frozenset], float]:
    out = ns.run([sys.executable, "-c", FETCH], timeout=15).stdout
    content_type, text = out.split("\n", 1)
    assert content_type.startswith("text/plain"), content_type
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def daemon(testbed, two_hosts):
    h1, h2 = two_hosts
    td_keys, go_keys = Keys.new(), Keys.new()
    go = WgGo.start(h2.ns, testbed.ifname("wg"), go_keys, 51820, "10.77.0.2/24")
    go.set_peer(td_keys.public_b64, ["10.77.0.1/32"])
    peer = PeerSpec(go_keys.public_b64, ["10.77.0.2/32"], endpoint=f"{h2.ip}:51820")
    config = tunneld_wg_config(td_keys, ["10.77.0.1/24"], [peer], listen_port=51821)
    config = config.replace("[daemon]\n", f'[daemon]\nmetrics_listen = "127.0.0.1:{PORT}"\n', 1)
    config += (
        f'\n[interfaces.vx0]\ntype = "vxlan"\nvni = 42\naddress = ["10.88.0.1/24"]\n'
        f'local = "{h1.ip}"\nflood = ["{h2.ip}"]\n'
        f'[[interfaces.vx0.fdb]]\nmac = "02:00:00:00:00:99"\nremote = "{h2.ip}"\n'
    ) + offload_line(None)
    config += (
        f'\n[interfaces.fl0]\ntype = "overlay"\nnetwork = "10.5.0.0/16"\npublic_ip = "{h1.ip}"\n'
        f'subnet = "10.5.1.0/24"\n[[interfaces.fl0.hosts]]\nsubnet = "10.5.2.0/24"\n'
        f'public_ip = "{h2.ip}"\n'
    ) + offload_line(None)
    td = h1.ns.spawn_tunneld(config)
    h2.ns.add_kernel_vxlan(
        "vx0", vni=42, local=h2.ip, dev=h2.iface, flood=[h1.ip], address="10.88.0.2/24"
    )
    try:
        yield h1, h2, td, go_keys
    finally:
        go.stop()


def test_scrape_has_every_name_and_counters_move(daemon):
    h1, h2, td, go_keys = daemon
    before = scrape(h1.ns)
    for name in NAMES:
        assert any(n == name for n, _ in before), name
    assert value(before, "tunneld_metrics_snapshot_ok") == 1
    peer = {"interface": "wg0", "peer": go_keys.public_b64}
    assert value(before, "tunneld_peer_latest_handshake_seconds", **peer) == 0
    assert value(before, "tunneld_fdb_entries", interface="vx0", kind="static") == 1
    assert value(before, "tunneld_overlay_routes", interface="fl0") == 1
    assert value(before, "tunneld_registry_connected", interface="fl0") == 1

    wait_ping(h1.ns, "10.77.0.2")
    wait_for(lambda: h1.ns.ping("10.88.0.2", count=1, timeout=1)[1] == 1, 10, what="vxlan ping")
    assert h1.ns.ping("10.77.0.2", count=3) == (3, 3)
    iperf = h1.ns.iperf3_pair(h2.ns, "10.88.0.2", seconds=2)
    after = scrape(h1.ns)
    for iface, kind in (("wg0", "wireguard"), ("vx0", "vxlan")):
        for name in NAMES[:4]:
            moved = value(after, name, interface=iface, type=kind)
            assert moved > value(before, name, interface=iface, type=kind), (name, iface)
    vx_bytes = {"interface": "vx0", "type": "vxlan"}
    # iperf3 sends from ns1: through the tap, out of the socket
    assert value(after, "tunneld_interface_transmit_bytes_total", **vx_bytes) >= iperf["bytes"]
    assert value(after, "tunneld_peer_handshakes_total", **peer) >= 1
    assert value(after, "tunneld_peer_latest_handshake_seconds", **peer) > 1.7e9
    assert value(after, "tunneld_peer_receive_bytes_total", **peer) > 0
    assert value(after, "tunneld_peer_transmit_bytes_total", **peer) > 0
    assert value(after, "tunneld_fdb_entries", interface="vx0", kind="learned") >= 1
    # the same numbers as `tunneld show` (one source of truth)
    shown = td.show("wg0")["interfaces"]["wg0"]["counters"]["tx_packets"]
    scraped = value(scrape(h1.ns), "tunneld_interface_transmit_packets_total",
                    interface="wg0", type="wireguard")  # fmt: skip
    assert scraped >= shown


def test_drop_counter_moves_for_its_reason(daemon):
    h1, h2, td, _ = daemon
    bad = {"interface": "vx0", "direction": "receive", "reason": "bad_flags"}
    short = {"interface": "vx0", "direction": "receive", "reason": "short"}
    before = scrape(h1.ns)
    assert value(before, "tunneld_interface_dropped_packets_total", **bad) == 0
    frame = bytes.fromhex("ffffffffffff0200000000990800") + bytes(46)
    send_udp(h2.ns, h1.ip, 4789, [(struct.pack("!II", 0, 42 << 8) + frame).hex()] * 3)

    def dropped() -> float:
        return value(scrape(h1.ns), "tunneld_interface_dropped_packets_total", **bad)

    wait_for(lambda: dropped() == 3, 10, what="bad_flags drops in the scrape")
    assert value(scrape(h1.ns), "tunneld_interface_dropped_packets_total", **short) == 0
    assert td.alive
