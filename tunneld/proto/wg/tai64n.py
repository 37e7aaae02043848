"""TAI64N timestamps for handshake initiations.

Spec: WireGuard whitepaper section 5.4.2 (msg.timestamp := TAI64N()); the format is
D. J. Bernstein's TAI64N (cr.yp.to/libtai/tai64.html): 8 bytes big-endian
2^62 + 10 + unix seconds (the 10 s TAI-UTC offset of 1970, as wireguard-go and the
Linux kernel write it), then 4 bytes big-endian nanoseconds.

The nanoseconds are rounded down to a multiple of 2^24 (about 16.8 ms), as
wireguard-go does ("whitening"), so the timestamp does not leak a fine clock.
Comparison for replay is plain byte order, which is numeric order for this layout.
"""

from __future__ import annotations

import struct

TAI64_BASE = (1 << 62) + 10
WHITENER_MASK = (1 << 24) - 1
_TAI64N = struct.Struct(">QI")


def tai64n(wall: float) -> bytes:
    """The 12-byte TAI64N of `wall` (Unix seconds, float), nanoseconds whitened."""
    seconds = int(wall // 1)
    nanoseconds = int((wall - seconds) * 1e9)
    nanoseconds = min(nanoseconds, 999_999_999) & ~WHITENER_MASK
    return _TAI64N.pack(TAI64_BASE + seconds, nanoseconds)


def tai64n_after(a: bytes, b: bytes) -> bool:
    """True if timestamp `a` is strictly later than `b`."""
    return a > b
