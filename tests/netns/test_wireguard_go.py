"""tunneld's WireGuard link against wireguard-go (Debian's package), configured by `wg`.

ns1 runs tunneld (tun + WireGuard), ns2 wireguard-go; the underlay is one veth.
Overlay: 10.77.0.1 (tunneld) and 10.77.0.2 (wireguard-go). Neither side's code
was written here, so a ping through the tunnel is an interop result.
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from scapy.all import IP, UDP, rdpcap

from tests.netns.wg_helpers import (
    Keys,
    PeerSpec,
    WgGo,
    new_psk,
    recent,
    tunneld_peer,
    tunneld_wg_config,
    wait_ping,
    wg_show,
)
from tunneld.testbed import wait_for

pytestmark = pytest.mark.netns("wireguard-go", "wg", "iperf3")

WG_PORT = 51820
TD_PORT = 51821


def build(testbed, two_hosts, *, initiator: str, psk: bool, keepalive: int | None = None,
          td_port: int | None = TD_PORT):  # fmt: skip
    """tunneld in ns1, wireguard-go in ns2. `initiator`: who knows the other's endpoint
    ("tunneld": only tunneld has an endpoint; "wggo": only wireguard-go has one)."""
    h1, h2 = two_hosts
    td_keys, go_keys = Keys.new(), Keys.new()
    shared = new_psk() if psk else None
    go = WgGo.start(h2.ns, testbed.ifname("wg"), go_keys, WG_PORT, "10.77.0.2/24")
    go.set_peer(td_keys.public_b64, ["10.77.0.1/32"],
                endpoint=f"{h1.ip}:{TD_PORT}" if initiator == "wggo" else None,
                preshared_key=shared)  # fmt: skip
    peer = PeerSpec(go_keys.public_b64, ["10.77.0.2/32"],
                    endpoint=f"{h2.ip}:{WG_PORT}" if initiator == "tunneld" else None,
                    preshared_key=shared, persistent_keepalive=keepalive)  # fmt: skip
    config = tunneld_wg_config(td_keys, ["10.77.0.1/24"], [peer], listen_port=td_port)
    daemon = h1.ns.spawn_tunneld(config)
    return h1, h2, daemon, go, td_keys, go_keys


@pytest.mark.parametrize("psk", [False, True], ids=["no-psk", "psk"])
@pytest.mark.parametrize("initiator", ["tunneld", "wggo"])
def test_handshake_and_ping_both_ways(testbed, two_hosts, initiator, psk):
    # tunneld as initiator without a listen_port binds a random one and reports it
    random_port = initiator == "tunneld" and not psk
    td_port = None if random_port else TD_PORT
    h1, h2, daemon, go, td_keys, go_keys = build(testbed, two_hosts, initiator=initiator,
                                                 psk=psk, td_port=td_port)  # fmt: skip
    first, other = (h1.ns, "10.77.0.2") if initiator == "tunneld" else (h2.ns, "10.77.0.1")
    wait_ping(first, other)
    assert h1.ns.ping("10.77.0.2", count=5) == (5, 5)
    assert h2.ns.ping("10.77.0.1", count=5) == (5, 5)
    theirs = go.peer(td_keys.public_b64)
    assert theirs["preshared_key"] is psk
    assert recent(theirs["latest_handshake"]), theirs
    assert theirs["rx_bytes"] > 0 and theirs["tx_bytes"] > 0, theirs
    show = wg_show(daemon)
    port = show["listen_port"]
    assert port == TD_PORT or (random_port and port > 0), show
    assert theirs["endpoint"] == f"{h1.ip}:{port}"
    ours = tunneld_peer(daemon, go_keys.public_b64)
    assert recent(ours["latest_handshake"]), ours
    assert ours["endpoint"] == f"{h2.ip}:{WG_PORT}"
    assert ours["rx_bytes"] > 0 and ours["tx_bytes"] > 0
    assert show["public_key"] == td_keys.public_b64
    assert not any(show["counters"]["rx_dropped"].values()), show["counters"]
    text = repr(daemon.show()) + daemon.show_text() + daemon.stderr()
    assert td_keys.private_b64 not in text


@pytest.fixture
def tunnel(testbed, two_hosts):
    """tunneld initiates; the first ping has gone through."""
    built = build(testbed, two_hosts, initiator="tunneld", psk=True)
    wait_ping(built[0].ns, "10.77.0.2")
    return built


def test_iperf3_tcp_both_ways(tunnel):
    h1, h2, daemon, go, td_keys, go_keys = tunnel
    forward = h1.ns.iperf3_pair(h2.ns, "10.77.0.2", seconds=5)
    backward = h1.ns.iperf3_pair(h2.ns, "10.77.0.2", seconds=5, reverse=True, port=5202)
    assert forward["bytes"] > 1_000_000, forward["bits_per_second"]
    assert backward["bytes"] > 1_000_000, backward["bits_per_second"]
    assert daemon.alive
    theirs = go.peer(td_keys.public_b64)
    assert theirs["rx_bytes"] > forward["bytes"] and theirs["tx_bytes"] > backward["bytes"]
    ours = tunneld_peer(daemon, go_keys.public_b64)
    assert ours["tx_bytes"] > forward["bytes"] and ours["rx_bytes"] > backward["bytes"]
    drops = wg_show(daemon)["counters"]["rx_dropped"]
    assert drops["decrypt_failed"] == 0 and drops["invalid_packet"] == 0, drops


def _wg_payloads(pcap: str, src: str) -> list[tuple[float, bytes]]:
    """(time, UDP payload) of every datagram from `src` in a capture."""
    out = []
    for pkt in rdpcap(pcap):
        if IP in pkt and UDP in pkt and pkt[IP].src == src:
            out.append((float(pkt.time), bytes(pkt[UDP].payload)))
    return out


def test_persistent_keepalive_on_the_wire(testbed, two_hosts):
    h1, h2, daemon, go, td_keys, go_keys = build(testbed, two_hosts, initiator="tunneld",
                                                 psk=False, keepalive=2)  # fmt: skip
    # No traffic at all: the first keepalive itself brings the tunnel up.
    wait_for(lambda: recent(go.dump().get(td_keys.public_b64, {}).get("latest_handshake", 0)),
             10, what="handshake driven by the persistent keepalive")  # fmt: skip
    with h2.ns.capture(h2.iface, f"udp and src host {h1.ip}") as pcap:
        time.sleep(7.5)
    keepalives = [t for t, data in _wg_payloads(pcap, h1.ip)
                  if len(data) == 32 and data[0] == 4]  # fmt: skip
    assert len(keepalives) >= 3, keepalives
    gaps = [b - a for a, b in zip(keepalives, keepalives[1:], strict=False)]
    assert all(1.5 < g < 2.8 for g in gaps), gaps
    assert tunneld_peer(daemon, go_keys.public_b64)["persistent_keepalive"] == 2
    assert h2.ns.ping("10.77.0.1", count=3) == (3, 3)


def _ping_seqs(output: str) -> list[int]:
    return [int(m) for m in re.findall(r"icmp_seq=(\d+)", output)]


def test_roaming_underlay_address_change(testbed, tunnel):
    """tunneld's underlay address changes mid-ping; wireguard-go follows within 5 s."""
    h1, h2, daemon, go, td_keys, go_keys = tunnel
    new_ip = h1.ip.rsplit(".", 1)[0] + ".11"
    h1.ns.run(["sysctl", "-qw", f"net.ipv4.conf.{h1.iface}.promote_secondaries=1"])
    interval = 0.1
    ping = h1.ns.popen(["ping", "-n", "-i", str(interval), "-c", "100", "-W", "1", "10.77.0.2"],
                       stdout=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(3)
    h1.ns.add_addrs(h1.iface, f"{new_ip}/24")
    h1.ns.ip("addr", "del", h1.cidr, "dev", h1.iface)
    moved_at = time.monotonic()
    wait_for(lambda: go.peer(td_keys.public_b64)["endpoint"] == f"{new_ip}:{TD_PORT}", 5,
             what="wireguard-go's endpoint for tunneld to follow the new address")  # fmt: skip
    assert time.monotonic() - moved_at < 5
    output, _ = ping.communicate(timeout=30)
    seqs = _ping_seqs(output)
    assert seqs, output
    missing = sorted(set(range(1, 101)) - set(seqs))
    assert len(missing) * interval < 5, f"lost {len(missing)} pings: {missing}"
    assert seqs[-1] >= 99, "traffic did not resume"
    assert tunneld_peer(daemon, go_keys.public_b64)["endpoint"] == f"{h2.ip}:{WG_PORT}"


def _handshakes_logged(daemon) -> int:
    return daemon.stderr().count("handshake complete")


def test_rekey_shortened_at_most_one_lost_ping(testbed, two_hosts, monkeypatch):
    """TUNNELD_TEST_REKEY_AFTER_TIME=6 (test-only) makes tunneld rekey every ~6 s."""
    monkeypatch.setenv("TUNNELD_TEST_REKEY_AFTER_TIME", "6")
    h1, h2, daemon, go, td_keys, go_keys = build(testbed, two_hosts, initiator="tunneld",
                                                 psk=True)  # fmt: skip
    wait_ping(h1.ns, "10.77.0.2")
    sent, received = h1.ns.ping("10.77.0.2", count=130, interval=0.2, timeout=2)
    assert sent - received <= 1, (sent, received)
    assert _handshakes_logged(daemon) >= 4, daemon.stderr()
    assert recent(go.peer(td_keys.public_b64)["latest_handshake"], within=10)
    drops = wg_show(daemon)["counters"]["rx_dropped"]
    assert drops["decrypt_failed"] == 0 and drops["unknown_receiver"] == 0, drops


def test_rekey_real_timers_past_120s(testbed, tunnel):
    """The protocol's own REKEY_AFTER_TIME (120 s): traffic flows across it, <= 1 lost."""
    h1, h2, daemon, go, td_keys, go_keys = tunnel
    first = go.peer(td_keys.public_b64)["latest_handshake"]
    sent, received = h1.ns.ping("10.77.0.2", count=260, interval=0.5, timeout=2)
    assert sent - received <= 1, (sent, received)
    assert go.peer(td_keys.public_b64)["latest_handshake"] >= first + 110
    assert _handshakes_logged(daemon) >= 2, daemon.stderr()


def test_reload_updates_peers_live_and_keeps_the_session(testbed, tunnel):
    h1, h2, daemon, go, td_keys, go_keys = tunnel
    before = tunneld_peer(daemon, go_keys.public_b64)
    extra = Keys.new()  # a second peer, added by SIGHUP
    peers = [PeerSpec(go_keys.public_b64, ["10.77.0.2/32", "10.79.0.0/24"],
                      endpoint=f"{h2.ip}:{WG_PORT}", persistent_keepalive=7),
             PeerSpec(extra.public_b64, ["10.77.0.9/32"])]  # fmt: skip
    daemon.rewrite_config(tunneld_wg_config(td_keys, ["10.77.0.1/24"], peers,
                                            listen_port=TD_PORT))  # fmt: skip
    daemon.reload()
    wait_for(lambda: len(wg_show(daemon)["peers"]) == 2, 5, what="the reload")
    ours = tunneld_peer(daemon, go_keys.public_b64)
    assert ours["persistent_keepalive"] == 7
    assert ours["allowed_ips"] == ["10.77.0.2/32", "10.79.0.0/24"]
    assert ours["latest_handshake"] == before["latest_handshake"]  # the session was kept
    assert "10.79.0.0/24 dev wg0" in h1.ns.ip("route").stdout
    assert h1.ns.ping("10.77.0.2", count=3) == (3, 3)
    assert tunneld_peer(daemon, go_keys.public_b64)["latest_handshake"] == before[
        "latest_handshake"]  # fmt: skip
    assert "rebuilt" not in daemon.stderr()
    daemon.rewrite_config(tunneld_wg_config(td_keys, ["10.77.0.1/24"], peers[1:],
                                            listen_port=TD_PORT))  # fmt: skip
    daemon.reload()
    wait_for(lambda: len(wg_show(daemon)["peers"]) == 1, 5, what="the peer's removal")
    routes = h1.ns.ip("route").stdout
    assert "10.79.0.0/24" not in routes and "10.77.0.9 dev wg0" in routes, routes
    assert h1.ns.ping("10.77.0.2", count=2, timeout=1)[1] == 0


def test_ipv6_underlay_and_inner_ipv6(testbed, two_hosts):
    """Endpoint [fdXX::2]:51820 over the IPv6 underlay, IPv4 and IPv6 inside."""
    h1, h2 = two_hosts
    td_keys, go_keys = Keys.new(), Keys.new()
    go = WgGo.start(h2.ns, testbed.ifname("wg"), go_keys, WG_PORT,
                    ["10.77.0.2/24", "fd77::2/64"])  # fmt: skip
    go.set_peer(td_keys.public_b64, ["10.77.0.1/32", "fd77::1/128"])
    peer = PeerSpec(go_keys.public_b64, ["10.77.0.2/32", "fd77::2/128"],
                    endpoint=f"[{h2.ip6}]:{WG_PORT}")  # fmt: skip
    daemon = h1.ns.spawn_tunneld(tunneld_wg_config(td_keys, ["10.77.0.1/24", "fd77::1/64"],
                                                   [peer], listen_port=TD_PORT))  # fmt: skip
    wait_ping(h1.ns, "fd77::2")
    assert h1.ns.ping("fd77::2", count=3) == (3, 3)
    assert h2.ns.ping("fd77::1", count=3) == (3, 3)
    assert h2.ns.ping("10.77.0.1", count=3) == (3, 3)
    assert go.peer(td_keys.public_b64)["endpoint"] == f"[{h1.ip6}]:{TD_PORT}"
    assert tunneld_peer(daemon, go_keys.public_b64)["endpoint"] == f"[{h2.ip6}]:{WG_PORT}"
    assert not any(wg_show(daemon)["counters"]["rx_dropped"].values())
