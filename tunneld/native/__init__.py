"""Small native helpers for the datapath, with a pure-Python fallback giving identical results.

Seed version: pure Python only (the C extension lands beside it). Everything here is pure
computation on caller buffers; protocol decisions stay in the callers.
"""

from __future__ import annotations

IMPLEMENTATION = "python"


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """RFC 1071 ones'-complement sum of `data` as big-endian 16-bit words (an odd final
    byte is padded with zero), added to `initial` (0..0xffff), folded with end-around
    carry to 16 bits; NOT inverted. The result is 0 only when data and initial are all
    zero (a non-zero sum that is a multiple of 0xffff folds to 0xffff)."""
    n = len(data)
    if n & 1:
        data = bytes(data) + b"\0"
    total = (int.from_bytes(data, "big") if n else 0) + initial
    if not total:
        return 0
    s = total % 0xFFFF
    return s or 0xFFFF
