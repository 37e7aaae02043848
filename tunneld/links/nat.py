"""The daemon's NAT table: `masquerade` and `forward` of every interface in one nft table.

Theory of operation. One `NatTable` per daemon, named after its control socket
(proto/nat.py `table_name`: one table per instance, `table inet tunneld_<8 hex>`). It is
made only when some interface sets `masquerade` or `forward` (otherwise nft never runs):

- start: the rules of the whole config, applied in one `nft -f` transaction that replaces
  the table (a table left by a crashed run of this instance is replaced too). A failure
  fails the start (SetupError, exit 1).
- reload (runtime/daemon.py, around the reload transaction): `prepare` renders the new
  file's rules and checks them with `nft -c -f` (a failure rejects the reload, nothing
  changed); once the links are swapped, `commit` renders again from the links that now
  run (an overlay's etcd network is known only once its link is up) and applies that as
  one transaction, or deletes the table when no rule is left. An unchanged ruleset runs
  no nft at all.
- stop: the table is deleted, and nothing else.

What is masqueraded ("the tunnel's traffic"): packets leaving through a `masquerade`
device whose source is in the interface's prefixes: the networks of its `address`
entries, for wireguard also every peer's `allowed_ips` (as the file says; `wg set`
changes do not move the rule), for an overlay the whole overlay network, and its IPv6
network when dual-stack (traffic of every host's subnet that uses this host as its way
out). Sysctls are not changed: forwarding
off in this namespace gets a warning per family whenever the table is applied (wg-quick
leaves it to the admin too).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from tunneld.kernel import netlink as kernel_netlink
from tunneld.kernel.nft import Nft
from tunneld.proto import nat

log = logging.getLogger("tunneld")

_FORWARDING = {4: "net.ipv4.ip_forward", 6: "net.ipv6.conf.all.forwarding"}


def sources(cfg: Any, link: Any = None) -> list[nat.IPNetwork]:
    """The prefixes of interface `cfg` whose traffic `masquerade` rewrites (see above);
    `link`: its running link, for an overlay whose network comes from etcd."""
    nets: list[nat.IPNetwork] = [a.network for a in getattr(cfg, "address", ())]
    for peer in getattr(cfg, "peers", ()):
        nets += peer.allowed_ips
    if cfg.type == "overlay":
        network = cfg.network
        if network is None and link is not None:
            network = getattr(getattr(link, "registry", None), "network", None)
        if network is not None:
            nets.append(network)
        network6 = getattr(cfg, "ipv6_network", None)  # dual stack: the IPv6 network too
        if network6 is None and link is not None:
            network6 = getattr(getattr(link, "registry", None), "network6", None)
        if network6 is not None:
            nets.append(network6)
    return nets


def rules(cfg: Any, links: Mapping[str, Any]) -> tuple[list[nat.Masquerade], list[nat.Forward]]:
    masquerades, forwards = [], []
    for name, iface in cfg.interfaces.items():
        found = tuple(sources(iface, links.get(name))) if iface.masquerade else ()
        masquerades += [nat.Masquerade(name, out, found) for out in iface.masquerade]
        for fwd in iface.forward:
            (low, high), (to, to_port) = fwd.ports, fwd.target
            forwards.append(nat.Forward(name, fwd.proto, low, high, to, to_port))
    return masquerades, forwards


class NatTable:
    nft: Any = Nft()  # kernel seam; tests put a kernel.nft.FakeNft here
    sysctl: Any = staticmethod(kernel_netlink.sysctl)

    def __init__(self, instance: str) -> None:
        self.table = nat.table_name(instance)
        self.text: str | None = None  # the ruleset applied last; None: no table of ours
        self.rules: tuple[list[nat.Masquerade], list[nat.Forward]] = ([], [])  # in force

    def render(self, cfg: Any, links: Mapping[str, Any]) -> str | None:
        """The `nft -f` text for `cfg`, or None when it has no NAT rule at all."""
        masquerades, forwards = rules(cfg, links)
        if nat.is_empty(masquerades, forwards):
            return None
        return nat.ruleset(self.table, masquerades, forwards)

    async def start(self, cfg: Any, links: Mapping[str, Any]) -> None:
        """Install the table for `cfg` (nothing when it has no NAT rule). SetupError."""
        text = self.render(cfg, links)
        if text is not None:
            await self._apply(text, cfg, links)

    async def prepare(self, cfg: Any, links: Mapping[str, Any]) -> None:
        """Reload, phase 1: check the new rules in the kernel without applying them."""
        text = self.render(cfg, links)
        if text is not None and text != self.text:
            await self.nft.check(text)

    async def commit(self, cfg: Any, links: Mapping[str, Any]) -> None:
        """Reload, after the swap: apply the new rules (or remove the table). Never raises:
        a failure (which the check makes unlikely) is logged and the old table stays."""
        text = self.render(cfg, links)
        if text == self.text:
            return
        try:
            if text is None:
                await self.stop()
            else:
                await self._apply(text, cfg, links)
        except Exception as exc:
            log.error("nat: table inet %s not changed: %s", self.table, exc,
                      extra={"event": "nat_failed"})  # fmt: skip

    async def stop(self) -> None:
        """Delete our table (only ours). Never raises."""
        if self.text is None:
            return
        try:
            await self.nft.apply(nat.removal(self.table))
            log.info("nat: table inet %s removed", self.table)
        except Exception as exc:
            log.error("nat: could not remove table inet %s: %s", self.table, exc)
        self.text, self.rules = None, ([], [])

    async def _apply(self, text: str, cfg: Any, links: Mapping[str, Any]) -> None:
        await self.nft.apply(text)
        self.text = text
        masquerades, forwards = self.rules = rules(cfg, links)
        count = sum(len(nat.masquerade_rules(m)) for m in masquerades)
        log.info("nat: table inet %s: %d masquerade and %d forward rule(s)", self.table,
                 count, len(forwards), extra={"event": "nat"})  # fmt: skip
        self._warn_forwarding(masquerades, forwards)

    def annotate(self, interfaces: dict[str, dict[str, Any]]) -> None:
        """`show`: each interface with rules in force gets a `nat` entry: the table, its
        masquerades (device and the source prefixes) and its forwards."""
        masquerades, forwards = self.rules
        for name, entry in interfaces.items():
            mine = [m for m in masquerades if m.tunnel == name]
            fwds = [f for f in forwards if f.tunnel == name]
            if not mine and not fwds:
                continue
            entry["nat"] = {
                "table": f"inet {self.table}",
                "masquerade": [{"out": m.out, "sources": [str(p) for v in (4, 6)
                                                          for p in nat.collapse(m.sources, v)]}
                               for m in mine],
                "forward": [{"proto": f.proto, "port": _ports(f), "to": _target(f)}
                            for f in fwds],
            }  # fmt: skip

    def _warn_forwarding(self, masquerades: list[nat.Masquerade],
                         forwards: list[nat.Forward]) -> None:  # fmt: skip
        families = {f.to.version for f in forwards}
        for m in masquerades:
            families |= {v for v in (4, 6) if nat.collapse(m.sources, v)}
        for version in sorted(families):
            key = _FORWARDING[version]
            if self.sysctl(key) == "0":
                log.warning("nat: %s is 0: masqueraded and forwarded IPv%d traffic is not "
                            "routed through this host; set %s=1 (tunneld does not change "
                            "sysctls)", key, version, key)  # fmt: skip


def _ports(f: nat.Forward) -> str:
    return str(f.low) if f.low == f.high else f"{f.low}-{f.high}"


def _target(f: nat.Forward) -> str:
    if f.to_port is None:
        return str(f.to)
    return f"[{f.to}]:{f.to_port}" if f.to.version == 6 else f"{f.to}:{f.to_port}"
