"""MTU at the edges, for each type over an IPv4 and an IPv6 underlay (links/pmtu.py).

Topology (Testbed.routed_hosts): ns1 (tunneld A) - router - ns2 (tunneld B); the router's
link towards ns2 has MTU FAR_MTU, smaller than ns1's 1500, and it forwards, so A's kernel
learns the path MTU from the router's ICMP frag-needed / Packet Too Big, as on a real path.

* A's default MTU is its underlay's (1500) minus the exact overhead for the family, in show.
* `ping -M do` of the tunnel MTU's size through A: the first datagram is dropped by the
  router (its ICMP teaches A's kernel the path), later ones fail with EMSGSIZE in A, which
  answers with ICMP frag-needed (inner IPv4) / Packet Too Big (inner IPv6) carrying the usable
  inner MTU (WireGuard: rounded down to 16), from the original destination: ping prints it,
  and the sender's kernel then holds that MTU for the destination (`ip route get`).
* A TCP transfer from A to a fresh destination learns the path from A's ICMP errors (through
  the GSO fallback) and completes; then one each way at once completes.
* B's MTU is set to A's, larger than its own underlay allows: B's sends fail EMSGSIZE on its
  own route (no router involved) and B answers too.
* `mss_clamp` on A only: a SYN from A captured on B's device and the SYN-ACK from B captured
  on A's device carry the clamped MSS (A rewrites outbound and inbound) and valid checksums.

Run once with the default offload mode (on): the GSO path is the one whose fallback must
still yield the ICMP error; the plain per-packet path is the same code after the fallback.
"""

from __future__ import annotations

import re
import subprocess
import textwrap
from typing import Any

import pytest
from scapy.all import IP, TCP, Ether, IPv6, rdpcap

from tests.netns.wg_helpers import Keys
from tunneld.testbed import stop_process, wait_for
from tunneld.testbed.transfer import TcpResult, end_report, start_end, tcp_both_ways

pytestmark = pytest.mark.netns("tcpdump")  # once, offload on: conftest.DEFAULT_ONLY

FAR_MTU = 1400
WG_PORT = 51820
# Outer overhead per (type, underlay family), and whether the usable MTU rounds to 16.
OVERHEAD = {"wireguard": (60, 80), "vxlan": (50, 70), "overlay": (28, 48), "overlay-wg": (60, 80)}
INNER = {  # type -> (B's inner IPv4, a second one, B's inner IPv6 or None)
    "wireguard": ("10.77.0.2", "10.77.0.3", "fd77::2"),
    "vxlan": ("10.88.0.2", "10.88.0.3", "fd88::2"),
    "overlay": ("10.5.2.0", "10.5.2.1", None),
    "overlay-wg": ("10.5.2.0", "10.5.2.1", None),
}


A_INNER = {"wireguard": "10.77.0.1", "vxlan": "10.88.0.1", "overlay": "10.5.1.0",
           "overlay-wg": "10.5.1.0"}  # fmt: skip


def endpoint(host: Any, v6: bool) -> str:
    return host.ip6 if v6 else host.ip


def config(kind: str, me: Any, other: Any, v6: bool, which: int, mtu: int | None = None,
           mss_clamp: int | None = None, keys: list[Keys] | None = None) -> str:  # fmt: skip
    """tunneld config for side `which` (1: A, 2: B) of a `kind` tunnel."""
    local, remote = endpoint(me, v6), endpoint(other, v6)
    extra = (f"mtu = {mtu}\n" if mtu else "") + (f"mss_clamp = {mss_clamp}\n" if mss_clamp else "")
    if kind == "wireguard":
        assert keys is not None
        host = f"[{remote}]" if v6 else remote
        second = ', "10.77.0.3/32"' if which == 1 else ""  # B's second address
        return textwrap.dedent(f"""\
            [interfaces.wg0]
            type = "wireguard"
            address = ["10.77.0.{which}/24", "fd77::{which}/64"]
            listen_port = {WG_PORT}
            private_key = "{keys[which - 1].private_b64}"
            """) + extra + textwrap.dedent(f"""\
            [[interfaces.wg0.peers]]
            public_key = "{keys[2 - which].public_b64}"
            endpoint = "{host}:{WG_PORT}"
            allowed_ips = ["10.77.0.{3 - which}/32", "fd77::{3 - which}/128"{second}]
            """)  # fmt: skip
    if kind == "vxlan":
        return textwrap.dedent(f"""\
            [interfaces.vx0]
            type = "vxlan"
            vni = 42
            address = ["10.88.0.{which}/24", "fd88::{which}/64"]
            local = "{local}"
            flood = ["{remote}"]
            """) + extra  # fmt: skip
    if kind == "overlay-wg":  # the overlay's WireGuard transport
        assert keys is not None
        extra += f'encryption = "wireguard"\nprivate_key = "{keys[which - 1].private_b64}"\n'
    text = textwrap.dedent(f"""\
        [interfaces.ov0]
        type = "overlay"
        network = "10.5.0.0/16"
        subnet_len = 24
        public_ip = "{local}"
        subnet = "10.5.{which}.0/24"
        """) + extra + textwrap.dedent(f"""\
        [[interfaces.ov0.hosts]]
        subnet = "10.5.{3 - which}.0/24"
        public_ip = "{remote}"
        """)  # fmt: skip
    if kind == "overlay-wg":
        text += f'public_key = "{keys[2 - which].public_b64}"\n'
    return text


def iface_name(kind: str) -> str:
    return {"wireguard": "wg0", "vxlan": "vx0", "overlay": "ov0", "overlay-wg": "ov0"}[kind]


def start_pair(testbed: Any, kind: str, v6: bool, mss_clamp: int | None = None) -> tuple:
    a, _router, b = testbed.routed_hosts(FAR_MTU)
    keys = [Keys.new(), Keys.new()]
    family = 1 if v6 else 0
    a_mtu = 1500 - OVERHEAD[kind][family]
    da = a.ns.spawn_tunneld(config(kind, a, b, v6, 1, mss_clamp=mss_clamp, keys=keys), "ta")
    # B's own underlay is FAR_MTU: its default would fit the path; A's MTU makes B's big
    # packets fail on B's own route, so both directions need (and get) the ICMP errors.
    db = b.ns.spawn_tunneld(config(kind, b, a, v6, 2, mtu=a_mtu, keys=keys), "tb")
    # A second address of B: the pings below teach A's kernel the inner path MTU to it,
    # and leave the first one fresh for the TCP transfer (which must learn it by itself).
    b.ns.add_addrs(iface_name(kind), f"{INNER[kind][1]}/32")
    return a, b, da, db, a_mtu


def usable(kind: str, v6: bool) -> int:
    mtu = FAR_MTU - OVERHEAD[kind][1 if v6 else 0]
    return mtu & ~15 if kind in ("wireguard", "overlay-wg") else mtu


def wait_reachable(ns: Any, dst: str) -> None:
    wait_for(lambda: ns.ping(dst, count=1, timeout=1)[1] == 1, 15, what=f"ping {dst}")


def ping_too_big(ns: Any, dst: str, size: int) -> str:
    """`ping -M do -s size` a few times; ping's output (replies, ICMP errors, local errors)."""
    args = ["ping", "-n", "-M", "do", "-s", str(size), "-c", "4", "-i", "0.2", "-W", "1", dst]
    proc = ns.run(args, check=False, timeout=20)
    return proc.stdout + proc.stderr


def tcp_one_way(sender: Any, receiver: Any, addr: str, size: int, port: int = 7100) -> TcpResult:
    """`size` bytes over one TCP connection from `sender` to `receiver` at `addr`."""
    argv = ["tcp", "--addr", addr, "--port", str(port), "--size", str(size), "--seed", "3"]
    listener = start_end(receiver, [*argv, "--mode", "listen", "--action", "recv"], "listening")
    try:
        connector = start_end(sender, [*argv, "--mode", "connect", "--action", "send"])
        try:
            sent, got = end_report(connector, 60), end_report(listener, 60)
        finally:
            stop_process(connector)
    finally:
        stop_process(listener)
    return TcpResult("a->b", size, 3, sent, got)


def mtus_reported(text: str) -> set[int]:
    return {int(m) for m in re.findall(r"mtu\s*[=:]\s*(\d+)", text)}


KINDS = ("wireguard", "vxlan", "overlay", "overlay-wg")
CASES = [(kind, v6) for kind in KINDS for v6 in (False, True)]


@pytest.mark.parametrize(("kind", "v6"), CASES,
                         ids=[f"{k}-underlay{6 if v6 else 4}" for k, v6 in CASES])  # fmt: skip
def test_default_mtu_icmp_too_big_and_tcp(testbed, kind: str, v6: bool) -> None:
    a, b, da, db, a_mtu = start_pair(testbed, kind, v6)
    name = iface_name(kind)
    shown = da.show(name)["interfaces"][name]
    assert shown["mtu"] == a_mtu, shown.get("mtu_source")
    assert a.ns.run(["cat", f"/sys/class/net/{name}/mtu"]).stdout.strip() == str(a_mtu)
    peer4, second4, peer6 = INNER[kind]
    wait_reachable(a.ns, second4)
    want = usable(kind, v6)
    out = ping_too_big(a.ns, second4, a_mtu - 28)
    assert re.search(rf"From {re.escape(second4)} .*Frag needed.*mtu = {want}\b", out), out
    route = a.ns.run(["ip", "route", "get", second4]).stdout
    assert f"mtu {want}" in route, route  # the sender's kernel took it
    if peer6 is not None:
        wait_reachable(a.ns, peer6)
        out6 = ping_too_big(a.ns, peer6, a_mtu - 48)
        assert re.search(rf"From {re.escape(peer6)} .*Packet too big.*mtu\s*[=:]\s*{want}\b",
                         out6, re.IGNORECASE), out6  # fmt: skip
        assert want in mtus_reported(out6)
    # A to B alone first: A's segments meet the router (A's sends fail EMSGSIZE once its kernel
    # knows the path, also through the GSO fallback: TSO super-packets split for the tunnel
    # MTU). Alone, because a concurrent B-to-A transfer may teach B the path first, and B's
    # SYN-ACK would then offer an MSS that already fits.
    before = da.show(name)["interfaces"][name]
    one_way = tcp_one_way(a.ns, b.ns, peer4, 2 << 20)  # alone: B's MSS is not yet lowered
    assert not one_way.problems(), one_way.problems()
    counters = da.show(name)["interfaces"][name]
    too_big = counters["counters"]["tx_dropped"]["packet_too_big"]
    assert too_big > before["counters"]["tx_dropped"]["packet_too_big"]  # TCP met the path
    assert counters["icmp_too_big_sent"] > before["icmp_too_big_sent"]  # and learned it from A
    if counters["offload"]["device"] != "off":  # super-packets: their GSO sends fell back
        assert counters["offload"]["gso_fallbacks"] > 0
    assert counters["path_mtu"] == {endpoint(b, v6): FAR_MTU}
    results = tcp_both_ways(a.ns, b.ns, peer4, 1 << 20, port=7110, timeout=60)  # then both
    for r in results:
        assert not r.problems(), r.problems()
    # B's own underlay is smaller than its MTU: its sends fail EMSGSIZE on its own route, and
    # B answers itself (during the transfer, or now): ping sees the error or, once B's kernel
    # took the MTU from it, fails locally with that MTU.
    out = ping_too_big(b.ns, A_INNER[kind], a_mtu - 28)
    assert want in mtus_reported(out), out
    assert db.show(name)["interfaces"][name]["icmp_too_big_sent"] > 0


CLAMP = 1100


def syn_mss(path: str, want_flags: str, l2: bool) -> list[tuple[int, bool]]:
    """(MSS, checksum valid) of every TCP packet with exactly `want_flags` in a capture of
    a tap (`l2`: Ethernet frames) or a tun (IP packets; the pcap says Ethernet regardless)."""
    found = []
    for frame in rdpcap(path):
        raw = bytes(frame)
        pkt = Ether(raw) if l2 else (IP(raw) if raw[0] >> 4 == 4 else IPv6(raw))
        if TCP not in pkt or str(pkt[TCP].flags) != want_flags:
            continue
        ip = pkt[IP] if IP in pkt else pkt[IPv6]
        again = ip.__class__(bytes(ip))
        sent = again[TCP].chksum
        del again[TCP].chksum
        valid = ip.__class__(bytes(again))[TCP].chksum == sent
        found.append((dict(pkt[TCP].options).get("MSS"), valid))
    return found


@pytest.mark.parametrize(("kind", "v6"), CASES,
                         ids=[f"{k}-underlay{6 if v6 else 4}" for k, v6 in CASES])  # fmt: skip
def test_mss_clamp_both_directions(testbed, kind: str, v6: bool) -> None:
    a, b, da, db, _ = start_pair(testbed, kind, v6, mss_clamp=CLAMP)
    name = iface_name(kind)
    peer4 = INNER[kind][0]
    wait_reachable(a.ns, peer4)
    server = b.ns.popen(["python3", "-c", LISTEN, peer4], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        with b.ns.capture(name) as b_pcap, a.ns.capture(name) as a_pcap:
            a.ns.run(["python3", "-c", CONNECT, peer4], timeout=15)
    finally:
        stop_process(server)
    l2 = kind == "vxlan"
    syn_at_b = syn_mss(b_pcap, "S", l2)
    synack_at_a = syn_mss(a_pcap, "SA", l2)
    assert syn_at_b and all(m == (CLAMP, True) for m in syn_at_b), syn_at_b  # A's outbound
    assert synack_at_a and all(m == (CLAMP, True) for m in synack_at_a), synack_at_a  # inbound
    assert syn_mss(a_pcap, "S", l2)[0][0] > CLAMP  # what A's kernel sent, before the clamp


LISTEN = """
import socket, sys
s = socket.create_server((sys.argv[1], 7200))
print("listening", flush=True)
c, _ = s.accept()
c.sendall(b"ok")
c.close()
"""
CONNECT = """
import socket, sys
c = socket.create_connection((sys.argv[1], 7200), timeout=10)
assert c.recv(2) == b"ok"
"""
