"""SIGHUP as a transaction (issue 8, "Reload that drops nothing"; issue 9's reload findings).

The daemon runs in this process on a real asyncio loop with real UDP sockets on 127.0.0.1;
the kernel seams are fakes (FakeTun devices that refuse a name already held, as TUNSETIFF
answers EBUSY, and a FakeNetlink that knows no bridge). sd_notify goes to a real datagram
socket in tmp_path, so the RELOADING=1 / READY=1 pairs are read as systemd would read them.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
from pathlib import Path
from typing import Any

import pytest

from tunneld import config as config_mod
from tunneld.errors import SetupError
from tunneld.kernel.fakes import FakeNetlink
from tunneld.kernel.tun import FakeTun
from tunneld.links.base import Link
from tunneld.links.vxlan import VxlanLink
from tunneld.runtime.daemon import Daemon


class Devices:
    """The device seam: FakeTuns by name. A name held by an open device, or listed in
    `taken` (another process's device), is refused as the kernel refuses it."""

    def __init__(self) -> None:
        self.devices: dict[str, FakeTun] = {}
        self.taken: set[str] = set()
        self.broken: dict[str, OSError] = {}  # name -> an error that is not a SetupError

    def open(self, name: str, mode: str, offload: bool = False) -> FakeTun:
        if name in self.broken:
            raise self.broken[name]
        held = self.devices.get(name)
        if name in self.taken or (held is not None and held.fd != -1):
            raise SetupError(f"create {mode} device {name}: busy, another process holds it")
        dev = self.devices[name] = FakeTun(name, mode)
        return dev


class Netlink(FakeNetlink):
    """No bridge exists."""

    def enslave(self, name: str, bridge: str) -> None:
        raise SetupError(f"bridge {bridge} for {name}: not found; create it first")

    def link_exists(self, name: str) -> bool:
        return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def vxlan(name: str, port: int, *, vni: int = 42, flood: str = "127.0.0.2",
          extra: str = "") -> str:  # fmt: skip
    return (f'[interfaces.{name}]\ntype = "vxlan"\nvni = {vni}\nlocal = "127.0.0.1"\n'
            f'port = {port}\nflood = ["{flood}"]\noffload = false\n{extra}')  # fmt: skip


class Harness:
    """One daemon: `start(text)`, `reload(text)`, sd_notify messages in `notes()`."""

    def __init__(self, tmp_path: Path, devices: Devices) -> None:
        self.path = tmp_path / "site.toml"
        self.head = f'[daemon]\ncontrol_socket = "{tmp_path / "ctl.sock"}"\n'
        self.devices = devices
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(tmp_path / "notify.sock"))
        self.notify.setblocking(False)
        self.daemon: Daemon | None = None
        self.task: asyncio.Task[int] | None = None

    def write(self, body: str) -> None:
        self.path.write_text(self.head + body)

    async def start(self, body: str) -> Daemon:
        self.write(body)
        loop = asyncio.get_running_loop()
        self.daemon = Daemon(config_mod.load(self.path), loop)
        self.task = loop.create_task(self.daemon.run())
        await self.until("READY=1")
        return self.daemon

    async def reload(self, body: str) -> str:
        """Rewrite the file, reload, return the READY=1 message that ends the reload."""
        self.write(body)
        assert self.daemon is not None
        await self.daemon.reload()
        await self.until("RELOADING=1")
        return await self.until("READY=1")

    async def until(self, what: str, timeout: float = 2.0) -> str:
        loop = asyncio.get_running_loop()
        while True:
            note = (await asyncio.wait_for(loop.sock_recv(self.notify, 4096), timeout)).decode()
            if what in note:
                return note

    async def stop(self) -> None:
        if self.daemon is not None and self.task is not None:
            self.daemon.request_stop()
            await asyncio.wait_for(self.task, 3)
        self.notify.close()


@pytest.fixture
def devices(monkeypatch: pytest.MonkeyPatch) -> Devices:
    devs = Devices()
    monkeypatch.setattr(Link, "open_device", staticmethod(devs.open))
    monkeypatch.setattr(Link, "netlink", Netlink())
    return devs


@pytest.fixture
def harness(tmp_path: Path, devices: Devices, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    h = Harness(tmp_path, devices)
    loop = asyncio.new_event_loop()

    def run(coro_fn: Any) -> Any:
        async def scenario() -> Any:
            try:
                return await coro_fn(h)
            finally:
                await h.stop()

        return loop.run_until_complete(scenario())

    yield run
    loop.close()


def test_failed_add_keeps_the_old_config_and_applies_nothing(harness, devices):
    """An added interface whose device name is taken: the in-place change of vx0 in the
    same file is not applied either, and the running config stays the old one."""
    p0, p1 = free_port(), free_port()
    devices.taken.add("vx1")

    async def scenario(h: Harness) -> None:
        d = await h.start(vxlan("vx0", p0))
        cfg, vx0 = d.cfg, d.links["vx0"]
        ready = await h.reload(vxlan("vx0", p0, flood="127.0.0.3") + vxlan("vx1", p1))
        assert d.cfg is cfg, "the running config was replaced by one that was not applied"
        assert d.links == {"vx0": vx0}
        assert vx0.fdb.flood_list() == ("127.0.0.2",)  # the transaction applied nothing
        assert "STATUS=" in ready and "vx1" in ready and "busy" in ready, ready

    harness(scenario)


def test_failed_rebuild_restores_the_interface(harness, devices):
    """vx0 rebuilt onto a UDP port another process holds: once the old vx0 is down the new
    one cannot bind, and vx0 is started again with the old config (and its counters),
    instead of being left stopped."""
    port = free_port()
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    taken = holder.getsockname()[1]

    async def scenario(h: Harness) -> None:
        d = await h.start(vxlan("vx0", port))
        old, counters = d.cfg.interfaces["vx0"], d.links["vx0"].counters
        counters.rx_packets = 7
        ready = await h.reload(vxlan("vx0", taken))
        link = d.links.get("vx0")
        assert link is not None, "a failed rebuild left vx0 gone"
        assert link.cfg == old and link.dev is not None and link.dev.fd != -1
        assert link.counters.rx_packets == 7
        assert d.cfg.interfaces["vx0"] == old
        assert "address in use" in ready, ready

    try:
        harness(scenario)
    finally:
        holder.close()


def test_rebuild_for_a_missing_bridge_fails_before_the_link_goes(harness, devices):
    """What can be checked before a rebuild tears the running link down is: the same vx0
    (its device, FDB and sessions) keeps running."""
    port = free_port()

    async def scenario(h: Harness) -> None:
        d = await h.start(vxlan("vx0", port))
        link, dev = d.links["vx0"], d.links["vx0"].dev
        ready = await h.reload(vxlan("vx0", port, extra='bridge = "nosuch0"\n'))
        assert "bridge nosuch0 for vx0: not found" in ready, ready
        assert d.links["vx0"] is link and link.dev is dev and dev.fd != -1

    harness(scenario)


def test_an_unexpected_error_still_ends_with_ready(harness, devices):
    """An error that is not a SetupError (EMFILE here) must not kill the reload: READY=1
    follows RELOADING=1, and the next reload works."""
    p0, p1, p2 = free_port(), free_port(), free_port()
    devices.broken["vx1"] = OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    async def scenario(h: Harness) -> None:
        d = await h.start(vxlan("vx0", p0))
        ready = await h.reload(vxlan("vx0", p0) + vxlan("vx1", p1))
        assert "Too many open files" in ready and set(d.links) == {"vx0"}, ready
        await h.reload(vxlan("vx0", p0) + vxlan("vx2", p2))
        assert set(d.links) == {"vx0", "vx2"}

    harness(scenario)


def test_good_reload_adds_and_removes_without_touching_the_others(harness, devices):
    p0, p1, p2 = free_port(), free_port(), free_port()

    async def scenario(h: Harness) -> None:
        d = await h.start(vxlan("vx0", p0) + vxlan("vx1", p1))
        vx0, vx1 = d.links["vx0"], d.links["vx1"]
        dev0, dev1 = vx0.dev, vx1.dev
        await h.reload(vxlan("vx0", p0, flood="127.0.0.3") + vxlan("vx2", p2))
        assert set(d.links) == {"vx0", "vx2"}
        assert d.links["vx0"] is vx0 and vx0.dev is dev0  # changed in place
        assert vx0.fdb.flood_list() == ("127.0.0.3",)
        assert dev1.fd == -1  # vx1 torn down
        assert d.cfg.interfaces["vx0"].flood[0].compressed == "127.0.0.3"

    harness(scenario)


def test_rename_that_reuses_a_removed_interfaces_port(harness, devices):
    """vx0 renamed vx9 on the same UDP port: the new one can only bind once the old one is
    gone, so it starts after the removal; nothing else is touched."""
    p0, p1 = free_port(), free_port()

    async def scenario(h: Harness) -> None:
        d = await h.start(vxlan("vx0", p0) + vxlan("vx1", p1))
        vx1 = d.links["vx1"]
        await h.reload(vxlan("vx9", p0) + vxlan("vx1", p1))
        assert set(d.links) == {"vx9", "vx1"} and d.links["vx1"] is vx1

    harness(scenario)


def test_failed_rename_brings_the_removed_interface_back(harness, devices):
    p0 = free_port()
    devices.taken.add("vx9")

    async def scenario(h: Harness) -> None:
        d = await h.start(vxlan("vx0", p0))
        cfg = d.cfg
        await h.reload(vxlan("vx9", p0))
        assert set(d.links) == {"vx0"} and d.cfg is cfg
        assert d.links["vx0"].dev.fd != -1

    harness(scenario)


def test_vxlan_ageing_lowered_by_reload_rearms_the_expiry(harness, devices):
    port = free_port()

    async def scenario(h: Harness) -> None:
        d = await h.start(vxlan("vx0", port, extra="ageing = 300\n"))
        link = d.links["vx0"]
        assert isinstance(link, VxlanLink)
        seen = asyncio.get_running_loop().time()
        link.fdb.learn("02:00:00:00:00:07", "127.0.0.9", seen)
        link._timer.arm(link.fdb.next_deadline())
        await h.reload(vxlan("vx0", port, extra="ageing = 1\n"))
        assert d.links["vx0"] is link
        assert link.fdb.next_deadline() == seen + 1.0
        assert link._timer._when == seen + 1.0  # the deadline timer follows

    harness(scenario)


def test_sighup_during_startup_is_held_until_up(harness, devices, monkeypatch):
    """A SIGHUP while a link is still starting (an etcd registry waiting for a lease, say)
    does not kill the daemon: it is held, and one reload runs once the daemon is up."""
    p0, p1 = free_port(), free_port()
    gate: dict[str, asyncio.Event] = {}
    real_start = VxlanLink.start

    async def slow_start(self: VxlanLink) -> None:
        await gate["open"].wait()
        await real_start(self)

    monkeypatch.setattr(VxlanLink, "start", slow_start)
    received: list[int] = []
    previous = signal.signal(signal.SIGHUP, lambda signum, frame: received.append(signum))

    async def scenario(h: Harness) -> None:
        gate["open"] = asyncio.Event()
        loop = asyncio.get_running_loop()
        h.write(vxlan("vx0", p0))
        d = h.daemon = Daemon(config_mod.load(h.path), loop)
        h.task = loop.create_task(d.run())
        await asyncio.sleep(0)  # run() is now waiting in vx0's start
        h.write(vxlan("vx0", p0) + vxlan("vx1", p1))  # what the operator reloads
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGHUP)  # two during start-up: one reload
        await asyncio.sleep(0.05)
        assert not h.task.done()
        gate["open"].set()
        await h.until("READY=1")
        await h.until("RELOADING=1")
        await h.until("READY=1")
        assert set(d.links) == {"vx0", "vx1"}, "the held SIGHUP was not applied"
        assert not received, "SIGHUP reached the default handler during start-up"

    try:
        harness(scenario)
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_wireguard_peers_change_only_with_the_whole_file(harness, devices, tmp_path):
    """A file that adds a peer and changes a keepalive on wg0 but fails on vx1 leaves wg0's
    peers as they were; the same file without vx1 then applies, keeping the peer object
    (its session) of the unchanged peer."""
    from tunneld.proto.wg import encode_key, generate_private_key, public_key

    own, p1, p2 = (generate_private_key(os.urandom) for _ in range(3))
    wg_port, peer_port, p0, p1_port = free_port(), free_port(), free_port(), free_port()
    devices.taken.add("vx1")

    def wg(keepalive: int | None, *peers: bytes) -> str:
        text = (f'[interfaces.wg0]\ntype = "wireguard"\nlisten_port = {wg_port}\n'
                f'private_key = "{encode_key(own)}"\noffload = false\n')  # fmt: skip
        for i, key in enumerate(peers):
            text += (f'[[interfaces.wg0.peers]]\npublic_key = "{encode_key(public_key(key))}"\n'
                     f'allowed_ips = ["10.77.0.{i + 2}/32"]\n'
                     f'endpoint = "127.0.0.1:{peer_port}"\n')  # fmt: skip
            if keepalive and i == 0:
                text += f"persistent_keepalive = {keepalive}\n"
        return text

    async def scenario(h: Harness) -> None:
        h.head += f'uapi_dir = "{tmp_path / "uapi"}"\n'
        d = await h.start(wg(None, p1) + vxlan("vx0", p0))
        link = d.links["wg0"]
        first = link.iface.peer(public_key(p1))
        ready = await h.reload(wg(25, p1, p2) + vxlan("vx0", p0) + vxlan("vx1", p1_port))
        assert "reload failed" in ready
        assert [p.public_key for p in link.iface.peers] == [public_key(p1)]
        assert not first.persistent_keepalive  # 0: off, as before
        await h.reload(wg(25, p1, p2) + vxlan("vx0", p0))
        assert d.links["wg0"] is link and link.iface.peer(public_key(p1)) is first
        assert first.persistent_keepalive == 25
        assert {p.public_key for p in link.iface.peers} == {public_key(p1), public_key(p2)}

    harness(scenario)


def test_rebuild_onto_a_removed_interfaces_port(harness, devices):
    """vx0 rebuilt (new VNI) onto the UDP port of vx1, which the same file removes."""
    p0, p1 = free_port(), free_port()

    async def scenario(h: Harness) -> None:
        d = await h.start(vxlan("vx0", p0) + vxlan("vx1", p1))
        counters = d.links["vx0"].counters
        ready = await h.reload(vxlan("vx0", p1, vni=43))
        assert "reloaded" in ready, ready
        assert set(d.links) == {"vx0"} and d.links["vx0"].cfg.port == p1
        assert d.links["vx0"].counters is counters

    harness(scenario)


def test_sighups_during_a_reload_make_one_more_reload(harness, devices, monkeypatch):
    """SIGHUPs that arrive while a reload is under way are held: one more reload runs
    after it, reading the file as it is then."""
    p0, p1, p2 = free_port(), free_port(), free_port()
    gate: dict[str, asyncio.Event] = {}
    real_start = VxlanLink.start

    async def slow_start(self: VxlanLink) -> None:
        if self.name == "vx1":
            await gate["open"].wait()
        await real_start(self)

    monkeypatch.setattr(VxlanLink, "start", slow_start)

    async def scenario(h: Harness) -> None:
        gate["open"] = asyncio.Event()
        d = await h.start(vxlan("vx0", p0))
        h.write(vxlan("vx0", p0) + vxlan("vx1", p1))
        d._schedule_reload()  # what SIGHUP calls
        await asyncio.sleep(0.05)  # the reload is now waiting in vx1's start
        h.write(vxlan("vx0", p0) + vxlan("vx1", p1) + vxlan("vx2", p2))
        d._schedule_reload()
        d._schedule_reload()
        gate["open"].set()
        for _ in range(2):
            await h.until("RELOADING=1")
            await h.until("READY=1")
        assert set(d.links) == {"vx0", "vx1", "vx2"}
        assert d._reloading is not None
        await d._reloading
        with pytest.raises(TimeoutError):
            await h.until("RELOADING=1", timeout=0.3)  # two held SIGHUPs: one reload

    harness(scenario)


def test_a_peer_name_that_does_not_resolve_fails_before_anything_changes(
    harness, devices, tmp_path, monkeypatch
):
    """DNS names are resolved (off the loop, through the link's resolver seam) before the
    transaction touches anything: for a peer added in place, and before a rebuild (a new
    listen port) tears the running link down."""
    import threading

    from tunneld.links.wireguard import WireguardLink
    from tunneld.proto.wg import encode_key, generate_private_key, public_key

    threads: list[str] = []

    def resolver(host: str, port: int, **kw: Any) -> list[Any]:
        threads.append(threading.current_thread().name)
        if host == "peer.example":
            return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("127.0.0.7", port))]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(WireguardLink, "resolver", staticmethod(resolver))
    own, p1, p2 = (generate_private_key(os.urandom) for _ in range(3))
    port_a, port_b = free_port(), free_port()

    def wg(listen: int, *peers: tuple[bytes, str]) -> str:
        text = (f'[interfaces.wg0]\ntype = "wireguard"\nlisten_port = {listen}\n'
                f'private_key = "{encode_key(own)}"\noffload = false\n')  # fmt: skip
        for i, (key, host) in enumerate(peers):
            text += (f'[[interfaces.wg0.peers]]\npublic_key = "{encode_key(public_key(key))}"\n'
                     f'allowed_ips = ["10.77.0.{i + 2}/32"]\n'
                     f'endpoint = "{host}:51820"\n')  # fmt: skip
        return text

    async def scenario(h: Harness) -> None:
        h.head += f'uapi_dir = "{tmp_path / "uapi"}"\n'
        d = await h.start(wg(port_a, (p1, "127.0.0.1")))
        link = d.links["wg0"]
        ready = await h.reload(wg(port_a, (p1, "127.0.0.1"), (p2, "nosuch.example")))
        assert "nosuch.example" in ready and "cannot resolve" in ready, ready
        assert [p.public_key for p in link.iface.peers] == [public_key(p1)]
        ready = await h.reload(wg(port_b, (p1, "nosuch.example")))  # a rebuild
        assert "cannot resolve" in ready and d.links["wg0"] is link, "torn down, then restored"
        assert link.dev is not None and link.listen_port == port_a
        await h.reload(wg(port_a, (p1, "127.0.0.1"), (p2, "peer.example")))
        assert link.iface.peer(public_key(p2)).endpoint == ("127.0.0.7", 51820)
        assert threads and "MainThread" not in threads  # never on the loop's thread

    harness(scenario)


def test_sigterm_during_startup_stops_at_once(harness, devices, monkeypatch):
    """SIGTERM while a link is still starting (etcd not answering, say) cancels the start:
    what is up is stopped again and run() returns 0, without waiting for the slow link."""
    p0, p1 = free_port(), free_port()
    real_start = VxlanLink.start

    async def never_starts(self: VxlanLink) -> None:
        if self.name == "vx1":
            await asyncio.Event().wait()
        await real_start(self)

    monkeypatch.setattr(VxlanLink, "start", never_starts)
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))

    async def scenario(h: Harness) -> None:
        loop = asyncio.get_running_loop()
        h.write(vxlan("vx0", p0) + vxlan("vx1", p1))
        d = h.daemon = Daemon(config_mod.load(h.path), loop)
        task = loop.create_task(d.run())
        while "vx0" not in d.links:
            await asyncio.sleep(0.01)
        dev0 = d.links["vx0"].dev
        os.kill(os.getpid(), signal.SIGTERM)
        assert await asyncio.wait_for(task, 2) == 0
        assert not received, "SIGTERM reached the default handler during start-up"
        assert d.links == {} and dev0.fd == -1
        await h.until("STOPPING=1")
        h.daemon = None

    try:
        harness(scenario)
    finally:
        signal.signal(signal.SIGTERM, previous)
