"""WireGuard's cross-platform userspace API (UAPI), sans-IO: requests in, answers out.

Spec: wireguard.com/xplatform, "Configuration Protocol"; the semantics follow
wireguard-go's device/uapi.go (the implementation `wg` and `wg-quick` are written
against), read for reference.

Theory of operation. A client connects to IFACE.sock and sends requests, each a
line `get=1` or `set=1`, then `key=value` lines, ended by an empty line. Several
requests may follow on one connection. `UapiReader` frames them: `feed(data)`, then
`next_request()` until it returns None (more bytes needed). It returns `GET`, or
the list of operations of a `set=1` request (`Operation`: SetPrivateKey,
SetListenPort, SetFwmark, ReplacePeers, PeerUpdate, in request order), or raises
`UapiError` for a malformed request. The caller answers every request:
`render_get(state)` for a get, `render_errno(0)` after applying a set, and
`render_errno(err.errno)` for an error. Answers end with `errno=N` and an empty
line, N being 0 or a *negative* errno (wireguard-go's ipc constants: -EINVAL for a
bad key or value, -EPROTO for a line without '=', -EADDRINUSE when the port cannot
be bound, -EIO for other failures).

Deviation, on purpose: a set request is parsed whole before anything is applied,
so a malformed request changes nothing (wireguard-go applies the lines before the
bad one). Apply-time failures (a port in use) still leave the earlier operations
applied, as in wireguard-go. Bounds: a request holds at most MAX_REQUEST_BYTES and
MAX_LINES lines (else -EMSGSIZE and the connection is closed: `UapiError.fatal`).

Peer blocks are folded at parse time, with wireguard-go's line-by-line results:
`remove=true` ends a block's effect (later lines are validated but ignored);
`update_only=true` means "skip this block if the peer does not exist";
`replace_allowed_ips=true` drops the peer's existing allowed ips and those listed
before it in the block; preshared_key, endpoint and persistent_keepalive_interval
take the last value given. An all-zero private key removes the key; an all-zero
preshared key means none.
"""

from __future__ import annotations

import errno
import ipaddress
import re
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

from .constants import KEY_LEN

MAX_REQUEST_BYTES = 1 << 20  # a few thousand peers with their allowed ips
MAX_LINES = 32768
ZERO_KEY = bytes(KEY_LEN)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")
_UINT = re.compile(r"[0-9]{1,20}")
_ENDPOINT = re.compile(r"\[([0-9a-fA-F:.]+(?:%[^\]]+)?)\]:([0-9]{1,5})|([0-9.]+):([0-9]{1,5})")
_PREFIX = re.compile(r"([0-9a-fA-F:.]+)/([0-9]{1,3})")


class UapiError(Exception):
    """A request that cannot be served: `errno` is the positive errno (answered negated).
    `fatal`: the connection cannot be resynchronised and is closed after the answer."""

    def __init__(self, code: int, reason: str, fatal: bool = False) -> None:
        super().__init__(reason)
        self.errno = code
        self.reason = reason
        self.fatal = fatal


# --- operations of a set=1 request ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetPrivateKey:
    private_key: bytes | None  # None: remove the key (all zeros on the wire)


@dataclass(frozen=True, slots=True)
class SetListenPort:
    port: int  # 0: a random port


@dataclass(frozen=True, slots=True)
class SetFwmark:
    fwmark: int  # 0: no mark


@dataclass(frozen=True, slots=True)
class ReplacePeers:
    pass


@dataclass(frozen=True, slots=True)
class PeerUpdate:
    """One `public_key=` block, folded (module docstring). None: not given."""

    public_key: bytes
    remove: bool = False
    update_only: bool = False
    preshared_key: bytes | None = None  # ZERO_KEY: none
    endpoint: tuple[IPAddress, int] | None = None
    persistent_keepalive_interval: int | None = None  # seconds, 0 = off
    replace_allowed_ips: bool = False
    allowed_ips: tuple[IPNetwork, ...] = ()


Operation = SetPrivateKey | SetListenPort | SetFwmark | ReplacePeers | PeerUpdate


class _Get:
    __slots__ = ()

    def __repr__(self) -> str:
        return "GET"


GET = _Get()
Request = _Get | list[Operation]


# --- values ---------------------------------------------------------------------------------


def _key(name: str, value: str) -> bytes:
    if not _HEX_KEY.fullmatch(value):
        raise UapiError(errno.EINVAL, f"{name}: not 64 hex digits")
    return bytes.fromhex(value)


def _uint(name: str, value: str, bits: int) -> int:
    if not _UINT.fullmatch(value) or int(value) >= 1 << bits:
        raise UapiError(errno.EINVAL, f"{name}: {value!r} is not an unsigned {bits}-bit number")
    return int(value)


def _true(name: str, value: str) -> None:
    if value != "true":
        raise UapiError(errno.EINVAL, f"{name}: only 'true' is accepted, not {value!r}")


def parse_endpoint(value: str) -> tuple[IPAddress, int]:
    """`1.2.3.4:51820` or `[2001:db8::1]:51820` (IP literals only, as wireguard-go)."""
    m = _ENDPOINT.fullmatch(value)
    try:
        if m is None:
            raise ValueError
        host, port = (m[1], m[2]) if m[1] is not None else (m[3], m[4])
        ip = ipaddress.ip_address(host)
        if (ip.version == 6) != (m[1] is not None) or int(port) > 0xFFFF:
            raise ValueError
    except ValueError:
        raise UapiError(errno.EINVAL, f"endpoint: {value!r} is not ip:port") from None
    return ip, int(port)


def parse_prefix(value: str) -> IPNetwork:
    """`10.0.0.0/24`, `fd00::/64`; host bits are masked off (as wireguard-go's table)."""
    m = _PREFIX.fullmatch(value)
    try:
        if m is None:
            raise ValueError
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise UapiError(errno.EINVAL, f"allowed_ip: {value!r} is not a prefix") from None


# --- set=1 ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Block:
    public_key: bytes
    dead: bool = False  # after remove=true: lines are checked, not applied
    remove: bool = False
    update_only: bool = False
    preshared_key: bytes | None = None
    endpoint: tuple[IPAddress, int] | None = None
    keepalive: int | None = None
    replace: bool = False
    allowed: list[IPNetwork] = field(default_factory=list)

    def done(self) -> PeerUpdate:
        return PeerUpdate(
            self.public_key, self.remove, self.update_only, self.preshared_key,
            self.endpoint, self.keepalive, self.replace, tuple(self.allowed),
        )  # fmt: skip


def _device_line(key: str, value: str) -> Operation:
    if key == "private_key":
        raw = _key(key, value)
        return SetPrivateKey(None if raw == ZERO_KEY else raw)
    if key == "listen_port":
        return SetListenPort(_uint(key, value, 16))
    if key == "fwmark":
        return SetFwmark(_uint(key, value, 32))
    if key == "replace_peers":
        _true(key, value)
        return ReplacePeers()
    raise UapiError(errno.EINVAL, f"invalid device key {key!r}")


def _peer_line(block: _Block, key: str, value: str) -> None:
    if key == "remove":
        _true(key, value)
        if not block.dead:
            block.remove = block.dead = True
    elif key == "update_only":
        _true(key, value)
        block.update_only = True
    elif key == "preshared_key":
        block.preshared_key = _key(key, value)
    elif key == "endpoint":
        block.endpoint = parse_endpoint(value)
    elif key == "persistent_keepalive_interval":
        block.keepalive = _uint(key, value, 16)
    elif key == "replace_allowed_ips":
        _true(key, value)
        block.replace, block.allowed = True, []
    elif key == "allowed_ip":
        block.allowed.append(parse_prefix(value))
    elif key == "protocol_version":
        if value != "1":
            raise UapiError(errno.EINVAL, f"protocol_version: {value!r} is not 1")
    else:
        raise UapiError(errno.EINVAL, f"invalid peer key {key!r}")


def parse_set(lines: Iterable[str]) -> list[Operation]:
    """The `key=value` lines of a set=1 request (without the blank line) as operations.
    Raises UapiError; never anything else."""
    ops: list[Operation] = []
    block: _Block | None = None
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep:
            raise UapiError(errno.EPROTO, f"line without '=': {line[:40]!r}")
        if key == "public_key":
            if block is not None:
                ops.append(block.done())
            block = _Block(_key(key, value))
        elif block is None:
            ops.append(_device_line(key, value))
        elif block.dead:
            _peer_line(_Block(block.public_key), key, value)  # validated, not applied
        else:
            _peer_line(block, key, value)
    if block is not None:
        ops.append(block.done())
    return ops


# --- framing --------------------------------------------------------------------------------


class UapiReader:
    """Frames the requests of one connection (module docstring). Bytes in, requests out."""

    def __init__(self, max_bytes: int = MAX_REQUEST_BYTES, max_lines: int = MAX_LINES) -> None:
        self._buf = bytearray()
        self._max_bytes, self._max_lines = max_bytes, max_lines
        self._scan = 0  # where to resume looking for the end of the request
        self.broken = False  # after a fatal error: nothing more is read

    def feed(self, data: bytes) -> None:
        if not self.broken:
            self._buf += data

    def next_request(self) -> Request | None:
        """The next complete request, None if incomplete; UapiError if malformed."""
        if self.broken or not self._buf:
            return None
        if self._buf[0:1] == b"\n":
            return self._fail("empty operation line")
        end = self._buf.find(b"\n\n", max(0, self._scan - 1))
        if end < 0:
            self._scan = len(self._buf)
            if len(self._buf) > self._max_bytes or self._buf.count(b"\n") > self._max_lines:
                return self._fail("request too large", errno.EMSGSIZE)
            return None
        raw = bytes(self._buf[: end + 1])
        del self._buf[: end + 2]
        self._scan = 0
        if len(raw) > self._max_bytes or raw.count(b"\n") > self._max_lines + 1:
            return self._fail("request too large", errno.EMSGSIZE)
        return _request(raw)

    def finish(self) -> Request | None:
        """At end of input: a set request cut off by EOF is applied, as wireguard-go does
        (its scanner stops at EOF); a partial get, or nothing, gives None."""
        if self.broken or not self._buf or self._buf[0:1] == b"\n":
            return None
        raw = bytes(self._buf)
        self._buf.clear()
        if not raw.endswith(b"\n"):
            raw += b"\n"
        if not raw.startswith(b"set=1\n") or len(raw) > self._max_bytes:
            return None
        return _request(raw)

    def _fail(self, reason: str, code: int = errno.EINVAL) -> Request:
        self.broken = True
        self._buf.clear()
        raise UapiError(code, reason, fatal=True)


def _request(raw: bytes) -> Request:
    """One request: its lines, each ending in "\\n" (the blank line stripped)."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise UapiError(errno.EINVAL, "request is not ASCII") from None
    lines = text.split("\n")[:-1]
    op, body = lines[0], lines[1:]
    if op == "get=1":
        if body:
            raise UapiError(errno.EINVAL, "get=1 takes no keys")
        return GET
    if op == "set=1":
        return parse_set(body)
    raise UapiError(errno.EINVAL, f"invalid operation {op[:40]!r}")


# --- get=1 ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerState:
    public_key: bytes
    preshared_key: bytes | None
    endpoint: Hashable | None  # (host, port) or (host, port, flowinfo, scope_id), or None
    last_handshake_ns: int  # Unix nanoseconds of the last handshake, 0 = never
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive_interval: int  # seconds, 0 = off
    allowed_ips: tuple[IPNetwork, ...]


@dataclass(frozen=True, slots=True)
class DeviceState:
    private_key: bytes | None
    listen_port: int
    fwmark: int
    peers: tuple[PeerState, ...]


def format_endpoint(endpoint: Hashable | None) -> str | None:
    if not isinstance(endpoint, tuple) or len(endpoint) < 2:
        return None
    host, port = endpoint[0], endpoint[1]
    return f"[{host}]:{port}" if len(endpoint) == 4 or ":" in str(host) else f"{host}:{port}"


def render_get(state: DeviceState) -> bytes:
    """The answer to get=1, including its `errno=0` and the empty line."""
    out: list[str] = []
    if state.private_key is not None:
        out.append(f"private_key={state.private_key.hex()}")
    if state.listen_port:
        out.append(f"listen_port={state.listen_port}")
    if state.fwmark:
        out.append(f"fwmark={state.fwmark}")
    for p in state.peers:
        out.append(f"public_key={p.public_key.hex()}")
        out.append(f"preshared_key={(p.preshared_key or ZERO_KEY).hex()}")
        out.append("protocol_version=1")
        endpoint = format_endpoint(p.endpoint)
        if endpoint is not None:
            out.append(f"endpoint={endpoint}")
        sec, nsec = divmod(p.last_handshake_ns, 1_000_000_000)
        out += [f"last_handshake_time_sec={sec}", f"last_handshake_time_nsec={nsec}",
                f"tx_bytes={p.tx_bytes}", f"rx_bytes={p.rx_bytes}",
                f"persistent_keepalive_interval={p.persistent_keepalive_interval}"]  # fmt: skip
        out += [f"allowed_ip={net}" for net in p.allowed_ips]
    out.append("errno=0\n\n")
    return "\n".join(out).encode("ascii")


def render_errno(code: int) -> bytes:
    """`errno=0` or `errno=-N` for the positive errno N, and the empty line."""
    return f"errno={-abs(code)}\n\n".encode("ascii")
