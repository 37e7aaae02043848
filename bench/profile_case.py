#!/usr/bin/env python3
"""Profile the tunneld daemons of one bench case with py-spy while iperf3 runs through it.

    sudo .venv/bin/python bench/profile_case.py twg-twg-on [--seconds 10] [--reverse]

Builds the case exactly as bench/suite.py does (bench/suite_cases.py), starts
`py-spy record --format raw` on every tunneld of the case (py-spy: `pip install py-spy`),
runs one iperf3 TCP stream, and prints each daemon's top functions by own samples and by
total samples. The raw collapsed stacks go to bench/results/profile-<case>-<side>.txt.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from suite_cases import CASES_BY_ID  # noqa: E402

from tunneld.testbed import Testbed  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def top(stacks: Path, n: int = 18) -> str:
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in stacks.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        k = int(count)
        samples += k
        own[frames[-1]] += k
        for f in set(frames):
            total[f] += k
    lines = [f"{samples} samples; own time:"]
    lines += [f"  {100 * k / samples:5.1f}%  {f}" for f, k in own.most_common(n)]
    lines += ["total time:"]
    lines += [f"  {100 * k / samples:5.1f}%  {f}" for f, k in total.most_common(n)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("case", choices=sorted(CASES_BY_ID))
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--reverse", action="store_true")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    case = CASES_BY_ID[args.case]
    RESULTS.mkdir(exist_ok=True)
    with Testbed() as bed:
        topo = case.build(bed, 1, case)
        recorders = []
        for d in topo.daemons:
            if d.kind != "tunneld":
                continue
            out = RESULTS / f"profile-{case.id}-{d.side}.txt"
            cmd = [
                spy,
                "record",
                "--pid",
                str(d.pid),
                "--format",
                "raw",
                "--rate",
                "250",
                "--duration",
                str(int(args.seconds)),
                "--output",
                str(out),
                "--nonblocking",
            ]
            recorders.append((d, out, subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                                        stderr=subprocess.DEVNULL)))  # fmt: skip
        result = topo.client.ns.iperf3_pair(topo.server.ns, topo.dst, args.seconds,
                                            reverse=args.reverse)  # fmt: skip
        for _, _, proc in recorders:
            proc.wait(timeout=args.seconds + 30)
        print(f"{case.title}: {float(result['bits_per_second']) / 1e9:.3f} Gbit/s")
        for d, out, _ in recorders:
            print(f"\n== {d.label} (pid {d.pid})\n{top(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
