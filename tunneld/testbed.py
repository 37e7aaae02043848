"""Network-namespace testbed for the netns tests, `tunneld demo` and `bench/`.

Theory of operation: a `Testbed` owns everything it creates and nothing else.
Every namespace it adds is named `<prefix>-<role>`, where the prefix is `td`
plus four random hex digits, unique per run; every device it names starts with
the same prefix. Veth pairs are created *inside* namespaces (`ip -n A link add
... peer ... netns B`), so nothing ever appears in the host's namespace. Every
process started through `Netns.popen` is tracked and, on close, terminated and
then killed by its PID. Closing deletes the namespaces (which deletes their
devices) and the temporary directory. `close()` is idempotent and runs from
`__exit__`, from `atexit` and from a SIGTERM/SIGHUP handler; it never touches
anything this run did not create.

Needs root, iproute2 and, per helper, ping, iperf3 or tcpdump. No pytest here:
the demo and the benchmarks use it too.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

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


_CAPTURE_SCRIPT = r"""
import socket, struct, sys, threading, time
iface, out, periodic = sys.argv[1], sys.argv[2], bool(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL
s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE: room for bursts
s.bind((iface, 0))  # protocol 0 keeps the socket's ETH_P_ALL
s.settimeout(0.05)
frames, done = [], threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
def flush():
    with open(out + ".tmp", "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for ts, data in frames:
            f.write(struct.pack("<IIII", int(ts), int((ts % 1) * 1e6), len(data), len(data)))
            f.write(data)
    import os; os.replace(out + ".tmp", out)
print("ready", flush=True)
last = 0.0
while not done.is_set():
    try:
        frames.append((time.time(), s.recv(262144)))
    except socket.timeout:
        pass
    if periodic and time.time() - last > 0.25:
        flush(); last = time.time()
while True:  # drain what is queued, then write
    s.setblocking(False)
    try:
        frames.append((time.time(), s.recv(262144)))
    except BlockingIOError:
        break
flush()
"""


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
    ) -> dict[str, Any]:
        """iperf3 TCP from this namespace (client) to `server_ns` at `dst`.

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
                "-t",
                f"{seconds:g}",
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


def _with_control_socket(text: str, socket_path: str) -> str:
    """Make the config's control socket the testbed's, unless the text sets its own."""
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


# --- the testbed ------------------------------------------------------------------------


class Testbed:
    """Namespaces, links and processes for one run; everything removed on close.

    `prefix` defaults to "td" + 4 random hex digits. `subnet_octet` is a value in
    20..219 derived from it, used to pick per-run underlay subnets.
    """

    __test__ = False

    def __init__(self, prefix: str | None = None) -> None:
        if prefix is not None and not _PREFIX_RE.match(prefix):
            raise ValueError(f"prefix {prefix!r}: 2..8 chars, [a-z][a-z0-9]*")
        self.prefix = prefix or _fresh_prefix()
        self.subnet_octet = 20 + int.from_bytes(self.prefix.encode(), "big") % 200
        self.namespaces: dict[str, Netns] = {}
        self.links: list[Link] = []
        self.hub: Netns | None = None
        self._procs: list[subprocess.Popen] = []
        self._closed = False
        self._lock = threading.RLock()
        self.tmpdir = tempfile.mkdtemp(prefix=f"{self.prefix}-")
        with _LIVE_LOCK:
            _LIVE.append(self)
        _install_signal_handlers()

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Testbed({self.prefix!r}, ns={list(self.namespaces)})"

    def _track(self, proc: subprocess.Popen) -> subprocess.Popen:
        with self._lock:
            self._procs.append(proc)
            if self._closed:
                stop_process(proc, 0)
                raise TestbedError("testbed already closed")
        return proc

    def ifname(self, suffix: str) -> str:
        """A device name carrying this run's prefix (at most 15 characters)."""
        return _check_ifname(f"{self.prefix}{suffix}")

    def add_ns(self, role: str) -> Netns:
        """Create namespace `<prefix>-<role>` with lo up."""
        if self._closed:
            raise TestbedError("testbed already closed")
        if role in self.namespaces:
            raise ValueError(f"namespace role {role!r} already exists")
        ns = Netns(self, role, f"{self.prefix}-{role}")
        _run(["ip", "netns", "add", ns.name])
        self.namespaces[role] = ns  # registered before anything else can fail
        ns.ip("link", "set", "lo", "up")
        return ns

    def link(
        self,
        ns_a: Netns,
        ns_b: Netns,
        addr_a: Addrs = None,
        addr_b: Addrs = None,
        mtu: int = 1500,
        name_a: str | None = None,
        name_b: str | None = None,
    ) -> Link:
        """A veth pair between two namespaces (never via the host), addressed and up.

        Addresses are CIDR strings, IPv4 or IPv6, one or a list per side.
        """
        n = len(self.links)
        if_a = _check_ifname(name_a or self.ifname(f"v{n}a"))
        if_b = _check_ifname(name_b or self.ifname(f"v{n}b"))
        ns_a.ip(
            "link",
            "add",
            "name",
            if_a,
            "mtu",
            str(mtu),
            "type",
            "veth",
            "peer",
            "name",
            if_b,
            "mtu",
            str(mtu),
            "netns",
            ns_b.name,
        )
        link = Link(ns_a, if_a, ns_b, if_b)
        self.links.append(link)
        for ns, ifname, addrs in ((ns_a, if_a, addr_a), (ns_b, if_b, addr_b)):
            ns.add_addrs(ifname, addrs)
            ns.ip("link", "set", ifname, "up")
        return link

    def add_hub(self, mtu: int = 1500) -> Netns:
        """A namespace holding one bridge: `attach` puts 3+ hosts on one L2 segment."""
        if self.hub is None:
            hub = self.add_ns("hub")
            hub.ip(
                "link",
                "add",
                "br0",
                "mtu",
                str(mtu),
                "type",
                "bridge",
                "stp_state",
                "0",
                "forward_delay",
                "0",
                "mcast_snooping",
                "0",
            )
            hub.ip("link", "set", "br0", "up")
            self.hub = hub
        return self.hub

    def attach(self, ns: Netns, addr: Addrs = None, mtu: int = 1500) -> Link:
        """Join `ns` to the hub's bridge by a veth; returns the Link (ns side is `ifname_b`)."""
        hub = self.add_hub(mtu)
        link = self.link(hub, ns, None, addr, mtu=mtu)
        hub.ip("link", "set", link.ifname_a, "master", "br0")
        return link

    def two_hosts(self, mtu: int = 1500) -> tuple[Host, Host]:
        """ns1 and ns2 joined by one veth: 192.168.X.1-2/24 and fdX::1-2/64 (X per run)."""
        ns1, ns2 = self.add_ns("ns1"), self.add_ns("ns2")
        hosts = [self._host(ns1, 1), self._host(ns2, 2)]
        link = self.link(
            ns1, ns2, [hosts[0].cidr, hosts[0].cidr6], [hosts[1].cidr, hosts[1].cidr6], mtu=mtu
        )
        return (self._host(ns1, 1, link.ifname_a), self._host(ns2, 2, link.ifname_b))

    def hub_hosts(self, count: int = 3, mtu: int = 1500) -> list[Host]:
        """`count` namespaces ns1..nsN on one bridged segment (same addressing as two_hosts)."""
        hosts = []
        for i in range(1, count + 1):
            ns, plan = self.add_ns(f"ns{i}"), self._host(None, i)
            link = self.attach(ns, [plan.cidr, plan.cidr6], mtu=mtu)
            hosts.append(self._host(ns, i, link.ifname_b))
        return hosts

    def _host(self, ns: Any, index: int, iface: str = "") -> Host:
        ip, ip6 = f"192.168.{self.subnet_octet}.{index}", f"fd{self.subnet_octet:02x}::{index}"
        return Host(ns, iface, ip, ip6, f"{ip}/24", f"{ip6}/64")

    def close(self) -> None:
        """Stop tracked processes, delete the namespaces and the temp dir. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for proc in reversed(self._procs):
            with contextlib.suppress(Exception):
                stop_process(proc)
        for ns in reversed(list(self.namespaces.values())):
            _run(["ip", "netns", "del", ns.name], check=False)
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        with _LIVE_LOCK, contextlib.suppress(ValueError):
            _LIVE.remove(self)

    def leftovers(self) -> list[str]:
        """Namespaces with this run's prefix that still exist (empty after close)."""
        out = _run(["ip", "netns", "list"], check=False).stdout
        return sorted(
            line.split()[0] for line in out.splitlines() if line.startswith(f"{self.prefix}-")
        )


def _fresh_prefix() -> str:
    existing = _run(["ip", "netns", "list"], check=False).stdout
    for _ in range(100):
        prefix = "td" + secrets.token_hex(2)
        if f"{prefix}-" not in existing:
            return prefix
    raise TestbedError("no free namespace prefix")
