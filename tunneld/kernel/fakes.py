"""Fakes for the kernel seams, for running a link without root (STYLE.md: every seam has one).

`FakeTun` (kernel/tun.py) stands in for the device; `FakeNetlink` for kernel/netlink.py:
it records each call and answers queries with fixed values, touching nothing.
"""

from __future__ import annotations

from typing import Any


class FakeNetlink:
    def __init__(self, underlay_mtu: int = 1500) -> None:
        self.underlay_mtu = underlay_mtu
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.rules: list[Any] = []
        self.tables_in_use: set[int] = set()
        self.sysctls: dict[str, str] = {"net.ipv4.conf.all.src_valid_mark": "0"}

    def _record(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))

    def configure_link(self, name: str, mtu: int | None = None, addresses: Any = (),
                       up: bool = True) -> None:  # fmt: skip
        self._record("configure_link", name, mtu, tuple(addresses), up)

    def set_mac(self, name: str, mac: str) -> None:
        self._record("set_mac", name, mac)

    def add_addresses(self, name: str, addresses: Any) -> list[Any]:
        self._record("add_addresses", name, tuple(addresses))
        return list(addresses)

    def remove_addresses(self, name: str, addresses: Any) -> None:
        self._record("remove_addresses", name, tuple(addresses))

    def add_routes(self, name: str, networks: Any, replace: bool = True,
                   table: int | None = None) -> None:  # fmt: skip
        if table is None:
            self._record("add_routes", name, tuple(networks))
        else:
            self._record("add_routes", name, tuple(networks), table)

    def remove_routes(self, name: str, networks: Any, table: int | None = None) -> None:
        if table is None:
            self._record("remove_routes", name, tuple(networks))
        else:
            self._record("remove_routes", name, tuple(networks), table)

    # Policy routing: rules get priorities counting down from 32765 as the kernel's would;
    # `tables_in_use` and `sysctls` are what the fake kernel holds.
    def add_rule(self, rule: Any) -> Any:
        import dataclasses

        if rule.priority is None:
            taken = [r.priority for r in self.rules if r.family == rule.family]
            rule = dataclasses.replace(rule, priority=min(taken, default=32766) - 1)
        self._record("add_rule", rule)
        self.rules.append(rule)
        return rule

    def remove_rule(self, rule: Any) -> None:
        self._record("remove_rule", rule)
        if rule in self.rules:
            self.rules.remove(rule)

    def list_rules(self, family: int) -> list[Any]:
        return [r for r in self.rules if r.family == family]

    def table_in_use(self, table: int) -> bool:
        return table in self.tables_in_use

    def sysctl(self, key: str, value: str | None = None) -> str | None:
        before = self.sysctls.get(key)
        if value is not None and before is not None and value != before:  # as the real one
            self._record("sysctl", key, value)
            self.sysctls[key] = value
        return before

    def enslave(self, name: str, bridge: str) -> None:
        self._record("enslave", name, bridge)

    def link_exists(self, name: str) -> bool:
        return True

    def link_mtu_for_address(self, address: str) -> int | None:
        return self.underlay_mtu

    def route_mtu(self, dst: str | None) -> int | None:
        return self.underlay_mtu
