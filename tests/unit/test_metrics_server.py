"""MetricsServer's HTTP side on 127.0.0.1 (issue 9: bounded state an outsider can write).

Real sockets against a real server thread: a scrape answers in the text format, in
OpenMetrics when asked, gzipped when asked; other paths and methods get 404 / 405; a
client that sends nothing, or too long a head, is closed; at most MAX_CLIENTS connections
are served at once and one more is closed at once, unanswered, and the slots come back when
the silent clients time out. prometheus_client's own server would have kept a thread per silent
client for ever.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import time
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tunneld.runtime.metrics import MetricsServer

SHOWS = {"vx0": {"type": "vxlan", "counters": {"rx_packets": 7}}}


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    srv = MetricsServer(("127.0.0.1", 0), lambda: SHOWS)
    srv.REQUEST_TIMEOUT = 0.5  # type: ignore[misc]  # the bound itself is what is tested
    srv.start()
    try:
        yield srv
    finally:
        asyncio.run(srv.stop())


def http(port: int, head: bytes, timeout: float = 5.0) -> bytes:
    """Send `head`, return everything the server sends before it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head)
        return _read_all(s)


def _read_all(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def get(port: int, *headers: str, method: str = "GET", path: str = "/metrics") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: x", *headers, "", ""]
    return http(port, "\r\n".join(lines).encode())


def split(reply: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    status, *fields = head.decode().split("\r\n")
    return status, {k.lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}, body


def test_a_scrape_in_text_format(server):
    status, headers, body = split(get(server.port))
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert int(headers["content-length"]) == len(body) and headers["connection"] == "close"
    samples = {s.name: s.value for f in text_string_to_metric_families(body.decode())
               for s in f.samples}  # fmt: skip
    assert samples["tunneld_metrics_snapshot_ok"] == 1
    assert samples["tunneld_interface_receive_packets_total"] == 7
    assert "process_cpu_seconds_total" in samples


def test_openmetrics_gzip_head_and_errors(server):
    status, headers, body = split(
        get(
            server.port,
            "Accept: application/openmetrics-text; version=1.0.0",
            "Accept-Encoding: gzip",
        )  # fmt: skip
    )
    assert status == "HTTP/1.1 200 OK" and headers["content-encoding"] == "gzip"
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert gzip.decompress(body).rstrip().endswith(b"# EOF")
    status, headers, body = split(get(server.port, method="HEAD"))
    assert status == "HTTP/1.1 200 OK" and int(headers["content-length"]) > 0 and body == b""
    assert split(get(server.port, path="/other"))[0] == "HTTP/1.1 404 Not Found"
    status, headers, _ = split(get(server.port, method="POST"))
    assert status == "HTTP/1.1 405 Method Not Allowed" and headers["allow"] == "GET, HEAD"
    assert split(http(server.port, b"nonsense\r\n\r\n"))[0] == "HTTP/1.1 400 Bad Request"


def test_an_accept_header_prometheus_client_cannot_parse_gets_the_text_format(server):
    # fuzz finding (metrics_request): choose_encoder raised TypeError on this version
    status, headers, body = split(get(server.port, "Accept: text/plain;version=TP0.0.49q=0.3"))
    assert status == "HTTP/1.1 200 OK", body
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert b"tunneld_metrics_snapshot_ok 1.0" in body


def test_an_oversized_head_is_closed_unanswered(server):
    head = b"GET /metrics HTTP/1.1\r\n" + b"X-Pad: " + b"a" * MetricsServer.MAX_HEAD + b"\r\n\r\n"
    assert http(server.port, head) == b""
    assert split(get(server.port))[0] == "HTTP/1.1 200 OK"  # and the server carries on


def test_a_silent_client_is_closed_after_the_request_timeout(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        started = time.monotonic()
        assert _read_all(s) == b""  # closed by the server, not by our timeout
        took = time.monotonic() - started
    assert 0.3 < took < 3, took


def test_clients_beyond_the_limit_are_closed_until_slots_free(server):
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5)
            for _ in range(MetricsServer.MAX_CLIENTS)]  # fmt: skip
    try:
        deadline = time.monotonic() + 5
        while server.clients < MetricsServer.MAX_CLIENTS:  # every one accepted
            assert time.monotonic() < deadline, server.clients
            time.sleep(0.01)
        try:
            refused = get(server.port)
        except ConnectionResetError:  # closed while our request sat unread: a reset
            refused = b""
        assert refused == b"" and server.refused == 1
        for s in idle:  # the server closes each after REQUEST_TIMEOUT ...
            assert _read_all(s) == b""
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 5
    while server.clients:
        assert time.monotonic() < deadline, server.clients
        time.sleep(0.01)
    assert split(get(server.port))[0] == "HTTP/1.1 200 OK"  # ... and its slots come back


def test_a_taken_port_is_a_setup_error():
    from tunneld.errors import SetupError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        srv = MetricsServer(("127.0.0.1", busy.getsockname()[1]), lambda: SHOWS)
        with pytest.raises(SetupError, match="metrics_listen 127.0.0.1:"):
            srv.start()
