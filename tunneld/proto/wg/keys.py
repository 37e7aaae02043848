"""Static key helpers compatible with `wg genkey`, `wg pubkey` and `wg genpsk`.

Spec: RFC 7748 section 5 (X25519 scalar clamping); wireguard-tools encodes keys
as standard base64 of the 32 raw bytes (44 characters with one '=').
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable

from .constants import KEY_LEN
from .noise import DH_PUBLIC


def generate_private_key(rng: Callable[[int], bytes]) -> bytes:
    """32 random bytes from `rng`, clamped as X25519 wants (what `wg genkey` does)."""
    key = bytearray(rng(KEY_LEN))
    if len(key) != KEY_LEN:
        raise ValueError("rng returned the wrong number of bytes")
    key[0] &= 248
    key[31] = (key[31] & 127) | 64
    return bytes(key)


def generate_preshared_key(rng: Callable[[int], bytes]) -> bytes:
    """32 random bytes (what `wg genpsk` does)."""
    return bytes(rng(KEY_LEN))


def public_key(private: bytes) -> bytes:
    """The X25519 public key of `private` (clamping applied, as `wg pubkey` does)."""
    if len(private) != KEY_LEN:
        raise ValueError("a private key is 32 bytes")
    return DH_PUBLIC(private)


def encode_key(key: bytes) -> str:
    """Base64 text of a 32-byte key."""
    if len(key) != KEY_LEN:
        raise ValueError("a key is 32 bytes")
    return base64.b64encode(key).decode("ascii")


def decode_key(text: str) -> bytes:
    """32 bytes from base64 text; ValueError unless it is exactly a 32-byte key."""
    text = text.strip()
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64") from exc
    if len(raw) != KEY_LEN or len(text) != 44:
        raise ValueError("not a 32-byte key")
    return raw
