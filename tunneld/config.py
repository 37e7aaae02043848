"""TOML config -> frozen dataclasses; every validation lives here.

The schema is DESIGN.md's "Config (TOML)" section; docs/config.md is the
reference for users. Theory of operation: `loads` parses with stdlib `tomllib`,
then walks the tree with `_Table` readers that first reject unknown keys, then
take each known key with its type checked (a bool is never an int). Each
interface type has one parser; cross-interface rules (UDP ports, bridges) run
last. The first problem found raises one `ConfigError(file, key_path, reason)`,
whose text is a single line like
``site.toml: interfaces.wg0.peers[1].allowed_ips[0]: '10.0.0.1/24' has host bits set``.
Key material is held in `Secret` and never appears in a message or in `render`.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import logging
import os
import re
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from typing import Any, NoReturn

from tunneld.errors import ConfigError
from tunneld.secret import HIDDEN, Secret, decode_key, encode_key

__all__ = [
    "Config",
    "DaemonConfig",
    "FdbEntryConfig",
    "HostConfig",
    "InterfaceConfig",
    "OverlayConfig",
    "PeerConfig",
    "Secret",
    "VxlanConfig",
    "WireguardConfig",
    "check_config_main",
    "load",
    "loads",
    "render",
]

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


@dataclass(frozen=True, slots=True, kw_only=True)
class FdbEntryConfig:
    mac: str  # lowercase, colon-separated
    remote: IPAddress


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
    flood: tuple[IPAddress, ...] = ()
    bridge: str | None = None
    fdb: tuple[FdbEntryConfig, ...] = ()


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
    mtu: int | None = 1420
    listen_port: int | None = None  # None: a random port
    private_key: Secret
    peers: tuple[PeerConfig, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class HostConfig:
    subnet: IPv4Network
    public_ip: IPAddress
    public_key: bytes | None = None


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
    etcd_endpoints: tuple[str, ...] = ("http://127.0.0.1:2379",)
    etcd_prefix: str = "/coreos.com/network"
    lease_ttl: int = 86400  # seconds
    mtu: int | None = None


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


# --- reading TOML tables with checked types ---------------------------------------------

_MISSING: Any = object()
_KIND_NAMES = {
    str: "a string",
    int: "an integer",
    bool: "a boolean (true or false)",
    float: "a number",
    list: "an array",
    dict: "a table",
}
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key_text(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def _join(path: str, key: str) -> str:
    return f"{path}.{_key_text(key)}" if path else _key_text(key)


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, datetime | date | time):
        return "a date/time"
    for kind, name in (
        (str, "a string"),
        (int, "an integer"),
        (float, "a float"),
        (list, "an array"),
        (dict, "a table"),
    ):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _is_kind(value: object, kind: type) -> bool:
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, int | float)
    return isinstance(value, kind)


class _Ctx:
    """The file being loaded: its name for messages, its directory for relative paths."""

    def __init__(self, path: str) -> None:
        self.file = path
        self.base_dir = os.path.dirname(path) if not path.startswith("<") else ""
        self.inline_secrets: list[str] = []

    def fail(self, key: str, reason: str) -> NoReturn:
        raise ConfigError(self.file, key, " ".join(reason.split("\n")))

    def resolve(self, path: str) -> str:
        return os.path.abspath(os.path.join(self.base_dir, path))


class _Table:
    """One TOML table at `path`; rejects unknown keys up front, then hands out typed values."""

    def __init__(
        self,
        ctx: _Ctx,
        data: object,
        path: str,
        known: tuple[str, ...],
        planned: tuple[str, ...] = (),
    ) -> None:
        if not isinstance(data, dict):
            ctx.fail(path, f"expected a table, got {_describe(data)}")
        self.ctx, self.data, self.path = ctx, data, path
        for key in data:
            if key in planned:
                ctx.fail(_join(path, key), "not supported yet")
            if key not in known:
                near = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean '{near[0]}'?)" if near else ""
                ctx.fail(_join(path, key), f"unknown key{hint}")

    def at(self, key: str) -> str:
        return _join(self.path, key)

    def has(self, key: str) -> bool:
        return key in self.data

    def get(self, key: str, kind: type, default: Any = _MISSING) -> Any:
        if key not in self.data:
            if default is _MISSING:
                self.ctx.fail(self.at(key), "missing required key")
            return default
        value = self.data[key]
        if not _is_kind(value, kind):
            self.ctx.fail(self.at(key), f"expected {_KIND_NAMES[kind]}, got {_describe(value)}")
        return value

    def get_list(self, key: str, kind: type) -> list[tuple[str, Any]]:
        """(path, item) for each item of an optional array whose items are `kind`."""
        items = self.get(key, list, [])
        out = []
        for i, item in enumerate(items):
            if not _is_kind(item, kind):
                got = _describe(item)
                self.ctx.fail(f"{self.at(key)}[{i}]", f"expected {_KIND_NAMES[kind]}, got {got}")
            out.append((f"{self.at(key)}[{i}]", item))
        return out


# --- scalar values ------------------------------------------------------------------------


def _ip(ctx: _Ctx, path: str, text: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        ctx.fail(path, f"{text!r} is not an IP address")


def _ip_interface(ctx: _Ctx, path: str, text: str) -> IPInterface:
    try:
        return ipaddress.ip_interface(text)
    except ValueError:
        ctx.fail(path, f"{text!r} is not an address with a prefix length (like '10.0.0.1/24')")


def _network(ctx: _Ctx, path: str, text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text)
    except ValueError as e:
        if "host bits set" in str(e):
            fixed = ipaddress.ip_network(text, strict=False)
            ctx.fail(path, f"{text!r} has host bits set (did you mean '{fixed}'?)")
        ctx.fail(path, f"{text!r} is not a network prefix (like '10.0.0.0/24')")


def _ipv4_network(ctx: _Ctx, path: str, text: str) -> IPv4Network:
    net = _network(ctx, path, text)
    if not isinstance(net, IPv4Network):
        ctx.fail(path, f"{text!r} is not an IPv4 prefix (the overlay carries IPv4)")
    return net


def _int_in(ctx: _Ctx, path: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        ctx.fail(path, f"{value} is out of range {low}..{high}")
    return value


def _port(table: _Table, key: str, default: Any = _MISSING) -> Any:
    value = table.get(key, int, default)
    if value is None or key not in table.data:
        return value
    return _int_in(table.ctx, table.at(key), value, 1, 65535)


def _mtu(table: _Table, default: int | None) -> int | None:
    if not table.has("mtu"):
        return default
    return _int_in(table.ctx, table.at("mtu"), table.get("mtu", int), MTU_MIN, MTU_MAX)


_MAC = re.compile(r"[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(?:\1[0-9A-Fa-f]{2}){4}")


def _mac(ctx: _Ctx, path: str, text: str) -> str:
    if not _MAC.fullmatch(text):
        ctx.fail(path, f"{text!r} is not a MAC address (like '02:00:00:00:00:02')")
    mac = text.lower().replace("-", ":")
    if mac == "00:00:00:00:00:00":
        ctx.fail(path, "the all-zeros MAC is the flood list: use 'flood' instead")
    if int(mac[:2], 16) & 1:
        ctx.fail(path, f"{text!r} is a multicast address; static entries are unicast")
    return mac


def _ifname(ctx: _Ctx, path: str, name: str) -> str:
    size = len(name.encode())
    if not 1 <= size < IFNAMSIZ:
        ctx.fail(path, f"interface name {name!r} must be 1..{IFNAMSIZ - 1} bytes long")
    if name in (".", "..") or any(c in "/:" or c.isspace() or c == "\0" for c in name):
        ctx.fail(path, f"{name!r} is not a valid Linux interface name (no '/', ':' or spaces)")
    return name


_HOSTNAME = re.compile(r"(?=.{1,253}\.?$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+")


def _endpoint(ctx: _Ctx, path: str, text: str) -> tuple[str, int]:
    bracketed = re.fullmatch(r"\[([^\]]*)\]:([0-9]+)", text)
    if bracketed:
        host, port_text = bracketed.groups()
        if not isinstance(_ip_or_none(host), IPv6Address):
            ctx.fail(path, f"{text!r}: {host!r} in brackets is not an IPv6 address")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not port_text.isdigit():
            ctx.fail(path, f"{text!r} needs a port (host:port, [IPv6]:port or name:port)")
        if ":" in host:
            ctx.fail(path, f"{text!r}: write an IPv6 endpoint as [address]:port")
        numeric = host.replace(".", "").isdigit()
        if (numeric and _ip_or_none(host) is None) or not _HOSTNAME.fullmatch(host):
            ctx.fail(path, f"{text!r}: {host!r} is not an IPv4 address or DNS name")
    return host, _int_in(ctx, path, int(port_text), 1, 65535)


def _ip_or_none(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _public_key(ctx: _Ctx, path: str, text: str) -> bytes:
    try:
        return decode_key(text)
    except ValueError as e:
        ctx.fail(path, f"public key {e}")


def _secret(table: _Table, key: str, required: bool) -> Secret | None:
    """`key` inline or `key_file`: exactly one when required, at most one otherwise."""
    ctx, file_key = table.ctx, f"{key}_file"
    if table.has(key) and table.has(file_key):
        ctx.fail(table.at(file_key), f"give either {key} or {file_key}, not both")
    if table.has(key):
        ctx.inline_secrets.append(table.at(key))
        text = table.get(key, str)
        try:
            return Secret(decode_key(text))
        except ValueError as e:
            ctx.fail(table.at(key), f"key {e}")
    if table.has(file_key):
        return _read_key_file(ctx, table.at(file_key), table.get(file_key, str))
    if required:
        ctx.fail(table.at(key), f"missing required key ({key} or {file_key})")
    return None


def _read_key_file(ctx: _Ctx, path: str, name: str) -> Secret:
    full = ctx.resolve(name)
    try:
        with open(full, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if mode & 0o077:
                ctx.fail(
                    path,
                    f"key file {full} is readable by group or others "
                    f"(mode {mode & 0o777:04o}); run: chmod 600 {full}",
                )
            data = f.read(4096)
    except OSError as e:
        ctx.fail(path, f"cannot read key file {full}: {e.strerror}")
    try:
        return Secret(decode_key(data.decode("ascii", errors="replace")))
    except ValueError as e:
        ctx.fail(path, f"key file {full}: content {e}")


def _choice(table: _Table, key: str, choices: tuple[str, ...], default: str) -> str:
    value = table.get(key, str, default)
    if value not in choices:
        table.ctx.fail(table.at(key), f"{value!r} is not one of: {', '.join(choices)}")
    return value


def _unicast(ctx: _Ctx, path: str, text: str, family_of: IPAddress | None = None) -> IPAddress:
    addr = _ip(ctx, path, text)
    if addr.is_multicast or addr.is_unspecified:
        ctx.fail(path, f"{text!r} is not a unicast address")
    if family_of is not None and addr.version != family_of.version:
        ctx.fail(path, f"{text!r} is IPv{addr.version} but the underlay is IPv{family_of.version}")
    return addr


def _addresses(ctx: _Ctx, table: _Table) -> tuple[IPInterface, ...]:
    seen: dict[IPInterface, str] = {}
    for path, text in table.get_list("address", str):
        addr = _ip_interface(ctx, path, text)
        if addr in seen:
            ctx.fail(path, f"'{addr}' is listed twice (also {seen[addr]})")
        seen[addr] = path
    return tuple(seen)


# --- [daemon] -------------------------------------------------------------------------------

_DAEMON_DEFAULTS = DaemonConfig()


def _daemon(ctx: _Ctx, data: object) -> DaemonConfig:
    t = _Table(ctx, data, "daemon", ("control_socket", "log_level"), ("metrics_listen", "user"))
    sock = t.get("control_socket", str, _DAEMON_DEFAULTS.control_socket)
    if not sock:
        ctx.fail(t.at("control_socket"), "must not be empty")
    sock = ctx.resolve(sock)
    if len(sock.encode()) > SUN_PATH_MAX:
        ctx.fail(t.at("control_socket"), f"path is longer than {SUN_PATH_MAX} bytes (AF_UNIX)")
    level = t.get("log_level", str, _DAEMON_DEFAULTS.log_level).lower()
    if level not in LOG_LEVELS:
        ctx.fail(t.at("log_level"), f"{level!r} is not one of: {', '.join(LOG_LEVELS)}")
    return DaemonConfig(control_socket=sock, log_level=level)


# --- type = "vxlan" -------------------------------------------------------------------------

_VXLAN_KEYS = (
    "type",
    "vni",
    "address",
    "mtu",
    "local",
    "port",
    "learning",
    "ageing",
    "flood",
    "bridge",
    "fdb",
)


def _vxlan(ctx: _Ctx, name: str, t: _Table) -> VxlanConfig:
    vni = _int_in(ctx, t.at("vni"), t.get("vni", int), 0, VNI_MAX)
    local = _ip(ctx, t.at("local"), t.get("local", str))
    if local.is_multicast:
        ctx.fail(t.at("local"), f"'{local}' is a multicast address")
    ageing = float(t.get("ageing", float, 300.0))
    if not 0 < ageing < float("inf"):
        ctx.fail(t.at("ageing"), f"{ageing} is not a positive number of seconds")
    flood: dict[IPAddress, str] = {}
    for path, text in t.get_list("flood", str):
        addr = _unicast(ctx, path, text, local)
        if addr in flood:
            ctx.fail(path, f"'{addr}' is listed twice (also {flood[addr]})")
        flood[addr] = path
    bridge = t.get("bridge", str, None)
    if bridge is not None and _ifname(ctx, t.at("bridge"), bridge) == name:
        ctx.fail(t.at("bridge"), "an interface cannot be enslaved to itself")
    return VxlanConfig(
        name=name,
        vni=vni,
        address=_addresses(ctx, t),
        mtu=_mtu(t, None),
        local=local,
        port=_port(t, "port", 4789),
        learning=t.get("learning", bool, True),
        ageing=ageing,
        flood=tuple(flood),
        bridge=bridge,
        fdb=_fdb(ctx, t, local),
    )


def _fdb(ctx: _Ctx, t: _Table, local: IPAddress) -> tuple[FdbEntryConfig, ...]:
    entries: list[FdbEntryConfig] = []
    seen: dict[str, str] = {}
    for path, item in t.get_list("fdb", dict):
        e = _Table(ctx, item, path, ("mac", "remote"))
        mac = _mac(ctx, e.at("mac"), e.get("mac", str))
        if mac in seen:
            ctx.fail(e.at("mac"), f"duplicate static entry for {mac} (also {seen[mac]})")
        seen[mac] = path
        remote = _unicast(ctx, e.at("remote"), e.get("remote", str), local)
        entries.append(FdbEntryConfig(mac=mac, remote=remote))
    return tuple(entries)


# --- type = "wireguard" ---------------------------------------------------------------------

_WG_KEYS = ("type", "address", "mtu", "listen_port", "private_key", "private_key_file", "peers")
_PEER_KEYS = (
    "public_key",
    "preshared_key",
    "preshared_key_file",
    "endpoint",
    "allowed_ips",
    "persistent_keepalive",
)


def _wireguard(ctx: _Ctx, name: str, t: _Table) -> WireguardConfig:
    address, mtu = _addresses(ctx, t), _mtu(t, 1420)
    listen_port = _port(t, "listen_port", None)
    private_key = _secret(t, "private_key", required=True)
    assert private_key is not None
    own = _derive_public(private_key)
    peers: list[PeerConfig] = []
    keys: dict[bytes, str] = {}
    routed: dict[IPNetwork, str] = {}
    for path, item in t.get_list("peers", dict):
        p = _Table(ctx, item, path, _PEER_KEYS)
        peer = _peer(ctx, p)
        if peer.public_key == own:
            ctx.fail(p.at("public_key"), "is this interface's own public key")
        if peer.public_key in keys:
            ctx.fail(
                p.at("public_key"), f"duplicate peer: same public key as {keys[peer.public_key]}"
            )
        keys[peer.public_key] = path
        for j, net in enumerate(peer.allowed_ips):
            if net in routed:
                ctx.fail(
                    f"{p.at('allowed_ips')}[{j}]", f"'{net}' is already allowed for {routed[net]}"
                )
            routed[net] = path
        peers.append(peer)
    return WireguardConfig(
        name=name,
        address=address,
        mtu=mtu,
        listen_port=listen_port,
        private_key=private_key,
        peers=tuple(peers),
    )


def _peer(ctx: _Ctx, p: _Table) -> PeerConfig:
    public_key = _public_key(ctx, p.at("public_key"), p.get("public_key", str))
    endpoint = p.get("endpoint", str, None)
    keepalive = p.get("persistent_keepalive", int, 0)
    _int_in(ctx, p.at("persistent_keepalive"), keepalive, 0, 65535)
    return PeerConfig(
        public_key=public_key,
        preshared_key=_secret(p, "preshared_key", required=False),
        endpoint=None if endpoint is None else _endpoint(ctx, p.at("endpoint"), endpoint),
        allowed_ips=tuple(
            _network(ctx, path, text) for path, text in p.get_list("allowed_ips", str)
        ),
        persistent_keepalive=keepalive or None,
    )


def _derive_public(secret: Secret) -> bytes | None:
    """X25519 public key of a private key, or None without the cryptography package."""
    try:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    except ImportError:  # pragma: no cover - cryptography is a dependency
        return None
    return X25519PrivateKey.from_private_bytes(secret.value).public_key().public_bytes_raw()


# --- type = "overlay" -----------------------------------------------------------------------

_OVERLAY_KEYS = (
    "type",
    "network",
    "subnet_len",
    "public_ip",
    "port",
    "encryption",
    "private_key",
    "private_key_file",
    "listen_port",
    "registry",
    "subnet",
    "hosts",
    "etcd_endpoints",
    "etcd_prefix",
    "lease_ttl",
    "mtu",
)
_ETCD_KEYS = ("etcd_endpoints", "etcd_prefix", "lease_ttl")
_OVERLAY_DEFAULTS = {
    "etcd_endpoints": ("http://127.0.0.1:2379",),
    "etcd_prefix": "/coreos.com/network",
    "lease_ttl": 86400,
}
SUBNET_LEN_DEFAULT, SUBNET_LEN_MAX = 24, 30
LEASE_TTL_MAX = 9_000_000_000  # etcd's MaxLeaseTTL, seconds


def _overlay(ctx: _Ctx, name: str, t: _Table) -> OverlayConfig:
    registry = _choice(t, "registry", ("static", "etcd"), "static")
    encryption = _choice(t, "encryption", ("none", "wireguard"), "none")
    static = registry == "static"
    network = _optional(t, "network", _ipv4_network, static, 'with registry = "static"')
    subnet_len = _subnet_len(t, network, static)
    subnet = _optional(
        t, "subnet", _ipv4_network, static, 'this host\'s subnet, with registry = "static"'
    )
    if subnet is not None:
        _check_subnet(ctx, t.at("subnet"), subnet, network, subnet_len)
    public_ip = _unicast(ctx, t.at("public_ip"), t.get("public_ip", str))
    private_key, listen_port = _overlay_encryption(t, encryption)
    etcd = _etcd(t) if not static else _reject(t, _ETCD_KEYS, 'only used with registry = "etcd"')
    hosts = _hosts(t, registry, encryption, (network, subnet_len, subnet, public_ip))
    return OverlayConfig(
        name=name,
        network=network,
        subnet_len=subnet_len,
        public_ip=public_ip,
        port=_port(t, "port", 8285),
        encryption=encryption,
        private_key=private_key,
        listen_port=listen_port,
        registry=registry,
        subnet=subnet,
        hosts=hosts,
        mtu=_mtu(t, None),
        **etcd,
    )


def _optional(t: _Table, key: str, parse: Any, required: bool, why: str) -> Any:
    if not t.has(key):
        if required:
            t.ctx.fail(t.at(key), f"missing required key ({why})")
        return None
    return parse(t.ctx, t.at(key), t.get(key, str))


def _reject(t: _Table, keys: tuple[str, ...], reason: str) -> dict[str, Any]:
    for key in keys:
        if t.has(key):
            t.ctx.fail(t.at(key), reason)
    return {}


def _subnet_len(t: _Table, network: IPv4Network | None, static: bool) -> int | None:
    low = network.prefixlen + 1 if network is not None else 1
    if t.has("subnet_len"):
        value = t.get("subnet_len", int)
        if not low <= value <= SUBNET_LEN_MAX:
            t.ctx.fail(
                t.at("subnet_len"),
                f"{value} is out of range {low}..{SUBNET_LEN_MAX} "
                f"(longer than the network's prefix, at most /30)",
            )
        return value
    if not static:
        return None
    if low > SUBNET_LEN_DEFAULT:
        t.ctx.fail(
            t.at("subnet_len"),
            f"the default {SUBNET_LEN_DEFAULT} does not fit in network {network}; set subnet_len",
        )
    return SUBNET_LEN_DEFAULT


def _check_subnet(
    ctx: _Ctx, path: str, subnet: IPv4Network, network: IPv4Network | None, subnet_len: int | None
) -> None:
    if network is not None and not subnet.subnet_of(network):
        ctx.fail(path, f"'{subnet}' is outside network {network}")
    if subnet_len is not None and subnet.prefixlen != subnet_len:
        ctx.fail(path, f"'{subnet}' is a /{subnet.prefixlen}, not a /{subnet_len} (subnet_len)")


def _overlay_encryption(t: _Table, encryption: str) -> tuple[Secret | None, int]:
    if encryption != "wireguard":
        _reject(
            t,
            ("private_key", "private_key_file", "listen_port"),
            'only used with encryption = "wireguard"',
        )
        return None, 51820
    return _secret(t, "private_key", required=True), _port(t, "listen_port", 51820)


def _etcd(t: _Table) -> dict[str, Any]:
    ctx, out = t.ctx, dict(_OVERLAY_DEFAULTS)
    if t.has("etcd_endpoints"):
        urls = tuple(_url(ctx, path, text) for path, text in t.get_list("etcd_endpoints", str))
        if not urls:
            ctx.fail(t.at("etcd_endpoints"), "must list at least one endpoint")
        out["etcd_endpoints"] = urls
    prefix = t.get("etcd_prefix", str, out["etcd_prefix"])
    if not prefix.startswith("/") or (len(prefix) > 1 and prefix.endswith("/")):
        ctx.fail(t.at("etcd_prefix"), f"{prefix!r} must start with '/' and not end with '/'")
    out["etcd_prefix"] = prefix
    ttl = t.get("lease_ttl", int, out["lease_ttl"])
    out["lease_ttl"] = _int_in(ctx, t.at("lease_ttl"), ttl, 1, LEASE_TTL_MAX)
    return out


def _url(ctx: _Ctx, path: str, text: str) -> str:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(text)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        ok = False
    if not ok:
        ctx.fail(path, f"{text!r} is not an http:// or https:// URL (like 'http://127.0.0.1:2379')")
    return text


def _hosts(
    t: _Table, registry: str, encryption: str, this: tuple[Any, ...]
) -> tuple[HostConfig, ...]:
    """Static hosts; `this` is (network, subnet_len, own subnet, own public_ip)."""
    if registry != "static":
        _reject(t, ("hosts",), 'only used with registry = "static" (etcd supplies the hosts)')
        return ()
    network, subnet_len, own_subnet, own_ip = this
    seen: dict[Any, str] = {own_subnet: t.at("subnet"), own_ip: t.at("public_ip")}
    hosts = []
    for path, item in t.get_list("hosts", dict):
        h = _Table(t.ctx, item, path, ("subnet", "public_ip", "public_key"))
        host = _host(h, encryption, network, subnet_len, own_ip)
        for key, value in (
            ("subnet", host.subnet),
            ("public_ip", host.public_ip),
            ("public_key", host.public_key),
        ):
            if value is not None and value in seen:
                t.ctx.fail(h.at(key), f"duplicate {key} '{_plain(value)}' (also {seen[value]})")
            seen[value] = h.at(key)
        hosts.append(host)
    return tuple(hosts)


def _host(
    h: _Table, encryption: str, network: IPv4Network, subnet_len: int, own_ip: IPAddress
) -> HostConfig:
    ctx = h.ctx
    subnet = _ipv4_network(ctx, h.at("subnet"), h.get("subnet", str))
    _check_subnet(ctx, h.at("subnet"), subnet, network, subnet_len)
    public_ip = _unicast(ctx, h.at("public_ip"), h.get("public_ip", str), own_ip)
    if encryption == "wireguard":
        why = 'with encryption = "wireguard"'
        text = _optional(h, "public_key", lambda c, p, v: v, True, why)
        return HostConfig(
            subnet=subnet,
            public_ip=public_ip,
            public_key=_public_key(ctx, h.at("public_key"), text),
        )
    _reject(h, ("public_key",), 'only used with encryption = "wireguard"')
    return HostConfig(subnet=subnet, public_ip=public_ip)


def _plain(value: object) -> str:
    return encode_key(value) if isinstance(value, bytes) else str(value)


# --- the whole file -------------------------------------------------------------------------

_PARSERS: dict[str, tuple[tuple[str, ...], Any]] = {
    "vxlan": (_VXLAN_KEYS, _vxlan),
    "wireguard": (_WG_KEYS, _wireguard),
    "overlay": (_OVERLAY_KEYS, _overlay),
}


def _interface(ctx: _Ctx, name: str, data: object) -> InterfaceConfig:
    path = _join("interfaces", name)
    _ifname(ctx, path, name)
    if not isinstance(data, dict):
        ctx.fail(path, f"expected a table, got {_describe(data)}")
    known = ", ".join(TYPES)
    if "type" not in data:
        ctx.fail(_join(path, "type"), f"missing required key (one of: {known})")
    kind = data["type"]
    if not isinstance(kind, str) or kind not in _PARSERS:
        shown = repr(kind) if isinstance(kind, str) else _describe(kind)
        ctx.fail(_join(path, "type"), f"unknown interface type {shown} (known types: {known})")
    keys, parse = _PARSERS[kind]
    return parse(ctx, name, _Table(ctx, data, path, keys))  # type: ignore[no-any-return]


def _config(ctx: _Ctx, doc: dict[str, Any]) -> Config:
    top = _Table(ctx, doc, "", ("daemon", "interfaces"))
    daemon = _daemon(ctx, top.get("daemon", dict, {}))
    tables = top.get("interfaces", dict, {})
    items = tuple((name, _interface(ctx, name, data)) for name, data in tables.items())
    _check_ports(ctx, items)
    _check_bridges(ctx, items)
    return Config(path=ctx.file, daemon=daemon, interfaces=FrozenMap(items))


def _udp_binds(name: str, cfg: InterfaceConfig) -> list[tuple[str, IPAddress | None, int]]:
    """(key path, bound address or None for the wildcard, port) of each socket a link binds."""
    base = _join("interfaces", name)
    if isinstance(cfg, VxlanConfig):
        return [(f"{base}.port", None if cfg.local.is_unspecified else cfg.local, cfg.port)]
    if isinstance(cfg, WireguardConfig):
        return [] if cfg.listen_port is None else [(f"{base}.listen_port", None, cfg.listen_port)]
    if cfg.encryption == "wireguard":
        return [(f"{base}.listen_port", None, cfg.listen_port)]
    return [(f"{base}.port", None, cfg.port)]


def _check_ports(ctx: _Ctx, items: tuple[tuple[str, InterfaceConfig], ...]) -> None:
    bound: list[tuple[str, IPAddress | None, int]] = []
    for name, cfg in items:
        for path, addr, port in _udp_binds(name, cfg):
            for other, other_addr, other_port in bound:
                if port == other_port and (
                    addr is None or other_addr is None or addr == other_addr
                ):
                    ctx.fail(path, f"UDP port {port} is already used by {other}")
            bound.append((path, addr, port))


def _check_bridges(ctx: _Ctx, items: tuple[tuple[str, InterfaceConfig], ...]) -> None:
    names = {name for name, _ in items}
    for name, cfg in items:
        if isinstance(cfg, VxlanConfig) and cfg.bridge in names:
            path = _join(_join("interfaces", name), "bridge")
            ctx.fail(path, f"'{cfg.bridge}' is a tunneld interface, not a bridge")


_TWICE = re.compile(r"Cannot declare \((.*)\) twice \(at (line \d+, column \d+)\)")


def _parse_toml(ctx: _Ctx, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
    twice = _TWICE.fullmatch(message)
    if twice:
        import ast

        parts = ast.literal_eval(f"({twice.group(1)})")
        key = ".".join(_key_text(str(p)) for p in parts)
        what = "duplicate interface" if len(parts) == 2 and parts[0] == "interfaces" else "table"
        ctx.fail(key, f"{what} declared twice (again at {twice.group(2)})")
    ctx.fail("(syntax)", f"invalid TOML: {message}")


def loads(text: str, path: str | os.PathLike[str] = "<string>") -> Config:
    """Parse and validate config text; key files are resolved relative to `path`'s directory.

    Raises ConfigError naming `path`, the key path and the reason.
    """
    ctx = _Ctx(os.fspath(path))
    return _config(ctx, _parse_toml(ctx, text))


def load(path: str | os.PathLike[str]) -> Config:
    """Read, parse and validate a config file (and its key files). Raises ConfigError.

    A file holding inline keys that group or others can read is accepted with a
    warning on the "tunneld.config" logger, as wg-quick does.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            mode, raw = os.fstat(f.fileno()).st_mode, f.read()
    except OSError as e:
        raise ConfigError(name, "", f"cannot read config file: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(name, "(syntax)", f"not UTF-8 text (byte {e.start})") from None
    ctx = _Ctx(name)
    cfg = _config(ctx, _parse_toml(ctx, text))
    if mode & 0o077 and ctx.inline_secrets:
        log.warning(
            "%s is readable by group or others (mode %04o) and holds inline keys (%s); "
            "run: chmod 600 %s, or use private_key_file/preshared_key_file",
            name,
            mode & 0o777,
            ", ".join(ctx.inline_secrets),
            name,
        )
    return cfg


# --- output ----------------------------------------------------------------------------------

_UNSET = {
    "mtu": "default: underlay MTU minus overhead",
    "listen_port": "random port",
    "bridge": "none",
    "network": "from etcd",
    "subnet_len": "from etcd",
    "subnet": "leased from etcd",
    "endpoint": "learned from the peer",
    "persistent_keepalive": "off",
    "preshared_key": "none",
    "private_key": "none",
    "public_key": "none",
}


def render(cfg: Config) -> str:
    """The resolved config as TOML (every default filled in); secrets print as (hidden).

    Without secrets, `loads(render(cfg), cfg.path) == cfg`.
    """
    lines = [
        f"# {cfg.path}: resolved configuration; secrets are shown as {HIDDEN}",
        "",
        "[daemon]",
        *_render_table("daemon", cfg.daemon),
    ]
    for name, iface in cfg.interfaces.items():
        header = _join("interfaces", name)
        lines += ["", f"[{header}]", *_render_table(header, iface)]
    return "\n".join(lines) + "\n"


def _render_table(header: str, obj: Any) -> list[str]:
    out: list[str] = []
    subtables: list[tuple[str, tuple[Any, ...]]] = []
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if field.name == "name" or not _relevant(obj, field.name):
            continue
        if value is None:
            out.append(f"# {field.name}: unset ({_UNSET.get(field.name, 'none')})")
        elif isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
            subtables.append((field.name, value))
        else:
            out.append(f"{field.name} = {_render_value(field.name, value)}")
        if isinstance(value, Secret) and field.name == "private_key":
            public = _derive_public(value)
            if public is not None:
                out.append(f'# public_key (derived from private_key) = "{encode_key(public)}"')
    for key, items in subtables:
        for item in items:
            out += ["", f"[[{header}.{key}]]", *_render_table(f"{header}.{key}", item)]
    return out


def _relevant(obj: object, key: str) -> bool:
    """False for an overlay's keys that its registry or encryption does not use."""
    if not isinstance(obj, OverlayConfig):
        return True
    if key in _ETCD_KEYS or key == "hosts":
        return (obj.registry == "etcd") == (key != "hosts")
    if key in ("private_key", "listen_port"):
        return obj.encryption == "wireguard"
    return True


def _render_value(key: str, value: object) -> str:
    if isinstance(value, Secret):
        return json.dumps(HIDDEN)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, bytes):
        return json.dumps(encode_key(value))
    if key == "endpoint" and isinstance(value, tuple):
        host, port = value
        return json.dumps(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    if isinstance(value, tuple):
        return "[" + ", ".join(_render_value(key, item) for item in value) + "]"
    return json.dumps(str(value))


def check_config_main(path: str | os.PathLike[str]) -> int:
    """`tunneld check-config FILE`: print the resolved config and return 0, or print one
    line "FILE: KEY: reason" to stderr and return 2."""
    try:
        cfg = load(path)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return e.exit_code
    sys.stdout.write(render(cfg))
    return 0
