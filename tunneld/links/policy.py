"""wg-quick's policy routing for full tunnels: the `table` and `fwmark` keys of a WireGuard
interface.

Theory of operation (wg-quick(8), `add_route` and `add_default`). Routes for allowed_ips
go to the main table, except:
- `table = "off"`: no routes at all;
- `table = N`: every route into table N, and no rules (the user brings their own);
- `table = "auto"` (default) and a peer allows a /0: that family's /0 goes to its own table
  instead of replacing the main table's default route. The table is `fwmark` if set, else
  the first of 51820, 51821, ... that holds no route, and that number is also the mark put
  on the UDP sockets (SO_MARK). Two rules per family with a /0 then read:

      32764: from all lookup main suppress_prefixlength 0
      32765: not from all fwmark 0xca6c lookup 51820

  so unmarked traffic (everything but tunneld's own datagrams) uses the tunnel's table,
  while the main table still answers for everything but its default route. tunneld's sealed
  datagrams carry the mark and skip the tunnel: the endpoint stays reachable. With IPv4,
  net.ipv4.conf.all.src_valid_mark is set to 1 (as wg-quick does; in this network
  namespace only, and put back on stop when tunneld changed it).

Rules are added with the priority the kernel would give (`ip rule add` without `pref`) and
removed on stop by exactly those selectors and priorities; routes go with the device. A run
that was killed could not remove its rules, and the next one's would go in front of them,
a pair more with every crash: so at start, while the table holds no route (nothing routes
through it), the rules of exactly this pattern for the table and mark are removed first
(`leftover_rules`: the table's rule at P, and the suppress_prefixlength 0 at P - 1 only
with it; wg-quick's del_if removes such rules by their table too).

wg-quick's nftables part comes along, in one table per interface (`inet tunneld-IFACE`,
made in one `nft -f` transaction at start, deleted at stop; `firewall_ruleset`): outgoing
UDP with the mark saves it as the connection's mark, incoming UDP gets its connection's
mark back, so the peer's replies are checked by the reverse-path filter (with
src_valid_mark) against the table the marked datagrams used: without it a strict
rp_filter = 1 drops every reply from an endpoint reached through the main default route.
And packets for the tunnel's own addresses arriving on another device from a non-local
source are dropped (wg-quick's raw-table anti-spoofing). Without nft(8) this is skipped
with a warning (loose rp_filter = 2 then works). Nothing else is touched.

All methods block on netlink: the link calls them through `kernel.netlink.off_loop`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Iterable
from typing import Any

from tunneld.errors import SetupError
from tunneld.kernel.netlink import RT_TABLE_MAIN, Rule

log = logging.getLogger("tunneld.wireguard")

AUTO_TABLE_FIRST = 51820  # wg-quick's first table (and mark) for a full tunnel
AUTO_TABLE_TRIES = 1000
SRC_VALID_MARK = "net.ipv4.conf.all.src_valid_mark"
# per netlink seam (one network namespace): the PolicyRouting objects that need
# src_valid_mark, and its value before the first of them set it (put back after the last)
_src_valid_mark: dict[Any, tuple[list[Any], str | None]] = {}


def firewall_table(dev: str) -> str:
    """`tunneld-IFACE` (a hash of the name when it is no plain nft identifier)."""
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", dev):
        return f"tunneld-{dev}"
    return "tunneld-" + hashlib.sha256(dev.encode()).hexdigest()[:8]


def firewall_ruleset(dev: str, mark: int, addresses: Iterable[Any]) -> str:
    """The `nft -f` text that (re)creates the interface's table in one transaction: wg-quick's
    add_default rules, in an inet table. `addresses`: the device's own addresses of the
    families that have a full tunnel."""
    table, name = firewall_table(dev), json.dumps(dev)
    drops = [f"\t\tiifname != {name} {'ip' if a.version == 4 else 'ip6'} daddr {a.ip} "
             f"fib saddr type != local drop" for a in addresses]  # fmt: skip
    return "\n".join([
        f"table inet {table} {{}}", f"delete table inet {table}", f"table inet {table} {{",
        "\tchain preraw {", "\t\ttype filter hook prerouting priority -300; policy accept;",
        *drops, "\t}",
        "\tchain premangle {", "\t\ttype filter hook prerouting priority -150; policy accept;",
        "\t\tmeta l4proto udp meta mark set ct mark", "\t}",
        "\tchain postmangle {",
        "\t\ttype filter hook postrouting priority -150; policy accept;",
        f"\t\tmeta l4proto udp meta mark {mark} ct mark set meta mark", "\t}",
        "}", "",
    ])  # fmt: skip


def firewall_removal(dev: str) -> str:
    table = firewall_table(dev)
    return f"table inet {table} {{}}\ndelete table inet {table}\n"


def has_default(nets: Iterable[Any]) -> bool:
    return any(net.prefixlen == 0 for net in nets)


def _pick_table(netlink: Any) -> int:
    """wg-quick: 51820, or the next number whose table holds no route."""
    for table in range(AUTO_TABLE_FIRST, AUTO_TABLE_FIRST + AUTO_TABLE_TRIES):
        if not netlink.table_in_use(table):
            return table
    raise SetupError(f"no free routing table in {AUTO_TABLE_FIRST}..{table} for a full tunnel; "
                     'set table = N or fwmark = N')  # fmt: skip


def leftover_rules(rules: Iterable[Rule | None], table: int, mark: int) -> list[Rule]:
    """Of one family's `rules` (as netlink.list_rules gives them), the ones `_add_family`
    adds for `table` and `mark`: each `not fwmark MARK lookup TABLE` at priority P, and
    with it the `lookup main suppress_prefixlength 0` at P - 1. A suppress rule elsewhere
    (another interface's, the user's) is not one of them."""
    rules = [r for r in rules if r is not None]
    found = []
    for rule in rules:
        if rule.priority is None or dataclasses.replace(rule, priority=None) != Rule(
            rule.family, table, fwmark=mark, invert=True
        ):
            continue
        found.append(rule)
        suppress = Rule(rule.family, RT_TABLE_MAIN, suppress_prefixlength=0,
                        priority=rule.priority - 1)  # fmt: skip
        if suppress in rules and suppress not in found:
            found.append(suppress)
    return found


class PolicyRouting:
    """Where one interface's allowed_ips routes go, and the rules a full tunnel needs.

    `mark`: the fwmark for the UDP sockets (0: none). `table`: the table that /0 routes (auto
    mode) or all routes (numeric mode) go to; None: the main table."""

    def __init__(self, name: str, netlink: Any, mode: str | int, fwmark: int,
                 table: int | None) -> None:  # fmt: skip
        self.name, self.netlink, self.mode = name, netlink, mode
        self.mark, self.table = fwmark, table
        self.rules: dict[int, list[Rule]] = {}  # family -> the rules added, with priorities
        self.firewall: str | None = None  # the nft table made for a full tunnel, by `dev`

    @classmethod
    def plan(cls, name: str, netlink: Any, cfg: Any, kernel_routes: bool = True) -> PolicyRouting:
        """The policy for `cfg` (a WireguardConfig) at start. `kernel_routes` False (tunneld-wg:
        wg-quick routes): no routes and no rules, only the configured fwmark."""
        mode: str | int = cfg.table if kernel_routes else "off"
        nets = [net for p in cfg.peers for net in p.allowed_ips]
        if isinstance(mode, int):
            return cls(name, netlink, mode, cfg.fwmark, mode)
        if mode == "auto" and has_default(nets):
            table = cfg.fwmark or _pick_table(netlink)
            policy = cls(name, netlink, mode, table, table)
            policy.remove_leftovers()
            return policy
        return cls(name, netlink, mode, cfg.fwmark, None)

    def remove_leftovers(self) -> None:
        """Start of a full tunnel: the rules a killed run left for this table and mark (see
        the module docstring). Not while the table holds routes: then something routes
        through it, and its rules are live."""
        assert self.table is not None
        if self.netlink.table_in_use(self.table):
            return
        for family in (4, 6):
            for rule in leftover_rules(self.netlink.list_rules(family), self.table, self.mark):
                self.netlink.remove_rule(rule)
                log.warning("%s: removed a rule left behind by an earlier run: %s", self.name,
                            rule)  # fmt: skip

    def needs_rebuild(self, cfg: Any) -> bool:
        """A reload to `cfg` gains a /0 while no table was set aside for one (auto mode):
        the mark must be chosen and put on the sockets first, which a rebuild does."""
        nets = [net for p in cfg.peers for net in p.allowed_ips]
        return self.mode == "auto" and self.table is None and has_default(nets)

    def _table_of(self, net: Any) -> int | None:
        if isinstance(self.mode, int):
            return self.mode
        return self.table if net.prefixlen == 0 else None

    def add_routes(self, dev: str, nets: Iterable[Any]) -> None:
        """Routes through `dev` for `nets` (each into its table), then the rules they need."""
        if self.mode == "off":
            return
        for table in {self._table_of(net) for net in nets}:
            group = [net for net in nets if self._table_of(net) == table]
            for net in group:
                if net.prefixlen == 0 and table is None:
                    log.warning("%s: routing all of IPv%d through the tunnel in the main table "
                                "(allowed_ips %s, table = %s); the peer endpoints must stay "
                                "reachable outside it", self.name, net.version, net,
                                self.mode)  # fmt: skip
            self.netlink.add_routes(dev, group, table=table)

    def remove_routes(self, dev: str, nets: Iterable[Any]) -> None:
        if self.mode == "off":
            return
        nets = list(nets)
        for table in {self._table_of(net) for net in nets}:
            group = [net for net in nets if self._table_of(net) == table]
            self.netlink.remove_routes(dev, group, table=table)

    def sync_rules(self, nets: Iterable[Any]) -> None:
        """Auto mode with a table: the two rules for each family that has a /0 in `nets`,
        none for the others (added and removed as the peers' /0 come and go)."""
        if self.mode != "auto" or self.table is None:
            return
        want = {net.version for net in nets if net.prefixlen == 0}
        for family in sorted(self.rules.keys() - want):
            self._remove_family(family)
        for family in sorted(want - self.rules.keys()):
            self._add_family(family)

    def _add_family(self, family: int) -> None:
        assert self.table is not None
        added = self.rules.setdefault(family, [])
        # wg-quick's order: the table's rule, then suppress_prefixlength (which so comes first)
        for rule in (Rule(family, self.table, fwmark=self.mark, invert=True),
                     Rule(family, RT_TABLE_MAIN, suppress_prefixlength=0)):  # fmt: skip
            added.append(self.netlink.add_rule(rule))
        log.info("%s: full tunnel for IPv%d: table %d, fwmark %#x (%s)", self.name, family,
                 self.table, self.mark, "; ".join(map(str, added)))  # fmt: skip
        if family == 4:
            self._need_src_valid_mark()

    def _remove_family(self, family: int) -> None:
        for rule in reversed(self.rules.pop(family, [])):
            try:
                self.netlink.remove_rule(rule)
            except SetupError as exc:
                log.error("%s: %s", self.name, exc)
        if family == 4:
            self._release_src_valid_mark()

    def _need_src_valid_mark(self) -> None:
        if self.netlink not in _src_valid_mark:
            _src_valid_mark[self.netlink] = ([], self.netlink.sysctl(SRC_VALID_MARK, "1"))
        _src_valid_mark[self.netlink][0].append(self)

    def _release_src_valid_mark(self) -> None:
        users, before = _src_valid_mark.get(self.netlink, ([], None))
        if self not in users:
            return
        users.remove(self)
        if not users:
            del _src_valid_mark[self.netlink]
            try:
                if before is not None:
                    self.netlink.sysctl(SRC_VALID_MARK, before)
            except SetupError as exc:
                log.error("%s: %s", self.name, exc)

    def teardown(self) -> None:
        """Stop: every rule this interface added (its routes go with the device). Never
        raises; idempotent."""
        for family in sorted(self.rules):
            self._remove_family(family)

    async def install_firewall(self, nft: Any, dev: str, addresses: Iterable[Any]) -> None:
        """Once the rules are in (start): the connmark table for the full tunnel's families.
        Without nft a warning; an nft that fails fails the start (SetupError)."""
        if not self.rules:
            return
        if not nft.available():
            log.warning("%s: nft not found: no connmark rules for the full tunnel, so a strict "
                        "reverse-path filter (rp_filter = 1) drops the peer's replies "
                        "(apt-get install nftables, or rp_filter = 2)", self.name)  # fmt: skip
            return
        own = [a for a in addresses if a.version in self.rules]
        self.firewall = dev
        await nft.apply(firewall_ruleset(dev, self.mark, own))
        log.info("%s: nft table inet %s: connmark for fwmark %#x", self.name,
                 firewall_table(dev), self.mark)  # fmt: skip

    async def remove_firewall(self, nft: Any) -> None:
        """Stop: delete the table (never raises)."""
        dev, self.firewall = self.firewall, None
        if dev is None:
            return
        try:
            await nft.apply(firewall_removal(dev))
        except SetupError as exc:
            log.error("%s: %s", self.name, exc)

    def show(self) -> str | int:
        """`table` in `tunneld show`: the number routes go to, "main" or "off"."""
        if self.mode == "off":
            return "off"
        return self.table if self.table is not None else "main"
