"""MAC1/MAC2 and cookie replies (denial-of-service mitigation).

Spec: WireGuard whitepaper section 5.4.4 (mac1, mac2), 5.4.7 (cookie reply), 5.3
(under load). With Spub_m the public key of the side *receiving* the handshake
message (the one that checks it):

  mac1 := MAC(HASH(LABEL_MAC1 || Spub_m), msg_alpha)          msg_alpha: bytes before mac1
  tau  := MAC(Rm, source address || port)                     Rm random, renewed every 120 s
  mac2 := MAC(tau, msg_beta) if a fresh cookie else 0^16      msg_beta: bytes before mac2
  msg.cookie := XAEAD(HASH(LABEL_COOKIE || Spub_m), nonce, tau, mac1 of the message)

`CookieChecker` is the receiving side (one per interface, keyed by our own static);
`CookieGenerator` the sending side (one per peer, keyed by the peer's static).
XChaCha20-Poly1305 is libsodium's, through PyNaCl's binding (cryptography has none).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable, Hashable
from typing import Any

from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError

from .constants import (
    COOKIE_NONCE_LEN,
    COOKIE_REFRESH_TIME,
    LABEL_COOKIE,
    LABEL_MAC1,
    MAC_LEN,
    MESSAGE_HANDSHAKE_COOKIE,
)
from .messages import COOKIE_REPLY
from .noise import HASH, MAC

_ZERO_MAC = bytes(MAC_LEN)


def source_bytes(endpoint: Hashable) -> bytes:
    """Bytes identifying a UDP source for the cookie: packed address || port (big-endian).

    `endpoint` is a socket-style tuple ``(host, port, ...)``; anything else is
    identified by its repr (only this side ever computes the cookie input).
    """
    if isinstance(endpoint, tuple) and len(endpoint) >= 2:
        host, port = endpoint[0], endpoint[1]
        try:
            return ipaddress.ip_address(host).packed + int(port).to_bytes(2, "big")
        except (ValueError, TypeError, OverflowError):
            pass
    return repr(endpoint).encode()


def xaead(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """XChaCha20-Poly1305 seal (draft-irtf-cfrg-xchacha-03 section 2.3)."""
    return crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce, key)


def xaead_open(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes | None:
    """XChaCha20-Poly1305 open; None when the tag does not verify."""
    try:
        return crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, ad, nonce, key)
    except CryptoError:
        return None


class CookieChecker:
    """Checks mac1/mac2 of handshake messages addressed to us and builds cookie replies."""

    __slots__ = ("mac1_key", "cookie_key", "_rng", "_secret", "_secret_time")

    def __init__(self, own_public: bytes, rng: Callable[[int], bytes]) -> None:
        self.mac1_key = HASH(LABEL_MAC1 + own_public)
        self.cookie_key = HASH(LABEL_COOKIE + own_public)
        self._rng = rng
        self._secret = b""
        self._secret_time = float("-inf")

    def check_mac1(self, msg: Any, mac1_offset: int) -> bool:
        """msg.mac1 == MAC(HASH(LABEL_MAC1 || Spub_m), msg_alpha)."""
        expected = MAC(self.mac1_key, bytes(msg[:mac1_offset]))
        return hmac.compare_digest(expected, bytes(msg[mac1_offset : mac1_offset + MAC_LEN]))

    def _tau(self, source: bytes, now: float) -> bytes:
        if now - self._secret_time >= COOKIE_REFRESH_TIME:
            self._secret = self._rng(32)  # Rm: renewed every two minutes
            self._secret_time = now
        return MAC(self._secret, source)  # tau := MAC(Rm, Aip || Aport)

    def check_mac2(self, msg: Any, mac1_offset: int, source: bytes, now: float) -> bool:
        """msg.mac2 == MAC(tau, msg_beta) for the cookie this source would get now."""
        mac2_offset = mac1_offset + MAC_LEN
        expected = MAC(self._tau(source, now), bytes(msg[:mac2_offset]))
        return hmac.compare_digest(expected, bytes(msg[mac2_offset : mac2_offset + MAC_LEN]))

    def create_reply(
        self, msg: Any, mac1_offset: int, sender_index: int, source: bytes, now: float
    ) -> bytes:
        """The 64-byte cookie reply to handshake message `msg` from `source`."""
        tau = self._tau(source, now)
        nonce = self._rng(COOKIE_NONCE_LEN)
        mac1 = bytes(msg[mac1_offset : mac1_offset + MAC_LEN])
        # msg.cookie := XAEAD(HASH(LABEL_COOKIE || Spub_m), msg.nonce, tau, M)
        sealed = xaead(self.cookie_key, nonce, tau, mac1)
        return COOKIE_REPLY.pack(MESSAGE_HANDSHAKE_COOKIE, sender_index, nonce, sealed)


class CookieGenerator:
    """Adds mac1/mac2 to our handshake messages for one peer; takes its cookie replies."""

    __slots__ = ("mac1_key", "cookie_key", "cookie", "cookie_time", "last_mac1")

    def __init__(self, peer_public: bytes) -> None:
        self.mac1_key = HASH(LABEL_MAC1 + peer_public)
        self.cookie_key = HASH(LABEL_COOKIE + peer_public)
        self.cookie = b""
        self.cookie_time = float("-inf")
        self.last_mac1: bytes | None = None

    def add_macs(self, msg: bytearray, mac1_offset: int, now: float) -> None:
        """Write mac1 and mac2 into `msg` in place and remember mac1 for a cookie reply."""
        mac1 = MAC(self.mac1_key, bytes(msg[:mac1_offset]))
        msg[mac1_offset : mac1_offset + MAC_LEN] = mac1
        self.last_mac1 = mac1
        mac2_offset = mac1_offset + MAC_LEN
        if self.cookie and now - self.cookie_time < COOKIE_REFRESH_TIME:
            mac2 = MAC(self.cookie, bytes(msg[:mac2_offset]))
        else:
            mac2 = _ZERO_MAC
        msg[mac2_offset : mac2_offset + MAC_LEN] = mac2

    def consume_reply(self, nonce: bytes, sealed: bytes, now: float) -> bool:
        """Decrypt a cookie reply against the mac1 we last sent; True if it was ours."""
        if self.last_mac1 is None:
            return False
        tau = xaead_open(self.cookie_key, nonce, sealed, self.last_mac1)
        if tau is None:
            return False
        self.cookie, self.cookie_time = tau, now
        self.last_mac1 = None
        return True
