"""Blocking control-plane calls run off the event loop (issue 9): a netlink call or a DNS
lookup that hangs must not stop the loop's other callbacks (datagrams, timers, `show`).

Each slow seam blocks in its thread until a callback scheduled on the loop releases it,
so the test needs no timing: if the call ran on the loop thread, nothing could release it
and it reports that it was stuck.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import threading
from ipaddress import ip_address, ip_network

from tunneld.config import PeerConfig, Secret, VxlanConfig, WireguardConfig
from tunneld.kernel.fakes import FakeNetlink
from tunneld.kernel.tun import FakeTun
from tunneld.links.vxlan import VxlanLink
from tunneld.links.wireguard import WireguardLink
from tunneld.proto.wg import generate_private_key, public_key


class _Gate:
    """A seam call that waits for the loop to release it (at most 2 s)."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.outcomes: list[str] = []
        self.loop: asyncio.AbstractEventLoop | None = None

    def block(self, what: str) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.released.set)  # runs only if the loop is free
        ok = self.released.wait(2.0)
        self.outcomes.append(f"{what}: {'loop free' if ok else 'loop blocked'}")
        self.released.clear()


class SlowNetlink(FakeNetlink):
    def __init__(self, gate: _Gate) -> None:
        super().__init__()
        self.gate = gate

    def configure_link(self, name, mtu=None, addresses=(), up=True) -> None:  # type: ignore[override]
        self.gate.block("configure_link")
        super().configure_link(name, mtu, addresses, up)

    def link_mtu_for_address(self, address: str) -> int | None:
        self.gate.block("link_mtu_for_address")
        return super().link_mtu_for_address(address)

    def route_mtu(self, dst: str | None) -> int | None:
        self.gate.block("route_mtu")
        return super().route_mtu(dst)


def _fake_device(name: str, mode: str, offload: bool = False) -> FakeTun:
    return FakeTun(name, mode)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_vxlan_start_netlink_calls_leave_the_loop_free():
    gate = _Gate()

    class Link(VxlanLink):
        netlink = SlowNetlink(gate)
        open_device = staticmethod(_fake_device)

    async def scenario():
        gate.loop = asyncio.get_running_loop()
        cfg = VxlanConfig(name="vxs", vni=42, local=ip_address("127.0.0.1"), port=_free_port())
        link = Link(cfg, gate.loop)
        await link.start()
        await link.stop()

    asyncio.run(scenario())
    assert gate.outcomes == ["link_mtu_for_address: loop free", "configure_link: loop free"]


def test_wireguard_start_resolves_names_and_calls_netlink_off_the_loop():
    gate = _Gate()
    looked_up: list[tuple[str, int]] = []

    def slow_resolver(host, port, *args, **kwargs):
        gate.block("getaddrinfo")
        looked_up.append((host, port))
        return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("127.0.0.9", port))]

    class Link(WireguardLink):
        netlink = SlowNetlink(gate)
        open_device = staticmethod(_fake_device)
        resolver = staticmethod(slow_resolver)

    async def scenario():
        gate.loop = asyncio.get_running_loop()
        key, peer = generate_private_key(os.urandom), generate_private_key(os.urandom)
        cfg = WireguardConfig(
            name="wgs", listen_port=_free_port(), private_key=Secret(key), mtu=None,
            peers=(PeerConfig(public_key=public_key(peer), endpoint=("peer.invalid", 51820)),),
        )  # fmt: skip
        link = Link(cfg, gate.loop)
        await link.start()
        endpoint = link.show()["peers"][0]["endpoint"]
        await link.stop()
        return endpoint

    endpoint = asyncio.run(scenario())
    assert looked_up == [("peer.invalid", 51820)]
    assert endpoint == "127.0.0.9:51820"
    assert gate.outcomes[0] == "getaddrinfo: loop free"
    assert "configure_link: loop free" in gate.outcomes
    assert all(o.endswith("loop free") for o in gate.outcomes), gate.outcomes


class SlowRoutes(SlowNetlink):
    """Route changes wait for the loop too (a reload's, a `wg set`'s)."""

    def add_routes(self, name, networks, replace=True, table=None) -> None:  # type: ignore[override]
        self.gate.block("add_routes")
        super().add_routes(name, networks, replace, table)

    def remove_routes(self, name, networks, table=None) -> None:  # type: ignore[override]
        self.gate.block("remove_routes")
        super().remove_routes(name, networks, table)


def _wg_link(gate: _Gate) -> tuple[type[WireguardLink], WireguardConfig, bytes]:
    class Link(WireguardLink):
        netlink = SlowRoutes(gate)
        open_device = staticmethod(_fake_device)

    key, peer = generate_private_key(os.urandom), generate_private_key(os.urandom)
    cfg = WireguardConfig(
        name="wgr", listen_port=_free_port(), private_key=Secret(key), mtu=1420,
        peers=(PeerConfig(public_key=public_key(peer), allowed_ips=(ip_network("10.9.1.0/24"),)),),
    )  # fmt: skip
    return Link, cfg, public_key(peer)


def test_wireguard_reload_changes_kernel_routes_off_the_loop():
    gate = _Gate()
    Link, cfg, _ = _wg_link(gate)

    async def scenario():
        gate.loop = asyncio.get_running_loop()
        link = Link(cfg, gate.loop)
        await link.start()
        gate.outcomes.clear()
        moved = dataclasses.replace(
            cfg.peers[0], allowed_ips=(ip_network("10.9.2.0/24"),)
        )  # one route goes, one comes
        assert await link.reload(dataclasses.replace(cfg, peers=(moved,)))
        routes = [c for c in link.netlink.calls if c[0] in ("add_routes", "remove_routes")]
        await link.stop()
        return routes

    routes = asyncio.run(scenario())
    assert gate.outcomes == ["remove_routes: loop free", "add_routes: loop free"]
    assert routes[-2:] == [
        ("remove_routes", ("wgr", (ip_network("10.9.1.0/24"),))),
        ("add_routes", ("wgr", (ip_network("10.9.2.0/24"),))),
    ]


def test_wg_set_allowed_ips_changes_kernel_routes_off_the_loop(tmp_path):
    from tunneld.proto.wg.uapi import UapiReader
    from tunneld.runtime.uapi import UapiServer

    gate = _Gate()
    Link, cfg, peer = _wg_link(gate)

    async def scenario():
        gate.loop = asyncio.get_running_loop()
        link = Link(cfg, gate.loop)
        await link.start()
        gate.outcomes.clear()
        reader = UapiReader()
        reader.feed(b"set=1\npublic_key=%s\nallowed_ip=10.9.3.0/24\n\n" % peer.hex().encode())
        server = UapiServer(str(tmp_path / "wgr.sock"), lambda: link)
        reply = await server._answer(reader.next_request())
        await link.stop()
        return reply

    assert asyncio.run(scenario()) == b"errno=0\n\n"
    assert gate.outcomes == ["add_routes: loop free"]
