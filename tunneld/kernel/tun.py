"""tun (L3) and tap (L2) devices through /dev/net/tun (Documentation/networking/tuntap.rst).

The device lives as long as its file descriptor: closing it removes the interface,
so a crashed daemon leaves nothing behind. The data path reads and writes the fd
directly with os.readv/os.write; `FakeTun` gives the same fd-shaped seam without root.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

from tunneld.errors import SetupError
from tunneld.kernel.linux_abi import (
    IFF_MULTI_QUEUE,
    IFF_NO_PI,
    IFF_TAP,
    IFF_TUN,
    IFNAMSIZ,
    IFREQ_FLAGS,
    TUNSETIFF,
)

TUN_PATH = "/dev/net/tun"
CAP_HINT = "run as root or with CAP_NET_ADMIN (systemd/tunneld.service grants it)"


class TunDevice:
    """An open tun/tap queue. `fileno()` is non-blocking; packets carry no PI header."""

    def __init__(self, fd: int, name: str, mode: str) -> None:
        self.fd, self.name, self.mode = fd, name, mode

    @classmethod
    def open(cls, name: str, mode: str, multi_queue: bool = False) -> TunDevice:
        if mode not in ("tun", "tap"):
            raise ValueError(f"mode must be tun or tap, not {mode!r}")
        if not 0 < len(name.encode()) < IFNAMSIZ:
            raise SetupError(f"device name {name!r}: must be 1..15 bytes")
        flags = (IFF_TUN if mode == "tun" else IFF_TAP) | IFF_NO_PI
        if multi_queue:
            flags |= IFF_MULTI_QUEUE
        fd = _open_clone_device()
        try:
            ifr = fcntl.ioctl(fd, TUNSETIFF, struct.pack(IFREQ_FLAGS, name.encode(), flags))
        except OSError as exc:
            os.close(fd)
            raise SetupError(_tunsetiff_error(name, mode, exc)) from None
        actual = struct.unpack(IFREQ_FLAGS, ifr)[0].rstrip(b"\0").decode()
        return cls(fd, actual, mode)

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _open_clone_device() -> int:
    try:
        return os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SetupError(
            f"open {TUN_PATH}: no such device. Load the tun module (modprobe tun); "
            "in a container, pass the device in (--device /dev/net/tun)"
        ) from None
    except PermissionError:
        raise SetupError(f"open {TUN_PATH}: permission denied. {CAP_HINT}") from None


def _tunsetiff_error(name: str, mode: str, exc: OSError) -> str:
    if exc.errno == errno.EPERM:
        return (
            f"create {mode} device {name}: operation not permitted (needs CAP_NET_ADMIN). "
            f"{CAP_HINT}"
        )
    if exc.errno == errno.EBUSY:
        return f"create {mode} device {name}: busy, another process holds it"
    if exc.errno == errno.EINVAL:
        return f"create {mode} device {name}: a device of that name exists with another type"
    return f"create {mode} device {name}: {os.strerror(exc.errno or 0)}"


class FakeTun:
    """A tun/tap stand-in for tests without root: a SOCK_SEQPACKET pair keeps packet
    boundaries. The daemon side is `fileno()`; the test side is `.peer`."""

    def __init__(self, name: str = "fake0", mode: str = "tap") -> None:
        self.name, self.mode = name, mode
        ours, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        self._ours = ours
        self.fd = ours.fileno()

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        self._ours.close()
        self.peer.close()
        self.fd = -1
