"""Prometheus metrics on `[daemon] metrics_listen`: the links' `show` data, read at scrape time.

Names and labels are fixed interfaces (DESIGN.md, "Metrics names"):

  tunneld_interface_{receive,transmit}_{bytes,packets}_total   {interface, type}
  tunneld_interface_dropped_packets_total     {interface, direction, reason}
  tunneld_peer_{receive,transmit}_bytes_total, tunneld_peer_handshakes_total,
  tunneld_peer_latest_handshake_seconds       {interface, peer}   (peer: base64 public key)
  tunneld_fdb_entries                         {interface, kind}   (kind: learned | static)
  tunneld_overlay_routes, tunneld_registry_connected   {interface}
  plus prometheus_client's process_*, python_gc_* and python_info.

Theory of operation. prometheus_client serves /metrics from its own threads
(`start_http_server`). A scrape calls `LinkCollector.collect()` in such a thread, which
asks the event loop for a snapshot: `loop.call_soon_threadsafe` runs the daemon's
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
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
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
    """/metrics on `listen` (IP, port); `start()` binds at once: a taken port fails start-up."""

    def __init__(self, listen: tuple[str, int], snapshot: Callable[[], Shows]) -> None:
        self.listen = listen
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(LinkCollector(snapshot))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._server: Any = None

    def start(self) -> None:
        host, port = self.listen
        try:
            self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise SetupError(
                f"metrics_listen {where}: {exc.strerror or exc}; pick a free port or "
                "remove daemon.metrics_listen"
            ) from None
        log.info("metrics on http://%s:%d/metrics", f"[{host}]" if ":" in host else host, port)

    @property
    def port(self) -> int:
        """The bound port (the configured one, or the kernel's pick for port 0 in tests)."""
        return int(self._server.server_address[1]) if self._server is not None else 0

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        loop = asyncio.get_running_loop()
        with contextlib.suppress(Exception):  # serve_forever polls every 0.5 s
            await asyncio.wait_for(loop.run_in_executor(None, server.shutdown), 1.0)
        server.server_close()
