"""One network namespace of a Testbed and what runs in it: ping, iperf3, captures, peers."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunneld.testbed.capture import _CAPTURE_SCRIPT
from tunneld.testbed.common import (
    _PING_RE,
    Addrs,
    TestbedError,
    _as_list,
    _check_ifname,
    _run,
    stop_process,
    wait_for,
)
from tunneld.testbed.daemon import TunneldProcess, _with_control_socket

if TYPE_CHECKING:
    from tunneld.testbed import Testbed

# --- topology records -----------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    """One veth pair: `ifname_a` lives in `ns_a`, `ifname_b` in `ns_b`."""

    ns_a: Netns
    ifname_a: str
    ns_b: Netns
    ifname_b: str


@dataclass(frozen=True)
class Host:
    """A namespace on an underlay: its device, IPv4 and IPv6 addresses (no prefix)."""

    ns: Netns
    iface: str
    ip: str
    ip6: str
    cidr: str
    cidr6: str


# --- namespaces -------------------------------------------------------------------------


class Netns:
    """One network namespace created by a Testbed. Use `Testbed.add_ns` to make one."""

    def __init__(self, testbed: Testbed, role: str, name: str) -> None:
        self.testbed, self.role, self.name = testbed, role, name

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"

    def cmd(self, args: Sequence[str]) -> list[str]:
        """The argv that runs `args` inside this namespace."""
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, args: Sequence[str], check: bool = True, timeout: float = 30.0, **kw: Any):
        """Run `args` in the namespace; CompletedProcess with text stdout/stderr."""
        return _run(self.cmd(args), check=check, timeout=timeout, **kw)

    def ip(self, *args: str, check: bool = True):
        """`ip -n NAME ARGS...` (no exec into the namespace needed)."""
        return _run(["ip", "-n", self.name, *args], check=check)

    def popen(self, args: Sequence[str], **kw: Any) -> subprocess.Popen:
        """Start `args` in the namespace; stopped (TERM, then KILL by PID) on close."""
        return self.testbed._track(subprocess.Popen(self.cmd(args), **kw))

    def add_addrs(self, ifname: str, addrs: Addrs) -> None:
        """Add addresses (IPv4 or IPv6 CIDR) to a device; IPv6 skips DAD."""
        for addr in _as_list(addrs):
            ipaddress.ip_interface(addr)  # ValueError early, with the bad text
            extra = ["nodad"] if ":" in addr else []
            self.ip("addr", "add", addr, "dev", ifname, *extra)

    def ping(
        self,
        dst: str,
        count: int = 3,
        interval: float = 0.2,
        timeout: float = 2.0,
        size: int | None = None,
        dont_fragment: bool = False,
    ) -> tuple[int, int]:
        """Ping `dst` from this namespace; returns (sent, received).

        `timeout` is how long to wait for the last reply (ping's -W). Loss is
        not an error; an unparseable run (unknown host, no route) raises.
        """
        args = ["ping", "-n", "-c", str(count), "-i", f"{interval:g}", "-W", f"{timeout:g}"]
        if size is not None:
            args += ["-s", str(size)]
        if dont_fragment:
            args += ["-M", "do"]
        proc = self.run([*args, dst], check=False, timeout=count * interval + timeout + 10)
        match = _PING_RE.search(proc.stdout)
        if match is None:
            raise TestbedError(
                f"{self.name}: ping {dst}: exit {proc.returncode}: "
                f"{(proc.stderr or proc.stdout).strip()}"
            )
        return int(match.group(1)), int(match.group(2))

    def wait_listening(self, port: int, proto: str = "tcp", timeout: float = 5.0) -> None:
        """Wait until something in this namespace listens on `port` (ss)."""
        flag = "-Hltn" if proto == "tcp" else "-Hlun"
        wait_for(
            lambda: self.run(["ss", flag, f"sport = :{port}"], check=False).stdout.strip(),
            timeout,
            what=f"{proto} port {port} listening in {self.name}",
        )

    def iperf3_pair(
        self,
        server_ns: Netns,
        dst: str,
        seconds: float = 5,
        reverse: bool = False,
        port: int = 5201,
        extra: Sequence[str] = (),
        size: int | None = None,
    ) -> dict[str, Any]:
        """iperf3 TCP from this namespace (client) to `server_ns` at `dst`.

        With `size`, the client sends that many bytes (-n) instead of running `seconds`
        (then the most it may take).

        Returns {"bits_per_second", "bytes"} as received (the receiver's view),
        plus "sent_bytes", "retransmits" and the full "json". `reverse` makes the
        server send (-R). Raises TestbedError when iperf3 reports an error.
        """
        server = server_ns.popen(
            ["iperf3", "-s", "-1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            server_ns.wait_listening(port)
            args = [
                "iperf3",
                "-c",
                dst,
                "-p",
                str(port),
                *(["-n", str(size)] if size else ["-t", f"{seconds:g}"]),
                "-J",
                "--connect-timeout",
                "5000",
                *extra,
            ]
            proc = self.run(
                [*args, *(["-R"] if reverse else [])], check=False, timeout=seconds + 20
            )
        finally:
            stop_process(server, timeout=5)
        try:
            result = json.loads(proc.stdout)
        except json.JSONDecodeError as exc:
            raise TestbedError(f"iperf3 -c {dst}: exit {proc.returncode}: {proc.stderr}") from exc
        if "error" in result:
            raise TestbedError(f"iperf3 -c {dst}: {result['error']}")
        end = result["end"]
        received, sent = end["sum_received"], end["sum_sent"]
        return {
            "bits_per_second": received["bits_per_second"],
            "bytes": received["bytes"],
            "sent_bytes": sent["bytes"],
            "retransmits": sent.get("retransmits"),
            "json": result,
        }

    @contextlib.contextmanager
    def capture(
        self, iface: str, bpf: str = "", count: int | None = None, timeout: float = 5.0
    ) -> Iterator[str]:
        """Capture on `iface` in this namespace; yields the pcap file's path.

        A small AF_PACKET reader (see _CAPTURE_SCRIPT) records every frame as it
        arrives, so nothing is lost to a capture buffer that is never flushed
        (tcpdump -w lost bursts here when stopped); `bpf` is applied afterwards
        with `tcpdump -r`. The file is complete once the block exits (read it with
        scapy's `rdpcap`). With `count`, exit first waits up to `timeout` s until
        that many matching frames were seen.
        """
        stem = os.path.join(self.testbed.tmpdir, f"{self.role}-{iface}-{secrets.token_hex(3)}")
        raw, path = stem + "-all.pcap", stem + ".pcap"
        proc = self.popen(
            [sys.executable, "-c", _CAPTURE_SCRIPT, iface, raw, "1" if count else ""],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdin is not None
        if proc.stdout.readline().strip() != "ready":
            stop_process(proc)
            raise TestbedError(
                f"capture on {iface} in {self.name} did not start: "
                f"{proc.stderr.read() if proc.stderr else ''}"
            )
        try:
            yield path
        finally:
            if count:
                with contextlib.suppress(TimeoutError):
                    wait_for(lambda: len(self._filter(raw, path, bpf)) >= count, timeout, 0.3)
            time.sleep(0.2)  # frames of the block still in flight
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()  # the reader writes out and exits
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            stop_process(proc)
            if not os.path.exists(raw):
                err = proc.stderr.read() if proc.stderr else ""
                raise TestbedError(f"capture on {iface} in {self.name} wrote nothing: {err}")
            self._filter(raw, path, bpf, count)

    @staticmethod
    def _filter(raw: str, path: str, bpf: str, count: int | None = None) -> list[bytes]:
        """Apply `bpf` (and a `count` limit) to the raw capture into `path` with
        `tcpdump -r ... -w`; returns one summary line per frame kept."""
        if not os.path.exists(raw):
            return []
        limit = ["-c", str(count)] if count else []
        _run(["tcpdump", "-r", raw, "-w", path, *limit, *bpf.split()], check=False)
        out = _run(["tcpdump", "-r", path, "-n", "-q"], check=False).stdout
        return out.encode().splitlines()

    def add_kernel_vxlan(
        self,
        name: str = "vx0",
        vni: int = 42,
        local: str = "",
        dev: str | None = None,
        port: int = 4789,
        flood: Sequence[str] = (),
        address: Addrs = None,
        learning: bool = True,
        mtu: int | None = None,
        userspace_peer: bool = True,
    ) -> str:
        """A Linux kernel vxlan device (the reference peer), up, with flood entries.

        `userspace_peer` (the far end is tunneld) turns tx offload off on `dev`
        (ethtool); pass False between two kernel devices to keep their speed.
        """
        args = [
            "link",
            "add",
            _check_ifname(name),
            "type",
            "vxlan",
            "id",
            str(vni),
            "dstport",
            str(port),
            "local",
            local,
        ]
        args += ["dev", dev] if dev else []
        args += [] if learning else ["nolearning"]
        args += ["mtu", str(mtu)] if mtu else []
        self.ip(*args)
        if dev and userspace_peer:
            # veth hands a kernel-built VXLAN datagram to the peer namespace with the
            # inner checksum still CHECKSUM_PARTIAL; a userspace receiver (tunneld)
            # would pass on frames whose inner TCP/UDP checksum was never filled in.
            # Real NICs finish it on the wire; on veth, turn tx offload off.
            self.run(["ethtool", "-K", dev, "tx", "off"])
        for remote in flood:
            self.run(["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", name, "dst", remote])
        self.add_addrs(name, address)
        self.ip("link", "set", name, "up")
        return name

    def spawn_tunneld(
        self, config_text: str, name: str = "tunneld", timeout: float = 10.0
    ) -> TunneldProcess:
        """Run `python -m tunneld --config FILE` here and wait until it answers `show`.

        The config is written to the testbed's temp dir. Its control socket is
        put there too: a "{control_socket}" placeholder is replaced, else
        `[daemon] control_socket` is added unless the text sets one. Raises
        TestbedError with the daemon's stderr if it exits before it answers.
        """
        workdir = os.path.join(self.testbed.tmpdir, name)
        os.makedirs(workdir)
        socket_path = os.path.join(workdir, "control.sock")
        text = _with_control_socket(config_text, socket_path)
        socket_path = tomllib.loads(text)["daemon"]["control_socket"]
        config_path = os.path.join(workdir, "tunneld.toml")
        with open(os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(text)
        log_path = os.path.join(workdir, "stderr.log")
        with open(log_path, "wb") as log:
            proc = self.popen(
                [sys.executable, "-m", "tunneld", "--config", config_path],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        daemon = TunneldProcess(self, name, proc, config_path, socket_path, log_path)
        daemon.wait_ready(timeout)
        return daemon
