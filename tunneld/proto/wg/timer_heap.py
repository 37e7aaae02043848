"""The earliest timer deadline over all peers of an interface, kept in a lazy min-heap.

Spec: none of its own; it schedules the per-peer timers of timers.py (whitepaper
section 6) so that `Interface.next_deadline()` is O(1) and `on_deadline()` visits
only the peers that are due (aioquic's one-timer-per-connection, for many peers).

Theory of operation. Entries are `(deadline, seq, peer)`. A peer has at most one
*live* entry: the one whose `seq` equals `peer.scheduled_seq`; every other entry
of that peer is stale and skipped when it reaches the top. The invariant is

    live entry deadline  <=  peer.next_deadline()     (for every peer with a deadline)

so the heap never fires late. Stamps that move a deadline LATER (the common data
path case: persistent keepalive, a re-armed keepalive) touch nothing here: the
live entry becomes an early lower bound, corrected when it reaches the top.
Stamps that ARM a timer or move one EARLIER than `peer.scheduled_at` call
`rearm(peer, t)`, which pushes a new live entry; a steady flow to one peer
therefore costs one float compare per stamp and no heap operation. `earliest()`
corrects stale tops until the top is exact; `pop_due(now)` hands back the peers
whose live entry is due (their owner runs `timers.expire` and pushes again).

A peer outside any heap has `scheduled_at = -inf` (nothing is ever pushed for it);
an attached peer with no live entry has `scheduled_at = +inf`.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .peer import Peer

INF = float("inf")
DETACHED = float("-inf")
_NO_ENTRY = -1
_COMPACT_SLACK = 64  # stale entries tolerated beyond two per live one before a rebuild


class TimerHeap:
    """Min-heap of peer deadlines (monotonic seconds) with lazy deletion."""

    __slots__ = ("_heap", "_seq", "_live")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Peer]] = []
        self._seq = 0
        self._live = 0  # peers with a live entry

    def __len__(self) -> int:
        """Entries held, stale ones included (for tests and the bench)."""
        return len(self._heap)

    @property
    def pushes(self) -> int:
        """Heap insertions so far (pushes and re-filings): what a test of "no heap work
        per packet" counts."""
        return self._seq

    def attach(self, peer: Peer) -> None:
        """Start scheduling `peer`; pushes its current deadline, if any."""
        peer.scheduler, peer.scheduled_at, peer.scheduled_seq = self, INF, _NO_ENTRY
        t = peer.next_deadline()
        if t is not None:
            self.push(peer, t)

    def detach(self, peer: Peer) -> None:
        """Stop scheduling `peer`: its entries go stale, later stamps push nothing."""
        if peer.scheduler is self and peer.scheduled_seq != _NO_ENTRY:
            self._live -= 1
        peer.scheduler, peer.scheduled_at, peer.scheduled_seq = None, DETACHED, _NO_ENTRY

    def push(self, peer: Peer, t: float) -> None:
        """Make (t, peer) the peer's live entry. Callers ensure t < peer.scheduled_at."""
        if peer.scheduled_seq == _NO_ENTRY:
            self._live += 1
        self._seq += 1
        peer.scheduled_at, peer.scheduled_seq = t, self._seq
        heapq.heappush(self._heap, (t, self._seq, peer))
        if len(self._heap) > 2 * self._live + _COMPACT_SLACK:
            self._compact()

    def earliest(self) -> float | None:
        """The earliest armed deadline of any attached peer, exact; None if none is armed."""
        heap = self._heap
        while heap:
            t, seq, peer = heap[0]
            if seq != peer.scheduled_seq:  # superseded, or the peer was detached
                heapq.heappop(heap)
                continue
            actual = peer.next_deadline()
            if actual == t:
                return t
            if actual is None:  # every timer of the peer was disarmed
                heapq.heappop(heap)
                peer.scheduled_at, peer.scheduled_seq = INF, _NO_ENTRY
                self._live -= 1
                continue
            self._seq += 1  # the deadline moved later: re-file the peer
            peer.scheduled_at, peer.scheduled_seq = actual, self._seq
            heapq.heapreplace(heap, (actual, self._seq, peer))
        return None

    def pop_due(self, now: float) -> list[Peer]:
        """Remove and return the peers whose live entry is due at `now` (deadline <= now).

        They leave the heap (`scheduled_at = +inf`): the owner expires their timers and
        pushes each one's next deadline again."""
        heap, due = self._heap, []
        while heap and heap[0][0] <= now:
            _, seq, peer = heapq.heappop(heap)
            if seq == peer.scheduled_seq:
                peer.scheduled_at, peer.scheduled_seq = INF, _NO_ENTRY
                self._live -= 1
                due.append(peer)
        return due

    def _compact(self) -> None:
        self._heap = [e for e in self._heap if e[1] == e[2].scheduled_seq]
        heapq.heapify(self._heap)


def rearm(peer: Peer, t: float) -> None:
    """A deadline of `peer` was just set to `t`: keep the heap invariant (see the module
    docstring). Costs one compare unless `t` is earlier than the peer's live entry."""
    if t < peer.scheduled_at:
        heap = peer.scheduler
        assert heap is not None  # scheduled_at is -inf while detached: never reached
        heap.push(peer, t)
