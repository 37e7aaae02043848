#!/usr/bin/env python3
"""Per-packet cost of the sans-IO cores: ns/packet and tracemalloc peak at steady state.

The data path's ceiling is Python work per packet, so this is the number a hot-path
change must move. It runs the cores exactly as the links call them, on preallocated
buffers, without sockets or devices:

  vxlan encap / decap        VxlanPort, 1400-byte inner frame, known unicast / learned
  overlay outbound / inbound OverlayRouter, 1400-byte IPv4 packet (TTL, LPM, source check)
  wireguard encrypt / receive  a handshaked pair of Interfaces, 1400-byte IPv4 packet

Usage: bench/hotpath.py [--packets N] [--repeat R]. Medians of R timings are printed;
these machines are noisy, so compare runs made side by side, not across days.
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
from tunneld.proto.wg import Interface, SendDatagram, generate_private_key, public_key

HEADROOM = 16
INNER = 1400


def ipv4(src: str, dst: str, size: int) -> bytes:
    addrs = bytes(map(int, src.split("."))), bytes(map(int, dst.split(".")))
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, 0, 0, 64, 17, 0, *addrs)
    return header + bytes(size - 20)


def vxlan_cases() -> dict[str, Callable[[], object]]:
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
        "vxlan encap+source_port": lambda: (encap(tx, HEADROOM, n, 1.0), sport(tx, HEADROOM, n)),
        "vxlan decap (learned)": lambda: decap(rx, 8 + n, "192.0.2.3", 1.0),
    }


def overlay_cases() -> dict[str, Callable[[], object]]:
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

    return {"overlay outbound (incl. 1400 B copy)": out, "overlay inbound (incl. 1400 B copy)": inn}


def wireguard_cases() -> dict[str, Callable[[], object]]:
    ka, kb = generate_private_key(os.urandom), generate_private_key(os.urandom)
    a = Interface(ka, rng=os.urandom)
    b = Interface(kb, rng=os.urandom)
    pa = a.add_peer(public_key(kb), None, ("192.0.2.2", 51820), None, 0.0)
    b.add_peer(public_key(ka), None, None, None, 0.0)
    packet = ipv4("10.77.0.1", "10.77.0.2", INNER)
    slot = memoryview(bytearray(HEADROOM + INNER + 32))
    out = memoryview(bytearray(HEADROOM + INNER + 32))
    slot[HEADROOM : HEADROOM + INNER] = packet
    a.encrypt(pa, slot, 0, INNER, 0.0)  # stages the packet and asks for a handshake
    _deliver(a, b, 0.0)
    sealed = bytearray(HEADROOM + INNER + 32)
    state: dict[str, int] = {}

    def enc() -> object:
        slot[HEADROOM : HEADROOM + INNER] = packet
        n = a.encrypt(pa, slot, 0, INNER, 1.0)
        sealed[:n] = slot[:n]
        state["n"] = n
        return n

    enc()

    def rec() -> object:  # a fresh counter each time: encrypt, then receive it
        n = enc()
        return b.receive(memoryview(sealed)[:n], ("192.0.2.1", 51820), 1.0, out)

    return {"wireguard encrypt": enc, "wireguard encrypt+receive": rec}


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


def measure(fn: Callable[[], object], packets: int, repeat: int) -> tuple[float, int]:
    for _ in range(1000):
        fn()  # warm up caches and lazily built state
    timings = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        for _ in range(packets):
            fn()
        timings.append((time.perf_counter_ns() - start) / packets)
    tracemalloc.start()
    for _ in range(packets):
        fn()
    tracemalloc.reset_peak()
    for _ in range(packets):
        fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return statistics.median(timings), peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    cases = {**vxlan_cases(), **overlay_cases(), **wireguard_cases()}
    print(f"{'case':40} {'ns/packet':>10} {'steady peak':>12}")
    for name, fn in cases.items():
        result = fn()  # a drop path would be cheap and meaningless: insist on success
        if result is None or (isinstance(result, int) and result <= 0):
            raise SystemExit(f"{name}: the core dropped the benchmark packet ({result!r})")
        ns, peak = measure(fn, args.packets, args.repeat)
        print(f"{name:40} {ns:10.0f} {peak:10d} B")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
