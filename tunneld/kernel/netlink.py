"""Link, address and route configuration through rtnetlink (pyroute2).

Control-plane only: called at start, reload and stop, never per packet. Every
failure becomes a SetupError naming the device and the operation.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from tunneld.errors import SetupError

T = TypeVar("T")
_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")


def _off_loop(fn: Callable[..., T]) -> Callable[..., T]:
    """pyroute2's synchronous IPRoute drives an event loop of its own, which fails inside
    a running loop; such calls go to a worker thread and block the caller (control
    plane only: milliseconds at start, reload and stop)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return fn(*args, **kwargs)
        return _worker.submit(fn, *args, **kwargs).result()

    return wrapper


async def off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Await a blocking control-plane call (a netlink seam, an MTU lookup) on the netlink
    worker thread, so the loop goes on serving datagrams, timers and `show` meanwhile. The
    `_off_loop` functions see no running loop there and run directly."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_worker, functools.partial(fn, *args, **kwargs))


def renew_worker() -> None:
    """Replace the worker thread by one the caller's thread starts on first use. Called after
    `[daemon] user` switched users: capability sets are per thread, and the old worker,
    started as root, lost CAP_NET_ADMIN with the uid change (kernel/privileges.py)."""
    global _worker
    old, _worker = _worker, ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")
    old.shutdown(wait=False)


IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _index(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise SetupError(f"device {name}: not found")
    return int(found[0])


def _call(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except NetlinkError as exc:
        raise SetupError(f"{what}: {exc.args[-1] if exc.args else exc}") from None


@_off_loop
def configure_link(
    name: str, mtu: int | None = None, addresses: Iterable[IPInterface] = (), up: bool = True
) -> None:
    """Set MTU, add addresses (existing ones are fine) and bring the link up."""
    with IPRoute() as ipr:
        index = _index(ipr, name)
        if mtu is not None:
            _call(f"set mtu {mtu} on {name}", ipr.link, "set", index=index, mtu=mtu)
        for addr in addresses:
            _add_address(ipr, index, name, addr)
        if up:
            _call(f"bring {name} up", ipr.link, "set", index=index, state="up")


@_off_loop
def set_mac(name: str, mac: str) -> None:
    """Set the device's link-layer address ("02:..:..")."""
    with IPRoute() as ipr:
        index = _index(ipr, name)
        _call(f"set address {mac} on {name}", ipr.link, "set", index=index, address=mac)


def _add_address(ipr: IPRoute, index: int, name: str, addr: IPInterface) -> None:
    try:
        ipr.addr("add", index=index, address=str(addr.ip), prefixlen=addr.network.prefixlen)
    except NetlinkError as exc:
        if exc.code != 17:  # EEXIST: already there, e.g. after a reload
            raise SetupError(f"add address {addr} to {name}: {exc.args[-1]}") from None


@_off_loop
def add_routes(name: str, networks: Iterable[IPNetwork], replace: bool = True) -> None:
    """Route each network through the device (like wg-quick)."""
    with IPRoute() as ipr:
        index = _index(ipr, name)
        for net in networks:
            family = 10 if net.version == 6 else 2
            _call(
                f"add route {net} dev {name}",
                ipr.route,
                "replace" if replace else "add",
                dst=str(net),
                oif=index,
                family=family,
            )


@_off_loop
def remove_routes(name: str, networks: Iterable[IPNetwork]) -> None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return
        for net in networks:
            try:
                ipr.route("del", dst=str(net), oif=found[0], family=10 if net.version == 6 else 2)
            except NetlinkError:
                pass


@_off_loop
def enslave(name: str, bridge: str) -> None:
    with IPRoute() as ipr:
        index = _index(ipr, name)
        try:
            master = _index(ipr, bridge)
        except SetupError:
            raise SetupError(f"bridge {bridge} for {name}: not found; create it first") from None
        _call(f"enslave {name} to {bridge}", ipr.link, "set", index=index, master=master)


@_off_loop
def link_mtu_for_address(address: str) -> int | None:
    """MTU of the device holding `address` (the underlay), or None if no device has it."""
    with IPRoute() as ipr:
        for msg in ipr.get_addr():
            if msg.get_attr("IFA_ADDRESS") == address or msg.get_attr("IFA_LOCAL") == address:
                links = ipr.get_links(msg["index"])
                return int(links[0].get_attr("IFLA_MTU")) if links else None
    return None


@_off_loop
def route_mtu(dst: str | None) -> int | None:
    """The MTU of the route to `dst` (None: the IPv4 default route, else IPv6's), as wg-quick's
    set_mtu_up reads `ip route get`: the route's `mtu` if it has one, else its device's MTU.
    None when there is no such route."""
    with IPRoute() as ipr:
        try:
            if dst is None:
                routes = ipr.get_default_routes(family=2) or ipr.get_default_routes(family=10)
            else:
                family = 10 if ":" in dst else 2
                routes = ipr.route("get", dst=dst.split("%")[0], family=family)
        except NetlinkError:
            return None
        for route in routes:
            metrics = route.get_attr("RTA_METRICS")
            mtu = metrics.get_attr("RTAX_MTU") if metrics is not None else None
            if mtu:
                return int(mtu)
            oif = route.get_attr("RTA_OIF")
            links = ipr.get_links(oif) if oif else []
            if links:
                return int(links[0].get_attr("IFLA_MTU"))
    return None
