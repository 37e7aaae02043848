"""The static registry: this host's subnet and the other hosts from the config file.

SIGHUP applies host additions and removals live; a new network, subnet or
subnet length (IPv4 or IPv6) needs the link rebuilt.
"""

from __future__ import annotations

from typing import Any

from tunneld.registry.base import ChangeCallback, Host, Registry


def hosts_from_config(cfg: Any) -> list[Host]:
    backend = "wireguard" if cfg.encryption == "wireguard" else "udp"
    port = cfg.listen_port if cfg.encryption == "wireguard" else None
    return [
        Host(
            subnet=h.subnet,
            public_ip=str(h.public_ip).partition("%")[0],  # recvfrom reports no scope
            backend_type=backend,
            public_key=h.public_key,
            port=port,
            ipv6_subnet=getattr(h, "ipv6_subnet", None),
        )  # fmt: skip
        for h in cfg.hosts
    ]


def _ipv6_of(cfg: Any) -> tuple[Any, Any, Any]:
    """(ipv6_subnet, ipv6_network, ipv6_subnet_len); all None for an IPv4-only overlay."""
    return tuple(getattr(cfg, k, None) for k in ("ipv6_subnet", "ipv6_network", "ipv6_subnet_len"))  # type: ignore[return-value]


class StaticRegistry(Registry):
    kind = "static"

    def __init__(self, cfg: Any, on_change: ChangeCallback) -> None:
        super().__init__(on_change)
        self.cfg = cfg

    async def start(self) -> None:
        self.subnet, self.network = self.cfg.subnet, self.cfg.network
        self.subnet6, self.network6 = _ipv6_of(self.cfg)[:2]
        self.replace_hosts(hosts_from_config(self.cfg))

    def reload(self, cfg: Any) -> bool:
        if (cfg.subnet, cfg.network, cfg.subnet_len) != (self.subnet, self.network,
                                                         self.cfg.subnet_len):  # fmt: skip
            return False
        if _ipv6_of(cfg) != (self.subnet6, self.network6, _ipv6_of(self.cfg)[2]):
            return False
        self.cfg = cfg
        self.replace_hosts(hosts_from_config(cfg))
        return True

    def status(self) -> dict[str, Any]:
        return {"kind": self.kind, "connected": True, "lease_expiry": None}

    async def stop(self) -> None:
        return None
