"""The resolved config as TOML for `check-config`; secrets print as (hidden)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from tunneld.config.fields import _join
from tunneld.config.interfaces import _ETCD_KEYS, _derive_public
from tunneld.config.schema import Config, OverlayConfig
from tunneld.secret import HIDDEN, Secret, encode_key

# --- output ----------------------------------------------------------------------------------

_UNSET = {
    "mtu": "default: underlay MTU minus overhead",
    "listen_port": "random port",
    "bridge": "none",
    "network": "from etcd",
    "subnet_len": "from etcd",
    "subnet": "leased from etcd",
    "ipv6_network": "no IPv6 inside, unless etcd's config enables it",
    "ipv6_subnet_len": "64, or from etcd",
    "ipv6_subnet": "none: IPv4 only, or leased from etcd",
    "endpoint": "learned from the peer",
    "persistent_keepalive": "off",
    "preshared_key": "none",
    "private_key": "none",
    "public_key": "none",
    "metrics_listen": "off",
    "user": "stays the starting user",
    "uapi_dir": "off: no WireGuard UAPI sockets",
}


def render(cfg: Config, notes: dict[str, str] | None = None) -> str:
    """The resolved config as TOML (every default filled in); secrets print as (hidden).
    `notes`: interface name -> how its unset `mtu` resolves on this host (check-config).

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
        table = _render_table(header, iface)
        note = (notes or {}).get(name)
        if note is not None:
            table = [f"# mtu: unset (default here: {note})" if line.startswith("# mtu: unset")
                     else line for line in table]  # fmt: skip
        lines += ["", f"[{header}]", *table]
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
    if key in ("endpoint", "metrics_listen") and isinstance(value, tuple):
        host, port = value
        return json.dumps(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    if isinstance(value, tuple):
        return "[" + ", ".join(_render_value(key, item) for item in value) + "]"
    return json.dumps(str(value))
