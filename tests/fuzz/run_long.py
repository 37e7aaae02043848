"""The documented long fuzz run: every atheris target in turn, one process at a time.

    nice -n 19 .venv/bin/python -m tests.fuzz.run_long [--runs N] [--seconds S] [--top-up] [T..]

Each target runs until N executions (default 10,000,000) or S seconds (default 3600),
whichever comes first, starting from its seeds (tests/fuzz/corpus/<target>/, read-only)
and a working corpus in --work (kept between runs, so later runs resume where earlier ones
stopped). Results (executions, exec/s, libFuzzer's cov/ft, corpus size, crash files) are
appended as one JSON line per target to --out (bench/results/fuzz_long.jsonl) and printed
as a table; `--table` prints every recorded run as markdown, with totals per target.
A crash stops that target (libFuzzer's rule) and the next one starts.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
REPO = HERE.parents[1]
_DONE = re.compile(
    r"#(\d+)\s+(?:DONE|pulse|NEW|REDUCE|INITED)\s+(?:cov: (\d+) ft: (\d+) )?corp: (\d+)/"
)
_CRASH = re.compile(r"Test unit written to (\S+)")
# Longest input per target (libFuzzer's -max_len; 8192 otherwise). Longer inputs reach no
# new code there, only slow each execution: the UAPI harness bounds its reader at 512 bytes,
# eight WireGuard datagrams or several coalescable segments fit well within these, and the
# overlay router branches on headers, never on lengths past a few hundred bytes.
MAX_LEN = {"wg_uapi": 2048, "wg_batch": 2048, "gso_coalesce": 4096, "overlay": 4096}


def target_names() -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.atheris_main", "--list"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


def totals(path: Path) -> dict[str, int]:
    """Executions recorded in `path` so far, per target."""
    done: dict[str, int] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done[r["target"]] = done.get(r["target"], 0) + r["executions"]
    return done


def run_one(name: str, runs: int, seconds: int, work: Path) -> dict[str, object]:
    corpus = work / name
    corpus.mkdir(parents=True, exist_ok=True)
    args = [
        sys.executable,
        "-m",
        "tests.fuzz.atheris_main",
        name,
        f"-runs={runs}",
        f"-max_total_time={seconds}",
        "-print_final_stats=1",
        f"-max_len={MAX_LEN.get(name, 8192)}",
        f"-artifact_prefix={work}/{name}-",
        str(corpus),
        str(HERE / "corpus" / name),
    ]
    started = time.monotonic()
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    took = time.monotonic() - started
    execs, cov, ft, corp = 0, None, None, 0
    for line in proc.stderr.splitlines():
        m = _DONE.search(line)
        if m:
            execs, corp = int(m.group(1)), int(m.group(4))
            if m.group(2):
                cov, ft = int(m.group(2)), int(m.group(3))
        stat = re.match(r"stat::number_of_executed_units: (\d+)", line)
        if stat:
            execs = int(stat.group(1))
    crashes = _CRASH.findall(proc.stderr)
    tail = "\n".join(proc.stderr.splitlines()[-40:]) if crashes or proc.returncode else ""
    return {
        "target": name,
        "max_len": MAX_LEN.get(name, 8192),
        "executions": execs,
        "seconds": round(took, 1),
        "exec_per_s": round(execs / took) if took else 0,
        "cov": cov,
        "ft": ft,
        "corpus": corp,
        "returncode": proc.returncode,
        "crashes": crashes,
        "tail": tail,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def table(path: Path) -> str:
    """A markdown table of every run in `path`, and each target's total executions."""
    runs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = ["| target | run finished | executions | exec/s | cov | ft | corpus | crashes |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in runs:
        rows.append(f"| {r['target']} | {r['finished']} | {r['executions']:,} | "
                    f"{r['exec_per_s']:,} | {r['cov']} | {r['ft']} | {r['corpus']} | "
                    f"{len(r['crashes'])} |")  # fmt: skip
    rows += ["", "| target | executions in all |", "|---|---:|"]
    rows += [f"| {name} | {count:,} |" for name, count in totals(path).items()]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*")
    parser.add_argument("--table", action="store_true", help="print --out as markdown, run nothing")
    parser.add_argument("--runs", type=int, default=10_000_000)
    parser.add_argument("--seconds", type=int, default=3600)
    parser.add_argument(
        "--top-up",
        action="store_true",
        help="run each target only for what it lacks of --runs executions in --out",
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/tunneld-fuzz-long"))
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/fuzz_long.jsonl")
    args = parser.parse_args(argv)
    if args.table:
        print(table(args.out))
        return 0
    names = args.targets or target_names()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    failed = 0
    print(f"{'target':18} {'execs':>11} {'exec/s':>7} {'cov':>5} {'ft':>6} {'corpus':>6}  crashes")
    for name in names:
        runs = args.runs - totals(args.out).get(name, 0) if args.top_up else args.runs
        if runs <= 0:
            print(f"{name:18} already has {args.runs:,} executions", flush=True)
            continue
        result = run_one(name, runs, args.seconds, args.work)
        with args.out.open("a") as f:
            f.write(json.dumps(result) + "\n")
        failed += bool(result["crashes"]) or result["returncode"] != 0
        print(
            f"{name:18} {result['executions']:>11,} {result['exec_per_s']:>7,} "
            f"{result['cov']!s:>5} {result['ft']!s:>6} {result['corpus']!s:>6}  "
            f"{len(result['crashes'])}",
            flush=True,
        )  # type: ignore[arg-type]
        if result["tail"]:
            print(result["tail"], flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
