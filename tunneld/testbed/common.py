"""Shared helpers of the testbed: errors, waiting, running commands, process bookkeeping."""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from tunneld.testbed import Testbed

T = TypeVar("T")
Addrs = str | Sequence[str] | None

IFNAMSIZ = 15  # usable characters in a Linux device name
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{1,7}$")
_PING_RE = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")


class TestbedError(RuntimeError):
    """A testbed command failed; the message carries the command and its stderr."""

    __test__ = False  # not a pytest test class despite the name


def wait_for(
    predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.05, what: str = ""
) -> T:
    """Call `predicate` until it returns something truthy; return that value.

    Raises TimeoutError (naming `what`) after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what or predicate!r}")
        time.sleep(interval)


def _as_list(addrs: Addrs) -> list[str]:
    if addrs is None:
        return []
    return [addrs] if isinstance(addrs, str) else list(addrs)


def _check_ifname(name: str) -> str:
    if not 0 < len(name) <= IFNAMSIZ:
        raise ValueError(f"device name {name!r} must be 1..{IFNAMSIZ} characters")
    return name


def _run(args: Sequence[str], check: bool = True, timeout: float = 30.0, **kw: Any):
    """subprocess.run with text capture; on failure raise TestbedError with stderr."""
    try:
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as exc:
        raise TestbedError(f"{' '.join(args)}: no exit within {timeout:g} s") from exc
    if check and proc.returncode != 0:
        raise TestbedError(
            f"{' '.join(args)}: exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()}"
        )
    return proc


# --- process bookkeeping and signal safety -------------------------------------------

_LIVE: list[Testbed] = []
_LIVE_LOCK = threading.Lock()
_PREVIOUS_HANDLERS: dict[int, Any] = {}


def _close_all() -> None:
    with _LIVE_LOCK:
        beds = list(_LIVE)
    for bed in beds:
        bed.close()


def _on_fatal_signal(signum: int, frame: Any) -> None:
    """Clean up every live testbed, then let the signal do what it did before."""
    _close_all()
    previous = _PREVIOUS_HANDLERS.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_signal_handlers() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        current = signal.getsignal(signum)
        if current is _on_fatal_signal or current == signal.SIG_IGN:
            continue
        _PREVIOUS_HANDLERS[signum] = current
        signal.signal(signum, _on_fatal_signal)


atexit.register(_close_all)


def stop_process(proc: subprocess.Popen, timeout: float = 2.0) -> int:
    """SIGTERM, wait `timeout` s, then SIGKILL, by PID. Returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(5)
    return proc.returncode
