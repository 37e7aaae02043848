"""The VXLAN link on real asyncio and real UDP on loopback, with FakeTun for the taps.

No root: two links, A on 127.0.0.1 and B on 127.0.0.2, each flooding to the other.
Frames written into one fake tap must come out of the other: flooding, learning,
unicast, bad datagrams counted, a live reload of the flood list.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import struct

import pytest

from tunneld.config import VxlanConfig
from tunneld.kernel.fakes import FakeNetlink
from tunneld.kernel.tun import FakeTun
from tunneld.links.vxlan import VxlanLink

MAC_A, MAC_B = bytes.fromhex("020000000a0a"), bytes.fromhex("020000000b0b")
BROADCAST = b"\xff" * 6


class FakeVxlanLink(VxlanLink):
    netlink = FakeNetlink()

    @staticmethod
    def open_device(name: str, mode: str, offload: bool = False) -> FakeTun:
        return FakeTun(name, mode)  # a plain queue: the offload path has its own tests


def frame(dst: bytes, src: bytes, payload: bytes = b"x" * 50) -> bytes:
    return dst + src + b"\x08\x00" + payload


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(name: str, local: str, flood: str, port: int) -> VxlanConfig:
    from ipaddress import ip_address

    return VxlanConfig(name=name, vni=42, local=ip_address(local), port=port,
                       flood=(ip_address(flood),))  # fmt: skip


async def receive(tap: FakeTun, timeout: float = 2.0) -> bytes:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.sock_recv(tap.peer, 65536), timeout)


@pytest.fixture
def run():
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.close()


def test_flood_learn_unicast_between_two_links(run):
    async def scenario():
        port = free_port()
        loop = asyncio.get_running_loop()
        a = FakeVxlanLink(config("vxa", "127.0.0.1", "127.0.0.2", port), loop)
        b = FakeVxlanLink(config("vxb", "127.0.0.2", "127.0.0.1", port), loop)
        await a.start()
        await b.start()
        try:
            for tap in (a.dev, b.dev):
                tap.peer.setblocking(False)
            hello = frame(BROADCAST, MAC_A)
            a.dev.peer.send(hello)  # broadcast: flooded to B
            assert await receive(b.dev) == hello
            reply = frame(MAC_A, MAC_B)
            b.dev.peer.send(reply)  # B learned MAC_A -> 127.0.0.1: unicast back
            assert await receive(a.dev) == reply
            return a.show(), b.show()
        finally:
            await a.stop()
            await b.stop()

    shown_a, shown_b = run(scenario())
    assert {"mac": "02:00:00:00:0a:0a", "remote": "127.0.0.1", "static": False} in [
        {k: e[k] for k in ("mac", "remote", "static")} for e in shown_b["fdb"]
    ]
    assert shown_a["counters"]["tx_packets"] == 1 and shown_a["counters"]["rx_packets"] == 1
    assert shown_a["mtu"] == 1500 - 50


def test_bad_datagrams_are_counted_and_do_not_reach_the_tap(run):
    async def scenario():
        port = free_port()
        loop = asyncio.get_running_loop()
        a = FakeVxlanLink(config("vxa", "127.0.0.1", "127.0.0.2", port), loop)
        await a.start()
        try:
            a.dev.peer.setblocking(False)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"", ("127.0.0.1", port))  # an empty datagram once killed the batch
                s.sendto(b"\x08", ("127.0.0.1", port))
                s.sendto(struct.pack("!II", 0, 42 << 8) + frame(MAC_A, MAC_B), ("127.0.0.1", port))
                s.sendto(struct.pack("!II", 0x08000000, 7 << 8) + frame(MAC_A, MAC_B),
                         ("127.0.0.1", port))  # fmt: skip
                good = frame(MAC_A, MAC_B)
                s.sendto(struct.pack("!II", 0x08000000, 42 << 8) + good, ("127.0.0.1", port))
            assert await receive(a.dev) == good  # only the valid one gets through
            return a.show()["counters"]["rx_dropped"]
        finally:
            await a.stop()

    drops = run(scenario())
    assert drops["short"] == 2 and drops["bad_flags"] == 1 and drops["wrong_vni"] == 1


def test_reload_replaces_flood_list_and_static_entries_in_place(run):
    async def scenario():
        from ipaddress import ip_address

        from tunneld.config import FdbEntryConfig

        loop = asyncio.get_running_loop()
        cfg = config("vxa", "127.0.0.1", "127.0.0.2", free_port())
        a = FakeVxlanLink(cfg, loop)
        await a.start()
        try:
            dev = a.dev
            new = dataclasses.replace(
                cfg,
                flood=(ip_address("127.0.0.3"),),
                fdb=(FdbEntryConfig(mac="02:00:00:00:0b:0b", remote=ip_address("127.0.0.4")),),
            )
            assert await a.reload(new) is True
            assert a.dev is dev  # the device was not recreated
            assert await a.reload(dataclasses.replace(new, vni=43)) is False  # needs a rebuild
            return a.show()
        finally:
            await a.stop()

    shown = run(scenario())
    assert shown["flood"] == ["127.0.0.3"]
    assert shown["fdb"] == [
        {"mac": "02:00:00:00:0b:0b", "remote": "127.0.0.4", "static": True, "age": None}
    ]
