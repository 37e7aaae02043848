"""Transfers that prove a tunnel delivers data intact: seeded TCP streams and UDP flows.

Theory of operation: every byte sent is a pure function of a small seed, so the sender,
the receiver and the test all know it without storing it.

* TCP: the stream of seed S is the ChaCha20 keystream under key SHA-256("tunneld-transfer/S")
  (the cipher only as a fast deterministic generator, about 4 GB/s here). The sender hashes
  what it sends; the receiver regenerates the stream alongside, compares every byte (and
  reports the first offset that differs) and hashes what it got. Neither holds more than
  one CHUNK, so 200 MB cost no memory.
* UDP: each flow has a fixed schedule of sends: every size 1..max_payload once, in a
  seeded order, and UDP_SEGMENT bursts of equal-size datagrams with a shorter last one
  (the kernel hands such a burst to an offloading tun as one USO super-packet). Datagram
  `seq` of flow `f` starts with HEADER (f, seq) and goes on with bytes derived from both,
  cut to its size; a datagram under HEADER.size bytes carries a prefix of its header. The
  receiver knows the schedules: every datagram must be one of its flow's, intact, and later
  than those before it. Loss is counted; corruption, duplication and reordering are errors.

The ends run as `python -m tunneld.testbed.transfer {tcp,udp-send,udp-recv} ...` inside
namespaces (Netns.popen). `tcp_both_ways` and `udp_both_ways` drive them from the test
process; their results' `problems()` are empty when everything arrived intact.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import hmac
import json
import random
import selectors
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from tunneld.testbed.common import TestbedError, stop_process

if TYPE_CHECKING:
    from tunneld.testbed.netns import Netns

CHUNK = 256 * 1024  # bytes per TCP send / receive buffer
STALL_SECONDS = 60.0  # a TCP end that makes no progress this long gives up and reports
HEADER = struct.Struct("<BI")  # flow id, sequence number (flow first: 1-byte datagrams carry it)
UDP_SEGMENT = 103  # linux/udp.h
IP_MTU_DISCOVER, IPV6_MTU_DISCOVER, PMTUDISC_DO = 10, 23, 2  # linux/in.h, linux/in6.h
UDP_MAX_SEGMENTS = 64  # what every kernel since 4.18 accepts in one UDP_SEGMENT send
MAX_BURST_BYTES = 60000  # payload of one UDP_SEGMENT send, below 64 KB with headers
BURSTS_PER_FLOW = 12
RCVBUF_BYTES = 8 << 20


# --- seeded TCP streams -------------------------------------------------------------------


class SeededStream:
    """The bytes of one seed's stream, in order: `next_into(out, n)` gives the next n."""

    def __init__(self, seed: int) -> None:
        key = hashlib.sha256(b"tunneld-transfer/%d" % seed).digest()
        self._keystream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
        self._zeros = memoryview(bytes(CHUNK))

    def next_into(self, out: bytearray, n: int) -> memoryview:
        """Write the next n (<= CHUNK) bytes into `out` (>= CHUNK bytes); returns out[:n]."""
        self._keystream.update_into(self._zeros[:n], out)
        return memoryview(out)[:n]


@functools.lru_cache(maxsize=16)
def stream_sha256(seed: int, size: int) -> str:
    """SHA-256 (hex) of the first `size` bytes of seed's stream, computed here."""
    stream, buf, digest, left = SeededStream(seed), bytearray(CHUNK), hashlib.sha256(), size
    while left:
        n = min(CHUNK, left)
        digest.update(stream.next_into(buf, n))
        left -= n
    return digest.hexdigest()


def _tcp_send(sock: socket.socket, size: int, seed: int) -> dict[str, Any]:
    stream, buf, digest, sent, error = SeededStream(seed), bytearray(CHUNK), hashlib.sha256(), 0, ""
    try:
        while sent < size:
            view = stream.next_into(buf, min(CHUNK, size - sent))
            digest.update(view)
            sock.sendall(view)
            sent += len(view)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(4096):  # the receiver closes once it has read everything
            pass
    except OSError as exc:
        error = f"send: {exc!r} after {sent} bytes"
    return {"action": "send", "bytes": sent, "sha256": digest.hexdigest(), "error": error}


def _tcp_recv(sock: socket.socket, seed: int) -> dict[str, Any]:
    stream, digest = SeededStream(seed), hashlib.sha256()
    got, want = bytearray(CHUNK), bytearray(CHUNK)
    view, total, first_mismatch, error = memoryview(got), 0, None, ""
    try:
        while n := sock.recv_into(got):
            data, expected = view[:n], stream.next_into(want, n)
            digest.update(data)
            if first_mismatch is None and not hmac.compare_digest(data, expected):
                first_mismatch = total + next(i for i in range(n) if data[i] != expected[i])
            total += n
    except OSError as exc:
        error = f"recv: {exc!r} after {total} bytes"
    return {"action": "recv", "bytes": total, "sha256": digest.hexdigest(),
            "first_mismatch": first_mismatch, "error": error}  # fmt: skip


def _tcp_main(args: argparse.Namespace) -> dict[str, Any]:
    family = socket.AF_INET6 if ":" in args.addr else socket.AF_INET
    if args.mode == "listen":
        with socket.socket(family, socket.SOCK_STREAM) as listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((args.addr, args.port))
            listener.listen(1)
            print("listening", flush=True)
            listener.settimeout(STALL_SECONDS)
            sock, _ = listener.accept()
    else:
        sock = _connect(args.addr, args.port)
    started = time.monotonic()
    with sock:
        sock.settimeout(STALL_SECONDS)
        if args.action == "send":
            report = _tcp_send(sock, args.size, args.seed)
        else:
            report = _tcp_recv(sock, args.seed)
    report["seconds"] = round(time.monotonic() - started, 3)
    return report


def _connect(addr: str, port: int, timeout: float = 10.0) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection((addr, port), timeout=timeout)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# --- UDP flows ----------------------------------------------------------------------------


def udp_payload(flow: int, seq: int, size: int) -> bytes:
    """Datagram `seq` of `flow`: HEADER then bytes derived from both, `size` bytes in all."""
    head = HEADER.pack(flow, seq)
    return (head + hashlib.shake_128(head).digest(max(0, size - HEADER.size)))[:size]


def udp_schedule(flow: int, max_payload: int, seed: int) -> list[tuple[int, ...]]:
    """The sends of one flow, in order: each a tuple of datagram sizes (one: a plain send;
    several: a UDP_SEGMENT burst of equal sizes, the last possibly shorter)."""
    rng = random.Random(f"{seed}/{flow}/{max_payload}")
    sends: list[tuple[int, ...]] = [(size,) for size in range(1, max_payload + 1)]
    rng.shuffle(sends)
    gso_sizes = [max_payload, max_payload - 1, 1]
    gso_sizes += [rng.randint(2, max_payload) for _ in range(BURSTS_PER_FLOW - 3)]
    for gso in gso_sizes:
        count = rng.randint(2, min(UDP_MAX_SEGMENTS, MAX_BURST_BYTES // gso))
        last = rng.choice([gso, rng.randint(1, gso)])
        sends.insert(rng.randrange(len(sends) + 1), (gso,) * (count - 1) + (last,))
    return sends


def flat_sizes(sends: Sequence[tuple[int, ...]]) -> list[int]:
    """Datagram sizes by sequence number."""
    return [size for send in sends for size in send]


class FlowChecker:
    """What one flow's receiver got, checked against the flow's schedule."""

    def __init__(self, flow: int, sizes: list[int]) -> None:
        self.flow, self.sizes = flow, sizes
        self.seen = bytearray(len(sizes))
        self.last = -1  # highest sequence number received so far
        self.received = self.corrupt = self.reordered = self.duplicates = 0
        self.examples: list[str] = []  # the first few problems, for the failure message
        self._short: dict[int, list[int]] = {}  # size -> sequence numbers, sizes < HEADER.size
        for seq, size in enumerate(sizes):
            if size < HEADER.size:
                self._short.setdefault(size, []).append(seq)

    def feed(self, data: bytes) -> None:
        seq = self._locate(data)
        if seq is None:
            self.corrupt += 1
            self._note(f"{len(data)}-byte datagram matches none of flow {self.flow}'s: "
                       f"{data[:24].hex()}")  # fmt: skip
        elif self.seen[seq]:
            self.duplicates += 1
            self._note(f"seq {seq} ({len(data)} bytes) received twice")
        else:
            self.seen[seq] = 1
            self.received += 1
            if seq < self.last:
                self.reordered += 1
                self._note(f"seq {seq} ({len(data)} bytes) arrived after seq {self.last}")
            self.last = max(self.last, seq)

    def _locate(self, data: bytes) -> int | None:
        """The sequence number `data` is intact for, or None if it is none of this flow's."""
        if len(data) >= HEADER.size:
            flow, seq = HEADER.unpack_from(data)
            ok = flow == self.flow and seq < len(self.sizes) and self.sizes[seq] == len(data)
            return seq if ok and data == udp_payload(flow, seq, len(data)) else None
        # A short datagram names no sequence number: the first unseen one it is intact for
        # after the last received (in order), else any (reordered or duplicated).
        candidates = [s for s in self._short.get(len(data), ())
                      if udp_payload(self.flow, s, len(data)) == data]  # fmt: skip
        later = [s for s in candidates if s > self.last and not self.seen[s]]
        return (later or candidates or [None])[0]

    def _note(self, text: str) -> None:
        if len(self.examples) < 10:
            self.examples.append(text)

    def report(self) -> dict[str, Any]:
        return {"flow": self.flow, "expected": len(self.sizes), "received": self.received,
                "corrupt": self.corrupt, "reordered": self.reordered,
                "duplicates": self.duplicates, "examples": self.examples}  # fmt: skip


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def _udp_send_main(args: argparse.Namespace) -> dict[str, Any]:
    plans, socks = [], []
    for flow in range(args.flows):
        sock = socket.socket(_family(args.dst), socket.SOCK_DGRAM)
        # never fragment: a datagram too big for the tunnel must fail here, not in transit
        if sock.family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, PMTUDISC_DO)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, PMTUDISC_DO)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.connect((args.dst, args.port + flow))
        plans.append(udp_schedule(flow, args.max_payload, args.seed))
        socks.append(sock)
    seqs, total, started = [0] * args.flows, 0, time.monotonic()
    for i in range(max(len(p) for p in plans)):
        for flow, (plan, sock) in enumerate(zip(plans, socks, strict=True)):
            if i >= len(plan):
                continue
            sizes = plan[i]
            data = b"".join(udp_payload(flow, seqs[flow] + k, s) for k, s in enumerate(sizes))
            if len(sizes) == 1:
                sock.send(data)
            else:
                sock.sendmsg([data], [(socket.SOL_UDP, UDP_SEGMENT, struct.pack("=H", sizes[0]))])
            seqs[flow] += len(sizes)
            total += len(sizes)
            delay = started + total / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    return {"sent": seqs, "seconds": round(time.monotonic() - started, 3)}


def _udp_recv_main(args: argparse.Namespace) -> dict[str, Any]:
    sel = selectors.DefaultSelector()
    checkers = []
    for flow in range(args.flows):
        sock = socket.socket(_family(args.addr), socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF_BYTES)  # SO_RCVBUFFORCE (root)
        sock.bind((args.addr, args.port + flow))
        sock.setblocking(False)
        checker = FlowChecker(flow, flat_sizes(udp_schedule(flow, args.max_payload, args.seed)))
        sel.register(sock, selectors.EVENT_READ, checker)
        checkers.append(checker)
    sel.register(sys.stdin, selectors.EVENT_READ, None)
    print("ready", flush=True)
    stopping = False
    while not stopping:  # until the controller closes our stdin
        for key, _ in sel.select(timeout=1.0):
            if key.data is None:
                stopping = not sys.stdin.readline()
            else:
                _drain(key.fileobj, key.data)
    for key in list(sel.get_map().values()):
        if key.data is not None:
            _drain(key.fileobj, key.data)
    return {"flows": [c.report() for c in checkers]}


def _drain(sock: Any, checker: FlowChecker) -> None:
    while True:
        try:
            checker.feed(sock.recv(65536))
        except BlockingIOError:
            return


# --- driving both ends from the test ------------------------------------------------------


@dataclass
class TcpResult:
    """One direction of `tcp_both_ways`: what the sender sent and the receiver got."""

    direction: str
    size: int
    seed: int
    sender: dict[str, Any]
    receiver: dict[str, Any]

    def problems(self) -> list[str]:
        """Empty when `size` bytes arrived with the stream's SHA-256; else what went wrong."""
        want, out = stream_sha256(self.seed, self.size), []
        for end in (self.sender, self.receiver):
            if end["error"]:
                out.append(end["error"])
            if end["bytes"] != self.size:
                out.append(f"{end['action']}: {end['bytes']} bytes, not {self.size}")
            elif end["sha256"] != want:
                out.append(f"{end['action']}: sha256 {end['sha256']}, the stream's is {want}")
        if self.receiver["first_mismatch"] is not None:
            out.append(f"first corrupted byte at offset {self.receiver['first_mismatch']}")
        return [f"{self.direction}: {p}" for p in out]

    @property
    def seconds(self) -> float:
        return float(self.receiver.get("seconds", 0.0))


def tcp_both_ways(client: Netns, server: Netns, server_addr: str, size: int, *,
                  port: int = 7100, timeout: float = 600.0) -> list[TcpResult]:  # fmt: skip
    """Two TCP connections from `client` to `server_addr`, at the same time: on one the
    client sends `size` bytes (client->server, seed 1), on the other the server does
    (server->client, seed 2). Returns both results."""
    legs = [
        ("client->server", 1, (server, "listen", "recv"), (client, "connect", "send")),
        ("server->client", 2, (server, "listen", "send"), (client, "connect", "recv")),
    ]
    procs: list[tuple[str, int, subprocess.Popen, subprocess.Popen]] = []
    try:
        for i, (direction, seed, listen_end, connect_end) in enumerate(legs):
            ends = []
            for ns, mode, action in (listen_end, connect_end):
                argv = ["tcp", "--mode", mode, "--action", action, "--addr", server_addr,
                        "--port", str(port + i), "--size", str(size),
                        "--seed", str(seed)]  # fmt: skip
                ends.append(start_end(ns, argv, expect="listening" if mode == "listen" else ""))
            procs.append((direction, seed, ends[0], ends[1]))
        results = []
        for direction, seed, listener, connector in procs:
            reports = {r["action"]: r for r in (end_report(listener, timeout),
                                               end_report(connector, timeout))}  # fmt: skip
            results.append(TcpResult(direction, size, seed, reports["send"], reports["recv"]))
        return results
    finally:
        for *_, a, b in procs:
            stop_process(a)
            stop_process(b)


@dataclass
class UdpResult:
    """One direction of `udp_both_ways`: per flow, what was expected and what arrived."""

    direction: str
    flows: list[dict[str, Any]] = field(default_factory=list)

    def problems(self, min_delivered: float = 0.99) -> list[str]:
        """Empty when no datagram was corrupt, duplicated or reordered and each flow got at
        least `min_delivered` of its datagrams."""
        out = []
        for f in self.flows:
            bad = {k: f[k] for k in ("corrupt", "reordered", "duplicates") if f[k]}
            if bad:
                out.append(f"flow {f['flow']}: {bad}; first: {f['examples']}")
            if f["received"] < min_delivered * f["expected"]:
                out.append(f"flow {f['flow']}: only {f['received']} of {f['expected']} arrived")
        return [f"{self.direction}: {p}" for p in out]

    @property
    def datagrams(self) -> int:
        return sum(f["received"] for f in self.flows)


def udp_both_ways(a: Netns, a_addr: str, b: Netns, b_addr: str, max_payload: int, *,
                  flows: int = 3, port: int = 7200, rate: float = 4000.0,
                  seed: int = 1) -> list[UdpResult]:  # fmt: skip
    """UDP flows a->b and b->a at the same time, `flows` each, every datagram size from 1 to
    `max_payload` (the tunnel MTU minus the IP and UDP headers); `rate` datagrams/s per
    direction. Returns both directions' results."""
    common = ["--flows", str(flows), "--max-payload", str(max_payload), "--seed", str(seed)]
    legs = [("a->b", b, b_addr, a, port), ("b->a", a, a_addr, b, port + flows)]
    receivers, senders = [], []
    try:
        for _, dst_ns, dst, _, p in legs:
            argv = ["udp-recv", "--addr", dst, "--port", str(p), *common]
            receivers.append(start_end(dst_ns, argv, expect="ready", stdin=True))
        for _, _, dst, src_ns, p in legs:
            argv = ["udp-send", "--dst", dst, "--port", str(p), "--rate", str(rate), *common]
            senders.append(start_end(src_ns, argv))
        for proc in senders:
            end_report(proc, timeout=120)
        time.sleep(1.0)  # datagrams still crossing the tunnels
        results = []
        for (direction, *_), proc in zip(legs, receivers, strict=True):
            results.append(UdpResult(direction, end_report(proc, timeout=30)["flows"]))
        return results
    finally:
        for proc in receivers + senders:
            stop_process(proc)


def start_end(
    ns: Netns, argv: list[str], expect: str = "", stdin: bool = False
) -> subprocess.Popen:
    """Run this module's `argv` in `ns`; with `expect`, wait (10 s) for that line first."""
    proc = ns.popen([sys.executable, "-m", "tunneld.testbed.transfer", *argv],
                    stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    if expect:
        assert proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        line = proc.stdout.readline().strip() if sel.select(timeout=10) else ""
        sel.close()
        if line != expect:
            stop_process(proc)
            err = proc.stderr.read() if proc.stderr else ""
            raise TestbedError(f"transfer {' '.join(argv)} in {ns.name}: no {expect!r}: {err}")
    return proc


def end_report(proc: subprocess.Popen, timeout: float) -> dict[str, Any]:
    """Close an end's stdin (if a pipe), wait up to `timeout` s for it to exit and return
    its JSON report; TestbedError if it failed or timed out."""
    try:
        out, err = proc.communicate(input="" if proc.stdin else None, timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process(proc)
        raise TestbedError(
            f"transfer {proc.args[-12:]} still running after {timeout:g} s"
        ) from None
    lines = out.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise TestbedError(f"transfer {proc.args[-12:]}: exit {proc.returncode}: {err.strip()}")
    return json.loads(lines[-1])


# --- the ends' command line -----------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tunneld.testbed.transfer")
    sub = parser.add_subparsers(dest="command", required=True)
    tcp = sub.add_parser("tcp", help="one end of a seeded TCP stream")
    tcp.add_argument("--mode", choices=["listen", "connect"], required=True)
    tcp.add_argument("--action", choices=["send", "recv"], required=True)
    tcp.add_argument("--addr", required=True, help="the listening end's address")
    for name in ("port", "size", "seed"):
        tcp.add_argument(f"--{name}", type=int, required=True)
    for name, addr_flag in (("udp-send", "--dst"), ("udp-recv", "--addr")):
        udp = sub.add_parser(name)
        udp.add_argument(addr_flag, required=True)
        for opt in ("port", "flows", "max-payload", "seed"):
            udp.add_argument(f"--{opt}", type=int, required=True)
        udp.add_argument("--rate", type=float, default=4000.0, help="datagrams per second")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run = {"tcp": _tcp_main, "udp-send": _udp_send_main, "udp-recv": _udp_recv_main}
    print(json.dumps(run[args.command](args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
