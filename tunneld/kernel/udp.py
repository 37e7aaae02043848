"""UDP sockets for the underlay: non-blocking, large buffers, IPv4 or IPv6 by address."""

from __future__ import annotations

import errno
import ipaddress
import socket

from tunneld.errors import SetupError

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
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SetupError(_bind_error(host, port, exc)) from None
    return sock


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
