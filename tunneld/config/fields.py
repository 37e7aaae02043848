"""Reading TOML tables with checked types: each reader names the key path in its error."""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import stat
from datetime import date, datetime, time
from ipaddress import (
    IPv4Network,
    IPv6Address,
)
from typing import Any, NoReturn

from tunneld.config.schema import IFNAMSIZ, MTU_MAX, MTU_MIN, IPAddress, IPInterface, IPNetwork
from tunneld.errors import ConfigError
from tunneld.secret import Secret, decode_key

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


MSS_MIN, MSS_MAX = 88, 65495  # Linux's TCP_MIN_MSS; 65535 - 40 (IPv4 and TCP headers)


def _mss_clamp(table: _Table) -> bool | int:
    """`mss_clamp`: false (default), true (from the tunnel MTU) or an MSS in bytes."""
    if not table.has("mss_clamp"):
        return False
    value = table.data["mss_clamp"]
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return _int_in(table.ctx, table.at("mss_clamp"), value, MSS_MIN, MSS_MAX)
    table.ctx.fail(
        table.at("mss_clamp"),
        f"expected true, false or an MSS in bytes (an integer), got {_describe(value)}",
    )


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


_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _is_hostname(host: str) -> bool:
    """RFC 1123 names, label by label: one regex over the whole name (labels with optional
    dots, repeated) backtracked exponentially on a long digit run (found by fuzzing)."""
    name = host[:-1] if host.endswith(".") else host
    return 1 <= len(name) <= 253 and all(_LABEL.fullmatch(label) for label in name.split("."))


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
        if (numeric and _ip_or_none(host) is None) or not _is_hostname(host):
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


# Key files this process has read, by absolute path. After `[daemon] user` switched users, a
# reload that can no longer read one of them keeps the key read at start; a key file that is
# new to the process must be readable by that user (the error says so).
_KEYS_READ: dict[str, Secret] = {}


def _unprivileged_hint(full: str) -> str:
    uid = os.geteuid()
    if uid == 0:
        return ""
    import pwd

    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    return (
        f" (tunneld runs as user {user!r} since start-up: make the file readable by it, "
        f"e.g. chown {user} {full}; chmod 600 {full})"
    )


def _read_key_file(ctx: _Ctx, path: str, name: str) -> Secret:
    full = ctx.resolve(name)
    try:
        # O_NONBLOCK: a FIFO must not hang the load; O_NOCTTY: a tty must not become ours
        fd = os.open(full, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        with open(fd, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not stat.S_ISREG(mode):
                ctx.fail(path, f"key file {full} is not a regular file")
            if mode & 0o077:
                ctx.fail(
                    path,
                    f"key file {full} is readable by group or others "
                    f"(mode {mode & 0o777:04o}); run: chmod 600 {full}",
                )
            data = f.read(4096)
    except PermissionError as e:
        if full in _KEYS_READ:
            return _KEYS_READ[full]
        ctx.fail(path, f"cannot read key file {full}: {e.strerror}{_unprivileged_hint(full)}")
    except OSError as e:
        ctx.fail(path, f"cannot read key file {full}: {e.strerror}")
    try:
        secret = Secret(decode_key(data.decode("ascii", errors="replace")))
    except ValueError as e:
        ctx.fail(path, f"key file {full}: content {e}")
    _KEYS_READ[full] = secret
    return secret


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


# --- policy routing and hooks (wg-quick's Table, FwMark, PreUp/PostUp/PreDown/PostDown) ----

HOOK_KEYS = ("pre_up", "post_up", "pre_down", "post_down")
TABLE_MAX = FWMARK_MAX = 2**32 - 1


def _hooks(table: _Table) -> dict[str, tuple[str, ...]]:
    """Each hook key: one shell command (a string) or a list of them, run in order."""
    out: dict[str, tuple[str, ...]] = {}
    for key in HOOK_KEYS:
        value = table.data.get(key, [])
        if isinstance(value, str):
            items = [(table.at(key), value)]
        elif isinstance(value, list):
            items = table.get_list(key, str)
        else:
            table.ctx.fail(table.at(key), f"expected a string or an array of strings, "
                                          f"got {_describe(value)}")  # fmt: skip
        for path, command in items:
            if not command.strip():
                table.ctx.fail(path, "empty command")
            if "\0" in command:
                table.ctx.fail(path, "contains a NUL character")
        out[key] = tuple(command for _, command in items)
    return out


def _route_table(table: _Table) -> str | int:
    """`table`: "auto" (default), "off" or a routing table number (wg-quick's Table)."""
    value = table.data.get("table", "auto")
    if isinstance(value, str) and value in ("auto", "off"):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return _int_in(table.ctx, table.at("table"), value, 1, TABLE_MAX)
    shown = repr(value) if isinstance(value, str) else _describe(value)
    table.ctx.fail(table.at("table"), f'expected "auto", "off" or a table number, got {shown}')


def _fwmark(table: _Table) -> int:
    """`fwmark`: SO_MARK on the UDP sockets, 0..2^32-1 (0: none, as wg's `fwmark off`)."""
    return _int_in(table.ctx, table.at("fwmark"), table.get("fwmark", int, 0), 0, FWMARK_MAX)
