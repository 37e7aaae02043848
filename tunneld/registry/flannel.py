"""flannel's etcd layout, pure: network config, subnet keys, lease values, the pool.

Layout (flannel pkg/subnet/config.go and its etcd registry):
* `<prefix>/config`: JSON {"Network": "10.5.0.0/16", "SubnetLen": 24,
  "SubnetMin": "10.5.1.0", "SubnetMax": "10.5.255.0", "Backend": {"Type": "udp",
  "Port": 8285}}. Defaults as flannel's CheckNetworkConfig computes them:
  SubnetLen 24 when the network is /22 or wider, else prefix + 2 (a network
  narrower than /28 is an error); an explicit SubnetLen must be at most 30 and
  at least prefix + 2 ("at least four subnets"); SubnetMin defaults to the
  second subnet (the first is never leased: its address would be the network's),
  SubnetMax to the last; both must lie in the network on a SubnetLen boundary.
  A missing Backend means "udp".
* `<prefix>/subnets/10.5.1.0-24`: JSON {"PublicIP": "192.168.77.1",
  "BackendType": "udp", "BackendData": {...}}; the wireguard backend's data is
  {"PublicKey": base64, "Port": 51820} (flannel pkg/backend/wireguard:
  `wireguardLeaseAttrs{PublicKey string; Port uint16}` marshalled by
  wireguard.go `newSubnetAttrs` into lease.LeaseAttrs.BackendData). "Port" came
  with flannel 0.26.5 (commit 35249c25, 2025): a lease without it, or with 0,
  means "the reader's own listen port" (wireguard_network.go
  handleSubnetEvents' backwards-compatibility rule), returned here as port None.
* Dual stack (flannel pkg/subnet/config.go, subnet.go, etcd/registry.go,
  etcd/local_manager.go): the config's "EnableIPv6": true with "IPv6Network" and
  "IPv6SubnetLen" (default 64 when the network is /62 or wider, else prefix + 2; at
  most 126, at least prefix + 2; a network narrower than /124 is an error) and
  "IPv6SubnetMin"/"IPv6SubnetMax" (defaults: the second and the last subnet);
  "EnableIPv4" defaults to true (false is refused: tunneld's overlay is IPv4 first).
  A dual-stack lease has ONE key holding both subnets, `MakeSubnetKey`'s
  `<prefix>/subnets/10.5.1.0-24&fd10:5:0:1::-64` (the form
  ParseSubnetKey's subnetRegex accepts, lower-case hex; the IPv6 address as Go's
  net.IP.String prints it, RFC 5952, which is Python's compressed form); there is no
  separate v6 key tree. The value (LeaseAttrs) gains "PublicIPv6" (the host's IPv6
  underlay address, JSON null without one) and "BackendV6Data" (the wireguard backend
  writes the same {"PublicKey"...} into both when IPv6 is enabled, newSubnetAttrs).
  A host whose underlay is IPv6 only writes "PublicIP": "0.0.0.0" (Go's zero ip.IP4).
  Readers pick the public address of their own underlay's family.

No I/O here: `etcd.py` feeds bytes in and gets values or ValueError out.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any

from tunneld.registry.base import Host

MAX_CANDIDATES = 100  # like flannel: pick at random among the first free subnets


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    network: IPv4Network
    subnet_len: int
    subnet_min: IPv4Address
    subnet_max: IPv4Address
    backend_type: str = "udp"
    backend: dict[str, Any] = field(default_factory=dict, compare=False)
    ipv6: IPv6Pool | None = None  # EnableIPv6: the IPv6 network and its pool

    def in_pool(self, subnet: IPv4Network) -> bool:
        return (
            subnet.prefixlen == self.subnet_len
            and self.subnet_min <= subnet.network_address <= self.subnet_max
        )

    def pool_size(self) -> int:
        step = 1 << (32 - self.subnet_len)
        return (int(self.subnet_max) - int(self.subnet_min)) // step + 1

    def free_subnets(
        self, taken: Collection[IPv4Network], limit: int = MAX_CANDIDATES
    ) -> list[IPv4Network]:
        """The first `limit` pool subnets not in `taken`, from SubnetMin up."""
        step, out = 1 << (32 - self.subnet_len), []
        addr = int(self.subnet_min)
        while addr <= int(self.subnet_max) and len(out) < limit:
            net = IPv4Network((addr, self.subnet_len))
            if net not in taken:
                out.append(net)
            addr += step
        return out


@dataclass(frozen=True, slots=True)
class IPv6Pool:
    """flannel's IPv6Network, IPv6SubnetLen, IPv6SubnetMin and IPv6SubnetMax."""

    network: IPv6Network
    subnet_len: int
    subnet_min: IPv6Address
    subnet_max: IPv6Address

    def in_pool(self, subnet: IPv6Network) -> bool:
        return (
            subnet.prefixlen == self.subnet_len
            and self.subnet_min <= subnet.network_address <= self.subnet_max
        )

    def pool_size(self) -> int:
        step = 1 << (128 - self.subnet_len)
        return (int(self.subnet_max) - int(self.subnet_min)) // step + 1

    def free_subnets(
        self, taken: Collection[IPv6Network], limit: int = MAX_CANDIDATES
    ) -> list[IPv6Network]:
        """The first `limit` pool subnets not in `taken`, from IPv6SubnetMin up."""
        step, out = 1 << (128 - self.subnet_len), []
        addr = int(self.subnet_min)
        while addr <= int(self.subnet_max) and len(out) < limit:
            net = IPv6Network((addr, self.subnet_len))
            if net not in taken:
                out.append(net)
            addr += step
        return out


def parse_network_config(raw: bytes | str) -> NetworkConfig:
    """flannel's network config JSON -> NetworkConfig; ValueError names the bad field."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep (fuzzing)
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    for flag in ("EnableIPv4", "EnableIPv6"):
        if not isinstance(doc.get(flag, False), bool):
            raise ValueError(f"{flag} must be true or false")
    if doc.get("EnableIPv4", True) is False:
        raise ValueError("EnableIPv4 is false; the overlay carries IPv4 (and IPv6 beside it)")
    network = _network(doc.get("Network"))
    subnet_len = _subnet_len(doc.get("SubnetLen", 0), network)
    size = 1 << (32 - subnet_len)
    low = _bound(doc, "SubnetMin", network, IPv4Address(int(network.network_address) + size))
    high = _bound(doc, "SubnetMax", network, IPv4Address(int(network.broadcast_address) + 1 - size))
    for name, value in (("SubnetMin", low), ("SubnetMax", high)):
        if int(value) % size:
            raise ValueError(f"{name} {value} is not on a SubnetLen (/{subnet_len}) boundary")
    if low > high:
        raise ValueError(f"SubnetMin {low} is above SubnetMax {high}")
    backend = doc.get("Backend") or {}
    if not isinstance(backend, dict):
        raise ValueError("Backend must be a JSON object")
    backend_type = backend.get("Type", "udp") or "udp"
    if not isinstance(backend_type, str):
        raise ValueError("Backend.Type must be a string")
    ipv6 = _ipv6_pool(doc) if doc.get("EnableIPv6", False) else None
    return NetworkConfig(network, subnet_len, low, high, backend_type, backend, ipv6)


def _ipv6_pool(doc: dict[str, Any]) -> IPv6Pool:
    """EnableIPv6's fields with flannel's CheckNetworkConfig defaults and limits."""
    value = doc.get("IPv6Network")
    try:
        network = IPv6Network(value) if isinstance(value, str) and value else None
    except ValueError:
        network = None
    if network is None:
        raise ValueError(
            f'IPv6Network {value!r} is not an IPv6 prefix like "fd10:5::/48" (EnableIPv6 is true)'
        )
    length = doc.get("IPv6SubnetLen", 0)
    if not isinstance(length, int) or isinstance(length, bool) or length < 0:
        raise ValueError(f"IPv6SubnetLen {length!r} is not a prefix length")
    if length == 0:
        if network.prefixlen > 124:
            raise ValueError(f"IPv6Network {network} is too small; the smallest is a /124")
        length = 64 if network.prefixlen <= 62 else network.prefixlen + 2
    elif length > 126:
        raise ValueError(f"IPv6SubnetLen {length} must be at most 126")
    elif length < network.prefixlen + 2:
        raise ValueError(
            f"IPv6SubnetLen {length} leaves IPv6Network {network} fewer than four subnets "
            f"(use at least /{network.prefixlen + 2})"
        )
    size = 1 << (128 - length)
    first = int(network.network_address)
    low = _bound6(doc, "IPv6SubnetMin", network, IPv6Address(first + size))
    high = _bound6(doc, "IPv6SubnetMax", network,
                   IPv6Address(int(network.broadcast_address) + 1 - size))  # fmt: skip
    for name, bound in (("IPv6SubnetMin", low), ("IPv6SubnetMax", high)):
        if int(bound) % size:
            raise ValueError(f"{name} {bound} is not on an IPv6SubnetLen (/{length}) boundary")
    if low > high:
        raise ValueError(f"IPv6SubnetMin {low} is above IPv6SubnetMax {high}")
    return IPv6Pool(network, length, low, high)


def _bound6(
    doc: dict[str, Any], name: str, network: IPv6Network, default: IPv6Address
) -> IPv6Address:
    value = doc.get(name)
    if value in (None, "", "::"):
        return default
    try:
        addr = IPv6Address(value)
    except ValueError:
        raise ValueError(f"{name} {value!r} is not an IPv6 address") from None
    if addr not in network:
        raise ValueError(f"{name} {addr} is not in IPv6Network {network}")
    return addr


def _network(value: Any) -> IPv4Network:
    if not isinstance(value, str) or not value:
        raise ValueError('Network is missing; set it to an IPv4 prefix like "10.5.0.0/16"')
    try:
        net = IPv4Network(value)
    except ValueError:
        raise ValueError(f'Network {value!r} is not an IPv4 prefix like "10.5.0.0/16"') from None
    return net


def _subnet_len(value: Any, network: IPv4Network) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"SubnetLen {value!r} is not a prefix length")
    if value == 0:
        if network.prefixlen > 28:
            raise ValueError(f"Network {network} is too small; the smallest useful one is a /28")
        return 24 if network.prefixlen <= 22 else network.prefixlen + 2
    if value > 30:
        raise ValueError(f"SubnetLen {value} must be at most 30")
    if value < network.prefixlen + 2:
        raise ValueError(
            f"SubnetLen {value} leaves Network {network} fewer than four subnets "
            f"(use at least /{network.prefixlen + 2})"
        )
    return value


def _bound(
    doc: dict[str, Any], name: str, network: IPv4Network, default: IPv4Address
) -> IPv4Address:
    value = doc.get(name)
    if value in (None, "", "0.0.0.0"):
        return default
    try:
        addr = IPv4Address(value)
    except ValueError:
        raise ValueError(f"{name} {value!r} is not an IPv4 address") from None
    if addr not in network:
        raise ValueError(f"{name} {addr} is not in Network {network}")
    return addr


def subnet_key(prefix: str, subnet: IPv4Network, subnet6: IPv6Network | None = None) -> str:
    """flannel's MakeSubnetKey: `10.5.1.0-24`, dual stack `10.5.1.0-24&fd10:5:0:1::-64`."""
    key = f"{prefix}/subnets/{subnet.network_address}-{subnet.prefixlen}"
    if subnet6 is not None:
        key += f"&{subnet6.network_address.compressed}-{subnet6.prefixlen}"
    return key


def subnets_prefix(prefix: str) -> str:
    return f"{prefix}/subnets/"


def parse_subnet_key(prefix: str, key: bytes | str) -> IPv4Network | None:
    """`<prefix>/subnets/10.5.1.0-24` (or a dual-stack key) -> 10.5.1.0/24; None for any
    other key."""
    pair = parse_subnet_keys(prefix, key)
    return pair[0] if pair is not None else None


_HEX6 = frozenset("0123456789abcdef:")


def parse_subnet_keys(
    prefix: str, key: bytes | str
) -> tuple[IPv4Network, IPv6Network | None] | None:
    """`<prefix>/subnets/10.5.1.0-24&fd10:5:0:1::-64` -> (10.5.1.0/24, fd10:5:0:1::/64);
    the IPv6 part is optional (None). None for any other key, as flannel's ParseSubnetKey
    (lower-case hex only, no host bits)."""
    text = key.decode(errors="replace") if isinstance(key, bytes) else key
    head = subnets_prefix(prefix)
    if not text.startswith(head):
        return None
    four, amp, six = text[len(head) :].partition("&")
    subnet = _key_part(four, IPv4Network)
    if subnet is None:
        return None
    if not amp:
        return subnet, None
    addr6 = six.rpartition("-")[0]
    if not addr6 or not set(addr6) <= _HEX6:
        return None
    subnet6 = _key_part(six, IPv6Network)
    return (subnet, subnet6) if subnet6 is not None else None


def _key_part(text: str, kind: Any) -> Any:
    addr, sep, plen = text.rpartition("-")
    if not sep or not plen.isdigit() or not addr:
        return None
    try:
        return kind(f"{addr}/{plen}")
    except ValueError:
        return None


def lease_value(
    public_ip: str,
    backend_type: str,
    backend_data: dict[str, Any],
    public_ipv6: str | None = None,
    backend_v6_data: dict[str, Any] | None = None,
) -> str:
    """flannel's LeaseAttrs JSON. `public_ip` "0.0.0.0" for a host with an IPv6 underlay
    only (Go's zero ip.IP4); the IPv6 fields only when given (flannel reads a missing
    PublicIPv6 as its null)."""
    doc: dict[str, Any] = {"PublicIP": public_ip}
    if public_ipv6 is not None:
        doc["PublicIPv6"] = public_ipv6
    doc.update(BackendType=backend_type, BackendData=backend_data)
    if backend_v6_data is not None:
        doc["BackendV6Data"] = backend_v6_data
    return json.dumps(doc, separators=(",", ":"))


def wireguard_backend_data(public_key: bytes, port: int) -> dict[str, Any]:
    """flannel's wireguard BackendData for this host: {"PublicKey": base64, "Port": port}."""
    if len(public_key) != 32 or not 1 <= port <= 65535:
        raise ValueError("a 32-byte public key and a UDP port")
    return {"PublicKey": base64.b64encode(public_key).decode(), "Port": port}


def parse_lease(
    subnet: IPv4Network, raw: bytes | str, subnet6: IPv6Network | None = None, family: int = 4
) -> Host:
    """A lease value -> Host whose public_ip is the lease's address of the reader's underlay
    `family` (PublicIP for 4, PublicIPv6 for 6); `subnet6` from a dual-stack key. ValueError
    for corrupt JSON or fields, or no address of that family."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep (fuzzing)
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    ip4 = _lease_address(doc, "PublicIP", 4, required=True)
    ip6 = _lease_address(doc, "PublicIPv6", 6, required=False)
    if family == 6 and ip6 is None:
        raise ValueError("no PublicIPv6: the host has no IPv6 underlay address, and ours is IPv6")
    if family == 4 and ip4 == "0.0.0.0":
        raise ValueError("PublicIP is 0.0.0.0 (an IPv6-only underlay host) and ours is IPv4")
    backend_type = doc.get("BackendType") or "udp"
    data = doc.get("BackendData") or doc.get("BackendV6Data") or {}
    if not isinstance(backend_type, str) or not isinstance(data, dict):
        raise ValueError("BackendType must be a string and BackendData an object")
    public_key, port = None, None
    if backend_type == "wireguard":
        public_key, port = _wireguard_data(data)
    return Host(
        subnet=subnet,
        public_ip=ip6 if family == 6 else ip4,  # type: ignore[arg-type]
        backend_type=backend_type,
        public_key=public_key,
        port=port,
        ipv6_subnet=subnet6,
    )


def _lease_address(doc: dict[str, Any], name: str, version: int, required: bool) -> str | None:
    value = doc.get(name)
    if value is None and not required:
        return None
    try:
        ip = ip_address(value) if isinstance(value, str) else None
    except ValueError:
        ip = None
    if ip is None or ip.version != version:
        raise ValueError(f"{name} {value!r} is not an IPv{version} address")
    return str(ip)


def _wireguard_data(data: dict[str, Any]) -> tuple[bytes, int | None]:
    """(public key, port or None: missing or 0, use our own listen port like flannel)."""
    text = data.get("PublicKey")
    try:
        key = base64.b64decode(text, validate=True) if isinstance(text, str) else b""
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise ValueError("BackendData.PublicKey is not a base64 32-byte key")
    port = data.get("Port")
    if port is None or (port == 0 and not isinstance(port, bool)):
        return key, None
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ValueError(f"BackendData.Port {port!r} is not a UDP port")
    return key, port


def choose_subnet(
    cfg: NetworkConfig,
    taken: Collection[IPv4Network],
    pick: Callable[[list[IPv4Network]], IPv4Network],
) -> IPv4Network | None:
    """A free pool subnet chosen by `pick` (e.g. random.choice), or None when the pool is full."""
    free = cfg.free_subnets(taken)
    return pick(free) if free else None
