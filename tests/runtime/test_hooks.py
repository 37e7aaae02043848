"""runtime/hooks.py with a real /bin/sh: order, %i, the pre_up failure as a SetupError
naming hook, command and status, other hooks' failures logged, timeouts kill the command's
process group, and the loop keeps running while a hook does. No root needed."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest

from tunneld.errors import SetupError
from tunneld.runtime.hooks import run_hooks
from tunneld.testbed import wait_for


def run(coro):
    return asyncio.run(coro)


def test_commands_run_in_order_with_the_device_name(tmp_path):
    out = tmp_path / "out"
    cmds = (f"echo one %i >> {out}", f"echo 'two %i%i' >> {out}", f"printf 'x\\n' >> {out}")
    run(run_hooks("wg7", "post_up", cmds))
    assert out.read_text() == "one wg7\ntwo wg7wg7\nx\n"


def test_a_failing_pre_up_raises_naming_hook_command_and_status(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SetupError) as info:
        run(run_hooks("wg7", "pre_up", (f"echo a >> {out}", "exit 3", f"echo b >> {out}")))
    assert str(info.value) == (
        "wg7: pre_up hook `exit 3` failed: exit status 3; the interface is not started"
    )
    assert out.read_text() == "a\n"  # the commands after the failed one do not run


@pytest.mark.parametrize("hook", ["post_up", "pre_down", "post_down"])
def test_other_hooks_log_the_failure_and_go_on(tmp_path, caplog, hook):
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, "tunneld.hooks"):
        run(run_hooks("vx1", hook, ("echo oops; kill -9 $$", f"echo after >> {out}")))
    assert out.read_text() == "after\n"
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [f"vx1: {hook} hook `echo oops; kill -9 $$` failed: killed by SIGKILL"]
    assert any(r.getMessage() == f"vx1: {hook} output: oops" for r in caplog.records)


def test_a_hook_that_hangs_is_killed_with_its_children(tmp_path):
    pidfile = tmp_path / "pid"
    with pytest.raises(SetupError, match=r"pre_up hook `.*` failed: timed out after 0.3 s"):
        run(run_hooks("wg0", "pre_up", (f"sleep 60 & echo $! > {pidfile}; wait",), timeout=0.3))
    child = int(pidfile.read_text())

    def gone() -> bool:  # SIGKILL sent; init reaps the orphan (a zombie until then)
        try:
            with open(f"/proc/{child}/stat") as f:
                return f.read().split(") ", 1)[1].startswith("Z")
        except FileNotFoundError:
            return True

    wait_for(gone, 5, what=f"the hook's child {child} killed")


def test_a_child_left_in_the_background_does_not_hold_the_hook(tmp_path):
    pidfile = tmp_path / "pid"

    async def scenario():
        await run_hooks("wg0", "post_up", (f"sleep 30 & echo $! > {pidfile}",), timeout=5)

    run(scenario())  # returns once the shell exited, though `sleep` holds the pipe
    child = int(pidfile.read_text())
    assert os.path.exists(f"/proc/{child}")  # left alone, as wg-quick leaves it
    os.kill(child, 9)


def test_the_loop_runs_while_a_hook_does():
    ticks = []

    async def scenario():
        async def tick():
            while True:
                ticks.append(1)
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        await run_hooks("wg0", "post_up", ("sleep 0.3",))
        ticker.cancel()

    run(scenario())
    assert len(ticks) > 3  # not one tick: the hook would have blocked the loop


def test_no_commands_run_nothing():
    run(run_hooks("wg0", "pre_up", ()))
