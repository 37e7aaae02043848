"""Two WireGuard `Interface` cores on an in-memory link with a fake clock.

Whitepaper section 6 behaviours (handshake both roles, retry, give-up, rekey,
reject, keepalives, zeroing) asserted on actions and counters; `now` moves by the
spec constants, nothing sleeps. The `Net` harness is shared with test_wg_faults.py.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from tunneld.proto.wg.actions import (
    EndpointChanged,
    HandshakeGaveUp,
    KeypairInstalled,
    KeysZeroed,
    SendDatagram,
)
from tunneld.proto.wg.constants import (
    KEEPALIVE_TIMEOUT,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_ATTEMPT_TIME,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
    ZERO_KEYS_AFTER,
)
from tunneld.proto.wg.drops import WgDrop
from tunneld.proto.wg.interface import RX_NONE, Interface
from tunneld.proto.wg.keys import generate_private_key, public_key

WALL0 = 1_795_000_000.0
A_ADDR = ("192.168.77.1", 51820)
B_ADDR = ("192.168.77.2", 51820)


def ipv4_packet(payload: bytes, src: str = "10.77.0.1", dst: str = "10.77.0.2") -> bytes:
    """A minimal IPv4 header + payload (checksum not needed by the core)."""
    total = 20 + len(payload)
    header = bytes([0x45, 0, total >> 8, total & 0xFF, 0, 0, 0, 0, 64, 17, 0, 0])
    return header + bytes(map(int, src.split("."))) + bytes(map(int, dst.split("."))) + payload


def msg_type(data: bytes) -> int:
    return data[0]


class Side:
    def __init__(self, name: str, seed: int, addr: tuple[str, int]) -> None:
        self.name = name
        self.rng = random.Random(seed).randbytes
        self.key = generate_private_key(self.rng)
        self.iface = Interface(self.key, rng=self.rng)
        self.addr = addr
        self.delivered: list[bytes] = []  # inner packets that reached the "tun"
        self.keepalives = 0
        self.events: list[object] = []
        self.peer = None  # type: ignore[assignment]


class Net:
    """A and B, each with the other as peer; `drop`/`mangle` hooks model the wire."""

    def __init__(
        self,
        *,
        a_endpoint: bool = True,
        b_endpoint: bool = False,
        a_keepalive: int | None = None,
        psk: bytes | None = None,
    ) -> None:
        self.now = 0.0
        self.a, self.b = Side("a", 1, A_ADDR), Side("b", 2, B_ADDR)
        self.a.peer = self.a.iface.add_peer(
            public_key(self.b.key), psk, B_ADDR if a_endpoint else None, a_keepalive, 0.0
        )
        self.b.peer = self.b.iface.add_peer(
            public_key(self.a.key), psk, A_ADDR if b_endpoint else None, None, 0.0
        )
        self.wire: list[tuple[Side, bytes]] = []  # every datagram sent, with its sender
        self.drop: Callable[[Side, bytes], bool] = lambda side, data: False
        self.held: list[tuple[Side, bytes]] = []  # datagrams captured instead of delivered

    def other(self, side: Side) -> Side:
        return self.b if side is self.a else self.a

    @property
    def wall(self) -> float:
        return WALL0 + self.now

    def deliver(self, sender: Side, data: bytes) -> int:
        receiver = self.other(sender)
        out = bytearray(2048)
        n = receiver.iface.receive(memoryview(data), sender.addr, self.now, memoryview(out))
        if n > 0:
            receiver.delivered.append(bytes(out[:n]))
        elif n == 0:
            receiver.keepalives += 1
        return n

    def collect(self, side: Side, actions: list[object]) -> list[bytes]:
        sent = []
        for action in actions:
            if isinstance(action, SendDatagram):
                sent.append(action.data)
            else:
                side.events.append(action)
        return sent

    def pump(self) -> None:
        """Deliver everything both sides want to send until the wire is quiet."""
        for _ in range(1000):
            moved = False
            for side in (self.a, self.b):
                if not side.iface.actions_pending:
                    continue
                for data in self.collect(side, side.iface.take_actions(self.now, self.wall)):
                    moved = True
                    self.transmit(side, data)
            if not moved:
                return
        raise AssertionError("pump did not settle")

    def transmit(self, side: Side, data: bytes) -> None:
        self.wire.append((side, data))
        if self.drop(side, data):
            self.held.append((side, data))
            return
        self.deliver(side, data)

    def send(self, side: Side, inner: bytes) -> int:
        """Encrypt one inner packet on `side` and put it on the wire; returns encrypt()'s n."""
        buf = bytearray(16 + len(inner) + 32)
        buf[16 : 16 + len(inner)] = inner
        n = side.iface.encrypt(side.peer, memoryview(buf), 0, len(inner), self.now)
        if n:
            self.transmit(side, bytes(buf[:n]))
        self.pump()
        return n

    def advance(self, until: float) -> None:
        """Fire every deadline of both sides up to `until`, then set now = until."""
        for _ in range(100_000):
            deadlines = [
                d
                for d in (self.a.iface.next_deadline(), self.b.iface.next_deadline())
                if d is not None and d <= until
            ]
            if not deadlines:
                break
            self.now = max(self.now, min(deadlines))
            for side in (self.a, self.b):
                for data in self.collect(side, side.iface.on_deadline(self.now, self.wall)):
                    self.transmit(side, data)
            self.pump()
        else:
            raise AssertionError("deadlines did not settle")
        self.now = until

    def sent_types(self, side: Side) -> list[int]:
        return [msg_type(d) for s, d in self.wire if s is side]


def handshaked(**kw: object) -> Net:
    net = Net(**kw)  # type: ignore[arg-type]
    assert net.send(net.a, ipv4_packet(b"hello")) == 0  # staged, handshake requested
    net.pump()
    assert net.b.delivered == [ipv4_packet(b"hello")]
    return net


# --- handshake and data, both roles ---------------------------------------------------


def test_handshake_a_initiates_and_data_flows_both_ways() -> None:
    net = handshaked()
    assert net.sent_types(net.a) == [1, 4]  # initiation, then the staged packet
    assert net.sent_types(net.b) == [2]
    assert net.b.peer.endpoint == A_ADDR  # learned from the authenticated initiation
    assert any(isinstance(e, KeypairInstalled) and e.initiator for e in net.a.events)
    assert net.send(net.b, ipv4_packet(b"back", "10.77.0.2", "10.77.0.1")) > 0
    assert net.a.delivered == [ipv4_packet(b"back", "10.77.0.2", "10.77.0.1")]
    assert net.a.peer.latest_handshake(net.now, net.wall) == int(WALL0)
    assert net.a.iface.rx_dropped == [0] * len(WgDrop) == net.b.iface.rx_dropped


def test_handshake_b_initiates() -> None:
    net = Net(a_endpoint=False, b_endpoint=True)
    assert net.send(net.b, ipv4_packet(b"from b")) == 0
    assert net.a.delivered == [ipv4_packet(b"from b")]
    assert net.a.peer.endpoint == B_ADDR
    assert net.send(net.a, ipv4_packet(b"reply")) > 0
    assert net.b.delivered[-1] == ipv4_packet(b"reply")


def test_preshared_key_must_match() -> None:
    net = handshaked(psk=bytes(range(32)))
    assert len(net.b.delivered) == 1
    bad = Net(psk=bytes(32))
    bad.b.iface.update_peer(public_key(bad.a.key), 0.0, preshared_key=bytes([1]) * 32)
    bad.send(bad.a, ipv4_packet(b"x"))
    assert bad.a.iface.rx_dropped[WgDrop.HANDSHAKE_FAILED] == 1  # the response fails at A
    assert bad.b.delivered == []


def test_staged_packets_are_sent_in_order_after_handshake() -> None:
    net = Net()
    net.drop = lambda side, data: True
    for i in range(3):
        assert net.send(net.a, ipv4_packet(bytes([i]))) == 0
    net.drop = lambda side, data: False
    net.advance(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX)  # the retry gets through
    assert net.b.delivered == [ipv4_packet(bytes([i])) for i in range(3)]


def test_encrypt_pads_to_16_and_keepalive_is_32_bytes() -> None:
    net = handshaked()
    inner = ipv4_packet(b"x")  # 21 bytes -> 32 padded
    buf = bytearray(16 + 32 + 16)
    buf[16:37] = inner
    n = net.a.iface.encrypt(net.a.peer, buf, 0, len(inner), net.now)
    assert n == 16 + 32 + 16 and buf[0:4] == b"\x04\x00\x00\x00"
    assert net.deliver(net.a, bytes(buf[:n])) == len(inner)  # padding stripped by IP length


# --- timers (whitepaper 6) -----------------------------------------------------------


def test_retry_after_rekey_timeout() -> None:
    net = Net()
    net.drop = lambda side, data: True
    net.send(net.a, ipv4_packet(b"x"))
    assert net.sent_types(net.a) == [1]
    deadline = net.a.iface.next_deadline()
    assert deadline is not None
    assert REKEY_TIMEOUT <= deadline <= REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX
    assert net.a.iface.on_deadline(deadline - 0.001, net.wall) == []  # spurious wake-up
    net.advance(deadline)
    assert net.sent_types(net.a) == [1, 1]


def test_give_up_after_rekey_attempt_time() -> None:
    net = Net()
    net.drop = lambda side, data: True
    net.send(net.a, ipv4_packet(b"x"))
    net.advance(REKEY_ATTEMPT_TIME + 3 * (REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX))
    gave_up = [e for e in net.a.events if isinstance(e, HandshakeGaveUp)]
    assert len(gave_up) == 1
    attempts = net.sent_types(net.a).count(1)
    assert REKEY_ATTEMPT_TIME / REKEY_TIMEOUT <= attempts <= REKEY_ATTEMPT_TIME / REKEY_TIMEOUT + 2
    assert net.a.iface.tx_dropped[WgDrop.NO_KEYPAIR] == 1  # the staged packet
    net.advance(net.now + 100)
    assert net.sent_types(net.a).count(1) == attempts  # silence after giving up


def test_rekey_after_rekey_after_time_keeps_traffic_flowing() -> None:
    net = handshaked()
    t = 0.0
    while t < 2.5 * REKEY_AFTER_TIME:
        t += 5.0
        net.advance(t)
        assert net.send(net.a, ipv4_packet(b"a%d" % t)) > 0
        assert net.send(net.b, ipv4_packet(b"b%d" % t, "10.77.0.2", "10.77.0.1")) > 0
    installs = [e for e in net.a.events if isinstance(e, KeypairInstalled)]
    assert len(installs) >= 3  # initial + one per REKEY_AFTER_TIME
    assert len(net.b.delivered) == 1 + int(2.5 * REKEY_AFTER_TIME / 5.0)
    assert net.a.iface.rx_dropped == [0] * len(WgDrop)
    assert net.b.iface.rx_dropped == [0] * len(WgDrop)


def test_rekey_after_messages_and_reject_after_messages() -> None:
    net = handshaked()
    kp = net.a.peer.keypairs.current
    kp.send_counter = REKEY_AFTER_MESSAGES
    before = net.sent_types(net.a).count(1)
    net.now = REKEY_TIMEOUT + 1  # past the initiation throttle
    assert net.send(net.a, ipv4_packet(b"y")) > 0
    assert net.sent_types(net.a).count(1) == before + 1  # rekey requested and sent
    net2 = handshaked()
    net2.a.peer.keypairs.current.send_counter = REJECT_AFTER_MESSAGES
    assert net2.a.iface.encrypt(net2.a.peer, bytearray(64), 0, 0, net2.now) == 0


def test_reject_after_reject_after_time() -> None:
    net = handshaked()
    net.drop = lambda side, data: msg_type(data) != 4  # no new handshake can complete
    net.now = REJECT_AFTER_TIME - 0.5
    buf = bytearray(16 + 32 + 16)
    inner = ipv4_packet(b"late")
    buf[16 : 16 + len(inner)] = inner
    n = net.a.iface.encrypt(net.a.peer, buf, 0, len(inner), net.now)
    assert n > 0
    net.now = REJECT_AFTER_TIME + 0.5
    assert net.deliver(net.a, bytes(buf[:n])) == RX_NONE
    assert net.b.iface.rx_dropped[WgDrop.KEY_EXPIRED] == 1
    assert net.a.iface.encrypt(net.a.peer, buf, 0, len(inner), net.now) == 0  # staged


def test_rekey_on_receive_rule_for_old_initiator_keypair() -> None:
    net = handshaked()
    net.drop = lambda side, data: msg_type(data) == 1  # keep the old session
    net.now = 100.0
    net.send(net.b, ipv4_packet(b"early", "10.77.0.2", "10.77.0.1"))
    assert net.sent_types(net.a).count(1) == 1
    net.now = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT + 0.1
    net.send(net.b, ipv4_packet(b"old", "10.77.0.2", "10.77.0.1"))
    net.send(net.b, ipv4_packet(b"old2", "10.77.0.2", "10.77.0.1"))
    assert net.sent_types(net.a).count(1) == 2  # exactly one last-minute initiation


def test_passive_keepalive() -> None:
    net = handshaked()
    assert net.b.iface.next_deadline() == pytest.approx(KEEPALIVE_TIMEOUT)
    net.advance(KEEPALIVE_TIMEOUT)
    assert net.sent_types(net.b)[-1] == 4 and net.a.keepalives == 1
    assert len(net.wire[-1][1]) == 32
    net.advance(60.0)
    assert net.a.keepalives == 1  # only one: nothing more was received


def test_new_handshake_when_sent_but_nothing_heard() -> None:
    net = handshaked()
    net.drop = lambda side, data: side is net.b  # B's replies vanish
    net.now = 1.0
    net.send(net.a, ipv4_packet(b"anyone?"))
    net.advance(1.0 + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX)
    assert net.sent_types(net.a).count(1) == 2


def test_persistent_keepalive() -> None:
    net = Net(a_keepalive=25)
    net.advance(0.0)  # persistent keepalive at once brings the tunnel up
    assert net.sent_types(net.a)[:2] == [1, 4]
    assert net.b.keepalives == 1
    net.advance(100.0)
    assert net.b.keepalives == 1 + 4  # at 25, 50, 75, 100
    shown = net.a.peer.show(net.now, net.wall)
    assert shown["persistent_keepalive"] == 25 and shown["tx_bytes"] > 0


def test_keys_zeroed_after_three_reject_after_time() -> None:
    net = handshaked()
    captured = []
    net.drop = lambda side, data: captured.append(data) is None
    net.send(net.a, ipv4_packet(b"keep"))
    net.drop = lambda side, data: False
    net.advance(ZERO_KEYS_AFTER + 1)
    assert any(isinstance(e, KeysZeroed) for e in net.a.events)
    assert any(isinstance(e, KeysZeroed) for e in net.b.events)
    assert net.a.peer.keypairs.all() == [] and net.b.peer.keypairs.all() == []
    assert net.deliver(net.a, captured[0]) == RX_NONE
    assert net.b.iface.rx_dropped[WgDrop.UNKNOWN_RECEIVER] == 1


def test_simultaneous_initiation_converges() -> None:
    net = Net(b_endpoint=True)
    net.drop = lambda side, data: True
    net.send(net.a, ipv4_packet(b"a"))
    net.send(net.b, ipv4_packet(b"b", "10.77.0.2", "10.77.0.1"))
    net.drop = lambda side, data: False
    held, net.held = net.held, []
    for side, data in held:  # both initiations cross on the wire
        net.deliver(side, data)
    net.pump()
    # each side answered the other and so abandoned its own initiation: both responses
    # arrive for a handshake that no longer exists; the retransmit jitter breaks the tie
    assert net.a.iface.rx_dropped[WgDrop.UNKNOWN_RECEIVER] == 1
    assert net.b.iface.rx_dropped[WgDrop.UNKNOWN_RECEIVER] == 1
    net.advance(3 * (REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX))
    assert net.b.delivered == [ipv4_packet(b"a")]
    assert net.a.delivered == [ipv4_packet(b"b", "10.77.0.2", "10.77.0.1")]
    assert net.send(net.a, ipv4_packet(b"a2")) > 0
    assert net.send(net.b, ipv4_packet(b"b2", "10.77.0.2", "10.77.0.1")) > 0
    assert net.b.delivered[-1] == ipv4_packet(b"a2")


def test_roaming_updates_endpoint() -> None:
    net = handshaked()
    net.a.addr = ("192.168.99.7", 40000)  # A's underlay address changes
    net.send(net.a, ipv4_packet(b"moved"))
    assert net.b.peer.endpoint == ("192.168.99.7", 40000)
    assert any(isinstance(e, EndpointChanged) and e.endpoint == net.a.addr for e in net.b.events)
    net.send(net.b, ipv4_packet(b"follow", "10.77.0.2", "10.77.0.1"))
    assert net.a.delivered[-1] == ipv4_packet(b"follow", "10.77.0.2", "10.77.0.1")


def test_remove_and_update_peer_keep_or_drop_sessions() -> None:
    net = handshaked()
    net.a.iface.update_peer(public_key(net.b.key), net.now, persistent_keepalive=10)
    assert net.send(net.a, ipv4_packet(b"still")) > 0  # the session survived
    net.a.iface.remove_peer(public_key(net.b.key))
    assert net.a.iface.peers == []
    net.send(net.b, ipv4_packet(b"to nobody", "10.77.0.2", "10.77.0.1"))
    assert net.a.iface.rx_dropped[WgDrop.UNKNOWN_RECEIVER] == 1


def test_shortened_rekey_after_time_is_per_interface() -> None:
    """Interop tests shorten REKEY_AFTER_TIME on one Interface; the peer keeps the spec's."""
    net = handshaked()
    net.a.iface.rekey_after_time = 6.0
    t = 0.0
    while t < 20.0:
        t += 1.0
        net.advance(t)
        assert net.send(net.a, ipv4_packet(b"a%d" % t)) > 0
    installs = [e for e in net.a.events if isinstance(e, KeypairInstalled)]
    assert len(installs) >= 3  # initial + a rekey about every 6 s
    assert net.b.iface.rekey_after_time == REKEY_AFTER_TIME
