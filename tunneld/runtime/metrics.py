"""Prometheus metrics on `[daemon] metrics_listen`: the links' `show` data, read at scrape time.

Names and labels are fixed interfaces (DESIGN.md, "Metrics names"):

  tunneld_interface_{receive,transmit}_{bytes,packets}_total   {interface, type}
  tunneld_interface_dropped_packets_total     {interface, direction, reason}
  tunneld_peer_{receive,transmit}_bytes_total, tunneld_peer_handshakes_total,
  tunneld_peer_latest_handshake_seconds       {interface, peer}   (peer: base64 public key)
  tunneld_fdb_entries                         {interface, kind}   (kind: learned | static)
  tunneld_overlay_routes, tunneld_registry_connected   {interface}
  plus prometheus_client's process_*, python_gc_* and python_info.

Theory of operation. `MetricsServer` serves /metrics from an event loop in a thread of
its own, with bounded clients (see the class). A scrape calls `LinkCollector.collect()` in
that thread, which asks the daemon's event loop for a snapshot:
`loop.call_soon_threadsafe` runs the daemon's
`show()` of every link on the loop and hands the result back through a
concurrent Future (bounded by SNAPSHOT_TIMEOUT). Reading link state straight from the
HTTP thread would race the loop: `show()` expires FDB entries, and peer or route
dicts change size while the loop runs. The snapshot costs one `show` per link on the
loop (O(peers + FDB entries), the same as `tunneld show`), once per scrape; the packet
path is never touched. A wedged loop answers no snapshot: the scrape then carries only
the process metrics and `tunneld_metrics_snapshot_ok 0`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gzip
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from tunneld.errors import SetupError

log = logging.getLogger("tunneld.metrics")
SNAPSHOT_TIMEOUT = 2.0  # seconds a scrape waits for the loop
DIRECTIONS = (("receive", "rx_dropped"), ("transmit", "tx_dropped"))

Shows = Mapping[str, Mapping[str, Any]]  # interface name -> its `show()` entry


def families(shows: Shows) -> list[Metric]:
    """Every tunneld_* family for one snapshot of `show` entries (DESIGN.md shape)."""
    iface = ["interface", "type"]
    fams: dict[str, Metric] = {}

    def counter(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
        fams[name] = family = CounterMetricFamily(name, doc, labels=labels)
        return family

    def gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
        fams[name] = family = GaugeMetricFamily(name, doc, labels=labels)
        return family

    traffic = [
        (counter(f"tunneld_interface_{way}_{unit}", f"Inner {unit}, {way} side", iface), key)
        for way, key_dir in (("receive", "rx"), ("transmit", "tx"))
        for unit, key in (("bytes", f"{key_dir}_bytes"), ("packets", f"{key_dir}_packets"))
    ]
    drops = counter(
        "tunneld_interface_dropped_packets",
        "Packets dropped, by direction and reason (the Drop enums)",
        ["interface", "direction", "reason"],
    )
    peer = ["interface", "peer"]
    peer_rx = counter("tunneld_peer_receive_bytes", "Bytes received from the peer", peer)
    peer_tx = counter("tunneld_peer_transmit_bytes", "Bytes sent to the peer", peer)
    peer_hs = counter("tunneld_peer_handshakes", "Completed handshakes with the peer", peer)
    peer_age = gauge(
        "tunneld_peer_latest_handshake_seconds",
        "Unix time of the latest completed handshake (0: never)",
        peer,
    )
    fdb = gauge("tunneld_fdb_entries", "FDB entries by kind", ["interface", "kind"])
    routes = gauge("tunneld_overlay_routes", "Routes to other overlay hosts", ["interface"])
    registry = gauge(
        "tunneld_registry_connected", "1 while the overlay registry is reachable", ["interface"]
    )
    for name, show in shows.items():
        kind = str(show.get("type", ""))
        counters = show.get("counters") or {}
        for fam, key in traffic:
            fam.add_metric([name, kind], counters.get(key, 0))
        for direction, key in DIRECTIONS:
            for reason, count in (counters.get(key) or {}).items():
                drops.add_metric([name, direction, reason], count)
        for p in _peers(show):
            labels = [name, p["public_key"]]
            peer_rx.add_metric(labels, p.get("rx_bytes", 0))
            peer_tx.add_metric(labels, p.get("tx_bytes", 0))
            peer_hs.add_metric(labels, p.get("handshakes", 0))
            peer_age.add_metric(labels, p.get("latest_handshake", 0))
        if kind == "vxlan":
            entries = show.get("fdb") or []
            static = sum(1 for e in entries if e.get("static"))
            fdb.add_metric([name, "learned"], len(entries) - static)
            fdb.add_metric([name, "static"], static)
        if kind == "overlay":
            routes.add_metric([name], len(show.get("routes") or []))
            connected = (show.get("registry") or {}).get("connected")
            registry.add_metric([name], 1 if connected else 0)
    return list(fams.values())


def _peers(show: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    """WireGuard peers of a wireguard link, or of an overlay's WireGuard transport (its routes)."""
    if show.get("type") == "wireguard":
        return show.get("peers") or []
    return [r for r in show.get("routes") or [] if r.get("public_key")]


class LinkCollector(Collector):
    """Calls `snapshot()` on every scrape (in the HTTP thread) and yields `families` of it."""

    def __init__(self, snapshot: Callable[[], Shows]) -> None:
        self._snapshot = snapshot

    def describe(self) -> list[Metric]:
        return []  # no snapshot at registration time

    def collect(self) -> Iterator[Metric]:
        ok = GaugeMetricFamily(
            "tunneld_metrics_snapshot_ok", "1 when the event loop answered this scrape in time"
        )
        try:
            shows = self._snapshot()
        except Exception as exc:  # a wedged or closing loop: process metrics still go out
            log.warning("metrics: no snapshot from the event loop: %s", exc or type(exc).__name__)
            ok.add_metric([], 0)
            yield ok
            return
        ok.add_metric([], 1)
        yield ok
        yield from families(shows)


def loop_snapshot(
    loop: asyncio.AbstractEventLoop, read: Callable[[], Shows], timeout: float = SNAPSHOT_TIMEOUT
) -> Callable[[], Shows]:
    """A thread-safe `snapshot()`: runs `read` on `loop` and waits at most `timeout` seconds.

    Raises TimeoutError when the loop does not get to it in time (the late call is skipped).
    One snapshot at a time: concurrent scrapes queue on a lock (bounded by the same
    timeout), so a burst of requests never piles `show` calls onto the loop.
    """
    one_at_a_time = threading.Lock()

    def snapshot() -> Shows:
        if not one_at_a_time.acquire(timeout=timeout):
            raise TimeoutError(f"another scrape held the snapshot for more than {timeout} s")
        try:
            return _once()
        finally:
            one_at_a_time.release()

    def _once() -> Shows:
        future: concurrent.futures.Future[Shows] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(read())
            except BaseException as exc:
                future.set_exception(exc)

        loop.call_soon_threadsafe(run)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"event loop busy for more than {timeout} s") from None

    return snapshot


class MetricsServer:
    """/metrics on `listen` (IP, port); `start()` binds at once: a taken port fails start-up.

    A small HTTP/1.x server on an event loop of its own, in its own thread, so a wedged
    daemon loop still gets an answer (snapshot_ok 0). It replaces prometheus_client's
    `start_http_server`, which starts a thread per connection and waits on a silent client
    for ever: here at most MAX_CLIENTS connections are served at once (one more is closed),
    a request head is at most MAX_HEAD bytes and must arrive within REQUEST_TIMEOUT, and a
    client that does not read its reply is dropped after REPLY_TIMEOUT. One request per
    connection (Connection: close). The exposition itself is prometheus_client's
    (`choose_encoder`: text format or OpenMetrics, by the Accept header; gzip on request).
    """

    MAX_CLIENTS = 8
    MAX_HEAD = 8192  # bytes of request line and headers
    REQUEST_TIMEOUT = 5.0  # seconds for the whole request head
    REPLY_TIMEOUT = 10.0  # seconds for the client to take the reply

    def __init__(self, listen: tuple[str, int], snapshot: Callable[[], Shows]) -> None:
        self.listen = listen
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(LinkCollector(snapshot))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.clients = 0
        self.refused = 0  # connections turned away with 503 (MAX_CLIENTS busy)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    def start(self) -> None:
        host, port = self.listen
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._sock = socket.create_server((host, port), family=family, backlog=16)
        except OSError as exc:
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise SetupError(
                f"metrics_listen {where}: {exc.strerror or exc}; pick a free port or "
                "remove daemon.metrics_listen"
            ) from None
        self._sock.setblocking(False)
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="tunneld-metrics", daemon=True
        )
        self._thread.start()
        ready.wait()
        log.info("metrics on http://%s:%d/metrics", f"[{host}]" if ":" in host else host, port)

    @property
    def port(self) -> int:
        """The bound port (the configured one, or the kernel's pick for port 0 in tests)."""
        return int(self._sock.getsockname()[1]) if self._sock is not None else 0

    async def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # its loop already closed
                loop.call_soon_threadsafe(stopping.set)
        await asyncio.get_running_loop().run_in_executor(None, thread.join, 2.0)

    # --- the server thread -------------------------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop, self._stopping = loop, asyncio.Event()
        try:
            server = loop.run_until_complete(
                asyncio.start_server(self._serve, sock=self._sock, limit=self.MAX_HEAD)
            )
            ready.set()
            loop.run_until_complete(self._stopping.wait())
            server.close()
            loop.run_until_complete(server.wait_closed())
        finally:
            ready.set()
            loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.clients >= self.MAX_CLIENTS:
            self.refused += 1  # closed unanswered: reading its request would hold it longer
            writer.close()
            return
        self.clients += 1
        try:
            async with asyncio.timeout(self.REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            try:
                reply = self._reply(head)
            except Exception:  # a bug (ours or the exposition's): answer, log, carry on
                log.exception("metrics: request %r failed", head[:200])
                reply = _response(500, "text/plain", b"internal error\n")
            writer.write(reply)
            async with asyncio.timeout(self.REPLY_TIMEOUT):
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError, ValueError):  # fmt: skip
            pass  # a silent, oversized, malformed or vanished client: just close
        finally:
            self.clients -= 1
            writer.close()

    def _reply(self, head: bytes) -> bytes:
        """The whole response to one request head (request line and headers)."""
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _response(400, "text/plain", b"bad request\n")
        method, target, _version = parts
        if method not in ("GET", "HEAD"):
            return _response(405, "text/plain", b"only GET\n", [("Allow", "GET, HEAD")])
        if target.split("?", 1)[0] not in ("/metrics", "/"):
            return _response(404, "text/plain", b"try /metrics\n")
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        encoder, content_type = _encoder(headers.get("accept", ""))
        body = encoder(self.registry)  # waits for the daemon's loop at most SNAPSHOT_TIMEOUT
        extra = []
        if "gzip" in headers.get("accept-encoding", "").lower():
            body = gzip.compress(body)
            extra.append(("Content-Encoding", "gzip"))
        return _response(200, content_type, body, extra, head_only=method == "HEAD")


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error"}  # fmt: skip


def _encoder(accept: str) -> tuple[Callable[[Any], bytes], str]:
    """prometheus_client's choice of format for an Accept header; the text format when it
    cannot parse the header (found by fuzzing: `text/plain;version=TP0` raised TypeError)."""
    try:
        return choose_encoder(accept)
    except (TypeError, ValueError, IndexError):
        return choose_encoder("")


def _response(
    status: int,
    content_type: str,
    body: bytes,
    extra: list[tuple[str, str]] | None = None,
    head_only: bool = False,
) -> bytes:
    fields = [("Content-Type", content_type), ("Content-Length", str(len(body))),
              ("Connection", "close"), *(extra or [])]  # fmt: skip
    head = f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in fields)
    return (head + "\r\n").encode("latin-1") + (b"" if head_only else body)
