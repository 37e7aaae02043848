"""The metrics collector on fake `show` data: every DESIGN.md name, its labels and values."""

from __future__ import annotations

import asyncio
import threading

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tunneld.runtime.metrics import LinkCollector, families, loop_snapshot

KEY_A = "x" * 43 + "="
KEY_B = "y" * 43 + "="


def _counters(rx: int, tx: int, rx_dropped: dict[str, int], tx_dropped: dict[str, int]) -> dict:
    return {"rx_packets": rx, "rx_bytes": rx * 100, "tx_packets": tx, "tx_bytes": tx * 100,
            "rx_dropped": rx_dropped, "tx_dropped": tx_dropped}  # fmt: skip


SHOWS = {
    "vx0": {
        "type": "vxlan",
        "fdb": [
            {"mac": "02:00:00:00:00:02", "remote": "192.0.2.2", "static": True, "age": None},
            {"mac": "02:00:00:00:00:03", "remote": "192.0.2.3", "static": False, "age": 3},
            {"mac": "02:00:00:00:00:04", "remote": "192.0.2.3", "static": False, "age": 9},
        ],
        "counters": _counters(5, 6, {"bad_header": 2, "unknown_vni": 0}, {"no_buffer": 1}),
    },
    "wg0": {
        "type": "wireguard",
        "peers": [
            {
                "public_key": KEY_A,
                "rx_bytes": 10,
                "tx_bytes": 20,
                "latest_handshake": 1795000000,
                "handshakes": 3,
            },  # fmt: skip
            {
                "public_key": KEY_B,
                "rx_bytes": 0,
                "tx_bytes": 0,
                "latest_handshake": 0,
                "handshakes": 0,
            },  # fmt: skip
        ],
        "counters": _counters(7, 8, {"bad_mac": 4}, {"no_route": 5}),
    },
    "fl0": {
        "type": "overlay",
        "routes": [
            {"subnet": "10.5.2.0/24", "public_ip": "192.0.2.2"},
            {"subnet": "10.5.3.0/24", "public_ip": "192.0.2.3"},
        ],  # fmt: skip
        "registry": {"kind": "etcd", "connected": True, "lease_expiry": 1},
        "counters": _counters(1, 2, {}, {}),
    },
    "fw0": {
        "type": "overlay",
        "routes": [
            {
                "subnet": "10.6.2.0/24",
                "public_ip": "192.0.2.2",
                "public_key": KEY_A,
                "rx_bytes": 1,
                "tx_bytes": 2,
                "latest_handshake": 5,
                "handshakes": 1,
            },
        ],  # fmt: skip
        "registry": {"kind": "static", "connected": False, "lease_expiry": None},
        "counters": _counters(0, 0, {}, {}),
    },
}


def scrape(collector: LinkCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Through the real exposition and parser: (sample name, sorted labels) -> value."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_every_name_with_labels_and_values():
    got = scrape(LinkCollector(lambda: SHOWS))
    assert got[("tunneld_metrics_snapshot_ok", ())] == 1
    vx = (("interface", "vx0"), ("type", "vxlan"))
    assert got[("tunneld_interface_receive_packets_total", vx)] == 5
    assert got[("tunneld_interface_receive_bytes_total", vx)] == 500
    assert got[("tunneld_interface_transmit_packets_total", vx)] == 6
    assert got[("tunneld_interface_transmit_bytes_total", vx)] == 600

    def drop(iface, direction, reason):
        labels = (("direction", direction), ("interface", iface), ("reason", reason))
        return got[("tunneld_interface_dropped_packets_total", labels)]

    assert drop("vx0", "receive", "bad_header") == 2
    assert drop("vx0", "receive", "unknown_vni") == 0  # every reason, zero or not
    assert drop("vx0", "transmit", "no_buffer") == 1
    assert drop("wg0", "receive", "bad_mac") == 4 and drop("wg0", "transmit", "no_route") == 5
    assert got[("tunneld_fdb_entries", (("interface", "vx0"), ("kind", "learned")))] == 2
    assert got[("tunneld_fdb_entries", (("interface", "vx0"), ("kind", "static")))] == 1

    a = (("interface", "wg0"), ("peer", KEY_A))
    assert got[("tunneld_peer_receive_bytes_total", a)] == 10
    assert got[("tunneld_peer_transmit_bytes_total", a)] == 20
    assert got[("tunneld_peer_handshakes_total", a)] == 3
    assert got[("tunneld_peer_latest_handshake_seconds", a)] == 1795000000
    b = (("interface", "wg0"), ("peer", KEY_B))
    assert got[("tunneld_peer_latest_handshake_seconds", b)] == 0
    # an overlay's WireGuard transport: its hosts are peers too
    fw = (("interface", "fw0"), ("peer", KEY_A))
    assert got[("tunneld_peer_handshakes_total", fw)] == 1

    assert got[("tunneld_overlay_routes", (("interface", "fl0"),))] == 2
    assert got[("tunneld_registry_connected", (("interface", "fl0"),))] == 1
    assert got[("tunneld_registry_connected", (("interface", "fw0"),))] == 0
    # FDB only on vxlan, routes and registry only on overlays
    assert not any(n == "tunneld_fdb_entries" and ("interface", "wg0") in lab for n, lab in got)
    assert not any(n == "tunneld_overlay_routes" and ("interface", "vx0") in lab for n, lab in got)


def test_every_family_is_present_with_no_interfaces():
    names = {f.name for f in families({})}
    assert names == {
        "tunneld_interface_receive_bytes", "tunneld_interface_transmit_bytes",
        "tunneld_interface_receive_packets", "tunneld_interface_transmit_packets",
        "tunneld_interface_dropped_packets", "tunneld_peer_receive_bytes",
        "tunneld_peer_transmit_bytes", "tunneld_peer_handshakes",
        "tunneld_peer_latest_handshake_seconds", "tunneld_fdb_entries",
        "tunneld_overlay_routes", "tunneld_registry_connected",
    }  # fmt: skip


def test_a_failed_snapshot_is_reported_not_raised():
    def broken():
        raise TimeoutError("event loop busy")

    got = scrape(LinkCollector(broken))
    assert got == {("tunneld_metrics_snapshot_ok", ()): 0}


def test_loop_snapshot_runs_the_read_on_the_loop_thread():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    seen = []

    def read():
        seen.append(threading.current_thread())
        return {"vx0": {"type": "vxlan"}}

    try:
        assert loop_snapshot(loop, read)() == {"vx0": {"type": "vxlan"}}
        assert seen == [thread]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_loop_snapshot_passes_the_read_error_on():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def read():
        raise KeyError("gone")

    try:
        with pytest.raises(KeyError):
            loop_snapshot(loop, read)()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
