"""The overlay's WireGuard transport without a kernel: two transports, each with its
own `OverlayRouter`, joined by fake sockets; the device is a pipe.

Covers: handshake on first packet (staged, then delivered), the inner-source check
(cryptokey routing against the router's table), peers following registry changes
(update keeps the session, prune removes), `show` fields, and counters that keep
the overlay's reasons while the core counts its own after them.
"""

from __future__ import annotations

import functools
import os
import struct
from collections import deque
from ipaddress import IPv4Network
from types import SimpleNamespace

import pytest

from tunneld.links.datapath import DeviceWriter
from tunneld.links.overlay import BUFFER_SIZE, HEADROOM, _carry_over, make_transport
from tunneld.links.overlay_wg import OVERHEAD_V4, OffsetCounts, WireguardTransport
from tunneld.proto.counters import Counters
from tunneld.proto.overlay import OverlayRouter, OverlayRxDrop, OverlayTxDrop
from tunneld.proto.wg import WgDrop, encode_key, generate_private_key, public_key
from tunneld.registry.base import Host
from tunneld.secret import Secret

NETWORK = IPv4Network("10.5.0.0/16")


class FakeSock:
    """sendto records into `sent`; recvfrom_into drains `inbox` (BlockingIOError when empty)."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.inbox: deque[tuple[bytes, tuple[str, int]]] = deque()

    def sendto(self, data, addr) -> int:
        self.sent.append((bytes(data), addr))
        return len(data)

    def recvfrom_into(self, buf):
        if not self.inbox:
            raise BlockingIOError
        data, addr = self.inbox.popleft()
        buf[: len(data)] = data
        return len(data), addr

    def close(self) -> None:
        pass


class FakeHandle:
    def cancel(self) -> None:
        pass


class FakeLoop:
    def time(self) -> float:
        return 0.0

    def call_at(self, when, callback):
        return FakeHandle()


class Side:
    """One overlay host: transport, router, fake socket, device pipe."""

    def __init__(self, index: int) -> None:
        self.private = generate_private_key(os.urandom)
        self.public = public_key(self.private)
        self.ip = f"192.0.2.{index}"
        self.subnet = IPv4Network(f"10.5.{index}.0/24")
        cfg = SimpleNamespace(name=f"ov{index}", encryption="wireguard",
                              private_key=Secret(self.private), listen_port=51820)  # fmt: skip
        self.transport, self.counters = make_transport(cfg, None)
        self.router = OverlayRouter(self.subnet, NETWORK, self.counters)
        self.sock = FakeSock()
        self.transport.open(1440, sock=self.sock)
        self.dev_r, self.dev_w = os.pipe()
        os.set_blocking(self.dev_r, False)
        self.buf = bytearray(BUFFER_SIZE)
        self.lost: list[int] = []

    def host(self, port: int | None = None) -> Host:
        return Host(self.subnet, self.ip, "wireguard", self.public, port)

    def learn(self, other: Side, port: int | None = None) -> None:
        host = other.host(port)
        peer = self.transport.destination(host)
        self.router.add_route(host.subnet, host.public_ip, peer)

    def start(self) -> None:
        # the device writer over the pipe: the plain (non-vnet) path, one write per packet
        dev = SimpleNamespace(vnet_hdr=False, offload_flags=0,
                              write=functools.partial(os.write, self.dev_w),
                              writev=functools.partial(os.writev, self.dev_w))  # fmt: skip
        self.transport.attach(self.router, DeviceWriter(dev, 0, False, self.lost.append),
                              FakeLoop())  # fmt: skip

    def send_packet(self, src: str, dst: str, now: float = 1.0) -> int:
        packet = ipv4_packet(src, dst)
        self.buf[HEADROOM : HEADROOM + len(packet)] = packet
        dest = self.router.outbound(self.buf, HEADROOM, len(packet), now)
        sent = self.transport.send(memoryview(self.buf), len(packet), dest, now)
        self.transport.flush(now)
        return sent

    def device_packets(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(os.read(self.dev_r, 65536))
            except BlockingIOError:
                return out

    def close(self) -> None:
        self.transport.close()
        os.close(self.dev_r)
        os.close(self.dev_w)


def ipv4_packet(src: str, dst: str, ttl: int = 64) -> bytes:
    """A 20-byte IPv4 header (checksummed) + 8 bytes of ICMP echo."""
    s, d = (bytes(int(x) for x in a.split(".")) for a in (src, dst))
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 1, 0, ttl, 1, 0, s, d))
    total = sum(struct.unpack("!10H", header))
    total = (total & 0xFFFF) + (total >> 16)
    struct.pack_into("!H", header, 10, ~total & 0xFFFF)
    return bytes(header) + bytes([8, 0, 0xF7, 0xFF, 0, 0, 0, 0])


def deliver(src: Side, dst: Side) -> int:
    """Move src's sent datagrams into dst's inbox (as from src.ip:51820); handle them."""
    count = len(src.sock.sent)
    for data, addr in src.sock.sent:
        assert addr == (dst.ip, 51820)
        dst.sock.inbox.append((data, (src.ip, 51820)))
    src.sock.sent.clear()
    dst.transport.on_readable()
    return count


@pytest.fixture
def pair():
    a, b = Side(1), Side(2)
    a.learn(b)
    b.learn(a)
    a.start()
    b.start()
    yield a, b
    a.close()
    b.close()


def handshake(a: Side, b: Side) -> None:
    assert a.send_packet("10.5.1.0", "10.5.2.0") == 0  # staged; initiation queued
    assert [d[0][0] for d in a.sock.sent] == [1]
    deliver(a, b)  # -> response
    assert [d[0][0] for d in b.sock.sent] == [2]
    deliver(b, a)  # -> the staged packet, sealed
    assert [d[0][0] for d in a.sock.sent] == [4]
    deliver(a, b)


def test_first_packet_waits_for_the_handshake_then_arrives(pair) -> None:
    a, b = pair
    handshake(a, b)
    (got,) = b.device_packets()
    assert got[12:20] == bytes([10, 5, 1, 0, 10, 5, 2, 0])
    assert got[8] == 62  # TTL decremented leaving a and entering b (flannel's rule)
    # then both ways without staging
    assert b.send_packet("10.5.2.0", "10.5.1.0") == 1
    data, _ = b.sock.sent[0]
    assert data[0] == 4 and len(data) == 16 + 32 + 16  # 28 bytes padded to 32
    deliver(b, a)
    assert len(a.device_packets()) == 1
    assert a.counters.rx_packets == 1 and b.counters.rx_packets == 1
    assert not any(a.counters.rx_dropped) and not any(b.counters.rx_dropped)


def test_inner_source_outside_the_senders_subnet_is_dropped(pair) -> None:
    a, b = pair
    handshake(a, b)
    b.device_packets()
    # b seals a packet claiming a source in a subnet nobody (or a itself) owns
    for spoofed in ("10.5.9.9", "10.5.1.7"):
        assert b.send_packet(spoofed, "10.5.1.0") == 1
        deliver(b, a)
    assert a.device_packets() == []
    reasons = a.counters.as_dict()["rx_dropped"]
    assert reasons["not_allowed_source"] == 2  # type: ignore[index]
    assert sum(a.counters.rx_dropped) == 2


def test_peers_follow_registry_changes(pair) -> None:
    a, b = pair
    handshake(a, b)
    peer = a.transport.iface.peer(b.public)
    moved = a.transport.destination(b.host(port=51999))  # new port: endpoint follows
    assert moved is peer and peer.endpoint == (b.ip, 51999)
    assert peer.keypairs.current is not None  # the session survived the update
    a.transport.destination(b.host(port=51999))
    assert a.transport.destination(Host(b.subnet, b.ip, "udp")) is None  # other backend
    assert a.transport.destination(a.host()) is None  # our own key
    a.transport.prune([b.host(port=51999)])
    assert a.transport.iface.peers == [peer]
    # a second subnet under the same key: one peer; removing the first host keeps it
    second = Host(IPv4Network("10.5.20.0/24"), "192.0.2.20", "wireguard", b.public, 51999)
    assert a.transport.destination(second) is peer
    a.transport.prune([b.host(port=51999), second])
    a.transport.prune([second])
    assert a.transport.iface.peers == [peer] and peer.user_data == second
    a.router.remove_route(b.subnet)
    a.transport.prune([])
    assert a.transport.iface.peers == []


def test_show_has_wireguard_fields_and_no_secret(pair) -> None:
    a, b = pair
    handshake(a, b)
    b.send_packet("10.5.2.0", "10.5.1.0")
    deliver(b, a)
    show = a.transport.show()
    assert show["encryption"] == "wireguard" and show["listen_port"] == 51820
    assert a.transport.backend_data()["Port"] == 51820
    route = a.transport.route_show(a.transport.iface.peer(b.public))
    assert route["endpoint"] == f"{b.ip}:51820" and route["latest_handshake"] > 0
    assert route["rx_bytes"] > 0 and route["tx_bytes"] > 0
    text = repr(show) + repr(route)
    assert encode_key(a.private) not in text and a.private.hex() not in text
    assert a.transport.route_show((b.ip, 8285)) == {}


def test_counters_keep_overlay_reasons_and_add_the_cores() -> None:
    rx, tx = WireguardTransport.rx_reasons, WireguardTransport.tx_reasons
    assert [m.name for m in rx][: len(OverlayRxDrop)] == [m.name for m in OverlayRxDrop]
    assert [m.name for m in rx][len(OverlayRxDrop) :] == [m.name for m in WgDrop]
    assert len(tx) == len(OverlayTxDrop) + len(WgDrop)
    counts = [0] * len(rx)
    view = OffsetCounts(counts, len(OverlayRxDrop))
    view[WgDrop.REPLAY] += 1
    assert counts[rx.REPLAY] == 1 and len(view) == len(WgDrop)
    plain = Counters(OverlayRxDrop, OverlayTxDrop)
    plain.rx_packets, plain.rx_dropped[OverlayRxDrop.TRUNCATED] = 5, 3
    wg = Counters(rx, tx)
    _carry_over(plain, wg)  # a rebuild from encryption "none" keeps the counts
    assert wg.rx_packets == 5 and wg.rx_dropped[rx.TRUNCATED] == 3
    assert OVERHEAD_V4 == 60
