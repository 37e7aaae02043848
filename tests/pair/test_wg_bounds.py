"""Bounded state under a handshake flood (issue 9): whatever many sources send, the
WireGuard core's tables (per-source rate limiter, in-flight handshakes, sessions by
index) stay at their bounds, and each dropped message is counted by reason.

Fake clock only; the floods use the pair harness of test_wg_pair.py.
"""

from __future__ import annotations

import os

from tests.pair.test_wg_pair import Net, handshaked, ipv4_packet
from tunneld.proto.wg.constants import REKEY_TIMEOUT
from tunneld.proto.wg.drops import WgDrop
from tunneld.proto.wg.ratelimit import MAX_SOURCES, TokenBucket

SOURCES = 50_000


def _tables(iface) -> dict[str, int]:
    return {"keypairs": len(iface._keypairs), "handshakes": len(iface._handshakes),
            "limiter": len(iface._limiter), "pending": len(iface._pending)}  # fmt: skip


def _from(i: int) -> tuple[str, int]:
    return (f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", 40000 + i % 20000)


def test_token_bucket_tracks_at_most_max_keys_and_refuses_new_ones_when_full():
    bucket = TokenBucket(20.0, 5, max_keys=1000)
    allowed = sum(bucket.allow(("198.51.100.1", i), 10.0) for i in range(5000))
    assert allowed == 1000 and len(bucket) == 1000 and bucket.refused == 4000
    assert bucket.allow(("198.51.100.1", 3), 10.0)  # a known source keeps its budget
    assert bucket.allow("new", 11.0)  # a second later the idle ones expired: room again
    assert len(bucket) == 1
    assert TokenBucket(1.0, 1).max_keys == MAX_SOURCES


def test_replayed_initiation_from_many_sources_creates_no_state():
    net = Net()
    net.a.iface.start_handshake(net.a.peer, net.now)
    initiation = net.collect(net.a, net.a.iface.take_actions(net.now, net.wall))[0]
    assert initiation[0] == 1
    b = net.b.iface
    out = memoryview(bytearray(2048))
    b.receive(memoryview(initiation), _from(0), net.now, out)  # the real one: answered
    b.take_actions(net.now, net.wall)
    before, dropped_before = _tables(b), sum(b.rx_dropped)
    net.now += 1.0
    for i in range(1, SOURCES):
        assert b.receive(memoryview(initiation), _from(i), net.now, out) < 0
    b.take_actions(net.now, net.wall)
    assert _tables(b) == before  # the replays (same TAI64N) made nothing new
    assert sum(b.rx_dropped) - dropped_before == SOURCES - 1
    counted = {WgDrop(i).name: n for i, n in enumerate(b.rx_dropped) if n}
    assert set(counted) <= {"STALE_TIMESTAMP", "RATE_LIMITED", "COOKIE_REQUIRED"}, counted


def test_garbage_and_cookie_floods_from_many_sources_keep_tables_empty():
    net = handshaked()
    b = net.b.iface
    before = _tables(b)
    out = memoryview(bytearray(2048))
    junk = bytearray(os.urandom(148))
    junk[0:4] = b"\x01\x00\x00\x00"
    for i in range(SOURCES):
        b.receive(memoryview(junk), _from(i), net.now, out)
    assert b.rx_dropped[WgDrop.BAD_MAC1] == SOURCES
    b.force_under_load = True  # every initiation now needs a cookie first
    net.a.iface.start_handshake(net.a.peer, net.now + REKEY_TIMEOUT + 1)
    net.now += REKEY_TIMEOUT + 1
    initiation = net.collect(net.a, net.a.iface.take_actions(net.now, net.wall))[0]
    for i in range(SOURCES):  # a valid mac1 from many addresses: cookie replies, no state
        b.receive(memoryview(initiation), _from(i), net.now, out)
    replies = [
        a for a in b.take_actions(net.now, net.wall) if getattr(a, "data", b"")[:1] == b"\x03"
    ]
    assert b.rx_dropped[WgDrop.COOKIE_REQUIRED] == SOURCES
    assert len(replies) == SOURCES
    assert _tables(b) == before


def test_a_peer_rehandshaking_without_end_keeps_at_most_three_sessions():
    net = handshaked()
    for _ in range(300):
        net.now += REKEY_TIMEOUT + 0.5
        net.a.iface.start_handshake(net.a.peer, net.now)
        net.pump()
    assert net.send(net.a, ipv4_packet(b"still")) > 0
    assert net.b.delivered[-1] == ipv4_packet(b"still")
    for side in (net.a, net.b):
        tables = _tables(side.iface)
        assert tables["keypairs"] <= 3 and tables["handshakes"] <= 1, tables
