"""The shared runner of the iperf3 comparisons: anchor and subjects side by side, one run.

A bench script names its topologies (key "A" is the anchor) and a `build(bed, key,
index) -> (client Host, server Host, destination address)`; this module parses the
common arguments, builds every topology up front, interleaves the runs (A B C A B
C ...) so anchor and subjects see the same machine state, prints medians and the
ratios to the anchor, and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tunneld.testbed import Host, Testbed, TestbedError  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
Build = Callable[[Testbed, str, int], tuple[Host, Host, str]]


def main(name: str, doc: str, topologies: dict[str, str], anchor: str, build: Build,
         argv: list[str] | None = None) -> int:  # fmt: skip
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default=",".join(topologies), help="topologies, e.g. A,B")
    parser.add_argument("--reverse", action="store_true", help="the second namespace sends")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print(f"{name}: needs root (network namespaces)", file=sys.stderr)
        return 1
    keys = [k for k in args.only.upper().split(",") if k in topologies]
    samples: dict[str, list[float]] = {k: [] for k in keys}
    errors: dict[str, str] = {}
    with Testbed() as bed:
        pairs = {}
        for index, key in enumerate(keys, start=1):
            try:
                pairs[key] = build(bed, key, index)
                print(f"{key} {topologies[key]}: up", flush=True)
            except TestbedError as exc:
                errors[key] = str(exc)
                print(f"{key} {topologies[key]}: FAILED to build: {exc}", file=sys.stderr)
        for run in range(args.runs):
            for key, pair in pairs.items():
                gbps = _one_run(key, pair, args, errors)
                if gbps is not None:
                    samples[key].append(gbps)
                    print(f"{key} run {run + 1}/{args.runs}: {gbps:.3f} Gbit/s", flush=True)
    medians = report(samples, topologies, anchor)
    write_json(name, args, topologies, samples, medians, errors)
    return 0 if not errors else 1


def _one_run(key: str, pair: tuple[Host, Host, str], args: argparse.Namespace,
             errors: dict[str, str]) -> float | None:  # fmt: skip
    client, server, dst = pair
    try:
        result = client.ns.iperf3_pair(server.ns, dst, args.seconds, reverse=args.reverse)
    except TestbedError as exc:
        errors[key] = str(exc)
        print(f"{key}: FAILED: {exc}", file=sys.stderr)
        return None
    return float(result["bits_per_second"]) / 1e9


def ratios(medians: dict[str, float]) -> dict[str, float]:
    if not medians.get("A"):
        return {}
    return {f"{k}/A": v / medians["A"] for k, v in medians.items() if k != "A"}


def report(samples: dict[str, list[float]], topologies: dict[str, str],
           anchor: str) -> dict[str, float]:  # fmt: skip
    medians = {k: statistics.median(v) for k, v in samples.items() if v}
    width = max(len(t) for t in topologies.values()) + 2
    print(f"\n{'topology':<{width + 2}}{'median Gbit/s':>14}   runs")
    for key, values in samples.items():
        runs = " ".join(f"{v:.3f}" for v in values) or "failed"
        median = f"{medians[key]:.3f}" if key in medians else "-"
        print(f"{key} {topologies[key]:<{width}}{median:>14}   {runs}")
    for pair, ratio in ratios(medians).items():
        print(f"ratio {pair} ({topologies[pair[0]]} / {anchor}): {ratio:.3f}")
    return medians


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, cwd=Path(__file__).resolve().parent)  # fmt: skip
    return out.stdout.strip() or "unknown"


def write_json(name: str, args: argparse.Namespace, topologies: dict[str, str],
               samples: dict[str, list[float]], medians: dict[str, float],
               errors: dict[str, str]) -> None:  # fmt: skip
    now = datetime.datetime.now(datetime.UTC)
    doc = {
        "bench": name,
        "time": now.isoformat(timespec="seconds"),
        "commit": git_commit(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "seconds": args.seconds,
        "runs": args.runs,
        "reverse": args.reverse,
        "topologies": topologies,
        "gbit_per_s": samples,
        "median_gbit_per_s": medians,
        "ratios": ratios(medians),
        "errors": errors,
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}-{now:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {path}")
