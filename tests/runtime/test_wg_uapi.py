"""The UAPI socket (runtime/uapi.py) on a running WireGuard link (links/wguapi.py).

Real asyncio, real UDP on loopback, real Unix sockets in a private temp directory,
FakeTun for the devices, FakeNetlink for the routes: two links, A and B; requests go to
A's socket as wg(8) would send them. The netns tests (test_uapi_config.py,
test_wg_quick.py) run the real wg and wg-quick.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import tempfile
from ipaddress import ip_network

import pytest

from tests.runtime.test_wireguard_link import FakeWireguardLink, free_port, packet, receive
from tunneld.config import PeerConfig, Secret, WireguardConfig
from tunneld.errors import SetupError
from tunneld.kernel.fakes import FakeNetlink
from tunneld.proto.wg import encode_key, generate_private_key, public_key
from tunneld.runtime.uapi import UapiServer, UapiSockets, claim_path


@pytest.fixture
def sockdir():
    path = tempfile.mkdtemp(prefix="tduapi")
    yield os.path.join(path, "wireguard")  # not there yet: the server creates it 0700
    shutil.rmtree(path)


class Pair:
    def __init__(self) -> None:
        self.key_a, self.key_b = generate_private_key(os.urandom), generate_private_key(os.urandom)
        self.pub_a, self.pub_b = public_key(self.key_a), public_key(self.key_b)
        self.port_a, self.port_b = free_port(), free_port()
        self.cfg_a = WireguardConfig(
            name="wga", listen_port=self.port_a, private_key=Secret(self.key_a),
            peers=(PeerConfig(public_key=self.pub_b, endpoint=("127.0.0.1", self.port_b),
                              allowed_ips=(ip_network("10.77.0.2/32"),)),),
        )  # fmt: skip
        self.cfg_b = WireguardConfig(
            name="wgb", listen_port=self.port_b, private_key=Secret(self.key_b),
            peers=(PeerConfig(public_key=self.pub_a,
                              allowed_ips=(ip_network("10.77.0.1/32"),)),),
        )  # fmt: skip


async def ask(path: str, text: str | bytes, answers: int = 1) -> str:
    """One wg(8)-style exchange: send, read up to the `answers`-th errno line and blank line."""
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(text.encode() if isinstance(text, str) else text)
        await writer.drain()
        out = b""
        while out.count(b"errno=") < answers or not out.endswith(b"\n\n"):
            chunk = await asyncio.wait_for(reader.read(65536), 2)
            if not chunk:
                break
            out += chunk
        return out.decode()
    finally:
        writer.close()


def parse_get(text: str) -> tuple[dict[str, str], dict[str, dict[str, list[str]]]]:
    device: dict[str, str] = {}
    peers: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in text.strip("\n").split("\n"):
        key, _, value = line.partition("=")
        if key == "public_key":
            current = peers.setdefault(value, {})
        elif current is None:
            device[key] = value
        else:
            current.setdefault(key, []).append(value)
        if key == "errno":
            device["errno"] = value
    return device, peers


def run(sockdir: str, scenario) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        pair = Pair()
        a, b = FakeWireguardLink(pair.cfg_a, loop), FakeWireguardLink(pair.cfg_b, loop)
        a.netlink = FakeNetlink()
        await a.start()
        await b.start()
        links = {"wga": a}
        sockets = UapiSockets(sockdir, links.get)
        await sockets.sync(["wga"])
        try:
            for link in (a, b):
                link.dev.peer.setblocking(False)
            await scenario(pair, a, b, os.path.join(sockdir, "wga.sock"))
        finally:
            await sockets.stop()
            await a.stop()
            await b.stop()
        assert not os.path.exists(os.path.join(sockdir, "wga.sock"))  # removed on stop

    asyncio.run(main())


def test_get_reports_keys_port_and_peers_and_the_socket_is_private(sockdir):
    async def scenario(pair, a, b, path):
        assert stat.S_IMODE(os.stat(sockdir).st_mode) == 0o700
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        a.dev.peer.send(packet("10.77.0.1", "10.77.0.2"))
        assert await receive(b.dev)  # a handshake and a packet each way: counters move
        b.dev.peer.send(packet("10.77.0.2", "10.77.0.1"))
        assert await receive(a.dev)
        device, peers = parse_get(await ask(path, "get=1\n\n"))
        assert device["private_key"] == pair.key_a.hex()
        assert device["listen_port"] == str(pair.port_a)
        assert device["errno"] == "0" and "fwmark" not in device
        peer = peers[pair.pub_b.hex()]
        assert peer["endpoint"] == [f"127.0.0.1:{pair.port_b}"]
        assert peer["allowed_ip"] == ["10.77.0.2/32"]
        assert peer["protocol_version"] == ["1"] and peer["preshared_key"] == ["0" * 64]
        assert int(peer["last_handshake_time_sec"][0]) > 1_600_000_000
        assert int(peer["tx_bytes"][0]) > 0 and int(peer["rx_bytes"][0]) > 0

    run(sockdir, scenario)


def test_set_adds_updates_and_removes_peers_with_routes_and_show(sockdir):
    async def scenario(pair, a, b, path):
        third = public_key(generate_private_key(os.urandom))
        psk = os.urandom(32)
        request = (
            f"set=1\npublic_key={third.hex()}\npreshared_key={psk.hex()}\n"
            "endpoint=127.0.0.1:9\npersistent_keepalive_interval=0\n"
            "allowed_ip=10.88.0.0/24\nallowed_ip=fd00:88::/64\n\n"
        )
        assert await ask(path, request) == "errno=0\n\n"
        shown = {p["public_key"]: p for p in a.show()["peers"]}
        new = shown[encode_key(third)]
        assert new["allowed_ips"] == ["10.88.0.0/24", "fd00:88::/64"]
        assert new["endpoint"] == "127.0.0.1:9"
        assert a.iface.peer(third).preshared_key == psk
        routed = [net for name, args in a.netlink.calls if name == "add_routes" for net in args[1]]
        assert ip_network("10.88.0.0/24") in routed and ip_network("fd00:88::/64") in routed
        # update_only for an unknown peer adds nothing; remove takes the third one out
        ghost = public_key(generate_private_key(os.urandom))
        assert await ask(path, f"set=1\npublic_key={ghost.hex()}\nupdate_only=true\n"
                               "allowed_ip=10.99.0.0/24\n\n") == "errno=0\n\n"  # fmt: skip
        assert a.iface.peer(ghost) is None
        assert await ask(path, f"set=1\npublic_key={third.hex()}\nremove=true\n\n") == "errno=0\n\n"
        assert a.iface.peer(third) is None
        assert any(c[0] == "remove_routes" and ip_network("10.88.0.0/24") in c[1][1]
                   for c in a.netlink.calls)  # fmt: skip
        _, peers = parse_get(await ask(path, "get=1\n\n"))
        assert list(peers) == [pair.pub_b.hex()]

    run(sockdir, scenario)


def test_replace_allowed_ips_reroutes_traffic(sockdir):
    async def scenario(pair, a, b, path):
        # B may now use 10.66.0.0/16 too: add it at A (wg set ... allowed-ips), and at B
        # send from A's address in it
        req = (f"set=1\npublic_key={pair.pub_b.hex()}\nupdate_only=true\nreplace_allowed_ips=true\n"
               "allowed_ip=10.77.0.2/32\nallowed_ip=10.66.0.0/16\n\n")  # fmt: skip
        assert await ask(path, req) == "errno=0\n\n"
        out = packet("10.77.0.1", "10.66.1.2")
        a.dev.peer.send(out)  # routed to B by the new prefix
        assert await receive(b.dev) == out
        assert a.show()["counters"]["tx_dropped"]["no_route"] == 0
        _, peers = parse_get(await ask(path, "get=1\n\n"))
        assert peers[pair.pub_b.hex()]["allowed_ip"] == ["10.77.0.2/32", "10.66.0.0/16"]
        # and replacing them again takes 10.66.0.0/16 away
        req = (f"set=1\npublic_key={pair.pub_b.hex()}\nreplace_allowed_ips=true\n"
               "allowed_ip=10.77.0.2/32\n\n")  # fmt: skip
        assert await ask(path, req) == "errno=0\n\n"
        a.dev.peer.send(packet("10.77.0.1", "10.66.1.2"))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if a.show()["counters"]["tx_dropped"]["no_route"]:
                break
        assert a.show()["counters"]["tx_dropped"]["no_route"] == 1

    run(sockdir, scenario)


def test_listen_port_rebinds_and_traffic_follows(sockdir):
    async def scenario(pair, a, b, path):
        a.dev.peer.send(packet("10.77.0.1", "10.77.0.2"))
        assert await receive(b.dev)
        new_port = free_port()
        assert await ask(path, f"set=1\nlisten_port={new_port}\n\n") == "errno=0\n\n"
        assert a.show()["listen_port"] == new_port and a.cfg.listen_port == new_port
        with pytest.raises(OSError):  # the old port is released
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.bind(("0.0.0.0", new_port))
            finally:
                s.close()
        out = packet("10.77.0.1", "10.77.0.2", b"after rebind")
        a.dev.peer.send(out)
        assert await receive(b.dev) == out
        back = packet("10.77.0.2", "10.77.0.1", b"back")
        b.dev.peer.send(back)  # B roamed to A's new port
        assert await receive(a.dev) == back
        # a port in use: EADDRINUSE, nothing changed
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
            taken.bind(("0.0.0.0", 0))
            busy = taken.getsockname()[1]
            answer = await ask(path, f"set=1\nlisten_port={busy}\n\n")
        assert answer == "errno=-98\n\n"
        assert a.show()["listen_port"] == new_port

    run(sockdir, scenario)


@pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"),
                    reason="SO_MARK needs CAP_NET_ADMIN (run as root)")  # fmt: skip
def test_fwmark_goes_on_every_socket_and_reload_then_rebuilds(sockdir):
    async def scenario(pair, a, b, path):
        assert await ask(path, "set=1\nfwmark=4660\n\n") == "errno=0\n\n"
        for udp in a.port.ports():
            assert udp.sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 4660
        device, _ = parse_get(await ask(path, "get=1\n\n"))
        assert device["fwmark"] == "4660" and a.show()["fwmark"] == 4660
        assert await a.prepare_reload(pair.cfg_a) is None  # the file says no fwmark: rebuild
        assert await ask(path, "set=1\nfwmark=0\n\n") == "errno=0\n\n"
        for udp in a.port.ports():
            assert udp.sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 0

    run(sockdir, scenario)


def test_private_key_change_and_removal(sockdir):
    async def scenario(pair, a, b, path):
        a.dev.peer.send(packet("10.77.0.1", "10.77.0.2"))
        assert await receive(b.dev)
        # the new key is B's: the peer holding that public key goes (wireguard-go)
        assert await ask(path, f"set=1\nprivate_key={pair.key_b.hex()}\n\n") == "errno=0\n\n"
        assert a.iface.public_key == pair.pub_b and a.iface.peer(pair.pub_b) is None
        fresh = generate_private_key(os.urandom)
        assert await ask(path, f"set=1\nprivate_key={fresh.hex()}\n\n") == "errno=0\n\n"
        assert a.show()["public_key"] and a.iface.public_key == public_key(fresh)
        assert a.cfg.private_key == Secret(fresh)
        assert await ask(path, f"set=1\nprivate_key={'0' * 64}\n\n") == "errno=0\n\n"
        device, _ = parse_get(await ask(path, "get=1\n\n"))
        assert "private_key" not in device and not a.iface.has_private_key

    run(sockdir, scenario)


def test_malformed_requests_get_errnos_and_the_socket_keeps_serving(sockdir):
    async def scenario(pair, a, b, path):
        assert await ask(path, "set=1\nlisten_port=banana\n\n") == "errno=-22\n\n"
        assert await ask(path, "set=1\nno_equals_sign\n\n") == "errno=-71\n\n"
        assert await ask(path, "set=1\nwhat=1\n\n") == "errno=-22\n\n"
        assert await ask(path, "hello=1\n\n") == "errno=-22\n\n"
        assert await ask(path, b"set=1\n" + b"fwmark=1\n" * 40000) == "errno=-90\n\n"
        assert a.show()["listen_port"] == pair.port_a  # nothing applied
        # several requests on one connection, a bad one in the middle
        both = await ask(path, "set=1\nfwmark=x\n\nget=1\n\n", answers=2)
        assert both.startswith("errno=-22\n\nprivate_key=") and both.endswith("errno=0\n\n")
        device, _ = parse_get(await ask(path, "get=1\n\n"))
        assert device["errno"] == "0"

    run(sockdir, scenario)


def test_too_many_clients_and_silent_ones_are_bounded(sockdir):
    async def main() -> None:
        os.makedirs(sockdir, mode=0o700)
        path = os.path.join(sockdir, "x.sock")
        server = UapiServer(path, lambda: None, max_clients=1, read_timeout=0.3)
        await server.start()
        try:
            _, w1 = await asyncio.open_unix_connection(path)
            await asyncio.sleep(0.05)
            r2, w2 = await asyncio.open_unix_connection(path)
            assert await asyncio.wait_for(r2.read(100), 2) == b""  # refused: closed at once
            assert server.refused == 1
            w2.close()
            await asyncio.sleep(0.5)  # the silent first client timed out
            assert server.clients == 0
            w1.close()
            assert await ask(path, "get=1\n\n") == "errno=-19\n\n"  # no link: ENODEV
        finally:
            await server.stop()
        assert not os.path.exists(path)

    asyncio.run(main())


def test_the_path_is_claimed_carefully(sockdir):
    os.makedirs(sockdir, mode=0o700)
    regular = os.path.join(sockdir, "file.sock")
    with open(regular, "w") as f:
        f.write("not a socket")
    with pytest.raises(SetupError, match="not a stale socket"):
        claim_path(regular)
    assert os.path.exists(regular)  # left alone
    stale = os.path.join(sockdir, "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(stale)
    s.close()  # bound, never listening: connect is refused
    claim_path(stale)
    assert not os.path.exists(stale)
    live = os.path.join(sockdir, "live.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(live)
    s.listen()
    try:
        with pytest.raises(SetupError, match="another process"):
            claim_path(live)
    finally:
        s.close()
        os.unlink(live)


def test_a_reload_re_applies_the_file_over_runtime_changes(sockdir):
    async def scenario(pair, a, b, path):
        assert not a.drifted(pair.cfg_a)
        extra = public_key(generate_private_key(os.urandom))
        request = f"set=1\npublic_key={extra.hex()}\nallowed_ip=10.55.0.0/24\n\n"
        assert await ask(path, request) == "errno=0\n\n"
        assert a.drifted(pair.cfg_a)  # the daemon's reload will not skip this interface
        plan = await a.prepare_reload(pair.cfg_a)  # a coroutine: names resolved off the loop
        assert plan is not None  # peers only: in place, B's session kept
        a.commit_reload(plan)
        await a.apply_kernel()  # the kernel routes follow, as the daemon's reload does
        assert a.iface.peer(extra) is None and a.iface.peer(pair.pub_b) is not None
        assert not a.drifted(pair.cfg_a)
        removed = [n for name, args in a.netlink.calls if name == "remove_routes" for n in args[1]]
        assert ip_network("10.55.0.0/24") in removed

    run(sockdir, scenario)


def test_replace_peers_and_a_prefix_moving_between_peers(sockdir):
    async def scenario(pair, a, b, path):
        a.dev.peer.send(packet("10.77.0.1", "10.77.0.2"))
        assert await receive(b.dev)
        session = a.iface.peer(pair.pub_b).keypairs.all()
        other = public_key(generate_private_key(os.urandom))
        # another peer takes 10.77.0.2/32 from B (wireguard-go's table insert moves it)
        request = f"set=1\npublic_key={other.hex()}\nallowed_ip=10.77.0.2/32\n\n"
        assert await ask(path, request) == "errno=0\n\n"
        _, peers = parse_get(await ask(path, "get=1\n\n"))
        assert "allowed_ip" not in peers[pair.pub_b.hex()]
        assert peers[other.hex()]["allowed_ip"] == ["10.77.0.2/32"]
        # replace_peers with only B listed: the other one goes, B keeps its session
        request = (f"set=1\nreplace_peers=true\npublic_key={pair.pub_b.hex()}\n"
                   f"endpoint=127.0.0.1:{pair.port_b}\nallowed_ip=10.77.0.2/32\n\n")  # fmt: skip
        assert await ask(path, request) == "errno=0\n\n"
        assert a.iface.peer(other) is None
        assert a.iface.peer(pair.pub_b).keypairs.all() == session
        out = packet("10.77.0.1", "10.77.0.2", b"same session")
        a.dev.peer.send(out)
        assert await receive(b.dev) == out

    run(sockdir, scenario)


@pytest.mark.parametrize("name", ["", "sixteen-bytes-xx", "a/b", ".."])
def test_tunneld_wg_rejects_a_bad_interface_name_with_usage_exit(name, capsys):
    from tunneld.wgcli import main

    with pytest.raises(SystemExit) as info:
        main(["-f", name])
    assert info.value.code == 2 and "not a valid interface name" in capsys.readouterr().err
