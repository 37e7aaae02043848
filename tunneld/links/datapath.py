"""The pieces every data plane's hot path shares: receive arena, device writer, send errors.

Offload pipeline (DESIGN.md). Outbound, a link reads one packet, or on a vnet_hdr queue one
super-packet with its virtio_net_hdr, splits it with `proto.gso.Segmenter` into wire-sized
packets laid out back to back at a fixed stride in the link's segment buffer, encapsulates or
seals each in place and sends the run with one `UdpPort.send_run` (UDP GSO). Inbound,
`RxArena` keeps a whole batch of received datagrams (GRO batches included) in one buffer, so
the `DeviceWriter` can coalesce packets of one flow (`proto.gso.Coalescer`) and hand the kernel
one super-packet per flow with a gather write, no payload copied, when the batch ends.

Without offload (a queue without vnet_hdr: `offload = false`, or FakeTun in tests) the same
classes degrade to one device write per packet and one sendto per datagram.
"""

from __future__ import annotations

import errno
import functools
import time
from collections.abc import Callable
from typing import Any

from tunneld import native
from tunneld.kernel.linux_abi import TUN_F_USO4, TUN_F_USO6, VNET_HDR_LEN
from tunneld.kernel.tun import describe_offload
from tunneld.proto import gso

BATCH = 64  # packets (or super-packets) handled per readiness callback
READ_SIZE = 65536 + VNET_HDR_LEN  # the largest read from a device or a socket
RX_ARENA_SIZE = 1 << 20  # one batch of received datagrams, coalesced before it is reused
SEGMENT_BUFFER_SIZE = 512 * 1024  # a 64 KB super-packet split into up to MAX_SEGMENTS
# TCP's smallest MSS (tcp_min_snd_mss, 48) splits 64 KB into 1366 segments: split them all
# (the worst case, IPv6 + 40 bytes of options sealed for WireGuard, still fits in 512 KB).
MAX_SEGMENTS = 1400
# A read from a vnet_hdr device: the 10-byte header, then up to 65535 bytes of IP packet
# (+ 18 of Ethernet and VLAN on a tap). TX_BUFFER_SIZE holds that with 16 bytes of headroom
# and 32 of tailroom, so no super-packet is ever cut short by the read.
MAX_DEVICE_PACKET = 65535 + 18
TX_BUFFER_SIZE = 16 + VNET_HDR_LEN + MAX_DEVICE_PACKET + 32 + 64
# Packets the coalescer holds per flush; `crowded()` asks for a flush once fewer than
# CROWD_MARGIN places are left, more than one receive can bring (GRO: 64 segments, a local
# GSO sender handed over whole: UDP_MAX_SEGMENTS, 128).
COALESCE_PACKETS = 4096
CROWD_MARGIN = 256

# The `now` of the WireGuard and overlay links: CLOCK_BOOTTIME seconds, as the kernel's
# WireGuard (a suspended host does not keep stale session keys).
boottime = functools.partial(time.clock_gettime, time.CLOCK_BOOTTIME)

SEND_FULL = frozenset((errno.ENOBUFS, errno.EAGAIN))
SEND_UNREACHABLE = frozenset(
    (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ECONNREFUSED, errno.EADDRNOTAVAIL)
)


def send_reason(err: int, full: int, unreachable: int, other: int) -> int:
    """The drop reason for a failed send: buffer full, unreachable, or anything else."""
    if err in SEND_FULL:
        return full
    if err in SEND_UNREACHABLE:
        return unreachable
    return other


class RxArena:
    """One receive buffer for a whole batch: datagram after datagram, 16-byte aligned.

    `iov()` is where the next receive goes (a reused one-element list while the position is
    unchanged); after receiving n bytes at `pos`, `advance(n)` moves on and returns False
    when the next receive might not fit: then the owner flushes its writer and `reset()`s.
    """

    __slots__ = ("buf", "view", "pos", "_iov", "_iov_pos")

    def __init__(self, size: int = RX_ARENA_SIZE) -> None:
        self.buf = bytearray(size + READ_SIZE)
        self.view = memoryview(self.buf)
        self.pos = 0
        self._iov = [self.view[:READ_SIZE]]
        self._iov_pos = 0

    def iov(self) -> list[memoryview]:
        if self._iov_pos != self.pos:
            self._iov = [self.view[self.pos : self.pos + READ_SIZE]]
            self._iov_pos = self.pos
        return self._iov

    def advance(self, n: int) -> bool:
        self.pos += (n + 15) & ~15
        return self.pos + READ_SIZE <= len(self.buf)

    def reset(self) -> None:
        self.pos = 0


class DeviceWriter:
    """Writes what a link decapsulated to its device, counting failed writes.

    On a vnet_hdr queue, `put` queues the packet in the coalescer (the buffer must stay
    unchanged until `flush`); otherwise it writes at once. `verify`: check inner TCP/UDP
    checksums before merging (see proto/gso.py: False only where an AEAD authenticated the
    packet). `on_error(count)` is told how many packets a failed write lost.
    """

    def __init__(self, dev: Any, l2_len: int, verify: bool, on_error: Callable[[int], None],
                 ) -> None:  # fmt: skip
        self.on_error = on_error
        self.vnet = bool(dev.vnet_hdr)
        udp = bool(dev.offload_flags & (TUN_F_USO4 | TUN_F_USO6))
        self.coalescer = gso.Coalescer(l2_len, verify, udp, COALESCE_PACKETS) if self.vnet else None
        self.writes = 0  # device writes (a merged super-packet counts once)
        self._write = dev.write
        self._writev = dev.writev
        self.put: Callable[[memoryview, int, int], None] = (
            self.coalescer.add if self.coalescer is not None else self._put_plain
        )

    def _put_plain(self, buf: memoryview, off: int, n: int) -> None:
        try:
            self._write(buf[off : off + n])
        except OSError:  # EIO while the device is down
            self.on_error(1)
            return
        self.writes += 1

    def crowded(self) -> bool:
        """True when the coalescer might not take one more receive: flush first."""
        c = self.coalescer
        return c is not None and c.pending > COALESCE_PACKETS - CROWD_MARGIN

    def flush(self) -> None:
        if self.coalescer is not None:
            self.writes += self.coalescer.flush(self._gather_write)

    def _gather_write(self, views: list[memoryview]) -> None:
        try:
            self._writev(views)
        except OSError:
            self.on_error(max(1, len(views) - 1))


Handle = Callable[[int, int, int, Any, float], None]


def drain_udp(port: Any, arena: RxArena, writer: Any, handle: Handle, now: float,
              counts: list[int], socket_error: int) -> None:  # fmt: skip
    """The receive loop every data plane shares: at most BATCH receives from `port` into
    `arena`, each handed to handle(start, n, size, addr, now) (the datagrams are
    arena.view[start:start+n], `size` bytes each but the last: the GRO segment size, or n;
    n == 0: an empty datagram, n < 0: truncated); `writer` is flushed when the arena or the
    coalescer fills up, and at the end. A failed receive counts counts[socket_error]."""
    recv = port.recv_gro if port.gro else None
    recvfrom = port.recvfrom_into
    for _ in range(BATCH):
        start = arena.pos
        try:
            if recv is not None:
                n, addr, size = recv(arena.iov())
            else:
                (n, addr), size = recvfrom(arena.iov()[0]), 0
        except BlockingIOError:
            break
        except OSError:  # ECONNREFUSED after an ICMP error, and friends: survive, drain on
            counts[socket_error] += 1
            continue
        handle(start, n, size or n, addr, now)
        if not arena.advance(n) or writer.crowded():
            writer.flush()
            arena.reset()
    writer.flush()
    arena.reset()


def segmenter(dev: Any, l2_len: int, drops: list[int]) -> gso.Segmenter | None:
    """A Segmenter for a vnet_hdr queue (None for a plain one)."""
    if not dev.vnet_hdr:
        return None
    return gso.Segmenter(l2_len, drops, MAX_SEGMENTS)


def offload_show(dev: Any, ports: list[Any], seg: Any, writer: Any) -> dict[str, Any]:
    """The `offload` entry of an interface's `show`: what the kernel granted, what is in use.
    `ports`: the interface's UdpPorts (None entries skipped)."""
    live = [p for p in ports if p is not None]
    return {
        "offload": {
            "device": describe_offload(dev.offload_flags)
            if dev is not None and dev.vnet_hdr
            else "off",
            "udp_gso": any(p.gso for p in live),
            "udp_gro": any(p.gro for p in live),
            "gso_fallbacks": sum(p.gso_fallbacks for p in live),
            "native": native.IMPLEMENTATION,
            "super_packets_split": seg.super_packets if seg is not None else 0,
            "segments_sent": seg.segments if seg is not None else 0,
            "device_writes": writer.writes if writer is not None else 0,
        }
    }
