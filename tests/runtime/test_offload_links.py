"""The offload path of the links without root: vnet_hdr FakeTuns, real UDP GSO/GRO on loopback.

A TSO super-frame (or super-packet) written into one side's fake device, with the
virtio_net_hdr a kernel writes (NEEDS_CSUM, GSO_TCPV4, pseudo-header sum in the TCP checksum
field), must leave as wire-sized datagrams in one UDP GSO run, arrive on the other side's
UDP_GRO socket as one batch, and come out of the other fake device as a coalesced super-frame
whose TCP payload is the original, byte for byte, with the merged header a kernel accepts.
"""

from __future__ import annotations

import asyncio
import os
import struct
from ipaddress import ip_address, ip_network

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from tests.runtime.test_vxlan_link import free_port
from tunneld.config import PeerConfig, Secret, VxlanConfig, WireguardConfig
from tunneld.kernel.fakes import FakeNetlink
from tunneld.kernel.linux_abi import TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_USO4, TUN_F_USO6
from tunneld.kernel.tun import FakeTun
from tunneld.links.vxlan import VxlanLink
from tunneld.links.wireguard import WireguardLink
from tunneld.native import checksum
from tunneld.proto.gso import F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, VNET_HDR
from tunneld.proto.wg import generate_private_key, public_key

FLAGS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6
MAC_A, MAC_B = "02:00:00:00:0a:0a", "02:00:00:00:0b:0b"


def offload_link(base: type) -> type:
    class Link(base):  # type: ignore[valid-type,misc]
        netlink = FakeNetlink()

        @staticmethod
        def open_device(name: str, mode: str, offload: bool = False) -> FakeTun:
            return FakeTun(name, mode, offload_flags=FLAGS if offload else None)

    return Link


def tso_packet(payload: bytes, mss: int, l2: bool, src: str, dst: str) -> bytes:
    """virtio_net_hdr + a TCP super-packet as the kernel hands it over (CHECKSUM_PARTIAL)."""
    tcp = TCP(sport=40000, dport=5201, seq=1000, ack=77, flags="PA", window=500)
    ip = IP(src=src, dst=dst, id=100, flags="DF") / tcp
    pkt = bytearray(bytes(ip / payload))
    ihl = 20
    tcp_len = len(pkt) - ihl
    pseudo = checksum(bytes(pkt[12:20]), 6 + tcp_len)
    struct.pack_into("!H", pkt, ihl + 16, pseudo)  # the pseudo-header sum, not inverted
    if l2:
        pkt = bytearray(bytes(Ether(src=MAC_A, dst=MAC_B, type=0x0800)) + bytes(pkt))
    start = (14 if l2 else 0) + ihl
    hdr = VNET_HDR.pack(F_NEEDS_CSUM, GSO_TCPV4, start + 20, mss, start, 16)
    return hdr + bytes(pkt)


async def read_all(dev: FakeTun, want: int, l2: bool, timeout: float = 3.0) -> tuple[bytes, list]:
    """TCP payload bytes out of the device until `want` arrived; and the headers seen."""
    loop, got, headers = asyncio.get_running_loop(), b"", []
    dev.peer.setblocking(False)
    while len(got) < want:
        data = await asyncio.wait_for(loop.sock_recv(dev.peer, 70000), timeout)
        headers.append(VNET_HDR.unpack_from(data))
        frame = data[10:]
        pkt = Ether(frame)[IP] if l2 else IP(frame)
        got += bytes(pkt[TCP].payload)
    return got, headers


@pytest.fixture
def run():
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.close()


def test_vxlan_super_frame_crosses_as_a_gso_run_and_is_coalesced(run):
    payload = os.urandom(20000)

    async def scenario():
        port, loop = free_port(), asyncio.get_running_loop()
        Link = offload_link(VxlanLink)
        a = Link(VxlanConfig(name="vxa", vni=42, local=ip_address("127.0.0.1"), port=port,
                             flood=(ip_address("127.0.0.2"),)), loop)  # fmt: skip
        b = Link(VxlanConfig(name="vxb", vni=42, local=ip_address("127.0.0.2"), port=port,
                             flood=(ip_address("127.0.0.1"),)), loop)  # fmt: skip
        await a.start()
        await b.start()
        try:
            a.dev.peer.send(tso_packet(payload, 1400, True, "10.1.0.1", "10.1.0.2"))
            got, headers = await read_all(b.dev, len(payload), True)
            return got, headers, a.show(), b.show()
        finally:
            await a.stop()
            await b.stop()

    got, headers, shown_a, shown_b = run(scenario())
    assert got == payload
    assert shown_a["counters"]["tx_packets"] == 15  # ceil(20000 / 1400) datagrams on the wire
    assert shown_b["counters"]["rx_packets"] == 15
    assert headers[0][1] == GSO_TCPV4 and headers[0][0] & F_NEEDS_CSUM  # merged again
    assert len(headers) < 15
    assert shown_a["offload"]["udp_gso"] and shown_b["offload"]["udp_gro"]


def test_wireguard_super_packet_is_sealed_as_one_run_and_coalesced(run):
    payload = os.urandom(30000)
    key_a, key_b = generate_private_key(os.urandom), generate_private_key(os.urandom)

    async def scenario():
        port_a, port_b, loop = free_port(), free_port(), asyncio.get_running_loop()
        Link = offload_link(WireguardLink)
        a = Link(WireguardConfig(
            name="wga", listen_port=port_a, private_key=Secret(key_a),
            peers=(PeerConfig(public_key=public_key(key_b), endpoint=("127.0.0.1", port_b),
                              allowed_ips=(ip_network("10.77.0.2/32"),)),)), loop)  # fmt: skip
        b = Link(WireguardConfig(
            name="wgb", listen_port=port_b, private_key=Secret(key_b),
            peers=(PeerConfig(public_key=public_key(key_a),
                              allowed_ips=(ip_network("10.77.0.1/32"),)),)), loop)  # fmt: skip
        await a.start()
        await b.start()
        try:
            # the first packet is staged for the handshake; the run follows once it is done
            ping = bytes(IP(src="10.77.0.1", dst="10.77.0.2") / TCP(flags="S"))
            a.dev.peer.send(VNET_HDR.pack(0, GSO_NONE, 0, 0, 0, 0) + ping)
            b.dev.peer.setblocking(False)
            first = await asyncio.wait_for(loop.sock_recv(b.dev.peer, 70000), 3)
            assert IP(first[10:]).dst == "10.77.0.2"
            a.dev.peer.send(tso_packet(payload, 1380, False, "10.77.0.1", "10.77.0.2"))
            got, headers = await read_all(b.dev, len(payload), False)
            return got, headers, a.show()
        finally:
            await a.stop()
            await b.stop()

    got, headers, shown_a = run(scenario())
    assert got == payload
    assert headers[0][1] == GSO_TCPV4 and len(headers) < 22
    assert shown_a["offload"]["udp_gso"]


def test_a_receive_batch_larger_than_the_coalescer_is_flushed_in_parts(run, monkeypatch):
    """Many GRO batches in one wake-up must not overflow the coalescer: the link flushes
    when it is crowded. (The capacity is lowered so a few local GSO runs exceed it.)"""
    from scapy.layers.inet import UDP

    from tunneld.kernel.linux_abi import SOL_UDP, UDP_SEGMENT
    from tunneld.links import datapath

    monkeypatch.setattr(datapath, "COALESCE_PACKETS", 300)
    monkeypatch.setattr(datapath, "CROWD_MARGIN", 140)
    runs, per_run = 5, 128

    def datagram(seq: int) -> bytes:
        inner = Ether(src=MAC_A, dst=MAC_B) / IP(src="10.1.0.1", dst="10.1.0.2") / UDP(
            sport=7, dport=9) / struct.pack("!I", seq)  # fmt: skip
        return struct.pack("!II", 0x08000000, 42 << 8) + bytes(inner)

    async def scenario():
        port, loop = free_port(), asyncio.get_running_loop()
        Link = offload_link(VxlanLink)
        b = Link(VxlanConfig(name="vxb", vni=42, local=ip_address("127.0.0.2"), port=port,
                             flood=(ip_address("127.0.0.1"),)), loop)  # fmt: skip
        await b.start()
        try:
            import socket

            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", 0))
                for r in range(runs):  # all queued before the link's first wake-up
                    data = [datagram(r * per_run + i) for i in range(per_run)]
                    s.sendmsg([b"".join(data)], [(SOL_UDP, UDP_SEGMENT,
                                                  struct.pack("=H", len(data[0])))], 0,
                               ("127.0.0.2", port))  # fmt: skip
            b.dev.peer.setblocking(False)
            seqs: list[int] = []
            while len(seqs) < runs * per_run:
                data = await asyncio.wait_for(loop.sock_recv(b.dev.peer, 70000), 3)
                body = data[10 + 42 :]  # merged: one set of headers, then every payload
                seqs += [struct.unpack_from("!I", body, k)[0] for k in range(0, len(body), 4)]
            return seqs, b.show()["counters"]
        finally:
            await b.stop()

    seqs, counters = run(scenario())
    assert seqs == list(range(runs * per_run))  # every datagram, in order
    assert counters["rx_packets"] == runs * per_run
