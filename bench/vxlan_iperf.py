#!/usr/bin/env python3
"""VXLAN throughput: tunneld against the kernel's vxlan, iperf3 TCP single stream.

Three topologies, each two network namespaces joined by a veth underlay (MTU
1500), overlay 10.99.N.0/24 on VNI 42, port 4789:

  A  kernel vxlan  <-> kernel vxlan     the anchor
  B  tunneld vxlan <-> kernel vxlan     the subject, interop
  C  tunneld vxlan <-> tunneld vxlan    the subject, both ends ours

All three are built up front and their runs interleaved (A B C A B C ...), so
anchor and subject see the same machine state; each run is `iperf3 -c -t
SECONDS` from the first namespace to the second. Prints the median Gbit/s per
topology and the ratios B/A and C/A, and writes JSON to bench/results/.

The kernel's side of B turns tx offload off on its veth (a userspace
receiver needs finished inner checksums; see Netns.add_kernel_vxlan); A keeps
the kernel's offloads, so the anchor is the kernel at its best.

These machines are noisy: single runs differ by up to 1.5x. Quote medians,
and only ratios measured in the same run.

    sudo .venv/bin/python bench/vxlan_iperf.py [--seconds 10] [--runs 3] [--only A,B]
    ./tunneld.sh bench [same arguments]
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
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tunneld.testbed import Host, Testbed, TestbedError  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TOPOLOGIES = {
    "A": "kernel <-> kernel",
    "B": "tunneld <-> kernel",
    "C": "tunneld <-> tunneld",
}


def tunneld_config(me: Host, other: Host, overlay: str) -> str:
    return textwrap.dedent(f"""\
        [interfaces.vx0]
        type = "vxlan"
        vni = 42
        address = ["{overlay}"]
        local = "{me.ip}"
        port = 4789
        learning = true
        flood = ["{other.ip}"]
    """)


def build(bed: Testbed, key: str, index: int) -> tuple[Host, Host, str]:
    """Two namespaces for topology `key`: (client, server, server's overlay address)."""
    ns1, ns2 = bed.add_ns(f"{key.lower()}1"), bed.add_ns(f"{key.lower()}2")
    ip1, ip2 = f"192.168.{bed.subnet_octet}.1", f"192.168.{bed.subnet_octet}.2"
    link = bed.link(ns1, ns2, f"{ip1}/24", f"{ip2}/24")
    h1 = Host(ns1, link.ifname_a, ip1, "", f"{ip1}/24", "")
    h2 = Host(ns2, link.ifname_b, ip2, "", f"{ip2}/24", "")
    overlays = (f"10.99.{index}.1/24", f"10.99.{index}.2/24")
    for n, (me, other) in enumerate(((h1, h2), (h2, h1))):
        if key == "C" or (key == "B" and n == 0):
            me.ns.spawn_tunneld(tunneld_config(me, other, overlays[n]), f"{key}{n}")
        else:
            me.ns.add_kernel_vxlan(
                "vx0",
                42,
                local=me.ip,
                dev=me.iface,
                flood=[other.ip],
                address=overlays[n],
                userspace_peer=key != "A",
            )
    server = overlays[1].split("/")[0]
    if h1.ns.ping(server, count=3, interval=0.2)[1] == 0:
        raise TestbedError(f"topology {key}: no ping through the tunnel")
    return h1, h2, server


def git_commit() -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent,
    )
    return out.stdout.strip() or "unknown"


def report(samples: dict[str, list[float]]) -> dict[str, float]:
    medians = {k: statistics.median(v) for k, v in samples.items() if v}
    print(f"\n{'topology':<24}{'median Gbit/s':>14}   runs")
    for key, values in samples.items():
        runs = " ".join(f"{v:.2f}" for v in values) or "failed"
        median = f"{medians[key]:.2f}" if key in medians else "-"
        print(f"{key} {TOPOLOGIES[key]:<22}{median:>14}   {runs}")
    if "A" in medians and medians["A"] > 0:
        for key in ("B", "C"):
            if key in medians:
                ratio = medians[key] / medians["A"]
                print(f"ratio {key}/A ({TOPOLOGIES[key]} / kernel): {ratio:.3f}")
    return medians


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default="A,B,C", help="topologies to run, e.g. A,B")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("vxlan_iperf: needs root (network namespaces)", file=sys.stderr)
        return 1
    keys = [k for k in args.only.upper().split(",") if k in TOPOLOGIES]
    samples: dict[str, list[float]] = {k: [] for k in keys}
    errors: dict[str, str] = {}
    with Testbed() as bed:
        pairs = {}
        for index, key in enumerate(keys, start=1):
            try:
                client, server, dst = build(bed, key, index)
                pairs[key] = (client, server, dst)
                print(f"{key} {TOPOLOGIES[key]}: up ({client.ns.name} -> {dst})", flush=True)
            except TestbedError as exc:
                errors[key] = str(exc)
                print(f"{key} {TOPOLOGIES[key]}: FAILED to build: {exc}", file=sys.stderr)
        for run in range(args.runs):
            for key, (client, server, dst) in pairs.items():
                try:
                    gbps = client.ns.iperf3_pair(server.ns, dst, args.seconds)["bits_per_second"]
                except TestbedError as exc:
                    errors[key] = str(exc)
                    print(f"{key} run {run + 1}: FAILED: {exc}", file=sys.stderr)
                    continue
                samples[key].append(gbps / 1e9)
                print(f"{key} run {run + 1}/{args.runs}: {gbps / 1e9:.2f} Gbit/s", flush=True)
    medians = report(samples)
    write_json(args, samples, medians, errors)
    return 0 if not errors else 1


def write_json(args: argparse.Namespace, samples: dict, medians: dict, errors: dict) -> None:
    now = datetime.datetime.now(datetime.UTC)
    doc = {
        "bench": "vxlan_iperf",
        "time": now.isoformat(timespec="seconds"),
        "commit": git_commit(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "seconds": args.seconds,
        "runs": args.runs,
        "topologies": TOPOLOGIES,
        "gbit_per_s": samples,
        "median_gbit_per_s": medians,
        "ratios": {
            f"{k}/A": medians[k] / medians["A"]
            for k in ("B", "C")
            if k in medians and medians.get("A")
        },
        "errors": errors,
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"vxlan_iperf-{now:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    sys.exit(main())
