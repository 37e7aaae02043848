"""One parser per table: [daemon], and each interface type (vxlan, wireguard, overlay)."""

from __future__ import annotations

import dataclasses
from ipaddress import (
    IPv4Network,
)
from typing import Any

from tunneld.config.fields import (
    HOOK_KEYS,
    _addresses,
    _choice,
    _Ctx,
    _describe,
    _endpoint,
    _fwmark,
    _hooks,
    _ifname,
    _int_in,
    _ip,
    _ip_or_none,
    _ipv4_network,
    _join,
    _mac,
    _mss_clamp,
    _mtu,
    _network,
    _port,
    _public_key,
    _route_table,
    _secret,
    _Table,
    _unicast,
)
from tunneld.config.nat import NAT_KEYS, nat_fields
from tunneld.config.overlay_ipv6 import IPV6_KEYS, host_ipv6_subnet, overlay_ipv6
from tunneld.config.schema import (
    IFNAMSIZ,
    LOG_LEVELS,
    SUN_PATH_MAX,
    TYPES,
    VNI_MAX,
    DaemonConfig,
    FdbEntryConfig,
    HostConfig,
    InterfaceConfig,
    IPAddress,
    IPNetwork,
    OverlayConfig,
    PeerConfig,
    VxlanConfig,
    WireguardConfig,
)
from tunneld.secret import Secret, encode_key

# --- [daemon] -------------------------------------------------------------------------------

_DAEMON_DEFAULTS = DaemonConfig()


def _daemon(ctx: _Ctx, data: object) -> DaemonConfig:
    t = _Table(ctx, data, "daemon",
               ("control_socket", "log_level", "metrics_listen", "user", "uapi_dir"))  # fmt: skip
    sock = t.get("control_socket", str, _DAEMON_DEFAULTS.control_socket)
    if not sock:
        ctx.fail(t.at("control_socket"), "must not be empty")
    sock = ctx.resolve(sock)
    if len(sock.encode()) > SUN_PATH_MAX:
        ctx.fail(t.at("control_socket"), f"path is longer than {SUN_PATH_MAX} bytes (AF_UNIX)")
    level = t.get("log_level", str, _DAEMON_DEFAULTS.log_level).lower()
    if level not in LOG_LEVELS:
        ctx.fail(t.at("log_level"), f"{level!r} is not one of: {', '.join(LOG_LEVELS)}")
    metrics = None
    if t.has("metrics_listen"):
        metrics = _listen(ctx, t.at("metrics_listen"), t.get("metrics_listen", str))
    user = _user(ctx, t.at("user"), t.get("user", str)) if t.has("user") else None
    return DaemonConfig(control_socket=sock, log_level=level, metrics_listen=metrics, user=user,
                        uapi_dir=_uapi_dir(ctx, t))  # fmt: skip


def _uapi_dir(ctx: _Ctx, t: _Table) -> str | None:
    """Where the WireGuard UAPI sockets go (<dir>/<IFACE>.sock); "" turns them off."""
    text = t.get("uapi_dir", str, _DAEMON_DEFAULTS.uapi_dir)
    if not text:
        return None
    path = ctx.resolve(text)
    if len(path.encode()) + len("/.sock") + IFNAMSIZ - 1 > SUN_PATH_MAX:
        ctx.fail(t.at("uapi_dir"), f"path is too long for <dir>/<IFACE>.sock to fit "
                                   f"{SUN_PATH_MAX} bytes (AF_UNIX)")  # fmt: skip
    return path


def _listen(ctx: _Ctx, path: str, text: str) -> tuple[str, int]:
    """A TCP listen address: IPv4:port or [IPv6]:port (an IP, not a name)."""
    host, port = _endpoint(ctx, path, text)
    if _ip_or_none(host) is None:
        ctx.fail(path, f"{text!r}: listen on an IP address (like 127.0.0.1:9586), not a name")
    return host, port


def _user(ctx: _Ctx, path: str, name: str) -> str:
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        ctx.fail(path, f"no such user {name!r} (create it: useradd --system {name})")
    if entry.pw_uid == 0:
        ctx.fail(path, f"{name!r} is root; leave user unset to stay root")
    return name


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
    "max_learned",
    "flood",
    "bridge",
    "fdb",
    "offload",
    "mss_clamp",
    *HOOK_KEYS,
    *NAT_KEYS,
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
        max_learned=_int_in(ctx, t.at("max_learned"), t.get("max_learned", int, 65536), 0, 1 << 24),
        flood=tuple(flood),
        bridge=bridge,
        fdb=_fdb(ctx, t, local),
        offload=t.get("offload", bool, True),
        mss_clamp=_mss_clamp(t),
        **_hooks(t),
        **nat_fields(t, name),
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

_WG_KEYS = (
    "type",
    "address",
    "mtu",
    "listen_port",
    "private_key",
    "private_key_file",
    "peers",
    "handshake_load_threshold",
    "offload",
    "mss_clamp",
    "table",
    "fwmark",
    *HOOK_KEYS,
    *NAT_KEYS,
)
_PEER_KEYS = (
    "public_key",
    "preshared_key",
    "preshared_key_file",
    "endpoint",
    "allowed_ips",
    "persistent_keepalive",
)


def _wireguard(ctx: _Ctx, name: str, t: _Table) -> WireguardConfig:
    address, mtu = _addresses(ctx, t), _mtu(t, None)
    listen_port = _port(t, "listen_port", None)
    threshold = _int_in(
        ctx,
        t.at("handshake_load_threshold"),
        t.get("handshake_load_threshold", int, 128),
        1,
        1_000_000,
    )
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
        handshake_load_threshold=threshold,
        offload=t.get("offload", bool, True),
        mss_clamp=_mss_clamp(t),
        table=_route_table(t),
        fwmark=_fwmark(t),
        **_hooks(t),
        **nat_fields(t, name),
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
    *IPV6_KEYS,
    "etcd_endpoints",
    "etcd_prefix",
    "lease_ttl",
    "mtu",
    "offload",
    "mss_clamp",
    *HOOK_KEYS,
    *NAT_KEYS,
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
    ipv6 = overlay_ipv6(t, static)
    this = (network, subnet_len, subnet, public_ip, ipv6["ipv6_network"],
            ipv6["ipv6_subnet_len"], ipv6["ipv6_subnet"])  # fmt: skip
    hosts = _hosts(t, registry, encryption, this)
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
        **ipv6,
        mtu=_mtu(t, None),
        offload=t.get("offload", bool, True),
        mss_clamp=_mss_clamp(t),
        **_hooks(t),
        **nat_fields(t, name),
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
    """Static hosts; `this` is (network, subnet_len, own subnet, own public_ip,
    ipv6_network, ipv6_subnet_len, own ipv6_subnet)."""
    if registry != "static":
        _reject(t, ("hosts",), 'only used with registry = "static" (etcd supplies the hosts)')
        return ()
    network, subnet_len, own_subnet, own_ip, network6, length6, own_subnet6 = this
    seen: dict[Any, str] = {own_subnet: t.at("subnet"), own_ip: t.at("public_ip")}
    if own_subnet6 is not None:
        seen[own_subnet6] = t.at("ipv6_subnet")
    hosts = []
    for path, item in t.get_list("hosts", dict):
        h = _Table(t.ctx, item, path, ("subnet", "public_ip", "public_key", "ipv6_subnet"))
        host = _host(h, encryption, network, subnet_len, own_ip)
        subnet6 = host_ipv6_subnet(h, network6, length6)
        if subnet6 is not None:
            host = dataclasses.replace(host, ipv6_subnet=subnet6)
        for key, value in (
            ("subnet", host.subnet),
            ("public_ip", host.public_ip),
            ("public_key", host.public_key),
            ("ipv6_subnet", host.ipv6_subnet),
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
