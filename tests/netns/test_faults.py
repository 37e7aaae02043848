"""Fault injection: a lossy, reordering, duplicating underlay; crashes; a link down; etcd killed.

Topology (every kind): hosts A (ns1) and B (ns2) and a relay (ns3) on one bridged underlay
segment. Each tunnel end is configured to reach the other at the relay's address, so every
tunnel datagram crosses the relay (tunneld.testbed.relay): it holds back about 3% of the
datagrams behind the next 1..3 (reordering) and sends about 2% twice (duplication). An
nftables rule in the relay's namespace drops 5% of them as the relay sends them on
(tunneld.testbed.faults; the output hook, where each datagram is its own packet).
Kinds: vxlan, wireguard, overlay (plain) and overlay with encryption = "wireguard", tunneld
on both sides; and wireguard-go, where B is wireguard-go (Debian's) and A, the side that
survives B's crash, is tunneld. For each, one test walks through:

1. 5% loss + reordering + duplication: an iperf3 TCP transfer of 8 MiB completes, and a
   checksum-verified 8 MiB TCP stream each way at once (transfer.py) arrives intact. The
   nft counter and the relay's counters prove the faults happened.
2. B is SIGKILLed and started again with the same config file (its control socket is left
   behind, stale): it answers at once (tunneld: within RESTART_SECONDS = 3 s), and
   traffic resumes within 10 s while A keeps running; for the WireGuard kinds A completes
   a new handshake. A still holds its old session, which B forgot: A's packets are
   dropped (unknown_receiver) until B initiates. The WireGuard B has persistent_keepalive
   (the client side's usual setting), so it initiates at start, and A->B is tried first;
   the overlay's WireGuard transport has no keepalive (flannel's neither), so there B->A
   goes first: without it A would wait for its own new handshake, KEEPALIVE_TIMEOUT +
   REKEY_TIMEOUT = 15 s after its first unanswered packet (whitepaper 6.2; wireguard-go
   and the kernel alike; 16 s measured).
3. A's underlay link goes down for 5 s (pings fail meanwhile) and comes back: traffic
   resumes within 10 s.
Loss is on during step 1 only: steps 2 and 3 measure recovery, which a lost handshake
message (retried after REKEY_TIMEOUT = 5 s) would blur; reordering and duplication stay.

Also: a start over leftovers (a persistent device of the interface's name holding its
address and a route, and a stale socket; the overlay's and a full tunnel's restarts are in
test_restart_leftovers.py), and etcd SIGKILLed for 10 s, then cut off by a
silent partition for 10 s, under an etcd overlay. Recovery times are printed (`-s` shows
them) for the report.
"""

from __future__ import annotations

import contextlib
import json
import os
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.netns.test_overlay_etcd import PREFIX, Etcd, etcd_config
from tests.netns.vxlan_helpers import vxlan_config
from tests.netns.wg_helpers import WG_RUN_DIR, Keys, PeerSpec, WgGo, tunneld_wg_config
from tunneld.testbed import Host, Testbed, TunneldProcess, wait_for
from tunneld.testbed.faults import NftLoss, NftPartition
from tunneld.testbed.relay import UdpRelay
from tunneld.testbed.transfer import tcp_both_ways

pytestmark = pytest.mark.netns("iperf3", "nft", "etcd", "etcdctl", "wireguard-go", "wg")

KINDS = ["vxlan", "wireguard", "wireguard-go", "overlay", "overlay-wg"]
PORTS = {"vxlan": [4789], "wireguard": [51820], "wireguard-go": [51820], "overlay": [8285],
         "overlay-wg": [51820]}  # fmt: skip
LOSS_PERCENT = 5
RECOVERY_SECONDS = 10.0
RESTART_SECONDS = 3.0  # "at once": a restart answers `show` within this (about 1.2 s measured)


@dataclass
class Pair:
    """Two ends through the relay; `inner_a`/`inner_b`: their tunnel addresses. A is
    tunneld; B is tunneld too, or (kind wireguard-go) a WgGo that `start_b` starts."""

    kind: str
    a: Host
    b: Host
    relay_ns: object
    relay: UdpRelay
    da: TunneldProcess
    db: Any
    inner_a: str
    inner_b: str
    keys: tuple[Keys, Keys] | None
    start_b: Callable[[], Any] | None = None


def with_socket(text: str, path: str) -> str:
    """Pin the control socket, so a restart finds the one a killed run left."""
    return f"[daemon]\ncontrol_socket = {json.dumps(path)}\n" + text.replace("[daemon]\n", "", 1)


def overlay_config(dev: str, me: Host, my_subnet: str, other_subnet: str, relay_ip: str,
                   keys: tuple[Keys, Keys] | None) -> str:  # fmt: skip
    text = textwrap.dedent(f"""\
        [interfaces.{dev}]
        type = "overlay"
        network = "10.5.0.0/16"
        subnet_len = 24
        public_ip = "{me.ip}"
        registry = "static"
        subnet = "{my_subnet}"
        """)
    if keys is not None:
        text += f'encryption = "wireguard"\nprivate_key = "{keys[0].private_b64}"\n'
    text += f'[[interfaces.{dev}.hosts]]\nsubnet = "{other_subnet}"\npublic_ip = "{relay_ip}"\n'
    if keys is not None:
        text += f'public_key = "{keys[1].public_b64}"\n'
    return text


def configs(kind: str, bed: Testbed, a: Host, b: Host, relay_ip: str):
    """(config A, config B, inner A, inner B, keys) for `kind`, both ends aimed at the relay."""
    if kind == "vxlan":
        texts = [vxlan_config(h.ip, [relay_ip], f"10.88.0.{i}/24") for i, h in ((1, a), (2, b))]
        return *texts, "10.88.0.1", "10.88.0.2", None
    keys = (Keys.new(), Keys.new())
    if kind in ("wireguard", "wireguard-go"):
        texts = [
            tunneld_wg_config(keys[i], [f"10.77.0.{i + 1}/24"],
                              [PeerSpec(keys[1 - i].public_b64, [f"10.77.0.{2 - i}/32"],
                                        endpoint=f"{relay_ip}:51820",
                                        persistent_keepalive=25 if i else None)],
                              listen_port=51820)
            for i in (0, 1)
        ]  # fmt: skip
        return *texts, "10.77.0.1", "10.77.0.2", keys
    dev = bed.ifname("ov")
    wg = keys if kind == "overlay-wg" else None
    text_a = overlay_config(dev, a, "10.5.1.0/24", "10.5.2.0/24", relay_ip, wg)
    text_b = overlay_config(dev, b, "10.5.2.0/24", "10.5.1.0/24", relay_ip,
                            wg and (wg[1], wg[0]))  # fmt: skip
    return text_a, text_b, "10.5.1.0", "10.5.2.0", wg


def ping_once(ns, dst: str) -> bool:
    return ns.ping(dst, count=1, timeout=1)[1] == 1


def until_ping(ns, dst: str, timeout: float, what: str) -> float:
    """Seconds until one ping from `ns` to `dst` is answered (TimeoutError after `timeout`)."""
    started = time.monotonic()
    wait_for(lambda: ping_once(ns, dst), timeout, 0.05, what=what)
    return time.monotonic() - started


def build(bed: Testbed, kind: str) -> Pair:
    a, b, relay = bed.hub_hosts(3)
    text_a, text_b, inner_a, inner_b, keys = configs(kind, bed, a, b, relay.ip)
    sockets = [os.path.join(bed.tmpdir, f"{side}.sock") for side in "ab"]
    udp_relay = UdpRelay.start(relay.ns, a.ip, b.ip, PORTS[kind])
    da = a.ns.spawn_tunneld(with_socket(text_a, sockets[0]), name="a")
    start_b = None
    if kind == "wireguard-go":
        assert keys is not None
        name, pub_a = bed.ifname("wg"), keys[0].public_b64

        def start_b() -> WgGo:
            wg = WgGo.start(b.ns, name, keys[1], 51820, f"{inner_b}/24")
            wg.set_peer(pub_a, [f"{inner_a}/32"], endpoint=f"{relay.ip}:51820",
                        persistent_keepalive=25)  # fmt: skip
            return wg

        db = start_b()
    else:
        db = b.ns.spawn_tunneld(with_socket(text_b, sockets[1]), name="b")
    pair = Pair(kind, a, b, relay.ns, udp_relay, da, db, inner_a, inner_b, keys, start_b)
    until_ping(a.ns, inner_b, 15, f"first ping {kind}")
    return pair


def crash_and_restart_b(pair: Pair) -> float:
    """SIGKILL B and start it again as it was; seconds until it is up (tunneld: answers)."""
    if pair.start_b is not None:  # wireguard-go
        pair.db.proc.kill()
        pair.db.proc.wait(5)
        # its UAPI socket stays behind; WgGo.start would take it for the new one's
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{WG_RUN_DIR}/{pair.db.name}.sock")
        assert not ping_once(pair.a.ns, pair.inner_b)
        started = time.monotonic()
        pair.db = pair.start_b()
        return time.monotonic() - started
    assert pair.db.kill() == -9
    assert os.path.exists(pair.db.socket_path)  # the crash left a stale socket behind
    assert not ping_once(pair.a.ns, pair.inner_b)
    ready = pair.db.restart(timeout=RECOVERY_SECONDS)
    assert "stale control socket" in pair.db.stderr(), pair.db.stderr()
    assert ready < RESTART_SECONDS, f"{pair.kind}: B answered only after {ready:.2f} s"
    return float(ready)


def peer_handshake(daemon: TunneldProcess, kind: str) -> int:
    """The WireGuard kinds: latest_handshake of the daemon's one peer (Unix seconds)."""
    iface = next(iter(daemon.show()["interfaces"].values()))
    if kind in ("wireguard", "wireguard-go"):
        return int(iface["peers"][0]["latest_handshake"])
    return int(iface["routes"][0]["latest_handshake"])  # the overlay: per route


def drops(daemon: TunneldProcess, way: str = "rx") -> dict[str, int]:
    iface = next(iter(daemon.show()["interfaces"].values()))
    return {k: v for k, v in iface["counters"][f"{way}_dropped"].items() if v}


def faulty_transfer(pair: Pair) -> None:
    """Step 1: 5% loss, reordering, duplication: iperf3 completes, streams arrive intact."""
    a, b, kind = pair.a, pair.b, pair.kind
    with NftLoss(pair.relay_ns, PORTS[kind], LOSS_PERCENT) as loss:
        result = a.ns.iperf3_pair(b.ns, pair.inner_b, seconds=60, size=8 << 20)
        # -n ends the test once the client has written 8 MiB: what is still in flight
        # then is not in the receiver's count (the checksummed streams below are exact)
        assert result["sent_bytes"] >= 8 << 20 and result["bytes"] > 4 << 20, result
        streams = tcp_both_ways(a.ns, b.ns, pair.inner_b, 8 << 20, timeout=120)
        assert [p for r in streams for p in r.problems()] == []
        dropped, counts = loss.dropped(), pair.relay.counters()
    sent = counts["forwarded"] + counts["send_errors"]  # an nft drop on output: EPERM
    assert 0.03 < dropped / sent < 0.07, (dropped, counts)
    assert counts["held"] > 50 and counts["duplicated"] > 30, counts
    print(f"\n{kind}: iperf3 8 MiB at {result['bits_per_second'] / 1e6:.1f} Mbit/s, "
          f"{result['retransmits']} retransmits; streams {[r.seconds for r in streams]} s; "
          f"nft dropped {dropped}, relay {counts}; A drops {drops(pair.da)}")  # fmt: skip


def crash_restart(pair: Pair) -> None:
    """Step 2: B crashes and starts again as it was; A keeps running, traffic resumes."""
    a, b, kind = pair.a, pair.b, pair.kind
    a_pid, before = pair.da.pid, time.time()
    handshake_before = peer_handshake(pair.da, kind) if pair.keys else 0
    ready = crash_and_restart_b(pair)
    legs = [(a.ns, pair.inner_b, "A->B"), (b.ns, pair.inner_a, "B->A")]
    if kind == "overlay-wg":  # no keepalive: A's stale session waits for B to speak first
        legs.reverse()
    (ns1, dst1, first), (ns2, dst2, second) = legs
    resumed = until_ping(ns1, dst1, RECOVERY_SECONDS, f"{kind}: {first} after B restarted")
    back = until_ping(ns2, dst2, RECOVERY_SECONDS, f"{kind}: {second} after B restarted")
    assert pair.da.alive and pair.da.pid == a_pid
    if pair.keys:
        wait_for(lambda: peer_handshake(pair.da, kind) > max(handshake_before, before - 1), 5,
                 what="A's new handshake with the restarted B")  # fmt: skip
    print(f"{kind}: B restarted, answering after {ready:.2f} s; {first} ping back "
          f"{resumed:.2f} s after that; then {second} {back:.2f} s")  # fmt: skip


def link_down(pair: Pair, seconds: float = 5.0) -> None:
    """Step 3: A's underlay link down for `seconds` (a send meanwhile fails, counted), up."""
    a, kind = pair.a, pair.kind
    tx_drops = sum(drops(pair.da, "tx").values())
    a.ns.ip("link", "set", a.iface, "down")
    down_at = time.monotonic()
    assert not ping_once(a.ns, pair.inner_b)
    assert sum(drops(pair.da, "tx").values()) > tx_drops  # the failed send, counted
    time.sleep(max(0.0, down_at + seconds - time.monotonic()))
    a.ns.ip("link", "set", a.iface, "up")
    resumed = until_ping(a.ns, pair.inner_b, RECOVERY_SECONDS, f"{kind}: ping after link up")
    until_ping(pair.b.ns, pair.inner_a, RECOVERY_SECONDS, f"{kind}: B->A after link up")
    print(f"{kind}: link up again, A->B ping back after {resumed:.2f} s; "
          f"A tx drops {drops(pair.da, 'tx')}")  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_faulty_underlay_crash_and_link_down(testbed, kind):
    pair = build(testbed, kind)
    faulty_transfer(pair)
    crash_restart(pair)
    link_down(pair)
    b_alive = pair.db.alive if pair.start_b is None else pair.db.proc.poll() is None
    assert pair.da.alive and b_alive
    for d in (pair.da, pair.db) if pair.start_b is None else (pair.da,):
        assert "Traceback" not in d.stderr(), d.stderr()
    pair.relay.stop()


LEFTOVER = {  # kind: device, mode, routes through it (tunneld's own, a stranger's)
    "wireguard": ("wg0", "tun", ["10.77.0.1/32", "10.77.0.99/32"]),
    "vxlan": ("vx0", "tap", ["10.99.0.0/24"]),
}


@pytest.mark.parametrize("kind", LEFTOVER)
def test_start_over_leftover_device_route_and_stale_socket(testbed, kind):
    """A crash leaves a stale socket; a persistent tun/tap of the interface's name, up, with
    its address and routes through it, stands for what another crash (or an operator)
    left: tunneld starts over all of it at once and carries traffic."""
    pair = build(testbed, kind)
    pair.relay.stop()
    relay = UdpRelay.start(pair.relay_ns, pair.a.ip, pair.b.ip, PORTS[kind])  # fresh counters
    assert pair.db.kill() == -9
    ns, (dev, mode, routes) = pair.b.ns, LEFTOVER[kind]
    wait_for(lambda: ns.ip("link", "show", dev, check=False).returncode != 0, 5,
             what="the killed daemon's device gone")  # fmt: skip
    ns.ip("tuntap", "add", "dev", dev, "mode", mode)
    ns.ip("addr", "add", f"{pair.inner_b}/24", "dev", dev)
    ns.ip("link", "set", dev, "up")  # no process holds it: NO-CARRIER
    for route in routes:
        ns.ip("route", "add", route, "dev", dev)
    ready = pair.db.restart(timeout=RECOVERY_SECONDS)
    until_ping(ns, pair.inner_a, RECOVERY_SECONDS, "ping from B over the leftover device")
    assert until_ping(pair.a.ns, pair.inner_b, RECOVERY_SECONDS, "A->B") < RECOVERY_SECONDS
    table = ns.ip("route", "show", "dev", dev).stdout
    assert all(r.removesuffix("/32") in table for r in routes), table
    assert relay.counters()["forwarded"] > 0
    print(f"\n{kind}: start over leftovers answered after {ready:.2f} s")
    assert ready < RESTART_SECONDS
    relay.stop()


def test_etcd_sigkill_10s_forwarding_continues_and_later_lease_seen(testbed):
    hosts = testbed.hub_hosts(3)
    etcd = Etcd(testbed, f"192.168.{testbed.subnet_octet}.100")
    etcd.start()
    etcd.put(f"{PREFIX}/config", json.dumps({"Network": "10.6.0.0/16", "Backend": {"Type": "udp"}}))
    dev = testbed.ifname("ov")
    d1, d2 = (h.ns.spawn_tunneld(etcd_config(dev, h, etcd.url), name=f"t{i}")
              for i, h in enumerate(hosts[:2], 1))  # fmt: skip
    s2 = d2.show()["interfaces"][dev]["subnet"]
    until_ping(hosts[0].ns, s2.split("/")[0], 5, "first overlay ping")

    assert etcd.proc is not None
    etcd.proc.kill()
    etcd.proc.wait(5)
    etcd.proc = None
    killed = time.monotonic()
    sent, got = hosts[0].ns.ping(s2.split("/")[0], count=40, interval=0.25, timeout=1)
    assert (sent, got) == (40, 40)  # 10 s of forwarding without etcd
    assert d1.show()["interfaces"][dev]["registry"]["connected"] is False
    time.sleep(max(0.0, killed + 10 - time.monotonic()))
    etcd.start()

    # a lease made after etcd returned: a third host joins; the others route to it
    d3 = hosts[2].ns.spawn_tunneld(etcd_config(dev, hosts[2], etcd.url), name="t3", timeout=20)
    joined = time.monotonic()
    s3 = d3.show()["interfaces"][dev]["subnet"]
    for d in (d1, d2):
        routes = lambda d=d: [r["subnet"] for r in d.show()["interfaces"][dev]["routes"]]  # noqa: E731
        wait_for(lambda routes=routes: s3 in routes(), RECOVERY_SECONDS, 0.1,
                 what="route to the host that joined after the outage")  # fmt: skip
    seen = time.monotonic() - joined
    until_ping(hosts[0].ns, s3.split("/")[0], 5, "ping to the new host")
    wait_for(lambda: d1.show()["interfaces"][dev]["registry"]["connected"], RECOVERY_SECONDS,
             0.1, what="registry reconnected")  # fmt: skip

    # a silent partition (no FIN, no RST: etcd's port dropped both ways) for 10 s
    with NftPartition(etcd.ns, 2379):
        cut = time.monotonic()
        sent, got = hosts[0].ns.ping(s3.split("/")[0], count=40, interval=0.25, timeout=1)
        assert (sent, got) == (40, 40)
        wait_for(lambda: d1.show()["interfaces"][dev]["registry"]["connected"] is False, 10,
                 0.2, what="registry notices the partition")  # fmt: skip
        time.sleep(max(0.0, cut + 10 - time.monotonic()))
    healed = time.monotonic()
    lease = json.dumps({"PublicIP": "192.0.2.77", "BackendType": "udp"})
    etcd.put(f"{PREFIX}/subnets/10.6.250.0-24", lease)  # a lease change after the partition
    wait_for(lambda: "10.6.250.0/24" in [r["subnet"] for r in
                                         d1.show()["interfaces"][dev]["routes"]],
             RECOVERY_SECONDS, 0.1, what="the lease put after the partition")  # fmt: skip
    print(
        f"\netcd back: the new lease was routed {seen:.2f} s after the host joined; after a "
        f"10 s partition a lease put was routed {time.monotonic() - healed:.2f} s later"
    )
