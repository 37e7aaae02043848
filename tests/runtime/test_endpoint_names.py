"""A WireGuard peer endpoint given as a name (links/wgdns.py), on a real loop with fake
kernel seams and a fake resolver: a name that does not resolve at start does not fail
the start and is retried; a name that moves is followed; `show` carries the name.
The periodic interval is the test-only TUNNELD_TEST_RERESOLVE_INTERVAL (0.3 s here)."""

from __future__ import annotations

import asyncio
import os
import socket
import threading

from tunneld.config import PeerConfig, Secret, WireguardConfig
from tunneld.kernel.fakes import FakeNetlink
from tunneld.kernel.tun import FakeTun
from tunneld.links.wireguard import WireguardLink
from tunneld.proto.wg import generate_private_key, public_key


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Dns:
    """name -> address, changed by the test; no answer: EAI_NONAME. Records the threads."""

    def __init__(self) -> None:
        self.answer: str | None = None
        self.threads: set[str] = set()
        self.changed = asyncio.Event()

    def __call__(self, host: str, port: int, **kw: object) -> list[object]:
        self.threads.add(threading.current_thread().name)
        if self.answer is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", (self.answer, port))]


async def _until(check, timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not check():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.02)


def test_unresolvable_name_at_start_comes_up_later_and_moves(monkeypatch):
    monkeypatch.setenv("TUNNELD_TEST_RERESOLVE_INTERVAL", "0.3")
    dns = Dns()

    class Link(WireguardLink):
        netlink = FakeNetlink()
        open_device = staticmethod(lambda name, mode, offload=False: FakeTun(name, mode))
        resolver = staticmethod(dns)

    async def scenario() -> None:
        key, peer_key = generate_private_key(os.urandom), generate_private_key(os.urandom)
        cfg = WireguardConfig(
            name="wgn", listen_port=_free_port(), private_key=Secret(key), mtu=1420,
            peers=(PeerConfig(public_key=public_key(peer_key), endpoint=("peer.test", 51820),
                              persistent_keepalive=25),),
        )  # fmt: skip
        link = Link(cfg, asyncio.get_running_loop())
        await link.start()  # no answer: not fatal
        try:
            peer = link.iface.peer(public_key(peer_key))
            shown = link.show()["peers"][0]
            assert shown["endpoint"] is None and shown["endpoint_name"] == "peer.test:51820"
            assert shown["resolve_failures"] == 1
            dns.answer = "127.0.0.5"
            await _until(lambda: peer.endpoint is not None)  # the backoff's first retry (1 s)
            assert peer.endpoint == ("127.0.0.5", 51820)
            assert peer.t_persistent is not None  # the first endpoint starts the keepalives
            dns.answer = "127.0.0.6"  # the name moves: the periodic lookup follows it
            await _until(lambda: peer.endpoint == ("127.0.0.6", 51820))
            assert link.show()["peers"][0]["endpoint"] == "127.0.0.6:51820"
        finally:
            await link.stop()
        assert link.dns._timer is None and not link.dns._tasks  # nothing left on the loop

    asyncio.run(scenario())
    assert dns.threads and "MainThread" not in dns.threads  # never on the loop's thread


def test_stale_handshakes_trigger_a_lookup_before_the_periodic_one(monkeypatch):
    """Initiations go out (keepalive every second) and no handshake completes: after
    STALE_AFTER (shortened here to 0.4 s, the stale checks to every 0.2 s; the periodic
    lookup stays at 300 s) the name is looked up again and its new answer taken."""
    from tunneld.proto import reresolve

    monkeypatch.setattr(reresolve, "STALE_AFTER", 0.4)
    monkeypatch.setattr(reresolve, "STALE_RETRY", 0.2)
    monkeypatch.delenv("TUNNELD_TEST_RERESOLVE_INTERVAL", raising=False)
    dns = Dns()
    dns.answer = "127.0.0.5"  # nothing answers there

    class Link(WireguardLink):
        netlink = FakeNetlink()
        open_device = staticmethod(lambda name, mode, offload=False: FakeTun(name, mode))
        resolver = staticmethod(dns)

    async def scenario() -> None:
        key, peer_key = generate_private_key(os.urandom), generate_private_key(os.urandom)
        cfg = WireguardConfig(
            name="wgs", listen_port=_free_port(), private_key=Secret(key), mtu=1420,
            peers=(PeerConfig(public_key=public_key(peer_key), endpoint=("peer.test", 51820),
                              persistent_keepalive=1),),
        )  # fmt: skip
        link = Link(cfg, asyncio.get_running_loop())
        await link.start()
        try:
            peer = link.iface.peer(public_key(peer_key))
            assert peer.endpoint == ("127.0.0.5", 51820)
            await _until(lambda: peer.last_sent_handshake > float("-inf"))  # trying
            dns.answer = "127.0.0.6"
            await _until(lambda: peer.endpoint == ("127.0.0.6", 51820))
            assert peer.latest_handshake_at is None
        finally:
            await link.stop()

    asyncio.run(scenario())
