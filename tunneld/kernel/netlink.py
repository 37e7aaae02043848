"""Link, address and route configuration through rtnetlink (pyroute2).

Control-plane only: called at start, reload and stop, never per packet. Every
failure becomes a SetupError naming the device and the operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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
def add_routes(
    name: str, networks: Iterable[IPNetwork], replace: bool = True, table: int | None = None
) -> None:
    """Route each network through the device (like wg-quick), in the main table or `table`."""
    where = {} if table is None else {"table": table}
    with IPRoute() as ipr:
        index = _index(ipr, name)
        for net in networks:
            family = 10 if net.version == 6 else 2
            _call(
                f"add route {net} dev {name}" + (f" table {table}" if table else ""),
                ipr.route,
                "replace" if replace else "add",
                dst=str(net),
                oif=index,
                family=family,
                **where,
            )


@_off_loop
def remove_routes(name: str, networks: Iterable[IPNetwork], table: int | None = None) -> None:
    where = {} if table is None else {"table": table}
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return
        for net in networks:
            try:
                ipr.route("del", dst=str(net), oif=found[0], family=10 if net.version == 6 else 2,
                          **where)  # fmt: skip
            except NetlinkError:
                pass


# --- policy routing rules (wg-quick's full tunnel; links/policy.py) ---------------------------

FIB_RULE_INVERT = 0x2  # include/uapi/linux/fib_rules.h: "not" in `ip rule`
RT_TABLE_MAIN = 254


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    """One `ip rule`: `[not] fwmark M table T` or `table T suppress_prefixlength N`.
    `priority` None: chosen at add time as the kernel does for `ip rule add` without one."""

    family: int  # 4 or 6
    table: int
    fwmark: int | None = None
    invert: bool = False
    suppress_prefixlength: int | None = None
    priority: int | None = None

    def __str__(self) -> str:
        parts = [f"ipv{self.family} rule"]
        parts += [f"pref {self.priority}"] if self.priority is not None else []
        parts += ["not"] if self.invert else []
        parts += [f"fwmark {self.fwmark:#x}"] if self.fwmark is not None else []
        parts += [f"table {'main' if self.table == RT_TABLE_MAIN else self.table}"]
        if self.suppress_prefixlength is not None:
            parts.append(f"suppress_prefixlength {self.suppress_prefixlength}")
        return " ".join(parts)


def _rule_args(rule: Rule) -> dict[str, Any]:
    args: dict[str, Any] = {"family": 10 if rule.family == 6 else 2, "table": rule.table,
                            "priority": rule.priority}  # fmt: skip
    if rule.fwmark is not None:
        args["fwmark"] = rule.fwmark
    if rule.invert:
        args["flags"] = FIB_RULE_INVERT
    if rule.suppress_prefixlength is not None:
        args["suppress_prefixlen"] = rule.suppress_prefixlength  # pyroute2's name for the NLA
    return args


def _default_priority(ipr: IPRoute, family: int) -> int:
    """What the kernel picks for a rule added without a priority (fib_default_rule_pref):
    one below the second rule's (the first is `local` at 0), so the newest rule is tried
    first. wg-quick relies on it: suppress_prefixlength (added last) goes before its table."""
    prefs = sorted(int(r.get_attr("FRA_PRIORITY") or 0)
                   for r in ipr.get_rules(family=10 if family == 6 else 2))  # fmt: skip
    return prefs[1] - 1 if len(prefs) > 1 and prefs[1] > 0 else 0


@_off_loop
def add_rule(rule: Rule) -> Rule:
    """Add one policy rule; returns it with the priority it got (for `remove_rule`)."""
    with IPRoute() as ipr:
        if rule.priority is None:
            rule = dataclasses.replace(rule, priority=_default_priority(ipr, rule.family))
        _call(f"add {rule}", ipr.rule, "add", **_rule_args(rule))
    return rule


# what a Rule can say: a kernel rule with any other attribute (a source, an iif, a mask, ...)
# is listed as None, never taken for one of tunneld's
_RULE_ATTRS = {"FRA_TABLE", "FRA_PRIORITY", "FRA_FWMARK", "FRA_FWMASK", "FRA_SUPPRESS_PREFIXLEN",
               "FRA_PROTOCOL"}  # fmt: skip
FR_ACT_TO_TBL = 1  # include/uapi/linux/fib_rules.h: `lookup TABLE`


def _as_rule(msg: Any, family: int) -> Rule | None:
    attrs = dict(msg["attrs"])
    fwmark, mask = attrs.get("FRA_FWMARK"), attrs.get("FRA_FWMASK", 0xFFFFFFFF)
    suppress = attrs.get("FRA_SUPPRESS_PREFIXLEN", 0xFFFFFFFF)  # all ones: not set
    if (attrs.keys() - _RULE_ATTRS or msg["action"] != FR_ACT_TO_TBL or mask != 0xFFFFFFFF
            or msg["flags"] & ~FIB_RULE_INVERT or msg["src_len"] or msg["dst_len"]
            or msg["tos"]):  # fmt: skip
        return None
    return Rule(family, int(attrs.get("FRA_TABLE", msg["table"])), fwmark=fwmark,
                invert=bool(msg["flags"] & FIB_RULE_INVERT),
                suppress_prefixlength=None if suppress == 0xFFFFFFFF else suppress,
                priority=int(attrs.get("FRA_PRIORITY") or 0))  # fmt: skip


@_off_loop
def list_rules(family: int) -> list[Rule | None]:
    """`ip -FAMILY rule show`, each rule as a Rule, or None where a Rule cannot say it."""
    with IPRoute() as ipr:
        return [_as_rule(r, family) for r in ipr.get_rules(family=10 if family == 6 else 2)]


@_off_loop
def remove_rule(rule: Rule) -> None:
    """Delete exactly that rule (same priority and selectors); one already gone is fine."""
    with IPRoute() as ipr:
        try:
            ipr.rule("del", **_rule_args(rule))
        except NetlinkError as exc:
            if exc.code != 2:  # ENOENT: someone removed it already
                raise SetupError(f"remove {rule}: {exc.args[-1]}") from None


@_off_loop
def table_in_use(table: int) -> bool:
    """Whether routing table `table` holds any IPv4 or IPv6 route (wg-quick's test before it
    takes 51820, 51821, ... for a full tunnel)."""
    with IPRoute() as ipr:
        return any(
            route.get_attr("RTA_TABLE") == table
            for family in (2, 10)
            for route in ipr.get_routes(family=family, table=table)
        )


def sysctl(key: str, value: str | None = None) -> str | None:
    """Read (and with `value`, then write) net sysctl `key` ("net.ipv4.conf.all.src_valid_mark")
    of this process's network namespace; returns the value before, None if there is no such
    key. Raises SetupError when the write is refused."""
    path = "/proc/sys/" + key.replace(".", "/")
    try:
        with open(path) as f:
            before = f.read().strip()
    except OSError:
        return None
    if value is not None and value != before:
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as exc:
            raise SetupError(f"sysctl {key}={value}: {exc.strerror}") from None
    return before


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
def add_addresses(name: str, addresses: Iterable[IPInterface]) -> list[IPInterface]:
    """Add addresses to an existing device (a bridge a VXLAN tap joins); returns the ones
    added, not those it already had, so `remove_addresses` takes back only ours."""
    added = []
    with IPRoute() as ipr:
        index = _index(ipr, name)
        for addr in addresses:
            try:
                ipr.addr("add", index=index, address=str(addr.ip),
                         prefixlen=addr.network.prefixlen)  # fmt: skip
            except NetlinkError as exc:
                if exc.code != 17:  # EEXIST: someone else's: left alone at stop
                    raise SetupError(f"add address {addr} to {name}: {exc.args[-1]}") from None
                continue
            added.append(addr)
    return added


@_off_loop
def remove_addresses(name: str, addresses: Iterable[IPInterface]) -> None:
    """Remove addresses from a device; a device or address already gone is fine."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        for addr in addresses if found else ():
            with contextlib.suppress(NetlinkError):
                ipr.addr("del", index=found[0], address=str(addr.ip),
                         prefixlen=addr.network.prefixlen)  # fmt: skip


@_off_loop
def link_exists(name: str) -> bool:
    """True when a network device `name` exists (in this namespace)."""
    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=name))


@_off_loop
def link_mtu_for_address(address: str) -> int | None:
    """MTU of the device holding `address` (the underlay), or None if no device has it."""
    address = address.partition("%")[0]  # a link-local address's scope is not in IFA_*
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
