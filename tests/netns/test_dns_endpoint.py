"""A WireGuard peer endpoint given as a DNS name (issue 10, acceptance 5).

The name lives in /etc/netns/<ns1's unique name>/hosts, which `ip netns exec`
bind-mounts over /etc/hosts for tunneld in ns1 (the file is rewritten in place, so
the mount sees each change; it is removed at teardown). ns1's tunneld has the peer
as `peer-b.test:51820` with a keepalive; ns2's has ns1 without an endpoint (learned by
roaming). TUNNELD_TEST_RERESOLVE_INTERVAL=1 makes the periodic lookup every second.

- ns2 gets a new address, the name moves to it and the old address is removed (only
  the new address answers): tunneld follows the name and traffic resumes without a restart;
- a name that does not resolve at start: tunneld starts anyway, the peer has no
  endpoint, and the tunnel comes up once the name appears.
"""

from __future__ import annotations

import os

import pytest

from tests.netns.wg_helpers import Keys, PeerSpec, tunneld_peer, tunneld_wg_config, wait_ping
from tunneld.testbed import wait_for

pytestmark = pytest.mark.netns("ping")

NAME, PORT = "peer-b.test", 51820


@pytest.fixture
def hosts_file(testbed):
    """`write(text)`: ns1's /etc/hosts (in place); the file and its directory go at teardown."""
    made: list[str] = []

    def write(ns_name: str, text: str) -> None:
        directory = f"/etc/netns/{ns_name}"
        if not made:
            os.makedirs(directory, exist_ok=False)  # the ns name is unique: never someone's
            made.append(directory)
        with open(os.path.join(directory, "hosts"), "w") as f:  # same inode: the mount sees it
            f.write(f"127.0.0.1 localhost\n{text}")

    yield write
    for directory in made:
        path = os.path.join(directory, "hosts")
        if os.path.exists(path):
            os.unlink(path)
        os.rmdir(directory)


def _pair(testbed, monkeypatch):
    monkeypatch.setenv("TUNNELD_TEST_RERESOLVE_INTERVAL", "1")
    a, b = testbed.two_hosts()
    ka, kb = Keys.new(), Keys.new()
    config_b = tunneld_wg_config(kb, ["10.77.0.2/24"], [PeerSpec(ka.public_b64, ["10.77.0.1/32"])],
                                 listen_port=PORT)  # fmt: skip
    config_a = tunneld_wg_config(
        ka, ["10.77.0.1/24"],
        [PeerSpec(kb.public_b64, ["10.77.0.2/32"], f"{NAME}:{PORT}", persistent_keepalive=1)],
    )  # fmt: skip
    return a, b, kb, config_a, config_b


def test_endpoint_name_is_followed_when_it_moves(testbed, hosts_file, monkeypatch):
    a, b, kb, config_a, config_b = _pair(testbed, monkeypatch)
    second = b.ip.rsplit(".", 1)[0] + ".12"
    hosts_file(a.ns.name, f"{b.ip} {NAME}\n")
    b.ns.spawn_tunneld(config_b, "tunneld-b")
    da = a.ns.spawn_tunneld(config_a, "tunneld-a")
    wait_ping(a.ns, "10.77.0.2")
    peer = tunneld_peer(da, kb.public_b64)
    assert peer["endpoint_name"] == f"{NAME}:{PORT}" and peer["endpoint"] == f"{b.ip}:{PORT}"
    assert f"{NAME}:{PORT} ({b.ip}:{PORT})" in da.show_text()

    # ns2 moves to a new address: it is added, the name points to it, the old one goes
    # (promote_secondaries, ns2's own sysctl: the new address survives the old primary)
    b.ns.run(["sysctl", "-qw", f"net.ipv4.conf.{b.iface}.promote_secondaries=1"])
    b.ns.add_addrs(b.iface, f"{second}/24")
    hosts_file(a.ns.name, f"{second} {NAME}\n")
    b.ns.ip("addr", "del", f"{b.ip}/24", "dev", b.iface)  # only the new address answers
    wait_for(lambda: tunneld_peer(da, kb.public_b64)["endpoint"] == f"{second}:{PORT}", 10,
             what="tunneld follows the name")  # fmt: skip
    wait_ping(a.ns, "10.77.0.2", timeout=10)
    assert a.ns.ping("10.77.0.2", count=3) == (3, 3)
    assert b.ns.ping("10.77.0.1", count=2) == (2, 2)  # and back (ns2 learned ns1 by roaming)
    assert da.alive and "endpoint peer-b.test:51820 moved" in da.stderr()


def test_endpoint_name_unresolvable_at_start_comes_up_later(testbed, hosts_file, monkeypatch):
    a, b, kb, config_a, config_b = _pair(testbed, monkeypatch)
    hosts_file(a.ns.name, "")  # no such name yet
    b.ns.spawn_tunneld(config_b, "tunneld-b")
    da = a.ns.spawn_tunneld(config_a, "tunneld-a")  # starts (answers show) all the same
    peer = tunneld_peer(da, kb.public_b64)
    assert peer["endpoint"] is None and peer["resolve_failures"] >= 1
    assert "(unresolved)" in da.show_text()
    hosts_file(a.ns.name, f"{b.ip} {NAME}\n")
    wait_ping(a.ns, "10.77.0.2", timeout=15)
    assert tunneld_peer(da, kb.public_b64)["endpoint"] == f"{b.ip}:{PORT}"
    assert "no endpoint until it resolves" in da.stderr()
