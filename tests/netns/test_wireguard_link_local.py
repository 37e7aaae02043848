"""An IPv6 link-local endpoint keeps its scope (issue 9): `endpoint = "[fe80::...%veth]:port"`
reaches the peer over that interface, and `show` prints the endpoint with its scope.

Before the fix the scope was dropped when the endpoint was resolved, so the kernel chose
the interface: here a decoy veth whose fe80::/64 route is preferred (metric 1) takes the
unscoped sends, and no handshake happens; `show` printed the endpoint without its scope.
"""

from __future__ import annotations

import pytest

from tests.netns.wg_helpers import Keys, PeerSpec, tunneld_wg_config
from tunneld.testbed import wait_for

pytestmark = [pytest.mark.netns(), pytest.mark.offload_default_only]
PORT = 51820


def _link_local(ns, iface: str) -> str:
    def found() -> str | None:
        out = ns.ip("-6", "-o", "addr", "show", "dev", iface, "scope", "link").stdout
        for line in out.splitlines():
            if " inet6 fe80:" in line and "tentative" not in line:
                return line.split(" inet6 ")[1].split("/")[0]
        return None

    wait_for(lambda: found() is not None, 5, what=f"a link-local address on {iface}")
    address = found()
    assert address is not None
    return address


def test_link_local_endpoint_with_scope_handshakes_and_shows_the_scope(testbed, two_hosts):
    h1, h2 = two_hosts
    decoy, other_end = testbed.ifname("dc"), testbed.ifname("de")  # a veth pair inside ns1
    h1.ns.ip("link", "add", decoy, "type", "veth", "peer", "name", other_end)
    for dev in (decoy, other_end):
        h1.ns.ip("link", "set", dev, "up")
    h1.ns.ip("-6", "route", "add", "fe80::/64", "dev", decoy, "metric", "1")
    ll2 = _link_local(h2.ns, h2.iface)
    k1, k2 = Keys.new(), Keys.new()
    endpoint = f"[{ll2}%{h1.iface}]:{PORT}"
    c1 = tunneld_wg_config(k1, ["10.77.0.1/24"], [PeerSpec(k2.public_b64, ["10.77.0.2/32"],
                           endpoint)], name="wg0")  # fmt: skip
    c2 = tunneld_wg_config(k2, ["10.77.0.2/24"], [PeerSpec(k1.public_b64, ["10.77.0.1/32"])],
                           listen_port=PORT, name="wg0")  # fmt: skip
    d2 = h2.ns.spawn_tunneld(c2, "t2")
    d1 = h1.ns.spawn_tunneld(c1, "t1")
    wait_for(lambda: h1.ns.ping("10.77.0.2", count=1, timeout=1)[1] == 1, 10, what="ping")
    assert h1.ns.ping("10.77.0.2", count=3, interval=0.2) == (3, 3)
    peer = d1.show("wg0")["interfaces"]["wg0"]["peers"][0]
    assert peer["endpoint"] == f"[{ll2}%{h1.iface}]:{PORT}"
    assert peer["latest_handshake"] > 0
    back = d2.show("wg0")["interfaces"]["wg0"]["peers"][0]
    assert back["endpoint"].startswith("[fe80:") and f"%{h2.iface}]" in back["endpoint"]
    assert f"endpoint: [{ll2}%{h1.iface}]:{PORT}" in d1.show_text("wg0")
    assert h2.ns.ping("10.77.0.1", count=2, interval=0.2) == (2, 2)  # back via the learned one
