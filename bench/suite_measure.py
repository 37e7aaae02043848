"""One measurement of `bench/suite.py`: an iperf3 run through a built case, and the CPU
seconds its daemons spent during it.

Metrics (iperf3 3.x, `-J`):
  tcp1     TCP, 1 stream, client -> server                  Gbit/s at the receiver
  tcp1r    TCP, 1 stream, server -> client (-R)             Gbit/s at the receiver
  tcp4     TCP, 4 streams (-P 4), client -> server          Gbit/s at the receiver
  udp64    UDP -b 0 -l 64, client -> server                 packets/s at the receiver, loss %
  udp1400  UDP -b 0 -l 1400 (capped at tunnel MTU - 28, so nothing is fragmented)

CPU: utime + stime of each daemon (and its live children) from /proc/PID/stat just before
the client starts and just after it ends, divided by the bytes the receiver got.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from suite_cases import Topology  # noqa: E402

from tunneld.testbed import TestbedError  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
IPV4_UDP_HEADERS = 28  # what the inner IPv4 and UDP headers add to an iperf3 payload


@dataclass(frozen=True)
class Metric:
    name: str
    title: str
    unit: str  # of `value`: "Gbit/s" or "kpps"
    reverse: bool = False
    streams: int = 1
    udp_payload: int | None = None  # bytes; None: TCP


METRICS = {
    m.name: m
    for m in (
        Metric("tcp1", "TCP 1 stream", "Gbit/s"),
        Metric("tcp1r", "TCP 1 stream -R", "Gbit/s", reverse=True),
        Metric("tcp4", "TCP 4 streams", "Gbit/s", streams=4),
        Metric("udp64", "UDP 64 B", "kpps", udp_payload=64),
        Metric("udp1400", "UDP 1400 B", "kpps", udp_payload=1400),
    )
}


@dataclass
class Sample:
    """One run: `value` in the metric's unit; `cpu_s` per daemon label (CPU seconds)."""

    value: float
    bytes: int
    seconds: float
    cpu_s: dict[str, float]
    loss_percent: float | None = None
    payload: int | None = None
    retransmits: int | None = None

    def cpu_s_per_gb(self) -> dict[str, float]:
        """CPU seconds per 10^9 bytes received; empty without daemons or bytes."""
        if self.bytes <= 0:
            return {}
        return {label: s / (self.bytes / 1e9) for label, s in self.cpu_s.items()}


# --- CPU --------------------------------------------------------------------------------


def _stat_ticks(pid: int) -> tuple[int, int]:
    """(utime + stime in clock ticks, parent PID) of one process; (0, 0) once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return 0, 0
    fields = text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on
    return int(fields[11]) + int(fields[12]), int(fields[1])


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _stat_ticks(int(entry))[1] == pid:
            kids.append(int(entry))
    return kids


def cpu_seconds(pid: int, with_children: bool = True) -> float:
    """utime + stime of `pid` (all its threads) plus, if asked, its live child processes."""
    ticks = _stat_ticks(pid)[0]
    if with_children:
        ticks += sum(_stat_ticks(kid)[0] for kid in _children(pid))
    return ticks / CLK_TCK


def peak_rss_kb(pid: int) -> int | None:
    """VmHWM (peak resident set, KiB) of a process; None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return None


# --- iperf3 -----------------------------------------------------------------------------


def iperf3_args(metric: Metric, mtu: int) -> tuple[list[str], int | None]:
    """Extra iperf3 client arguments and the UDP payload used (None for TCP)."""
    if metric.udp_payload is None:
        return (["-P", str(metric.streams)] if metric.streams > 1 else []), None
    payload = min(metric.udp_payload, mtu - IPV4_UDP_HEADERS)
    return ["-u", "-b", "0", "-l", str(payload)], payload


def measure(topo: Topology, metric: Metric, seconds: float) -> Sample:
    """One iperf3 run of `metric` through `topo`. Raises TestbedError when iperf3 fails."""
    extra, payload = iperf3_args(metric, topo.mtu)
    # Sample before the server starts and after the client ends: the interval includes
    # the idle daemon for a few ms of setup, negligible against the run.
    before = {d.label: cpu_seconds(d.pid) for d in topo.daemons}
    result = topo.client.ns.iperf3_pair(
        topo.server.ns, topo.dst, seconds, reverse=metric.reverse, extra=extra
    )
    after = {d.label: cpu_seconds(d.pid) for d in topo.daemons}
    cpu = {label: after[label] - before[label] for label in before}
    end = result["json"]["end"]
    # iperf3 >= 3.10 has the receiver's view in sum_received; older UDP clients only in sum
    received = end.get("sum_received") or end.get("sum") or {}
    duration = float(received.get("seconds") or seconds)
    if payload is None:
        return Sample(
            float(result["bits_per_second"]) / 1e9,
            int(result["bytes"]),
            duration,
            cpu,
            retransmits=result.get("retransmits"),
        )
    return _udp_sample(received, duration, cpu, payload)


def _udp_sample(
    received: dict[str, Any], duration: float, cpu: dict[str, float], payload: int
) -> Sample:
    """Packets the receiver got: iperf3's `packets` is the highest sequence seen, so the
    received count is packets - lost_packets."""
    if "packets" not in received:
        raise TestbedError(f"iperf3 UDP: no receiver summary in {received!r}")
    got = int(received["packets"]) - int(received.get("lost_packets", 0))
    if duration <= 0:
        raise TestbedError("iperf3 UDP: zero-length run")
    loss = float(received.get("lost_percent", 0.0))
    return Sample(
        got / duration / 1e3,
        int(received.get("bytes", 0)),
        duration,
        cpu,
        loss_percent=loss,
        payload=payload,
    )
