"""The daemon's log: one `key=value` line per event, rate-limited per message template.

Line format (logfmt style): ``[ts=...] level=info logger=tunneld.wireguard iface=wg0
event=handshake peer=AbCdEfGh… msg="wg0: peer AbCdEfGh…: handshake complete"``. Values
with spaces, quotes, `=` or control characters are quoted with backslash escapes, so a
line never breaks in two, not even for a traceback (``exc="Traceback ...\\n..."``).
Extra fields come from ``log.info(..., extra={"iface": name, "event": "link_up"})``;
existing calls without extras render as level, logger and msg.

Under systemd (JOURNAL_STREAM names our stderr, systemd.exec(5) "Environment variables
set"), journald stamps every line itself, so we add no timestamp; the line starts with a
``<N>`` syslog priority (sd-daemon(3)), which journald strips and stores as the entry's
priority, so `journalctl -p warning` works. Elsewhere each line starts with an RFC 3339
UTC timestamp.

Rate limit: a token bucket per (logger, level, message template, and the `iface` and
`peer` fields when a line has them: one busy peer does not silence the others), like the
kernel's printk_ratelimit. A template may log `burst` lines at once and `rate` lines per second
after that; the ones over the limit are dropped and counted, and the next line of that
template that passes carries ``suppressed=N``. The hot path never logs (STYLE.md); this
keeps control-plane lines that an attacker can trigger (bad handshakes, bad endpoints)
from flooding the journal.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

BURST = 10  # lines a template may log at once
RATE = 0.5  # lines per second a template may log after its burst
MAX_KEYS = 4096  # templates tracked; the oldest is forgotten beyond this
# syslog priorities of sd-daemon(3): SD_ERR "<3>", SD_WARNING "<4>", SD_INFO "<6>", SD_DEBUG "<7>"
PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6}
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_NEEDS_QUOTES = frozenset(' "=\\')


def quote(value: object) -> str:
    """A logfmt value: bare when it can be, else in double quotes with \\-escapes."""
    text = str(value)
    if text and not any(c in _NEEDS_QUOTES or c < " " or c == "\x7f" for c in text):
        return text
    escaped = (text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
               .replace("\r", "\\r").replace("\t", "\\t"))  # fmt: skip
    escaped = "".join(c if c >= " " and c != "\x7f" else f"\\x{ord(c):02x}" for c in escaped)
    return f'"{escaped}"'


class KeyValueFormatter(logging.Formatter):
    """One line per record: [ts=] level= logger= <extra fields> msg= [suppressed=] [exc=]."""

    def __init__(self, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        if not self.journal:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            parts.append(f"ts={stamp}.{int(record.msecs):03d}Z")
        parts += [f"level={record.levelname.lower()}", f"logger={quote(record.name)}"]
        suppressed = None
        for key, value in vars(record).items():
            if key == "suppressed":
                suppressed = value
            elif key not in _STANDARD and not key.startswith("_"):
                parts.append(f"{key}={quote(value)}")
        parts.append(f"msg={quote(record.getMessage())}")
        if suppressed:
            parts.append(f"suppressed={suppressed}")
        if record.exc_info:
            parts.append(f"exc={quote(self.formatException(record.exc_info))}")
        line = " ".join(parts)
        if self.journal:
            return f"<{PRIORITY.get(record.levelno, 7)}>{line}"
        return line


class RateLimiter:
    """Token buckets by key; `allow(key, now)` -> (passes, lines suppressed since the last
    one that passed). `now` is monotonic seconds, supplied by the caller (no clock here)."""

    def __init__(self, burst: int = BURST, rate: float = RATE, max_keys: int = MAX_KEYS) -> None:
        self.burst, self.rate, self.max_keys = burst, rate, max_keys
        self._buckets: dict[Any, list[float]] = {}  # key -> [tokens, last update, suppressed]

    def allow(self, key: Any, now: float) -> tuple[bool, int]:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                del self._buckets[next(iter(self._buckets))]
            bucket = self._buckets[key] = [float(self.burst), now, 0]
        tokens = min(float(self.burst), bucket[0] + max(0.0, now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            bucket[2] += 1
            return False, 0
        suppressed = int(bucket[2])
        bucket[0], bucket[2] = tokens - 1.0, 0
        return True, suppressed


class RateLimitFilter(logging.Filter):
    """Drops records over their template's limit; the next one that passes gets `suppressed`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 limiter: RateLimiter | None = None) -> None:  # fmt: skip
        super().__init__()
        self.clock = clock
        self.limiter = limiter or RateLimiter()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg), getattr(record, "iface", None),
               getattr(record, "peer", None))  # fmt: skip
        passes, suppressed = self.limiter.allow(key, self.clock())
        if passes and suppressed:
            record.suppressed = suppressed
        return passes


def journal_stream(environ: Mapping[str, str], fd: int) -> bool:
    """True when JOURNAL_STREAM ("DEV:INODE") names `fd`'s file, i.e. journald reads it."""
    value = environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def setup(level: str, stream: TextIO | None = None, environ: Mapping[str, str] | None = None,
          clock: Callable[[], float] = time.monotonic) -> logging.Handler:  # fmt: skip
    """Send every `tunneld*` log line to `stream` (stderr) in this format, at `level`.

    Replaces the root logger's handlers; returns the handler (tests inspect it)."""
    stream = sys.stderr if stream is None else stream
    environ = os.environ if environ is None else environ
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        fd = -1
    handler = logging.StreamHandler(stream)
    handler.setFormatter(KeyValueFormatter(journal=fd >= 0 and journal_stream(environ, fd)))
    handler.addFilter(RateLimitFilter(clock))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # pyroute2 logs every netlink message at debug: never per message, even with log_level debug
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    return handler
