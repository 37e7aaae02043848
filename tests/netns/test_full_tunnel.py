"""A full tunnel from `tunneld --config` (allowed_ips 0.0.0.0/0 and ::/0) with wg-quick's
policy routing (links/policy.py), against wireguard-go.

ns1 (tunneld) reaches the peer's endpoint only through its main table's default route via
a router namespace, the case where a /0 in the main table would swallow tunneld's own
datagrams. wireguard-go in ns2 holds 198.18.7.1 and 2001:db8:7::1 on its loopback, which
the router does not know: they answer only through the tunnel. Overlay 10.78.0.0/24,
fd78::/64: .1 tunneld, .2 wireguard-go.
"""

from __future__ import annotations

import difflib

import pytest

from tests.netns.wg_helpers import Keys, PeerSpec, WgGo, tunneld_peer, tunneld_wg_config, wg_show
from tunneld.testbed import wait_for

pytestmark = [pytest.mark.netns("wireguard-go", "wg", "ping", "nft"),
              pytest.mark.offload_default_only]  # fmt: skip

GO_PORT = 51820
TD_PORT = 51000  # not 51820: the auto mark/table is wg-quick's 51820, not the port
BEHIND, BEHIND6 = "198.18.7.1", "2001:db8:7::1"


def routing_state(ns) -> dict[str, str]:
    """What a full tunnel may touch and must put back: rules, every table, the sysctl."""
    return {
        "rules4": ns.ip("-4", "rule", "show").stdout,
        "rules6": ns.ip("-6", "rule", "show").stdout,
        "routes4": ns.ip("-4", "route", "show", "table", "all").stdout,
        "routes6": ns.ip("-6", "route", "show", "table", "all").stdout,
        "src_valid_mark": ns.run(["sysctl", "-n", "net.ipv4.conf.all.src_valid_mark"]).stdout,
        "nft": ns.run(["nft", "list", "ruleset"]).stdout,
    }


def diff(before: dict[str, str], after: dict[str, str]) -> str:
    return "\n".join(line for key in before for line in difflib.unified_diff(
        before[key].splitlines(), after[key].splitlines(), key, key, lineterm=""))  # fmt: skip


@pytest.fixture
def full_tunnel_hosts(testbed):
    """ns1 - router - ns2, ns1's route to ns2 only a default route (both families)."""
    h1, router, h2 = testbed.routed_hosts(far_mtu=1500)
    x = testbed.subnet_octet
    h1.ns.ip("route", "del", f"192.168.{x + 1}.0/24")
    h1.ns.ip("-6", "route", "del", f"fd{x:02x}:1::/64")
    h1.ns.ip("route", "add", "default", "via", f"192.168.{x}.254")
    h1.ns.ip("-6", "route", "add", "default", "via", f"fd{x:02x}::fe")

    def settled() -> bool:  # the veth's link-local address through DAD: a settled "before"
        addrs = h1.ns.ip("-6", "addr", "show", "dev", h1.iface).stdout
        return "scope link" in addrs and "tentative" not in addrs

    # strict reverse-path filtering, whatever the host's (IPv4 conf is inherited): the
    # endpoint's replies pass only with the connmark rules and src_valid_mark
    for conf in ("all", h1.iface):
        h1.ns.run(["sysctl", "-q", "-w", f"net.ipv4.conf.{conf}.rp_filter=1"])
    wait_for(settled, 10, what=f"IPv6 link-local address on {h1.iface}")
    return h1, router, h2


def test_full_tunnel_keeps_the_endpoint_outside_and_cleans_up(testbed, full_tunnel_hosts):
    h1, _, h2 = full_tunnel_hosts
    td, go_keys = Keys.new(), Keys.new()
    go = WgGo.start(h2.ns, testbed.ifname("g1"), go_keys, GO_PORT, ["10.78.0.2/24", "fd78::2/64"])
    go.set_peer(td.public_b64, ["10.78.0.1/32", "fd78::1/128"])
    h2.ns.ip("addr", "add", f"{BEHIND}/32", "dev", "lo")
    h2.ns.ip("addr", "add", f"{BEHIND6}/128", "dev", "lo")
    before = routing_state(h1.ns)
    assert h1.ns.ping(BEHIND, count=1, timeout=1)[1] == 0  # the router drops it: not routed

    peer = PeerSpec(go_keys.public_b64, ["0.0.0.0/0", "::/0"], endpoint=f"{h2.ip}:{GO_PORT}")
    config = tunneld_wg_config(td, ["10.78.0.1/24", "fd78::1/64"], [peer], listen_port=TD_PORT)
    daemon = h1.ns.spawn_tunneld(config)
    shown = wg_show(daemon)
    assert (shown["fwmark"], shown["table"]) == (51820, 51820), shown
    rules4, rules6 = h1.ns.ip("-4", "rule").stdout, h1.ns.ip("-6", "rule").stdout
    for rules in (rules4, rules6):  # as wg-quick leaves them
        assert "32764:\tfrom all lookup main suppress_prefixlength 0" in rules, rules
        assert "32765:\tnot from all fwmark 0xca6c lookup 51820" in rules, rules
    assert "default via" in h1.ns.ip("-4", "route", "show", "table", "main").stdout  # kept
    assert h1.ns.run(["sysctl", "-n", "net.ipv4.conf.all.src_valid_mark"]).stdout.strip() == "1"
    ruleset = h1.ns.run(["nft", "list", "table", "inet", "tunneld-wg0"]).stdout
    assert "meta mark 0x0000ca6c ct mark set meta mark" in ruleset, ruleset
    assert 'iifname != "wg0" ip daddr 10.78.0.1 fib saddr type != local drop' in ruleset
    # the kernel's view: unmarked traffic into the tunnel, tunneld's marked datagrams not
    dev = "wg0"
    assert f"dev {dev} table 51820" in h1.ns.ip("route", "get", BEHIND).stdout
    assert f"dev {dev} table 51820" in h1.ns.ip("-6", "route", "get", BEHIND6).stdout
    marked = h1.ns.ip("route", "get", h2.ip, "mark", "51820").stdout
    assert f"dev {h1.iface}" in marked and dev not in marked, marked

    wait_for(lambda: h1.ns.ping(BEHIND, count=1, timeout=1)[1] == 1, 15,
             what="first ping through the full tunnel")  # fmt: skip
    tx_before = wg_show(daemon)["counters"]["tx_packets"]
    assert h1.ns.ping(BEHIND, count=3) == (3, 3)
    assert h1.ns.ping(BEHIND6, count=3) == (3, 3)
    ours = tunneld_peer(daemon, go_keys.public_b64)
    assert ours["latest_handshake"] > 0 and ours["rx_bytes"] > 0, ours  # the handshake made it
    assert wg_show(daemon)["counters"]["tx_packets"] >= tx_before + 6  # via the tunnel
    assert go.peer(td.public_b64)["endpoint"] == f"{h1.ip}:{TD_PORT}"  # from the underlay
    # the endpoint's address answers too (unmarked: through the tunnel, as with wg-quick;
    # only tunneld's own marked datagrams take the underlay, shown by `route get` above)
    assert h1.ns.ping(h2.ip, count=2) == (2, 2)

    assert daemon.stop() == 0
    after = routing_state(h1.ns)
    assert after == before, diff(before, after)  # rules, tables and the sysctl as they were
    go.stop()


def test_reload_between_auto_numeric_and_off(testbed, full_tunnel_hosts):
    """A SIGHUP changing `table` rebuilds the interface: the full tunnel's rules and nft
    table go, `table = N` puts every route in table N with no rules, `"off"` adds no routes;
    after stop all is as before."""
    h1, _, h2 = full_tunnel_hosts
    td, go_keys = Keys.new(), Keys.new()
    peer = PeerSpec(go_keys.public_b64, ["0.0.0.0/0", "10.99.0.0/16"],
                    endpoint=f"{h2.ip}:{GO_PORT}")  # fmt: skip
    base = tunneld_wg_config(td, ["10.78.0.1/24"], [peer], listen_port=TD_PORT)
    before = routing_state(h1.ns)
    daemon = h1.ns.spawn_tunneld(base)
    assert "lookup 51820" in h1.ns.ip("-4", "rule").stdout
    assert "10.99.0.0/16 dev wg0" in h1.ns.ip("-4", "route", "show", "table", "main").stdout
    for n, (table, expect) in enumerate((("1234", "table 1234"), ('"off"', None)), start=1):
        daemon.rewrite_config(
            base.replace("[[interfaces.wg0.peers]]", f"table = {table}\n\n[[interfaces.wg0.peers]]")
        )
        daemon.reload()
        wait_for(lambda n=n: daemon.stderr().count("reloaded:") == n, 10, what="the reload")
        assert h1.ns.ip("-4", "rule").stdout == before["rules4"]
        assert h1.ns.ip("-6", "rule").stdout == before["rules6"]
        assert h1.ns.run(["nft", "list", "ruleset"]).stdout == before["nft"]
        routes = h1.ns.ip("-4", "route", "show", "table", "all").stdout
        if expect:
            assert "default dev wg0 table 1234" in routes, routes
            assert "10.99.0.0/16 dev wg0 table 1234" in routes, routes
        else:
            assert "10.99.0.0/16" not in routes and "default dev wg0" not in routes, routes
        assert wg_show(daemon)["fwmark"] == 0
    assert daemon.stop() == 0
    after = routing_state(h1.ns)
    assert after == before, diff(before, after)
