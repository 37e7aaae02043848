"""Per-source token bucket for handshake messages.

Spec: WireGuard whitepaper section 5.3 ("Denial of Service Mitigation & Cookies")
asks for rate limiting of handshakes under load; the numbers (20 per second, burst
of 5, keyed by IPv4 address or IPv6 /64) follow wireguard-go's `ratelimiter`.
Sans-IO: the caller passes `now` (monotonic seconds). Entries idle longer than a
full refill are dropped by `expire(now)`, which `allow` runs at most once a second.
Bounded: at most `max_keys` sources are tracked (MAX_SOURCES by default, like the
kernel's ratelimiter `max_entries`); while the table is full a new source is refused
(False, as if its bucket were empty) until the next expiry frees room, so a flood
from many addresses costs a fixed amount of memory and no scan per packet.
"""

from __future__ import annotations

from collections.abc import Hashable

MAX_SOURCES = 16384  # tracked sources per bucket table (about 3 MB at most)


class TokenBucket:
    """Tokens refill at `rate` per second up to `burst`; each allowed event costs one."""

    __slots__ = ("rate", "burst", "max_keys", "refused", "_buckets", "_last_expire")

    def __init__(self, rate: float, burst: int, max_keys: int = MAX_SOURCES) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate must be > 0, burst >= 1 and max_keys >= 1")
        self.rate, self.burst, self.max_keys = rate, float(burst), max_keys
        self.refused = 0  # new sources refused because the table was full
        self._buckets: dict[Hashable, list[float]] = {}  # key -> [tokens, stamp]
        self._last_expire = float("-inf")

    def allow(self, key: Hashable, now: float) -> bool:
        """Take one token for `key`; False when its bucket is empty."""
        if now - self._last_expire >= 1.0:
            self.expire(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self.refused += 1
                return False
            self._buckets[key] = [self.burst - 1.0, now]
            return True
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def expire(self, now: float) -> None:
        """Forget sources whose bucket has refilled completely."""
        self._last_expire = now
        full = self.burst / self.rate
        stale = [k for k, (_, stamp) in self._buckets.items() if now - stamp >= full]
        for key in stale:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)
