"""wireguard-tools' own wg-quick and wg driving tunneld-wg (WG_QUICK_USERSPACE_IMPLEMENTATION).

ns1 runs `wg-quick up` of a file, which falls back to tunneld-wg (no kernel module); its
peers are wireguard-go in ns2 (and ns3), configured with `wg set`. Neither wg-quick, wg
nor wireguard-go was written here: a ping through the tunnel is an interop result.
Overlay 10.78.0.0/24: .1 tunneld-wg, .2 and .3 wireguard-go.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.netns.wg_helpers import Keys, WgGo, recent
from tests.netns.wgquick_helpers import WgQuick
from tunneld.testbed import wait_for

pytestmark = [pytest.mark.netns("wireguard-go", "wg", "wg-quick", "nft"),
              pytest.mark.offload_default_only]  # fmt: skip

GO_PORT = 51820
TD_PORT = 51821


def conf(keys: Keys, peer: Keys, endpoint: str, allowed: str, extra: str = "") -> str:
    return (f"[Interface]\nPrivateKey = {keys.private_b64}\nAddress = 10.78.0.1/24\n"
            f"ListenPort = {TD_PORT}\n{extra}\n[Peer]\nPublicKey = {peer.public_b64}\n"
            f"AllowedIPs = {allowed}\nEndpoint = {endpoint}\n")  # fmt: skip


def is_tun(wq: WgQuick) -> bool:
    """The device wg-quick made is our tun (a kernel wireguard device would not be)."""
    return "tun " in wq.ns.ip("-d", "link", "show", wq.name).stdout


def test_up_show_set_remove_down(testbed, three_hosts):
    h1, h2, h3 = three_hosts
    td, go1_keys, go2_keys = Keys.new(), Keys.new(), Keys.new()
    go1 = WgGo.start(h2.ns, testbed.ifname("g1"), go1_keys, GO_PORT, "10.78.0.2/24")
    go1.set_peer(td.public_b64, ["10.78.0.1/32"])  # learns our endpoint from the handshake
    text = conf(td, go1_keys, f"{h2.ip}:{GO_PORT}", "10.78.0.2/32", "MTU = 1380\n")
    wq = WgQuick(h1.ns, testbed.ifname("wq"), text)
    try:
        wq.up()
        assert "Falling back to slow userspace implementation" in wq.log(), wq.log()
        assert is_tun(wq) and os.path.exists(wq.socket)
        assert h1.ns.ping("10.78.0.2", count=3, timeout=3)[1] >= 2, wq.log()
        assert h2.ns.ping("10.78.0.1", count=3) == (3, 3)
        wait_for(lambda: "device MTU now 1380" in wq.log(), 5, what="tunneld-wg following MTU")
        assert h1.ns.ping("10.78.0.2", count=2, size=1380 - 28, dont_fragment=True) == (2, 2)
        ours = wq.dump()[go1_keys.public_b64]
        assert recent(ours["latest_handshake"]), ours
        assert ours["rx_bytes"] > 0 and ours["tx_bytes"] > 0, ours
        assert ours["endpoint"] == f"{h2.ip}:{GO_PORT}" and ours["allowed_ips"] == "10.78.0.2/32"
        shown = wq.wg("show", wq.name)
        assert "latest handshake" in shown and "transfer" in shown, shown
        assert wq.wg("show", wq.name, "listen-port").strip() == str(TD_PORT)
        assert go1.peer(td.public_b64)["endpoint"] == f"{h1.ip}:{TD_PORT}"

        # wg set adds a second wireguard-go peer; it answers pings (10.78.0.3 is inside the
        # Address /24, so wg-quick's connected route already points at the device)
        go2 = WgGo.start(h3.ns, testbed.ifname("g2"), go2_keys, GO_PORT, "10.78.0.3/24")
        go2.set_peer(td.public_b64, ["10.78.0.1/32"])
        h1.ns.run(["wg", "set", wq.name, "peer", go2_keys.public_b64, "allowed-ips",
                   "10.78.0.3/32", "endpoint", f"{h3.ip}:{GO_PORT}"])  # fmt: skip
        assert h1.ns.ping("10.78.0.3", count=3, timeout=3)[1] >= 2, wq.log()
        assert h3.ns.ping("10.78.0.1", count=3) == (3, 3)
        assert recent(wq.dump()[go2_keys.public_b64]["latest_handshake"])

        # ... and `wg set ... remove` takes it out again: no more replies, no peer
        h1.ns.run(["wg", "set", wq.name, "peer", go2_keys.public_b64, "remove"])
        assert go2_keys.public_b64 not in wq.dump()
        assert h1.ns.ping("10.78.0.3", count=2, timeout=1)[1] == 0
        assert h1.ns.ping("10.78.0.2", count=2) == (2, 2)  # the first peer is untouched

        wq.down()
        assert h1.ns.ip("link", "show", wq.name, check=False).returncode != 0
        wq.wait_gone()
        assert not os.path.exists(wq.socket)
        assert "exiting (device deleted)" in wq.log(), wq.log()
    finally:
        wq.cleanup()


def test_full_tunnel_through_wg_quick_fwmark_rules(testbed, two_hosts):
    """AllowedIPs = 0.0.0.0/0: wg-quick puts the default route in its own table, sets the
    fwmark with `wg set` and routes everything unmarked into the tunnel. Only the SO_MARK
    on tunneld-wg's UDP sockets keeps the handshake and the sealed packets on the underlay:
    without it they would loop into the tunnel and nothing would pass."""
    h1, h2 = two_hosts
    td, go_keys = Keys.new(), Keys.new()
    go = WgGo.start(h2.ns, testbed.ifname("g1"), go_keys, GO_PORT, "10.78.0.2/24")
    go.set_peer(td.public_b64, ["10.78.0.1/32"])
    h2.ns.ip("addr", "add", "198.18.7.1/32", "dev", "lo")  # reachable only through the tunnel
    wq = WgQuick(h1.ns, testbed.ifname("wq"),
                 conf(td, go_keys, f"{h2.ip}:{GO_PORT}", "0.0.0.0/0"))  # fmt: skip
    try:
        wq.up()
        assert is_tun(wq)
        mark = wq.wg("show", wq.name, "fwmark").strip()
        assert mark == "0xca6c", (mark, wq.log())  # 51820: wg-quick's table and mark
        rules = h1.ns.run(["ip", "-4", "rule", "show"]).stdout
        assert "not from all fwmark 0xca6c lookup 51820" in rules, rules
        assert f"wg-quick-{wq.name}" in h1.ns.run(["nft", "list", "tables"]).stdout
        assert h1.ns.ping("198.18.7.1", count=3, timeout=3)[1] >= 2, wq.log()
        assert h1.ns.ping("10.78.0.2", count=3) == (3, 3)
        ours = wq.dump()[go_keys.public_b64]
        assert recent(ours["latest_handshake"]) and ours["rx_bytes"] > 0
        assert h1.ns.ping(h2.ip, count=2) == (2, 2)  # the endpoint itself stays reachable
        wq.down()
        wq.wait_gone()
        assert "lookup 51820" not in h1.ns.run(["ip", "-4", "rule", "show"]).stdout
        assert not os.path.exists(wq.socket)
    finally:
        wq.cleanup()


def test_daemon_exits_on_sigterm_and_on_device_delete(testbed, two_hosts):
    h1, _ = two_hosts
    for how in ("sigterm", "ip link del"):
        wq = WgQuick(h1.ns, testbed.ifname("wq"), "")
        try:
            # no LOG_LEVEL: in the background stdio goes to /dev/null, so this pipe-reading
            # run returns as soon as the first process exits (once the socket serves)
            env = {k: v for k, v in wq.env().items() if k != "LOG_LEVEL"}
            proc = h1.ns.run(["tunneld-wg", wq.name], env=env, timeout=15)
            assert proc.returncode == 0 and os.path.exists(wq.socket)
            addrs = h1.ns.ip("addr", "show", wq.name).stdout
            assert is_tun(wq) and " inet " not in addrs and "scope global" not in addrs, addrs
            shown = wq.wg("show", wq.name)
            assert "listening port" in shown and "private key" not in shown, shown
            (pid,) = wq.daemon_pids()
            if how == "sigterm":
                os.kill(pid, 15)
            else:
                h1.ns.ip("link", "del", wq.name)
            wq.wait_gone()
            assert not os.path.exists(wq.socket)
            assert h1.ns.ip("link", "show", wq.name, check=False).returncode != 0
        finally:
            wq.cleanup()
        time.sleep(0.1)
