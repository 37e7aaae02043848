"""`tunneld show` for people: the DESIGN.md JSON laid out at a glance."""

from __future__ import annotations

from tunneld.show import format_show

REPLY = {
    "version": 1,
    "interfaces": {
        "vx0": {
            "type": "vxlan",
            "vni": 42,
            "port": 4789,
            "fdb": [
                {"mac": "02:00:00:00:00:02", "remote": "192.0.2.2", "static": True, "age": None},
                {"mac": "02:00:00:00:00:03", "remote": "192.0.2.3", "static": False, "age": 3},
            ],
            "flood": ["192.0.2.2"],
            "counters": {
                "rx_packets": 5,
                "rx_bytes": 2048,
                "tx_packets": 1,
                "tx_bytes": 100,
                "rx_dropped": {"bad_flags": 2, "short": 0},
                "tx_dropped": {},
            },
        },
        "wg0": {
            "type": "wireguard",
            "public_key": "PUB=",
            "listen_port": 51820,
            "peers": [
                {
                    "public_key": "PEER=",
                    "endpoint": "192.0.2.2:51820",
                    "allowed_ips": ["10.77.0.2/32"],
                    "latest_handshake": 990,
                    "rx_bytes": 1024,
                    "tx_bytes": 0,
                    "persistent_keepalive": 25,
                }
            ],
        },
        "flannel0": {
            "type": "overlay",
            "subnet": "10.5.1.0/24",
            "network": "10.5.0.0/16",
            "routes": [
                {"subnet": "10.5.2.0/24", "public_ip": "192.0.2.2"},
                {
                    "subnet": "10.5.3.0/24",
                    "public_ip": "192.0.2.3",
                    "public_key": "KEY3abcdefgh=",
                    "latest_handshake": 995,
                    "rx_bytes": 2048,
                    "tx_bytes": 10,
                },
            ],
            "encryption": "wireguard",
            "public_key": "OURS=",
            "listen_port": 51820,
            "registry": {"kind": "etcd", "connected": True, "lease_expiry": 1000 + 3600},
        },
    },
}


def test_vxlan_block_reads_like_bridge_fdb_show():
    text = format_show(REPLY, now=1000)
    assert "interface: vx0 (vxlan)" in text
    assert "02:00:00:00:00:02 dst 192.0.2.2 static" in text
    assert "02:00:00:00:00:03 dst 192.0.2.3 age 3s" in text
    assert "00:00:00:00:00:00 dst 192.0.2.2 flood" in text
    assert "rx dropped: bad_flags 2" in text and "short 0" not in text


def test_wireguard_block_reads_like_wg_show():
    text = format_show(REPLY, now=1000)
    assert "peer: PEER=" in text
    assert "latest handshake: 10 seconds ago" in text
    assert "allowed ips: 10.77.0.2/32" in text
    assert "persistent keepalive: every 25 seconds" in text
    assert "transfer: 1.00 KiB received, 0 B sent" in text


def test_wireguard_fwmark_and_table_as_wg_show_and_wg_quick_say_them():
    wg0 = {**REPLY["interfaces"]["wg0"], "fwmark": 51820, "table": 51820}
    text = format_show({"version": 1, "interfaces": {"wg0": wg0}}, now=1000)
    assert "  fwmark: 0xca6c\n  routing table: 51820\n" in text
    plain_wg0 = {**wg0, "fwmark": 0, "table": "main"}
    plain = format_show({"version": 1, "interfaces": {"wg0": plain_wg0}}, now=1000)
    assert "fwmark" not in plain and "routing table" not in plain


def test_overlay_block_lists_routes_and_registry():
    text = format_show(REPLY, now=1000)
    assert "10.5.2.0/24 via 192.0.2.2" in text
    assert "registry: etcd (connected, lease expires in 1 hour)" in text
    assert "public key: OURS=  listening port: 51820" in text
    assert (
        "10.5.3.0/24 via 192.0.2.3 peer KEY3abcd… handshake 5 seconds ago, "
        "2.00 KiB received, 10 B sent"
    ) in text


def test_empty_reply_is_empty():
    assert format_show({"version": 1, "interfaces": {}}) == ""
