"""tunneld's nftables table for site gateways: masquerade (SNAT) and published ports (DNAT).

Pure text rendering for `nft -f` (nftables' ruleset syntax, nft(8) "RULESET", "NAT
STATEMENTS", "FIB EXPRESSIONS"); tunneld/kernel/nft.py runs nft, links/nat.py builds the
inputs from the config. Theory of operation: the daemon owns one `inet` table (both
families; NAT hooks in inet need Linux >= 5.2), and every change is one nft transaction
that replaces the whole table: `table inet T {}` (creates it when missing, a no-op
otherwise), `delete table inet T`, then the new table. Nothing outside that table is ever
named, so rules tunneld did not make are never touched. Removal is the first two lines.

- `Masquerade(out, sources)`: `oifname OUT ip saddr {...} masquerade` in a postrouting nat
  chain (priority srcnat), one rule per family that has sources. Interval sets reject
  overlapping elements, so the prefixes are collapsed first.
- `Forward(...)`: `iifname != TUNNEL fib daddr type local PROTO dport P dnat ip to A[:P']`
  in a prerouting nat chain (priority dstnat): a packet to one of the gateway's own
  addresses, arriving from anywhere but the tunnel, goes to the host behind the tunnel.
  No filter rules: an accept in this table cannot override another table's drop anyway.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
FAMILY = "inet"
_NFPROTO = {4: ("ipv4", "ip"), 6: ("ipv6", "ip6")}


@dataclass(frozen=True, slots=True)
class Masquerade:
    """Source NAT for `sources` leaving through device `out` (an interface name)."""

    tunnel: str  # the tunneld interface the sources belong to (for the rule's comment)
    out: str
    sources: tuple[IPNetwork, ...]


@dataclass(frozen=True, slots=True)
class Forward:
    """DNAT of `proto` ports low..high on the gateway to `to` (port `to_port`, None: kept)."""

    tunnel: str
    proto: str  # "tcp" or "udp"
    low: int
    high: int
    to: IPAddress
    to_port: int | None


def table_name(instance: str) -> str:
    """The table's name for one daemon instance: `tunneld_` and the 8 hex digits of a
    SHA-256 over `instance` (the control socket path, unique per instance)."""
    return "tunneld_" + hashlib.sha256(instance.encode()).hexdigest()[:8]


def _quote(text: str) -> str:
    """A double-quoted nft string (interface names may hold characters nft would parse)."""
    return json.dumps(text)


def collapse(networks: Iterable[IPNetwork], version: int) -> list[IPNetwork]:
    """The prefixes of one family, merged so that none overlaps another (sorted)."""
    if version == 4:
        v4 = [n for n in networks if isinstance(n, ipaddress.IPv4Network)]
        return list(ipaddress.collapse_addresses(v4))
    v6 = [n for n in networks if isinstance(n, ipaddress.IPv6Network)]
    return list(ipaddress.collapse_addresses(v6))


def masquerade_rules(m: Masquerade) -> list[str]:
    rules = []
    for version in (4, 6):
        prefixes = collapse(m.sources, version)
        if not prefixes:
            continue
        _, keyword = _NFPROTO[version]
        elements = ", ".join(str(p) for p in prefixes)
        rules.append(f"oifname {_quote(m.out)} {keyword} saddr {{ {elements} }} masquerade "
                     f"comment {_quote(f'{m.tunnel} masquerade')}")  # fmt: skip
    return rules


def forward_rule(f: Forward) -> str:
    nfproto, keyword = _NFPROTO[f.to.version]
    ports = str(f.low) if f.low == f.high else f"{f.low}-{f.high}"
    host = f"[{f.to}]" if f.to.version == 6 and f.to_port is not None else str(f.to)
    target = host if f.to_port is None else f"{host}:{f.to_port}"
    return (f"iifname != {_quote(f.tunnel)} meta nfproto {nfproto} fib daddr type local "
            f"{f.proto} dport {ports} dnat {keyword} to {target} "
            f"comment {_quote(f'{f.tunnel} forward {f.proto} {ports}')}")  # fmt: skip


def removal(table: str) -> str:
    """Delete the table if it exists (one transaction; also when it does not)."""
    return f"table {FAMILY} {table} {{}}\ndelete table {FAMILY} {table}\n"


def ruleset(table: str, masquerades: Sequence[Masquerade], forwards: Sequence[Forward]) -> str:
    """The `nft -f` text that replaces `table` with these rules in one transaction."""
    pre = [forward_rule(f) for f in forwards]
    post = [rule for m in masquerades for rule in masquerade_rules(m)]
    lines = [f"table {FAMILY} {table} {{"]
    for hook, priority, rules in (("prerouting", "dstnat", pre), ("postrouting", "srcnat", post)):
        if not rules:
            continue
        lines.append(f"\tchain {hook} {{")
        lines.append(f"\t\ttype nat hook {hook} priority {priority}; policy accept;")
        lines += [f"\t\t{rule}" for rule in rules]
        lines.append("\t}")
    lines.append("}")
    return removal(table) + "\n".join(lines) + "\n"


def is_empty(masquerades: Sequence[Masquerade], forwards: Sequence[Forward]) -> bool:
    """True when there is no rule to install (then tunneld makes no table at all)."""
    return not forwards and not any(masquerade_rules(m) for m in masquerades)
