"""Loss, reordering, duplication and bad input for every WireGuard message type.

Every drop is asserted by its `WgDrop` counter; the other side and other peers keep
working. Uses the in-memory `Net` of test_wg_pair.py.
"""

from __future__ import annotations

import random

import pytest

from tests.pair.test_wg_pair import A_ADDR, Net, handshaked, ipv4_packet, msg_type
from tunneld.proto.wg.actions import SendDatagram
from tunneld.proto.wg.constants import (
    MESSAGE_INITIATION_SIZE,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
)
from tunneld.proto.wg.cookie import CookieGenerator
from tunneld.proto.wg.drops import WgDrop
from tunneld.proto.wg.interface import RX_NONE
from tunneld.proto.wg.keys import public_key
from tunneld.proto.wg.messages import INITIATION_MAC1_OFFSET

RETRY = REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX


def counters(side: object) -> dict[str, int]:
    drops = side.iface.rx_dropped  # type: ignore[attr-defined]
    return {m.name: drops[m] for m in WgDrop if drops[m]}


def capture_handshake() -> tuple[Net, dict[int, list[bytes]]]:
    """A's staged packet and initiation, captured by type instead of delivered."""
    net = Net()
    by_type: dict[int, list[bytes]] = {1: [], 2: [], 3: [], 4: []}
    net.drop = lambda side, data: by_type[msg_type(data)].append(data) is None
    net.send(net.a, ipv4_packet(b"x"))
    return net, by_type


# --- loss -------------------------------------------------------------------------


@pytest.mark.parametrize("lost", [1, 2])
def test_lost_initiation_or_response_is_retried(lost: int) -> None:
    net = Net()
    dropped = []
    net.drop = lambda side, data: (
        msg_type(data) == lost and not dropped and dropped.append(data) is None
    )
    net.send(net.a, ipv4_packet(b"x"))
    assert net.b.delivered == []
    net.advance(RETRY)
    assert net.b.delivered == [ipv4_packet(b"x")]


def test_lost_confirmation_responder_waits_then_sends_staged() -> None:
    net = Net()
    net.drop = lambda side, data: side is net.a and msg_type(data) == 4  # the keepalive
    net.send(net.a, ipv4_packet(b"lost"))
    net.drop = lambda side, data: False
    assert net.b.peer.keypairs.next is not None and net.b.peer.keypairs.current is None
    assert net.send(net.b, ipv4_packet(b"waiting", "10.77.0.2", "10.77.0.1")) == 0  # staged
    net.send(net.a, ipv4_packet(b"confirm"))  # first packet under the new session
    assert net.b.peer.keypairs.current is not None
    assert net.a.delivered == [ipv4_packet(b"waiting", "10.77.0.2", "10.77.0.1")]


def test_lost_cookie_reply_is_retried() -> None:
    net = Net()
    net.b.iface.force_under_load = True
    lost = []
    net.drop = lambda side, data: msg_type(data) == 3 and not lost and lost.append(1) is None
    net.send(net.a, ipv4_packet(b"x"))
    net.advance(3 * RETRY)
    assert net.b.delivered == [ipv4_packet(b"x")]
    assert net.b.iface.rx_dropped[WgDrop.COOKIE_REQUIRED] == 2


def test_lost_transport_packets_do_not_disturb_others() -> None:
    net = handshaked()
    net.drop = lambda side, data: msg_type(data) == 4 and data[-1] % 2 == 0
    for i in range(20):
        net.send(net.a, ipv4_packet(bytes([i])))
    assert len(net.b.delivered) == 1 + 20 - len(net.held)
    assert counters(net.b) == {}


# --- duplication -------------------------------------------------------------------


def test_duplicate_initiation_is_stale() -> None:
    net, seen = capture_handshake()
    net.deliver(net.a, seen[1][0])
    net.pump()
    net.deliver(net.a, seen[1][0])
    assert counters(net.b) == {"STALE_TIMESTAMP": 1}


def test_duplicate_response_has_unknown_receiver() -> None:
    net, seen = capture_handshake()
    net.deliver(net.a, seen[1][0])
    response = net.b.iface.take_actions(net.now, net.wall)[-1]
    assert isinstance(response, SendDatagram) and msg_type(response.data) == 2
    net.deliver(net.b, response.data)
    net.deliver(net.b, response.data)
    assert counters(net.a) == {"UNKNOWN_RECEIVER": 1}


def test_duplicate_cookie_reply_is_refused() -> None:
    net = Net()
    net.b.iface.force_under_load = True
    replies = []
    net.drop = lambda side, data: msg_type(data) == 3 and replies.append(data) is None
    net.send(net.a, ipv4_packet(b"x"))
    assert net.b.iface.rx_dropped[WgDrop.COOKIE_REQUIRED] == 1
    assert net.deliver(net.b, replies[0]) == RX_NONE
    assert net.deliver(net.b, replies[0]) == RX_NONE
    assert counters(net.a) == {"BAD_COOKIE": 1}


def test_duplicate_and_reordered_transport() -> None:
    net = handshaked()
    held = []
    net.drop = lambda side, data: held.append(data) is None
    for i in range(4):
        net.send(net.a, ipv4_packet(bytes([i])))
    for data in (held[3], held[1], held[0], held[2], held[1], held[3]):
        net.deliver(net.a, data)
    assert net.b.delivered[1:] == [ipv4_packet(bytes([i])) for i in (3, 1, 0, 2)]
    assert counters(net.b) == {"REPLAY": 2}


# --- under load: cookie reply, then mac2 ---------------------------------------------


def test_cookie_reply_under_load_then_handshake_with_mac2() -> None:
    net = Net()
    b = net.b.iface
    b.under_load_threshold = 5
    forger = CookieGenerator(b.public_key)  # an attacker can compute a valid mac1
    rng = random.Random(9)
    for i in range(10):
        msg = bytearray(rng.randbytes(MESSAGE_INITIATION_SIZE))
        msg[0:4] = b"\x01\x00\x00\x00"
        forger.add_macs(msg, INITIATION_MAC1_OFFSET, net.now)
        out = bytearray(2048)
        b.receive(memoryview(bytes(msg)), (f"203.0.113.{i}", 1000 + i), net.now, out)
    assert b.under_load(net.now)
    b.take_actions(net.now, net.wall)  # cookie replies to the forgers go nowhere
    net.send(net.a, ipv4_packet(b"legit"))
    assert net.b.delivered == []
    assert net.a.peer.cookie.cookie  # A holds a cookie now
    net.advance(RETRY)  # the retry carries mac2
    assert net.b.delivered == [ipv4_packet(b"legit")]
    assert b.rx_dropped[WgDrop.COOKIE_REQUIRED] >= 6


def test_rate_limit_per_source_under_load() -> None:
    net = Net()
    net.b.iface.force_under_load = True
    net.send(net.a, ipv4_packet(b"x"))  # gets a cookie
    initiations = []
    net.drop = lambda side, data: msg_type(data) == 1 and initiations.append(data) is None
    for _ in range(8):
        net.now += RETRY
        net.a.iface.start_handshake(net.a.peer, net.now)
        net.pump()
    for data in initiations:  # a burst from one source, all with valid mac2
        net.deliver(net.a, data)
    assert net.b.iface.rx_dropped[WgDrop.RATE_LIMITED] >= 1


# --- bad input, each counted -----------------------------------------------------------


@pytest.mark.parametrize(
    "size,reason",
    [
        (147, "BAD_SIZE"),
        (149, "BAD_SIZE"),
        (91, "BAD_SIZE"),
        (93, "BAD_SIZE"),
        (63, "BAD_SIZE"),
        (65, "BAD_SIZE"),
        (31, "BAD_SIZE"),
        (3, "BAD_TYPE"),
        (0, "BAD_TYPE"),
    ],
)
def test_wrong_sizes(size: int, reason: str) -> None:
    net = handshaked()
    kind = {147: 1, 149: 1, 91: 2, 93: 2, 63: 3, 65: 3, 31: 4}.get(size, 1)
    data = bytes([kind, 0, 0, 0]) + bytes(max(0, size - 4))
    assert net.deliver(net.a, data[:size]) == RX_NONE
    assert counters(net.b) == {reason: 1}


def test_unknown_type_and_reserved_bytes() -> None:
    net = handshaked()
    net.deliver(net.a, bytes([5, 0, 0, 0]) + bytes(60))
    net.deliver(net.a, bytes([4, 1, 0, 0]) + bytes(60))
    assert counters(net.b) == {"BAD_TYPE": 2}


@pytest.mark.parametrize("kind,offset", [(1, 20), (1, 120), (2, 20), (2, 65)])
def test_bad_mac1(kind: int, offset: int) -> None:
    net, seen = capture_handshake()
    if kind == 2:
        net.deliver(net.a, seen[1][0])
        net.pump()
        seen[2] = [d for s, d in net.wire if msg_type(d) == 2]
    target = net.b if kind == 1 else net.a
    bad = bytearray(seen[kind][0])
    bad[offset] ^= 1
    net.deliver(net.other(target), bytes(bad))
    assert target.iface.rx_dropped[WgDrop.BAD_MAC1] == 1


def test_unknown_receiver_bad_tag_and_replay() -> None:
    net = handshaked()
    held = []
    net.drop = lambda side, data: held.append(data) is None
    net.send(net.a, ipv4_packet(b"ok"))
    data = held[0]
    wrong_index = data[:4] + bytes(4) + data[8:]
    assert net.deliver(net.a, wrong_index) == RX_NONE
    bad_tag = data[:-1] + bytes([data[-1] ^ 0x80])
    assert net.deliver(net.a, bad_tag) == RX_NONE
    assert net.deliver(net.a, data) > 0  # the forgery did not burn the counter
    assert net.deliver(net.a, data) == RX_NONE  # a captured packet re-sent
    assert counters(net.b) == {"UNKNOWN_RECEIVER": 1, "DECRYPT_FAILED": 1, "REPLAY": 1}


def test_stale_tai64n_replayed_initiation() -> None:
    net, seen = capture_handshake()
    old = seen[1][0]
    net.deliver(net.a, old)
    net.pump()
    net.now += 10.0
    net.a.iface.start_handshake(net.a.peer, net.now)
    net.pump()
    net.deliver(net.a, seen[1][-1])  # the newer initiation is accepted
    net.pump()
    net.deliver(net.a, old)
    assert net.b.iface.rx_dropped[WgDrop.STALE_TIMESTAMP] >= 1


def test_unknown_peer_and_bad_cookie_reply() -> None:
    net, seen = capture_handshake()
    net.b.iface.remove_peer(public_key(net.a.key))  # B no longer knows A's static key
    net.deliver(net.a, seen[1][0])
    assert net.b.iface.rx_dropped[WgDrop.UNKNOWN_PEER] == 1
    reply = bytes([3, 0, 0, 0]) + seen[1][0][4:8] + bytes(56)  # right index, junk cookie
    net.deliver(net.b, reply)
    assert net.a.iface.rx_dropped[WgDrop.BAD_COOKIE] == 1


def test_invalid_inner_packet_and_not_allowed_source() -> None:
    net = Net()
    net.b.iface.allowed_source = lambda peer, pkt: bytes(pkt[12:16]) == bytes([10, 77, 0, 1])
    net.send(net.a, ipv4_packet(b"fine"))
    net.send(net.a, ipv4_packet(b"spoof", src="10.99.0.1"))
    net.send(net.a, b"\x00" * 30)  # not IP
    assert [p[-4:] for p in net.b.delivered] == [b"fine"]
    assert counters(net.b) == {"NOT_ALLOWED_SOURCE": 1, "INVALID_PACKET": 1}


def test_random_datagrams_never_raise_and_are_counted() -> None:
    net = handshaked()
    rng = random.Random(5)
    out = bytearray(2048)
    for _ in range(10_000):
        size = rng.choice([rng.randrange(0, 200), 32, 64, 92, 148])
        data = bytearray(rng.randbytes(size))
        if size >= 4 and rng.random() < 0.7:
            data[0:4] = bytes([rng.randrange(1, 5), 0, 0, 0])
        assert net.b.iface.receive(memoryview(bytes(data)), A_ADDR, net.now, out) == RX_NONE
    assert sum(net.b.iface.rx_dropped) == 10_000
    assert net.send(net.a, ipv4_packet(b"alive")) > 0  # the session still works
    assert net.b.delivered[-1] == ipv4_packet(b"alive")
