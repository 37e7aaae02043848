"""What the daemon needs from every data plane.

A link owns one configured interface: its device, its sockets and its core. The
daemon starts links in config order, applies reloads, asks them for `show`, and
stops them on shutdown.

Reload is two steps, so the daemon can run a whole file as one transaction:
`prepare_reload(cfg)` checks everything that can fail (names resolved, tables
validated) and returns a plan, touching nothing that runs; None means the change
needs the link rebuilt (a new VNI, port or type: the daemon starts a new link with
the old one's counters so they survive). `commit_reload(plan)` then applies it and
cannot fail (a kernel call that still fails is logged). Between the two the daemon
may drop the plan: nothing needs undoing.
"""

from __future__ import annotations

import abc
import asyncio
import inspect
from typing import Any

from tunneld.kernel import netlink as kernel_netlink
from tunneld.kernel.tun import TunDevice
from tunneld.proto.counters import Counters

# wg-quick-style hooks (runtime/hooks.py, run by the daemon around start and stop): a reload
# that changes only them applies them in place, as wg-quick reads its file at `down`
HOOK_FIELDS = ("pre_up", "post_up", "pre_down", "post_down")


class Link(abc.ABC):
    type_name: str = ""
    # Kernel seams, swapped for fakes (kernel.tun.FakeTun, kernel.fakes.FakeNetlink) by
    # tests that run a link without root.
    open_device: Any = staticmethod(TunDevice.open)
    netlink: Any = kernel_netlink

    def __init__(
        self, cfg: Any, loop: asyncio.AbstractEventLoop, counters: Counters | None = None
    ) -> None:
        """`counters`: the previous incarnation's, on a rebuild of the same type (else None)."""
        self.cfg = cfg
        self.name: str = cfg.name
        self.loop = loop
        self.counters = counters
        self._readers: list[int] = []

    def watch(self, fd: int, callback: Any, *args: Any) -> None:
        """Register a readiness callback on the loop, remembered for `unwatch_all`."""
        self.loop.add_reader(fd, callback, *args)
        self._readers.append(fd)

    def unwatch_all(self) -> None:
        for fd in self._readers:
            self.loop.remove_reader(fd)
        self._readers = []

    @abc.abstractmethod
    async def start(self) -> None:
        """Create the device and sockets and begin forwarding. Raise SetupError on failure
        (after releasing whatever was acquired)."""

    @abc.abstractmethod
    def prepare_reload(self, cfg: Any) -> Any | None:
        """Check that `cfg` (validated, same type) can be applied live; return the plan for
        `commit_reload`, or None when it needs a rebuild. Raise SetupError when it cannot
        be applied at all. Changes nothing. A link may make this a coroutine (the daemon
        awaits it) to do slow work off the loop, e.g. resolving names."""

    @abc.abstractmethod
    def commit_reload(self, plan: Any) -> None:
        """Apply a plan from `prepare_reload` (sessions, tables and counters kept). Must not
        raise."""

    async def apply_kernel(self) -> None:  # noqa: B027 (optional hook, not abstract)
        """The kernel side of the last `commit_reload` (routes, rules), awaited right after
        it: netlink runs on its worker thread while the loop keeps serving packets. Nothing
        for links whose commit touches no kernel state. Must not raise."""

    async def reload(self, cfg: Any) -> bool:
        """Prepare and commit in one step. False: rebuild needed (nothing changed)."""
        plan = self.prepare_reload(cfg)
        if inspect.isawaitable(plan):
            plan = await plan
        if plan is None:
            return False
        self.commit_reload(plan)
        await self.apply_kernel()
        return True

    @classmethod
    def check_rebuild(cls, cfg: Any) -> Any:
        """Before a reload tears a running link down to rebuild it from `cfg`: raise
        SetupError for what would make `start()` fail and can be known without the old
        link's device and sockets (a peer name that does not resolve, say). May be a
        coroutine. Default: nothing to check."""
        return None

    def drifted(self, cfg: Any) -> bool:
        """True when runtime changes (the WireGuard UAPI: wg set) made the link differ from
        `cfg`, its table in the file: a reload then re-applies the file even if unchanged."""
        return False

    @abc.abstractmethod
    def show(self) -> dict[str, Any]:
        """This interface's entry of `tunneld show --json` (DESIGN.md)."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop forwarding and release the device and sockets. Must not raise."""


def link_class(type_name: str) -> type[Link]:
    """Import the data plane for a config `type` lazily: an unused plane costs nothing."""
    if type_name == "vxlan":
        from tunneld.links.vxlan import VxlanLink

        return VxlanLink
    if type_name == "wireguard":
        from tunneld.links.wireguard import WireguardLink

        return WireguardLink
    if type_name == "overlay":
        from tunneld.links.overlay import OverlayLink

        return OverlayLink
    raise ValueError(f"unknown interface type {type_name!r}")
