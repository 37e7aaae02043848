"""Underlay faults for the netns tests: random loss and partitions with nftables, a link down.

This kernel has no netem (sch_netem), so loss is an nftables rule in a namespace of the
testbed's own: `udp dport {P...} numgen random mod 100 < N counter drop` in a table named
after the run's prefix, by default on the relay's output hook: there every datagram is its
own packet. On an input hook a UDP GSO super-datagram from an offloading sender is still one
packet (the receiving socket splits it later), so one drop there loses a whole burst, and
5% of the packets is far less than 5% of the datagrams. A `forward` hook suits datagrams
routed through a middle namespace. The rule's counter tells the test how many packets it
really dropped. Needs `nft` (Debian: nftables). Reordering and duplication come from
relay.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tunneld.testbed.common import TestbedError

if TYPE_CHECKING:
    from tunneld.testbed.netns import Netns


class NftLoss:
    """Drop `percent`% of the UDP packets to `ports` passing hook `hook` in `ns`."""

    def __init__(self, ns: Netns, ports: Sequence[int], percent: int,
                 hook: str = "output") -> None:  # fmt: skip
        if not 0 < percent < 100:
            raise ValueError(f"loss percent {percent}: 1..99")
        if hook not in ("input", "output", "forward", "prerouting", "postrouting"):
            raise ValueError(f"hook {hook!r}: input, output, forward, prerouting or postrouting")
        self.ns, self.ports, self.percent, self.hook = ns, list(ports), percent, hook
        self.table = f"{ns.testbed.prefix}_loss"
        self.active = False

    def __enter__(self) -> NftLoss:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _nft(self, *args: str) -> str:
        return self.ns.run(["nft", *args]).stdout

    def install(self) -> None:
        ports = ", ".join(map(str, self.ports))
        script = (
            f"table inet {self.table} {{\n"
            f"  chain loss {{ type filter hook {self.hook} priority 0; policy accept;\n"
            f"    udp dport {{ {ports} }} numgen random mod 100 < {self.percent} counter drop\n"
            f"  }}\n}}\n"
        )
        self.ns.run(["nft", "-f", "-"], input=script)
        self.active = True

    def dropped(self) -> int:
        """Datagrams the rule has dropped so far."""
        data = json.loads(self._nft("-j", "list", "table", "inet", self.table))
        for item in data["nftables"]:
            for expr in item.get("rule", {}).get("expr", []):
                if "counter" in expr:
                    return int(expr["counter"]["packets"])
        raise TestbedError(f"no counter in nft table {self.table} in {self.ns.name}")

    def remove(self) -> None:
        """Delete the table (idempotent)."""
        if self.active:
            self.ns.run(["nft", "delete", "table", "inet", self.table], check=False)
            self.active = False


class NftPartition:
    """Silently drop every TCP segment to or from local `port` in `ns` (input and output
    hooks), as a network partition would: no FIN, no RST, no ICMP. A context manager."""

    def __init__(self, ns: Netns, port: int) -> None:
        self.ns, self.port = ns, port
        self.table = f"{ns.testbed.prefix}_part"

    def __enter__(self) -> NftPartition:
        script = (
            f"table inet {self.table} {{\n"
            f"  chain in {{ type filter hook input priority 0; tcp dport {self.port} drop; }}\n"
            f"  chain out {{ type filter hook output priority 0; tcp sport {self.port} drop; }}\n"
            f"}}\n"
        )
        self.ns.run(["nft", "-f", "-"], input=script)
        return self

    def __exit__(self, *exc: object) -> None:
        self.ns.run(["nft", "delete", "table", "inet", self.table], check=False)


def link_down_for(ns: Netns, ifname: str, seconds: float) -> float:
    """Take `ifname` in `ns` down for `seconds`, bring it up; returns the time.monotonic()
    at which it was up again."""
    ns.ip("link", "set", ifname, "down")
    try:
        time.sleep(seconds)
    finally:
        ns.ip("link", "set", ifname, "up")
    return time.monotonic()
