#!/usr/bin/env python3
"""Per-packet cost of the sans-IO cores: ns/packet and tracemalloc peak at steady state.

The data path's ceiling is Python work per packet, so this is the number a hot-path
change must move. It runs the cores exactly as the links call them, on preallocated
buffers, without sockets or devices:

  vxlan encap / decap        VxlanPort, 1400-byte inner frame, known unicast / learned
  overlay outbound / inbound OverlayRouter, 1400-byte IPv4 packet (TTL, LPM, source check)
  wireguard encrypt / receive  a handshaked pair of Interfaces, 1400-byte IPv4 packet
  wireguard ... + next_deadline  the same with the one next_deadline() call a link makes
                             after every batch, here a batch of one packet (the worst case),
                             with 1 and with 1,000 configured peers (999 idle, handshaked once)
  wireguard seal_run / receive_run  a 64-packet GSO/GRO run of 1400-byte packets (ns/packet)
  wg next_deadline / on_deadline  one call with 100 / 1,000 idle handshaked peers, nothing due

Usage: bench/hotpath.py [--packets N] [--repeat R] [--only SUBSTRING]. Medians of R timings
are printed; these machines are noisy, so compare runs made side by side, not across days.
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import time
import tracemalloc
from collections.abc import Callable
from ipaddress import IPv4Network

from tunneld.proto.counters import Counters
from tunneld.proto.fdb import Fdb
from tunneld.proto.overlay import OverlayRouter, OverlayRxDrop, OverlayTxDrop
from tunneld.proto.vxlan import VxlanDrop, VxlanPort, VxlanTxDrop
from tunneld.proto.wg import Interface, Peer, SendDatagram, generate_private_key, public_key

HEADROOM = 16
INNER = 1400


def ipv4(src: str, dst: str, size: int) -> bytes:
    addrs = bytes(map(int, src.split("."))), bytes(map(int, dst.split(".")))
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, 0, 0, 64, 17, 0, *addrs)
    return header + bytes(size - 20)


def vxlan_cases() -> dict[str, Case]:
    fdb = Fdb(300.0)
    fdb.add_static("02:00:00:00:00:02", "192.0.2.2")
    port = VxlanPort(42, fdb, Counters(VxlanDrop, VxlanTxDrop), 1450, True)
    frame = bytes.fromhex("0200000000020200000000010800") + ipv4("10.0.0.1", "10.0.0.2", INNER)
    tx = memoryview(bytearray(HEADROOM + len(frame)))
    tx[HEADROOM:] = frame
    rx = memoryview(bytearray(8 + len(frame)))
    rx[:8] = struct.pack("!II", 0x08000000, 42 << 8)
    rx[8:] = bytes.fromhex("0200000000010200000000030800") + frame[14:]
    n, encap, decap, sport = len(frame), port.encap, port.decap, port.source_port
    return {
        "vxlan encap+source_port": Case(
            lambda: (encap(tx, HEADROOM, n, 1.0), sport(tx, HEADROOM, n))
        ),
        "vxlan decap (learned)": Case(lambda: decap(rx, 8 + n, "192.0.2.3", 1.0)),
    }


def overlay_cases() -> dict[str, Case]:
    router = OverlayRouter(IPv4Network("10.5.1.0/24"), IPv4Network("10.5.0.0/16"),
                           Counters(OverlayRxDrop, OverlayTxDrop))  # fmt: skip
    for i in range(2, 40):
        router.add_route(IPv4Network(f"10.5.{i}.0/24"), f"192.0.2.{i}", (f"192.0.2.{i}", 8285))
    out_pkt, in_pkt = ipv4("10.5.1.1", "10.5.7.1", INNER), ipv4("10.5.7.1", "10.5.1.1", INNER)
    tx = bytearray(HEADROOM + INNER)
    rx = bytearray(INNER)
    outbound, inbound = router.outbound, router.inbound

    def out() -> object:
        tx[HEADROOM:] = out_pkt  # TTL is decremented in place: restore it
        return outbound(tx, HEADROOM, INNER, 1.0)

    def inn() -> object:
        rx[:] = in_pkt
        return inbound(rx, 0, INNER, "192.0.2.7")

    return {
        "overlay outbound (incl. 1400 B copy)": Case(out),
        "overlay inbound (incl. 1400 B copy)": Case(inn),
    }


def _idle_peers(a: Interface, count: int) -> None:
    """Add `count` peers to `a`, each handshaked once with its own throw-away remote and
    then idle (its zero-keys timer armed, nothing else): a large, quiet configuration."""
    ka, threshold = a.private_key, a.under_load_threshold
    a.under_load_threshold = float("inf")  # a burst of responses must not look like an attack
    for k in range(count):
        rk = generate_private_key(os.urandom)
        peer = a.add_peer(public_key(rk), None, (f"198.51.{k >> 8}.{k & 255}", 51820), None, 0.0)
        remote = Interface(rk, rng=os.urandom)
        remote.add_peer(public_key(ka), None, None, None, 0.0)
        a.start_handshake(peer, 0.0)
        _deliver(a, remote, 0.0)
        if peer.keypairs.current is None:
            raise SystemExit("idle peer setup: the handshake did not complete")
    a.under_load_threshold = threshold


def _pair(idle: int) -> tuple[Interface, Interface, Peer, Peer]:
    """A handshaked pair a <-> b; `a` also has `idle` quiet peers."""
    ka, kb = generate_private_key(os.urandom), generate_private_key(os.urandom)
    a = Interface(ka, rng=os.urandom)
    b = Interface(kb, rng=os.urandom)
    pa = a.add_peer(public_key(kb), None, ("192.0.2.2", 51820), None, 0.0)
    pb = b.add_peer(public_key(ka), None, None, None, 0.0)
    a.start_handshake(pa, 0.0)
    _deliver(a, b, 0.0)
    if pa.keypairs.current is None:
        raise SystemExit("pair setup: the handshake did not complete")
    _idle_peers(a, idle)
    return a, b, pa, pb


def wireguard_cases() -> dict[str, Case]:
    a, b, pa, pb = _pair(0)
    packet = ipv4("10.77.0.1", "10.77.0.2", INNER)
    slot = memoryview(bytearray(HEADROOM + INNER + 32))
    out = memoryview(bytearray(HEADROOM + INNER + 32))
    sealed = bytearray(HEADROOM + INNER + 32)

    def enc() -> object:
        slot[HEADROOM : HEADROOM + INNER] = packet
        n = a.encrypt(pa, slot, 0, INNER, 1.0)
        sealed[:n] = slot[:n]
        return n

    def rec() -> object:  # a fresh counter each time: encrypt, then receive it
        n = enc()
        return b.receive(memoryview(sealed)[:n], ("192.0.2.1", 51820), 1.0, out)

    cases = {"wireguard encrypt": Case(enc), "wireguard encrypt+receive": Case(rec)}
    for idle in (0, 999):
        cases.update(_link_cases(idle))
    if hasattr(Interface, "seal_run"):
        cases.update(_run_cases())
    return cases


def _link_cases(idle: int) -> dict[str, Case]:
    """encrypt / receive plus the link's one next_deadline() per batch (a batch of one)."""
    a, b, pa, pb = _pair(idle)
    packet = ipv4("10.77.0.1", "10.77.0.2", INNER)
    reply = ipv4("10.77.0.2", "10.77.0.1", INNER)
    slot = memoryview(bytearray(HEADROOM + INNER + 32))
    out = memoryview(bytearray(HEADROOM + INNER + 32))
    a_addr = ("192.0.2.1", 51820)
    a_next, b_next = a.next_deadline, b.next_deadline

    def send() -> object:
        slot[HEADROOM : HEADROOM + INNER] = packet
        n = a.encrypt(pa, slot, 0, INNER, 1.0)
        a_next()
        return n

    def receive() -> object:  # b seals (1 peer), a (1 + idle peers) receives
        slot[HEADROOM : HEADROOM + INNER] = reply
        n = b.encrypt(pb, slot, 0, INNER, 1.0)
        b_next()
        m = a.receive(slot[:n], a_addr, 1.0, out)
        a_next()
        return m

    peers = f"{idle + 1} peer{'s' if idle else ''}"
    return {
        f"wg encrypt+next_deadline ({peers})": Case(send),
        f"wg b.encrypt+a.receive+deadlines ({peers})": Case(receive),
    }


def _run_cases() -> dict[str, Case]:
    """seal_run / receive_run: one 64-packet GSO/GRO run per call, cost per packet."""
    a, b, pa, pb = _pair(0)
    count, packet = 64, ipv4("10.77.0.1", "10.77.0.2", INNER)
    stride = 32 + a.padded_len(INNER)
    run = memoryview(bytearray(count * stride))
    wire = memoryview(bytearray(count * stride))  # a view: bytearray slice stores copy
    a_addr = ("192.0.2.1", 51820)

    def seal() -> object:
        for i in range(count):
            run[i * stride + 16 : i * stride + 16 + INNER] = packet
        n = a.seal_run(pa, run, 0, stride, count, INNER, INNER, 1.0)
        wire[:n] = run[:n]
        return n

    def seal_receive() -> object:
        if seal() != count * stride:
            return -1
        k = b.receive_run(wire, 0, stride, count, stride, a_addr, 1.0)
        return k if k == count else -1

    return {
        "wg seal_run 64 x 1400 B (incl. copies)": Case(seal, count),
        "wg seal_run+receive_run 64 x 1400 B": Case(seal_receive, count),
    }


def deadline_cases() -> dict[str, Case]:
    """One next_deadline() / on_deadline() call with N idle peers and nothing due."""
    cases: dict[str, Case] = {}
    for idle in (100, 1000):
        a = Interface(generate_private_key(os.urandom), rng=os.urandom)
        _idle_peers(a, idle)
        wall = time.time()
        # on_deadline returns [] (nothing due); map it to a count the harness accepts
        cases[f"wg next_deadline ({idle} idle peers)"] = Case(a.next_deadline)
        cases[f"wg on_deadline ({idle} peers, none due)"] = Case(
            lambda a=a, wall=wall: len(a.on_deadline(1.0, wall)) + 1
        )
    return cases


def _deliver(a: Interface, b: Interface, now: float) -> None:
    """Run the handshake to completion between two in-memory interfaces."""
    scratch = memoryview(bytearray(65536))
    for _ in range(6):
        for src, dst, addr in ((a, b, ("192.0.2.1", 51820)), (b, a, ("192.0.2.2", 51820))):
            if not src.actions_pending:
                continue
            for action in src.take_actions(now, time.time()):
                if isinstance(action, SendDatagram):
                    data = bytes(action.data)
                    dst.receive(memoryview(data), addr, now, scratch)


class Case:
    """A benchmark body: each call handles `per_call` packets (ns/packet divides by it)."""

    def __init__(self, fn: Callable[[], object], per_call: int = 1) -> None:
        self.fn, self.per_call = fn, per_call


def calls_for(case: Case, packets: int) -> int:
    return max(1, packets // case.per_call)


def time_case(case: Case, packets: int) -> float:
    """One timing: ns per packet over `packets` packets."""
    fn, calls = case.fn, calls_for(case, packets)
    start = time.perf_counter_ns()
    for _ in range(calls):
        fn()
    return (time.perf_counter_ns() - start) / (calls * case.per_call)


def steady_peak(case: Case, packets: int) -> int:
    """tracemalloc peak (bytes) over `packets` packets after as many to reach steady state."""
    fn, calls = case.fn, calls_for(case, packets)
    tracemalloc.start()
    for _ in range(calls):
        fn()
    tracemalloc.reset_peak()
    for _ in range(calls):
        fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--only", default="", help="run only the cases whose name contains this")
    ap.add_argument("--no-offload", action="store_true",
                    help="skip the segmentation, coalescing and checksum paths")  # fmt: skip
    args = ap.parse_args()
    cases: dict[str, Case] = {}
    for group in (vxlan_cases, overlay_cases, wireguard_cases, deadline_cases):
        cases.update(group())
    selected = {name: case for name, case in cases.items() if args.only in name}
    for name, case in selected.items():
        result = case.fn()  # a drop path would be cheap and meaningless: insist on success
        if result is None or (isinstance(result, int) and result <= 0):
            raise SystemExit(f"{name}: the core dropped the benchmark packet ({result!r})")
        for _ in range(max(1, calls_for(case, args.packets) // 20)):
            case.fn()  # warm up caches and lazily built state
    timings: dict[str, list[float]] = {name: [] for name in selected}
    for _ in range(args.repeat):  # interleaved, so load from elsewhere hits every case alike
        for name, case in selected.items():
            timings[name].append(time_case(case, args.packets))
    medians = {name: statistics.median(t) for name, t in timings.items()}
    print(f"{'case':44} {'ns/packet':>10} {'min':>8} {'steady peak':>12}")
    for name, case in selected.items():
        peak = steady_peak(case, args.packets)
        print(f"{name:44} {medians[name]:10.0f} {min(timings[name]):8.0f} {peak:10d} B")
    for name in selected:  # the acceptance ratio: 1,000 configured peers vs one
        other = name.replace("(1 peer)", "(1000 peers)")
        if other != name and other in medians:
            print(f"ratio 1000 peers / 1 peer, {name[: name.index(' (')]}: "
                  f"{medians[other] / medians[name]:.2f}")  # fmt: skip
    if not args.no_offload and not args.only:  # the offload paths: bench/hotpath_offload.py
        import hotpath_offload

        print()
        hotpath_offload.main(["--repeat", str(args.repeat)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
