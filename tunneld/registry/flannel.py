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

No I/O here: `etcd.py` feeds bytes in and gets values or ValueError out.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, ip_address
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


def parse_network_config(raw: bytes | str) -> NetworkConfig:
    """flannel's network config JSON -> NetworkConfig; ValueError names the bad field."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep (fuzzing)
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    if doc.get("EnableIPv4", True) is False:
        raise ValueError("EnableIPv4 is false; the overlay carries IPv4")
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
    return NetworkConfig(network, subnet_len, low, high, backend_type, backend)


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


def subnet_key(prefix: str, subnet: IPv4Network) -> str:
    return f"{prefix}/subnets/{subnet.network_address}-{subnet.prefixlen}"


def subnets_prefix(prefix: str) -> str:
    return f"{prefix}/subnets/"


def parse_subnet_key(prefix: str, key: bytes | str) -> IPv4Network | None:
    """`<prefix>/subnets/10.5.1.0-24` -> 10.5.1.0/24; None for any other key."""
    text = key.decode(errors="replace") if isinstance(key, bytes) else key
    head = subnets_prefix(prefix)
    if not text.startswith(head):
        return None
    addr, sep, plen = text[len(head) :].partition("-")
    if not sep or not plen.isdigit():
        return None
    try:
        return IPv4Network(f"{addr}/{plen}")
    except ValueError:
        return None


def lease_value(public_ip: str, backend_type: str, backend_data: dict[str, Any]) -> str:
    return json.dumps(
        {"PublicIP": public_ip, "BackendType": backend_type, "BackendData": backend_data},
        separators=(",", ":"),
    )


def wireguard_backend_data(public_key: bytes, port: int) -> dict[str, Any]:
    """flannel's wireguard BackendData for this host: {"PublicKey": base64, "Port": port}."""
    if len(public_key) != 32 or not 1 <= port <= 65535:
        raise ValueError("a 32-byte public key and a UDP port")
    return {"PublicKey": base64.b64encode(public_key).decode(), "Port": port}


def parse_lease(subnet: IPv4Network, raw: bytes | str) -> Host:
    """A lease value -> Host; ValueError for corrupt JSON or fields."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep (fuzzing)
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    public_ip = doc.get("PublicIP")
    try:
        ip = ip_address(public_ip) if isinstance(public_ip, str) else None
    except ValueError:
        ip = None
    if ip is None or ip.version != 4:
        raise ValueError(f"PublicIP {public_ip!r} is not an IPv4 address")
    backend_type = doc.get("BackendType") or "udp"
    data = doc.get("BackendData") or {}
    if not isinstance(backend_type, str) or not isinstance(data, dict):
        raise ValueError("BackendType must be a string and BackendData an object")
    public_key, port = None, None
    if backend_type == "wireguard":
        public_key, port = _wireguard_data(data)
    return Host(
        subnet=subnet,
        public_ip=str(ip),
        backend_type=backend_type,
        public_key=public_key,
        port=port,
    )


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
