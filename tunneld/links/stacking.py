"""Interfaces stacked on interfaces of the same daemon: L2 over WireGuard.

A VXLAN interface whose `local` (or an overlay whose `public_ip`) is one of the
`address`es of another interface in the same config runs over that interface: its
datagrams go through the other one's device (the common "VXLAN over WireGuard" setup:
encrypted L2 between sites). Two consequences, both here:

- start order: the carrier first, since binding the VXLAN socket needs the carrier's
  address up (`start_order`; stop is the reverse, so the carrier also goes last);
- MTU: the stacked interface's default is the carrier's MTU minus its own overhead, for
  WireGuard 1420 - 50 = 1370 on IPv4 (the daemon finds it at start from the carrier's
  device; `check-config` has no devices, so `describe_mtus` computes it from the config).
"""

from __future__ import annotations

from typing import Any

from tunneld.links import pmtu


def underlay_address(iface: Any) -> Any | None:
    """The address an interface's datagrams are sent from (None: WireGuard, wildcard)."""
    if iface.type == "vxlan":
        return iface.local
    if iface.type == "overlay":
        return iface.public_ip
    return None


def carrier(name: str, interfaces: dict[str, Any]) -> str | None:
    """The interface of `interfaces` holding `name`'s underlay address, or None."""
    address = underlay_address(interfaces[name])
    if address is None:
        return None
    for other, iface in interfaces.items():
        if other != name and any(a.ip == address for a in getattr(iface, "address", ())):
            return other
    return None


def start_order(interfaces: dict[str, Any]) -> list[str]:
    """Config order, except that a carrier starts before what it carries."""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in order or name in path:
            return  # done, or a cycle (two interfaces on each other's address): config order
        below = carrier(name, interfaces)
        if below is not None:
            visit(below, (*path, name))
        order.append(name)

    for name in interfaces:
        visit(name, ())
    return order


def describe_mtus(interfaces: dict[str, Any], netlink: Any) -> dict[str, str]:
    """`check-config`'s line per interface whose `mtu` is unset: the MTU it gets on this
    host and how; a stacked interface's from its carrier's (configured or default)."""
    notes: dict[str, str] = {}
    mtus: dict[str, int] = {}
    for name in start_order(interfaces):
        iface, below = interfaces[name], carrier(name, interfaces)
        if below is not None:
            kind = "vxlan" if iface.type == "vxlan" else _overlay_kind(iface)
            family = underlay_address(iface).version
            over = pmtu.OVERHEAD[kind][family]
            mtu = iface.mtu or mtus[below] - over
            if iface.mtu is None:
                how = f"{below}'s mtu: {iface.type} over {interfaces[below].type} {below}"
                notes[name] = f"{mtu} = {mtus[below]} ({how}) - {over} (IPv{family})"
        elif iface.mtu is None:
            notes[name] = pmtu.describe_default_mtu(iface, netlink)
            mtu = int(notes[name].split(" ", 1)[0])
        else:
            mtu = iface.mtu
        mtus[name] = mtu
    return notes


def _overlay_kind(iface: Any) -> str:
    return "overlay" if iface.encryption == "none" else "overlay-wireguard"
