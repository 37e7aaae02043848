"""A userspace UDP relay between two hosts that reorders and duplicates: a faulty underlay.

This kernel has no netem, so the fault-injection tests put this relay in the middle: both
tunnel ends are configured to reach each other at the relay's address, and the relay
forwards every datagram from host A to host B (and back) on the same port, from its own
socket. Loss comes from nftables (faults.NftLoss); this relay adds the rest:

* reordering: with probability `hold`, a datagram is held back (one per direction at a
  time) and sent only after the next 1..3 datagrams of that direction have passed, or
  after HOLD_MAX_SECONDS when nothing else comes (a lone handshake is delayed, not lost);
* duplication: with probability `duplicate`, a datagram is sent twice.

A datagram from any other source is counted (`unknown_source`) and dropped. Send errors
(the link is down, no route) are counted and the datagram dropped, as a wire would.
Decisions come from a seeded `random.Random`, so one seed gives one fault pattern for one
arrival order.

Run as `python -m tunneld.testbed.relay --a IP --b IP --ports P[,P...]` in a namespace
(UdpRelay.start does this through Netns.popen); it prints "ready" once bound and, on
SIGTERM or SIGINT, one JSON line of counters before it exits 0 (on SIGUSR1 too, and
goes on).
"""

from __future__ import annotations

import argparse
import json
import random
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunneld.testbed.common import TestbedError, stop_process

if TYPE_CHECKING:
    from tunneld.testbed.netns import Netns

HOLD_MAX_SECONDS = 0.05  # a held datagram waits at most this long for followers
DRAIN_BUDGET = 64  # datagrams read from one socket per wake-up
RCVBUF_BYTES = 4 << 20
COUNTERS = ("forwarded", "held", "duplicated", "unknown_source", "send_errors")
SO_RCVBUFFORCE = 33  # asm-generic/socket.h


@dataclass
class _Held:
    data: bytes
    dst: tuple[str, int]
    followers_left: int
    deadline: float


class Relay:
    """The relay's state: sockets by port, one held datagram per (port, direction)."""

    def __init__(self, a: str, b: str, ports: Sequence[int], hold: float, duplicate: float,
                 seed: int, listen: str = "") -> None:  # fmt: skip
        family = socket.AF_INET6 if ":" in a else socket.AF_INET
        self.a, self.b, self.hold, self.duplicate = a, b, hold, duplicate
        self.rng = random.Random(seed)
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.held: dict[tuple[int, str], _Held] = {}
        self.sel = selectors.DefaultSelector()
        self.socks: list[socket.socket] = []
        for port in ports:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:  # past net.core.rmem_max (root): a burst must not overflow the relay
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF_BYTES)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
            sock.bind((listen, port))
            sock.setblocking(False)
            self.sel.register(sock, selectors.EVENT_READ, port)
            self.socks.append(sock)
        self.by_port = {s.getsockname()[1]: s for s in self.socks}

    def close(self) -> None:
        self.sel.close()
        for sock in self.socks:
            sock.close()

    def run(self, flags: dict[str, bool]) -> None:
        """Forward until `flags["stop"]` is set; print the counters (one JSON line) each
        time `flags["report"]` is (both by signal handlers)."""
        while not flags["stop"]:
            for key, _ in self.sel.select(self._timeout()):
                self._drain(key.fileobj, key.data)  # type: ignore[arg-type]
            self._release_due(time.monotonic())
            if flags["report"]:
                flags["report"] = False
                print(json.dumps(self.report()), flush=True)

    def report(self) -> dict[str, int]:
        """The counters, plus `rcvbuf_errors`: datagrams this namespace's UDP dropped for a
        full receive buffer (/proc/net/snmp; the relay runs alone in its namespace)."""
        return self.counts | {"rcvbuf_errors": _udp_rcvbuf_errors()}

    def _timeout(self) -> float | None:
        if not self.held:
            return 0.2  # wake up now and then to see the flags
        soonest = min(h.deadline for h in self.held.values())
        return max(0.0, soonest - time.monotonic())

    def _drain(self, sock: socket.socket, port: int) -> None:
        for _ in range(DRAIN_BUDGET):
            try:
                data, (src, *_) = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error queued on the socket
                self.counts["send_errors"] += 1
                continue
            if src == self.a:
                direction, dst = "a->b", (self.b, port)
            elif src == self.b:
                direction, dst = "b->a", (self.a, port)
            else:
                self.counts["unknown_source"] += 1
                continue
            self._forward(sock, port, direction, data, dst)

    def _forward(self, sock: socket.socket, port: int, direction: str, data: bytes,
                 dst: tuple[str, int]) -> None:  # fmt: skip
        rng, key = self.rng, (port, direction)
        if key not in self.held and rng.random() < self.hold:
            self.held[key] = _Held(data, dst, rng.randint(1, 3),
                                   time.monotonic() + HOLD_MAX_SECONDS)  # fmt: skip
            self.counts["held"] += 1
            return
        self._send(sock, data, dst)
        if rng.random() < self.duplicate:
            self.counts["duplicated"] += 1
            self._send(sock, data, dst)
        held = self.held.get(key)
        if held is not None:
            held.followers_left -= 1
            if held.followers_left <= 0:
                del self.held[key]
                self._send(sock, held.data, held.dst)

    def _release_due(self, now: float) -> None:
        for key in [k for k, h in self.held.items() if h.deadline <= now]:
            held = self.held.pop(key)
            self._send(self.by_port[key[0]], held.data, held.dst)

    def _send(self, sock: socket.socket, data: bytes, dst: tuple[str, int]) -> None:
        try:
            sock.sendto(data, dst)
            self.counts["forwarded"] += 1
        except OSError:
            self.counts["send_errors"] += 1


class UdpRelay:
    """A relay process started in a namespace; `stop()` returns its counters."""

    def __init__(self, ns: Netns, proc: subprocess.Popen, ports: Sequence[int]) -> None:
        self.ns, self.proc, self.ports = ns, proc, list(ports)
        self.counts: dict[str, int] | None = None

    @classmethod
    def start(cls, ns: Netns, a: str, b: str, ports: Sequence[int], *, hold: float = 0.03,
              duplicate: float = 0.02, seed: int = 1) -> UdpRelay:  # fmt: skip
        """Run the relay in `ns` between hosts `a` and `b` on `ports`; wait for "ready"."""
        argv = [sys.executable, "-m", "tunneld.testbed.relay", "--a", a, "--b", b,
                "--ports", ",".join(map(str, ports)), "--hold", str(hold),
                "--duplicate", str(duplicate), "--seed", str(seed)]  # fmt: skip
        proc = ns.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            stop_process(proc)
            err = proc.stderr.read() if proc.stderr else ""
            raise TestbedError(f"relay in {ns.name} did not start: {err}")
        return cls(ns, proc, ports)

    def counters(self) -> dict[str, int]:
        """The running relay's counters so far (SIGUSR1; it answers one JSON line): COUNTERS
        and rcvbuf_errors."""
        assert self.proc.stdout is not None and self.counts is None
        self.proc.send_signal(signal.SIGUSR1)
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        ready = sel.select(timeout=5)
        sel.close()
        if not ready:
            raise TestbedError(f"relay in {self.ns.name} did not report its counters")
        return dict(json.loads(self.proc.stdout.readline()))

    def stop(self) -> dict[str, int]:
        """SIGTERM; the relay's counters (COUNTERS). Idempotent."""
        if self.counts is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                out, err = self.proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                stop_process(self.proc, 0)
                raise TestbedError(f"relay in {self.ns.name} ignored SIGTERM") from None
            lines = out.strip().splitlines()
            if self.proc.returncode != 0 or not lines:
                raise TestbedError(f"relay exited {self.proc.returncode}: {err.strip()}")
            self.counts = json.loads(lines[-1])
        return dict(self.counts)


def _udp_rcvbuf_errors() -> int:
    try:
        with open("/proc/net/snmp") as f:
            rows = [line.split() for line in f if line.startswith("Udp:")]
        return int(dict(zip(rows[0], rows[1], strict=True))["RcvbufErrors"])
    except (OSError, KeyError, IndexError, ValueError):
        return -1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunneld.testbed.relay")
    parser.add_argument("--a", required=True, help="host A's underlay address")
    parser.add_argument("--b", required=True, help="host B's underlay address")
    parser.add_argument("--ports", required=True, help="comma-separated UDP ports to relay")
    parser.add_argument("--listen", default="", help="local address to bind (default: any)")
    parser.add_argument("--hold", type=float, default=0.03, help="probability to hold back")
    parser.add_argument("--duplicate", type=float, default=0.02, help="probability to send twice")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    ports = [int(p) for p in args.ports.split(",") if p]
    relay = Relay(args.a, args.b, ports, args.hold, args.duplicate, args.seed, args.listen)
    flags = {"stop": False, "report": False}

    def on_signal(signum: int, frame: Any) -> None:
        flags["report" if signum == signal.SIGUSR1 else "stop"] = True

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(signum, on_signal)
    print("ready", flush=True)
    try:
        relay.run(flags)
    finally:
        relay.close()
    print(json.dumps(relay.report()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
