"""When to (re-)resolve a peer endpoint given as a DNS name: sans-IO decisions.

Reference: wireguard-tools' contrib/reresolve-dns/reresolve-dns.sh, run every 30 s by
a systemd timer, sets a peer's endpoint from its name again whenever the peer's latest
handshake is older than 135 s (REKEY_AFTER_TIME + REKEY_ATTEMPT_TIME/6, the time after
which a live session must have rekeyed). The whitepaper (section 6) has no DNS: a
name is the operator's, resolved outside the protocol.

Theory of operation: one `EndpointName` per peer whose configured endpoint is a name.
The runtime asks `next_deadline(latest_handshake_at)` for when to look again (monotonic
seconds, the link's `now` domain) and, when that time comes, `due(now, ...)` for the
reason to resolve now, or None (a deadline may be early: a spurious wake-up returns
None). It then calls `begin(now)`, resolves off the loop, and reports `resolved(...)`
or `failed(now)`. Reasons:

- "retry": no answer yet (the name did not resolve at start, or since): retried with
  exponential backoff from BACKOFF_MIN to min(BACKOFF_MAX, interval); the peer has no
  endpoint until then, which is not an error.
- "periodic": every `interval` seconds (default REFRESH_INTERVAL), as a name may move
  while the tunnel is idle. Its answer is applied only if DNS changed (an answer
  different from the previous one), so an endpoint learned by roaming is kept.
- "stale": we sent an initiation within the last STALE_AFTER seconds ("trying") and
  the latest handshake is older than STALE_AFTER (or there was none); looked at every
  STALE_RETRY seconds at most, like the script's timer. Its answer is applied whenever
  it differs from the endpoint in use (the peer does not answer there).
"""

from __future__ import annotations

from typing import Final

STALE_AFTER: Final = 135.0  # seconds without a handshake while trying (reresolve-dns.sh)
STALE_RETRY: Final = 30.0  # seconds between stale checks (the script's timer period)
REFRESH_INTERVAL: Final = 300.0  # seconds between periodic lookups
BACKOFF_MIN: Final = 1.0  # seconds before the first retry of a name without an answer
BACKOFF_MAX: Final = 60.0  # seconds, the longest retry delay

Address = tuple[object, ...]  # a socket address tuple, as the link uses for endpoints


class EndpointName:
    """Re-resolution state of one name (`host`, `port`); `address` is DNS's last answer
    (None: never answered). Times are monotonic seconds."""

    __slots__ = (
        "host",
        "port",
        "interval",
        "address",
        "attempt_at",
        "checked_at",
        "retry_at",
        "failures",
        "in_flight",
        "resolved_at",
    )

    def __init__(self, host: str, port: int, now: float, interval: float = REFRESH_INTERVAL):
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.host, self.port, self.interval = host, port, interval
        self.address: Address | None = None
        self.attempt_at = now  # the last lookup started (the start-up one: now)
        self.checked_at = now  # the last stale check
        self.retry_at = now  # the next retry while there is no answer
        self.failures = 0  # consecutive failed lookups
        self.in_flight = False
        self.resolved_at: float | None = None  # the last successful lookup

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"

    def next_deadline(self, latest_handshake_at: float | None) -> float | None:
        """When `due` may have a reason; None while a lookup is in flight."""
        if self.in_flight:
            return None
        if self.address is None or self.failures:
            return self.retry_at
        latest = latest_handshake_at if latest_handshake_at is not None else float("-inf")
        stale = max(latest + STALE_AFTER, self.checked_at + STALE_RETRY)
        return min(self.attempt_at + self.interval, stale)

    def due(
        self, now: float, latest_handshake_at: float | None, last_sent_handshake: float
    ) -> str | None:
        """The reason to look the name up now ("retry", "periodic", "stale") or None.
        `last_sent_handshake`: when we last sent an initiation (-inf: never)."""
        if self.in_flight:
            return None
        if self.address is None or self.failures:
            return "retry" if now >= self.retry_at else None
        if now >= self.attempt_at + self.interval:
            return "periodic"
        if now < self.checked_at + STALE_RETRY:
            return None
        self.checked_at = now
        trying = now - last_sent_handshake < STALE_AFTER
        if trying and (latest_handshake_at is None or now - latest_handshake_at >= STALE_AFTER):
            return "stale"
        return None

    def begin(self, now: float) -> None:
        """A lookup starts (one at a time; ValueError if one is in flight)."""
        if self.in_flight:
            raise ValueError("a lookup is already in flight")
        self.in_flight, self.attempt_at, self.checked_at = True, now, now

    def resolved(self, now: float, address: Address, current: Address | None, reason: str) -> bool:
        """A lookup answered `address`; True when the peer's endpoint (`current`) should
        become it: a first answer, a changed answer, or a stale peer not answering at
        `current`."""
        previous, self.address = self.address, address
        self.in_flight, self.failures, self.resolved_at = False, 0, now
        if address == current:
            return False
        return previous is None or previous != address or reason == "stale"

    def failed(self, now: float) -> float:
        """A lookup failed: the delay (seconds) until the next retry, doubling per failure
        from BACKOFF_MIN up to min(BACKOFF_MAX, interval)."""
        self.in_flight = False
        delay = min(BACKOFF_MIN * 2.0**self.failures, BACKOFF_MAX, self.interval)
        self.failures += 1
        self.retry_at = now + delay
        return delay

    def show(self) -> dict[str, object]:
        """The name's part of a peer's `show` entry."""
        return {"endpoint_name": self.name, "resolve_failures": self.failures}
