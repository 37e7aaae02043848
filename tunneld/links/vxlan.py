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

Offload (`offload = true`, the default, where the kernel grants it): the tap is a vnet_hdr
queue, so one read may be a TSO/USO super-frame. It is split (proto/gso.py) into frames no
larger than the tap MTU, laid out back to back as whole VXLAN datagrams (8-byte header +
frame) in the segment buffer, and sent with one UDP GSO send per destination: every datagram
on the wire is what a kernel vxlan peer expects. Inbound, the socket has UDP_GRO on; a
batch of datagrams (GRO batches split by their segment size) is decapsulated in the receive
arena and frames of one flow are coalesced into one tap write. Inner checksums are verified
before merging (verify=True): the outer UDP checksum of VXLAN may be zero, so only the inner
checksum vouches for the payload, and NEEDS_CSUM would otherwise bless a corrupted segment.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import Any

from tunneld.errors import SetupError
from tunneld.kernel.netlink import off_loop
from tunneld.kernel.tun import TunDevice, describe_offload
from tunneld.kernel.udp import UdpPort, open_udp
from tunneld.links import pmtu
from tunneld.links.base import HOOK_FIELDS, Link
from tunneld.links.datapath import (
    SEGMENT_BUFFER_SIZE,
    TX_BUFFER_SIZE,
    DeviceWriter,
    RxArena,
    drain_udp,
    offload_show,
    segmenter,
    send_reason,
)
from tunneld.proto.counters import Counters, OffsetCounts
from tunneld.proto.fdb import Fdb
from tunneld.proto.gso import VNET_HDR_LEN
from tunneld.proto.vxlan import (
    FLOOD,
    GSO_TX_REASONS,
    I_FLAG_WORD,
    VXLAN_HDR,
    VXLAN_LEN,
    VxlanDrop,
    VxlanPort,
    VxlanTxDrop,
)
from tunneld.runtime.deadlines import DeadlineTimer

log = logging.getLogger("tunneld.vxlan")

HEADROOM = 16  # WireGuard needs 16; VXLAN writes into the last 8
BUFFER_SIZE = TX_BUFFER_SIZE
BATCH = 64
TX_PORTS = 16
OVERHEAD_V4 = 20 + 8 + VXLAN_LEN + 14  # outer IPv4 + UDP + VXLAN + inner Ethernet
OVERHEAD_V6 = 40 + 8 + VXLAN_LEN + 14
# applied by SIGHUP without a rebuild
LIVE_FIELDS = ("fdb", "flood", "ageing", "learning", "max_learned", *HOOK_FIELDS)


def mac_bytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def device_mac(name: str, vni: int, local: str) -> str:
    """The tap's MAC: locally administered unicast, derived from the device name, VNI and
    underlay address, so a restarted daemon (its tap is new) keeps the address its peers'
    ARP/ND caches and FDBs hold. A random MAC, the kernel's default, left a peer sending to
    the old one until its neighbour entry failed (43 s here, tests/netns/test_faults.py)."""
    digest = hashlib.sha256(f"tunneld-vxlan/{name}/{vni}/{local}".encode()).digest()
    octets = bytes([(digest[0] & 0xFC) | 0x02]) + digest[1:6]  # unicast, locally administered
    return ":".join(f"{b:02x}" for b in octets)


class VxlanLink(Link):
    type_name = "vxlan"

    def __init__(self, cfg: Any, loop: Any, counters: Counters | None = None) -> None:
        super().__init__(cfg, loop, counters)
        self.counters = counters or Counters(VxlanDrop, VxlanTxDrop)
        self.dev: TunDevice | None = None
        self.rx_port: UdpPort | None = None
        self.tx_ports: list[UdpPort] = []
        self.mtu = 0
        self.mtu_source = "config"
        self.bridge_addresses: list[Any] = []  # `address` put on `bridge` by start()

    async def start(self) -> None:
        cfg = self.cfg
        self.mtu = cfg.mtu or await off_loop(self._default_mtu)
        self.fdb = Fdb(float(cfg.ageing), cfg.max_learned)
        self._apply_tables(cfg)
        self.port = VxlanPort(cfg.vni, self.fdb, self.counters, self.mtu, cfg.learning)
        self._timer = DeadlineTimer(self.loop, self._on_deadline)
        try:
            local, offload = str(cfg.local), cfg.offload
            self.rx_port = UdpPort(open_udp(local, cfg.port), gso=offload, gro=offload)
            self.tx_ports = [UdpPort(open_udp(local, 0), gso=offload) for _ in range(TX_PORTS)]
            self.dev = self.open_device(cfg.name, "tap", offload=offload)
            mac = device_mac(cfg.name, cfg.vni, local)
            await off_loop(self.netlink.set_mac, self.dev.name, mac)
            # with a bridge, `address` is the bridge's: what the bridge receives never
            # reaches a port's own addresses (it is the LAN's gateway, masquerade's source)
            own = () if cfg.bridge else cfg.address
            await off_loop(self.netlink.configure_link, self.dev.name, self.mtu, own)
            if cfg.bridge:
                await off_loop(self.netlink.enslave, self.dev.name, cfg.bridge)
                self.bridge_addresses = await off_loop(self.netlink.add_addresses, cfg.bridge,
                                                       cfg.address)  # fmt: skip
        except BaseException:
            await off_loop(self._release_bridge)
            self._close()
            raise
        self._setup_buffers()
        self.watch(self.dev.fd, self._on_tap_readable)
        self.watch(self.rx_port.fileno(), self._on_udp_readable)
        if offload:
            log.info("%s: offload %s, UDP GRO %s", self.name,
                     describe_offload(self.dev.offload_flags) if self.dev.vnet_hdr else "refused",
                     "on" if self.rx_port.gro else "off")  # fmt: skip

    def _default_mtu(self) -> int:
        mtu, self.mtu_source = pmtu.underlay_default_mtu(self.cfg, self.netlink)
        return mtu

    def _apply_tables(self, cfg: Any) -> None:
        self.fdb.replace_static((mac_bytes(e.mac), str(e.remote)) for e in cfg.fdb)
        self.fdb.set_flood(tuple(str(r) for r in cfg.flood))

    def _setup_buffers(self) -> None:
        dev, c = self.dev, self.counters
        assert dev is not None
        vnet = VNET_HDR_LEN if dev.vnet_hdr else 0
        self._tx_buf = memoryview(bytearray(BUFFER_SIZE))
        self._tx_read = [self._tx_buf[HEADROOM - vnet :]]  # reused readv argument
        self._segmenter = segmenter(dev, 14, OffsetCounts(c.tx_dropped, GSO_TX_REASONS))  # type: ignore[arg-type]
        self._seg_buf = memoryview(bytearray(SEGMENT_BUFFER_SIZE)) if vnet else self._tx_buf
        self._arena = RxArena()
        self._writer = DeviceWriter(dev, 14, True, self._on_write_error)
        self._too_big = pmtu.TooBig(dev, 14, "vxlan", c.tx_dropped, VxlanTxDrop.PACKET_TOO_BIG,
                                    str(self.cfg.local))  # fmt: skip
        self.mss = pmtu.mss_limits(self.cfg.mss_clamp, self.mtu)
        if self.mss is not None:  # off: the plain methods, no per-packet check
            self._writer.put = pmtu.clamping_put(self._writer.put, 14, self.mss)
            self._send_frame = self._clamped_sender(self._send_frame, self.mss)  # type: ignore[method-assign]

    @staticmethod
    def _clamped_sender(send: Any, limits: tuple[int, int]) -> Any:
        clamp = pmtu.clamping_put(lambda buf, off, n: None, 14, limits)

        def send_frame(buf: memoryview, off: int, n: int, now: float) -> None:
            clamp(buf, off, n)
            send(buf, off, n, now)

        return send_frame

    def _on_write_error(self, count: int) -> None:
        self.counters.rx_dropped[VxlanDrop.DEVICE_WRITE_ERROR] += count
        self.counters.rx_packets -= count  # counted when queued; they never reached the tap

    # --- transmit: tap -> UDP ------------------------------------------------------------

    def _on_tap_readable(self) -> None:
        now, readv, buf, into = self.loop.time(), self.dev.readv, self._tx_buf, self._tx_read  # type: ignore[union-attr]
        seg, c = self._segmenter, self.counters
        for _ in range(BATCH):
            try:
                n = readv(into)
            except BlockingIOError:
                break
            except OSError:
                c.tx_dropped[VxlanTxDrop.DEVICE_ERROR] += 1
                break
            if seg is None:
                self._send_frame(buf, HEADROOM, n, now)
            elif seg.prepare(buf, HEADROOM - VNET_HDR_LEN, n):
                if seg.in_place:
                    self._send_frame(buf, HEADROOM, n - VNET_HDR_LEN, now)
                else:
                    self._send_segments(seg, now)

    def _send_frame(self, buf: memoryview, off: int, n: int, now: float) -> None:
        """One frame at buf[off:off+n] (off >= 8): header in front, one datagram per remote."""
        dest = self.port.encap(buf, off, n, now)
        if dest is None:
            return
        datagram = buf[off - VXLAN_LEN : off + n]
        port = self.tx_ports[self.port.source_port(buf, off, n) % TX_PORTS]
        self._send_run(port, datagram, len(datagram), dest, 1)

    def _send_segments(self, seg: Any, now: float) -> None:
        """A super-frame split into whole datagrams at a stride of 8 + seg_len, one GSO run."""
        out, count, stride = self._seg_buf, seg.count, VXLAN_LEN + seg.seg_len
        seg.write(out, VXLAN_LEN, stride)
        encap = self.port.encap
        dest = encap(out, VXLAN_LEN, seg.seg_len, now)  # the first frame decides for all
        if dest is None:  # rare: let each frame count its own reason
            for i in range(1, count):
                encap(out, i * stride + VXLAN_LEN, seg.last_len if i == count - 1 else
                      seg.seg_len, now)  # fmt: skip
            return
        pack, vni_word = VXLAN_HDR.pack_into, self.cfg.vni << 8
        for i in range(1, count):
            pack(out, i * stride, I_FLAG_WORD, vni_word)
        total = (count - 1) * stride + VXLAN_LEN + seg.last_len
        port = self.tx_ports[self.port.source_port(out, VXLAN_LEN, seg.seg_len) % TX_PORTS]
        self._send_run(port, out[:total], stride, dest, count)

    def _send_run(self, port: UdpPort, data: memoryview, stride: int, dest: Any,
                  count: int) -> None:  # fmt: skip
        c, dport = self.counters, self.cfg.port
        for remote in self.fdb.flood_list() if dest is FLOOD else (dest,):
            sent = port.send_run(data, stride, (remote, dport))
            c.tx_packets += sent
            c.tx_bytes += len(data) if sent == count else sent * stride
            if sent < count:
                if port.last_errno == pmtu.EMSGSIZE:  # the frame at data[8:] (a run's first)
                    frame_len = min(stride, len(data)) - VXLAN_LEN
                    self._too_big.reply(data, VXLAN_LEN, frame_len, (remote, dport),
                                        self.loop.time(), count - sent)  # fmt: skip
                    continue
                reason = send_reason(port.last_errno, VxlanTxDrop.SEND_BUFFER_FULL,
                                     VxlanTxDrop.UNREACHABLE, VxlanTxDrop.SEND_ERROR)  # fmt: skip
                c.tx_dropped[reason] += count - sent

    # --- receive: UDP -> tap ------------------------------------------------------------

    def _on_udp_readable(self) -> None:
        drain_udp(self.rx_port, self._arena, self._writer, self._on_datagrams, self.loop.time(),
                  self.counters.rx_dropped, VxlanDrop.SOCKET_ERROR)  # fmt: skip
        self._timer.arm(self.fdb.next_deadline())

    def _on_datagrams(self, start: int, n: int, size: int, addr: Any, now: float) -> None:
        """One receive: a datagram, or a GRO batch of them, at arena.view[start:start+n]."""
        c = self.counters
        if n <= 0:  # empty, or truncated (MSG_TRUNC)
            c.rx_dropped[VxlanDrop.SHORT if n == 0 else VxlanDrop.OVERSIZED] += 1
            return
        decap, put, view, src = self.port.decap, self._writer.put, self._arena.view, addr[0]
        end = start + n
        for d in range(start, end, size):
            length = min(size, end - d)
            inner = decap(view[d : d + length], length, src, now)
            if inner < 0:
                continue
            put(view, d + VXLAN_LEN, inner)
            c.rx_packets += 1
            c.rx_bytes += length

    def _on_deadline(self, now: float) -> None:
        self.fdb.expire(now)
        self._timer.arm(self.fdb.next_deadline())

    def prepare_reload(self, cfg: Any) -> Any | None:
        """The plan is `cfg` itself, once its tables passed a scratch FDB; None: rebuild."""
        same = {f: getattr(cfg, f) for f in LIVE_FIELDS}
        if dataclasses.replace(self.cfg, **same) != cfg:
            return None
        scratch = Fdb(float(cfg.ageing))
        try:
            scratch.replace_static((mac_bytes(e.mac), str(e.remote)) for e in cfg.fdb)
            scratch.set_flood(tuple(str(r) for r in cfg.flood))
        except ValueError as exc:
            raise SetupError(f"{self.name}: {exc}") from None
        return cfg

    @classmethod
    async def check_rebuild(cls, cfg: Any) -> None:
        """The bridge to enslave to exists, before the running link goes."""
        if cfg.bridge and not await off_loop(cls.netlink.link_exists, cfg.bridge):
            raise SetupError(f"bridge {cfg.bridge} for {cfg.name}: not found; create it first")

    def commit_reload(self, plan: Any) -> None:
        cfg = plan
        self.fdb.ageing = float(cfg.ageing)  # also re-ages what was learned (fdb.py)
        self.fdb.max_learned = cfg.max_learned  # a lower bound evicts nothing (fdb.py)
        self.port.learning = cfg.learning
        self._apply_tables(cfg)
        self.cfg = cfg
        if getattr(self, "_timer", None) is not None:
            self._timer.arm(self.fdb.next_deadline())  # a lowered ageing expires sooner

    def show(self) -> dict[str, Any]:
        now = self.loop.time()
        self.fdb.expire(now)
        return {
            "type": "vxlan",
            "vni": self.cfg.vni,
            "port": self.cfg.port,
            "local": str(self.cfg.local),
            "mtu": self.mtu,
            "mtu_source": self.mtu_source,
            "mss_clamp": list(self.mss) if getattr(self, "mss", None) else None,
            "learning": self.cfg.learning,
            "ageing": self.cfg.ageing,
            "max_learned": self.cfg.max_learned,
            "fdb_learned": self.fdb.learned,
            "fdb": [
                {"mac": mac, "remote": str(remote), "static": static, "age": age}
                for mac, remote, static, age in self.fdb.entries(now)
            ],
            "flood": [str(r) for r in self.fdb.flood_list()],
            "counters": self.counters.as_dict(),
            **(self._too_big.show() if hasattr(self, "_too_big") else {}),
            **offload_show(
                self.dev,
                [self.rx_port, *self.tx_ports],
                getattr(self, "_segmenter", None),
                getattr(self, "_writer", None),
            ),  # fmt: skip
        }

    async def stop(self) -> None:
        await off_loop(self._release_bridge)
        self._close()

    def _release_bridge(self) -> None:
        """Take back the addresses start() put on the bridge (not the ones it had)."""
        added, self.bridge_addresses = self.bridge_addresses, []
        if added:
            try:
                self.netlink.remove_addresses(self.cfg.bridge, added)
            except Exception as exc:  # stop must not raise: the bridge keeps them
                log.warning("%s: remove %s from %s: %s", self.name, added, self.cfg.bridge, exc)

    def _close(self) -> None:
        self.unwatch_all()
        if getattr(self, "_timer", None) is not None:
            self._timer.cancel()
        for port in [self.rx_port, *self.tx_ports]:
            if port is not None:
                port.close()
        self.rx_port, self.tx_ports = None, []
        if self.dev is not None:
            self.dev.close()  # closing the last fd removes the tap
            self.dev = None
