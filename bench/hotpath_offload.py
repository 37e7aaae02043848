#!/usr/bin/env python3
"""Per-segment cost of the offload core (tunneld.proto.gso): ns/segment, tracemalloc peak.

  split tun / tap        Segmenter.prepare + write of a 64 KB IPv4 TCP super-packet
                         (45 x 1448 B with timestamps, as Linux sends on a 1500 MTU)
  ... checksum stubbed   the same with gso's checksum replaced by a constant: the Python
                         work alone, which is what a faster checksum cannot remove
  coalesce 45            Coalescer.add x 45 + flush into one gather list (verify off / on)
  checksum 1448 B        tunneld.native.checksum (whichever is in use) and the fallback

Usage: bench/hotpath_offload.py [--rounds N] [--repeat R]. Times are the CPU time of this
thread (time.thread_time_ns), median and minimum of R timings: the machine is shared, and
wall-clock time would count the moments another process held the core.
"""

from __future__ import annotations

import argparse
import statistics
import struct
import time
import tracemalloc
from collections.abc import Callable

import tunneld.native
from tunneld.native import _fallback
from tunneld.proto import gso
from tunneld.proto.gso import Coalescer, GsoDrop, Segmenter

MSS, SEGMENTS, STRIDE = 1448, 45, 1600
TIMESTAMPS = b"\x01\x01\x08\x0a" + struct.pack("!II", 1000, 2000)


def fold(s: int) -> int:
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def super_read(l2: int) -> memoryview:
    """virtio_net_hdr + a TSO super-packet as the kernel hands it to a tun (l2 0) or tap."""
    payload = bytes(i & 0xFF for i in range(SEGMENTS * MSS))
    tcp_len = 32 + len(payload)
    src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + tcp_len, 7, 0x4000, 64, 6, 0,
                               src, dst))  # fmt: skip
    struct.pack_into("!H", ip, 10, fold(sum(struct.unpack("!10H", ip))) ^ 0xFFFF)
    partial = fold(sum(struct.unpack("!4H", src + dst)) + 6 + tcp_len)
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1, 1, 0x80, 0x18, 500, partial, 0) + TIMESTAMPS
    eth = bytes.fromhex("0200000000020200000000010800") if l2 else b""
    hdr = gso.VNET_HDR.pack(gso.F_NEEDS_CSUM, gso.GSO_TCPV4, l2 + 52, MSS, l2 + 20, 16)
    return memoryview(bytearray(hdr + eth + bytes(ip) + tcp + payload))


def split_case(l2: int) -> Callable[[], int]:
    read = super_read(l2)
    seg = Segmenter(l2, [0] * len(GsoDrop))
    out = memoryview(bytearray(SEGMENTS * STRIDE))
    prepare, write, n = seg.prepare, seg.write, len(read)

    def run() -> int:
        count = prepare(read, 0, n)
        write(out, 0, STRIDE)
        return count

    return run


def segments(l2: int) -> list[memoryview]:
    read = super_read(l2)
    seg = Segmenter(l2, [0] * len(GsoDrop))
    out = memoryview(bytearray(SEGMENTS * STRIDE))
    seg.prepare(read, 0, len(read))
    seg.write(out, 0, STRIDE)
    lengths = [seg.seg_len] * (SEGMENTS - 1) + [seg.last_len]
    return [out[i * STRIDE : i * STRIDE + length] for i, length in enumerate(lengths)]


def coalesce_case(verify: bool) -> Callable[[], int]:
    segs = segments(0)
    co = Coalescer(0, verify, True)
    head, pristine = segs[0], bytes(segs[0][:52])
    add, flush = co.add, co.flush
    lengths = [len(s) for s in segs]
    written: list[int] = []

    def sink(views: list[memoryview]) -> None:
        written.append(len(views))

    def run() -> int:
        head[:52] = pristine  # flush rewrote the head's headers for the merged length
        for s, n in zip(segs, lengths, strict=True):
            add(s, 0, n)
        written.clear()
        flush(sink)
        return SEGMENTS if written == [SEGMENTS + 1] else -1  # one write: hdr, head, 44 tails

    return run


def checksum_case(fn: Callable[[memoryview, int], int]) -> Callable[[], int]:
    data = memoryview(bytes(range(256)) * 6)[:MSS]
    return lambda: fn(data, 0x1234) and 1


def measure(fn: Callable[[], int], per_call: int, rounds: int,
            repeat: int) -> tuple[float, float, int]:  # fmt: skip
    """Median and minimum CPU ns per segment over `repeat` timings of `rounds` calls, and the
    tracemalloc peak of a steady-state pass (after a warm pass: lazily built state is not
    counted; the peak is what one call holds at once, not growth)."""
    if fn() != per_call:
        raise SystemExit("the benchmark case did not produce what it should")
    timings = []
    for _ in range(repeat):
        start = time.thread_time_ns()
        for _ in range(rounds):
            fn()
        timings.append((time.thread_time_ns() - start) / (rounds * per_call))
    tracemalloc.start()
    for _ in range(rounds):
        fn()
    tracemalloc.reset_peak()
    for _ in range(rounds):
        fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return statistics.median(timings), min(timings), peak


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=300, help="calls per timing")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    impl = tunneld.native.IMPLEMENTATION
    cases: list[tuple[str, Callable[[], int], int]] = [
        (f"split 64 KB tun ({impl} checksum)", split_case(0), SEGMENTS),
        (f"split 64 KB tap ({impl} checksum)", split_case(14), SEGMENTS),
        (f"coalesce 45, verify off ({impl})", coalesce_case(False), SEGMENTS),
        (f"coalesce 45, verify on ({impl})", coalesce_case(True), SEGMENTS),
        (f"checksum 1448 B ({impl})", checksum_case(tunneld.native.checksum), 1),
        ("checksum 1448 B (python fallback)", checksum_case(_fallback.checksum), 1),
    ]
    rows = [(name, *measure(fn, per, args.rounds, args.repeat), per) for name, fn, per in cases]
    real = gso.checksum
    gso.checksum = lambda data, initial=0: 0x1234  # type: ignore[assignment]
    try:
        for name, fn, per in (("split 64 KB tun (checksum stubbed)", split_case(0), SEGMENTS),
                              ("split 64 KB tap (checksum stubbed)", split_case(14), SEGMENTS),
                              ("coalesce 45, verify off (stubbed)", coalesce_case(False),
                               SEGMENTS)):  # fmt: skip
            rows.append((name, *measure(fn, per, args.rounds, args.repeat), per))
    finally:
        gso.checksum = real
    print(f"{'case':40} {'ns/segment':>10} {'(min)':>7} {'us/call':>8} {'steady peak':>12}")
    for name, ns, low, peak, per in rows:
        print(f"{name:40} {ns:10.0f} {low:7.0f} {ns * per / 1000:8.1f} {peak:10d} B")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
