"""Per-peer WireGuard state: identity, handshake in flight, keypairs, timers, staging.

Spec: WireGuard whitepaper sections 5 (protocol) and 6 (timers). The state machine
that acts on this record lives in interface.py (messages) and timers.py (time);
this module holds the data and the read-only views (`show`, `next_deadline`).

Theory of operation. A peer is known by its static public key. At most one
handshake is in flight (`handshake`, reachable through `handshake_index`); a
consumed initiation replaces it (simultaneous initiation then resolves through
the retransmit jitter). Sessions live in `keypairs` (current / previous / next).
Outbound packets that find no usable session are copied into `staged` (at most
MAX_STAGED_PACKETS) and sent right after the next handshake completes.
`endpoint` is the source of the last authenticated packet (roaming).
The `t_*` deadlines are scheduled by the interface's TimerHeap (timer_heap.py):
code that arms a deadline or moves one earlier calls `timer_heap.rearm`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import TYPE_CHECKING

from .cookie import CookieGenerator
from .keypair import KeypairSlots
from .keys import encode_key
from .noise import HandshakeState

if TYPE_CHECKING:
    from .timer_heap import TimerHeap

_NEVER = float("-inf")


class Peer:
    __slots__ = (
        "public_key",
        "preshared_key",
        "endpoint",
        "persistent_keepalive",
        "cookie",
        "keypairs",
        "handshake",
        "handshake_index",
        "last_timestamp",
        "last_initiation_consumed",
        "last_sent_handshake",
        "handshake_attempts",
        "t_retransmit",
        "t_send_keepalive",
        "t_new_handshake",
        "t_zero_keys",
        "t_persistent",
        "need_another_keepalive",
        "sent_last_minute_handshake",
        "jitter",
        "want_initiation",
        "want_retry",
        "staged",
        "rx_bytes",
        "tx_bytes",
        "latest_handshake_at",
        "handshakes",
        "user_data",
        "scheduler",
        "scheduled_at",
        "scheduled_seq",
    )

    def __init__(
        self,
        public_key: bytes,
        preshared_key: bytes | None,
        endpoint: Hashable | None,
        persistent_keepalive: int | None,
    ) -> None:
        self.public_key = public_key
        self.preshared_key = preshared_key
        self.endpoint = endpoint
        self.persistent_keepalive = persistent_keepalive or 0  # seconds, 0 = off
        self.cookie = CookieGenerator(public_key)
        self.keypairs = KeypairSlots()
        self.handshake: HandshakeState | None = None  # our initiation in flight
        self.handshake_index: int | None = None
        self.last_timestamp = b""  # greatest TAI64N consumed from this peer
        self.last_initiation_consumed = _NEVER
        self.last_sent_handshake = _NEVER
        self.handshake_attempts = 0
        # timers.py deadlines (monotonic seconds) or None
        self.t_retransmit: float | None = None
        self.t_send_keepalive: float | None = None
        self.t_new_handshake: float | None = None
        self.t_zero_keys: float | None = None
        self.t_persistent: float | None = None
        self.need_another_keepalive = False
        self.sent_last_minute_handshake = False
        self.jitter = 0.0  # seconds, redrawn for every initiation
        self.want_initiation = False  # an initiation is requested (built by take_actions)
        self.want_retry = False
        self.staged: deque[bytes] = deque()
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.latest_handshake_at: float | None = None  # monotonic seconds
        self.handshakes = 0  # completed handshakes (both roles), for metrics
        self.user_data: object = None  # free for the link (e.g. allowed ips)
        # timer_heap.py bookkeeping: the owner's heap and this peer's live entry there
        self.scheduler: TimerHeap | None = None
        self.scheduled_at = _NEVER  # live entry's deadline; -inf: not in a heap
        self.scheduled_seq = -1  # live entry's sequence number; -1: none

    def next_deadline(self) -> float | None:
        """Earliest armed timer of this peer (monotonic seconds), None if none."""
        earliest = None
        for t in (
            self.t_retransmit,
            self.t_send_keepalive,
            self.t_new_handshake,
            self.t_zero_keys,
            self.t_persistent,
        ):
            if t is not None and (earliest is None or t < earliest):
                earliest = t
        return earliest

    def latest_handshake(self, now: float, wall: float) -> int:
        """Unix seconds of the last completed handshake, 0 if never."""
        if self.latest_handshake_at is None:
            return 0
        return int(wall - (now - self.latest_handshake_at))

    def show(self, now: float, wall: float) -> dict[str, object]:
        """The `show` fields of DESIGN.md (endpoint as the link's tuple, or None)."""
        return {
            "public_key": encode_key(self.public_key),
            "endpoint": self.endpoint,
            "latest_handshake": self.latest_handshake(now, wall),
            "rx_bytes": self.rx_bytes,
            "tx_bytes": self.tx_bytes,
            "handshakes": self.handshakes,
            "persistent_keepalive": self.persistent_keepalive or None,
        }

    def __repr__(self) -> str:
        return f"Peer({encode_key(self.public_key)})"
