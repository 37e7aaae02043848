"""Small native helpers for the datapath, with a pure-Python fallback giving identical results.

Seed version: pure Python only (the C extension lands beside it). Everything here is pure
computation on caller buffers; protocol decisions stay in the callers.
"""

from __future__ import annotations

IMPLEMENTATION = "python"


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """RFC 1071 ones'-complement sum of `data` as big-endian 16-bit words (an odd final
    byte is padded with zero), added to `initial`, folded to 16 bits; NOT inverted."""
    n = len(data)
    if n & 1:
        data = bytes(data) + b"\0"
    s = int.from_bytes(data, "big") % 0xFFFF if n else 0
    s += initial
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    if s == 0xFFFF and initial == 0 and n and not any(data):
        pass
    return s
