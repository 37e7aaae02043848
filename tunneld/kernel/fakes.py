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

    def _record(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))

    def configure_link(self, name: str, mtu: int | None = None, addresses: Any = (),
                       up: bool = True) -> None:  # fmt: skip
        self._record("configure_link", name, mtu, tuple(addresses), up)

    def set_mac(self, name: str, mac: str) -> None:
        self._record("set_mac", name, mac)

    def add_routes(self, name: str, networks: Any, replace: bool = True) -> None:
        self._record("add_routes", name, tuple(networks))

    def remove_routes(self, name: str, networks: Any) -> None:
        self._record("remove_routes", name, tuple(networks))

    def enslave(self, name: str, bridge: str) -> None:
        self._record("enslave", name, bridge)

    def link_mtu_for_address(self, address: str) -> int | None:
        return self.underlay_mtu

    def route_mtu(self, dst: str | None) -> int | None:
        return self.underlay_mtu
