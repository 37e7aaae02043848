"""Integrity through every data plane, with offload = true and with offload = false.

A segmentation or coalescing bug corrupts data silently (iperf3 never looks at what it
moved), so these tests move data whose every byte is known (tunneld.testbed.transfer):

* 200 MiB over TCP in each direction at once through the tunnel arrive with the stream's
  SHA-256 (both ends hash; the receiver also compares byte by byte);
* UDP flows of every datagram size from 1 byte to the tunnel MTU (plus UDP_SEGMENT bursts,
  which reach an offloading tun as USO super-packets) arrive intact and in order per flow;
* the underlay, captured while TCP and UDP cross it and decoded with scapy: every IPv4
  datagram either host put on it is at most the underlay MTU (1500), not fragmented, with
  a valid IPv4 header checksum and a valid UDP checksum (0 allowed for VXLAN only: the
  kernel's vxlan sends none over IPv4); inside VXLAN and the plain overlay the inner IPv4
  header, TCP, UDP and ICMP checksums (and TCP/UDP/ICMPv6 over inner IPv6) are valid too.
  WireGuard's inner is sealed: there only the message shape is checked (type, padding).

Data planes, ns1 always tunneld: tunneld <-> kernel vxlan, tunneld <-> wireguard-go, and
tunneld <-> tunneld for vxlan, wireguard, the plain overlay and the overlay over WireGuard.
The underlay is `wire_hosts` (conftest): a hub whose ports segment and checksum like a
wire (so a capture there shows true wire frames), and GRO on at both hosts.
"""

from __future__ import annotations

import contextlib
import textwrap
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from scapy.all import IP, UDP, VXLAN, Ether, IPv6, conf, rdpcap
from scapy.utils import checksum

from tests.netns.vxlan_helpers import vxlan_config
from tests.netns.wg_helpers import Keys, PeerSpec, WgGo, tunneld_wg_config, wait_ping
from tunneld.testbed import Host, TunneldProcess, wait_for
from tunneld.testbed.transfer import tcp_both_ways, udp_both_ways

pytestmark = pytest.mark.netns("ethtool", "bridge", "tcpdump")

TCP_BYTES = 200 * 2**20  # >= 200 MB each way
OFFLOAD = pytest.mark.parametrize("offload", [True, False], ids=["offload-on", "offload-off"])
IPV4_UDP_OVERHEAD = 28  # inner IPv4 + UDP headers: the largest datagram is mtu - 28
IPV6_UDP_OVERHEAD = 48


@dataclass
class Plane:
    """One data plane between ns1 (tunneld) and ns2, ready to carry traffic."""

    name: str
    a: Host  # ns1 on the underlay
    b: Host  # ns2 on the underlay
    a_addr: str  # ns1's address inside the tunnel
    b_addr: str
    mtu: int  # the tunnel MTU both ends agree on
    inner: str  # what a datagram carries: "ethernet" (VXLAN), "ipv4" (flannel UDP), "sealed"
    daemons: list[TunneldProcess]
    peer: WgGo | None = None
    a_addr6: str = ""  # IPv6 inside the tunnel ("" where the plane carries IPv4 only)
    b_addr6: str = ""

    def check_alive(self) -> None:
        for daemon in self.daemons:
            assert daemon.alive, f"{daemon.name} died:\n{daemon.stderr()}"
        if self.peer is not None:
            assert self.peer.proc.poll() is None, self.peer.log()

    def check_offload(self, offload: bool) -> None:
        """After bulk TCP: each daemon's `show` says the mode ran as configured (with
        offload: TSO super-packets were split and received packets coalesced; without:
        no vnet_hdr, no GSO), so a passing test did exercise the path it names."""
        for daemon in self.daemons:
            (iface,) = daemon.show()["interfaces"].values()
            state, rx = iface["offload"], iface["counters"]["rx_packets"]
            if offload:
                assert state["device"] != "off" and state["udp_gso"] and state["udp_gro"], state
                assert state["segments_sent"] > state["super_packets_split"] > 0, state
                assert 0 < state["device_writes"] < rx, (state, rx)
            else:
                assert state["device"] == "off" and not state["udp_gso"], state
                assert state["super_packets_split"] == 0, state


def _link_mtu(host: Host, dev: str) -> int:
    return int(host.ns.ip("-o", "link", "show", dev).stdout.split(" mtu ")[1].split()[0])


def _agreed_mtu(a: Host, a_dev: str, b: Host, b_dev: str, expected: int) -> int:
    mtus = (_link_mtu(a, a_dev), _link_mtu(b, b_dev))
    assert mtus == (expected, expected), f"tunnel MTUs {mtus}, expected {expected} on both"
    return expected


def _first_ping(ns, dst: str) -> None:
    wait_for(lambda: ns.ping(dst, count=1, timeout=1)[1] == 1, 15, what=f"first ping {dst}")


def _vx(i: int) -> list[str]:
    return [f"10.88.0.{i}/24", f"fd88::{i}/64"]


def _vxlan_plane(name: str, a: Host, b: Host, daemons: list[TunneldProcess]) -> Plane:
    _first_ping(a.ns, "10.88.0.2")
    _first_ping(a.ns, "fd88::2")
    mtu = _agreed_mtu(a, "vx0", b, "vx0", 1450)
    return Plane(name, a, b, "10.88.0.1", "10.88.0.2", mtu, "ethernet", daemons,
                 a_addr6="fd88::1", b_addr6="fd88::2")  # fmt: skip


def vxlan_kernel(a: Host, b: Host, offload: bool) -> Plane:
    d = a.ns.spawn_tunneld(vxlan_config(a.ip, [b.ip], _vx(1), offload=offload))
    b.ns.add_kernel_vxlan("vx0", local=b.ip, dev=b.iface, flood=[a.ip], address=_vx(2))
    return _vxlan_plane("vxlan-kernel", a, b, [d])


def vxlan_tunneld(a: Host, b: Host, offload: bool) -> Plane:
    d1 = a.ns.spawn_tunneld(vxlan_config(a.ip, [b.ip], _vx(1), offload=offload), "t1")
    d2 = b.ns.spawn_tunneld(vxlan_config(b.ip, [a.ip], _vx(2), offload=offload), "t2")
    return _vxlan_plane("vxlan-tunneld", a, b, [d1, d2])


def wireguard_go(a: Host, b: Host, offload: bool) -> Plane:
    td, go_keys = Keys.new(), Keys.new()
    go = WgGo.start(b.ns, b.ns.testbed.ifname("wg"), go_keys, 51820, _wg(2))
    go.set_peer(td.public_b64, _wg_allowed(1))
    peer = PeerSpec(go_keys.public_b64, _wg_allowed(2), endpoint=f"{b.ip}:51820")
    d = a.ns.spawn_tunneld(tunneld_wg_config(td, _wg(1), [peer], listen_port=51821,
                                             offload=offload))  # fmt: skip
    return _wg_plane("wireguard-go", a, b, go.name, [d], go)


def _wg(i: int) -> list[str]:
    return [f"10.77.0.{i}/24", f"fd77::{i}/64"]


def _wg_allowed(i: int) -> list[str]:
    return [f"10.77.0.{i}/32", f"fd77::{i}/128"]


def _wg_plane(name: str, a: Host, b: Host, b_dev: str, daemons: list[TunneldProcess],
              go: WgGo | None = None) -> Plane:  # fmt: skip
    wait_ping(a.ns, "10.77.0.2")
    wait_ping(a.ns, "fd77::2")
    mtu = _agreed_mtu(a, "wg0", b, b_dev, 1420)
    return Plane(name, a, b, "10.77.0.1", "10.77.0.2", mtu, "sealed", daemons, go,
                 a_addr6="fd77::1", b_addr6="fd77::2")  # fmt: skip


def wireguard_tunneld(a: Host, b: Host, offload: bool) -> Plane:
    keys = Keys.new(), Keys.new()
    daemons = []
    for i, (me, other) in enumerate(((a, b), (b, a))):
        peer = PeerSpec(keys[1 - i].public_b64, _wg_allowed(2 - i), endpoint=f"{other.ip}:51820")
        config = tunneld_wg_config(keys[i], _wg(i + 1), [peer], listen_port=51820,
                                   offload=offload)  # fmt: skip
        daemons.append(me.ns.spawn_tunneld(config, f"t{i + 1}"))
    return _wg_plane("wireguard-tunneld", a, b, "wg0", daemons)


def overlay_config(dev: str, me: Host, other: Host, mine: int, theirs: int, offload: bool,
                   keys: tuple[Keys, Keys] | None = None) -> str:  # fmt: skip
    """Static-registry overlay for `me` (subnet 10.5.<mine>.0/24) with one other host; with
    `keys` (mine, theirs) the transport is WireGuard."""
    text = textwrap.dedent(f"""\
        [daemon]
        log_level = "info"
        [interfaces.{dev}]
        type = "overlay"
        network = "10.5.0.0/16"
        subnet_len = 24
        public_ip = "{me.ip}"
        registry = "static"
        subnet = "10.5.{mine}.0/24"
        offload = {"true" if offload else "false"}
        """)
    if keys:
        text += f'encryption = "wireguard"\nprivate_key = "{keys[0].private_b64}"\n'
    text += (f'[[interfaces.{dev}.hosts]]\nsubnet = "10.5.{theirs}.0/24"\n'
             f'public_ip = "{other.ip}"\n')  # fmt: skip
    if keys:
        text += f'public_key = "{keys[1].public_b64}"\n'
    return text


def _overlay(a: Host, b: Host, offload: bool, wireguard: bool) -> Plane:
    dev = a.ns.testbed.ifname("ov")
    keys = (Keys.new(), Keys.new()) if wireguard else None
    d1 = a.ns.spawn_tunneld(overlay_config(dev, a, b, 1, 2, offload, keys), "t1")
    back = (keys[1], keys[0]) if keys else None
    d2 = b.ns.spawn_tunneld(overlay_config(dev, b, a, 2, 1, offload, back), "t2")
    _first_ping(a.ns, "10.5.2.0")
    mtu = _agreed_mtu(a, dev, b, dev, 1440 if wireguard else 1472)
    name, inner = ("overlay-wg-tunneld", "sealed") if wireguard else ("overlay-tunneld", "ipv4")
    return Plane(name, a, b, "10.5.1.0", "10.5.2.0", mtu, inner, [d1, d2])


def overlay_tunneld(a: Host, b: Host, offload: bool) -> Plane:
    return _overlay(a, b, offload, wireguard=False)


def overlay_wg_tunneld(a: Host, b: Host, offload: bool) -> Plane:
    return _overlay(a, b, offload, wireguard=True)


_WG_GO = pytest.mark.netns("wireguard-go", "wg")
PLANES: list = [
    pytest.param(vxlan_kernel, id="vxlan-kernel"),
    pytest.param(vxlan_tunneld, id="vxlan-tunneld"),
    pytest.param(wireguard_go, id="wireguard-go", marks=_WG_GO),
    pytest.param(wireguard_tunneld, id="wireguard-tunneld"),
    pytest.param(overlay_tunneld, id="overlay-tunneld"),
    pytest.param(overlay_wg_tunneld, id="overlay-wg-tunneld"),
]


# the planes that carry IPv6 inside (flannel's overlay is IPv4 only)
IPV6_PLANES = [p for p in PLANES if not p.id.startswith("overlay")]


def _build(request: pytest.FixtureRequest, wire_hosts, offload: bool) -> Plane:
    build: Callable[[Host, Host, bool], Plane] = request.param
    a, b, _ = wire_hosts
    return build(a, b, offload)


@pytest.fixture(params=PLANES)
def plane(request: pytest.FixtureRequest, wire_hosts, offload: bool) -> Plane:
    return _build(request, wire_hosts, offload)


@pytest.fixture(params=IPV6_PLANES)
def plane6(request: pytest.FixtureRequest, wire_hosts, offload: bool) -> Plane:
    return _build(request, wire_hosts, offload)


@OFFLOAD
def test_tcp_200mib_each_way_arrives_with_its_sha256(plane: Plane, offload: bool) -> None:
    results = tcp_both_ways(plane.a.ns, plane.b.ns, plane.b_addr, TCP_BYTES, timeout=300)
    problems = [p for r in results for p in r.problems()]
    assert not problems, problems
    for r in results:
        print(f"{plane.name} {r.direction}: {TCP_BYTES * 8 / r.seconds / 1e9:.2f} Gbit/s")
    plane.check_alive()
    plane.check_offload(offload)


@OFFLOAD
def test_udp_every_size_to_the_mtu_intact_and_in_order(plane: Plane) -> None:
    max_payload = plane.mtu - IPV4_UDP_OVERHEAD
    results = udp_both_ways(plane.a.ns, plane.a_addr, plane.b.ns, plane.b_addr, max_payload)
    problems = [p for r in results for p in r.problems()]
    assert not problems, problems
    for r in results:
        print(f"{plane.name} {r.direction}: {r.datagrams} datagrams checked")
    plane.check_alive()


@OFFLOAD
def test_ipv6_inside_tcp_and_udp_intact(plane6: Plane, offload: bool) -> None:
    """TSO6/USO6 and IPv6 coalescing: 64 MiB of TCP each way, then UDP of every size."""
    p = plane6
    results = tcp_both_ways(p.a.ns, p.b.ns, p.b_addr6, 64 * 2**20, port=7110, timeout=300)
    udp = udp_both_ways(p.a.ns, p.a_addr6, p.b.ns, p.b_addr6, p.mtu - IPV6_UDP_OVERHEAD,
                        port=7300)  # fmt: skip
    problems = [x for r in results for x in r.problems()] + [x for r in udp for x in r.problems()]
    assert not problems, problems
    p.check_alive()
    p.check_offload(offload)


# --- the wire ---------------------------------------------------------------------------

UNDERLAY_MTU = 1500
ETH = 14
# outer bytes around one inner packet of `mtu` bytes (the largest datagram on the wire)
FULL_SIZE_OVERHEAD = {"ethernet": 20 + 8 + 8 + ETH, "ipv4": 20 + 8, "sealed": 20 + 8 + 32}


@dataclass
class WireStats:
    """What the frames of one direction showed."""

    frames: int = 0
    largest: int = 0  # bytes of the largest outer IPv4 datagram
    checked: Counter[str] = field(default_factory=Counter)  # inner checksums verified, by kind
    problems: Counter[str] = field(default_factory=Counter)  # by kind
    examples: list[str] = field(default_factory=list)

    def bad(self, kind: str, pkt, detail: str = "") -> None:
        self.problems[kind] += 1
        if len(self.examples) < 12:
            self.examples.append(f"{kind} {detail}: {pkt.summary()}")


@contextlib.contextmanager
def headers_only() -> Iterator[None]:
    """While active, scapy dissects only Ethernet, IP, IPv6, UDP and VXLAN headers (TCP,
    ICMP and payloads stay Raw): 5x faster, and all the checks read. conf.layers is
    process-wide, so it is restored on exit."""
    conf.layers.filter([Ether, IP, IPv6, UDP, VXLAN])
    try:
        yield
    finally:
        conf.layers.unfilter()


def check_capture(pcap: str, inner: str, mtu: int) -> WireStats:
    """Check every IPv4 frame of a capture of one plane's underlay (`inner` and `mtu` as
    in Plane)."""
    stats = WireStats()
    with headers_only():
        for pkt in rdpcap(pcap):
            if IP in pkt:  # (ARP between the hosts is no datagram)
                _check_outer(pkt, bytes(pkt.original), inner, mtu, stats)
    return stats


def _l4_checksum_ok(addresses: bytes, proto: int, segment: bytes) -> bool:
    """TCP/UDP/ICMPv6 checksum over the pseudo-header (source and destination addresses,
    protocol, length: the same sum for IPv4 and IPv6) and the segment."""
    pseudo = addresses + bytes((0, proto)) + len(segment).to_bytes(2, "big")
    return checksum(pseudo + segment) == 0


def _check_outer(pkt, frame: bytes, inner: str, mtu: int, stats: WireStats) -> None:
    ip = pkt[IP]
    ihl, total = ip.ihl * 4, ip.len
    stats.frames += 1
    stats.largest = max(stats.largest, total)
    if total > UNDERLAY_MTU:
        stats.bad("over_mtu", pkt, f"{total} bytes")
    if len(frame) < ETH + total:
        stats.bad("truncated", pkt, f"{len(frame) - ETH} of {total} bytes")
        return
    if ip.flags.MF or ip.frag:
        stats.bad("fragment", pkt)
    header = frame[ETH : ETH + ihl]
    if checksum(header) != 0:
        stats.bad("outer_ip_checksum", pkt)
    if UDP not in pkt or ip.proto != 17:
        stats.bad("not_udp", pkt)
        return
    udp = frame[ETH + ihl : ETH + total]
    if pkt[UDP].len != len(udp):
        stats.bad("udp_length", pkt)
    if pkt[UDP].chksum == 0:
        if inner != "ethernet":  # only VXLAN may send without a UDP checksum
            stats.bad("outer_udp_no_checksum", pkt)
    elif not _l4_checksum_ok(header[12:20], 17, udp):
        stats.bad("outer_udp_checksum", pkt)
    if inner == "ethernet":
        _check_vxlan(pkt, udp[8:], mtu, stats)
    elif inner == "ipv4":
        _check_inner_ipv4(pkt, IP(udp[8:]), udp[8:], stats, exact=True)
    else:
        _check_wireguard(pkt, udp[8:], mtu, stats)


def _check_vxlan(pkt, payload: bytes, mtu: int, stats: WireStats) -> None:
    if VXLAN not in pkt or pkt[VXLAN].flags != 0x08 or pkt[VXLAN].vni != 42:
        stats.bad("vxlan_header", pkt)
        return
    frame = payload[8:]
    if len(frame) > ETH + mtu:
        stats.bad("inner_over_mtu", pkt, f"{len(frame)}-byte frame")
    inner = pkt[VXLAN].payload
    if IP in inner:
        _check_inner_ipv4(pkt, inner[IP], frame[ETH:], stats, exact=False)
    elif IPv6 in inner:
        _check_inner_ipv6(pkt, inner[IPv6], frame[ETH:], stats)


def _check_inner_ipv4(pkt, inner, data: bytes, stats: WireStats, exact: bool) -> None:
    """The inner IPv4 packet `inner` (scapy) of bytes `data` (exact: nothing follows it in
    the datagram, as in flannel's UDP; Ethernet may pad)."""
    ihl, total = inner.ihl * 4, inner.len
    if inner.version != 4 or total > len(data) or (exact and total != len(data)):
        stats.bad("inner_ipv4_length", pkt, f"{total} in {len(data)} bytes")
        return
    stats.checked["ipv4"] += 1
    if checksum(data[:ihl]) != 0:
        stats.bad("inner_ip_checksum", pkt)
    if inner.frag or inner.flags.MF:
        return  # a fragment's checksum covers the whole datagram
    segment, kind = data[ihl:total], {1: "icmp", 6: "tcp", 17: "udp"}.get(inner.proto)
    if kind is None:
        return
    stats.checked[kind] += 1
    if kind == "icmp":
        ok = checksum(segment) == 0
    elif kind == "udp" and segment[6:8] == b"\0\0":
        ok = False  # "no checksum" is legal IPv4, but Linux senders always set one
    else:
        ok = _l4_checksum_ok(data[12:20], inner.proto, segment)
    if not ok:
        stats.bad(f"inner_{kind}_checksum", pkt)


def _check_inner_ipv6(pkt, inner, data: bytes, stats: WireStats) -> None:
    """TCP, UDP and ICMPv6 right behind the IPv6 header (ND; MLD's hop-by-hop is skipped)."""
    if inner.nh in (6, 17, 58):
        stats.checked["ipv6"] += 1
        if not _l4_checksum_ok(data[8:40], inner.nh, data[40 : 40 + inner.plen]):
            stats.bad("inner_ipv6_checksum", pkt, f"next header {inner.nh}")


def _check_wireguard(pkt, payload: bytes, mtu: int, stats: WireStats) -> None:
    kind = payload[0] if len(payload) >= 4 and payload[1:4] == b"\0\0\0" else 0
    sizes = {1: 148, 2: 92, 3: 64}
    if kind in sizes:
        if len(payload) != sizes[kind]:
            stats.bad("wireguard_size", pkt, f"type {kind}, {len(payload)} bytes")
    elif kind == 4:
        # header 16 + plaintext padded to a multiple of 16 but never past the MTU (whitepaper
        # 5.4.6; wireguard-go's calculatePaddingSize) + tag 16
        sealed = len(payload) - 32
        if sealed < 0 or sealed > mtu or (sealed % 16 and sealed != mtu):
            stats.bad("wireguard_padding", pkt, f"{len(payload)} bytes")
        stats.checked["transport"] += 1
    else:
        stats.bad("not_wireguard", pkt, payload[:8].hex())


@OFFLOAD
def test_underlay_frames_within_mtu_with_valid_checksums(plane: Plane, wire_hosts) -> None:
    a, b, ports = wire_hosts
    hub = a.ns.testbed.hub
    max_payload = plane.mtu - IPV4_UDP_OVERHEAD
    with (
        hub.capture(ports[0], f"ip and src host {b.ip}") as toward_a,
        hub.capture(ports[1], f"ip and src host {a.ip}") as toward_b,
    ):
        transfers = tcp_both_ways(a.ns, b.ns, plane.b_addr, 2 * 2**20, timeout=120)
        if plane.b_addr6:  # inner IPv6 TCP: TSO6 segments' checksums on the wire
            transfers += tcp_both_ways(a.ns, b.ns, plane.b_addr6, 2**20, port=7110, timeout=120)
        udp = udp_both_ways(a.ns, plane.a_addr, b.ns, plane.b_addr, max_payload, flows=1)
    problems = [p for r in transfers for p in r.problems()]
    problems += [p for r in udp for p in r.problems()]
    assert not problems, problems
    full_size = plane.mtu + FULL_SIZE_OVERHEAD[plane.inner]
    for direction, pcap in (("ns1->ns2", toward_b), ("ns2->ns1", toward_a)):
        stats = check_capture(pcap, plane.inner, plane.mtu)
        print(f"{plane.name} {direction}: {stats.frames} frames, largest {stats.largest}, "
              f"checked {dict(stats.checked)}")  # fmt: skip
        assert not stats.problems, (direction, dict(stats.problems), stats.examples)
        assert stats.frames >= 3000, (direction, stats.frames)  # 2 MiB of TCP and the UDP
        assert stats.largest == full_size, (direction, stats.largest, full_size)
        if plane.inner == "sealed":
            assert stats.checked["transport"] >= 3000, (direction, dict(stats.checked))
        else:
            assert stats.checked["tcp"] >= 1400 and stats.checked["udp"] >= 1400, (
                direction, dict(stats.checked))  # fmt: skip
        if plane.inner == "ethernet":
            assert stats.checked["ipv6"] >= 700, (direction, dict(stats.checked))
    plane.check_alive()
