"""One `call_at` per owner for its earliest deadline, re-armed only when that changes.

Cores expose `next_deadline() -> float | None` in the loop.time() domain; the owner
calls `arm(core.next_deadline())` after touching the core. When the timer fires,
the callback gets `now = max(scheduled, loop.time())` and must accept an early call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class DeadlineTimer:
    def __init__(self, loop: asyncio.AbstractEventLoop, on_deadline: Callable[[float], None]):
        self._loop = loop
        self._on_deadline = on_deadline
        self._handle: asyncio.TimerHandle | None = None
        self._when: float | None = None

    def arm(self, when: float | None) -> None:
        if when is None or when == self._when:
            return
        if self._when is not None and self._when <= when and self._handle is not None:
            return  # an earlier wake-up is already set; it re-arms after firing
        self.cancel()
        self._when = when
        self._handle = self._loop.call_at(when, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._when = None

    def _fire(self) -> None:
        scheduled = self._when if self._when is not None else self._loop.time()
        self._handle = self._when = None
        self._on_deadline(max(scheduled, self._loop.time()))
