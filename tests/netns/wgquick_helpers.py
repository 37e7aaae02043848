"""wg-quick(8) with WG_QUICK_USERSPACE_IMPLEMENTATION=tunneld-wg in a testbed namespace.

wireguard-tools' own /usr/bin/wg-quick runs inside the namespace (`ip netns exec`), so its
`ip` commands, rules, sysctls and nft tables stay there. It is given a config file PATH
named after a unique interface (`<prefix>wq.conf`): the UAPI socket of tunneld-wg lives
in the host-wide /var/run/wireguard. tunneld-wg goes to the background on its own (it is
not a child the testbed tracks), so `cleanup()` deletes the device (the daemon then
exits), and kills a daemon that survives by its PID, found by its exact argv.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tunneld.testbed import Netns, TestbedError, wait_for

WG_RUN_DIR = "/var/run/wireguard"
VENV_BIN = os.path.dirname(sys.executable)  # holds the tunneld-wg console script


class WgQuick:
    def __init__(self, ns: Netns, name: str, conf: str) -> None:
        self.ns, self.name = ns, name
        self.path = os.path.join(ns.testbed.tmpdir, f"{name}.conf")
        with open(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(conf)
        self.log_path = os.path.join(ns.testbed.tmpdir, f"{name}-wg-quick.log")
        self.socket = f"{WG_RUN_DIR}/{name}.sock"

    def env(self) -> dict[str, str]:
        return {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                "WG_QUICK_USERSPACE_IMPLEMENTATION": "tunneld-wg",
                "LOG_LEVEL": "info"}  # fmt: skip

    def _wg_quick(self, action: str) -> None:
        # Output to a file, never a pipe: the daemon keeps stderr (LOG_LEVEL is set), and a
        # pipe it holds open would keep us waiting for EOF.
        with open(self.log_path, "a") as log:
            log.write(f"--- wg-quick {action}\n")
            log.flush()
            proc = subprocess.run(self.ns.cmd(["wg-quick", action, self.path]), env=self.env(),
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=60)  # fmt: skip
        if proc.returncode != 0:
            raise TestbedError(f"wg-quick {action} {self.path}: exit {proc.returncode}\n"
                               f"{self.log()}")  # fmt: skip

    def up(self) -> None:
        self._wg_quick("up")

    def down(self) -> None:
        self._wg_quick("down")

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def wg(self, *args: str) -> str:
        return self.ns.run(["wg", *args]).stdout

    def dump(self) -> dict[str, dict[str, str]]:
        """`wg show NAME dump` peers by public key."""
        lines = self.wg("show", self.name, "dump").strip().splitlines()
        peers = {}
        for line in lines[1:]:
            pub, psk, endpoint, allowed, handshake, rx, tx, keepalive = line.split("\t")
            peers[pub] = {"endpoint": endpoint, "allowed_ips": allowed, "latest_handshake":
                          int(handshake), "rx_bytes": int(rx), "tx_bytes": int(tx)}  # fmt: skip
        return peers

    def daemon_pids(self) -> list[int]:
        """PIDs of `tunneld-wg NAME` processes (exact argv match: the name is unique)."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")[:-1]
            except OSError:
                continue
            if (len(argv) >= 2 and argv[-1] == self.name.encode()
                    and any(a.endswith(b"/tunneld-wg") for a in argv[:2])):  # fmt: skip
                pids.append(int(entry))
        return pids

    def wait_gone(self, timeout: float = 5.0) -> None:
        wait_for(lambda: not self.daemon_pids(), timeout, what=f"tunneld-wg {self.name} exit")

    def cleanup(self) -> None:
        if self.daemon_pids():
            self.ns.ip("link", "del", self.name, check=False)
            deadline = time.monotonic() + 3
            while self.daemon_pids() and time.monotonic() < deadline:
                time.sleep(0.1)
        for pid in self.daemon_pids():
            os.kill(pid, signal.SIGKILL)
        if os.path.exists(self.socket) and not self.daemon_pids():
            os.unlink(self.socket)  # left by a killed daemon: ours (unique name)
