"""tun (L3) and tap (L2) devices through /dev/net/tun (Documentation/networking/tuntap.rst).

The device lives as long as its file descriptor: closing it removes the interface,
so a crashed daemon leaves nothing behind. The data path calls the device's bound
`readv(buffers)`, `write(data)` and `writev(buffers)` (os calls partially applied to the
fd: no Python frame per packet); `FakeTun` gives the same seam without root.

Offload (`open(..., offload=True)`): the queue is opened with IFF_VNET_HDR, so every read
starts with a 10-byte struct virtio_net_hdr and every write must start with one
(tunneld.proto.gso parses and builds them), and TUNSETOFFLOAD asks for
TUN_F_CSUM | TSO4 | TSO6 | USO4 | USO6: the kernel may then hand us TCP and UDP
super-packets of up to 64 KB with partial checksums, and accepts the same from us.
Kernels before 6.2 refuse the USO flags (EINVAL); we retry without them. `offload_flags`
says what was granted (0: none; the header is still there when `vnet_hdr` is set).
"""

from __future__ import annotations

import errno
import fcntl
import functools
import logging
import os
import socket
import struct

from tunneld.errors import SetupError
from tunneld.kernel.linux_abi import (
    IFF_MULTI_QUEUE,
    IFF_NO_PI,
    IFF_TAP,
    IFF_TUN,
    IFF_VNET_HDR,
    IFNAMSIZ,
    IFREQ_FLAGS,
    TUN_F_CSUM,
    TUN_F_TSO4,
    TUN_F_TSO6,
    TUN_F_USO4,
    TUN_F_USO6,
    TUNSETIFF,
    TUNSETOFFLOAD,
)

log = logging.getLogger("tunneld.kernel")

TUN_PATH = "/dev/net/tun"
CAP_HINT = "run as root or with CAP_NET_ADMIN (systemd/tunneld.service grants it)"
TSO_FLAGS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
USO_FLAGS = TUN_F_USO4 | TUN_F_USO6
_FLAG_NAMES = ((TUN_F_CSUM, "csum"), (TUN_F_TSO4, "tso4"), (TUN_F_TSO6, "tso6"),
               (TUN_F_USO4, "uso4"), (TUN_F_USO6, "uso6"))  # fmt: skip


def describe_offload(flags: int) -> str:
    """'csum tso4 tso6 uso4 uso6', or 'none'."""
    return " ".join(name for bit, name in _FLAG_NAMES if flags & bit) or "none"


class TunDevice:
    """An open tun/tap queue (non-blocking; no PI header). `vnet_hdr`: every packet read or
    written starts with a virtio_net_hdr; `offload_flags`: the TUN_F_* the kernel granted."""

    def __init__(self, fd: int, name: str, mode: str, vnet_hdr: bool = False,
                 offload_flags: int = 0) -> None:  # fmt: skip
        self.fd, self.name, self.mode = fd, name, mode
        self.vnet_hdr, self.offload_flags = vnet_hdr, offload_flags
        self._bind(fd)

    def _bind(self, fd: int) -> None:
        self.readv = functools.partial(os.readv, fd)  # readv(buffers) -> bytes read
        self.write = functools.partial(os.write, fd)  # write(data) -> bytes written
        self.writev = functools.partial(os.writev, fd)  # writev(buffers): one packet

    @classmethod
    def open(cls, name: str, mode: str, multi_queue: bool = False,
             offload: bool = False) -> TunDevice:  # fmt: skip
        if mode not in ("tun", "tap"):
            raise ValueError(f"mode must be tun or tap, not {mode!r}")
        if not 0 < len(name.encode()) < IFNAMSIZ:
            raise SetupError(f"device name {name!r}: must be 1..15 bytes")
        flags = (IFF_TUN if mode == "tun" else IFF_TAP) | IFF_NO_PI
        if multi_queue:
            flags |= IFF_MULTI_QUEUE
        if offload:
            flags |= IFF_VNET_HDR
        fd = _open_clone_device()
        try:
            ifr = fcntl.ioctl(fd, TUNSETIFF, struct.pack(IFREQ_FLAGS, name.encode(), flags))
        except OSError as exc:
            os.close(fd)
            raise SetupError(_tunsetiff_error(name, mode, exc)) from None
        actual = struct.unpack(IFREQ_FLAGS, ifr)[0].rstrip(b"\0").decode()
        granted = _set_offload(fd, actual) if offload else 0
        return cls(fd, actual, mode, vnet_hdr=offload, offload_flags=granted)

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            self._bind(-1)  # a stray call raises EBADF, never reaches a reused fd number


SIOCGIFMTU = 0x8921  # include/uapi/linux/sockios.h
_IFREQ_MTU = struct.Struct("16si20x")  # struct ifreq: name, ifr_mtu


def device_mtu(name: str) -> int | None:
    """The MTU of device `name` in our namespace (SIOCGIFMTU, netdevice(7)); None if gone."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            ifr = fcntl.ioctl(sock, SIOCGIFMTU, _IFREQ_MTU.pack(name.encode(), 0))
        except OSError:
            return None
    return int(_IFREQ_MTU.unpack(ifr)[1])


def _set_offload(fd: int, name: str) -> int:
    """Ask for TSO and USO; fall back to TSO only (kernels before 6.2), then to none."""
    for flags in (TSO_FLAGS | USO_FLAGS, TSO_FLAGS):
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, flags)
        except OSError as exc:
            log.debug("%s: TUNSETOFFLOAD %#x refused: %s", name, flags, exc.strerror)
            continue
        return flags
    return 0


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


class FakeTun(TunDevice):
    """A tun/tap stand-in for tests without root: a SOCK_SEQPACKET pair keeps packet
    boundaries. The daemon side is `fileno()`; the test side is `.peer`. With
    `offload_flags`, it behaves as a vnet_hdr queue granted those flags: the test side then
    reads and writes the virtio_net_hdr in front of each packet itself."""

    def __init__(self, name: str = "fake0", mode: str = "tap", offload_flags: int | None = None,
                 ) -> None:  # fmt: skip
        ours, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        self._ours = ours
        vnet = offload_flags is not None
        super().__init__(ours.fileno(), name, mode, vnet_hdr=vnet, offload_flags=offload_flags or 0)

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        self._ours.close()
        self.peer.close()
        self.fd = -1
