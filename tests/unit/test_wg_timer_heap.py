"""The WireGuard timer heap (tunneld/proto/wg/timer_heap.py) against a brute-force model.

The model is what `Interface.next_deadline()` computed before the heap: the minimum of
every peer's `next_deadline()`. Random sequences of the timers.py events (the only
writers of the deadlines besides the interface itself), peer additions, removals and
updates, and `on_deadline` calls must keep the two equal, and `on_deadline(now)` must
leave no timer due at `now` (it ran every one) while expiring only the peers the
heap says are due.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunneld.proto.wg import interface as interface_module
from tunneld.proto.wg import timers
from tunneld.proto.wg.interface import Interface
from tunneld.proto.wg.keys import generate_private_key, public_key
from tunneld.proto.wg.peer import Peer
from tunneld.proto.wg.timer_heap import TimerHeap

WALL0 = 1_795_000_000.0
EVENTS = {
    "handshake_initiated": lambda p, now: timers.handshake_initiated(p, now),
    "handshake_complete": lambda p, now: timers.handshake_complete(p, now),
    "session_derived": lambda p, now: timers.session_derived(p, now),
    "data_sent": lambda p, now: timers.data_sent(p, now),
    "data_received": lambda p, now: timers.data_received(p, now),
    "any_authenticated_sent": lambda p, now: timers.any_authenticated_sent(p),
    "any_authenticated_received": lambda p, now: timers.any_authenticated_received(p),
    "traversal": lambda p, now: timers.traversal(p, now),
}
OPS = [*EVENTS, "on_deadline", "add", "remove", "keepalive_on", "keepalive_off"]


def brute_force(iface: Interface) -> float | None:
    deadlines = [t for p in iface.peers if (t := p.next_deadline()) is not None]
    return min(deadlines) if deadlines else None


def new_interface(seed: int) -> Interface:
    rng = random.Random(seed).randbytes
    return Interface(generate_private_key(rng), rng=rng)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(OPS), st.integers(0, 7), st.floats(0.0, 40.0)),
        max_size=120,
    )
)
def test_next_deadline_equals_the_minimum_over_all_peers(
    steps: list[tuple[str, int, float]],
) -> None:
    iface, keys_rng = new_interface(1), random.Random(2)
    now = 0.0
    for i in range(4):
        key = public_key(generate_private_key(keys_rng.randbytes))
        iface.add_peer(key, None, ("192.0.2.1", 1000 + i), 25 if i == 0 else None, now)
    for op, who, dt in steps:
        now += dt
        peers = iface.peers
        peer = peers[who % len(peers)] if peers else None
        if op in EVENTS and peer is not None:
            EVENTS[op](peer, now)
        elif op == "on_deadline":
            iface.on_deadline(now, WALL0 + now)
            due = [p for p in iface.peers if (t := p.next_deadline()) is not None and t <= now]
            assert due == []  # every timer due at `now` ran (and re-armed later, if at all)
        elif op == "add":
            key = public_key(generate_private_key(keys_rng.randbytes))
            iface.add_peer(key, None, ("192.0.2.2", 2000 + len(peers)), who or None, now)
        elif op == "remove" and peer is not None:
            iface.remove_peer(peer.public_key)
        elif op.startswith("keepalive") and peer is not None:
            interval = who + 1 if op == "keepalive_on" else 0
            iface.update_peer(peer.public_key, now, persistent_keepalive=interval)
        if iface.actions_pending:  # as the link does after every batch
            iface.take_actions(now, WALL0 + now)
        assert iface.next_deadline() == brute_force(iface)


def test_on_deadline_visits_only_the_due_peers(monkeypatch: pytest.MonkeyPatch) -> None:
    iface, keys_rng = new_interface(3), random.Random(4)
    peers = []
    for i in range(200):
        key = public_key(generate_private_key(keys_rng.randbytes))
        peers.append(iface.add_peer(key, None, ("192.0.2.3", 3000 + i), None, 0.0))
    for i, peer in enumerate(peers):
        timers.session_derived(peer, float(i))  # zero-keys deadline at 540 + i
    visited: list[Peer] = []
    real_expire = timers.expire

    def counting_expire(peer: Peer, now: float) -> int:
        visited.append(peer)
        return real_expire(peer, now)

    monkeypatch.setattr(interface_module.timers, "expire", counting_expire)
    assert iface.on_deadline(100.0, WALL0) == [] and visited == []  # early: nothing visited
    iface.on_deadline(542.0, WALL0)
    assert visited == peers[:3]  # 540, 541, 542 are due; the other 197 are not touched
    assert iface.next_deadline() == 543.0


def test_detached_peer_is_never_scheduled() -> None:
    heap = TimerHeap()
    peer = Peer(b"k" * 32, None, None, None)
    timers.session_derived(peer, 0.0)  # a peer outside any heap: stamps only
    assert len(heap) == 0 and peer.t_zero_keys is not None
    heap.attach(peer)
    assert heap.earliest() == peer.t_zero_keys
    heap.detach(peer)
    timers.handshake_initiated(peer, 1.0)
    assert heap.earliest() is None and heap.pop_due(1e9) == []


def test_moving_later_needs_no_push_and_is_corrected_at_the_top() -> None:
    heap = TimerHeap()
    peer = Peer(b"p" * 32, None, None, 25)
    heap.attach(peer)
    timers.traversal(peer, 0.0)
    pushes = heap.pushes
    for i in range(1, 1000):
        timers.traversal(peer, i * 0.01)  # persistent keepalive moves later on every packet
    assert heap.pushes == pushes  # no heap work per packet
    assert heap.earliest() == pytest.approx(9.99 + 25)  # the stale top was re-filed once
    assert heap.pushes == pushes + 1
