"""wg(8) against `tunneld --config`: the UAPI socket of a configured WireGuard interface.

ns1 runs tunneld with one WireGuard interface (a unique name: its socket is in the
host-wide /var/run/wireguard, where wg(8) looks), ns2 a wireguard-go peer. wireguard-
tools' `wg show`, `wg showconf` and `wg set` talk to tunneld as to wireguard-go; a
`wg set ... allowed-ips` change routes traffic, and a SIGHUP puts the file back.
"""

from __future__ import annotations

import os
import socket
import stat

import pytest

from tests.netns.wg_helpers import (
    Keys,
    PeerSpec,
    WgGo,
    recent,
    tunneld_peer,
    tunneld_wg_config,
    wait_ping,
)
from tunneld.testbed import wait_for

pytestmark = [pytest.mark.netns("wireguard-go", "wg"), pytest.mark.offload_default_only]

GO_PORT = 51820
TD_PORT = 51821
WG_RUN_DIR = "/var/run/wireguard"


def uapi(path: str, request: bytes) -> bytes:
    """One raw request on the socket, read to the errno line and the blank line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(request)
        out = b""
        while b"errno=" not in out or not out.endswith(b"\n\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


def dump(ns, name: str) -> dict[str, list[str]]:
    lines = ns.run(["wg", "show", name, "dump"]).stdout.strip().splitlines()
    return {line.split("\t")[0]: line.split("\t") for line in lines[1:]}


def test_wg_show_showconf_set_and_a_malformed_request(testbed, two_hosts):
    h1, h2 = two_hosts
    name = testbed.ifname("tw")
    path = f"{WG_RUN_DIR}/{name}.sock"
    td, go_keys = Keys.new(), Keys.new()
    go = WgGo.start(h2.ns, testbed.ifname("g1"), go_keys, GO_PORT, "10.77.0.2/24")
    go.set_peer(td.public_b64, ["10.77.0.1/32"])
    h2.ns.ip("addr", "add", "198.18.9.1/32", "dev", "lo")  # behind the peer, not yet allowed
    peer = PeerSpec(go_keys.public_b64, ["10.77.0.2/32"], endpoint=f"{h2.ip}:{GO_PORT}")
    config = tunneld_wg_config(td, ["10.77.0.1/24"], [peer], listen_port=TD_PORT, name=name)
    config = config.replace("[daemon]\n", f'[daemon]\nuapi_dir = "{WG_RUN_DIR}"\n', 1)
    daemon = h1.ns.spawn_tunneld(config)
    try:
        wait_ping(h1.ns, "10.77.0.2")
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        row = dump(h1.ns, name)[go_keys.public_b64]
        assert row[2] == f"{h2.ip}:{GO_PORT}" and row[3] == "10.77.0.2/32", row
        assert recent(int(row[4])) and int(row[5]) > 0 and int(row[6]) > 0, row
        showconf = h1.ns.run(["wg", "showconf", name]).stdout
        for line in (f"PrivateKey = {td.private_b64}", f"ListenPort = {TD_PORT}",
                     f"PublicKey = {go_keys.public_b64}", "AllowedIPs = 10.77.0.2/32",
                     f"Endpoint = {h2.ip}:{GO_PORT}"):  # fmt: skip
            assert line in showconf, showconf

        # wg set allowed-ips: the cryptokey table and a kernel route change, traffic follows
        assert h1.ns.run(["ip", "route", "get", "198.18.9.1"], check=False).returncode != 0
        h1.ns.run(["wg", "set", name, "peer", go_keys.public_b64,
                   "allowed-ips", "10.77.0.2/32,198.18.9.0/24"])  # fmt: skip
        assert f"dev {name}" in h1.ns.run(["ip", "route", "get", "198.18.9.1"]).stdout
        assert h1.ns.ping("198.18.9.1", count=3) == (3, 3)
        ours = tunneld_peer(daemon, go_keys.public_b64, name)
        assert ours["allowed_ips"] == ["10.77.0.2/32", "198.18.9.0/24"], ours
        assert dump(h1.ns, name)[go_keys.public_b64][3] == "10.77.0.2/32,198.18.9.0/24"

        # a malformed request: an errno answer, nothing changed, the daemon keeps serving
        assert uapi(path, b"set=1\nlisten_port=banana\n\n") == b"errno=-22\n\n"
        assert uapi(path, b"set=1\nprivate_key=zz\n\n") == b"errno=-22\n\n"
        assert uapi(path, b"bogus\n\n") == b"errno=-22\n\n"
        assert daemon.alive
        assert h1.ns.run(["wg", "show", name, "listen-port"]).stdout.strip() == str(TD_PORT)
        assert h1.ns.ping("198.18.9.1", count=2) == (2, 2)

        # SIGHUP re-applies the file: the runtime prefix and its route are gone again
        daemon.reload()

        def file_back() -> bool:
            return tunneld_peer(daemon, go_keys.public_b64, name)["allowed_ips"] == ["10.77.0.2/32"]

        wait_for(file_back, 10, what="reload to put the file's allowed ips back")
        assert h1.ns.run(["ip", "route", "get", "198.18.9.1"], check=False).returncode != 0
        assert h1.ns.ping("10.77.0.2", count=2) == (2, 2)  # the session survived

        daemon.stop()
        assert not os.path.exists(path)  # the daemon removed its socket
    finally:
        if daemon.alive:
            daemon.stop()
        if os.path.exists(path):
            os.unlink(path)  # a crashed daemon's: our unique name
