"""Issue 9: after tunneld is SIGKILLed, starting it again with the same config works at once.

- A full tunnel (links/policy.py) killed twice: each start removes the killed run's
  `ip rule`s before adding its own, so the rules and the nft ruleset after the restart are
  the ones before the kill (without that, a pair per family more with every crash), and
  the tunnel carries pings again. Topology and peer as in test_full_tunnel.py: tunneld
  in ns1 reaches wireguard-go in ns2 only through its main default route via a router.
- The overlay (static registry, as in test_faults.py: both ends through a relay) starts
  over a stale control socket and a persistent tun of its name with its /32, its network
  route and a stranger's route through it.
Each restart answers within RESTART_SECONDS (the daemon's start, not traffic recovery).
"""

from __future__ import annotations

import os

import pytest

from tests.netns import test_full_tunnel as full
from tests.netns.test_faults import PORTS, RECOVERY_SECONDS, RESTART_SECONDS, build, until_ping
from tests.netns.wg_helpers import Keys, PeerSpec, WgGo, tunneld_wg_config
from tunneld.testbed import wait_for
from tunneld.testbed.relay import UdpRelay

pytestmark = [pytest.mark.netns("wireguard-go", "wg", "ping", "nft"),
              pytest.mark.offload_default_only]  # fmt: skip

CRASHES = 2

full_tunnel_hosts = full.full_tunnel_hosts


def policy_state(ns) -> dict[str, str]:
    """What a full tunnel adds: rules, the IPv4 tables, the nft ruleset (IPv6 routes left
    out: the new device's link-local address differs)."""
    state = full.routing_state(ns)
    return {k: state[k] for k in ("rules4", "rules6", "routes4", "nft")}


def test_full_tunnel_restarts_after_sigkill_without_piling_up_rules(testbed, full_tunnel_hosts):
    h1, _, h2 = full_tunnel_hosts
    td, go_keys = Keys.new(), Keys.new()
    go = WgGo.start(h2.ns, testbed.ifname("g1"), go_keys, full.GO_PORT,
                    ["10.78.0.2/24", "fd78::2/64"])  # fmt: skip
    go.set_peer(td.public_b64, ["10.78.0.1/32", "fd78::1/128"])
    h2.ns.ip("addr", "add", f"{full.BEHIND}/32", "dev", "lo")
    h2.ns.ip("addr", "add", f"{full.BEHIND6}/128", "dev", "lo")
    before = full.routing_state(h1.ns)
    peer = PeerSpec(go_keys.public_b64, ["0.0.0.0/0", "::/0"], endpoint=f"{h2.ip}:{full.GO_PORT}")
    config = tunneld_wg_config(td, ["10.78.0.1/24", "fd78::1/64"], [peer], listen_port=full.TD_PORT)
    daemon = h1.ns.spawn_tunneld(config)
    until_ping(h1.ns, full.BEHIND, 15, "first ping through the full tunnel")
    running = policy_state(h1.ns)
    assert running["rules4"].count("lookup 51820") == running["rules6"].count("lookup 51820") == 1
    assert "table inet tunneld-wg0" in running["nft"]
    for crash in range(1, CRASHES + 1):
        assert daemon.kill() == -9
        left = full.routing_state(h1.ns)
        assert "lookup 51820" in left["rules4"] and "lookup 51820" in left["rules6"]  # behind
        ready = daemon.restart(timeout=RECOVERY_SECONDS)
        again = policy_state(h1.ns)
        assert again == running, full.diff(running, again)
        # wireguard-go still holds the old session: the new handshake starts with this ping
        took = until_ping(h1.ns, full.BEHIND, RECOVERY_SECONDS, f"ping after restart {crash}")
        assert h1.ns.ping(full.BEHIND6, count=2, timeout=2) == (2, 2)
        assert daemon.stderr().count("removed a rule left behind") == 4 * crash
        print(f"\nfull tunnel: restart {crash} answered after {ready:.2f} s, ping back "
              f"{took:.2f} s after that")  # fmt: skip
        assert ready < RESTART_SECONDS
    assert daemon.stop() == 0
    after = full.routing_state(h1.ns)
    # all as before but src_valid_mark: the killed run set it, so the next one found it on
    # and has nothing to put back
    assert after["src_valid_mark"].strip() == "1"
    del before["src_valid_mark"], after["src_valid_mark"]
    assert after == before, full.diff(before, after)
    go.stop()


def test_overlay_starts_over_leftover_device_routes_and_stale_socket(testbed):
    """As test_faults' test_start_over_leftover_device_route_and_stale_socket, for the
    overlay: its device with the subnet's /32 and the network's route (what a crash of a
    persistent device would leave), a stranger's route, the stale socket."""
    pair = build(testbed, "overlay")
    pair.relay.stop()
    relay = UdpRelay.start(pair.relay_ns, pair.a.ip, pair.b.ip, PORTS["overlay"])
    assert pair.db.kill() == -9
    assert os.path.exists(pair.db.socket_path)
    ns, dev = pair.b.ns, testbed.ifname("ov")
    wait_for(lambda: ns.ip("link", "show", dev, check=False).returncode != 0, 5,
             what="the killed daemon's device gone")  # fmt: skip
    routes = ["10.5.0.0/16", "10.5.99.0/24"]  # tunneld's network route, a stranger's
    ns.ip("tuntap", "add", "dev", dev, "mode", "tun")
    ns.ip("addr", "add", f"{pair.inner_b}/32", "dev", dev)
    ns.ip("link", "set", dev, "up")  # no process holds it: NO-CARRIER
    for route in routes:
        ns.ip("route", "add", route, "dev", dev)
    ready = pair.db.restart(timeout=RECOVERY_SECONDS)
    assert "stale control socket" in pair.db.stderr(), pair.db.stderr()
    until_ping(ns, pair.inner_a, RECOVERY_SECONDS, "ping from B over the leftover device")
    until_ping(pair.a.ns, pair.inner_b, RECOVERY_SECONDS, "A->B")
    table = ns.ip("route", "show", "dev", dev).stdout
    assert all(r in table for r in routes), table
    assert pair.db.show()["interfaces"][dev]["counters"]["rx_packets"] > 0
    assert relay.counters()["forwarded"] > 0
    print(f"\noverlay: start over leftovers answered after {ready:.2f} s")
    assert ready < RESTART_SECONDS
    relay.stop()
