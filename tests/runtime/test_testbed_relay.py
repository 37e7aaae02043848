"""The fault relay (tunneld/testbed/relay.py) on loopback, no root: it reorders and
duplicates, loses nothing, releases a held datagram when nothing follows it, and drops
strangers. The netns fault tests rely on exactly this."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from tunneld.testbed.relay import HOLD_MAX_SECONDS, Relay

A, B, RELAY = "127.0.0.2", "127.0.0.3", "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((RELAY, 0))
        return int(s.getsockname()[1])


@pytest.fixture
def relay():
    """A relay between A and B on one free port; yields (relay, port, end_a, end_b)."""
    port = free_port()
    ends = []
    for host in (A, B):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((host, port))
        sock.settimeout(2.0)
        ends.append(sock)
    r = Relay(A, B, [port], hold=0.2, duplicate=0.2, seed=7, listen=RELAY)
    flags = {"stop": False, "report": False}
    thread = threading.Thread(target=r.run, args=(flags,), daemon=True)
    thread.start()
    yield r, port, ends[0], ends[1]
    flags["stop"] = True
    thread.join(2)
    r.close()
    for sock in ends:
        sock.close()


def receive_all(sock: socket.socket) -> list[int]:
    """Sequence numbers until nothing came for 10 x HOLD_MAX_SECONDS."""
    got = []
    sock.settimeout(HOLD_MAX_SECONDS * 10)
    try:
        while True:
            got.append(struct.unpack("!I", sock.recv(64))[0])
    except TimeoutError:
        return got


def test_reorders_duplicates_and_loses_nothing(relay):
    r, port, end_a, end_b = relay
    got: list[int] = []
    reader = threading.Thread(target=lambda: got.extend(receive_all(end_b)))
    reader.start()
    for i in range(400):  # fewer than the socket buffers hold, should the relay stall
        end_a.sendto(struct.pack("!I", i), (RELAY, port))
        if i % 20 == 19:
            time.sleep(0.002)  # within what the relay and the socket buffers keep up with
    reader.join(10)
    assert sorted(set(got)) == list(range(400))  # nothing lost
    assert len(got) - 400 == r.counts["duplicated"] > 30
    late = sum(1 for x, y in zip(got, got[1:], strict=False) if y < x)
    assert late > 20 and r.counts["held"] > 30, (late, r.counts)
    r.hold = r.duplicate = 0.0
    end_b.sendto(b"back", (RELAY, port))  # and the other way, to A
    assert end_a.recv(64) == b"back"


def test_a_lone_held_datagram_is_released_and_strangers_dropped(relay):
    r, port, end_a, end_b = relay
    r.hold = 1.0  # hold the first datagram; nothing follows it
    end_a.sendto(b"lonely", (RELAY, port))
    assert end_b.recv(64) == b"lonely"  # after HOLD_MAX_SECONDS, not never
    assert r.counts["held"] == 1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        stranger.bind(("127.0.0.4", 0))
        stranger.sendto(b"x", (RELAY, port))
    r.hold = 0.0
    end_a.sendto(b"after", (RELAY, port))
    assert end_b.recv(64) == b"after"
    assert r.counts["unknown_source"] == 1
