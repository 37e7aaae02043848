"""`masquerade` and `[[interfaces.X.forward]]`: NAT for site gateways (docs/config.md, "NAT").

Both keys exist on every interface type. `masquerade` names the devices out of which the
tunnel's traffic is source-NATed; each `forward` entry publishes a port of the gateway to a
host behind the tunnel. The rules themselves are rendered by tunneld/proto/nat.py.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from tunneld.config.fields import _Ctx, _describe, _ifname, _join, _Table
from tunneld.config.schema import ForwardConfig, InterfaceConfig

NAT_KEYS = ("masquerade", "forward")
FORWARD_KEYS = ("proto", "port", "to")
PROTOS = ("tcp", "udp")
_RANGE = re.compile(r"([0-9]{1,5})-([0-9]{1,5})")


def _masquerade(t: _Table, own: str) -> tuple[str, ...]:
    """`masquerade`: one device name or a list of them (not this interface, no repeats)."""
    value = t.data.get("masquerade", [])
    if isinstance(value, str):
        items = [(t.at("masquerade"), value)]
    elif isinstance(value, list):
        items = t.get_list("masquerade", str)
    else:
        t.ctx.fail(t.at("masquerade"), f"expected an interface name or an array of them, "
                                       f"got {_describe(value)}")  # fmt: skip
    seen: dict[str, str] = {}
    for path, name in items:
        _ifname(t.ctx, path, name)
        _nft_name(t.ctx, path, name)
        if name == own:
            t.ctx.fail(path, "names this interface itself; give the device the traffic leaves "
                             "through (like 'eth0')")  # fmt: skip
        if name in seen:
            t.ctx.fail(path, f"'{name}' is listed twice (also {seen[name]})")
        seen[name] = path
    return tuple(seen)


def _nft_name(ctx: _Ctx, path: str, name: str) -> None:
    """A device name nft can match as a string (a trailing `*` is nft's wildcard)."""
    if '"' in name or "\\" in name:
        ctx.fail(path, f"{name!r}: nftables cannot match a device name holding '\"' or '\\'")


def _forwards(t: _Table, own: str) -> tuple[ForwardConfig, ...]:
    out: list[ForwardConfig] = []
    if t.data.get("forward"):  # the rules match `iifname != <this interface>`
        _nft_name(t.ctx, t.at("forward"), own)
        if "*" in own:
            t.ctx.fail(t.at("forward"), f"{own!r}: nftables would read '*' as a wildcard")
    for path, item in t.get_list("forward", dict):
        f = _Table(t.ctx, item, path, FORWARD_KEYS)
        proto = f.get("proto", str)
        if proto not in PROTOS:
            t.ctx.fail(f.at("proto"), f"{proto!r} is not one of: {', '.join(PROTOS)}")
        out.append(ForwardConfig(proto=proto, port=_port_range(f), to=_target(f)))
    return tuple(out)


def _port_range(f: _Table) -> int | str:
    """`port`: an integer 1..65535 or "low-high" (low < high)."""
    ctx, path = f.ctx, f.at("port")
    if not f.has("port"):
        ctx.fail(path, "missing required key")
    value = f.data["port"]
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= 65535:
            ctx.fail(path, f"{value} is out of range 1..65535")
        return value
    if not isinstance(value, str):
        ctx.fail(path, f'expected a port number or a range "low-high", got {_describe(value)}')
    match = _RANGE.fullmatch(value.replace(" ", ""))
    if match is None:
        ctx.fail(path, f'{value!r} is not a port or a range like "8000-8010"')
    low, high = int(match.group(1)), int(match.group(2))
    if not 1 <= low < high <= 65535:
        ctx.fail(path, f"{value!r}: a range needs 1 <= low < high <= 65535")
    return f"{low}-{high}"


def _target(f: _Table) -> str:
    """`to`: "10.77.0.2:8080", "[fd00::2]:8080", or an address alone (the port is kept)."""
    ctx, path, text = f.ctx, f.at("to"), f.get("to", str)
    host, port = text, None
    bracketed = re.fullmatch(r"\[([^\]]*)\](?::([0-9]{1,5}))?", text)
    if bracketed:
        host, port = bracketed.group(1), bracketed.group(2)
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        ctx.fail(path, f"{text!r}: {host!r} is not an IP address (write 10.77.0.2:8080, "
                       f"[fd00::2]:8080 or an address alone)")  # fmt: skip
    if addr.is_multicast or addr.is_unspecified or addr.is_loopback:
        ctx.fail(path, f"{text!r} is not a unicast address of another host")
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        ctx.fail(path, f"{text!r}: port {port!r} is out of range 1..65535")
    if port is None:
        return str(addr)
    return f"[{addr}]:{int(port)}" if addr.version == 6 else f"{addr}:{int(port)}"


def nat_fields(t: _Table, name: str) -> dict[str, Any]:
    """The NAT keys of interface `name`'s table, for its config's constructor."""
    return {"masquerade": _masquerade(t, name), "forward": _forwards(t, name)}


def check_forwards(ctx: _Ctx, items: tuple[tuple[str, InterfaceConfig], ...]) -> None:
    """Across the whole file: no two forwards of one protocol and family share a port (the
    first rule would win silently)."""
    taken: list[tuple[str, int, int, int, str]] = []  # (proto, family, low, high, key path)
    for name, cfg in items:
        for i, fwd in enumerate(cfg.forward):
            path = f"{_join(_join('interfaces', name), 'forward')}[{i}].port"
            low, high = fwd.ports
            family = fwd.target[0].version
            for proto, fam, lo, hi, other in taken:
                if proto == fwd.proto and fam == family and low <= hi and lo <= high:
                    ctx.fail(path, f"{fwd.proto} port {fwd.port} (IPv{family}) overlaps "
                                   f"{other}")  # fmt: skip
            taken.append((fwd.proto, family, low, high, path))


def check_sources(ctx: _Ctx, items: tuple[tuple[str, InterfaceConfig], ...]) -> None:
    """`masquerade` needs a source prefix: an `address`, a wireguard peer's `allowed_ips`,
    or the overlay's network (always there: given, or from etcd)."""
    for name, cfg in items:
        if not cfg.masquerade or cfg.type == "overlay" or cfg.address:
            continue
        if any(p.allowed_ips for p in getattr(cfg, "peers", ())):
            continue
        extra = " and no peer allowed_ips" if cfg.type == "wireguard" else ""
        ctx.fail(_join(_join("interfaces", name), "masquerade"),
                 f"nothing to masquerade: the interface has no address{extra}")  # fmt: skip
