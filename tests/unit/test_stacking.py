"""links/stacking.py: a VXLAN interface whose `local` is an address of a WireGuard
interface of the same config (L2 over WireGuard): start order and the stacked MTU that
`check-config` prints (configs/l2-over-wireguard.toml)."""

from __future__ import annotations

import os
import textwrap

from tunneld.config import check_config_main, loads
from tunneld.kernel.fakes import FakeNetlink
from tunneld.links.stacking import carrier, describe_mtus, start_order

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
KEY = "GLgaqTLiBUWhVRUP2G3DM+0fV5bkHItTzFszLH2Ce0k="
PEER = "omgo5ojIhNcTMEw4PMQlPGC6rwlvcQoaRkcvXKOc3Hk="


def _config(vx_first: bool, wg_mtu: str = "mtu = 1420", vx_local: str = "10.99.0.1",
            family6: bool = False) -> dict:  # fmt: skip
    vx = textwrap.dedent(f"""
        [interfaces.vx0]
        type = "vxlan"
        vni = 100
        local = "{"fd99::1" if family6 else vx_local}"
    """)
    wg = textwrap.dedent(f"""
        [interfaces.wg0]
        type = "wireguard"
        address = ["10.99.0.1/24", "fd99::1/64"]
        {wg_mtu}
        private_key = "{KEY}"
    """)
    wg += f'[[interfaces.wg0.peers]]\npublic_key = "{PEER}"\nallowed_ips = ["10.99.0.2/32"]\n'
    text = vx + wg if vx_first else wg + vx
    return dict(loads(text).interfaces)


def test_carrier_starts_first_whatever_the_config_order():
    for vx_first in (True, False):
        interfaces = _config(vx_first)
        assert carrier("vx0", interfaces) == "wg0"
        assert carrier("wg0", interfaces) is None
        assert start_order(interfaces) == ["wg0", "vx0"]


def test_not_stacked_keeps_config_order():
    interfaces = _config(True, vx_local="192.168.1.1")
    assert carrier("vx0", interfaces) is None
    assert start_order(interfaces) == ["vx0", "wg0"]


def test_stacked_mtu_is_the_carriers_minus_vxlan_overhead():
    notes = describe_mtus(_config(True), FakeNetlink())
    assert notes["vx0"].startswith("1370 = 1420 (wg0's mtu") and notes["vx0"].endswith(
        "- 50 (IPv4)"
    )
    notes6 = describe_mtus(_config(False, family6=True), FakeNetlink())
    assert notes6["vx0"].startswith("1350 = 1420") and "- 70 (IPv6)" in notes6["vx0"]


def test_stacked_on_a_default_mtu_carrier():
    notes = describe_mtus(_config(False, wg_mtu=""), FakeNetlink(underlay_mtu=1500))
    wg = int(notes["wg0"].split(" ", 1)[0])  # wg-quick's default on this (fake) host
    assert notes["vx0"].startswith(f"{wg - 50} = {wg} (wg0's mtu")


def test_check_config_prints_the_stacked_mtu(capsys):
    assert check_config_main(os.path.join(CONFIGS, "l2-over-wireguard.toml")) == 0
    out = capsys.readouterr().out
    assert "# mtu: unset (default here: 1370 = 1420 (wg0's mtu: vxlan over wireguard wg0)" in out


def test_an_overlay_beside_a_vxlan_is_not_a_carrier():
    """Overlay interfaces have no `address` key: never a carrier, and nothing raises."""
    text = textwrap.dedent("""
        [interfaces.vx0]
        type = "vxlan"
        vni = 1
        local = "192.168.1.1"
        [interfaces.flannel0]
        type = "overlay"
        network = "10.5.0.0/16"
        public_ip = "192.168.1.1"
        subnet = "10.5.1.0/24"
    """)
    interfaces = dict(loads(text).interfaces)
    assert carrier("vx0", interfaces) is None and carrier("flannel0", interfaces) is None
    assert start_order(interfaces) == ["vx0", "flannel0"]
