"""The VXLAN data plane: a tap device <-> RFC 7348 over UDP, with a bridge-style FDB.

Hot path (DESIGN.md): the tap fd and the UDP socket are readers on the loop; each
wake-up drains at most BATCH packets into one preallocated buffer per direction.
A frame is read at HEADROOM so the core writes the 8-byte VXLAN header in place
in front of it; a datagram is decapsulated by writing the slice after the header
to the tap. Nothing per packet logs, raises or builds a bytes object.

Outer source ports: like the kernel (udp_flow_src_port), the source port follows
the inner flow. Userspace cannot pick a source port per datagram on one socket,
so the link binds TX_PORTS sockets to ephemeral ports on `local` and the flow
hash picks one: same flow, same port; different flows spread over the set.
Received traffic always arrives on the one socket bound to local:port.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import socket
from typing import Any

from tunneld.kernel.tun import TunDevice
from tunneld.kernel.udp import open_udp
from tunneld.links.base import Link
from tunneld.proto.counters import Counters
from tunneld.proto.fdb import Fdb
from tunneld.proto.vxlan import FLOOD, VXLAN_LEN, VxlanDrop, VxlanPort, VxlanTxDrop
from tunneld.runtime.deadlines import DeadlineTimer

log = logging.getLogger("tunneld.vxlan")

HEADROOM = 16  # WireGuard needs 16; VXLAN writes into the last 8
BUFFER_SIZE = 65536
BATCH = 64
TX_PORTS = 16
OVERHEAD_V4 = 20 + 8 + VXLAN_LEN + 14  # outer IPv4 + UDP + VXLAN + inner Ethernet
OVERHEAD_V6 = 40 + 8 + VXLAN_LEN + 14
_SEND_ERRORS = {
    errno.ENOBUFS: VxlanTxDrop.SEND_BUFFER_FULL,
    errno.EAGAIN: VxlanTxDrop.SEND_BUFFER_FULL,
    errno.ENETUNREACH: VxlanTxDrop.UNREACHABLE,
    errno.EHOSTUNREACH: VxlanTxDrop.UNREACHABLE,
    errno.ECONNREFUSED: VxlanTxDrop.UNREACHABLE,
}
LIVE_FIELDS = ("fdb", "flood", "ageing", "learning")  # applied by SIGHUP without a rebuild


def mac_bytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


class VxlanLink(Link):
    type_name = "vxlan"

    def __init__(self, cfg: Any, loop: Any, counters: Counters | None = None) -> None:
        super().__init__(cfg, loop, counters)
        self.counters = counters or Counters(VxlanDrop, VxlanTxDrop)
        self.dev: TunDevice | None = None
        self.rx_sock: socket.socket | None = None
        self.tx_socks: list[socket.socket] = []
        self.mtu = 0

    async def start(self) -> None:
        cfg = self.cfg
        self.mtu = cfg.mtu or self._default_mtu()
        self.fdb = Fdb(float(cfg.ageing))
        self._apply_tables(cfg)
        self.port = VxlanPort(cfg.vni, self.fdb, self.counters, self.mtu, cfg.learning)
        self._timer = DeadlineTimer(self.loop, self._on_deadline)
        try:
            local = str(cfg.local)
            self.rx_sock = open_udp(local, cfg.port)
            self.tx_socks = [open_udp(local, 0) for _ in range(TX_PORTS)]
            self.dev = self.open_device(cfg.name, "tap")
            self.netlink.configure_link(self.dev.name, self.mtu, cfg.address)
            if cfg.bridge:
                self.netlink.enslave(self.dev.name, cfg.bridge)
        except BaseException:
            self._close()
            raise
        self._setup_buffers()
        self.watch(self.dev.fd, self._on_tap_readable)
        self.watch(self.rx_sock.fileno(), self._on_udp_readable)

    def _default_mtu(self) -> int:
        underlay = self.netlink.link_mtu_for_address(str(self.cfg.local)) or 1500
        return underlay - (OVERHEAD_V6 if self.cfg.local.version == 6 else OVERHEAD_V4)

    def _apply_tables(self, cfg: Any) -> None:
        self.fdb.replace_static((mac_bytes(e.mac), str(e.remote)) for e in cfg.fdb)
        self.fdb.set_flood(tuple(str(r) for r in cfg.flood))

    def _setup_buffers(self) -> None:
        self._tx_buf = memoryview(bytearray(BUFFER_SIZE))
        self._tx_read = [self._tx_buf[HEADROOM:]]  # reused readv argument: no per-read list
        self._rx_buf = bytearray(BUFFER_SIZE)
        self._rx_view = memoryview(self._rx_buf)

    def _on_tap_readable(self) -> None:
        now, readv, fd, buf, into = (
            self.loop.time(),
            os.readv,
            self.dev.fd,
            self._tx_buf,
            self._tx_read,
        )  # type: ignore[union-attr]
        encap, source_port, fdb, c = self.port.encap, self.port.source_port, self.fdb, self.counters
        socks, dport, sent = self.tx_socks, self.cfg.port, 0
        for _ in range(BATCH):
            try:
                n = readv(fd, into)
            except BlockingIOError:
                break
            except OSError:
                c.tx_dropped[VxlanTxDrop.DEVICE_ERROR] += 1
                break
            dest = encap(buf, HEADROOM, n, now)
            if dest is None:
                continue
            datagram = buf[HEADROOM - VXLAN_LEN : HEADROOM + n]
            sock = socks[source_port(buf, HEADROOM, n) % TX_PORTS]
            if dest is FLOOD:
                for remote in fdb.flood_list():
                    sent += self._send(sock, datagram, remote, dport)
            else:
                sent += self._send(sock, datagram, dest, dport)
        c.tx_packets += sent

    def _send(self, sock: socket.socket, datagram: memoryview, remote: str, dport: int) -> int:
        try:
            sock.sendto(datagram, (remote, dport))
        except OSError as exc:  # ENOBUFS, ECONNREFUSED from an earlier ICMP, unreachable...
            self.counters.tx_dropped[_SEND_ERRORS.get(exc.errno, VxlanTxDrop.SEND_ERROR)] += 1
            return 0
        self.counters.tx_bytes += len(datagram)
        return 1

    def _on_udp_readable(self) -> None:
        now, recv, buf, view = (
            self.loop.time(),
            self.rx_sock.recvfrom_into,
            self._rx_buf,
            self._rx_view,
        )  # type: ignore[union-attr]
        decap, write, fd, c = self.port.decap, os.write, self.dev.fd, self.counters  # type: ignore[union-attr]
        for _ in range(BATCH):
            try:
                n, addr = recv(buf)
            except BlockingIOError:
                break
            except OSError:  # ECONNREFUSED and friends surface here: survive, keep draining
                c.rx_dropped[VxlanDrop.SOCKET_ERROR] += 1
                continue
            inner = decap(view, n, addr[0], now)
            if inner < 0:
                continue
            try:
                write(fd, view[VXLAN_LEN : VXLAN_LEN + inner])
            except OSError:  # EIO while the device is down
                c.rx_dropped[VxlanDrop.DEVICE_WRITE_ERROR] += 1
                continue
            c.rx_packets += 1
            c.rx_bytes += n
        self._timer.arm(self.fdb.next_deadline())

    def _on_deadline(self, now: float) -> None:
        self.fdb.expire(now)
        self._timer.arm(self.fdb.next_deadline())

    def reload(self, cfg: Any) -> bool:
        same = {f: getattr(cfg, f) for f in LIVE_FIELDS}
        if dataclasses.replace(self.cfg, **same) != cfg:
            return False
        self.fdb.ageing = float(cfg.ageing)
        self.port.learning = cfg.learning
        self._apply_tables(cfg)
        self.cfg = cfg
        return True

    def show(self) -> dict[str, Any]:
        now = self.loop.time()
        self.fdb.expire(now)
        return {
            "type": "vxlan",
            "vni": self.cfg.vni,
            "port": self.cfg.port,
            "local": str(self.cfg.local),
            "mtu": self.mtu,
            "learning": self.cfg.learning,
            "ageing": self.cfg.ageing,
            "fdb": [
                {"mac": mac, "remote": str(remote), "static": static, "age": age}
                for mac, remote, static, age in self.fdb.entries(now)
            ],
            "flood": [str(r) for r in self.fdb.flood_list()],
            "counters": self.counters.as_dict(),
        }

    async def stop(self) -> None:
        self._close()

    def _close(self) -> None:
        self.unwatch_all()
        if getattr(self, "_timer", None) is not None:
            self._timer.cancel()
        for sock in [self.rx_sock, *self.tx_socks]:
            if sock is not None:
                sock.close()
        self.rx_sock, self.tx_socks = None, []
        if self.dev is not None:
            self.dev.close()  # closing the last fd removes the tap
            self.dev = None
