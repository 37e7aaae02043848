"""`tunneld show` for people: the JSON of DESIGN.md laid out like `wg show` / `bridge fdb show`."""

from __future__ import annotations

import time
from typing import Any


def format_show(reply: dict[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    blocks = []
    for name, iface in reply.get("interfaces", {}).items():
        kind = iface.get("type")
        body = {"vxlan": _vxlan, "wireguard": _wireguard, "overlay": _overlay}.get(kind, _generic)
        blocks.append("\n".join(body(name, iface, now)))
    return "\n\n".join(blocks) + ("\n" if blocks else "")


def _counters(c: dict[str, Any] | None) -> list[str]:
    if not c:
        return []
    lines = [
        f"  transfer: {_bytes(c.get('rx_bytes', 0))} received ({c.get('rx_packets', 0)} packets), "
        f"{_bytes(c.get('tx_bytes', 0))} sent ({c.get('tx_packets', 0)} packets)"
    ]
    for direction in ("rx_dropped", "tx_dropped"):
        nonzero = {k: v for k, v in c.get(direction, {}).items() if v}
        if nonzero:
            listed = ", ".join(f"{k} {v}" for k, v in sorted(nonzero.items()))
            lines.append(f"  {direction.replace('_', ' ')}: {listed}")
    return lines


def _mtu(d: dict[str, Any]) -> list[str]:
    """The MTU line: the device MTU (and how a default was found), MSS clamping, paths."""
    if d.get("mtu") is None:
        return []
    source = d.get("mtu_source")
    line = f"  mtu: {d['mtu']}" + (f" ({source})" if source and source != "config" else "")
    if d.get("mss_clamp"):
        line += f"  mss clamp: {'/'.join(str(m) for m in d['mss_clamp'])}"
    lines = [line]
    paths = d.get("path_mtu") or {}
    if paths or d.get("icmp_too_big_sent"):
        listed = ", ".join(f"{dst} {mtu}" for dst, mtu in sorted(paths.items())) or "none"
        lines.append(f"  path mtu: {listed}  (too-big ICMP sent: {d.get('icmp_too_big_sent', 0)})")
    return lines


def _nat(d: dict[str, Any]) -> list[str]:
    """The NAT lines (links/nat.py): masquerade out of a device, published ports."""
    nat = d.get("nat") or {}
    lines = [f"  masquerade: out {m['out']} from {', '.join(m['sources'])}"
             for m in nat.get("masquerade", [])]  # fmt: skip
    lines += [f"  forward: {f['proto']} {f['port']} -> {f['to']}" for f in nat.get("forward", [])]
    return lines


def _vxlan(name: str, v: dict[str, Any], now: float) -> list[str]:
    lines = [f"interface: {name} (vxlan)", f"  vni: {v.get('vni')}  port: {v.get('port')}"]
    if v.get("flood"):
        lines.append(f"  flood: {', '.join(v['flood'])}")
    lines += _mtu(v)
    lines += _nat(v)
    lines += _counters(v.get("counters"))
    lines.append("  fdb:")
    for e in v.get("fdb", []):
        state = "static" if e.get("static") else f"age {e.get('age')}s"
        lines.append(f"    {e['mac']} dst {e['remote']} {state}")
    for remote in v.get("flood", []):
        lines.append(f"    00:00:00:00:00:00 dst {remote} flood")
    return lines


def _wireguard(name: str, w: dict[str, Any], now: float) -> list[str]:
    lines = [f"interface: {name} (wireguard)", f"  public key: {w.get('public_key')}"]
    lines.append("  private key: (hidden)")
    lines.append(f"  listening port: {w.get('listen_port')}")
    if w.get("fwmark"):  # as wg show: only when set
        lines.append(f"  fwmark: {w['fwmark']:#x}")
    if w.get("table") not in (None, "main"):  # policy routing (links/policy.py)
        lines.append(f"  routing table: {w['table']}")
    lines += _mtu(w)
    lines += _nat(w)
    lines += _counters(w.get("counters"))
    for p in w.get("peers", []):
        lines += ["", f"peer: {p.get('public_key')}"]
        if p.get("endpoint_name"):  # a DNS name (links/wgdns.py) and what it resolved to
            lines.append(f"  endpoint: {p['endpoint_name']} ({p.get('endpoint') or 'unresolved'})")
        elif p.get("endpoint"):
            lines.append(f"  endpoint: {p['endpoint']}")
        lines.append(f"  allowed ips: {', '.join(p.get('allowed_ips', [])) or '(none)'}")
        if p.get("latest_handshake"):
            lines.append(f"  latest handshake: {_ago(now - p['latest_handshake'])}")
        if p.get("rx_bytes") or p.get("tx_bytes"):
            lines.append(
                f"  transfer: {_bytes(p.get('rx_bytes', 0))} received, "
                f"{_bytes(p.get('tx_bytes', 0))} sent"
            )
        if p.get("persistent_keepalive"):
            lines.append(f"  persistent keepalive: every {p['persistent_keepalive']} seconds")
    return lines


def _overlay(name: str, o: dict[str, Any], now: float) -> list[str]:
    lines = [
        f"interface: {name} (overlay)",
        f"  network: {o.get('network')}  subnet: {o.get('subnet')}",
    ]
    if o.get("ipv6_network"):
        lines.append(f"  ipv6 network: {o['ipv6_network']}  ipv6 subnet: {o.get('ipv6_subnet')}")
    reg = o.get("registry") or {}
    if reg:
        state = "connected" if reg.get("connected") else "disconnected"
        expiry = reg.get("lease_expiry")
        lease = f", lease expires in {_ago(expiry - now, suffix='')}" if expiry else ""
        lines.append(f"  registry: {reg.get('kind')} ({state}{lease})")
    if o.get("encryption"):
        lines.append(f"  encryption: {o['encryption']}")
    if o.get("public_key"):
        lines.append(f"  public key: {o['public_key']}  listening port: {o.get('listen_port')}")
    lines += _mtu(o)
    lines += _nat(o)
    lines += _counters(o.get("counters"))
    lines.append("  routes:")
    for r in o.get("routes", []):
        six = f" + {r['ipv6_subnet']}" if r.get("ipv6_subnet") else ""
        lines.append(f"    {r['subnet']}{six} via {r['public_ip']}{_route_peer(r, now)}")
    return lines


def _route_peer(r: dict[str, Any], now: float) -> str:
    """The WireGuard peer behind an overlay route, when the transport is encrypted."""
    if not r.get("public_key"):
        return ""
    shake = r.get("latest_handshake")
    return (
        f" peer {r['public_key'][:8]}… handshake "
        f"{_ago(now - shake) if shake else 'never'}, "
        f"{_bytes(r.get('rx_bytes', 0))} received, {_bytes(r.get('tx_bytes', 0))} sent"
    )


def _generic(name: str, d: dict[str, Any], now: float) -> list[str]:
    return [f"interface: {name} ({d.get('type')})"] + _counters(d.get("counters"))


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.2f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.2f} TiB"


def _ago(seconds: float, suffix: str = " ago") -> str:
    seconds = max(0, int(seconds))
    parts = []
    for unit, size in (("hour", 3600), ("minute", 60), ("second", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count} {unit}{'s' if count != 1 else ''}")
    return (", ".join(parts) or "0 seconds") + suffix
