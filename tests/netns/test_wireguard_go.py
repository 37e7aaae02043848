"""tunneld's WireGuard link against wireguard-go (Debian's package), configured by `wg`.

ns1 runs tunneld (tun + WireGuard), ns2 wireguard-go; the underlay is one veth.
Overlay: 10.77.0.1 (tunneld) and 10.77.0.2 (wireguard-go). Neither side's code
was written here, so a ping through the tunnel is an interop result.
"""

from __future__ import annotations

import pytest

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

pytestmark = pytest.mark.netns("wireguard-go", "wg", "iperf3")

WG_PORT = 51820
TD_PORT = 51821


def build(testbed, two_hosts, *, initiator: str, psk: bool, keepalive: int | None = None):
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
    config = tunneld_wg_config(td_keys, ["10.77.0.1/24"], [peer], listen_port=TD_PORT)
    daemon = h1.ns.spawn_tunneld(config)
    return h1, h2, daemon, go, td_keys, go_keys


@pytest.mark.parametrize("psk", [False, True], ids=["no-psk", "psk"])
@pytest.mark.parametrize("initiator", ["tunneld", "wggo"])
def test_handshake_and_ping_both_ways(testbed, two_hosts, initiator, psk):
    h1, h2, daemon, go, td_keys, go_keys = build(testbed, two_hosts, initiator=initiator,
                                                 psk=psk)  # fmt: skip
    first, other = (h1.ns, "10.77.0.2") if initiator == "tunneld" else (h2.ns, "10.77.0.1")
    wait_ping(first, other)
    assert h1.ns.ping("10.77.0.2", count=5) == (5, 5)
    assert h2.ns.ping("10.77.0.1", count=5) == (5, 5)
    theirs = go.peer(td_keys.public_b64)
    assert theirs["preshared_key"] is psk
    assert recent(theirs["latest_handshake"]), theirs
    assert theirs["rx_bytes"] > 0 and theirs["tx_bytes"] > 0, theirs
    assert theirs["endpoint"] == f"{h1.ip}:{TD_PORT}"
    ours = tunneld_peer(daemon, go_keys.public_b64)
    assert recent(ours["latest_handshake"]), ours
    assert ours["endpoint"] == f"{h2.ip}:{WG_PORT}"
    assert ours["rx_bytes"] > 0 and ours["tx_bytes"] > 0
    show = wg_show(daemon)
    assert show["listen_port"] == TD_PORT and show["public_key"] == td_keys.public_b64
    assert not any(show["counters"]["rx_dropped"].values()), show["counters"]
    text = repr(daemon.show()) + daemon.show_text() + daemon.stderr()
    assert td_keys.private_b64 not in text
