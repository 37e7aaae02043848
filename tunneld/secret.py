"""Secret key material (WireGuard private and preshared keys).

A `Secret` holds 32 raw bytes and never shows them: its repr and str are
``(hidden)``, so a dataclass repr, an error message, a log line or
``tunneld check-config`` output cannot leak one (DESIGN.md, "Keys").
Keys are written as standard base64 of exactly 32 bytes, as `wg genkey` does.
"""

from __future__ import annotations

import base64
import binascii
import hmac

KEY_LEN = 32
HIDDEN = "(hidden)"


class Secret:
    """32 bytes of key material whose repr is ``(hidden)``.

    Compared by value in constant time; hashable, so configs holding secrets can
    be compared and put in sets when a reload is diffed.
    """

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        if not isinstance(value, bytes) or len(value) != KEY_LEN:
            raise ValueError(f"a secret is {KEY_LEN} bytes")
        self._value = value

    @property
    def value(self) -> bytes:
        """The raw key bytes (32)."""
        return self._value

    def __repr__(self) -> str:
        return HIDDEN

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return format(HIDDEN, spec)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self) -> tuple[type[Secret], tuple[bytes]]:
        return (Secret, (self._value,))


def decode_key(text: str) -> bytes:
    """Decode a base64 key of exactly 32 bytes.

    Raises ValueError with a reason that never contains the key text.
    """
    text = text.strip()
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ValueError(f"is not valid base64 (expected {KEY_LEN} bytes of base64)") from None
    if len(raw) != KEY_LEN:
        raise ValueError(f"must be {KEY_LEN} bytes (base64 decodes to {len(raw)} bytes)")
    return raw


def encode_key(raw: bytes) -> str:
    """Base64 text of a public key (never call this on a Secret's value for output)."""
    return base64.b64encode(raw).decode("ascii")
