"""The per-packet transport data path of `Interface`: seal one packet, open one datagram.

Spec: WireGuard whitepaper section 5.4.6 (transport data messages: counter nonce,
zero padding to 16 bytes), 6.2 (rekey and reject limits), 6 (the timer events the
data path stamps); wireguard.com/protocol. The calling contract (encrypt/receive,
buffer layout, return values) is in interface.py's module docstring.

Theory of operation. Outbound, a packet for a peer with a usable current keypair
is padded and sealed in place under the next send counter; otherwise it is copied
into the peer's staging queue and an initiation is requested. `_sealed` does the
bookkeeping that follows sealing (bytes, timers, rekey rules) once per packet or
once per run (batch.py). Inbound, a transport message is replay-checked, opened,
committed (boringtun's order), then `_authenticated` (roaming, timers, key
confirmation) and the IP length and allowed-source checks decide what reaches
the tun. The nonce is packed into the keypair's own 12-byte buffer: no bytes per
packet.

`TransportPath` is a mixin: `Interface` provides the tables, counters and the
`_request_initiation`/`_emit`/`_set_endpoint`/`_retire` helpers it uses.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag

from . import timers
from .actions import SendDatagram
from .constants import (
    MAX_STAGED_PACKETS,
    MESSAGE_TRANSPORT,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_ON_RECEIVE_AGE,
)
from .drops import WgDrop
from .keypair import Keypair
from .messages import TRANSPORT_HEADER, classify, is_known_type
from .peer import Peer
from .timer_heap import rearm

if TYPE_CHECKING:
    from .actions import Action

RX_NONE = -1  # receive(): nothing for the tun
_PACK_COUNTER = struct.Struct("<Q").pack_into  # at offset 4 of a keypair's 12-byte nonce
_ZEROS = memoryview(bytes(16))

AllowedSource = Callable[[Peer, memoryview], bool]


def inner_packet_length(out: memoryview, n: int) -> int:
    """Length of the IPv4/IPv6 packet at out[:n] (padding stripped), -1 if invalid."""
    return inner_length_at(out, 0, n)


def inner_length_at(buf: memoryview, off: int, n: int) -> int:
    """Length of the IPv4/IPv6 packet at buf[off:off+n] (n >= 1), -1 if invalid."""
    version = buf[off] >> 4
    if version == 4 and n >= 20:
        total = (buf[off + 2] << 8) | buf[off + 3]
        return total if 20 <= total <= n else -1
    if version == 6 and n >= 40:
        total = 40 + ((buf[off + 4] << 8) | buf[off + 5])
        return total if total <= n else -1
    return -1


class TransportPath:
    """Mixin: the per-packet data path of `Interface`."""

    mtu: int
    rekey_after_time: float
    rx_dropped: list[int]
    tx_dropped: list[int]
    allowed_source: AllowedSource | None
    rx_peer: Peer | None
    _keypairs: dict[int, Keypair]

    if TYPE_CHECKING:

        def _request_initiation(self, peer: Peer, now: float, retry: bool) -> None: ...
        def _emit(self, action: Action, now: float) -> None: ...
        def _set_endpoint(self, peer: Peer, src: Hashable, now: float) -> None: ...
        def _retire(self, keypairs: list[Keypair]) -> None: ...
        def _receive_handshake(self, kind: int, msg: bytes, src: Hashable, now: float) -> None: ...

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

    def padded_len(self, inner_len: int) -> int:
        """Plaintext length after WireGuard padding (whitepaper 5.4.6): `inner_len` bytes
        rounded up to a multiple of 16, capped at max(mtu, inner_len)."""
        padded = (inner_len + 15) & ~15
        return padded if padded <= self.mtu else max(self.mtu, inner_len)

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
        nonce = kp.send_nonce
        _PACK_COUNTER(nonce, 4, counter)
        kp.send_aead.encrypt_into(  # type: ignore[union-attr]
            nonce, buf[start : start + padded], b"", buf[start : start + padded + 16]
        )
        total = padded + 32
        self._sealed(peer, kp, counter, total, inner_len != 0, now)
        return total

    def _sealed(
        self, peer: Peer, kp: Keypair, last_counter: int, size: int, data: bool, now: float
    ) -> None:
        """After sealing `size` datagram bytes up to counter `last_counter` (data: some
        packet was not a keepalive): byte count, timers, rekey rules; once per packet or run."""
        peer.tx_bytes += size
        peer.t_send_keepalive = None  # timers.any_authenticated_sent
        if peer.persistent_keepalive:  # timers.traversal; later on every packet: no push
            t = peer.t_persistent = now + peer.persistent_keepalive
            if t < peer.scheduled_at:
                rearm(peer, t)
        if data:
            timers.data_sent(peer, now)
        # whitepaper 6.2: rekey after REKEY_AFTER_MESSAGES, or REKEY_AFTER_TIME as initiator
        if last_counter >= REKEY_AFTER_MESSAGES or (
            kp.is_initiator and now - kp.birth >= self.rekey_after_time
        ):
            self._request_initiation(peer, now, retry=False)

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

    def unseal_sent(self, peer: Peer, buf: Any, offset: int, size: int) -> bytes | None:
        """The padded plaintext of a transport datagram sealed for `peer` by this interface,
        at buf[offset:offset+size] with its current keypair: the link quotes the inner packet
        of a send that failed (EMSGSIZE) in an ICMP error. None when the datagram is not one
        of the current keypair's (or does not open). Exception path only: allocates."""
        kp = peer.keypairs.current
        if kp is None or kp.send_aead is None or size < 32 or len(buf) < offset + size:
            return None
        kind, receiver, counter = TRANSPORT_HEADER.unpack_from(buf, offset)
        if receiver != kp.remote_index or counter >= kp.send_counter:
            return None
        nonce = bytearray(12)
        _PACK_COUNTER(nonce, 4, counter)
        try:
            return kp.send_aead.decrypt(bytes(nonce), bytes(buf[offset + 16 : offset + size]), b"")
        except InvalidTag:
            return None

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
        self._receive_other(data, src, now)
        return RX_NONE

    def _receive_other(self, data: memoryview, src: Hashable, now: float) -> None:
        """A datagram that is not a transport message of >= 32 bytes: handshake or drop."""
        kind = classify(data)
        if kind == 0:
            self.rx_dropped[WgDrop.BAD_SIZE if is_known_type(data) else WgDrop.BAD_TYPE] += 1
            return
        self._receive_handshake(kind, bytes(data), src, now)

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
        nonce = kp.receive_nonce
        _PACK_COUNTER(nonce, 4, counter)
        try:
            aead.decrypt_into(nonce, data[16:], b"", out[:n])
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
        self._authenticated(kp, src, now)
        if n == 0:
            return 0  # keepalive
        length = inner_length_at(out, 0, n)  # receive_run (batch.py) applies the same checks
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

    def _authenticated(self, kp: Keypair, src: Hashable, now: float) -> None:
        """A transport message under `kp` verified (and was committed): roaming, timers,
        key confirmation, the receive-side rekey rule. Idempotent for one `now` and `src`,
        so a run of messages of one keypair calls it once."""
        peer = kp.peer
        if peer.endpoint != src:
            self._set_endpoint(peer, src, now)
        peer.t_new_handshake = None  # timers.any_authenticated_received
        if peer.persistent_keepalive:  # timers.traversal; later on every packet: no push
            t = peer.t_persistent = now + peer.persistent_keepalive
            if t < peer.scheduled_at:
                rearm(peer, t)
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
