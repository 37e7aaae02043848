"""`tunneld demo wireguard | overlay | sites`: the other scenarios of `tunneld demo`.

Each builds its namespaces through a `Testbed` (tunneld/testbed: unique `td<hex>-`
names, everything removed on close, also on Ctrl-C), runs tunneld in them, pings,
prints `tunneld show`, and returns 0 when every ping got through.

- wireguard: two namespaces on a veth, tunneld WireGuard in both (keys made here),
  pings across the tunnel.
- overlay: three namespaces on one bridged underlay, a flannel-style overlay (static
  registry, 10.5.0.0/16, one /24 per host); every host pings every other's subnet.
- sites: two sites behind an "internet" router namespace. Each site is a gateway
  namespace running tunneld (wg0, and vx0 = VXLAN over wg0 enslaved to the site's
  bridge, `masquerade` out of its uplink) and two "container" namespaces on veths in
  that bridge, all four containers on one L2 segment 10.88.0.0/24. Containers ping
  across the sites (L2 over WireGuard) and out to the internet's 203.0.113.1, which
  has no route back to 10.88.0.0/24: the replies come only through the masquerade.
"""

from __future__ import annotations

import os
import sys
import textwrap
from typing import Any

from tunneld.demo import indent, say
from tunneld.proto.wg import encode_key, generate_private_key, public_key
from tunneld.testbed import Testbed

WG_PORT = 51820
INTERNET = "203.0.113.1"  # TEST-NET-3, on the internet namespace's loopback


def _keys() -> tuple[str, str]:
    private = generate_private_key(os.urandom)
    return encode_key(private), encode_key(public_key(private))


def _show(label: str, daemon: Any) -> None:
    say(f"tunneld show ({label}):")
    sys.stdout.write(indent(daemon.show_text()))


def _pings(ns: Any, dst: str, count: int, what: str) -> bool:
    sent, received = ns.ping(dst, count=count, interval=0.2, timeout=2)
    print(f"    {what}: {sent} transmitted, {received} received", flush=True)
    return received >= max(1, count - 1)


def _wait_first(ns: Any, dst: str, tries: int = 20) -> None:
    """Until one ping answers (the first handshake; ARP through the tunnel)."""
    for _ in range(tries):
        if ns.ping(dst, count=1, timeout=1)[1]:
            return


def _wg_interface(name: str, address: str, key: str, mtu: int | None = None) -> str:
    mtu_line = f"mtu = {mtu}\n" if mtu else ""
    return (f'[interfaces.{name}]\ntype = "wireguard"\naddress = ["{address}"]\n{mtu_line}'
            f'listen_port = {WG_PORT}\nprivate_key = "{key}"\n')  # fmt: skip


def _wg_peer(name: str, public: str, endpoint: str, allowed: str) -> str:
    return (f'[[interfaces.{name}.peers]]\npublic_key = "{public}"\n'
            f'endpoint = "{endpoint}:{WG_PORT}"\nallowed_ips = ["{allowed}"]\n')  # fmt: skip


# --- wireguard ---------------------------------------------------------------------------


def run_wireguard(bed: Testbed, pings: int) -> int:
    a, b = bed.two_hosts()
    say(f"namespaces {a.ns.name} (A, {a.ip}) and {b.ns.name} (B, {b.ip}) on a veth underlay")
    (ka, pa), (kb, pb) = _keys(), _keys()
    daemons = []
    for host, key, peer, other, n in ((a, ka, pb, b, 1), (b, kb, pa, a, 2)):
        text = ("[daemon]\nlog_level = \"info\"\n\n" + _wg_interface("wg0", f"10.77.0.{n}/24", key)
                + "\n" + _wg_peer("wg0", peer, other.ip, f"10.77.0.{3 - n}/32"))  # fmt: skip
        say(f"{host.ns.name}: tunneld wg0 10.77.0.{n}/24, peer at {other.ip}:{WG_PORT}")
        daemons.append(host.ns.spawn_tunneld(text, f"demo-wg{n}"))
    say("pinging 10.77.0.2 from A: the first packet starts the handshake")
    _wait_first(a.ns, "10.77.0.2")
    ok = _pings(a.ns, "10.77.0.2", pings, "A -> B over WireGuard")
    ok = _pings(b.ns, "10.77.0.1", 2, "B -> A") and ok
    for label, daemon in zip(("A", "B"), daemons, strict=True):
        _show(label, daemon)
        daemon.stop(timeout=2)
    return 0 if ok else 1


# --- overlay -----------------------------------------------------------------------------


def _overlay_config(me: int, hosts: list[Any]) -> str:
    lines = ["[daemon]", 'log_level = "info"', "", "[interfaces.flannel0]", 'type = "overlay"',
             'network = "10.5.0.0/16"', "subnet_len = 24", f'public_ip = "{hosts[me].ip}"',
             'registry = "static"', f'subnet = "10.5.{me + 1}.0/24"']  # fmt: skip
    for i, h in enumerate(hosts):
        if i != me:
            lines += ["", "[[interfaces.flannel0.hosts]]", f'subnet = "10.5.{i + 1}.0/24"',
                      f'public_ip = "{h.ip}"']  # fmt: skip
    return "\n".join(lines) + "\n"


def run_overlay(bed: Testbed, pings: int) -> int:
    hosts = bed.hub_hosts(3)
    say("three namespaces on one bridged underlay: " + ", ".join(f"{h.ns.name} ({h.ip})"
                                                                for h in hosts))  # fmt: skip
    daemons = []
    for i, h in enumerate(hosts):
        say(f"{h.ns.name}: tunneld flannel0, overlay 10.5.0.0/16, this host's subnet "
            f"10.5.{i + 1}.0/24 (static registry)")  # fmt: skip
        daemons.append(h.ns.spawn_tunneld(_overlay_config(i, hosts), f"demo-ov{i + 1}"))
    say("every host pings every other host's subnet address (UDP 8285 on the underlay)")
    ok = True
    for i, h in enumerate(hosts):
        for j in range(len(hosts)):
            if i != j:
                ok = _pings(h.ns, f"10.5.{j + 1}.0", max(2, pings // 2),
                            f"{h.ns.role} -> 10.5.{j + 1}.0") and ok  # fmt: skip
    _show(hosts[0].ns.role, daemons[0])
    for daemon in daemons:
        daemon.stop(timeout=2)
    return 0 if ok else 1


# --- sites -------------------------------------------------------------------------------

SITE_LAN = "10.88.0.0/24"
WG_MTU, VX_MTU = 1420, 1370  # vx0 over wg0: 1420 - 50 (links/stacking.py)


def _site_config(n: int, key: str, peer: str, peer_ip: str, bridge: str, uplink: str) -> str:
    other = 3 - n
    return "[daemon]\nlog_level = \"info\"\n\n" + _wg_interface(
        "wg0", f"10.99.0.{n}/24", key, WG_MTU
    ) + _wg_peer("wg0", peer, peer_ip, f"10.99.0.{other}/32") + textwrap.dedent(f"""
        [interfaces.vx0]
        type = "vxlan"
        vni = 100
        local = "10.99.0.{n}"
        flood = ["10.99.0.{other}"]
        bridge = "{bridge}"
        address = ["10.88.0.{n}/24"]
        masquerade = "{uplink}"
    """)  # fmt: skip


def _build_site(bed: Testbed, n: int, gw: Any, uplink: str) -> str:
    """The site's bridge (gateway 10.88.0.N/24 once tunneld puts vx0's address on it) and
    its two containers 10.88.0.N1 and .N2; returns the bridge's name."""
    bridge = bed.ifname(f"br{n}")
    gw.ns.ip("link", "add", bridge, "mtu", str(VX_MTU), "type", "bridge")
    gw.ns.ip("link", "set", bridge, "up")
    gw.ns.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])  # the gateway's own namespace
    for c in (1, 2):
        ns = bed.add_ns(f"s{n}c{c}")
        link = bed.link(ns, gw.ns, f"10.88.0.{n}{c}/24", None, mtu=VX_MTU)
        gw.ns.ip("link", "set", link.ifname_b, "master", bridge)
        ns.ip("route", "add", "default", "via", f"10.88.0.{n}")
    say(f"site {n}: bridge {bridge} in {gw.ns.name} with containers {bed.prefix}-s{n}c1 "
        f"(10.88.0.{n}1) and {bed.prefix}-s{n}c2 (10.88.0.{n}2), gateway 10.88.0.{n}, "
        f"uplink {uplink} ({gw.ip})")  # fmt: skip
    return bridge


def run_sites(bed: Testbed, pings: int) -> int:
    a, internet, b = bed.routed_hosts(far_mtu=1500)
    internet.add_addrs("lo", f"{INTERNET}/32")
    x = bed.subnet_octet
    a.ns.ip("route", "add", "default", "via", f"192.168.{x}.254")
    b.ns.ip("route", "add", "default", "via", f"192.168.{x + 1}.254")
    say(f"internet: {internet.name} routes between the sites' uplinks and holds {INTERNET}; "
        f"it has no route to {SITE_LAN}")  # fmt: skip
    (ka, pa), (kb, pb) = _keys(), _keys()
    bridges = [_build_site(bed, 1, a, a.iface), _build_site(bed, 2, b, b.iface)]
    daemons = []
    for n, (gw, key, peer, other) in enumerate(((a, ka, pb, b), (b, kb, pa, a)), start=1):
        say(f"site {n}: tunneld wg0 10.99.0.{n} (peer {other.ip}:{WG_PORT}), vx0 VXLAN over "
            f"wg0 in {bridges[n - 1]}, masquerade out of {gw.iface}")  # fmt: skip
        text = _site_config(n, key, peer, other.ip, bridges[n - 1], gw.iface)
        daemons.append(gw.ns.spawn_tunneld(text, f"demo-site{n}"))
    c11, c21 = bed.namespaces["s1c1"], bed.namespaces["s2c1"]
    c12, c22 = bed.namespaces["s1c2"], bed.namespaces["s2c2"]
    say(
        "containers ping across the sites (one L2 segment: ARP and frames in VXLAN in "
        "WireGuard), then out to the internet"
    )
    _wait_first(c11, "10.88.0.21")
    ok = _pings(c11, "10.88.0.21", pings, "site 1 container 1 -> site 2 container 1")
    ok = _pings(c22, "10.88.0.12", 2, "site 2 container 2 -> site 1 container 2") and ok
    ok = _pings(c12, INTERNET, 2, f"site 1 container 2 -> internet {INTERNET}") and ok
    ok = _pings(c21, INTERNET, 2, f"site 2 container 1 -> internet {INTERNET}") and ok
    for n, daemon in enumerate(daemons, start=1):
        _show(f"site {n}", daemon)
    for daemon in daemons:
        daemon.stop(timeout=2)
    return 0 if ok else 1


SCENARIOS = {"wireguard": run_wireguard, "overlay": run_overlay, "sites": run_sites}
