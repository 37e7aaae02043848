"""TOML text -> Config: parse, build each interface, then cross-interface rules."""

from __future__ import annotations

import os
import re
import tomllib
from typing import Any

from tunneld.config.fields import _Ctx, _join, _key_text, _Table
from tunneld.config.interfaces import _daemon, _interface
from tunneld.config.nat import check_forwards, check_sources
from tunneld.config.schema import (
    Config,
    FrozenMap,
    InterfaceConfig,
    IPAddress,
    VxlanConfig,
    WireguardConfig,
    log,
)
from tunneld.errors import ConfigError


def _config(ctx: _Ctx, doc: dict[str, Any]) -> Config:
    top = _Table(ctx, doc, "", ("daemon", "interfaces"))
    daemon = _daemon(ctx, top.get("daemon", dict, {}))
    tables = top.get("interfaces", dict, {})
    items = tuple((name, _interface(ctx, name, data)) for name, data in tables.items())
    _check_ports(ctx, items)
    _check_bridges(ctx, items)
    check_forwards(ctx, items)
    check_sources(ctx, items)
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
        hint = ""
        if isinstance(e, PermissionError) and os.geteuid() != 0:  # `[daemon] user`, on reload
            hint = f" (tunneld runs as uid {os.geteuid()} since start-up and must read it)"
        raise ConfigError(name, "", f"cannot read config file: {e.strerror}{hint}") from None
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
