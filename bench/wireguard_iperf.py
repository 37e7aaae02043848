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

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import iperf_compare  # noqa: E402

from tests.netns.wg_helpers import Keys, PeerSpec, WgGo, tunneld_wg_config  # noqa: E402
from tunneld.testbed import Host, Testbed, TestbedError  # noqa: E402

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


def main(argv: list[str] | None = None) -> int:
    return iperf_compare.main(
        "wireguard_iperf", __doc__ or "", TOPOLOGIES, "wireguard-go", build, argv
    )


if __name__ == "__main__":
    sys.exit(main())
