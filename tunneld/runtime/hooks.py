"""wg-quick's PreUp / PostUp / PreDown / PostDown, per interface: `pre_up`, `post_up`,
`pre_down` and `post_down` in the config (wg-quick(8), execute_hooks).

Each command has `%i` replaced by the device name and runs as `/bin/sh -c COMMAND`, one
after the other in the order given, as an asyncio subprocess: the loop keeps forwarding,
timing and answering `show` meanwhile. stdin is /dev/null; stdout and stderr go to the log
(the first OUTPUT_MAX bytes, once the command is done). A command whose shell does not
exit within HOOK_TIMEOUT seconds is killed with its process group; what a command leaves
running in the background once its shell exited is left alone, as with wg-quick.

When they run (runtime/daemon.py): pre_up before the device is created, post_up once it is
up with its addresses and routes, pre_down before the teardown, post_down after it. Also
around a rebuild on reload (the old interface's down hooks, then the new one's up hooks).
A failing pre_up (non-zero exit status, killed, timed out, /bin/sh missing) fails that
interface's start with a SetupError naming the hook, the command and the status; the
later commands of that hook do not run. Any other hook's failure is logged and the rest
goes on (the interface is up, or going down, regardless).

Hooks run as the daemon's user. After `[daemon] user` switched users they keep
CAP_NET_ADMIN (ambient, as kernel/nft.py does for nft), so `ip`, `nft` and `iptables` in a
pre_down or post_down still work; as root they run as root.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import tempfile
from typing import Any

from tunneld.errors import SetupError
from tunneld.kernel.nft import _keep_net_admin as keep_net_admin

log = logging.getLogger("tunneld.hooks")

HOOK_TIMEOUT = 10.0  # seconds for one command
OUTPUT_MAX = 4096  # bytes of a command's output that reach the log
SHELL = "/bin/sh"


async def run_hooks(iface: str, hook: str, commands: tuple[str, ...], *,
                    timeout: float = HOOK_TIMEOUT) -> None:  # fmt: skip
    """Run interface `iface`'s `hook` ("pre_up", ...) commands in order. pre_up raises
    SetupError on the first failure; the others log it and go on."""
    for command in commands:
        text = command.replace("%i", iface)
        failure = await _run_one(iface, hook, text, timeout)
        if failure is None:
            continue
        message = f"{iface}: {hook} hook `{text}` failed: {failure}"
        if hook == "pre_up":
            raise SetupError(f"{message}; the interface is not started")
        log.error("%s", message, extra={"iface": iface, "event": "hook_failed"})


async def _run_one(iface: str, hook: str, text: str, timeout: float) -> str | None:
    """One command; None when it exited 0, else what went wrong."""
    log.info("%s: %s: %s", iface, hook, text, extra={"iface": iface, "event": hook})
    # output into an unlinked file, not a pipe: a child the command leaves running in the
    # background would hold a pipe open, and asyncio's wait() waits for its pipes
    with tempfile.TemporaryFile() as output:
        try:
            proc = await asyncio.create_subprocess_exec(
                SHELL, "-c", text, stdin=asyncio.subprocess.DEVNULL, stdout=output,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed whole on a timeout
                preexec_fn=keep_net_admin,  # after `[daemon] user`: CAP_NET_ADMIN, as for nft
            )  # fmt: skip
        except OSError as exc:
            return f"cannot run {SHELL}: {exc.strerror}"
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            _kill(proc)
            await proc.wait()
            return f"timed out after {timeout:g} s (killed)"
        except BaseException:  # cancelled (shutdown): leave nothing running
            _kill(proc)
            with contextlib.suppress(Exception):
                await asyncio.shield(proc.wait())
            raise
        output.seek(0)
        shown = output.read(OUTPUT_MAX).decode(errors="replace").rstrip()
    if shown:
        log.info("%s: %s output: %s", iface, hook, shown)
    return _status(proc.returncode)


def _kill(proc: Any) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _status(code: int | None) -> str | None:
    if code == 0:
        return None
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"
