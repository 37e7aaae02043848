"""The resolved config: frozen dataclasses whose fields are the TOML keys (DESIGN.md)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)

from tunneld.secret import Secret

log = logging.getLogger("tunneld.config")

IPAddress = IPv4Address | IPv6Address
IPInterface = IPv4Interface | IPv6Interface
IPNetwork = IPv4Network | IPv6Network

LOG_LEVELS = ("debug", "info", "warning", "error")
TYPES = ("overlay", "vxlan", "wireguard")
MTU_MIN, MTU_MAX = 576, 65535
VNI_MAX = 2**24 - 1
IFNAMSIZ = 16  # include/uapi/linux/if.h: names are at most 15 bytes plus NUL
SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonConfig:
    control_socket: str = "/run/tunneld/control.sock"
    log_level: str = "info"
    metrics_listen: tuple[str, int] | None = None  # (IP address as written, port); None: off
    user: str | None = None  # switch to this user once devices and sockets are open
    # WireGuard UAPI sockets (<dir>/<IFACE>.sock, for wg(8)); None: off (uapi_dir = "")
    uapi_dir: str | None = "/var/run/wireguard"


@dataclass(frozen=True, slots=True, kw_only=True)
class FdbEntryConfig:
    mac: str  # lowercase, colon-separated
    remote: IPAddress


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardConfig:
    """One [[interfaces.X.forward]] entry (DNAT, config/nat.py), kept as written, normalized:
    `port` an int or "low-high"; `to` "10.77.0.2:8080", "[fd00::2]:8080" or a bare address
    (the port is kept). `ports` and `target` give the parsed values."""

    proto: str  # "tcp" or "udp"
    port: int | str
    to: str

    @property
    def ports(self) -> tuple[int, int]:
        if isinstance(self.port, int):
            return self.port, self.port
        low, _, high = self.port.partition("-")
        return int(low), int(high)

    @property
    def target(self) -> tuple[IPAddress, int | None]:
        """(address, port or None: keep the port the packet came to)."""
        import ipaddress

        text = self.to
        if text.startswith("["):
            host, _, port = text[1:].partition("]:")
            return ipaddress.ip_address(host), int(port)
        if text.count(":") == 1:
            host, _, port = text.partition(":")
            return ipaddress.ip_address(host), int(port)
        return ipaddress.ip_address(text), None


@dataclass(frozen=True, slots=True, kw_only=True)
class VxlanConfig:
    name: str
    type: str = "vxlan"
    vni: int
    address: tuple[IPInterface, ...] = ()
    mtu: int | None = None  # None: underlay MTU minus overhead
    local: IPAddress
    port: int = 4789
    learning: bool = True
    ageing: float = 300.0  # seconds
    max_learned: int = 65536  # learned FDB entries at most; 0 = unlimited (bridge fdb_max_learned)
    flood: tuple[IPAddress, ...] = ()
    bridge: str | None = None
    fdb: tuple[FdbEntryConfig, ...] = ()
    offload: bool = True  # IFF_VNET_HDR super-packets + UDP GSO/GRO where the kernel grants them
    mss_clamp: bool | int = False  # TCP SYN MSS: true = tunnel MTU - 40 / - 60, or a number
    # wg-quick-style hooks (runtime/hooks.py): /bin/sh -c each, %i = the device name
    pre_up: tuple[str, ...] = ()  # before the device is created; a failure fails the interface
    post_up: tuple[str, ...] = ()  # once it is up with its addresses and routes
    pre_down: tuple[str, ...] = ()  # before it is torn down
    post_down: tuple[str, ...] = ()  # after
    # NAT for site gateways (config/nat.py, links/nat.py): source NAT out of these devices
    # for the tunnel's prefixes, and ports published to hosts behind the tunnel (DNAT).
    # Daemon-wide state in one nft table: not compared, so a change never touches the link.
    masquerade: tuple[str, ...] = field(default=(), compare=False)
    forward: tuple[ForwardConfig, ...] = field(default=(), compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerConfig:
    public_key: bytes  # 32 raw bytes
    preshared_key: Secret | None = None
    endpoint: tuple[str, int] | None = None  # (host as written, without brackets; port)
    allowed_ips: tuple[IPNetwork, ...] = ()
    persistent_keepalive: int | None = None  # seconds; None = off


@dataclass(frozen=True, slots=True, kw_only=True)
class WireguardConfig:
    name: str
    type: str = "wireguard"
    address: tuple[IPInterface, ...] = ()
    mtu: int | None = None  # None: wg-quick's, route MTU to the endpoints minus 60 / 80
    listen_port: int | None = None  # None: a random port
    private_key: Secret
    peers: tuple[PeerConfig, ...] = ()
    # handshake messages per second above which the interface is "under load":
    # it answers with cookie replies and rate-limits handshakes per source
    handshake_load_threshold: int = 128
    offload: bool = True  # IFF_VNET_HDR super-packets + UDP GSO/GRO where the kernel grants them
    mss_clamp: bool | int = False  # TCP SYN MSS: true = tunnel MTU - 40 / - 60, or a number
    # wg-quick's policy routing (links/policy.py): "auto" = a /0 goes to table fwmark (or
    # 51820..) behind `not fwmark` and `suppress_prefixlength 0` rules; "off" = no routes; N
    # = every allowed_ips route into table N, no rules
    table: str | int = "auto"
    fwmark: int = 0  # SO_MARK on the UDP sockets; 0 = none (auto picks one for a /0)
    # wg-quick-style hooks (runtime/hooks.py): /bin/sh -c each, %i = the device name
    pre_up: tuple[str, ...] = ()  # before the device is created; a failure fails the interface
    post_up: tuple[str, ...] = ()  # once it is up with its addresses and routes
    pre_down: tuple[str, ...] = ()  # before it is torn down
    post_down: tuple[str, ...] = ()  # after
    # NAT for site gateways (config/nat.py, links/nat.py): source NAT out of these devices
    # for the tunnel's prefixes, and ports published to hosts behind the tunnel (DNAT).
    # Daemon-wide state in one nft table: not compared, so a change never touches the link.
    masquerade: tuple[str, ...] = field(default=(), compare=False)
    forward: tuple[ForwardConfig, ...] = field(default=(), compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class HostConfig:
    subnet: IPv4Network
    public_ip: IPAddress
    public_key: bytes | None = None
    ipv6_subnet: IPv6Network | None = None  # dual-stack: the host's IPv6 subnet


@dataclass(frozen=True, slots=True, kw_only=True)
class OverlayConfig:
    name: str
    type: str = "overlay"
    network: IPv4Network | None = None  # None only with registry "etcd": from <prefix>/config
    subnet_len: int | None = None  # 24 when static and not given; None with etcd: from etcd
    public_ip: IPAddress
    port: int = 8285
    encryption: str = "none"
    private_key: Secret | None = None
    listen_port: int = 51820
    registry: str = "static"
    subnet: IPv4Network | None = None
    hosts: tuple[HostConfig, ...] = ()
    # IPv6 inside (flannel's IPv6Network / IPv6SubnetLen / the lease's IPv6Subnet): all
    # None for an IPv4-only overlay; with etcd, from <prefix>/config when not given
    ipv6_network: IPv6Network | None = None
    ipv6_subnet_len: int | None = None
    ipv6_subnet: IPv6Network | None = None
    etcd_endpoints: tuple[str, ...] = ("http://127.0.0.1:2379",)
    etcd_prefix: str = "/coreos.com/network"
    lease_ttl: int = 86400  # seconds
    mtu: int | None = None
    offload: bool = True  # IFF_VNET_HDR super-packets + UDP GSO/GRO where the kernel grants them
    mss_clamp: bool | int = False  # TCP SYN MSS: true = tunnel MTU - 40 / - 60, or a number
    # wg-quick-style hooks (runtime/hooks.py): /bin/sh -c each, %i = the device name
    pre_up: tuple[str, ...] = ()  # before the device is created; a failure fails the interface
    post_up: tuple[str, ...] = ()  # once it is up with its addresses and routes
    pre_down: tuple[str, ...] = ()  # before it is torn down
    post_down: tuple[str, ...] = ()  # after
    # NAT for site gateways (config/nat.py, links/nat.py): source NAT out of these devices
    # for the tunnel's prefixes, and ports published to hosts behind the tunnel (DNAT).
    # Daemon-wide state in one nft table: not compared, so a change never touches the link.
    masquerade: tuple[str, ...] = field(default=(), compare=False)
    forward: tuple[ForwardConfig, ...] = field(default=(), compare=False)


InterfaceConfig = VxlanConfig | WireguardConfig | OverlayConfig


class FrozenMap(Mapping[str, InterfaceConfig]):
    """An immutable, hashable, insertion-ordered mapping (interfaces in file order)."""

    __slots__ = ("_items", "_index")

    def __init__(self, items: tuple[tuple[str, InterfaceConfig], ...] = ()) -> None:
        self._items = tuple(items)
        self._index = dict(self._items)

    def __getitem__(self, key: str) -> InterfaceConfig:
        return self._index[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    def __hash__(self) -> int:
        return hash(frozenset(self._items))

    def __repr__(self) -> str:
        return f"FrozenMap({self._index!r})"


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    path: str
    daemon: DaemonConfig = DaemonConfig()
    interfaces: Mapping[str, InterfaceConfig] = FrozenMap()
