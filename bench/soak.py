#!/usr/bin/env python3
"""Soak: iperf3 through vxlan, wireguard, overlay, overlay-wg at once; RSS, fds, tables sampled.

The documented long run (issue 9): `sudo nice -n 10 .venv/bin/python bench/soak.py
--seconds 600`. Every interface type gets its own pair of tunneld daemons between two
namespaces and one iperf3 TCP client capped at --rate for the whole run; every --interval
seconds each daemon's VmRSS, open fds, FDB/peer/route table sizes and counters are sampled
(tunneld/testbed/soak.py). After the warm-up (20% of the run, 10..60 s) RSS must stay
within 10% of its first post-warm-up sample and the fd count must not change. Writes
bench/results/soak-<UTC stamp>.json (every sample) and .md (the table); exits 1 if a
bound was broken. The 60-second CI version is tests/netns/test_soak.py. `--faults` sends
every tunnel through the fault relay of tests/netns/test_faults.py (5% loss, reordering,
duplication; use a lower --rate: the relay is Python) and writes soak-faults-<stamp>.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tunneld.testbed import soak  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--rate", default="100M", help="iperf3 -b per interface type")
    parser.add_argument(
        "--faults",
        action="store_true",
        help="through the fault relay (5%% loss, reordering, duplication)",
    )
    args = parser.parse_args()
    result = soak.run(args.seconds, interval=args.interval, rate=args.rate, faults=args.faults,
                      log=lambda line: print(line, flush=True))  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    kind = "soak-faults" if args.faults else "soak"
    stem = RESULTS / f"{kind}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    stem.with_suffix(".json").write_text(json.dumps(result | {"summary": soak.summary(result)},
                                                    indent=1))  # fmt: skip
    table = soak.report_markdown(result)
    stem.with_suffix(".md").write_text(table)
    print(table)
    print(f"written: {stem}.json, {stem}.md")
    return 1 if soak.check(result) else 0


if __name__ == "__main__":
    sys.exit(main())
