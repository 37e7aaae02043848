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
    (`./tunneld.sh bench` runs bench/suite.py, which covers these cases and more)
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import iperf_compare  # noqa: E402

from tunneld.testbed import Host, Testbed, TestbedError  # noqa: E402

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


def main(argv: list[str] | None = None) -> int:
    return iperf_compare.main("vxlan_iperf", __doc__ or "", TOPOLOGIES, "kernel", build, argv)


if __name__ == "__main__":
    sys.exit(main())
