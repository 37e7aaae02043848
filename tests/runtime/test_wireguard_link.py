"""The WireGuard link on real asyncio and real UDP on loopback, with FakeTun for the tuns.

No root: two links handshake on the first packet and carry IPv4 both ways;
a packet whose inner source the peer may not use is dropped and counted.
"""

from __future__ import annotations

import asyncio
import os
import socket
from ipaddress import ip_network

import pytest
from scapy.layers.inet import IP, UDP

from tunneld.config import PeerConfig, Secret, WireguardConfig
from tunneld.kernel.fakes import FakeNetlink
from tunneld.kernel.tun import FakeTun
from tunneld.links.wireguard import WireguardLink
from tunneld.proto.wg import generate_private_key, public_key


class FakeWireguardLink(WireguardLink):
    netlink = FakeNetlink()

    @staticmethod
    def open_device(name: str, mode: str, offload: bool = False) -> FakeTun:
        return FakeTun(name, mode)  # a plain queue: the offload path has its own tests


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def packet(src: str, dst: str, payload: bytes = b"hello") -> bytes:
    return bytes(IP(src=src, dst=dst) / UDP(sport=1000, dport=2000) / payload)


async def receive(tap: FakeTun, timeout: float = 3.0) -> bytes:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.sock_recv(tap.peer, 65536), timeout)


@pytest.fixture
def pair():
    key_a, key_b = generate_private_key(os.urandom), generate_private_key(os.urandom)
    port_a, port_b = free_port(), free_port()
    cfg_a = WireguardConfig(
        name="wga", listen_port=port_a, private_key=Secret(key_a),
        peers=(PeerConfig(public_key=public_key(key_b), endpoint=("127.0.0.1", port_b),
                          allowed_ips=(ip_network("10.77.0.2/32"),)),),
    )  # fmt: skip
    cfg_b = WireguardConfig(
        name="wgb", listen_port=port_b, private_key=Secret(key_b),
        peers=(PeerConfig(public_key=public_key(key_a),
                          allowed_ips=(ip_network("10.77.0.1/32"),)),),
    )  # fmt: skip
    return cfg_a, cfg_b


def test_handshake_on_first_packet_then_both_ways(pair):
    async def scenario():
        loop = asyncio.get_running_loop()
        a, b = FakeWireguardLink(pair[0], loop), FakeWireguardLink(pair[1], loop)
        await a.start()
        await b.start()
        try:
            for link in (a, b):
                link.dev.peer.setblocking(False)
            out = packet("10.77.0.1", "10.77.0.2")
            a.dev.peer.send(out)  # staged, handshake, then delivered
            assert await receive(b.dev) == out
            back = packet("10.77.0.2", "10.77.0.1", b"world")
            b.dev.peer.send(back)  # B learned A's endpoint from the handshake
            assert await receive(a.dev) == back
            spoof = packet("10.77.0.9", "10.77.0.2", b"spoofed")
            # A routes 10.77.0.2 to B, but 10.77.0.9 is not in A's allowed ips at B
            a.dev.peer.send(spoof)
            a.dev.peer.send(out)
            assert await receive(b.dev) == out  # the spoofed one never arrived
            return a.show(), b.show()
        finally:
            await a.stop()
            await b.stop()

    shown_a, shown_b = asyncio.run(scenario())
    peer_at_b = shown_b["peers"][0]
    assert peer_at_b["endpoint"] == f"127.0.0.1:{pair[0].listen_port}"
    assert peer_at_b["latest_handshake"] > 0 and peer_at_b["rx_bytes"] > 0
    assert shown_b["counters"]["rx_dropped"]["not_allowed_source"] == 1
    assert "private" not in repr(shown_a) and "preshared" not in repr(shown_a)


def test_packet_without_a_route_is_counted(pair):
    async def scenario():
        loop = asyncio.get_running_loop()
        a = FakeWireguardLink(pair[0], loop)
        await a.start()
        try:
            a.dev.peer.send(packet("10.77.0.1", "10.99.0.1"))
            for _ in range(50):
                await asyncio.sleep(0.01)
                if a.show()["counters"]["tx_dropped"]["no_route"]:
                    break
            return a.show()
        finally:
            await a.stop()

    shown = asyncio.run(scenario())
    assert shown["counters"]["tx_dropped"]["no_route"] == 1
