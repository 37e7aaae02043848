"""Per-peer protocol timers as deadlines on the peer, driven by injected `now`.

Spec: WireGuard whitepaper section 6 ("Timers & Stateless UX"): 6.2 (rekeying), 6.3
(key zeroing), 6.4 (handshake retransmission), 6.5 (passive keepalive); the event
names follow wireguard-go's `timers.go` (read to understand, not copied).

Theory of operation. Each timer is a float deadline on the `Peer` or None (not
armed). Events on the data path only stamp deadlines (cheap attribute stores):

  event                              effect
  handshake_initiated                retransmit := now + REKEY_TIMEOUT + jitter
  handshake_complete                 retransmit := None; attempts := 0; stamp; count
  session_derived                    zero_keys := now + 3 * REJECT_AFTER_TIME
  data_sent                          new_handshake := now + KEEPALIVE + REKEY_TIMEOUT + jitter
                                     (if not armed: the first unanswered packet counts)
  data_received                      send_keepalive := now + KEEPALIVE_TIMEOUT (if not
                                     armed, else remember to send another one)
  any_authenticated_sent             send_keepalive := None (our packet was the answer)
  any_authenticated_received         new_handshake := None (the peer is alive)
  traversal (any auth. in or out)    persistent := now + persistent_keepalive

`expire(peer, now)` disarms what is due and returns a bit set of what the owner
(interface.py) must do; an early (spurious) call returns 0.

Scheduling (timer_heap.py): an event that arms a timer, or may move one earlier,
calls `rearm(peer, t)` (one compare; a heap push only when `t` is earlier than the
peer's entry). Disarming and moving later need nothing. `expire` only stamps: its
owner files the peer's next deadline again after running the follow-ups.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .constants import (
    KEEPALIVE_TIMEOUT,
    MAX_TIMER_HANDSHAKES,
    REKEY_TIMEOUT,
    ZERO_KEYS_AFTER,
)
from .timer_heap import rearm

if TYPE_CHECKING:
    from .peer import Peer

RETRY_INITIATION = 1  # retransmit the handshake (attempt count kept)
NEW_INITIATION = 2  # start a fresh handshake (sent data, heard nothing)
SEND_KEEPALIVE = 4  # passive or persistent keepalive
GIVE_UP = 8  # REKEY_ATTEMPT_TIME passed without a response
ZERO_KEYS = 16  # erase every key of the peer


def handshake_initiated(peer: Peer, now: float) -> None:
    t = peer.t_retransmit = now + REKEY_TIMEOUT + peer.jitter
    rearm(peer, t)


def handshake_complete(peer: Peer, now: float) -> None:
    peer.t_retransmit = None
    peer.handshake_attempts = 0
    peer.latest_handshake_at = now
    peer.handshakes += 1


def session_derived(peer: Peer, now: float) -> None:
    t = peer.t_zero_keys = now + ZERO_KEYS_AFTER
    rearm(peer, t)


def data_sent(peer: Peer, now: float) -> None:
    if peer.t_new_handshake is None:
        t = peer.t_new_handshake = now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + peer.jitter
        if t < peer.scheduled_at:
            rearm(peer, t)


def data_received(peer: Peer, now: float) -> None:
    if peer.t_send_keepalive is None:
        t = peer.t_send_keepalive = now + KEEPALIVE_TIMEOUT
        if t < peer.scheduled_at:
            rearm(peer, t)
    else:
        peer.need_another_keepalive = True


def any_authenticated_sent(peer: Peer) -> None:
    peer.t_send_keepalive = None


def any_authenticated_received(peer: Peer) -> None:
    peer.t_new_handshake = None


def traversal(peer: Peer, now: float) -> None:
    if peer.persistent_keepalive:
        t = peer.t_persistent = now + peer.persistent_keepalive
        rearm(peer, t)


def expire(peer: Peer, now: float) -> int:
    """Disarm the timers due at `now`; the bit set of follow-ups (0 if nothing was due)."""
    todo = 0
    if peer.t_retransmit is not None and peer.t_retransmit <= now:
        peer.t_retransmit = None
        if peer.handshake_attempts > MAX_TIMER_HANDSHAKES:
            todo |= GIVE_UP
            peer.t_send_keepalive = None
            if peer.t_zero_keys is None:
                peer.t_zero_keys = now + ZERO_KEYS_AFTER
        else:
            peer.handshake_attempts += 1
            todo |= RETRY_INITIATION
    if peer.t_send_keepalive is not None and peer.t_send_keepalive <= now:
        peer.t_send_keepalive = None
        todo |= SEND_KEEPALIVE
        if peer.need_another_keepalive:
            peer.need_another_keepalive = False
            peer.t_send_keepalive = now + KEEPALIVE_TIMEOUT
    if peer.t_new_handshake is not None and peer.t_new_handshake <= now:
        peer.t_new_handshake = None
        todo |= NEW_INITIATION
    if peer.t_persistent is not None and peer.t_persistent <= now:
        peer.t_persistent = None
        if peer.persistent_keepalive:
            todo |= SEND_KEEPALIVE
    if peer.t_zero_keys is not None and peer.t_zero_keys <= now:
        peer.t_zero_keys = None
        todo |= ZERO_KEYS
    return todo
