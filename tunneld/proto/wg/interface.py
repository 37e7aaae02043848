"""The WireGuard interface core: peers, index table, data path, handshakes, timers.

Spec: WireGuard whitepaper sections 5.4 (messages), 5.3 (cookies under load),
6 (timers); wireguard.com/protocol. Sans-IO: no sockets, no clocks; `now` is
monotonic seconds (CLOCK_BOOTTIME in the runtime), `wall` Unix seconds (only for
TAI64N and `show`), `rng(n)` returns n random bytes.

Theory of operation. `Interface` owns the static key, the peers (by public key),
one index table per kind (in-flight handshakes, keypairs; random 32-bit indices),
a `CookieChecker` and a per-source `TokenBucket`. The link calls:

  encrypt(peer, buf, offset, inner_len, now) -> int
      The inner packet is at buf[offset+16 : offset+16+inner_len] (16 bytes of
      headroom). It is zero-padded to a multiple of 16 (capped at `mtu`) and
      sealed in place; the header goes to buf[offset:offset+16]. Returns the
      datagram length (buf[offset:offset+n], send to `peer.endpoint`), or 0 when
      nothing is to be sent now: no session (the packet was copied into the
      peer's staging queue and a handshake requested) or no endpoint (counted).
      `buf` needs room for padding and the tag: len >= offset + 16 + pad16(inner_len) + 16.
      Pass a memoryview (a bytearray is wrapped, costing one view).

  receive(data, src, now, out) -> int
      One UDP payload from `src` (the link's address tuple). Transport data is
      replay-checked, decrypted into `out` (len(out) >= len(data) - 32; may be
      data[16:] to decrypt in place), the replay window committed, timers and the
      roaming endpoint updated. Returns the inner IP packet length (>= 1: write
      out[:n] to the tun, `iface.rx_peer` is the sender), 0 for a keepalive, or
      RX_NONE (-1): nothing for the tun (handshake messages, or a drop counted in
      `rx_dropped[WgDrop.X]`). Handshake messages queue actions.

  padded_len(inner_len) -> int
      The plaintext length after padding: inner_len rounded up to 16, capped at
      max(mtu, inner_len). A sealed datagram is 32 + padded_len(inner_len) bytes.

  seal_run(peer, buf, start, stride, count, inner_len, last_inner_len, now) -> int
      `count` inner packets for one peer, packet i at buf[d+16 : d+16+len_i] with
      d = start + i*stride, stride == 32 + padded_len(inner_len) (ValueError
      otherwise), len_i = inner_len but last_inner_len (<= inner_len) for the
      last. Sealed in place as count encrypt() calls would (counters reserved as
      a block; the same bytes on the wire), bookkeeping once per run. Returns the
      total: buf[start : start+total] is one UDP GSO send, segment size `stride`
      (the last datagram may be shorter), to `peer.endpoint`; 0 as encrypt().

  receive_run(buf, start, stride, count, last_len, src, now) -> int
      One GRO batch from `src`: datagram i at buf[d : d+len_i], d = start +
      i*stride, len_i = stride but last_len for the last. Handled as `count`
      receive() calls would be (same drops, replay, timers, roaming), with runs of
      one keypair opened in one native call and decrypted in place. Returns k:
      inner packet j is buf[rx_offsets[j] : rx_offsets[j] + rx_lengths[j]] from
      rx_peers[j], for j < k (those lists belong to the core and are overwritten
      by the next call; they grow only for a batch larger than any before).

  actions_pending (bool) / take_actions(now, wall) -> list[Action]
      After a batch, if `actions_pending`, collect what to send (handshake
      messages, staged packets, keepalives) and events. Requested initiations are
      built here, since they need `wall`.
  next_deadline() -> float | None;  on_deadline(now, wall) -> list[Action]
      One timer for all peers (aioquic style); an early call returns []. The
      peers' deadlines sit in a lazy min-heap (timer_heap.py): next_deadline is
      O(1) and on_deadline visits only the peers that are due.

The data paths live in mixins: transport.py (one packet), batch.py (runs);
handshakes in exchange.py.

`allowed_source(peer, inner_packet) -> bool`, given at construction, checks a
decrypted packet's inner source (cryptokey routing); False counts NOT_ALLOWED_SOURCE.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from . import timers
from .actions import Action, EndpointChanged, HandshakeGaveUp, KeysZeroed, SendDatagram
from .batch import BatchPath
from .constants import (
    HANDSHAKES_BURSTABLE_PER_SOURCE,
    HANDSHAKES_PER_SECOND_PER_SOURCE,
    KEY_LEN,
    REKEY_AFTER_TIME,
    REKEY_TIMEOUT,
    UNDER_LOAD_HANDSHAKES_PER_SECOND,
)
from .cookie import CookieChecker
from .drops import WgDrop
from .exchange import HandshakeExchange
from .keypair import Keypair
from .keys import public_key as derive_public_key
from .peer import Peer
from .ratelimit import TokenBucket
from .timer_heap import TimerHeap, rearm
from .transport import RX_NONE, AllowedSource, TransportPath, inner_packet_length

__all__ = ["RX_NONE", "AllowedSource", "Interface", "inner_packet_length"]

_KEEP: Any = object()


class Interface(HandshakeExchange, TransportPath, BatchPath):
    """One WireGuard interface: see the module docstring for the calling contract."""

    def __init__(
        self,
        private_key: bytes,
        *,
        rng: Callable[[int], bytes],
        allowed_source: AllowedSource | None = None,
        mtu: int = 1420,
        under_load_threshold: float = UNDER_LOAD_HANDSHAKES_PER_SECOND,
        rx_dropped: list[int] | None = None,
        tx_dropped: list[int] | None = None,
        rekey_after_time: float = REKEY_AFTER_TIME,
    ) -> None:
        """`rekey_after_time` is the protocol's REKEY_AFTER_TIME; only interop tests shorten it."""
        if len(private_key) != KEY_LEN:
            raise ValueError("a private key is 32 bytes")
        self.private_key = private_key
        self.public_key = derive_public_key(private_key)
        self.has_private_key = True  # False after set_private_key(None): no handshakes
        self.allowed_source = allowed_source
        self.mtu = mtu
        self.under_load_threshold = under_load_threshold  # handshake messages per second
        self.rekey_after_time = rekey_after_time
        self.force_under_load = False
        self.rx_dropped = rx_dropped if rx_dropped is not None else [0] * len(WgDrop)
        self.tx_dropped = tx_dropped if tx_dropped is not None else [0] * len(WgDrop)
        self.rx_peer: Peer | None = None  # sender of the last packet receive() returned
        self._rng = rng
        self._peers: dict[bytes, Peer] = {}
        self._handshakes: dict[int, Peer] = {}  # our in-flight initiations by sender index
        self._keypairs: dict[int, Keypair] = {}  # sessions by our (receiver) index
        self._checker = CookieChecker(self.public_key, rng)
        self._limiter = TokenBucket(
            HANDSHAKES_PER_SECOND_PER_SOURCE, HANDSHAKES_BURSTABLE_PER_SOURCE
        )
        self._actions: list[Action] = []
        self._pending: dict[Peer, None] = {}  # peers with a requested initiation
        self._dirty_at: float | None = None  # when actions started to pile up
        self._load_window_start = float("-inf")
        self._load_count = 0
        self._under_load_until = float("-inf")
        self._timers = TimerHeap()  # every peer's earliest deadline (timer_heap.py)
        self._init_batch_path()

    # --- control -------------------------------------------------------------------

    @property
    def peers(self) -> list[Peer]:
        return list(self._peers.values())

    def peer(self, public_key: bytes) -> Peer | None:
        return self._peers.get(public_key)

    def add_peer(
        self,
        public_key: bytes,
        preshared_key: bytes | None,
        endpoint: Hashable | None,
        persistent_keepalive: int | None,
        now: float,
    ) -> Peer:
        """Add a peer; ValueError if it exists, is ourselves, or a key is not 32 bytes."""
        if len(public_key) != KEY_LEN or (preshared_key is not None and len(preshared_key) != 32):
            raise ValueError("keys are 32 bytes")
        if public_key in self._peers or public_key == self.public_key:
            raise ValueError("peer already present, or our own public key")
        peer = Peer(public_key, preshared_key, endpoint, persistent_keepalive)
        self._peers[public_key] = peer
        if peer.persistent_keepalive and endpoint is not None:
            peer.t_persistent = now  # first keepalive at once: brings the tunnel up
        self._timers.attach(peer)
        return peer

    def update_peer(
        self,
        public_key: bytes,
        now: float,
        *,
        preshared_key: Any = _KEEP,
        endpoint: Any = _KEEP,
        persistent_keepalive: Any = _KEEP,
    ) -> Peer:
        """Change a peer's settings and keep its sessions. KeyError if unknown."""
        peer = self._peers[public_key]
        if preshared_key is not _KEEP:
            peer.preshared_key = preshared_key  # used from the next handshake on
        if endpoint is not _KEEP:
            peer.endpoint = endpoint
        if persistent_keepalive is not _KEEP:
            peer.persistent_keepalive = persistent_keepalive or 0
            peer.t_persistent = now if peer.persistent_keepalive and peer.endpoint else None
            if peer.t_persistent is not None:
                rearm(peer, now)
        return peer

    def remove_peer(self, public_key: bytes) -> None:
        """Forget a peer and its sessions (no-op if unknown)."""
        peer = self._peers.pop(public_key, None)
        if peer is None:
            return
        self._timers.detach(peer)
        self._abandon_handshake(peer)
        self._retire(peer.keypairs.clear())
        peer.staged.clear()
        self._pending.pop(peer, None)

    def set_private_key(self, private_key: bytes | None) -> None:
        """Change the static key (None: remove it), as wireguard-go's SetPrivateKey: a peer
        holding the new public key is removed; every peer's sessions and handshake in flight
        are dropped, so the next packet starts a handshake under the new key. Without a key
        no handshake is sent or answered (received ones count HANDSHAKE_FAILED)."""
        if private_key is None:
            self.has_private_key = False
        else:
            if len(private_key) != KEY_LEN:
                raise ValueError("a private key is 32 bytes")
            if self.has_private_key and private_key == self.private_key:
                return
            self.private_key, self.has_private_key = private_key, True
            self.public_key = derive_public_key(private_key)
            self._checker = CookieChecker(self.public_key, self._rng)
            self.remove_peer(self.public_key)
        for peer in self._peers.values():
            self._abandon_handshake(peer)
            self._retire(peer.keypairs.clear())

    def start_handshake(self, peer: Peer, now: float) -> None:
        """Request an initiation now (built by the next take_actions)."""
        self._request_initiation(peer, now, retry=False)

    def endpoint_moved(self, peer: Peer, now: float) -> None:
        """The runtime gave `peer` a new endpoint (a DNS name that moved, links/wgdns.py):
        an initiation in flight went to the old address or nowhere, so it is sent again
        now, as its retransmission would be (not held back by REKEY_TIMEOUT)."""
        if peer.handshake is not None:
            self._request_initiation(peer, now, retry=True)

    def _set_endpoint(self, peer: Peer, src: Hashable, now: float) -> None:
        peer.endpoint = src  # roaming: follow the last authenticated packet
        self._emit(EndpointChanged(peer.public_key, src), now)

    # --- initiations, actions, deadlines ----------------------------------------------

    def _request_initiation(self, peer: Peer, now: float, retry: bool) -> None:
        if not retry and now - peer.last_sent_handshake < REKEY_TIMEOUT:
            return  # one initiation per REKEY_TIMEOUT (whitepaper 6.1)
        if peer.public_key not in self._peers:
            return
        if not peer.want_initiation:
            peer.want_initiation, peer.want_retry = True, retry
        self._pending[peer] = None
        if self._dirty_at is None:
            self._dirty_at = now

    def _send_control(self, peer: Peer, data: bytes, now: float) -> None:
        if peer.endpoint is None:
            self.tx_dropped[WgDrop.NO_ENDPOINT] += 1
            return
        peer.tx_bytes += len(data)
        timers.any_authenticated_sent(peer)
        self._emit(SendDatagram(data, peer.endpoint), now)

    def _emit(self, action: Action, now: float) -> None:
        self._actions.append(action)
        if self._dirty_at is None:
            self._dirty_at = now

    @property
    def actions_pending(self) -> bool:
        return bool(self._actions or self._pending)

    def take_actions(self, now: float, wall: float) -> list[Action]:
        """Build requested initiations and return every queued action (clears the queue)."""
        pending, self._pending = self._pending, {}
        for peer in pending:
            if peer.want_initiation and self._peers.get(peer.public_key) is peer:
                self._send_initiation(peer, now, wall, peer.want_retry)
        actions, self._actions = self._actions, []
        self._dirty_at = None
        return actions

    def next_deadline(self) -> float | None:
        """Earliest time on_deadline() has work (monotonic seconds); None: nothing armed.
        O(1) but for stale heap tops, each dropped or re-filed once (timer_heap.py)."""
        earliest = self._timers.earliest()
        dirty = self._dirty_at
        if dirty is not None and (earliest is None or dirty < earliest):
            return dirty
        return earliest

    def on_deadline(self, now: float, wall: float) -> list[Action]:
        """Run every timer due at `now`; returns what to do ([] on a spurious wake-up).
        Visits only the peers with a deadline due (the heap's), not every peer."""
        heap = self._timers
        for peer in heap.pop_due(now):
            todo = timers.expire(peer, now)
            if todo:
                self._run_timers(peer, todo, now)
            t = peer.next_deadline()  # expire re-armed some timers without filing them
            if t is not None and t < peer.scheduled_at:
                heap.push(peer, t)
        return self.take_actions(now, wall)

    def _run_timers(self, peer: Peer, todo: int, now: float) -> None:
        if todo & timers.ZERO_KEYS:
            self._abandon_handshake(peer)
            self._retire(peer.keypairs.clear())
            self.tx_dropped[WgDrop.NO_KEYPAIR] += len(peer.staged)
            peer.staged.clear()
            self._emit(KeysZeroed(peer.public_key), now)
        if todo & timers.GIVE_UP:
            self.tx_dropped[WgDrop.NO_KEYPAIR] += len(peer.staged)
            peer.staged.clear()
            self._abandon_handshake(peer)
            self._emit(HandshakeGaveUp(peer.public_key), now)
        if todo & timers.RETRY_INITIATION:
            self._request_initiation(peer, now, retry=True)
        if todo & timers.NEW_INITIATION:
            self._request_initiation(peer, now, retry=False)
        if todo & timers.SEND_KEEPALIVE:
            self._send_keepalive(peer, now)

    # --- index table ------------------------------------------------------------------

    def _new_index(self) -> int:
        while True:
            index = int.from_bytes(self._rng(4), "little")
            if index not in self._handshakes and index not in self._keypairs:
                return index

    def _abandon_handshake(self, peer: Peer) -> None:
        if peer.handshake_index is not None:
            self._handshakes.pop(peer.handshake_index, None)
        peer.handshake = peer.handshake_index = None

    def _retire(self, keypairs: list[Keypair]) -> None:
        for kp in keypairs:
            if self._keypairs.get(kp.local_index) is kp:
                del self._keypairs[kp.local_index]
            kp.wipe()
