"""`[daemon] user`: switch to that user once devices and sockets are open, keeping CAP_NET_ADMIN.

Spec: capabilities(7) ("Effect of user ID changes on capabilities", "Thread capability
sets"), prctl(2) PR_SET_KEEPCAPS / PR_CAP_AMBIENT, capset(2) with
_LINUX_CAPABILITY_VERSION_3 (include/uapi/linux/capability.h).

Theory of operation. `drop_privileges(user)` runs on the main (event-loop) thread after
every link is up and the control and metrics sockets are bound:

  prctl(PR_SET_KEEPCAPS, 1)        keep the permitted set across the uid change
  setgroups(user's groups); setgid(gid); setuid(uid)    (glibc applies them to every thread)
  capset(effective = permitted = {CAP_NET_ADMIN}, inheritable = {})
  prctl(PR_SET_KEEPCAPS, 0); prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)

and then reads /proc/self/status to check that exactly that remains. What stays and why:
CAP_NET_ADMIN, for the work a reload or the UAPI does after start-up: opening tun/tap
devices (TUNSETIFF), netlink address/route/link changes, bridge ports, SO_MARK. Nothing
else: no CAP_NET_BIND_SERVICE (every default port is above 1024; a reload that binds a new
port below 1024 fails with a clear error), no CAP_DAC_* (key files are read at start; see
config.fields for how reload treats them), no CAP_SETUID/CAP_SETGID (no way back to root).

Capability sets are per thread. The loop thread does all netlink and device work; threads
started before the switch (the metrics server, an etcd watcher) change uid with the rest
of the process but, lacking KEEPCAPS, lose every capability, which is what they need.
ctypes, not a binding library: three calls with fixed, documented structs; python-prctl is
a C extension that needs libcap headers to build, for no gain here.
"""

from __future__ import annotations

import ctypes
import os
import pwd

from tunneld.errors import SetupError

CAP_NET_ADMIN = 12  # include/uapi/linux/capability.h
KEPT = (CAP_NET_ADMIN,)
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
PR_SET_KEEPCAPS = 8  # include/uapi/linux/prctl.h
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _prctl(option: int, arg: int) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), f"prctl({option})")


def _capset(mask: int) -> None:
    """This thread's effective and permitted sets := `mask` (bit N: capability N)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in (0, 1):  # version 3: two 32-bit words
        word = (mask >> (32 * i)) & 0xFFFFFFFF
        data[i].effective, data[i].permitted, data[i].inheritable = word, word, 0
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def capabilities(pid: int | str = "self") -> dict[str, int]:
    """CapInh/CapPrm/CapEff/CapBnd/CapAmb of a process, from /proc/PID/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.startswith("Cap"):
                out[key] = int(value.strip(), 16)
    return out


def drop_privileges(user: str, keep: tuple[int, ...] = KEPT) -> pwd.struct_passwd:
    """Become `user` keeping only the capabilities `keep`. Raises SetupError naming the fix.

    Open sockets keep working. The control socket stays root's, mode 0600 (`tunneld show`
    runs as root; the daemon cannot unlink it at exit, and the next start removes it as
    its own stale socket).
    """
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise SetupError(f"daemon.user: no such user {user!r}") from None
    mask = sum(1 << cap for cap in keep)
    try:
        _prctl(PR_SET_KEEPCAPS, 1)
        os.setgroups(os.getgrouplist(user, entry.pw_gid))
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
        _capset(mask)
        _prctl(PR_SET_KEEPCAPS, 0)
        _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError as exc:
        raise SetupError(
            f"switch to user {user!r}: {exc.strerror}. Start tunneld as root with CAP_SETUID, "
            "CAP_SETGID and CAP_NET_ADMIN (systemd/tunneld.service grants them)"
        ) from None
    caps = capabilities()
    if (caps["CapEff"], caps["CapPrm"], caps["CapInh"], caps["CapAmb"]) != (mask, mask, 0, 0):
        raise SetupError(f"switch to user {user!r}: capabilities left are {caps}, not {mask:#x}")
    if os.getresuid() != (entry.pw_uid,) * 3 or os.getresgid() != (entry.pw_gid,) * 3:
        raise SetupError(f"switch to user {user!r}: uid/gid did not change")
    return entry
