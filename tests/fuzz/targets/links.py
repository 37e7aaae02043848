"""Link-level fuzz target: the VXLAN link's receive callback, from the UDP socket to the tap.

What the daemon's `add_reader` callback runs (`VxlanLink._on_udp_readable`: drain_udp, the
receive arena, decap, the device writer), with the kernel seams replaced by fakes: a UDP
port that hands over the fuzzed datagrams as one receive (a GRO batch when the selector
says so) and a FakeTun whose far side the target reads. Invariant: the callback returns
(nothing escapes it), every datagram is either written to the tap (one frame each, the
decapsulated bytes, in order) or counted under one VxlanDrop (fdb_full counts a frame that
is still written), and the FDB stays within max_learned.
"""

from __future__ import annotations

import asyncio
from ipaddress import ip_address
from typing import Any

from tunneld.config import VxlanConfig
from tunneld.kernel.fakes import FakeNetlink
from tunneld.kernel.tun import FakeTun
from tunneld.kernel.udp import FakeUdpPort
from tunneld.links.vxlan import VxlanLink
from tunneld.proto.counters import Counters
from tunneld.proto.fdb import Fdb
from tunneld.proto.vxlan import VxlanDrop, VxlanPort, VxlanTxDrop

from . import One
from .net import split_records

SOURCES = ("192.0.2.2", "192.0.2.3")
MAX_LEARNED = 4


class QueuedPort(FakeUdpPort):
    """A receive port that returns queued (datagram, source, gro size) once each."""

    def __init__(self, gro: bool) -> None:
        super().__init__(gso=gro, gro=gro)
        self.queue: list[tuple[bytes, Any, int]] = []
        self.truncated = 0

    def recv_gro(self, iov: list[memoryview]) -> tuple[int, Any, int]:
        if not self.queue:
            raise BlockingIOError
        data, addr, size = self.queue.pop(0)
        room = len(iov[0])
        if len(data) > room:  # what UdpPort.recv_gro reports for MSG_TRUNC
            iov[0][:room] = data[:room]
            self.truncated += 1
            return -1, addr, 0
        iov[0][: len(data)] = data
        return len(data), addr, size

    def recvfrom_into(self, buf: Any) -> tuple[int, Any]:
        n, addr, _ = self.recv_gro([buf])
        return n, addr


def _link(loop: asyncio.AbstractEventLoop, gro: bool) -> VxlanLink:
    cfg = VxlanConfig(
        name="fuzz0",
        vni=42,
        local=ip_address("192.0.2.1"),
        port=4789,
        flood=(ip_address(SOURCES[0]),),
        max_learned=MAX_LEARNED,
        offload=False,
    )
    link = VxlanLink(cfg, loop, Counters(VxlanDrop, VxlanTxDrop))
    link.netlink = FakeNetlink()  # type: ignore[misc]
    link.mtu = 1450
    link.fdb = Fdb(300.0, MAX_LEARNED)
    link._apply_tables(cfg)
    link.port = VxlanPort(42, link.fdb, link.counters, link.mtu, True)
    link._timer = type("NoTimer", (), {"arm": lambda self, t: None})()
    link.rx_port = QueuedPort(gro)  # type: ignore[assignment]
    link.dev = FakeTun("fuzz0", "tap")
    link.dev.peer.setblocking(False)
    link._setup_buffers()
    return link


def _frames(dev: FakeTun) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(dev.peer.recv(70000))
        except BlockingIOError:
            return out


def make_vxlan_link() -> One:
    """Selector (bit 0: one GRO batch, else one receive per datagram; bit 1: source), then
    length-prefixed datagrams (at most 16)."""
    loop = asyncio.new_event_loop()
    links = {gro: _link(loop, gro) for gro in (False, True)}

    def one(data: bytes) -> None:
        if not data:
            return
        gro = bool(data[0] & 1)
        addr = (SOURCES[data[0] >> 1 & 1], 4789)
        records = [r for r in split_records(data[1:])[:16]]
        link = links[gro]
        port: QueuedPort = link.rx_port  # type: ignore[assignment]
        if gro and records and records[0]:
            size = len(records[0])
            body = [r[:size].ljust(size, b"\0") for r in records[:-1]] + [records[-1][:size]]
            datagrams = [d for d in body if d] if len(records) > 1 else records  # no empty tail
            port.queue.append((b"".join(datagrams), addr, size))
        else:
            datagrams = records
            port.queue.extend((r, addr, 0) for r in records)
        c = link.counters
        packets, drops, full = c.rx_packets, sum(c.rx_dropped), c.rx_dropped[VxlanDrop.FDB_FULL]
        truncated = port.truncated
        link._on_udp_readable()
        if gro and port.truncated > truncated:  # a batch past the buffer: one counted drop
            datagrams = datagrams[:1]
        written = _frames(link.dev)  # type: ignore[arg-type]
        delivered = c.rx_packets - packets
        assert len(written) == delivered
        counted = sum(c.rx_dropped) - drops
        full = c.rx_dropped[VxlanDrop.FDB_FULL] - full
        assert delivered + counted - full == len(datagrams) or (not datagrams and counted == 0), (
            delivered,
            counted,
            len(datagrams),
        )
        expected = [d[8:] for d in datagrams if len(d) >= 22]
        assert all(frame in expected for frame in written)
        assert link.fdb.learned <= MAX_LEARNED
        if link.fdb.learned == MAX_LEARNED:  # start over: a full table would mask learning
            link.dev.close()  # type: ignore[union-attr]
            links[gro] = _link(loop, gro)

    return one
