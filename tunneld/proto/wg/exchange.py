"""Handshake message handling for `Interface`: initiation, response, cookie reply.

Spec: WireGuard whitepaper sections 5.4.2 - 5.4.4 and 5.4.7 (messages, mac1/mac2,
cookie reply), 5.3 (under load), 6.1 (initiation rate); wireguard.com/protocol.

Theory of operation. Every handshake datagram (type 1 or 2, right size) counts
toward the load estimate, then must carry a valid mac1 (keyed by our static key).
Under load (more than `under_load_threshold` handshake messages in a second, or
`force_under_load`) it also needs a valid mac2, else it gets a cookie reply and
is dropped (COOKIE_REQUIRED), and its source must have tokens left (RATE_LIMITED).
An initiation from a known peer with a newer TAI64N replaces any handshake of
ours with that peer and is answered at once; the responder's new session waits
in `next` until confirmed. A response must match our in-flight initiation by
receiver index; it is tried on a copy of the state so a forgery cannot spoil it.
A cookie reply is matched by receiver index to our last mac1 for that peer.

`HandshakeExchange` is a mixin: `Interface` (interface.py) provides the tables,
keys, counters and the `_emit`/`_send_control`/`_retire`/... helpers it uses.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from . import timers
from .actions import KeypairInstalled, SendDatagram
from .constants import (
    HANDSHAKE_INITIATION_RATE,
    MESSAGE_HANDSHAKE_COOKIE,
    MESSAGE_HANDSHAKE_INITIATION,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
    UNDER_LOAD_AFTER_TIME,
)
from .cookie import CookieChecker, source_bytes
from .drops import WgDrop
from .handshake import (
    consume_initiation_static,
    consume_initiation_timestamp,
    consume_response,
    create_initiation,
    create_response,
    response_indices,
)
from .keypair import Keypair
from .messages import COOKIE_REPLY, INITIATION_MAC1_OFFSET, MAC1_OFFSETS, RESPONSE_MAC1_OFFSET
from .noise import NoiseError
from .ratelimit import TokenBucket
from .tai64n import tai64n

if TYPE_CHECKING:
    from .actions import Action
    from .peer import Peer

_SENDER_INDEX = struct.Struct("<I")


class HandshakeExchange:
    """Mixin: the handshake half of `Interface`."""

    private_key: bytes
    public_key: bytes
    has_private_key: bool
    force_under_load: bool
    under_load_threshold: float
    rx_dropped: list[int]
    tx_dropped: list[int]
    _rng: Callable[[int], bytes]
    _peers: dict[bytes, Peer]
    _handshakes: dict[int, Peer]
    _keypairs: dict[int, Keypair]
    _checker: CookieChecker
    _limiter: TokenBucket
    _load_window_start: float
    _load_count: int
    _under_load_until: float

    if TYPE_CHECKING:

        def _emit(self, action: Action, now: float) -> None: ...
        def _send_control(self, peer: Peer, data: bytes, now: float) -> None: ...
        def _set_endpoint(self, peer: Peer, src: Hashable, now: float) -> None: ...
        def _send_staged(self, peer: Peer, now: float, keepalive_if_empty: bool) -> None: ...
        def _retire(self, keypairs: list[Keypair]) -> None: ...
        def _abandon_handshake(self, peer: Peer) -> None: ...
        def _new_index(self) -> int: ...

    def under_load(self, now: float) -> bool:
        """True while handshakes need a valid mac2 (whitepaper 5.3)."""
        return self.force_under_load or now < self._under_load_until

    def _note_handshake(self, now: float) -> None:
        if now - self._load_window_start >= 1.0:
            self._load_window_start, self._load_count = now, 0
        self._load_count += 1
        if self._load_count > self.under_load_threshold:
            self._under_load_until = now + UNDER_LOAD_AFTER_TIME

    def _receive_handshake(self, kind: int, msg: bytes, src: Hashable, now: float) -> None:
        if kind == MESSAGE_HANDSHAKE_COOKIE:
            self._on_cookie_reply(msg, now)
            return
        if not self.has_private_key:  # wireguard-go: no static identity, no handshakes
            self.rx_dropped[WgDrop.HANDSHAKE_FAILED] += 1
            return
        self._note_handshake(now)
        mac1_offset = MAC1_OFFSETS[kind]
        if not self._checker.check_mac1(msg, mac1_offset):
            self.rx_dropped[WgDrop.BAD_MAC1] += 1
            return
        if self.under_load(now):
            source = source_bytes(src)
            if not self._checker.check_mac2(msg, mac1_offset, source, now):
                sender = _SENDER_INDEX.unpack_from(msg, 4)[0]
                reply = self._checker.create_reply(msg, mac1_offset, sender, source, now)
                self._emit(SendDatagram(reply, src), now)
                self.rx_dropped[WgDrop.COOKIE_REQUIRED] += 1
                return
            if not self._limiter.allow(_rate_key(src), now):
                self.rx_dropped[WgDrop.RATE_LIMITED] += 1
                return
        if kind == MESSAGE_HANDSHAKE_INITIATION:
            self._on_initiation(msg, src, now)
        else:
            self._on_response(msg, src, now)

    def _on_initiation(self, msg: bytes, src: Hashable, now: float) -> None:
        drops = self.rx_dropped
        try:
            hs, static, sender = consume_initiation_static(self.private_key, self.public_key, msg)
        except NoiseError:
            drops[WgDrop.HANDSHAKE_FAILED] += 1
            return
        peer = self._peers.get(static)
        if peer is None:
            drops[WgDrop.UNKNOWN_PEER] += 1
            return
        try:
            timestamp = consume_initiation_timestamp(hs, msg)
        except NoiseError:
            drops[WgDrop.HANDSHAKE_FAILED] += 1
            return
        if timestamp <= peer.last_timestamp:
            drops[WgDrop.STALE_TIMESTAMP] += 1
            return
        if now - peer.last_initiation_consumed < HANDSHAKE_INITIATION_RATE:
            drops[WgDrop.RATE_LIMITED] += 1
            return
        peer.last_timestamp, peer.last_initiation_consumed = timestamp, now
        self._respond(peer, hs, sender, src, now)

    def _respond(self, peer: Peer, hs: Any, sender: int, src: Hashable, now: float) -> None:
        index = self._new_index()
        try:
            msg, send_key, receive_key = create_response(
                hs, self._rng(32), peer.preshared_key, index, sender
            )
        except NoiseError:
            self.rx_dropped[WgDrop.HANDSHAKE_FAILED] += 1
            return
        self._abandon_handshake(peer)  # a consumed initiation replaces ours
        peer.cookie.add_macs(msg, RESPONSE_MAC1_OFFSET, now)
        kp = Keypair(send_key, receive_key, index, sender, now, False, peer)
        self._keypairs[index] = kp
        self._retire(peer.keypairs.install_responder(kp))
        peer.last_sent_handshake = now
        if peer.endpoint != src:
            self._set_endpoint(peer, src, now)
        timers.any_authenticated_received(peer)
        timers.traversal(peer, now)
        timers.session_derived(peer, now)
        self._emit(KeypairInstalled(peer.public_key, False), now)
        self._send_control(peer, bytes(msg), now)

    def _on_response(self, msg: bytes, src: Hashable, now: float) -> None:
        sender, receiver = response_indices(msg)
        peer = self._handshakes.get(receiver)
        if peer is None or peer.handshake is None:
            self.rx_dropped[WgDrop.UNKNOWN_RECEIVER] += 1
            return
        trial = peer.handshake.copy()  # a forged response must not spoil the real state
        trial.psk = peer.preshared_key
        try:
            send_key, receive_key = consume_response(trial, msg)
        except NoiseError:
            self.rx_dropped[WgDrop.HANDSHAKE_FAILED] += 1
            return
        del self._handshakes[receiver]
        peer.handshake = peer.handshake_index = None
        kp = Keypair(send_key, receive_key, receiver, sender, now, True, peer)
        self._keypairs[receiver] = kp
        self._retire(peer.keypairs.install_initiator(kp))
        peer.sent_last_minute_handshake = False
        if peer.endpoint != src:
            self._set_endpoint(peer, src, now)
        timers.any_authenticated_received(peer)
        timers.traversal(peer, now)
        timers.handshake_complete(peer, now)
        timers.session_derived(peer, now)
        self._emit(KeypairInstalled(peer.public_key, True), now)
        self._send_staged(peer, now, keepalive_if_empty=True)  # confirms the session

    def _on_cookie_reply(self, msg: bytes, now: float) -> None:
        _, receiver, nonce, sealed = COOKIE_REPLY.unpack(msg)
        peer = self._handshakes.get(receiver)
        if peer is None:
            kp = self._keypairs.get(receiver)
            peer = kp.peer if kp is not None else None
        if peer is None:
            self.rx_dropped[WgDrop.UNKNOWN_RECEIVER] += 1
            return
        if not peer.cookie.consume_reply(nonce, sealed, now):
            self.rx_dropped[WgDrop.BAD_COOKIE] += 1

    def _send_initiation(self, peer: Peer, now: float, wall: float, retry: bool) -> None:
        peer.want_initiation = False
        if not self.has_private_key:
            return
        if not retry:
            peer.handshake_attempts = 0
            if now - peer.last_sent_handshake < REKEY_TIMEOUT:
                return
        self._abandon_handshake(peer)
        peer.last_sent_handshake = now
        peer.jitter = int.from_bytes(self._rng(2), "little") % 334 / 1000.0
        assert peer.jitter <= REKEY_TIMEOUT_JITTER_MAX
        index = self._new_index()
        try:
            hs, msg = create_initiation(
                self.private_key,
                peer.public_key,
                self._rng(32),
                peer.preshared_key,
                index,
                tai64n(wall),
                self.public_key,
            )
        except NoiseError:  # the peer's public key is degenerate
            self.tx_dropped[WgDrop.HANDSHAKE_FAILED] += 1
            return
        peer.cookie.add_macs(msg, INITIATION_MAC1_OFFSET, now)
        peer.handshake, peer.handshake_index = hs, index
        self._handshakes[index] = peer
        timers.handshake_initiated(peer, now)
        timers.traversal(peer, now)
        self._send_control(peer, bytes(msg), now)


def _rate_key(src: Hashable) -> Hashable:
    """Token-bucket key: the IPv4 address, or the IPv6 /64 (as wireguard-go)."""
    if isinstance(src, tuple) and src and isinstance(src[0], str) and ":" in src[0]:
        try:
            return ipaddress.IPv6Address(src[0].split("%")[0]).packed[:8]
        except ValueError:
            return src[0]
    return src[0] if isinstance(src, tuple) and src else src
