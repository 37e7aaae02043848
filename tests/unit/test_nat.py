"""NAT for site gateways: config keys, the nft text (proto/nat.py), the daemon's table
(links/nat.py) against kernel.nft.FakeNft. The kernel side is tests/netns/test_nat.py."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import types

import pytest

from tunneld.config import load, loads, render
from tunneld.errors import ConfigError, SetupError
from tunneld.kernel.nft import FakeNft
from tunneld.links.nat import NatTable, rules, sources
from tunneld.proto import nat

PRIV = "kJfqk+WMcRtAMHr8fhaQPd/PpjGOaGx63E7DI2bmi0k="
PUB_A = "3YoEqPY6aoqJXJm1L3WA09VcQe9DulE8nGp3RuGBYig="

GATEWAY = f"""
[daemon]
control_socket = "/run/tunneld-test/control.sock"

[interfaces.wg0]
type = "wireguard"
address = ["10.77.0.1/24", "fd77::1/64"]
private_key = "{PRIV}"
masquerade = ["eth0", "eth1"]

[[interfaces.wg0.peers]]
public_key = "{PUB_A}"
allowed_ips = ["10.77.0.2/32", "192.168.50.0/24", "fd77::2/128"]

[[interfaces.wg0.forward]]
proto = "tcp"
port = 8080
to = "10.77.0.2:80"

[[interfaces.wg0.forward]]
proto = "udp"
port = "5000 - 5010"
to = "[fd77::2]"

[interfaces.flannel0]
type = "overlay"
network = "10.5.0.0/16"
subnet = "10.5.1.0/24"
public_ip = "192.0.2.1"
masquerade = "eth0"
"""


def net(text: str) -> nat.IPNetwork:
    return ipaddress.ip_network(text)


# --- config ------------------------------------------------------------------------------


def test_config_keys_are_normalized():
    cfg = loads(GATEWAY)
    wg, overlay = cfg.interfaces["wg0"], cfg.interfaces["flannel0"]
    assert wg.masquerade == ("eth0", "eth1") and overlay.masquerade == ("eth0",)
    assert [(f.proto, f.port, f.to) for f in wg.forward] == [
        ("tcp", 8080, "10.77.0.2:80"),
        ("udp", "5000-5010", "fd77::2"),
    ]
    assert wg.forward[0].ports == (8080, 8080) and wg.forward[1].ports == (5000, 5010)
    assert wg.forward[0].target == (ipaddress.ip_address("10.77.0.2"), 80)
    assert wg.forward[1].target == (ipaddress.ip_address("fd77::2"), None)
    assert overlay.forward == () and cfg.interfaces["wg0"].type == "wireguard"


def test_render_round_trips_the_nat_keys():
    cfg = loads(GATEWAY)
    again = loads(render(cfg).replace('"(hidden)"', f'"{PRIV}"'))
    for name in cfg.interfaces:
        a, b = cfg.interfaces[name], again.interfaces[name]
        assert (a.masquerade, a.forward) == (b.masquerade, b.forward)


def test_a_nat_only_change_leaves_the_interface_equal():
    """The reload transaction compares interface configs to decide what to touch: the NAT
    keys live in the daemon's one table, so changing them must not rebuild a link."""
    old = loads(GATEWAY)
    new = loads(GATEWAY.replace("port = 8080", "port = 8081").replace('"eth1"', '"eth2"'))
    assert old.interfaces["wg0"] == new.interfaces["wg0"]
    assert old.interfaces["wg0"].forward != new.interfaces["wg0"].forward


@pytest.mark.parametrize(
    ("snippet", "key", "reason"),
    [
        ("masquerade = 3", "masquerade", "expected an interface name or an array of them"),
        ('masquerade = ["eth0", "eth0"]', "masquerade[1]", "'eth0' is listed twice"),
        ('masquerade = "a/b"', "masquerade", "not a valid Linux interface name"),
        ('masquerade = "wg0"', "masquerade", "names this interface itself"),
        ("masquerade = 'a\"b'", "masquerade", "nftables cannot match a device name"),
        ("masquerade = 'a\\\\b'", "masquerade", "nftables cannot match a device name"),
        ('[[interfaces.wg0.forward]]\nproto = "tcp"\nto = "10.0.0.2"', "forward[0].port",
         "missing required key"),
        ('[[interfaces.wg0.forward]]\nproto = "tcp"\nport = 0\nto = "10.0.0.2"',
         "forward[0].port", "0 is out of range 1..65535"),
        ('[[interfaces.wg0.forward]]\nproto = "tcp"\nport = "90-80"\nto = "10.0.0.2"',
         "forward[0].port", "a range needs 1 <= low < high <= 65535"),
        ('[[interfaces.wg0.forward]]\nproto = "tcp"\nport = true\nto = "10.0.0.2"',
         "forward[0].port", 'expected a port number or a range "low-high", got a boolean'),
        ('[[interfaces.wg0.forward]]\nproto = "tcp"\nport = 80\nto = "10.0.0.2:99999"',
         "forward[0].to", "port '99999' is out of range"),
        ('[[interfaces.wg0.forward]]\nproto = "tcp"\nport = 80\nto = "127.0.0.1"',
         "forward[0].to", "not a unicast address of another host"),
        ('[[interfaces.wg0.forward]]\nproto = "tcp"\nport = 80\nto = "fd00::2:80"',
         "forward[0].to", None),
        ('[[interfaces.wg0.forward]]\nproto = "tcp"\nport = 80\nto = "10.0.0.2"\nx = 1',
         "forward[0].x", "unknown key"),
    ],
)  # fmt: skip
def test_bad_nat_keys(snippet, key, reason):
    text = f'[interfaces.wg0]\ntype = "wireguard"\naddress = ["10.77.0.1/24"]\n' \
           f'private_key = "{PRIV}"\n{snippet}\n'  # fmt: skip
    if reason is None:  # "fd00::2:80" is an IPv6 address: accepted, the port is kept
        assert loads(text).interfaces["wg0"].forward[0].to == "fd00::2:80"
        return
    with pytest.raises(ConfigError) as info:
        loads(text, "site.toml")
    assert info.value.key == f"interfaces.wg0.{key}"
    assert reason in info.value.reason


def test_a_forward_on_an_interface_named_with_a_star():
    text = f'[interfaces."wg*"]\ntype = "wireguard"\naddress = ["10.77.0.1/24"]\n' \
           f'private_key = "{PRIV}"\nmasquerade = "eth*"\n'  # fmt: skip
    assert loads(text).interfaces["wg*"].masquerade == ("eth*",)  # nft's wildcard: eth0, eth1...
    fwd = '[[interfaces."wg*".forward]]\nproto = "tcp"\nport = 80\nto = "10.77.0.2"\n'
    with pytest.raises(ConfigError, match="would read '\\*' as a wildcard") as info:
        loads(text + fwd)
    assert info.value.key == 'interfaces."wg*".forward'


def test_same_port_in_two_families_is_fine():
    text = GATEWAY + '\n[[interfaces.wg0.forward]]\nproto = "tcp"\nport = 8080\nto = "fd77::2"\n'
    assert len(loads(text).interfaces["wg0"].forward) == 3
    clash = GATEWAY + '\n[[interfaces.flannel0.forward]]\nproto = "udp"\nport = 5005\n' \
                      'to = "[fd77::9]:1"\n'  # fmt: skip
    with pytest.raises(ConfigError, match="overlaps interfaces.wg0.forward"):
        loads(clash)


# --- the nft text -------------------------------------------------------------------------


def test_ruleset_text():
    table = nat.table_name("/run/tunneld/control.sock")
    assert table == nat.table_name("/run/tunneld/control.sock") != nat.table_name("/run/b.sock")
    assert table.startswith("tunneld_") and len(table) == 16
    text = nat.ruleset(
        table,
        [nat.Masquerade("wg0", "eth0", (net("10.77.0.0/24"), net("10.77.0.2/32"),
                                         net("10.77.1.0/24"), net("fd77::/64")))],
        [nat.Forward("wg0", "tcp", 8080, 8080, ipaddress.ip_address("10.77.0.2"), 80),
         nat.Forward("wg0", "udp", 5000, 5010, ipaddress.ip_address("fd77::2"), None),
         nat.Forward("wg0", "tcp", 443, 443, ipaddress.ip_address("fd77::2"), 8443)],
    )  # fmt: skip
    assert text == (
        f"table inet {table} {{}}\n"
        f"delete table inet {table}\n"
        f"table inet {table} {{\n"
        "\tchain prerouting {\n"
        "\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
        '\t\tiifname != "wg0" meta nfproto ipv4 fib daddr type local tcp dport 8080 '
        'dnat ip to 10.77.0.2:80 comment "wg0 forward tcp 8080"\n'
        '\t\tiifname != "wg0" meta nfproto ipv6 fib daddr type local udp dport 5000-5010 '
        'dnat ip6 to fd77::2 comment "wg0 forward udp 5000-5010"\n'
        '\t\tiifname != "wg0" meta nfproto ipv6 fib daddr type local tcp dport 443 '
        'dnat ip6 to [fd77::2]:8443 comment "wg0 forward tcp 443"\n'
        "\t}\n"
        "\tchain postrouting {\n"
        "\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
        '\t\toifname "eth0" ip saddr { 10.77.0.0/23 } masquerade comment "wg0 masquerade"\n'
        '\t\toifname "eth0" ip6 saddr { fd77::/64 } masquerade comment "wg0 masquerade"\n'
        "\t}\n"
        "}\n"
    )


def test_only_the_chains_in_use_and_removal():
    only_v4 = nat.ruleset("t", [nat.Masquerade("vx0", "eth0", (net("10.88.0.0/24"),))], [])
    assert "prerouting" not in only_v4 and "ip6" not in only_v4
    assert nat.removal("t") == "table inet t {}\ndelete table inet t\n"
    assert nat.is_empty([nat.Masquerade("vx0", "eth0", ())], [])
    assert not nat.is_empty([], [nat.Forward("a", "tcp", 1, 1, ipaddress.ip_address("::2"), None)])


# --- what the daemon installs ---------------------------------------------------------------


def test_sources_per_type():
    cfg = loads(GATEWAY)
    assert sources(cfg.interfaces["wg0"]) == [
        net("10.77.0.0/24"), net("fd77::/64"), net("10.77.0.2/32"), net("192.168.50.0/24"),
        net("fd77::2/128"),
    ]  # fmt: skip
    assert sources(cfg.interfaces["flannel0"]) == [net("10.5.0.0/16")]
    etcd = dataclasses.replace(cfg.interfaces["flannel0"], network=None, registry="etcd")
    assert sources(etcd) == []
    link = types.SimpleNamespace(registry=types.SimpleNamespace(network=net("10.9.0.0/16")))
    assert sources(etcd, link) == [net("10.9.0.0/16")]
    masquerades, forwards = rules(cfg, {})
    assert [(m.tunnel, m.out) for m in masquerades] == [
        ("wg0", "eth0"), ("wg0", "eth1"), ("flannel0", "eth0"),
    ]  # fmt: skip
    assert [(f.proto, f.low, f.high) for f in forwards] == [("tcp", 8080, 8080),
                                                            ("udp", 5000, 5010)]  # fmt: skip


@pytest.fixture
def table(monkeypatch):
    monkeypatch.setattr(NatTable, "nft", FakeNft())
    sysctls = {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"}
    monkeypatch.setattr(NatTable, "sysctl", staticmethod(sysctls.get))
    t = NatTable("/run/tunneld-test/control.sock")
    t.sysctls = sysctls  # type: ignore[attr-defined]
    return t


def test_lifecycle_runs_nft_only_for_changes(table):
    fake, cfg = table.nft, loads(GATEWAY)
    plain = loads(f'[interfaces.wg0]\ntype = "wireguard"\nprivate_key = "{PRIV}"\n')
    asyncio.run(table.start(plain, {}))
    assert fake.applied == [] and table.text is None
    asyncio.run(table.stop())
    assert fake.applied == []  # no table of ours: nft never runs

    asyncio.run(table.prepare(cfg, {}))  # a reload that adds NAT: checked, not applied
    assert fake.checked == [table.render(cfg, {})] and fake.applied == []
    asyncio.run(table.commit(cfg, {}))
    assert fake.applied == [table.render(cfg, {})] and table.text == fake.applied[-1]
    asyncio.run(table.prepare(cfg, {}))
    asyncio.run(table.commit(cfg, {}))  # unchanged: no nft run at all
    assert len(fake.checked) == 1 and len(fake.applied) == 1

    moved = loads(GATEWAY.replace("port = 8080", "port = 8081"))
    asyncio.run(table.commit(moved, {}))
    assert "dport 8081" in fake.applied[-1] and "dport 8080" not in fake.applied[-1]
    asyncio.run(table.commit(plain, {}))  # the last NAT key removed: the table goes
    assert fake.applied[-1] == nat.removal(table.table) and table.text is None
    asyncio.run(table.commit(cfg, {}))
    asyncio.run(table.stop())
    assert fake.applied[-1] == nat.removal(table.table) and table.text is None


def test_failures(table, caplog):
    fake, cfg = table.nft, loads(GATEWAY)
    fake.fail = "Error: Could not process rule"
    with pytest.raises(SetupError, match="nft apply failed"):
        asyncio.run(table.start(cfg, {}))  # the daemon's start fails (exit 1)
    with pytest.raises(SetupError, match="nft check failed"):
        asyncio.run(table.prepare(cfg, {}))  # the reload fails, nothing changed
    fake.fail = None
    asyncio.run(table.start(cfg, {}))
    fake.fail = "Error: boom"
    with caplog.at_level(logging.ERROR, "tunneld"):
        asyncio.run(table.commit(loads(GATEWAY.replace("8080", "8081")), {}))  # never raises
    assert "not changed: nft apply failed: Error: boom" in caplog.text
    assert table.text == fake.applied[-1] and "dport 8080" in table.text


def test_forwarding_off_is_a_warning_only(table, caplog):
    table.sysctls["net.ipv6.conf.all.forwarding"] = "0"
    with caplog.at_level(logging.WARNING, "tunneld"):
        asyncio.run(table.start(loads(GATEWAY), {}))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "net.ipv6.conf.all.forwarding is 0" in warnings[0]
    assert table.sysctls["net.ipv6.conf.all.forwarding"] == "0"  # not changed
    assert table.nft.applied


def test_bad_config_files_name_the_key(tmp_path):
    path = tmp_path / "site.toml"
    path.write_text(GATEWAY.replace('masquerade = "eth0"', 'masquerade = ""'))
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value).startswith(f"{path}: interfaces.flannel0.masquerade: ")


def test_show_lists_the_rules_in_force(table):
    from tunneld.show import format_show

    cfg = loads(GATEWAY)
    shown = {"wg0": {"type": "wireguard"}, "flannel0": {"type": "overlay"}, "x": {}}
    table.annotate(shown)
    assert shown == {"wg0": {"type": "wireguard"}, "flannel0": {"type": "overlay"}, "x": {}}
    asyncio.run(table.start(cfg, {}))
    table.annotate(shown)
    assert shown["wg0"]["nat"] == {
        "table": f"inet {table.table}",
        "masquerade": [
            {"out": out, "sources": ["10.77.0.0/24", "192.168.50.0/24", "fd77::/64"]}
            for out in ("eth0", "eth1")
        ],
        "forward": [{"proto": "tcp", "port": "8080", "to": "10.77.0.2:80"},
                    {"proto": "udp", "port": "5000-5010", "to": "fd77::2"}],
    }  # fmt: skip
    assert shown["flannel0"]["nat"]["masquerade"] == [{"out": "eth0", "sources": ["10.5.0.0/16"]}]
    assert "nat" not in shown["x"]
    text = format_show({"interfaces": {"wg0": shown["wg0"]}})
    assert "  masquerade: out eth1 from 10.77.0.0/24, 192.168.50.0/24, fd77::/64\n" in text
    assert "  forward: udp 5000-5010 -> fd77::2\n" in text
