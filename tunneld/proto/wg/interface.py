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

  actions_pending (bool) / take_actions(now, wall) -> list[Action]
      After a batch, if `actions_pending`, collect what to send (handshake
      messages, staged packets, keepalives) and events. Requested initiations are
      built here, since they need `wall`.
  next_deadline() -> float | None;  on_deadline(now, wall) -> list[Action]
      One timer for all peers (aioquic style); an early call returns [].

`allowed_source(peer, inner_packet) -> bool`, given at construction, checks a
decrypted packet's inner source (cryptokey routing); False counts NOT_ALLOWED_SOURCE.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Hashable
from typing import Any

from cryptography.exceptions import InvalidTag

from . import timers
from .actions import Action, EndpointChanged, HandshakeGaveUp, KeysZeroed, SendDatagram
from .constants import (
    HANDSHAKES_BURSTABLE_PER_SOURCE,
    HANDSHAKES_PER_SECOND_PER_SOURCE,
    KEY_LEN,
    MAX_STAGED_PACKETS,
    MESSAGE_TRANSPORT,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_ON_RECEIVE_AGE,
    REKEY_TIMEOUT,
    UNDER_LOAD_HANDSHAKES_PER_SECOND,
)
from .cookie import CookieChecker
from .drops import WgDrop
from .exchange import HandshakeExchange
from .keypair import Keypair
from .keys import public_key as derive_public_key
from .messages import TRANSPORT_HEADER, classify, is_known_type
from .peer import Peer
from .ratelimit import TokenBucket

RX_NONE = -1  # receive(): nothing for the tun
_NONCE = struct.Struct("<4xQ")
_ZEROS = memoryview(bytes(16))
_KEEP: Any = object()

AllowedSource = Callable[[Peer, memoryview], bool]


def inner_packet_length(out: memoryview, n: int) -> int:
    """Length of the IPv4/IPv6 packet at out[:n] (padding stripped), -1 if invalid."""
    version = out[0] >> 4
    if version == 4 and n >= 20:
        total = (out[2] << 8) | out[3]
        return total if 20 <= total <= n else -1
    if version == 6 and n >= 40:
        total = 40 + ((out[4] << 8) | out[5])
        return total if total <= n else -1
    return -1


class Interface(HandshakeExchange):
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
        return peer

    def remove_peer(self, public_key: bytes) -> None:
        """Forget a peer and its sessions (no-op if unknown)."""
        peer = self._peers.pop(public_key, None)
        if peer is None:
            return
        self._abandon_handshake(peer)
        self._retire(peer.keypairs.clear())
        peer.staged.clear()
        self._pending.pop(peer, None)

    def start_handshake(self, peer: Peer, now: float) -> None:
        """Request an initiation now (built by the next take_actions)."""
        self._request_initiation(peer, now, retry=False)

    # --- outbound data path ----------------------------------------------------------

    def encrypt(self, peer: Peer, buf: Any, offset: int, inner_len: int, now: float) -> int:
        """Seal one inner packet in place; see the module docstring. 0: nothing to send now."""
        kp = peer.keypairs.current
        if (
            kp is None
            or kp.send_counter >= REJECT_AFTER_MESSAGES
            or now - kp.birth >= REJECT_AFTER_TIME
            or kp.send_aead is None
        ):
            self._stage(peer, buf, offset, inner_len, now)
            return 0
        if peer.endpoint is None:
            self.tx_dropped[WgDrop.NO_ENDPOINT] += 1
            return 0
        if type(buf) is not memoryview:
            buf = memoryview(buf)
        return self._seal(peer, kp, buf, offset, inner_len, now)

    def _seal(
        self, peer: Peer, kp: Keypair, buf: memoryview, offset: int, inner_len: int, now: float
    ) -> int:
        padded = (inner_len + 15) & ~15
        if padded > self.mtu:
            padded = max(self.mtu, inner_len)
        start = offset + 16
        if len(buf) < start + padded + 16:
            raise ValueError("buffer too small for padding and tag")
        if padded != inner_len:
            buf[start + inner_len : start + padded] = _ZEROS[: padded - inner_len]
        counter = kp.send_counter
        kp.send_counter = counter + 1
        TRANSPORT_HEADER.pack_into(buf, offset, MESSAGE_TRANSPORT, kp.remote_index, counter)
        kp.send_aead.encrypt_into(  # type: ignore[union-attr]
            _NONCE.pack(counter), buf[start : start + padded], b"", buf[start : start + padded + 16]
        )
        total = padded + 32
        peer.tx_bytes += total
        peer.t_send_keepalive = None  # timers.any_authenticated_sent
        if peer.persistent_keepalive:  # timers.traversal
            peer.t_persistent = now + peer.persistent_keepalive
        if inner_len:
            timers.data_sent(peer, now)
        # whitepaper 6.2: rekey after REKEY_AFTER_MESSAGES, or REKEY_AFTER_TIME as initiator
        if counter >= REKEY_AFTER_MESSAGES or (
            kp.is_initiator and now - kp.birth >= self.rekey_after_time
        ):
            self._request_initiation(peer, now, retry=False)
        return total

    def _stage(self, peer: Peer, buf: Any, offset: int, inner_len: int, now: float) -> None:
        if len(peer.staged) >= MAX_STAGED_PACKETS:
            peer.staged.popleft()
            self.tx_dropped[WgDrop.STAGED_OVERFLOW] += 1
        peer.staged.append(bytes(buf[offset + 16 : offset + 16 + inner_len]))
        self._request_initiation(peer, now, retry=False)

    def _send_staged(self, peer: Peer, now: float, keepalive_if_empty: bool) -> None:
        kp = peer.keypairs.current
        if kp is None or kp.send_aead is None or peer.endpoint is None:
            return
        if not peer.staged and keepalive_if_empty:
            peer.staged.append(b"")
        while peer.staged:
            inner = peer.staged.popleft()
            buf = bytearray(16 + ((len(inner) + 15) & ~15) + 16)
            buf[16 : 16 + len(inner)] = inner
            n = self._seal(peer, kp, memoryview(buf), 0, len(inner), now)
            self._emit(SendDatagram(bytes(buf[:n]), peer.endpoint), now)

    def _send_keepalive(self, peer: Peer, now: float) -> None:
        kp = peer.keypairs.current
        if (
            kp is None
            or kp.send_aead is None
            or now - kp.birth >= REJECT_AFTER_TIME
            or kp.send_counter >= REJECT_AFTER_MESSAGES
        ):
            if not peer.staged:  # an empty packet waits for the handshake it asks for
                peer.staged.append(b"")
            self._request_initiation(peer, now, retry=False)
            return
        if peer.endpoint is None:
            self.tx_dropped[WgDrop.NO_ENDPOINT] += 1
            return
        buf = memoryview(bytearray(32))
        self._seal(peer, kp, buf, 0, 0, now)
        self._emit(SendDatagram(bytes(buf), peer.endpoint), now)

    # --- inbound -------------------------------------------------------------------

    def receive(self, data: Any, src: Hashable, now: float, out: Any) -> int:
        """Handle one datagram; see the module docstring. Never raises on peer input."""
        if type(data) is not memoryview:
            data = memoryview(data)
        if len(data) >= 32:  # fast path: one unpack gives type, receiver and counter
            kind, receiver, counter = TRANSPORT_HEADER.unpack_from(data, 0)
            if kind == MESSAGE_TRANSPORT:
                return self._receive_transport(data, receiver, counter, src, now, out)
        kind = classify(data)
        if kind == 0:
            self.rx_dropped[WgDrop.BAD_SIZE if is_known_type(data) else WgDrop.BAD_TYPE] += 1
            return RX_NONE
        self._receive_handshake(kind, bytes(data), src, now)
        return RX_NONE

    def _receive_transport(
        self, data: memoryview, receiver: int, counter: int, src: Hashable, now: float, out: Any
    ) -> int:
        kp = self._keypairs.get(receiver)
        if kp is None:
            self.rx_dropped[WgDrop.UNKNOWN_RECEIVER] += 1
            return RX_NONE
        aead = kp.receive_aead
        if aead is None or now - kp.birth >= REJECT_AFTER_TIME:
            self.rx_dropped[WgDrop.KEY_EXPIRED] += 1
            return RX_NONE
        replay = kp.replay
        if not replay.check(counter):  # before decrypting (boringtun's order)
            self.rx_dropped[WgDrop.REPLAY] += 1
            return RX_NONE
        if type(out) is not memoryview:
            out = memoryview(out)
        n = len(data) - 32
        try:
            aead.decrypt_into(_NONCE.pack(counter), data[16:], b"", out[:n])
        except InvalidTag:
            self.rx_dropped[WgDrop.DECRYPT_FAILED] += 1
            return RX_NONE
        replay.commit(counter)  # only after the tag verified
        return self._after_decrypt(kp, src, n + 32, now, out, n)

    def _after_decrypt(
        self, kp: Keypair, src: Hashable, size: int, now: float, out: memoryview, n: int
    ) -> int:
        peer = kp.peer
        peer.rx_bytes += size
        if peer.endpoint != src:
            self._set_endpoint(peer, src, now)
        peer.t_new_handshake = None  # timers.any_authenticated_received
        if peer.persistent_keepalive:  # timers.traversal
            peer.t_persistent = now + peer.persistent_keepalive
        slots = peer.keypairs
        if slots.next is kp:  # key confirmation: the initiator used our new session
            self._retire(slots.confirm_next())
            timers.handshake_complete(peer, now)
            self._send_staged(peer, now, keepalive_if_empty=False)
        elif (
            slots.current is kp
            and kp.is_initiator
            and not peer.sent_last_minute_handshake
            and now - kp.birth >= REKEY_ON_RECEIVE_AGE
        ):
            # whitepaper 6.2: REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
            peer.sent_last_minute_handshake = True
            self._request_initiation(peer, now, retry=False)
        if n == 0:
            return 0  # keepalive
        length = inner_packet_length(out, n)
        if length < 0:
            self.rx_dropped[WgDrop.INVALID_PACKET] += 1
            return RX_NONE
        check = self.allowed_source
        if check is not None and not check(peer, out[:length]):
            self.rx_dropped[WgDrop.NOT_ALLOWED_SOURCE] += 1
            return RX_NONE
        timers.data_received(peer, now)
        self.rx_peer = peer
        return length

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
        """Earliest time on_deadline() has work (monotonic seconds); None: nothing armed."""
        earliest = self._dirty_at
        for peer in self._peers.values():
            t = peer.next_deadline()
            if t is not None and (earliest is None or t < earliest):
                earliest = t
        return earliest

    def on_deadline(self, now: float, wall: float) -> list[Action]:
        """Run every timer due at `now`; returns what to do ([] on a spurious wake-up)."""
        for peer in list(self._peers.values()):
            todo = timers.expire(peer, now)
            if todo:
                self._run_timers(peer, todo, now)
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
