"""The WireGuard port: the plumbing the WireGuard link and the overlay's WireGuard transport share.

Spec: the WireGuard whitepaper and wireguard.com/protocol; the protocol is the sans-IO core in
tunneld/proto/wg (interface.py documents the calling contract). This module moves bytes between
that core, the UDP sockets and the owner's device writer, and nothing else.

Theory of operation. A `WireguardPort` owns the UDP sockets (IPv4, and IPv6 when the owner
asks), the core's actions and its one DeadlineTimer. The owner keeps the device and the
routing (cryptokey routing for the link, the overlay router for the transport) and calls:
* `send_packet(peer, buf, off, n, now)`: one inner packet at buf[off+16:off+16+n], sealed in
  place and sent (the plain path, and GSO_NONE reads on the offload path);
* `send_segments(peer, seg, now)`: a prepared super-packet (proto.gso.Segmenter) split
  straight into the segment buffer at a stride of 32 + padded length, sealed as one run
  (`Interface.seal_run`, one native call) and sent as one UDP GSO run to the peer;
* `after_batch(now)`: once per batch, sends what the core queued and re-arms the timer.
Inbound, `on_readable(port)` drains the socket into the receive arena; every GRO batch (or
single datagram) goes through `Interface.receive_run`, which opens runs of one keypair in one
call, and each inner packet is handed to `deliver(peer, view, off, n)`, which the owner points
at its device writer (coalescing on a vnet_hdr queue: verify=False, since the AEAD
authenticated exactly what the peer's kernel produced; the kernel's WireGuard likewise marks
decrypted packets CHECKSUM_UNNECESSARY).

Time: the core's `now` is CLOCK_BOOTTIME seconds (a suspended host does not keep stale keys);
the DeadlineTimer runs in the loop's clock, so a deadline becomes
loop.time() + (deadline - boot_now); it is re-armed only when the earliest deadline moves
earlier (an early wake-up is harmless: on_deadline returns []).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from tunneld.kernel.udp import UdpPort
from tunneld.links.datapath import SEGMENT_BUFFER_SIZE, RxArena, boottime, drain_udp, send_reason
from tunneld.links.pmtu import EMSGSIZE
from tunneld.proto.frames import packet_length
from tunneld.proto.wg import (
    EndpointChanged,
    HandshakeGaveUp,
    Interface,
    KeypairInstalled,
    KeysZeroed,
    Peer,
    SendDatagram,
    encode_key,
)
from tunneld.runtime.deadlines import DeadlineTimer

log = logging.getLogger("tunneld.wireguard")

Deliver = Callable[[Peer, memoryview, int, int], None]


def peer_id(public_key: bytes) -> str:
    return encode_key(public_key)[:8] + "…"


def _event(iface: str, event: str, public_key: bytes) -> dict[str, str]:
    """The key=value fields of a peer's log line (runtime/logs.py)."""
    return {"iface": iface, "event": event, "peer": encode_key(public_key)}


def format_endpoint(endpoint: Any) -> str | None:
    if endpoint is None:
        return None
    if len(endpoint) == 2:
        return f"{endpoint[0]}:{endpoint[1]}"
    if len(endpoint) == 4 and endpoint[3]:  # a scoped (link-local) address, as wg(8) shows it
        try:
            return f"[{endpoint[0]}%{socket.if_indextoname(endpoint[3])}]:{endpoint[1]}"
        except OSError:  # the interface went away
            return f"[{endpoint[0]}%{endpoint[3]}]:{endpoint[1]}"
    return f"[{endpoint[0]}]:{endpoint[1]}"


class WireguardPort:
    """See the module docstring. `reasons` maps the port's own drop kinds to the owner's
    counter indices: keys "full", "unreachable", "send_error" (tx) and "socket_error" (rx)."""

    def __init__(self, name: str, iface: Interface, loop: Any, counters: Any,
                 reasons: dict[str, int]) -> None:  # fmt: skip
        self.name, self.iface, self.loop, self.counters = name, iface, loop, counters
        self.sock4: UdpPort | None = None
        self.sock6: UdpPort | None = None
        self.deliver: Deliver | None = None
        self.seg_buf = memoryview(bytearray(0))
        self._arena = RxArena()
        self._writer: Any = None
        self._full, self._unreachable = reasons["full"], reasons["unreachable"]
        self._send_error, self._socket_error = reasons["send_error"], reasons["socket_error"]
        self._timer: DeadlineTimer | None = None
        self._armed: float | None = None  # the boot-clock deadline the timer is set for
        self.too_big: Any = None  # links.pmtu.TooBig: ICMP errors when EMSGSIZE (owner's device)

    # --- lifecycle -----------------------------------------------------------------------

    def attach(self, sock4: UdpPort | None, sock6: UdpPort | None, deliver: Deliver,
               writer: Any, offload: bool) -> None:  # fmt: skip
        """Start: packets go to `deliver` (which feeds `writer`, a DeviceWriter), and the
        writer is flushed once per received batch, or earlier when it is crowded."""
        self.sock4, self.sock6, self.deliver, self._writer = sock4, sock6, deliver, writer
        if offload:
            self.seg_buf = memoryview(bytearray(SEGMENT_BUFFER_SIZE))
        self._timer = DeadlineTimer(self.loop, self._on_deadline)

    def ports(self) -> list[UdpPort]:
        return [p for p in (self.sock4, self.sock6) if p is not None]

    def replace_ports(self, sock4: UdpPort | None, sock6: UdpPort | None) -> list[UdpPort]:
        """Send and receive on new sockets from now on (a listen port change); returns the
        old ones, which the caller unwatches and closes. Sessions and timers are kept."""
        old = self.ports()
        self.sock4, self.sock6 = sock4, sock6
        return old

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for peer in self.iface.peers:  # wipes the session keys
            self.iface.remove_peer(peer.public_key)
        for port in self.ports():
            port.close()
        self.sock4 = self.sock6 = None
        self.deliver = None

    # --- transmit -------------------------------------------------------------------------

    def _port_for(self, endpoint: Any) -> UdpPort | None:
        return self.sock4 if len(endpoint) == 2 else self.sock6

    def send_packet(self, peer: Peer, buf: memoryview, off: int, n: int, now: float) -> int:
        """Seal the inner packet at buf[off+16:off+16+n] (TAILROOM after it) and send it;
        1 if sent, 0 if staged for a handshake or dropped (counted)."""
        m = self.iface.encrypt(peer, buf, off, n, now)
        if not m:
            return 0
        port = self._port_for(peer.endpoint)
        c = self.counters
        if port is None:
            c.tx_dropped[self._unreachable] += 1
            return 0
        try:
            port.sendto(buf[off : off + m], peer.endpoint)
        except OSError as exc:
            if exc.errno == EMSGSIZE and self.too_big is not None:
                self._too_big_sealed(peer, buf, off, m, now, 1)
                return 0
            c.tx_dropped[self._send_reason(exc.errno or 0)] += 1
            return 0
        c.tx_bytes += m
        return 1

    def send_segments(self, peer: Peer, seg: Any, now: float) -> int:
        """Split a prepared super-packet into the segment buffer, seal the run, send it as one
        GSO run; returns the datagrams sent (0: staged for a handshake, or dropped)."""
        iface, out, count, c = self.iface, self.seg_buf, seg.count, self.counters
        endpoint = peer.endpoint
        port = self._port_for(endpoint) if endpoint is not None else self.sock4
        if port is None:  # before sealing: no counters spent on what cannot be sent
            c.tx_dropped[self._unreachable] += count
            return 0
        stride = 32 + iface.padded_len(seg.seg_len)
        seg.write(out, 16, stride)
        total = iface.seal_run(peer, out, 0, stride, count, seg.seg_len, seg.last_len, now)
        if not total:
            return 0
        sent = port.send_run(out[:total], stride, peer.endpoint)
        c.tx_bytes += total if sent == count else sent * stride
        if sent < count:
            if port.last_errno == EMSGSIZE and self.too_big is not None:
                self._too_big_sealed(peer, out, 0, stride, now, count - sent)
                return sent
            c.tx_dropped[self._send_reason(port.last_errno)] += count - sent
        return sent

    def _too_big_sealed(self, peer: Peer, buf: memoryview, off: int, size: int, now: float,
                        count: int) -> None:  # fmt: skip
        """`count` sealed datagrams were too big for the path (EMSGSIZE); the first is at
        buf[off:off+size]: open it again (the plaintext was sealed in place) for the ICMP
        error's quote. Exception path only."""
        too_big = self.too_big
        plain = self.iface.unseal_sent(peer, buf, off, size)
        if plain is None:
            too_big.drops[too_big.reason] += count
            return
        n = packet_length(plain, 0, len(plain)) or len(plain)
        too_big.reply(plain, 0, n, peer.endpoint, now, count)

    def _send_reason(self, err: int) -> int:
        return send_reason(err, self._full, self._unreachable, self._send_error)

    # --- receive --------------------------------------------------------------------------

    def on_readable(self, port: UdpPort) -> None:
        now = boottime()
        drain_udp(port, self._arena, self._writer, self._on_datagrams, now,
                  self.counters.rx_dropped, self._socket_error)  # fmt: skip
        self.after_batch(now)

    def _on_datagrams(self, start: int, n: int, size: int, addr: Any, now: float) -> None:
        """One receive: opened as a run by the core, each inner packet to `deliver`."""
        iface, view = self.iface, self._arena.view
        if n <= 0:  # empty: the core counts BAD_TYPE; truncated (MSG_TRUNC): ours
            if n == 0:
                iface.receive(view[start:start], addr, now, view[start:start])
            else:
                self.counters.rx_dropped[self._socket_error] += 1
            return
        count = -(-n // size)
        k = iface.receive_run(view, start, size, count, n - (count - 1) * size, addr, now)
        deliver, offsets, lengths, peers = (
            self.deliver,
            iface.rx_offsets,
            iface.rx_lengths,
            iface.rx_peers,
        )
        for j in range(k):  # the owner counts what it delivers
            deliver(peers[j], view, offsets[j], lengths[j])  # type: ignore[misc]

    # --- control plane: actions and the deadline ------------------------------------------

    def after_batch(self, now: float) -> None:
        iface = self.iface
        if iface.actions_pending:
            self._perform(iface.take_actions(now, time.time()))
        deadline = iface.next_deadline()
        if deadline is None or self._timer is None:
            return
        if self._armed is not None and self._armed <= deadline:
            return
        self._armed = deadline
        self._timer.arm(self.loop.time() + max(0.0, deadline - now))

    def _on_deadline(self, _loop_now: float) -> None:
        self._armed = None
        if self.deliver is None:
            return
        now = boottime()
        self._perform(self.iface.on_deadline(now, time.time()))
        self.after_batch(now)

    def _perform(self, actions: list[Any]) -> None:
        name = self.name
        for action in actions:
            kind = type(action)
            if kind is SendDatagram:
                self._send_control(action.data, action.endpoint)
            elif kind is KeypairInstalled:
                log.info("%s: peer %s: handshake complete (%s)", name, peer_id(action.public_key),
                         "we initiated" if action.initiator else "peer initiated",
                         extra=_event(name, "handshake", action.public_key))  # fmt: skip
            elif kind is EndpointChanged:
                log.info("%s: peer %s: endpoint now %s", name, peer_id(action.public_key),
                         format_endpoint(action.endpoint),
                         extra=_event(name, "endpoint", action.public_key))  # fmt: skip
            elif kind is HandshakeGaveUp:
                log.info("%s: peer %s: no handshake response; giving up until there is traffic "
                         "for it", name, peer_id(action.public_key))  # fmt: skip
            elif kind is KeysZeroed:
                log.info("%s: peer %s: keys erased after 3 x REJECT_AFTER_TIME unused", name,
                         peer_id(action.public_key))  # fmt: skip

    def _send_control(self, data: bytes, endpoint: Any) -> None:
        port, c = self._port_for(endpoint), self.counters
        if port is None:
            c.tx_dropped[self._unreachable] += 1
            return
        try:
            port.sendto(data, endpoint)
        except OSError as exc:
            if exc.errno == EMSGSIZE and self.too_big is not None:  # a staged packet, sealed
                peer = next((p for p in self.iface.peers if p.endpoint == endpoint), None)
                if peer is not None:
                    self._too_big_sealed(peer, memoryview(data), 0, len(data), boottime(), 1)
                    return
            c.tx_dropped[self._send_reason(exc.errno or 0)] += 1
            return
        c.tx_packets += 1
        c.tx_bytes += len(data)
