"""UDP sockets for the underlay: non-blocking, large buffers, IPv4 or IPv6 by address."""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct
import sys
from typing import Any

from tunneld.errors import SetupError
from tunneld.kernel.linux_abi import (
    IP_MTU,
    IP_MTU_DISCOVER,
    IP_PMTUDISC_DO,
    IPV6_DONTFRAG,
    IPV6_MTU,
    IPV6_MTU_DISCOVER,
    IPV6_PMTUDISC_DO,
    SOL_UDP,
    UDP_GRO,
    UDP_MAX_SEGMENTS_SAFE,
    UDP_SEGMENT,
)

log = logging.getLogger("tunneld.kernel")

BUFFER_BYTES = 4 << 20


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


def open_udp(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """Bind a non-blocking UDP socket to host:port (port 0: an ephemeral port)."""
    return _bind(family_of(host), host, port, reuse_port)


def open_udp_any(port: int, family: socket.AddressFamily = socket.AF_INET) -> socket.socket:
    """Bind to the wildcard address of a family (WireGuard listens on every address)."""
    return _bind(family, "::" if family == socket.AF_INET6 else "0.0.0.0", port, False)


def _bind(family: socket.AddressFamily, host: str, port: int, reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        _grow_buffers(sock)
        set_dont_fragment(sock)
        sock.bind(_bind_address(host, port))
    except OSError as exc:
        sock.close()
        raise SetupError(_bind_error(host, port, exc)) from None
    return sock


def set_dont_fragment(sock: socket.socket) -> None:
    """DF on every outer datagram (ip(7) IP_PMTUDISC_DO, ipv6(7) IPV6_DONTFRAG): the underlay
    never fragments them, and a datagram larger than the path MTU the kernel knows (the
    route's, or one an ICMP frag-needed / Packet Too Big taught it) fails with EMSGSIZE,
    which the links turn into an ICMP error into the device (links/pmtu.py)."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_DONTFRAG, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)


def path_mtu(addr: Any, source: str | None = None) -> int | None:
    """The path MTU the kernel holds for the route to `addr` (a socket address tuple), from
    `source` when given: IP_MTU / IPV6_MTU on a connected probe socket (the data path's
    sockets are unconnected, where that option is not available). None when there is no
    route. Exception path only (a socket per call): after an EMSGSIZE, rate-limited."""
    v6 = len(addr) == 4 or ":" in str(addr[0])
    family = socket.AF_INET6 if v6 else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError:
        return None
    try:
        if source is not None:
            sock.bind((source, 0))
        sock.connect(addr)
        if v6:
            return int(sock.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU))
        return int(sock.getsockopt(socket.IPPROTO_IP, IP_MTU))
    except OSError:
        return None
    finally:
        sock.close()


def set_mark(sock: socket.socket, mark: int) -> None:
    """SO_MARK (socket(7)) on a socket: every packet it sends carries the firewall mark
    (0 clears it). wg-quick's full-tunnel policy routing matches on it. Needs CAP_NET_ADMIN;
    raises SetupError naming the mark otherwise."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    except OSError as exc:
        raise SetupError(f"set fwmark {mark} (SO_MARK) on UDP socket: {exc.strerror}") from None


def _bind_address(host: str, port: int) -> tuple[Any, ...]:
    """(host, port), or for a scoped IPv6 address ("fe80::1%eth0") the 4-tuple carrying the
    interface index: a 2-tuple's scope id would be 0 and a link-local bind fail (EINVAL).
    Bound so, the socket sends to link-local remotes on that interface only."""
    bare, _, scope = host.partition("%")
    if not scope:
        return (host, port)
    index = int(scope) if scope.isdigit() else socket.if_nametoindex(scope)
    return (bare, port, 0, index)


def _grow_buffers(sock: socket.socket) -> None:
    # SO_*BUFFORCE passes rmem_max/wmem_max with CAP_NET_ADMIN; fall back quietly.
    for force, plain in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, BUFFER_BYTES)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, BUFFER_BYTES)


def _bind_error(host: str, port: int, exc: OSError) -> str:
    where = f"bind UDP {host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return f"{where}: address in use (another tunnel or kernel vxlan/wireguard on that port?)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"{where}: no interface has address {host}; "
            "set `local`/`public_ip` to one of this host's addresses"
        )
    if exc.errno == errno.EACCES:
        return f"{where}: permission denied"
    return f"{where}: {exc.strerror}"


# --- the data path's UDP seam: GSO runs out, GRO batches in -----------------------------------

_GSO_FALLBACK = (errno.EIO, errno.EMSGSIZE, errno.EINVAL)
# 65535 - 20 (IPv4) - 8 (UDP); IPv6's payload length excludes its header, so it allows 65527.
# A 64 KB TSO packet split for WireGuard (46 x 1424 bytes = 65504) then fits one send.
MAX_UDP_PAYLOAD = 65507


class UdpPort:
    """One bound UDP socket as the data path uses it (DESIGN.md, offload pipeline).

    `send_run(data, size, addr)` sends data as datagrams of `size` bytes (the last may be
    shorter) to one destination: with `gso`, one sendmsg with UDP_SEGMENT per chunk of at
    most UDP_MAX_SEGMENTS_SAFE datagrams (udp(7)); on EIO, EMSGSIZE or EINVAL it falls back to
    one sendto per datagram (counted in `gso_fallbacks`), and EIO (a device without checksum
    offload, as wireguard-go learned) turns GSO off for this socket. With `gro`, UDP_GRO is on
    and `recv_gro(iov)` returns (nbytes, address, segment size or 0): the kernel hands over
    several datagrams of one flow back to back, each `segment size` bytes but the last.
    `sendto`/`recvfrom_into` are the socket's own, for the plain path.
    """

    def __init__(self, sock: socket.socket, gso: bool = False, gro: bool = False) -> None:
        self.sock = sock
        self.gso = gso
        self.gro = gro and _enable_gro(sock)
        self.gso_fallbacks = 0
        self.last_errno = 0  # of the last failed send in send_run
        self.sendto = sock.sendto
        self.recvfrom_into = sock.recvfrom_into
        self._ancillary: dict[int, list[tuple[int, int, bytes]]] = {}
        self._cmsg_space = socket.CMSG_SPACE(4)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def send_run(self, data: memoryview, size: int, addr: Any) -> int:
        """Send data[:] as ceil(len/size) datagrams to addr; returns how many were sent
        (on failures `last_errno` says why; the rest are lost, never raised)."""
        n = len(data)
        count = -(-n // size)
        if count == 1 or not self.gso:
            return self._send_each(data, size, addr)
        chunk = min(UDP_MAX_SEGMENTS_SAFE, MAX_UDP_PAYLOAD // size) * size
        sent = 0
        for off in range(0, n, chunk):
            part = data[off : off + chunk]
            if len(part) > size and self.gso:  # EIO may have turned GSO off mid-run
                sent += self._send_gso(part, size, addr)
            else:
                sent += self._send_each(part, size, addr)
        return sent

    def _send_gso(self, data: memoryview, size: int, addr: Any) -> int:
        ancillary = self._ancillary.get(size)
        if ancillary is None:
            ancillary = self._ancillary[size] = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))]
        try:
            self.sock.sendmsg([data], ancillary, 0, addr)
        except OSError as exc:
            if exc.errno not in _GSO_FALLBACK:
                self.last_errno = exc.errno or 0
                return 0
            self.gso_fallbacks += 1
            if exc.errno == errno.EIO and self.gso:
                self.gso = False
                log.warning("UDP GSO failed with EIO on %s; sending one datagram at a time",
                            self.sock.getsockname())  # fmt: skip
            return self._send_each(data, size, addr)
        return -(-len(data) // size)

    def _send_each(self, data: memoryview, size: int, addr: Any) -> int:
        sent, sendto = 0, self.sendto
        for off in range(0, len(data), size):
            try:
                sendto(data[off : off + size], addr)
            except OSError as exc:
                self.last_errno = exc.errno or 0
                continue
            sent += 1
        return sent

    def recv_gro(self, iov: list[memoryview]) -> tuple[int, Any, int]:
        """recvmsg into iov (a reused one-element list); (nbytes, address, segment size: 0 when
        the kernel delivered a single datagram). Raises BlockingIOError when empty."""
        n, ancillary, flags, addr = self.sock.recvmsg_into(iov, self._cmsg_space)
        if flags & socket.MSG_TRUNC:
            return -1, addr, 0
        for level, kind, value in ancillary:
            if level == SOL_UDP and kind == UDP_GRO:
                return n, addr, int.from_bytes(value[:2] if len(value) == 2 else value[:4],
                                               sys.byteorder)  # fmt: skip
        return n, addr, 0


def _enable_gro(sock: socket.socket) -> bool:
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


class FakeUdpPort:
    """Records every send as (bytes, segment size, address), for tests of a link's transmit
    path without a network. recv_* raise BlockingIOError (nothing ever arrives)."""

    def __init__(self, gso: bool = True, gro: bool = True) -> None:
        self.gso, self.gro, self.gso_fallbacks, self.last_errno = gso, gro, 0, 0
        self.sent: list[tuple[bytes, int, Any]] = []

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        pass

    def sendto(self, data: Any, addr: Any) -> int:
        self.sent.append((bytes(data), len(data), addr))
        return len(data)

    def send_run(self, data: memoryview, size: int, addr: Any) -> int:
        self.sent.append((bytes(data), size, addr))
        return -(-len(data) // size)

    def recv_gro(self, iov: list[memoryview]) -> tuple[int, Any, int]:
        raise BlockingIOError

    def recvfrom_into(self, buf: Any) -> tuple[int, Any]:
        raise BlockingIOError
