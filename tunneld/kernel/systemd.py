"""sd_notify(3): READY/RELOADING/STOPPING/STATUS and the watchdog, to $NOTIFY_SOCKET.

Protocol: sd_notify(3) and sd_watchdog_enabled(3). One datagram per state change,
newline-separated `KEY=value` lines, to the AF_UNIX datagram socket named by
NOTIFY_SOCKET (a path, or `@name` for the abstract namespace). Without NOTIFY_SOCKET
every call is a no-op (a foreground run outside systemd).

  ready(status)      READY=1 + STATUS=: start-up done, and after every reload (also a failed one)
  reloading()        RELOADING=1 + MONOTONIC_USEC=<CLOCK_MONOTONIC in µs>, as Type=notify-reload
                     expects (systemd >= 253 checks the timestamp; older ones ignore it)
  stopping()         STOPPING=1
  status(text)       STATUS= alone: what `systemctl status` shows while starting
  extend_start()     EXTEND_TIMEOUT_USEC= every 10 s from the loop until READY=1
  start_watchdog()   WATCHDOG=1 every WATCHDOG_USEC/2 from a timer on the event loop

The watchdog pings come from a `loop.call_later` chain, never from a thread: a loop
that is wedged (a callback that blocks) sends nothing, and systemd's WatchdogSec then
restarts the service. WATCHDOG_PID, when set, must be our pid (else the variables are
meant for another process and the watchdog stays off). A send that fails (systemd
gone) is ignored: notifications are advisory. The socket never blocks: when the receiver's
queue is full (systemd busy, or a reader that does not read), a state message is retried
for up to STATE_SEND_WAIT, a watchdog ping is dropped: the loop stalls no longer than that.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping

WATCHDOG_MIN_INTERVAL = 0.05  # seconds; a tiny WATCHDOG_USEC must not spin the loop
STATE_SEND_WAIT = 1.0  # seconds READY/RELOADING/STOPPING/STATUS wait for room at the receiver
EXTEND_EVERY = 10.0  # seconds between EXTEND_TIMEOUT_USEC messages while starting


def _address(name: str) -> str | bytes:
    """NOTIFY_SOCKET as a sockaddr: '@x' is the abstract name '\\0x'."""
    return b"\0" + name[1:].encode() if name.startswith("@") else name


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when off."""
    usec = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if owner and (not owner.isdigit() or int(owner) != pid):
        return None
    return max(int(usec) / 2e6, WATCHDOG_MIN_INTERVAL)


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._path = env.get("NOTIFY_SOCKET") or None
        self.enabled = self._path is not None
        self.watchdog = watchdog_interval(env, os.getpid()) if self.enabled else None
        self._sock: socket.socket | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._extend: asyncio.TimerHandle | None = None
        if self.enabled:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        if environ is None:  # as sd_notify(3)'s unset_environment: no child speaks for us
            for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                os.environ.pop(key, None)

    def notify(self, state: str, retry_for: float = STATE_SEND_WAIT) -> None:
        """Send one datagram without blocking the loop on a full receiver queue
        (net.unix.max_dgram_qlen datagrams): retry for at most `retry_for` seconds, then drop."""
        if self._sock is None or self._path is None:
            return
        data, address = state.encode(), _address(self._path)
        deadline = time.monotonic() + retry_for
        while True:
            try:
                self._sock.sendto(data, address)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return
                time.sleep(0.01)
            except OSError:
                return

    def ready(self, status: str = "") -> None:
        if self._extend is not None:  # start-up is over
            self._extend.cancel()
            self._extend = None
        self.notify("READY=1" + (f"\nSTATUS={_line(status)}" if status else ""))

    def extend_start(self, loop: asyncio.AbstractEventLoop, every: float = EXTEND_EVERY) -> None:
        """Until `ready()`: EXTEND_TIMEOUT_USEC=3*every from a loop timer every `every` seconds,
        so a start that waits (an etcd registry retrying) outlives TimeoutStartSec while
        the loop is alive, and a wedged start still times out (systemd >= 236)."""
        if self._sock is None or self._extend is not None:
            return

        def extend() -> None:
            self.notify(f"EXTEND_TIMEOUT_USEC={int(3 * every * 1e6)}", retry_for=0.0)
            self._extend = loop.call_later(every, extend)

        extend()

    def reloading(self, status: str = "reloading") -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS={_line(status)}")

    def stopping(self, status: str = "stopping") -> None:
        self.notify(f"STOPPING=1\nSTATUS={_line(status)}")

    def status(self, text: str) -> None:
        self.notify(f"STATUS={_line(text)}")

    def start_watchdog(self, loop: asyncio.AbstractEventLoop) -> None:
        """Ping now and then every `self.watchdog` seconds from `loop` (no-op when off)."""
        interval = self.watchdog
        if interval is None or self._timer is not None:
            return

        def ping() -> None:
            self.notify("WATCHDOG=1", retry_for=0.0)  # a lost ping: the next one follows
            self._timer = loop.call_later(interval, ping)

        ping()

    def close(self) -> None:
        for timer in (self._timer, self._extend):
            if timer is not None:
                timer.cancel()
        self._timer = self._extend = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _line(text: str) -> str:
    """A STATUS value is one line."""
    return " ".join(text.split())
