"""Anti-replay sliding window for transport counters.

Spec: WireGuard whitepaper section 5.4.6 (the receiver keeps a sliding window of
counters, "RFC 6479 style"); RFC 6479 section 3 for the bitmap-ring technique.
The window is REPLAY_WINDOW_WORDS 64-bit words used as a ring; one word is always
being recycled, so REPLAY_WINDOW_SIZE = (words - 1) * 64 = 8128 counters behind the
newest are tracked exactly (the same width as wireguard-go and the Linux kernel).

Use: ``check(n)`` before decrypting (no state change), ``commit(n)`` only after the
AEAD tag verified, so forged packets cannot move the window (boringtun's order).
Counters >= REJECT_AFTER_MESSAGES are always refused.
"""

from __future__ import annotations

from .constants import REJECT_AFTER_MESSAGES, REPLAY_WINDOW_SIZE, REPLAY_WINDOW_WORDS

_RING_MASK = REPLAY_WINDOW_WORDS - 1
assert REPLAY_WINDOW_WORDS & _RING_MASK == 0, "ring size must be a power of two"


class ReplayWindow:
    """Accepts each counter at most once, and none older than the window."""

    __slots__ = ("last", "_ring")

    def __init__(self) -> None:
        self.last = -1  # highest committed counter; -1: nothing seen yet
        self._ring = [0] * REPLAY_WINDOW_WORDS

    def check(self, counter: int) -> bool:
        """True if `counter` is new and inside the window. Does not record it."""
        if counter >= REJECT_AFTER_MESSAGES:
            return False
        last = self.last
        if counter > last:
            return True
        if last - counter > REPLAY_WINDOW_SIZE:
            return False
        return not (self._ring[(counter >> 6) & _RING_MASK] >> (counter & 63)) & 1

    def commit(self, counter: int) -> None:
        """Record `counter` (which `check` accepted) and slide the window forward."""
        ring = self._ring
        last = self.last
        if counter > last:
            current_word, new_word = last >> 6, counter >> 6
            if new_word != current_word:  # clear the words the window slid over
                for i in range(1, min(new_word - current_word, REPLAY_WINDOW_WORDS) + 1):
                    ring[(current_word + i) & _RING_MASK] = 0
            self.last = counter
        ring[(counter >> 6) & _RING_MASK] |= 1 << (counter & 63)

    def check_and_commit(self, counter: int) -> bool:
        """check() then commit(); for callers with nothing to verify in between."""
        if not self.check(counter):
            return False
        self.commit(counter)
        return True
