"""The event loop: uvloop when importable (several times faster per callback), else asyncio."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("tunneld")


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        log.info("uvloop not installed; using the asyncio event loop")
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
