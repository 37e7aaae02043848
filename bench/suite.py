#!/usr/bin/env python3
"""Every data plane in one run: `./tunneld.sh bench [ARGS]` (issue 7's bench).

Builds every selected case up front, each in its own pair of network namespaces (see
bench/suite_cases.py for the topologies and anchors), then interleaves the runs: for each
run, for each metric, every case once (A B C ... A B C ...), so anchors and subjects see
the same machine state. Metrics are iperf3 TCP 1 stream each way and 4 streams (Gbit/s),
UDP at 64 and 1400 byte payloads (received packets/s and loss %), and each daemon's CPU
seconds per GB moved (bench/suite_measure.py). Prints a Markdown table (case, metric,
median, min-max, ratio to its anchor) and issue 7's acceptance ratios, and writes
bench/results/suite-<UTC>.md and .json and bench/results/LATEST.md.

Everything lives in one tunneld.testbed.Testbed: namespaces and processes are removed on
exit, on Ctrl-C (the runs so far are still reported) and on SIGTERM/SIGHUP.

    ./tunneld.sh bench                                       # everything, 3 x 10 s
    ./tunneld.sh bench --seconds 2 --runs 1                  # smoke run
    ./tunneld.sh bench --only 'twg-*' --metrics tcp1,tcp1r   # anchors are added
    ./tunneld.sh bench --list
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import suite_report  # noqa: E402
from suite_cases import CASES, CASES_BY_ID, Case, Topology  # noqa: E402
from suite_measure import METRICS, measure, peak_rss_kb  # noqa: E402

from tunneld.testbed import Testbed, TestbedError  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10, help="per iperf3 run (10)")
    parser.add_argument("--runs", type=int, default=3, help="runs of every case and metric (3)")
    parser.add_argument("--only", default="*", help="case ids or patterns, e.g. 'veth,tvx-*'")
    parser.add_argument(
        "--metrics", default=",".join(METRICS), help=f"comma list of {','.join(METRICS)}"
    )
    parser.add_argument(
        "--no-anchors", action="store_true", help="do not add the anchors of the selected cases"
    )
    parser.add_argument("--list", action="store_true", help="print the cases and exit")
    args = parser.parse_args(argv)
    args.metric_names = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = [m for m in args.metric_names if m not in METRICS]
    if unknown or not args.metric_names:
        parser.error(f"--metrics: unknown {unknown}; choose from {','.join(METRICS)}")
    if args.runs < 1 or args.seconds <= 0:
        parser.error("--runs must be >= 1 and --seconds > 0")
    return args


def select_cases(only: str, with_anchors: bool) -> list[Case]:
    """The cases matching the patterns, plus (unless told not to) their anchors, in the
    order of CASES. Raises ValueError when a pattern matches nothing."""
    patterns = [p.strip() for p in only.split(",") if p.strip()]
    chosen: set[str] = set()
    for pattern in patterns:
        hits = [c.id for c in CASES if fnmatch.fnmatchcase(c.id, pattern)]
        if not hits:
            raise ValueError(f"--only {pattern!r} matches no case (see --list)")
        chosen.update(hits)
    if with_anchors:
        chosen.update(a for c in list(chosen) if (a := CASES_BY_ID[c].anchor))
    return [c for c in CASES if c.id in chosen]


def build_all(bed: Testbed, cases: list[Case], errors: dict[str, str]) -> dict[str, Topology]:
    built = {}
    for index, case in enumerate(CASES, start=1):  # index from the full list: stable subnets
        if case not in cases:
            continue
        try:
            built[case.id] = case.build(bed, index, case)
            print(f"{case.id:<13} {case.title}: up", flush=True)
        except (TestbedError, TimeoutError, OSError) as exc:
            errors[case.id] = f"build: {exc}"
            print(f"{case.id:<13} {case.title}: FAILED to build: {exc}", file=sys.stderr)
    return built


def run_all(
    built: dict[str, Topology], args: argparse.Namespace, errors: dict[str, str]
) -> suite_report.Samples:
    """Interleaved runs; a failed run is reported and skipped. Ctrl-C stops early."""
    samples: suite_report.Samples = {c: {m: [] for m in args.metric_names} for c in built}
    try:
        for run in range(1, args.runs + 1):
            for name in args.metric_names:
                for case_id, topo in built.items():
                    _one(case_id, topo, name, run, args, samples, errors)
    except KeyboardInterrupt:
        errors["interrupted"] = "stopped by Ctrl-C; the runs so far are reported"
        print("\ninterrupted: reporting the runs so far", file=sys.stderr)
    return samples


def _one(
    case_id: str,
    topo: Topology,
    name: str,
    run: int,
    args: argparse.Namespace,
    samples: suite_report.Samples,
    errors: dict[str, str],
) -> None:
    metric = METRICS[name]
    try:
        sample = measure(topo, metric, args.seconds)
    except TestbedError as exc:
        errors[f"{case_id} {name} run {run}"] = str(exc)
        print(f"{case_id} {name} run {run}: FAILED: {exc}", file=sys.stderr)
        return
    samples[case_id][name].append(sample)
    for d in topo.daemons:
        kb = peak_rss_kb(d.pid)
        if kb is not None:
            topo.peak_rss_kb[d.label] = max(kb, topo.peak_rss_kb.get(d.label, 0))
    extra = f", loss {sample.loss_percent:.1f}%" if sample.loss_percent is not None else ""
    cpu = "".join(f", {lb} {v:.2f} s/GB" for lb, v in sample.cpu_s_per_gb().items())
    print(
        f"run {run}/{args.runs} {name:<7} {case_id:<13} {sample.value:9.3f} {metric.unit}"
        f"{extra}{cpu}",
        flush=True,
    )


def collect_shows(built: dict[str, Topology]) -> None:
    """Each tunneld's `show --json` after the runs (counters and drop reasons), kept in the
    JSON; a daemon that no longer answers leaves {"error": ...}."""
    for topo in built.values():
        for daemon in topo.tunnelds:
            try:
                topo.shows.append(daemon.show())
            except (TestbedError, ValueError) as exc:
                topo.shows.append({"error": str(exc)})


def tunneld_native(built: dict[str, Topology]) -> Any:
    """The native implementation tunneld reports in `show --json` (top-level "native", or
    "daemon": {"native"}); None when no daemon reports one."""
    for topo in built.values():
        for doc in topo.shows:
            found = doc.get("native", (doc.get("daemon") or {}).get("native"))
            if found is not None:
                return found
    return None


def case_record(case: Case, topo: Topology | None) -> dict[str, Any]:
    """What the JSON says about one case: its anchor, offload key, tunnel MTU and daemons
    (with their peak RSS in KiB, None once a daemon is gone)."""
    daemons = topo.daemons if topo else []
    return {
        "title": case.title,
        "anchor": case.anchor,
        "offload": case.offload,
        "built": topo is not None,
        "tunnel_mtu": topo.mtu if topo else None,
        "daemons": [
            {**vars(d), "peak_rss_kb": topo.peak_rss_kb.get(d.label) if topo else None}
            for d in daemons
        ],
        "show": topo.shows if topo else [],
    }


def document(
    args: argparse.Namespace,
    cases: list[Case],
    built: dict[str, Topology],
    samples: suite_report.Samples,
    errors: dict[str, str],
    native: Any,
    now: datetime.datetime,
) -> dict[str, Any]:
    summary = suite_report.summarize(samples)
    return {
        "bench": "suite",
        "time": now.isoformat(timespec="seconds"),
        **suite_report.git_commit(),
        "machine": suite_report.machine(),
        "tunneld_native": native,
        "args": {
            "seconds": args.seconds,
            "runs": args.runs,
            "metrics": args.metric_names,
            "only": args.only,
            "anchors_added": not args.no_anchors,
        },
        "underlay": {"mtu": 1500, "gro": True},
        "cases": {c.id: case_record(c, built.get(c.id)) for c in cases},
        "summary": summary,
        "acceptance": suite_report.acceptance(summary),
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for c in CASES:
            print(f"{c.id:<13} {c.title}" + (f"   (anchor: {c.anchor})" if c.anchor else ""))
        return 0
    try:
        cases = select_cases(args.only, not args.no_anchors)
    except ValueError as exc:
        print(f"suite: {exc}", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("suite: needs root (network namespaces)", file=sys.stderr)
        return 1
    total = len(cases) * len(args.metric_names) * args.runs
    print(
        f"{len(cases)} cases x {len(args.metric_names)} metrics x {args.runs} runs = {total} "
        f"iperf3 runs of {args.seconds:g} s (about {total * (args.seconds + 1.5) / 60:.0f} "
        f"min)",
        flush=True,
    )
    errors: dict[str, str] = {}
    with Testbed() as bed:
        built = build_all(bed, cases, errors)
        samples = run_all(built, args, errors)
        collect_shows(built)
    native = tunneld_native(built)
    now = datetime.datetime.now(datetime.UTC)
    doc = document(args, cases, built, samples, errors, native, now)
    print("\n" + suite_report.markdown(doc))
    md, js = suite_report.write(doc, now)
    print(f"wrote {md}\nwrote {js}\nwrote {suite_report.RESULTS / 'LATEST.md'}")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
