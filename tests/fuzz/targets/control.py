"""Control-plane fuzz targets: control-socket and metrics requests, config files, flannel
leases, UAPI.

Invariants: a control request gets one JSON reply with `"version": 1` (an error reply for
anything malformed, never "internal error", which means a handler raised); a metrics
request head gets one whole HTTP/1.1 reply of a known status; a config text
gives a Config or one ConfigError of one line, never another exception; flannel's JSON
gives a value or ValueError; the WireGuard UAPI framer gives requests or UapiError, the
same requests whether the bytes arrive at once or in pieces, and holds no more than its
byte bound.
"""

from __future__ import annotations

import json
import os
import tempfile
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from tunneld.config import loads, render
from tunneld.errors import ConfigError
from tunneld.registry.flannel import parse_lease, parse_network_config, parse_subnet_key
from tunneld.runtime.daemon import Daemon

from . import One

# --- control socket ----------------------------------------------------------------------------


class FakeLink:
    """What Daemon.handle_request needs of a link: show()."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def show(self) -> dict[str, Any]:
        return {"type": self.kind, "counters": {"rx_packets": 0, "rx_dropped": {"short": 0}}}


def fake_daemon() -> Daemon:
    """A real Daemon (never run: no socket, no device), its links replaced by fakes."""
    import asyncio

    cfg = loads('[daemon]\ncontrol_socket = "/nonexistent/tunneld-fuzz.sock"\n', "fuzz.toml")
    daemon = Daemon(cfg, asyncio.new_event_loop())
    daemon.links = {"vx0": FakeLink("vxlan"), "wg0": FakeLink("wireguard")}  # type: ignore[dict-item]
    return daemon


def make_control_request() -> One:
    """Bytes from a client: each line is one request answered by the daemon's handler."""
    server = fake_daemon().control
    limit = getattr(__import__("tunneld.runtime.control", fromlist=["x"]), "MAX_REQUEST", 65536)

    def one(data: bytes) -> None:
        for line in data.split(b"\n")[:64]:
            if not line or len(line) > limit:
                continue
            reply = server._answer(line + b"\n")
            assert isinstance(reply, dict) and reply.get("version") == 1, reply
            error = reply.get("error")
            assert error is None or (isinstance(error, str) and "internal error" not in error)
            assert error is not None or "interfaces" in reply or reply.get("ok") is True
            json.dumps(reply)

    return one


# --- metrics endpoint ------------------------------------------------------------------------


def make_metrics_request() -> One:
    """Bytes from an HTTP client, up to the end of its head as the server reads it
    (MetricsServer._serve: at most MAX_HEAD bytes), answered by MetricsServer._reply.
    Its registry holds the link collector alone (process metrics read /proc: slow here)."""
    from prometheus_client import CollectorRegistry

    from tunneld.runtime.metrics import LinkCollector, MetricsServer

    shows = {"vx0": {"type": "vxlan", "counters": {"rx_packets": 1, "rx_dropped": {"a": 0}}}}
    server = MetricsServer(("127.0.0.1", 0), lambda: shows)
    server.registry = CollectorRegistry(auto_describe=False)
    server.registry.register(LinkCollector(lambda: shows))
    end = b"\r\n\r\n"

    def one(data: bytes) -> None:
        cut = data.find(end)
        head = data[: cut + 4] if cut >= 0 else data + end
        if len(head) > server.MAX_HEAD:
            return  # the server closes such a client unanswered
        reply = server._reply(head)
        fields, sep, body = reply.partition(end)
        assert sep, reply
        status, *lines = fields.decode("latin-1").split("\r\n")
        assert status in STATUS_LINES, status
        headers = dict(line.split(": ", 1) for line in lines)
        assert headers["Connection"] == "close"
        if body or not head.startswith(b"HEAD "):
            assert int(headers["Content-Length"]) == len(body), (headers, len(body))
        if status.endswith(" 200 OK"):
            assert headers["Content-Type"].startswith(("text/plain", "application/openmetrics"))

    return one


STATUS_LINES = {f"HTTP/1.1 {s}" for s in ("200 OK", "400 Bad Request", "404 Not Found",
                                          "405 Method Not Allowed")}  # fmt: skip


# --- config files ------------------------------------------------------------------------------


def make_config() -> One:
    """Bytes as a config file's text (UTF-8, undecodable bytes replaced)."""
    folder = tempfile.mkdtemp(prefix="tunneld-fuzz-config-")  # relative key files land here
    path = os.path.join(folder, "site.toml")

    def one(data: bytes) -> None:
        check_config_text(data.decode("utf-8", "replace"), path)

    return one


def check_config_text(text: str, path: str) -> None:
    try:
        cfg = loads(text, path)
    except ConfigError as e:
        message = str(e)
        assert message.startswith(path) and "\n" not in message, message
        return
    out = render(cfg)
    assert isinstance(out, str) and "(hidden)" in out or "private_key" not in out


# --- flannel JSON --------------------------------------------------------------------------------

PREFIX = "/coreos.com/network"
SUBNET = IPv4Network("10.5.1.0/24")


def make_flannel_lease() -> One:
    """Selector byte: 0 network config, 1 lease value, 2 subnet key; then the bytes."""

    def one(data: bytes) -> None:
        if not data:
            return
        kind, raw = data[0] % 3, data[1:]
        if kind == 0:
            _network_config(raw)
        elif kind == 1:
            _lease(raw)
        else:
            net = parse_subnet_key(PREFIX, raw)
            assert net is None or isinstance(net, IPv4Network)

    return one


def _network_config(raw: bytes) -> None:
    try:
        cfg = parse_network_config(raw)
    except ValueError:
        return
    net = cfg.network
    assert net.prefixlen + 2 <= cfg.subnet_len <= 30
    assert cfg.subnet_min in net and cfg.subnet_max in net and cfg.subnet_min <= cfg.subnet_max
    assert cfg.pool_size() >= 1
    for subnet in cfg.free_subnets(set(), limit=3):
        assert cfg.in_pool(subnet) and subnet.subnet_of(net)


def _lease(raw: bytes) -> None:
    try:
        host = parse_lease(SUBNET, raw)
    except ValueError:
        return
    assert IPv4Address(host.public_ip) and host.subnet == SUBNET
    if host.backend_type == "wireguard":
        assert host.public_key is not None and len(host.public_key) == 32
        assert host.port is None or 1 <= host.port <= 65535


# --- WireGuard UAPI ---------------------------------------------------------------------------


def make_uapi_or_none() -> Any:
    try:
        from tunneld.proto.wg import uapi
    except ImportError:
        return None
    if not hasattr(uapi, "UapiReader"):
        return None
    return lambda: make_wg_uapi(uapi)


def _requests(uapi: Any, chunks: list[bytes], max_bytes: int) -> list[object]:
    """Every outcome of feeding `chunks`: requests, ("error", errno, fatal), then finish()."""
    reader = uapi.UapiReader(max_bytes=max_bytes, max_lines=32)
    got: list[object] = []
    for chunk in chunks:
        reader.feed(chunk)
        while True:
            try:
                request = reader.next_request()
            except uapi.UapiError as e:
                assert e.errno > 0 and uapi.render_errno(-e.errno).endswith(b"\n\n")
                got.append(("error", e.errno, e.fatal))
                continue
            if request is None:
                break
            got.append(request)
        assert len(reader._buf) <= max_bytes
    try:
        got.append(reader.finish())
    except uapi.UapiError as e:
        got.append(("error", e.errno, e.fatal))
    return got


def make_wg_uapi(uapi: Any) -> One:
    """Bytes from a UAPI client; also fed split in two at a point the first byte picks."""

    def one(data: bytes) -> None:
        whole = _requests(uapi, [data], 512)
        if data:
            cut = data[0] % (len(data) + 1)
            assert _requests(uapi, [data[:cut], data[cut:]], 512) == whole
        assert len(whole) <= data.count(b"\n") + 2

    return one


# --- wg-quick import ---------------------------------------------------------------------------


def make_wg_import() -> One:
    """Bytes as a wg-quick file (UTF-8 decoded as `tunneld import` does) to wgimport.convert:
    one ConfigError naming FILE:LINE, or TOML that tomllib and tunneld's loader accept."""
    import tomllib

    from tunneld import wgimport

    path = "/etc/wireguard/wg0.conf"

    def one(data: bytes) -> None:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return  # import_main refuses it before convert
        try:
            out = wgimport.convert(text.replace("\r\n", "\n"), path, "wg0")
        except ConfigError as e:
            assert str(e).startswith(path) and "\n" not in str(e), str(e)
            return
        tomllib.loads(out)
        loads(out, "<import>")

    return one
