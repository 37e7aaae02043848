#!/usr/bin/env python3
"""WireGuard throughput: tunneld against wireguard-go, iperf3 TCP single stream.

Three topologies, each two network namespaces joined by a veth underlay (MTU
1500), overlay 10.98.N.0/24, tunnel MTU 1420, UDP port 51820:

  A  wireguard-go <-> wireguard-go   the anchor (Debian's 2022 build)
  B  tunneld      <-> wireguard-go   the subject, interop (tunneld sends)
  C  tunneld      <-> tunneld        the subject, both ends ours

All are built up front and their runs interleaved (A B C A B C ...), so anchor
and subject see the same machine state; each run is `iperf3 -c -t SECONDS` from
the first namespace to the second (`--reverse`: the second sends). Prints the
median Gbit/s per topology and the ratios B/A and C/A, and writes JSON to
bench/results/.

These machines are noisy: quote medians, and only ratios measured in one run.

    sudo .venv/bin/python bench/wireguard_iperf.py [--seconds 10] [--runs 3] [--only A,B]
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.netns.wg_helpers import Keys, PeerSpec, WgGo, tunneld_wg_config  # noqa: E402
from tunneld.testbed import Host, Testbed, TestbedError  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PORT = 51820
TOPOLOGIES = {
    "A": "wireguard-go <-> wireguard-go",
    "B": "tunneld <-> wireguard-go",
    "C": "tunneld <-> tunneld",
}


def build(bed: Testbed, key: str, index: int) -> tuple[Host, Host, str]:
    """Two namespaces for topology `key`: (client, server, server's overlay address)."""
    ns1, ns2 = bed.add_ns(f"{key.lower()}1"), bed.add_ns(f"{key.lower()}2")
    ip1, ip2 = f"192.168.{bed.subnet_octet}.1", f"192.168.{bed.subnet_octet}.2"
    link = bed.link(ns1, ns2, f"{ip1}/24", f"{ip2}/24")
    hosts = (Host(ns1, link.ifname_a, ip1, "", f"{ip1}/24", ""),
             Host(ns2, link.ifname_b, ip2, "", f"{ip2}/24", ""))  # fmt: skip
    keys = (Keys.new(), Keys.new())
    overlay = (f"10.98.{index}.1", f"10.98.{index}.2")
    for n, me in enumerate(hosts):
        other = 1 - n
        if key == "C" or (key == "B" and n == 0):
            peer = PeerSpec(keys[other].public_b64, [f"{overlay[other]}/32"],
                            f"{hosts[other].ip}:{PORT}")  # fmt: skip
            config = tunneld_wg_config(keys[n], [f"{overlay[n]}/24"], [peer], listen_port=PORT,
                                       log_level="warning")  # fmt: skip
            me.ns.spawn_tunneld(config, f"{key}{n}")
        else:
            go = WgGo.start(me.ns, bed.ifname(f"{key.lower()}{n}"), keys[n], PORT,
                            f"{overlay[n]}/24")  # fmt: skip
            go.set_peer(keys[other].public_b64, [f"{overlay[other]}/32"],
                        f"{hosts[other].ip}:{PORT}")  # fmt: skip
    if hosts[0].ns.ping(overlay[1], count=5, interval=0.3)[1] == 0:
        raise TestbedError(f"topology {key}: no ping through the tunnel")
    return hosts[0], hosts[1], overlay[1]


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, cwd=Path(__file__).resolve().parent)  # fmt: skip
    return out.stdout.strip() or "unknown"


def report(samples: dict[str, list[float]]) -> dict[str, float]:
    medians = {k: statistics.median(v) for k, v in samples.items() if v}
    print(f"\n{'topology':<34}{'median Gbit/s':>14}   runs")
    for key, values in samples.items():
        runs = " ".join(f"{v:.3f}" for v in values) or "failed"
        median = f"{medians[key]:.3f}" if key in medians else "-"
        print(f"{key} {TOPOLOGIES[key]:<32}{median:>14}   {runs}")
    if medians.get("A"):
        for key in ("B", "C"):
            if key in medians:
                print(f"ratio {key}/A ({TOPOLOGIES[key]} / wireguard-go): "
                      f"{medians[key] / medians['A']:.3f}")  # fmt: skip
    return medians


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default="A,B,C", help="topologies to run, e.g. A,B")
    parser.add_argument("--reverse", action="store_true", help="the second namespace sends")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("wireguard_iperf: needs root (network namespaces)", file=sys.stderr)
        return 1
    keys = [k for k in args.only.upper().split(",") if k in TOPOLOGIES]
    samples: dict[str, list[float]] = {k: [] for k in keys}
    errors: dict[str, str] = {}
    with Testbed() as bed:
        pairs = {}
        for index, key in enumerate(keys, start=1):
            try:
                pairs[key] = build(bed, key, index)
                print(f"{key} {TOPOLOGIES[key]}: up", flush=True)
            except TestbedError as exc:
                errors[key] = str(exc)
                print(f"{key} {TOPOLOGIES[key]}: FAILED to build: {exc}", file=sys.stderr)
        for run in range(args.runs):
            for key, (client, server, dst) in pairs.items():
                try:
                    result = client.ns.iperf3_pair(server.ns, dst, args.seconds,
                                                   reverse=args.reverse)  # fmt: skip
                except TestbedError as exc:
                    errors[key] = str(exc)
                    print(f"{key} run {run + 1}: FAILED: {exc}", file=sys.stderr)
                    continue
                gbps = result["bits_per_second"] / 1e9
                samples[key].append(gbps)
                print(f"{key} run {run + 1}/{args.runs}: {gbps:.3f} Gbit/s "
                      f"(retransmits {result['retransmits']})", flush=True)  # fmt: skip
    medians = report(samples)
    write_json(args, samples, medians, errors)
    return 0 if not errors else 1


def write_json(args: argparse.Namespace, samples: dict, medians: dict, errors: dict) -> None:
    now = datetime.datetime.now(datetime.UTC)
    doc = {
        "bench": "wireguard_iperf",
        "time": now.isoformat(timespec="seconds"),
        "commit": git_commit(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "seconds": args.seconds,
        "runs": args.runs,
        "reverse": args.reverse,
        "topologies": TOPOLOGIES,
        "gbit_per_s": samples,
        "median_gbit_per_s": medians,
        "ratios": {
            f"{k}/A": medians[k] / medians["A"]
            for k in ("B", "C")
            if k in medians and medians.get("A")
        },  # fmt: skip
        "errors": errors,
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"wireguard_iperf-{now:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    sys.exit(main())
