"""Helpers for the WireGuard netns tests: keys, tunneld configs, a wireguard-go peer.

wireguard-go (Debian's package) runs in the foreground as a process the testbed
tracks (stopped by PID), under a device name carrying the run's prefix: its UAPI
socket lives in the host-wide /var/run/wireguard/, so a fixed name like wg0
would collide between runs. It is configured with `wg set`, like a user would.
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import textwrap
import time
from dataclasses import dataclass, field
from typing import Any

from tunneld.proto.wg import encode_key, generate_preshared_key, generate_private_key, public_key
from tunneld.testbed import Netns, TestbedError, stop_process, wait_for

WG_RUN_DIR = "/var/run/wireguard"

# The `offload` key written when tunneld_wg_config is not given one: None writes none (the
# daemon's default, true). conftest's `offload_default` fixture sets it per test.
DEFAULT_OFFLOAD: bool | None = None


@dataclass(frozen=True)
class Keys:
    private: bytes
    public: bytes

    @classmethod
    def new(cls) -> Keys:
        private = generate_private_key(os.urandom)
        return cls(private, public_key(private))

    @property
    def private_b64(self) -> str:
        return encode_key(self.private)

    @property
    def public_b64(self) -> str:
        return encode_key(self.public)


def new_psk() -> str:
    return encode_key(generate_preshared_key(os.urandom))


@dataclass
class PeerSpec:
    """One [[peers]] entry of a tunneld config."""

    public_key: str
    allowed_ips: list[str]
    endpoint: str | None = None
    preshared_key: str | None = None
    persistent_keepalive: int | None = None


def tunneld_wg_config(
    keys: Keys,
    address: list[str],
    peers: list[PeerSpec],
    listen_port: int | None = None,
    name: str = "wg0",
    mtu: int = 1420,
    log_level: str = "info",
    handshake_load_threshold: int | None = None,
    offload: bool | None = None,
) -> str:
    lines = [f'[daemon]\nlog_level = "{log_level}"\n', f"[interfaces.{name}]",
             'type = "wireguard"', f"address = {address!r}".replace("'", '"'), f"mtu = {mtu}",
             f'private_key = "{keys.private_b64}"']  # fmt: skip
    if listen_port is not None:
        lines.append(f"listen_port = {listen_port}")
    if handshake_load_threshold is not None:
        lines.append(f"handshake_load_threshold = {handshake_load_threshold}")
    offload = DEFAULT_OFFLOAD if offload is None else offload
    if offload is not None:
        lines.append(f"offload = {'true' if offload else 'false'}")
    for p in peers:
        lines += ["", f"[[interfaces.{name}.peers]]", f'public_key = "{p.public_key}"',
                  "allowed_ips = " + repr(p.allowed_ips).replace("'", '"')]  # fmt: skip
        if p.endpoint:
            lines.append(f'endpoint = "{p.endpoint}"')
        if p.preshared_key:
            lines.append(f'preshared_key = "{p.preshared_key}"')
        if p.persistent_keepalive:
            lines.append(f"persistent_keepalive = {p.persistent_keepalive}")
    return "\n".join(lines) + "\n"


@dataclass
class WgGo:
    """A wireguard-go interface in a namespace, configured through `wg`."""

    ns: Netns
    name: str
    keys: Keys
    listen_port: int
    proc: subprocess.Popen
    log_path: str
    _files: list[str] = field(default_factory=list)

    @classmethod
    def start(
        cls, ns: Netns, name: str, keys: Keys, listen_port: int, address: str | list[str]
    ) -> WgGo:
        bed = ns.testbed
        log_path = os.path.join(bed.tmpdir, f"{name}-wireguard-go.log")
        with open(log_path, "wb") as log:
            argv = [
                "env",
                "WG_PROCESS_FOREGROUND=1",
                "LOG_LEVEL=verbose",
                "wireguard-go",
                "-f",
                name,
            ]
            proc = ns.popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        wg = cls(ns, name, keys, listen_port, proc, log_path)
        try:
            wait_for(lambda: wg._ready(), 10, what=f"wireguard-go {name} UAPI socket")
            key_file = wg._secret_file("private", keys.private_b64)
            ns.run(["wg", "set", name, "private-key", key_file, "listen-port", str(listen_port)])
            for addr in [address] if isinstance(address, str) else address:
                ns.add_addrs(name, addr)
            ns.ip("link", "set", name, "up")
        except BaseException:
            wg.stop()
            raise
        return wg

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise TestbedError(f"wireguard-go exited with {self.proc.returncode}:\n{self.log()}")
        return os.path.exists(f"{WG_RUN_DIR}/{self.name}.sock")

    def _secret_file(self, what: str, text: str) -> str:
        path = os.path.join(self.ns.testbed.tmpdir, f"{self.name}-{what}-{len(self._files)}")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(text + "\n")
        self._files.append(path)
        return path

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def set_peer(
        self,
        public_b64: str,
        allowed_ips: list[str],
        endpoint: str | None = None,
        preshared_key: str | None = None,
        persistent_keepalive: int | None = None,
    ) -> None:
        args = ["wg", "set", self.name, "peer", public_b64,
                "allowed-ips", ",".join(allowed_ips)]  # fmt: skip
        if endpoint:
            args += ["endpoint", endpoint]
        if preshared_key:
            args += ["preshared-key", self._secret_file("psk", preshared_key)]
        if persistent_keepalive:
            args += ["persistent-keepalive", str(persistent_keepalive)]
        self.ns.run(args)

    def dump(self) -> dict[str, dict[str, Any]]:
        """`wg show NAME dump`: peers by public key, with handshake/transfer fields."""
        out = self.ns.run(["wg", "show", self.name, "dump"]).stdout.strip().splitlines()
        peers = {}
        for line in out[1:]:
            pub, psk, endpoint, allowed, handshake, rx, tx, keepalive = line.split("\t")
            peers[pub] = {
                "preshared_key": psk != "(none)", "endpoint": endpoint, "allowed_ips": allowed,
                "latest_handshake": int(handshake), "rx_bytes": int(rx), "tx_bytes": int(tx),
                "keepalive": keepalive,
            }  # fmt: skip
        return peers

    def peer(self, public_b64: str) -> dict[str, Any]:
        return self.dump()[public_b64]

    def stop(self) -> None:
        stop_process(self.proc, timeout=3)


def wg_show(daemon: Any, iface: str = "wg0") -> dict[str, Any]:
    """The tunneld interface's `show --json` entry."""
    return daemon.show(iface)["interfaces"][iface]


def tunneld_peer(daemon: Any, public_b64: str, iface: str = "wg0") -> dict[str, Any]:
    for p in wg_show(daemon, iface)["peers"]:
        if p["public_key"] == public_b64:
            return p
    raise KeyError(public_b64)


def wait_ping(ns: Netns, dst: str, timeout: float = 15.0) -> None:
    """Until one ping to `dst` through the tunnel answers (the first handshake)."""
    wait_for(lambda: ns.ping(dst, count=1, timeout=1)[1] == 1, timeout,
             what=f"first ping {dst} from {ns.name}")  # fmt: skip


def recent(unix_seconds: int, within: float = 60.0) -> bool:
    return 0 < time.time() - unix_seconds < within or abs(time.time() - unix_seconds) < 2


def textblock(text: str) -> str:
    return textwrap.dedent(text)


def mac1(peer_public: bytes, message: bytes) -> bytes:
    """mac1 := MAC(HASH(LABEL_MAC1 || Spub_m'), msg_alpha) (whitepaper 5.4.4), hashlib only."""
    key = hashlib.blake2s(b"mac1----" + peer_public).digest()
    return hashlib.blake2s(message, key=key, digest_size=16).digest()


def forged_initiation(responder_public: bytes) -> bytes:
    """A 148-byte initiation with random contents but a valid mac1 (mac2 zero)."""
    body = struct.pack("<II", 1, int.from_bytes(os.urandom(4), "little")) + os.urandom(108)
    return body + mac1(responder_public, body) + bytes(16)


# Runs in an attacker namespace: send hex payloads given one per line on stdin to
# (host, port) from one UDP socket, pausing after every `burst` datagrams.
SEND_SCRIPT = textwrap.dedent("""
    import socket, sys, time
    host, port, burst = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i, line in enumerate(sys.stdin):
        s.sendto(bytes.fromhex(line.strip()), (host, port))
        if (i + 1) % burst == 0:
            time.sleep(0.02)
""")

# Runs in an attacker namespace: from every source address given, send forged
# initiations (valid mac1) round-robin at `rate` per second for `seconds`, count
# the cookie replies (type 3, 64 bytes) that come back; prints "sent replies".
FLOOD_SCRIPT = textwrap.dedent("""
    import hashlib, os, socket, struct, sys, time
    host, port, pub = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
    rate, seconds, sources = float(sys.argv[4]), float(sys.argv[5]), sys.argv[6:]
    key = hashlib.blake2s(b"mac1----" + pub).digest()
    socks = []
    for src in sources:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((src, 0)); s.setblocking(False); socks.append(s)
    sent = replies = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        for s in socks:
            body = struct.pack("<II", 1, int.from_bytes(os.urandom(4), "little")) + os.urandom(108)
            s.sendto(body + hashlib.blake2s(body, key=key, digest_size=16).digest() + bytes(16),
                     (host, port))
            sent += 1
            try:
                while True:
                    data = s.recv(2048)
                    replies += len(data) == 64 and data[0] == 3
            except BlockingIOError:
                pass
        time.sleep(max(0.0, start + sent / rate - time.monotonic()))
    print(sent, replies, flush=True)
""")


def udp_rcvbuf_errors(ns: Netns) -> int:
    """The namespace's UDP RcvbufErrors (/proc/net/snmp): datagrams the kernel dropped."""
    lines = [ln.split() for ln in ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines()
             if ln.startswith("Udp:")]  # fmt: skip
    return int(dict(zip(lines[0], lines[1], strict=True))["RcvbufErrors"])
