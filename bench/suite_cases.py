"""The topologies of `bench/suite.py`: one pair of namespaces per case, distinct subnets.

Every case is two namespaces joined by one veth underlay (MTU 1500, 10.200.N.0/24 for the
case with index N) with GRO on both veths (a UDP_GRO socket only gets coalesced datagrams
from peers that send one at a time when the receiving device does GRO). On top of it, the
tunnel of the case: kernel vxlan (10.99.N.0/24, VNI 42), WireGuard (10.98.N.0/24, MTU
1420, port 51820) or the overlay (network 10.(110+N).0.0/16, subnets .1.0/24 and .2.0/24).
Each case's first namespace is the iperf3 client: in an interop case that is tunneld's side.

Anchors: raw veth for the kernel vxlan and wireguard-go anchors; kernel vxlan <-> kernel
vxlan for the vxlan cases; wireguard-go <-> wireguard-go for the wireguard and overlay cases.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.netns.wg_helpers import Keys, PeerSpec, WgGo, tunneld_wg_config  # noqa: E402
from tunneld.testbed import (  # noqa: E402
    Host,
    Netns,
    Testbed,
    TestbedError,
    TunneldProcess,
    wait_for,
)

WG_PORT = 51820
VNI = 42


@dataclass(frozen=True)
class Daemon:
    """A userspace process moving the case's packets, sampled for CPU seconds by PID.

    `side` is "client" or "server" (the namespace it runs in), `kind` "tunneld" or
    "wireguard-go"."""

    side: str
    kind: str
    pid: int

    @property
    def label(self) -> str:
        return f"{self.side} {self.kind}"


@dataclass
class Topology:
    """A built case: iperf3 runs from `client` to `server` at `dst`; `mtu` is the tunnel's."""

    client: Host
    server: Host
    dst: str
    mtu: int
    daemons: list[Daemon] = field(default_factory=list)
    tunnelds: list[TunneldProcess] = field(default_factory=list)
    peak_rss_kb: dict[str, int] = field(default_factory=dict)  # by Daemon.label, after each run
    shows: list[dict[str, Any]] = field(
        default_factory=list
    )  # each tunneld's show --json, at the end


Build = Callable[[Testbed, int, "Case"], Topology]


@dataclass(frozen=True)
class Case:
    """One row group of the table. `anchor` is the id of the case its ratios divide by
    (None for raw veth); `offload` is the tunneld config key (None: no tunneld)."""

    id: str
    title: str
    anchor: str | None
    build: Build
    offload: bool | None = None


# --- underlay -----------------------------------------------------------------------------


def underlay(bed: Testbed, index: int, case: Case) -> tuple[Host, Host]:
    """Two namespaces joined by a veth, 10.200.N.1-2/24, GRO on both ends."""
    ns1, ns2 = bed.add_ns(f"{case.id}-1"), bed.add_ns(f"{case.id}-2")
    ip1, ip2 = f"10.200.{index}.1", f"10.200.{index}.2"
    link = bed.link(ns1, ns2, f"{ip1}/24", f"{ip2}/24")
    hosts = (
        Host(ns1, link.ifname_a, ip1, "", f"{ip1}/24", ""),
        Host(ns2, link.ifname_b, ip2, "", f"{ip2}/24", ""),
    )
    for h in hosts:
        h.ns.run(["ethtool", "-K", h.iface, "gro", "on"])
    return hosts


def link_mtu(ns: Netns, ifname: str) -> int:
    return int(json.loads(ns.ip("-j", "link", "show", "dev", ifname).stdout)[0]["mtu"])


def first_ping(client: Host, dst: str, topo: Topology | None = None,
               timeout: float = 15.0) -> None:  # fmt: skip
    """Until one ping to `dst` answers (a WireGuard case waits for its handshake). On
    failure the TestbedError carries the last lines each tunneld of `topo` logged."""
    try:
        wait_for(lambda: client.ns.ping(dst, count=1, timeout=1)[1] == 1, timeout,
                 what=f"a ping to {dst} from {client.ns.name}")  # fmt: skip
    except TimeoutError as exc:
        logs = "".join(f"\n--- {d.name} log tail:\n" + "\n".join(d.stderr().splitlines()[-8:])
                       for d in (topo.tunnelds if topo else []))  # fmt: skip
        raise TestbedError(f"no traffic through the tunnel: {exc}{logs}") from None


def offload_line(case: Case) -> str:
    return f"offload = {'true' if case.offload else 'false'}\n"


def spawn(host: Host, text: str, side: str, topo: Topology, case: Case) -> TunneldProcess:
    daemon = host.ns.spawn_tunneld(text, f"{case.id}-{side}")
    topo.daemons.append(Daemon(side, "tunneld", daemon.pid))
    topo.tunnelds.append(daemon)
    return daemon


# --- raw veth and VXLAN -------------------------------------------------------------------


def build_veth(bed: Testbed, index: int, case: Case) -> Topology:
    h1, h2 = underlay(bed, index, case)
    first_ping(h1, h2.ip)
    return Topology(h1, h2, h2.ip, link_mtu(h1.ns, h1.iface))


def vxlan_config(me: Host, other: Host, overlay: str, case: Case) -> str:
    return textwrap.dedent(f"""\
        [daemon]
        log_level = "warning"
        [interfaces.vx0]
        type = "vxlan"
        vni = {VNI}
        address = ["{overlay}"]
        local = "{me.ip}"
        port = 4789
        learning = true
        flood = ["{other.ip}"]
    """) + offload_line(case)


def kernel_vxlan(me: Host, other: Host, overlay: str, userspace_peer: bool) -> None:
    me.ns.add_kernel_vxlan(
        "vx0",
        VNI,
        local=me.ip,
        dev=me.iface,
        flood=[other.ip],
        address=overlay,
        userspace_peer=userspace_peer,
    )


def vxlan_builder(tunneld_sides: int) -> Build:
    """Kernel vxlan on both ends (0), tunneld on the client (1) or on both (2)."""

    def build(bed: Testbed, index: int, case: Case) -> Topology:
        hosts = underlay(bed, index, case)
        overlay = (f"10.99.{index}.1/24", f"10.99.{index}.2/24")
        topo = Topology(hosts[0], hosts[1], overlay[1].split("/")[0], 0)
        for n, side in enumerate(("client", "server")):
            me, other = hosts[n], hosts[1 - n]
            if n < tunneld_sides:
                spawn(me, vxlan_config(me, other, overlay[n], case), side, topo, case)
            else:
                kernel_vxlan(me, other, overlay[n], userspace_peer=tunneld_sides > 0)
        first_ping(hosts[0], topo.dst, topo)
        topo.mtu = link_mtu(hosts[0].ns, "vx0")
        return topo

    return build


# --- WireGuard ----------------------------------------------------------------------------


def wireguard_builder(tunneld_sides: int) -> Build:
    """wireguard-go on both ends (0), tunneld on the client (1) or on both (2)."""

    def build(bed: Testbed, index: int, case: Case) -> Topology:
        hosts = underlay(bed, index, case)
        keys = (Keys.new(), Keys.new())
        overlay = (f"10.98.{index}.1", f"10.98.{index}.2")
        topo = Topology(hosts[0], hosts[1], overlay[1], 0)
        devices = []
        for n, side in enumerate(("client", "server")):
            other = 1 - n
            endpoint = f"{hosts[other].ip}:{WG_PORT}"
            if n < tunneld_sides:
                peer = PeerSpec(keys[other].public_b64, [f"{overlay[other]}/32"], endpoint)
                text = tunneld_wg_config(
                    keys[n], [f"{overlay[n]}/24"], [peer], listen_port=WG_PORT, log_level="warning"
                )
                if "offload =" not in text:  # helpers that take no offload argument yet
                    text = text.replace(
                        "[interfaces.wg0]\n", f"[interfaces.wg0]\n{offload_line(case)}"
                    )
                spawn(hosts[n], text, side, topo, case)
                devices.append("wg0")
            else:
                name = bed.ifname(f"g{index}{n}")
                go = WgGo.start(hosts[n].ns, name, keys[n], WG_PORT, f"{overlay[n]}/24")
                go.set_peer(keys[other].public_b64, [f"{overlay[other]}/32"], endpoint)
                topo.daemons.append(Daemon(side, "wireguard-go", go.proc.pid))
                devices.append(name)
        first_ping(hosts[0], topo.dst, topo)
        topo.mtu = link_mtu(hosts[0].ns, devices[0])
        return topo

    return build


# --- the overlay --------------------------------------------------------------------------


def overlay_config(
    dev: str,
    me: int,
    hosts: tuple[Host, Host],
    index: int,
    case: Case,
    keys: tuple[Keys, Keys] | None,
) -> str:
    """Static registry, two hosts; `keys` given: encryption = "wireguard"."""
    text = textwrap.dedent(f"""\
        [daemon]
        log_level = "warning"
        [interfaces.{dev}]
        type = "overlay"
        network = "10.{110 + index}.0.0/16"
        subnet_len = 24
        public_ip = "{hosts[me].ip}"
        registry = "static"
        subnet = "10.{110 + index}.{me + 1}.0/24"
    """) + offload_line(case)
    if keys is not None:
        text += f'encryption = "wireguard"\nprivate_key = "{keys[me].private_b64}"\n'
    other = 1 - me
    text += (
        f'[[interfaces.{dev}.hosts]]\nsubnet = "10.{110 + index}.{other + 1}.0/24"\n'
        f'public_ip = "{hosts[other].ip}"\n'
    )
    if keys is not None:
        text += f'public_key = "{keys[other].public_b64}"\n'
    return text


def overlay_builder(encrypted: bool) -> Build:
    """tunneld on both ends, plain flannel-UDP (8285) or over WireGuard (51820)."""

    def build(bed: Testbed, index: int, case: Case) -> Topology:
        hosts = underlay(bed, index, case)
        keys = (Keys.new(), Keys.new()) if encrypted else None
        dev = bed.ifname(f"o{index}")
        topo = Topology(hosts[0], hosts[1], f"10.{110 + index}.2.0", 0)
        for n, side in enumerate(("client", "server")):
            spawn(hosts[n], overlay_config(dev, n, hosts, index, case, keys), side, topo, case)
        first_ping(hosts[0], topo.dst, topo)
        topo.mtu = link_mtu(hosts[0].ns, dev)
        return topo

    return build


# --- the list -----------------------------------------------------------------------------


def _both_offloads(id_: str, title: str, anchor: str, build: Build) -> list[Case]:
    return [
        Case(f"{id_}-{word}", f"{title}, offload {word}", anchor, build, word == "on")
        for word in ("on", "off")
    ]


CASES: list[Case] = [
    Case("veth", "raw veth", None, build_veth),
    Case("kvx", "kernel vxlan <-> kernel vxlan", "veth", vxlan_builder(0)),
    *_both_offloads("tvx-kvx", "tunneld vxlan <-> kernel vxlan", "kvx", vxlan_builder(1)),
    *_both_offloads("tvx-tvx", "tunneld vxlan <-> tunneld vxlan", "kvx", vxlan_builder(2)),
    Case("wggo", "wireguard-go <-> wireguard-go", "veth", wireguard_builder(0)),
    *_both_offloads("twg-wggo", "tunneld wireguard <-> wireguard-go", "wggo", wireguard_builder(1)),
    *_both_offloads(
        "twg-twg", "tunneld wireguard <-> tunneld wireguard", "wggo", wireguard_builder(2)
    ),
    *_both_offloads("ov", "tunneld overlay plain <-> tunneld", "wggo", overlay_builder(False)),
    *_both_offloads(
        "ovwg", "tunneld overlay over WireGuard <-> tunneld", "wggo", overlay_builder(True)
    ),
]
CASES_BY_ID = {c.id: c for c in CASES}

# (what, subject, anchor, goal): issue 7's acceptance 3, TCP single stream, each direction.
ACCEPTANCE = [
    ("tunneld wg <-> tunneld / wg-go <-> wg-go", "twg-twg-on", "wggo", 3.0),
    ("tunneld wg <-> wg-go / wg-go <-> wg-go", "twg-wggo-on", "wggo", 1.3),
    ("tunneld vxlan <-> kernel / kernel <-> kernel", "tvx-kvx-on", "kvx", 0.10),
    ("tunneld vxlan <-> tunneld / kernel <-> kernel", "tvx-tvx-on", "kvx", 0.15),
    ("overlay plain / wg-go <-> wg-go", "ov-on", "wggo", 4.0),
    ("overlay over WireGuard / wg-go <-> wg-go", "ovwg-on", "wggo", 3.0),
]
