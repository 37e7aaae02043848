"""What an overlay link needs from a registry: its own lease and the other hosts.

Theory of operation: a registry is started once by its link (`await start()`),
which returns when this host holds a subnet; from then on `subnet`, `network`
and `hosts` are valid. Changes to the other hosts arrive on the event loop's
thread through the `on_change(added, removed)` callback given to the
constructor, so the link updates its route table between packets without
locks. `status()` feeds `show`'s "registry" entry. Registries know nothing of
transports: a `Host` carries the backend type and data a transport needs
(flannel's lease "BackendType" / "BackendData"), and the link decides which
hosts its transport can reach. IPv6 inside (flannel's dual-stack leases): a
host may carry an IPv6 subnet beside its IPv4 one (the IPv4 subnet stays its
identity, as in flannel's subnet keys); `subnet6` and `network6` are this host's
and the whole IPv6 network, both None when the overlay carries no IPv6.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import Any


@dataclass(frozen=True, slots=True)
class Host:
    """Another overlay host: its subnet and underlay address, plus backend data."""

    subnet: IPv4Network
    public_ip: str  # canonical text, as recvfrom reports it
    backend_type: str = "udp"  # flannel's BackendType: "udp" or "wireguard"
    public_key: bytes | None = None  # wireguard backend: BackendData.PublicKey
    port: int | None = None  # wireguard backend: BackendData.Port (None: our listen port)
    ipv6_subnet: IPv6Network | None = None  # flannel's lease IPv6Subnet (dual-stack)


ChangeCallback = Callable[[list[Host], list[Host]], None]  # (added, removed)


class Registry(abc.ABC):
    kind: str = ""

    def __init__(self, on_change: ChangeCallback) -> None:
        self.on_change = on_change
        self.subnet: IPv4Network | None = None
        self.network: IPv4Network | None = None
        self.subnet6: IPv6Network | None = None
        self.network6: IPv6Network | None = None
        self.hosts: dict[IPv4Network, Host] = {}

    @abc.abstractmethod
    async def start(self) -> None:
        """Return once this host holds a subnet; raise SetupError when it never can."""

    @abc.abstractmethod
    def reload(self, cfg: Any) -> bool:
        """Apply a new config of the same registry kind live; False: rebuild needed."""

    @abc.abstractmethod
    def status(self) -> dict[str, Any]:
        """{"kind", "connected", "lease_expiry" (unix seconds or None)}."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop watching. Never gives up the lease (a restarted host gets it back)."""

    def replace_hosts(self, hosts: Iterable[Host]) -> None:
        """Make `hosts` the full set of other hosts and report the difference."""
        new = {h.subnet: h for h in hosts if h.subnet != self.subnet}
        removed = [h for s, h in self.hosts.items() if new.get(s) != h]
        added = [h for s, h in new.items() if self.hosts.get(s) != h]
        self.hosts = new
        if added or removed:
            self.on_change(added, removed)

    def put_host(self, host: Host) -> None:
        if host.subnet == self.subnet or self.hosts.get(host.subnet) == host:
            return
        old = self.hosts.get(host.subnet)
        self.hosts[host.subnet] = host
        self.on_change([host], [old] if old else [])

    def drop_host(self, subnet: IPv4Network) -> None:
        old = self.hosts.pop(subnet, None)
        if old is not None:
            self.on_change([], [old])
