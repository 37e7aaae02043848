"""tunneld/proto/reresolve.py: when an endpoint name is looked up again, and whether the
answer replaces the endpoint in use (reresolve-dns.sh's rules, an injected clock)."""

from __future__ import annotations

import pytest

from tunneld.proto.reresolve import (
    BACKOFF_MAX,
    BACKOFF_MIN,
    REFRESH_INTERVAL,
    STALE_AFTER,
    STALE_RETRY,
    EndpointName,
)

NEVER = float("-inf")
A, B = ("192.0.2.1", 51820), ("192.0.2.2", 51820)


def started(now: float = 0.0, address: tuple = A) -> EndpointName:
    """A name that resolved at start-up to `address`."""
    n = EndpointName("peer.example", 51820, now)
    n.begin(now)
    assert n.resolved(now, address, None, "start")
    return n


def test_unresolvable_at_start_retries_with_capped_backoff():
    n = EndpointName("peer.example", 51820, 0.0)
    n.begin(0.0)
    now, delays = 0.0, []
    for _ in range(10):
        delays.append(n.failed(now))
        assert n.due(now, None, NEVER) is None  # not before the backoff is over
        now = n.next_deadline(None)
        assert n.due(now, None, NEVER) == "retry"
        n.begin(now)
        assert n.next_deadline(None) is None  # nothing while a lookup is in flight
    assert delays[:4] == [BACKOFF_MIN, 2 * BACKOFF_MIN, 4 * BACKOFF_MIN, 8 * BACKOFF_MIN]
    assert max(delays) == BACKOFF_MAX == delays[-1]
    assert n.resolved(now, A, None, "retry")  # a first answer becomes the endpoint
    assert n.failures == 0 and n.next_deadline(None) > now


def test_backoff_is_capped_by_a_short_interval():
    n = EndpointName("peer.example", 51820, 0.0, interval=2.0)
    n.begin(0.0)
    assert [n.failed(0.0) for _ in range(4)] == [1.0, 2.0, 2.0, 2.0]


def test_periodic_lookup_applies_only_a_changed_answer():
    n = started()
    now = REFRESH_INTERVAL
    assert n.next_deadline(now - 1) == now  # handshakes kept fresh: the periodic one is next
    assert n.due(now - 1, now - 1, now - 1) is None
    assert n.due(now, now - 1, now - 1) == "periodic"
    n.begin(now)
    roamed = ("198.51.100.7", 40000)  # the peer roamed; DNS still says A: keep the roam
    assert not n.resolved(now, A, roamed, "periodic")
    now += REFRESH_INTERVAL
    assert n.due(now, now - 1, now - 1) == "periodic"
    n.begin(now)
    assert n.resolved(now, B, roamed, "periodic")  # DNS moved: follow it
    assert n.address == B


def test_stale_handshake_while_trying_triggers_a_lookup():
    n = started()
    latest = 10.0  # the last handshake
    now = n.next_deadline(latest)
    assert now == latest + STALE_AFTER
    assert n.due(now, latest, NEVER) is None  # stale, but not trying: no lookup
    assert n.next_deadline(latest) == now + STALE_RETRY  # looked at again later, not spun
    now += STALE_RETRY
    assert n.due(now, latest, now - 1) == "stale"  # an initiation just went out
    n.begin(now)
    assert not n.resolved(now, A, A, "stale")  # same as in use: nothing to change
    assert n.due(now + 1, latest, now) is None  # at most every STALE_RETRY
    now += STALE_RETRY
    assert n.due(now, latest, now - 1) == "stale"
    n.begin(now)
    assert n.resolved(now, A, ("192.0.2.9", 51820), "stale")  # in use differs: back to DNS


def test_never_handshaked_counts_as_stale():
    n = started()
    now = STALE_RETRY
    assert n.next_deadline(None) == STALE_RETRY
    assert n.due(now, None, 1.0) == "stale"


def test_recent_handshake_is_not_stale():
    n = started()
    now = STALE_RETRY * 2
    assert n.due(now, now - 5, now - 5) is None
    assert n.next_deadline(now - 5) == now - 5 + STALE_AFTER


def test_failed_lookup_of_a_known_name_keeps_retrying_then_recovers():
    n = started()
    n.begin(REFRESH_INTERVAL)
    assert n.failed(REFRESH_INTERVAL) == BACKOFF_MIN
    now = n.next_deadline(None)
    assert n.due(now, None, NEVER) == "retry"
    n.begin(now)
    assert not n.resolved(now, A, A, "retry")
    assert n.show() == {"endpoint_name": "peer.example:51820", "resolve_failures": 0}


def test_misuse_raises():
    n = started()
    n.begin(1.0)
    with pytest.raises(ValueError):
        n.begin(2.0)
    with pytest.raises(ValueError):
        EndpointName("x", 1, 0.0, interval=0)


def test_endpoint_moved_resends_the_initiation_in_flight_at_once():
    """A peer without an endpoint (its name did not resolve) gets one: the initiation that
    went nowhere is sent again now, not after REKEY_TIMEOUT (Interface.endpoint_moved)."""
    import random

    from tunneld.proto.wg import Interface, SendDatagram, generate_private_key, public_key

    rng = random.Random(7).randbytes
    iface = Interface(generate_private_key(rng), rng=rng)
    peer = iface.add_peer(public_key(generate_private_key(rng)), None, None, None, 0.0)
    iface.start_handshake(peer, 0.0)
    assert not [a for a in iface.take_actions(0.0, 1e9) if isinstance(a, SendDatagram)]
    iface.update_peer(peer.public_key, 1.0, endpoint=A)
    iface.start_handshake(peer, 1.0)  # a plain request is held back by REKEY_TIMEOUT
    assert not [a for a in iface.take_actions(1.0, 1e9) if isinstance(a, SendDatagram)]
    iface.endpoint_moved(peer, 1.0)
    sent = [a for a in iface.take_actions(1.0, 1e9) if isinstance(a, SendDatagram)]
    assert [(len(a.data), a.endpoint) for a in sent] == [(148, A)]
