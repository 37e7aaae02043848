"""The VXLAN tap's MAC is derived from its config, so a restarted daemon keeps it.

A peer's ARP/ND cache and FDB hold the tap's MAC; with the kernel's random MAC a restarted
daemon was unreachable until the peer's neighbour entry failed (43 s in
tests/netns/test_faults.py). Here: the link sets a MAC that is unicast and locally
administered, the same for the same (name, VNI, local), different when any of them differs.
"""

from __future__ import annotations

import asyncio
from ipaddress import ip_address

from tunneld.config import VxlanConfig
from tunneld.kernel.fakes import FakeNetlink
from tunneld.kernel.tun import FakeTun
from tunneld.links.vxlan import VxlanLink, device_mac


class Link(VxlanLink):
    netlink = FakeNetlink()

    @staticmethod
    def open_device(name: str, mode: str, offload: bool = False) -> FakeTun:
        return FakeTun(name, mode)


def started_mac(name: str, vni: int, local: str) -> str:
    async def scenario() -> str:
        Link.netlink = FakeNetlink()
        cfg = VxlanConfig(name=name, vni=vni, local=ip_address(local), port=0)
        link = Link(cfg, asyncio.get_running_loop())
        await link.start()
        try:
            calls = [args for what, args in Link.netlink.calls if what == "set_mac"]
            order = [what for what, _ in Link.netlink.calls]
            assert order.index("set_mac") < order.index("configure_link")  # before up
            assert calls == [(name, calls[0][1])]
            return str(calls[0][1])
        finally:
            await link.stop()

    return asyncio.run(scenario())


def test_restart_sets_the_same_mac_and_it_is_local_unicast():
    first = started_mac("vxm", 42, "127.0.0.1")
    assert started_mac("vxm", 42, "127.0.0.1") == first == device_mac("vxm", 42, "127.0.0.1")
    octet = int(first.split(":")[0], 16)
    assert octet & 0x01 == 0 and octet & 0x02 == 0x02, first  # unicast, locally administered
    assert len(bytes.fromhex(first.replace(":", ""))) == 6


def test_mac_differs_by_name_vni_and_local():
    macs = {device_mac("vx0", 42, "192.0.2.1"), device_mac("vx1", 42, "192.0.2.1"),
            device_mac("vx0", 43, "192.0.2.1"), device_mac("vx0", 42, "192.0.2.2"),
            device_mac("vx0", 42, "2001:db8::1")}  # fmt: skip
    assert len(macs) == 5
