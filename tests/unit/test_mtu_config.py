"""`mtu` defaults and `mss_clamp` in the config: parsing, errors, check-config's lines."""

from __future__ import annotations

import pytest

from tunneld.config import loads, render
from tunneld.errors import ConfigError
from tunneld.kernel.fakes import FakeNetlink
from tunneld.links.pmtu import describe_default_mtu

KEY = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
PEER = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
TABLES = {
    "wireguard": f'type = "wireguard"\nprivate_key = "{KEY}"\n',
    "vxlan": 'type = "vxlan"\nvni = 7\nlocal = "2001:db8::1"\n',
    "overlay": 'type = "overlay"\nnetwork = "10.5.0.0/16"\npublic_ip = "192.0.2.1"\n'
    'subnet = "10.5.1.0/24"\n',
}


def config(kind: str, extra: str = "") -> str:
    return f"[interfaces.t0]\n{TABLES[kind]}{extra}"


@pytest.mark.parametrize("kind", sorted(TABLES))
@pytest.mark.parametrize(("text", "value"), [("", False), ("true", True), ("1200", 1200),
                                             ("false", False), ("88", 88)])  # fmt: skip
def test_mss_clamp_values_and_round_trip(kind: str, text: str, value: object) -> None:
    cfg = loads(config(kind, f"mss_clamp = {text}\n" if text else ""), "<t>")
    iface = cfg.interfaces["t0"]
    assert iface.mss_clamp == value and type(iface.mss_clamp) is type(value)
    assert iface.mtu is None  # every type's default is computed, WireGuard's too
    if kind != "wireguard":  # (a private key renders as "(hidden)")
        assert loads(render(cfg), "<t>") == cfg


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("87", "87 is out of range 88..65495"),
        ("65496", "out of range"),
        ('"yes"', "expected true, false or an MSS in bytes (an integer), got a string"),
        ("1.5", "got a float"),
    ],
)
def test_mss_clamp_rejected_with_key_and_reason(text: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        loads(config("vxlan", f"mss_clamp = {text}\n"), "site.toml")
    assert str(err.value).startswith("site.toml: interfaces.t0.mss_clamp: ")
    assert reason in str(err.value)


def test_check_config_says_what_an_unset_mtu_becomes() -> None:
    net = FakeNetlink(underlay_mtu=9000)
    wg = loads(config("wireguard", f'[[interfaces.t0.peers]]\npublic_key = "{PEER}"\n'
                      'endpoint = "[2001:db8::2]:51820"\n'), "<t>")  # fmt: skip
    line = describe_default_mtu(wg.interfaces["t0"], net)
    assert line == "8920 = 9000 (route to 2001:db8::2) - 80 (IPv6 underlay)"
    vx = loads(config("vxlan"), "<t>")
    assert describe_default_mtu(vx.interfaces["t0"], net).startswith("8930 = 9000 (device with")
    ov = loads(config("overlay"), "<t>")
    net.underlay_mtu = None  # type: ignore[assignment]  # no device holds the address
    assert describe_default_mtu(ov.interfaces["t0"], net) == (
        "1472 = 1500 (no device has 192.0.2.1 here: 1500) - 28 (IPv4 underlay)"
    )
    text = render(vx, {"t0": "8930 = ..."})
    assert "# mtu: unset (default here: 8930 = ...)" in text
    assert loads(text, "<t>") == vx


def test_show_text_has_the_mtu_line() -> None:
    from tunneld.show import format_show

    entry = {"type": "wireguard", "public_key": "k", "listen_port": 1, "mtu": 1420,
             "mtu_source": "1500 (route to 192.0.2.2) - 80 (IPv6 underlay)",
             "mss_clamp": [1380, 1360], "path_mtu": {"192.0.2.2": 1400},
             "icmp_too_big_sent": 2, "peers": []}  # fmt: skip
    text = format_show({"version": 1, "interfaces": {"wg0": entry}}, now=0)
    assert (
        "  mtu: 1420 (1500 (route to 192.0.2.2) - 80 (IPv6 underlay))  mss clamp: 1380/1360\n"
        in text
    )
    assert "  path mtu: 192.0.2.2 1400  (too-big ICMP sent: 2)" in text
    entry.update(mtu_source="config", mss_clamp=None, path_mtu={}, icmp_too_big_sent=0)
    text = format_show({"version": 1, "interfaces": {"wg0": entry}}, now=0)
    assert "  mtu: 1420\n" in text and "path mtu" not in text
