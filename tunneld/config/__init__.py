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

import os
import sys

from tunneld.config.loader import load, loads
from tunneld.config.render import render
from tunneld.config.schema import (
    Config,
    DaemonConfig,
    FdbEntryConfig,
    FrozenMap,
    HostConfig,
    InterfaceConfig,
    OverlayConfig,
    PeerConfig,
    VxlanConfig,
    WireguardConfig,
)
from tunneld.errors import ConfigError
from tunneld.secret import Secret

__all__ = [
    "Config",
    "DaemonConfig",
    "FdbEntryConfig",
    "FrozenMap",
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


def check_config_main(path: str | os.PathLike[str]) -> int:
    """`tunneld check-config FILE`: print the resolved config and return 0, or print one
    line "FILE: KEY: reason" to stderr and return 2."""
    try:
        cfg = load(path)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return e.exit_code
    sys.stdout.write(render(cfg, _mtu_notes(cfg)))
    return 0


def _mtu_notes(cfg: Config) -> dict[str, str]:
    """How each unset `mtu` resolves on this host (read-only route and link lookups)."""
    try:
        from tunneld.kernel import netlink
        from tunneld.links.stacking import describe_mtus

        return describe_mtus(dict(cfg.interfaces), netlink)  # VXLAN over wg0: from wg0's
    except Exception:  # no netlink here (a container without it): the plain comment stays
        return {}
