"""A tunneld daemon started in a testbed namespace, driven through its control socket."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from typing import TYPE_CHECKING, Any

from tunneld.testbed.common import TestbedError, _as_list, _run, stop_process, wait_for

if TYPE_CHECKING:
    from tunneld.testbed.netns import Netns


def _with_control_socket(text: str, socket_path: str) -> str:
    """Make the config's control socket the testbed's, unless the text sets its own; the
    WireGuard UAPI sockets go beside it (`uapi_dir`: <workdir>/wireguard), unless the text
    sets a `uapi_dir`: /var/run/wireguard is shared by every namespace and every run."""
    text = _control_socket(text, socket_path)
    if "uapi_dir" in tomllib.loads(text).get("daemon", {}):
        return text
    line = f"uapi_dir = {json.dumps(os.path.join(os.path.dirname(socket_path), 'wireguard'))}\n"
    header = re.search(r"^\[daemon\][ \t]*(#.*)?\n", text, re.MULTILINE)
    assert header is not None  # _control_socket made sure there is one
    return text[: header.end()] + line + text[header.end() :]


def _control_socket(text: str, socket_path: str) -> str:
    quoted = json.dumps(socket_path)  # a valid TOML basic string for a plain path
    if "{control_socket}" in text:
        return text.replace('"{control_socket}"', quoted).replace("{control_socket}", quoted)
    daemon = tomllib.loads(text).get("daemon", {})
    if "control_socket" in daemon:
        return text
    line = f"control_socket = {quoted}\n"
    header = re.search(r"^\[daemon\][ \t]*(#.*)?\n", text, re.MULTILINE)
    if header is None:
        return f"[daemon]\n{line}\n{text}"
    return text[: header.end()] + line + text[header.end() :]


class TunneldProcess:
    """A tunneld daemon running in a testbed namespace."""

    def __init__(
        self,
        ns: Netns,
        name: str,
        proc: subprocess.Popen,
        config_path: str,
        socket_path: str,
        log_path: str,
    ) -> None:
        self.ns, self.name, self.proc = ns, name, proc
        self.config_path, self.socket_path, self.log_path = config_path, socket_path, log_path

    def __repr__(self) -> str:
        return f"TunneldProcess({self.name!r}, pid={self.pid}, ns={self.ns.name!r})"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr(self) -> str:
        """Everything the daemon wrote to stdout and stderr so far."""
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def _cli(self, *args: str, check: bool = True):
        return _run([sys.executable, "-m", "tunneld", *args], check=check, timeout=15)

    def show(self, iface: str | None = None) -> dict[str, Any]:
        """`tunneld show --socket P --json [IFACE]`, parsed."""
        proc = self._cli("show", "--socket", self.socket_path, "--json", *_as_list(iface))
        return json.loads(proc.stdout)

    def show_text(self, iface: str | None = None) -> str:
        """`tunneld show --socket P [IFACE]`: the human form."""
        return self._cli("show", "--socket", self.socket_path, *_as_list(iface)).stdout

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until `show --json` answers; raise with stderr if the daemon dies."""

        def answered() -> bool:
            if not self.alive:
                raise TestbedError(
                    f"tunneld {self.name!r} in {self.ns.name} exited with "
                    f"{self.proc.returncode} during startup:\n{self.stderr()}"
                )
            if not os.path.exists(self.socket_path):
                return False
            return (
                self._cli("show", "--socket", self.socket_path, "--json", check=False).returncode
                == 0
            )

        try:
            wait_for(answered, timeout, 0.1, what=f"tunneld {self.name!r} control socket")
        except TimeoutError as exc:
            raise TestbedError(f"{exc}; its output so far:\n{self.stderr()}") from exc

    def reload(self) -> None:
        """SIGHUP: the daemon re-reads its config file."""
        self.proc.send_signal(signal.SIGHUP)

    def rewrite_config(self, config_text: str) -> None:
        """Replace the config file (control socket kept) — follow with reload()."""
        with open(self.config_path, "w") as f:
            f.write(_with_control_socket(config_text, self.socket_path))

    def kill(self) -> int:
        """SIGKILL, as a crash: the daemon cleans nothing up (its control socket stays).
        Returns the exit code (-9)."""
        if self.alive:
            self.proc.kill()
        return self.proc.wait(5)

    def restart(self, timeout: float = 10.0) -> float:
        """Start the daemon again with the same config file and control socket (after it
        exited or was killed), output appended to the same log; wait until it answers.
        Returns the seconds from start until it answered `show`."""
        if self.alive:
            raise TestbedError(f"tunneld {self.name!r} is still running (pid {self.pid})")
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = self.ns.popen(
                [sys.executable, "-m", "tunneld", "--config", self.config_path],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_ready(timeout)
        return time.monotonic() - started

    def stop(self, timeout: float = 2.0) -> int:
        """SIGTERM and wait `timeout` s; returns the exit code.

        A daemon still running after `timeout` is killed and TestbedError raised
        (DESIGN.md: SIGTERM exits 0 within 2 s).
        """
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                stop_process(self.proc, 0)
                raise TestbedError(
                    f"tunneld {self.name!r} still running {timeout:g} s after SIGTERM; killed"
                ) from None
        return self.proc.returncode
