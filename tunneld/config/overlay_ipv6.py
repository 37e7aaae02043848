"""An overlay's IPv6 inside: `ipv6_network`, `ipv6_subnet_len`, `ipv6_subnet`, hosts[].ipv6_subnet.

flannel's dual-stack network config (pkg/subnet/config.go): `EnableIPv6` with
`IPv6Network` and `IPv6SubnetLen` (default 64 when the network is a /62 or wider,
else its prefix + 2; at most /126; a network narrower than /124 is an error), and
each lease's IPv6Subnet beside its IPv4 one. The same rules here, for the static
registry; with etcd the values come from `<prefix>/config` and those given in the
file must agree with it (registry/etcd.py).
"""

from __future__ import annotations

from ipaddress import IPv6Network
from typing import Any

from tunneld.config.fields import _Ctx, _network, _Table

IPV6_KEYS = ("ipv6_network", "ipv6_subnet_len", "ipv6_subnet")
IPV6_SUBNET_LEN_DEFAULT, IPV6_SUBNET_LEN_MAX = 64, 126


def _ipv6_network(ctx: _Ctx, path: str, text: str) -> IPv6Network:
    net = _network(ctx, path, text)
    if not isinstance(net, IPv6Network):
        ctx.fail(path, f"{text!r} is not an IPv6 prefix (like 'fd10:5::/48')")
    return net


def default_ipv6_subnet_len(network: IPv6Network) -> int | None:
    """flannel's IPv6SubnetLen default for `network`, or None when it is too small."""
    if network.prefixlen > 124:
        return None
    return IPV6_SUBNET_LEN_DEFAULT if network.prefixlen <= 62 else network.prefixlen + 2


def overlay_ipv6(t: _Table, static: bool) -> dict[str, Any]:
    """The overlay's three IPv6 fields (all None: no IPv6 inside, or with etcd: from etcd)."""
    ctx = t.ctx
    network = _ipv6_network(ctx, t.at("ipv6_network"), t.get("ipv6_network", str)) \
        if t.has("ipv6_network") else None  # fmt: skip
    if network is None and static:
        for key in ("ipv6_subnet_len", "ipv6_subnet"):
            if t.has(key):
                ctx.fail(t.at(key), "needs ipv6_network (the IPv6 network every host shares)")
        return dict.fromkeys(IPV6_KEYS)
    length = _length(t, network, static)
    subnet = None
    if t.has("ipv6_subnet"):
        subnet = _ipv6_network(ctx, t.at("ipv6_subnet"), t.get("ipv6_subnet", str))
        check_ipv6_subnet(ctx, t.at("ipv6_subnet"), subnet, network, length)
    elif static:
        ctx.fail(t.at("ipv6_subnet"), "missing required key (this host's IPv6 subnet, "
                 'with ipv6_network and registry = "static")')  # fmt: skip
    return {"ipv6_network": network, "ipv6_subnet_len": length, "ipv6_subnet": subnet}


def _length(t: _Table, network: IPv6Network | None, static: bool) -> int | None:
    low = network.prefixlen + 2 if network is not None else 1
    if t.has("ipv6_subnet_len"):
        value = t.get("ipv6_subnet_len", int)
        if not low <= value <= IPV6_SUBNET_LEN_MAX:
            t.ctx.fail(
                t.at("ipv6_subnet_len"),
                f"{value} is out of range {low}..{IPV6_SUBNET_LEN_MAX} (at least four "
                f"subnets in the network, as flannel requires; at most /126)",
            )
        return value
    if network is None:
        return None
    length = default_ipv6_subnet_len(network)
    if length is None:
        t.ctx.fail(t.at("ipv6_network"), f"{network} is too small; the smallest is a /124")
    return length


def check_ipv6_subnet(
    ctx: _Ctx, path: str, subnet: IPv6Network, network: IPv6Network | None, length: int | None
) -> None:
    if network is not None and not subnet.subnet_of(network):
        ctx.fail(path, f"'{subnet}' is outside ipv6_network {network}")
    if length is not None and subnet.prefixlen != length:
        ctx.fail(path, f"'{subnet}' is a /{subnet.prefixlen}, not a /{length} (ipv6_subnet_len)")


def host_ipv6_subnet(h: _Table, network: IPv6Network | None, length: int | None) -> Any:
    """hosts[].ipv6_subnet: optional (a host without one is reached over IPv4 only)."""
    if not h.has("ipv6_subnet"):
        return None
    if network is None:
        h.ctx.fail(h.at("ipv6_subnet"), "needs ipv6_network on the interface")
    subnet = _ipv6_network(h.ctx, h.at("ipv6_subnet"), h.get("ipv6_subnet", str))
    check_ipv6_subnet(h.ctx, h.at("ipv6_subnet"), subnet, network, length)
    return subnet
