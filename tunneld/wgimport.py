"""`tunneld import wg0.conf`: a wg-quick(8) file as a tunneld TOML config.

The input is the format of wg(8) "CONFIGURATION FILE FORMAT" plus wg-quick(8)'s own
[Interface] keys (Address, DNS, MTU, Table, PreUp, PostUp, PreDown, PostDown,
SaveConfig). As in both tools: keys and section names are case-insensitive, `#`
starts a comment anywhere on a line, list values are comma-separated and a repeated
list key (Address, AllowedIPs, DNS, the hooks) adds to the list, while a repeated
single-valued key takes the last value (wg(8) overwrites too).

Theory of operation. `parse` turns text into `Section`s of `Entry`s, each with its line
number, rejecting what neither wg nor wg-quick accepts (a key outside a section, an
unknown key, a line without `=`). `convert` writes the TOML by hand: the output holds
only strings, integers and arrays of them, which `json.dumps` encodes as valid TOML basic
strings (no dependency needed). Keys tunneld does not have become comments that say so;
a key that tunneld's loader accepts (its wireguard key list) at run time is written as the key.
Finally the text is validated with tunneld's own loader, and a `ConfigError` there is
mapped back to the wg-quick line it came from, so every error names `FILE:LINE: Key`.
Nothing here touches a file or the network: `convert(text, file, name)` is pure.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from tunneld.config.fields import _join
from tunneld.errors import ConfigError

INTERFACE_KEYS = ("PrivateKey", "ListenPort", "FwMark", "Address", "DNS", "MTU", "Table",
                  "PreUp", "PostUp", "PreDown", "PostDown", "SaveConfig")  # fmt: skip
PEER_KEYS = ("PublicKey", "PresharedKey", "AllowedIPs", "Endpoint", "PersistentKeepalive")
LIST_KEYS = ("Address", "AllowedIPs", "DNS")  # comma lists that add up over repeated lines
HOOK_KEYS = ("PreUp", "PostUp", "PreDown", "PostDown")  # one command per line, repeatable
# wg-quick's own rule for a config path: (^|/)([a-zA-Z0-9_=+.-]{1,15})\.conf$
IFACE_FROM_PATH = re.compile(r"(?:^|/)([a-zA-Z0-9_=+.-]{1,15})\.conf$")
KEY_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,29}")  # what may be echoed back as a key name
# tunneld keys that may exist in the schema (other issues add them): wg-quick key -> tunneld key
PLANNED = {"FwMark": "fwmark", "Table": "table", "DNS": "dns", "PreUp": "pre_up",
           "PostUp": "post_up", "PreDown": "pre_down", "PostDown": "post_down"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Entry:
    key: str  # canonical spelling, e.g. "AllowedIPs"
    value: str  # stripped; may be empty
    line: int  # 1-based


@dataclass(slots=True)
class Section:
    kind: str  # "Interface" or "Peer"
    line: int
    entries: list[Entry] = field(default_factory=list)

    def values(self, key: str) -> list[Entry]:
        return [e for e in self.entries if e.key == key]

    def last(self, key: str) -> Entry | None:
        found = self.values(key)
        return found[-1] if found else None


def interface_name(path: str) -> str:
    """The device name wg-quick would use for `path` (its base name without .conf).

    Raises ConfigError when wg-quick would refuse the name too.
    """
    m = IFACE_FROM_PATH.search(path)
    if m is None:
        raise ConfigError(
            path, "", "cannot take an interface name from the file name (wg-quick wants "
            "NAME.conf, NAME of 1..15 of [a-zA-Z0-9_=+.-]); give one with --name IFACE",
        )  # fmt: skip
    return m.group(1)


def _fail(file: str, line: int, key: str, reason: str) -> ConfigError:
    return ConfigError(f"{file}:{line}" if line else file, key, reason)


def parse(text: str, file: str) -> list[Section]:
    """Sections of a wg-quick file, [Interface] first. Raises ConfigError naming the line."""
    sections: list[Section] = []
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.split("#", 1)[0].strip()  # wg-quick: stripped="${line%%\#*}"
        if not line:
            continue
        if line.startswith("["):
            sections.append(_section_header(file, number, line, sections))
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not KEY_NAME.fullmatch(key):
            # the text is not repeated: it may be a base64 key that lost its "PrivateKey ="
            raise _fail(file, number, "", "expected 'Key = value' or a [Section]")
        if not sections:
            raise _fail(file, number, key, "comes before any [Interface] or [Peer] section")
        sections[-1].entries.append(Entry(_canonical(file, number, key, sections[-1]), value,
                                          number))  # fmt: skip
    if not any(s.kind == "Interface" for s in sections):
        raise ConfigError(file, "", "no [Interface] section")
    return sorted(sections, key=lambda s: s.kind != "Interface")


def _section_header(file: str, number: int, line: str, sections: list[Section]) -> Section:
    name = line[1:-1].strip().lower() if line.endswith("]") else None
    if name not in ("interface", "peer"):
        raise _fail(file, number, "", f"{line!r} is not [Interface] or [Peer]")
    kind = "Interface" if name == "interface" else "Peer"
    first = next((s for s in sections if s.kind == "Interface"), None)
    if kind == "Interface" and first is not None:
        raise _fail(file, number, "", f"a second [Interface] section (first at line {first.line})")
    return Section(kind, number)


def _canonical(file: str, number: int, key: str, section: Section) -> str:
    own, other = (
        (INTERFACE_KEYS, PEER_KEYS) if section.kind == "Interface" else (PEER_KEYS, INTERFACE_KEYS)
    )
    for known in own:
        if known.lower() == key.lower():
            return known
    if any(k.lower() == key.lower() for k in other):
        other_kind = "Peer" if section.kind == "Interface" else "Interface"
        raise _fail(file, number, key, f"belongs in a [{other_kind}] section, not [{section.kind}]")
    raise _fail(file, number, key, f"unknown key in [{section.kind}]")


# --- writing TOML ----------------------------------------------------------------------------


def _toml_str(text: str) -> str:
    # a JSON string is a TOML basic string once DEL is escaped too (TOML 1.0 "String")
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(_toml_str(i) for i in items) + "]"


class _Writer:
    """TOML lines plus where each key path came from: path -> (line, wg-quick key)."""

    def __init__(self, file: str, known: tuple[str, ...]) -> None:
        self.file, self.known = file, known  # known: the wireguard keys tunneld accepts
        self.lines: list[str] = []
        self.origin: dict[str, tuple[int, str]] = {}

    def key(self, path: str, toml_key: str, rendered: str, entry: Entry) -> None:
        self.lines.append(f"{toml_key} = {rendered}")
        self.origin[_join(path, toml_key)] = (entry.line, entry.key)

    def items(self, path: str, toml_key: str, items: list[tuple[str, Entry]]) -> None:
        self.lines.append(f"{toml_key} = {_toml_list([text for text, _ in items])}")
        for i, (_, entry) in enumerate(items):
            self.origin[f"{_join(path, toml_key)}[{i}]"] = (entry.line, entry.key)
        if items:
            self.origin[_join(path, toml_key)] = (items[0][1].line, items[0][1].key)

    def unsupported(self, entry: Entry, why: str = "not supported by tunneld yet") -> None:
        self.lines.append(f"# {entry.key} = {entry.value} ({why})")

    def fail(self, entry: Entry, reason: str) -> ConfigError:
        return _fail(self.file, entry.line, entry.key, reason)


def _split(entries: list[Entry]) -> list[tuple[str, Entry]]:
    return [(part.strip(), e) for e in entries for part in e.value.split(",") if part.strip()]


def _integer(w: _Writer, entry: Entry, off_ok: bool = False) -> int:
    text = entry.value.lower()
    if off_ok and text == "off":
        return 0
    try:
        return int(text, 0) if text.startswith("0x") else int(text, 10)
    except ValueError:
        also = " or 'off'" if off_ok else ""
        raise w.fail(entry, f"{entry.value!r} is not a number{also}") from None


def _with_prefix(w: _Writer, entry: Entry, text: str, network: bool) -> str:
    """An address or prefix in the spelling tunneld wants: always with a prefix length;
    a prefix with host bits set is masked, as the kernel does for wg's allowed-ips."""
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        what = "an IP prefix (like 10.0.0.0/24)" if network else "an IP address (like 10.0.0.1/24)"
        raise w.fail(entry, f"{text!r} is not {what}") from None
    return str(iface.network if network else iface)


def _known_wireguard_keys() -> tuple[str, ...]:
    """The keys tunneld's loader accepts in a wireguard table today."""
    from tunneld.config.interfaces import _PARSERS

    return tuple(_PARSERS["wireguard"][0])


def _interface(w: _Writer, path: str, s: Section, known: tuple[str, ...]) -> None:
    w.lines += [f"[{path}]", 'type = "wireguard"']
    w.origin[path] = (s.line, "[Interface]")
    addresses = [(_with_prefix(w, e, t, False), e) for t, e in _split(s.values("Address"))]
    if addresses:
        w.items(path, "address", addresses)
    if (e := s.last("MTU")) is not None:
        w.key(path, "mtu", str(_integer(w, e)), e)
    else:
        w.lines.append("# mtu: not set; tunneld uses 1420 (wg-quick: the route's MTU minus 80)")
    if (e := s.last("ListenPort")) is not None:
        port = _integer(w, e)
        if port:
            w.key(path, "listen_port", str(port), e)
        else:
            w.lines.append("# listen_port: 0 in the file; tunneld picks a random port as well")
    if (e := s.last("PrivateKey")) is None:
        raise _fail(w.file, s.line, "[Interface]", "has no PrivateKey (tunneld needs one; "
                    "add it, or set private_key_file in the output)")  # fmt: skip
    w.key(path, "private_key", _toml_str(e.value), e)
    _planned(w, path, s, known)
    if (e := s.last("SaveConfig")) is not None:
        if e.value.lower() not in ("true", "false"):
            raise w.fail(e, f"{e.value!r} is not true or false")
        if e.value.lower() == "true":
            w.unsupported(e, "tunneld never writes its config file; `wg set` changes are "
                          "runtime only")  # fmt: skip


FULL_TUNNEL_NOTE = (
    "# a /0 here: wg-quick routes it with fwmark policy rules; tunneld routes it "
    "in the main table: keep a route to the endpoint outside the tunnel"
)
RT_TABLES = {"default": 253, "main": 254, "local": 255}  # iproute2's reserved table names


def _table(w: _Writer, entry: Entry) -> str:
    value = entry.value.lower()
    if value in ("auto", "off"):
        return _toml_str(value)
    return str(RT_TABLES[value]) if value in RT_TABLES else str(_integer(w, entry))


_RENDER: dict[str, Callable[[_Writer, list[Entry]], str]] = {
    "FwMark": lambda w, es: str(_integer(w, es[-1], off_ok=True)),
    "Table": lambda w, es: _table(w, es[-1]),
    "DNS": lambda w, es: _toml_list([t for t, _ in _split(es)]),
    **{hook: (lambda w, es: _toml_list([e.value for e in es])) for hook in HOOK_KEYS},
}


def _planned(w: _Writer, path: str, s: Section, known: tuple[str, ...]) -> None:
    """FwMark, Table, DNS and the hooks: the tunneld key once the schema has it, else a comment."""
    for wg_key, toml_key in PLANNED.items():
        entries = s.values(wg_key)
        if not entries:
            continue
        if toml_key in known:
            w.key(path, toml_key, _RENDER[wg_key](w, entries), entries[-1])
            continue
        for e in entries if wg_key in HOOK_KEYS or wg_key in LIST_KEYS else entries[-1:]:
            w.unsupported(e)


def _peer(w: _Writer, path: str, index: int, s: Section) -> None:
    here = f"{path}.peers[{index}]"
    w.lines += ["", f"[[{path}.peers]]"]
    w.origin[here] = (s.line, "[Peer]")
    for wg_key, toml_key in (("PublicKey", "public_key"), ("PresharedKey", "preshared_key"),
                             ("Endpoint", "endpoint")):  # fmt: skip
        if (e := s.last(wg_key)) is not None:
            w.key(here, toml_key, _toml_str(e.value), e)
    allowed = [(_with_prefix(w, e, t, True), e) for t, e in _split(s.values("AllowedIPs"))]
    w.items(here, "allowed_ips", allowed)
    if any(text.endswith("/0") for text, _ in allowed) and "table" not in w.known:
        w.lines.append(FULL_TUNNEL_NOTE)
    if (e := s.last("PersistentKeepalive")) is not None:
        seconds = _integer(w, e, off_ok=True)
        if seconds:
            w.key(here, "persistent_keepalive", str(seconds), e)


def _loader_error(w: _Writer, exc: ConfigError) -> ConfigError:
    """Map tunneld's `FILE: key.path: reason` back to the wg-quick line the key came from."""
    path = exc.key
    while path and path not in w.origin:
        path = re.sub(r"(\[\d+\]|\.[^.\[]+|^[^.\[]+)$", "", path)
    line, key = w.origin.get(path, (0, ""))
    reason = exc.reason
    for other, (other_line, other_key) in sorted(w.origin.items(), key=lambda kv: -len(kv[0])):
        if other in reason:
            reason = reason.replace(other, f"{other_key} on line {other_line}")
    return _fail(w.file, line, key, reason)


def convert(text: str, file: str, name: str) -> str:
    """The tunneld TOML for wg-quick `text` read from `file`, interface `name`.

    Pure (no I/O). Raises ConfigError "FILE:LINE: Key: reason" for anything malformed,
    including what tunneld's own loader rejects in the result.
    """
    from tunneld.config import loads

    sections = parse(text, file)
    w, path = _Writer(file, _known_wireguard_keys()), _join("interfaces", name)
    w.lines += [f"# tunneld config imported from {file} by `tunneld import`.",
                "# It holds the keys inline: keep it private (chmod 600).", ""]  # fmt: skip
    _interface(w, path, sections[0], w.known)
    for index, peer in enumerate(sections[1:]):
        if peer.last("PublicKey") is None:
            raise _fail(file, peer.line, "[Peer]", "has no PublicKey")
        _peer(w, path, index, peer)
    out = "\n".join(w.lines) + "\n"
    try:
        loads(out, "<import>")
    except ConfigError as exc:
        raise _loader_error(w, exc) from None
    return out


def import_main(path: str, name: str | None = None) -> str:
    """`tunneld import FILE`: read FILE and return the TOML text. Raises ConfigError (exit 2)."""
    iface = name or interface_name(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(path, "", f"cannot read: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise _fail(path, line, "", "not UTF-8 text") from None
    return convert(text.replace("\r\n", "\n"), os.fspath(path), iface)
