"""tunneld.config: examples load; broken configs fail with one line naming file, key, reason."""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import logging
import os
import pathlib
import re

import pytest

from tunneld.config import (
    Config,
    DaemonConfig,
    OverlayConfig,
    PeerConfig,
    Secret,
    VxlanConfig,
    WireguardConfig,
    check_config_main,
    load,
    loads,
    render,
)
from tunneld.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "configs").glob("*.toml"))
BAD = sorted((pathlib.Path(__file__).parent / "bad_configs").glob("*.toml"))
SECRET_LINE = re.compile(r'(?:private_key|preshared_key)\s*=\s*"([^"]*)"')

# Throwaway keys made with `wg genkey` / `wg pubkey` for these tests only.
PRIV = "kJfqk+WMcRtAMHr8fhaQPd/PpjGOaGx63E7DI2bmi0k="
PRIV_PUB = "uc82uMQWPLJbtOAYwnkrWv0lZRKI3IFYrsNW/sYEUj4="
PUB_A = "3YoEqPY6aoqJXJm1L3WA09VcQe9DulE8nGp3RuGBYig="
PUB_B = "aTdMvscftYwsRLEKAT+gcA86dRBQcqihVwsGmTb9Vjk="
PSK = "krgci445QTRX3baBIMtC8OxZlKx2AzVg+un2j8uJNL4="

VXLAN = """
[interfaces.vx0]
type = "vxlan"
vni = 42
local = "192.0.2.1"
"""

WG = f"""
[interfaces.wg0]
type = "wireguard"
private_key = "{PRIV}"
"""


def expectation(path: pathlib.Path) -> tuple[str, str]:
    first = path.read_text().splitlines()[0]
    match = re.fullmatch(r"# expect: (.+?) \| (.+)", first)
    assert match, f"{path.name}: first line must be '# expect: KEY | REASON'"
    return match.group(1), match.group(2)


def config_error(text: str, path: str = "<string>") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        loads(text, path)
    return info.value


# --- good files ----------------------------------------------------------------------------


def test_all_example_configs_present():
    names = {p.name for p in EXAMPLES}
    assert {
        "vxlan-site-a.toml",
        "wireguard-site-a.toml",
        "overlay-static.toml",
        "overlay-etcd.toml",
        "overlay-wireguard.toml",
    } <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_loads_and_render_hides_secrets(path):
    cfg = load(path)
    assert isinstance(cfg, Config) and cfg.interfaces
    out = render(cfg)
    secrets = SECRET_LINE.findall(path.read_text())
    for secret in secrets:
        assert secret not in out
        assert secret not in repr(cfg)
    if secrets:
        assert "(hidden)" in out
    hash(cfg)  # frozen all the way down: usable as a dict key when diffing reloads


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_render_round_trips(path):
    cfg = load(path)
    text = render(cfg)
    # Put the secrets back where render hid them, in file order, then parse the output again.
    secrets = iter(SECRET_LINE.findall(path.read_text()))
    restored = re.sub(r'"\(hidden\)"', lambda _: f'"{next(secrets)}"', text)
    assert loads(restored, str(path)) == cfg


def test_defaults_round_trip():
    cfg = loads(
        VXLAN
        + WG
        + """
[interfaces.ov0]
type = "overlay"
network = "10.5.0.0/16"
public_ip = "192.0.2.1"
subnet = "10.5.1.0/24"
"""
    )
    assert cfg.daemon == DaemonConfig()
    assert cfg.daemon.control_socket == "/run/tunneld/control.sock"
    assert cfg.daemon.log_level == "info"
    vx = cfg.interfaces["vx0"]
    assert vx == VxlanConfig(name="vx0", vni=42, local=ipaddress.ip_address("192.0.2.1"))
    assert (vx.type, vx.port, vx.learning, vx.ageing, vx.mtu, vx.bridge) == (
        "vxlan",
        4789,
        True,
        300.0,
        None,
        None,
    )
    assert vx.address == vx.flood == vx.fdb == ()
    wg = cfg.interfaces["wg0"]
    assert isinstance(wg, WireguardConfig)
    assert (wg.mtu, wg.listen_port, wg.peers) == (None, None, ())
    assert wg.private_key == Secret(base64.b64decode(PRIV))
    ov = cfg.interfaces["ov0"]
    assert isinstance(ov, OverlayConfig)
    assert (ov.subnet_len, ov.port, ov.encryption, ov.registry, ov.listen_port) == (
        24,
        8285,
        "none",
        "static",
        51820,
    )
    assert (ov.private_key, ov.hosts, ov.mtu) == (None, (), None)
    assert list(cfg.interfaces) == ["vx0", "wg0", "ov0"]  # file order
    again = loads(render(cfg).replace('"(hidden)"', f'"{PRIV}"'))
    assert again == cfg and hash(again) == hash(cfg)


def test_values_are_normalized():
    cfg = loads(
        VXLAN
        + """
address = ["10.88.0.1/24", "fd88::1/64"]
ageing = 30
[[interfaces.vx0.fdb]]
mac = "02-AB-00-00-00-02"
remote = "192.0.2.2"
"""
        + WG
        + f"""
[[interfaces.wg0.peers]]
public_key = "{PUB_A}"
endpoint = "[2001:db8::2]:51820"
persistent_keepalive = 0
allowed_ips = ["10.77.0.0/24", "10.77.0.2/32", "::/0"]
[[interfaces.wg0.peers]]
public_key = "{PUB_B}"
endpoint = "peer.example.org:51820"
"""
    )
    vx = cfg.interfaces["vx0"]
    assert vx.fdb[0].mac == "02:ab:00:00:00:02"
    assert vx.fdb[0].remote == ipaddress.IPv4Address("192.0.2.2")
    assert vx.address == (
        ipaddress.ip_interface("10.88.0.1/24"),
        ipaddress.ip_interface("fd88::1/64"),
    )
    assert vx.ageing == 30.0 and isinstance(vx.ageing, float)
    peers = cfg.interfaces["wg0"].peers
    assert peers[0] == PeerConfig(
        public_key=base64.b64decode(PUB_A),
        endpoint=("2001:db8::2", 51820),
        allowed_ips=tuple(map(ipaddress.ip_network, ["10.77.0.0/24", "10.77.0.2/32", "::/0"])),
    )
    assert peers[0].persistent_keepalive is None  # 0 means off
    assert peers[1].endpoint == ("peer.example.org", 51820)
    assert '"[2001:db8::2]:51820"' in render(cfg)


def test_config_equality_detects_changes():
    a, b = loads(VXLAN), loads(VXLAN)
    assert a == b
    assert loads(VXLAN + "port = 4790\n") != a
    assert {a: 1}[b] == 1


def test_secret_never_shows():
    secret = Secret(base64.b64decode(PRIV))
    assert repr(secret) == str(secret) == f"{secret}" == "(hidden)"
    assert secret.value == base64.b64decode(PRIV)
    assert secret == Secret(base64.b64decode(PRIV)) and secret != Secret(bytes(32))
    assert hash(secret) == hash(Secret(base64.b64decode(PRIV)))
    cfg = loads(WG)
    assert PRIV not in repr(cfg) and "(hidden)" in repr(cfg)


def test_render_shows_derived_public_key():
    assert PRIV_PUB in render(loads(WG))


def test_relative_control_socket_and_key_file_resolve_against_config_dir(tmp_path):
    (tmp_path / "wg0.key").write_text(PRIV + "\n")
    os.chmod(tmp_path / "wg0.key", 0o600)
    (tmp_path / "psk").write_text(PSK)
    os.chmod(tmp_path / "psk", 0o400)
    conf = tmp_path / "site.toml"
    conf.write_text(f"""
[daemon]
control_socket = "run/control.sock"
[interfaces.wg0]
type = "wireguard"
private_key_file = "wg0.key"
[[interfaces.wg0.peers]]
public_key = "{PUB_A}"
preshared_key_file = "{tmp_path / "psk"}"
""")
    cfg = load(conf)
    assert cfg.path == str(conf)
    assert cfg.daemon.control_socket == str(tmp_path / "run" / "control.sock")
    assert cfg.interfaces["wg0"].private_key.value == base64.b64decode(PRIV)
    assert cfg.interfaces["wg0"].peers[0].preshared_key.value == base64.b64decode(PSK)


def test_inline_keys_in_readable_file_warn(tmp_path, caplog):
    conf = tmp_path / "wg.toml"
    conf.write_text(WG)
    os.chmod(conf, 0o644)
    with caplog.at_level(logging.WARNING, logger="tunneld.config"):
        load(conf)
    assert "readable by group or others" in caplog.text
    assert PRIV not in caplog.text
    caplog.clear()
    os.chmod(conf, 0o600)
    with caplog.at_level(logging.WARNING, logger="tunneld.config"):
        load(conf)
    assert caplog.text == ""


def test_overlay_etcd_defaults():
    ov = loads("""
[interfaces.flannel0]
type = "overlay"
public_ip = "2001:db8::1"
registry = "etcd"
""").interfaces["flannel0"]
    assert (ov.network, ov.subnet_len, ov.subnet) == (None, None, None)
    assert ov.etcd_endpoints == ("http://127.0.0.1:2379",)
    assert (ov.etcd_prefix, ov.lease_ttl) == ("/coreos.com/network", 86400)


def test_dataclasses_are_frozen():
    cfg = loads(VXLAN)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.interfaces["vx0"].vni = 7  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.interfaces["vx1"] = cfg.interfaces["vx0"]  # type: ignore[index]


# --- broken files --------------------------------------------------------------------------


def test_enough_bad_configs():
    assert len(BAD) >= 15
    for path in BAD:
        assert re.fullmatch(r"\d\d-[a-z0-9-]+\.toml", path.name), path.name


def assert_one_clean_line(message: str, file: str, secrets: list[str]) -> None:
    assert "\n" not in message
    assert message.startswith(f"{file}: ")
    assert "Traceback" not in message
    for secret in secrets:
        assert secret not in message


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_bad_config(path):
    key, reason = expectation(path)
    with pytest.raises(ConfigError) as info:
        load(path)
    error = info.value
    assert error.exit_code == 2
    assert (error.file, error.key) == (str(path), key)
    assert reason in error.reason
    assert_one_clean_line(str(error), str(path), SECRET_LINE.findall(path.read_text()))
    assert str(error) == f"{path}: {key}: {error.reason}"


@pytest.mark.parametrize("path", BAD[:3] + BAD[-3:], ids=lambda p: p.name)
def test_check_config_main_fails_with_one_line(path, capsys):
    assert check_config_main(path) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"{path}: ")
    key, reason = expectation(path)
    assert f": {key}: " in err and reason in err


def test_check_config_main_ok(capsys):
    path = ROOT / "configs" / "wireguard-site-a.toml"
    assert check_config_main(path) == 0
    out, _ = capsys.readouterr()
    assert "[interfaces.wg0]" in out and "(hidden)" in out
    for secret in SECRET_LINE.findall(path.read_text()):
        assert secret not in out


def test_check_config_main_missing_file(tmp_path, capsys):
    assert check_config_main(tmp_path / "nope.toml") == 2
    _, err = capsys.readouterr()
    assert err.count("\n") == 1 and "cannot read config file" in err


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_key_file_readable_by_group_or_others(tmp_path, mode):
    key = tmp_path / "wg0.key"
    key.write_text(PRIV)
    os.chmod(key, mode)
    conf = tmp_path / "wg.toml"
    conf.write_text('[interfaces.wg0]\ntype = "wireguard"\nprivate_key_file = "wg0.key"\n')
    with pytest.raises(ConfigError) as info:
        load(conf)
    assert info.value.key == "interfaces.wg0.private_key_file"
    assert "readable by group or others" in info.value.reason
    assert_one_clean_line(str(info.value), str(conf), [PRIV])


def test_endpoint_with_a_long_digit_run_is_rejected_at_once(tmp_path):
    """Regression (fuzzing, wg_import): this host made the old hostname regex backtrack
    for minutes."""
    host = "19" + "9" * 64 + ".0s = 10.77.0.1/24,.2.2"
    peer = base64.b64encode(bytes(range(1, 33))).decode()
    text = WG + f'[[interfaces.wg0.peers]]\npublic_key = "{peer}"\nendpoint = "{host}:51820"\n'
    error = config_error(text, str(tmp_path / "wg.toml"))
    assert error.key.endswith("endpoint")


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_key_file_that_is_not_a_regular_file(tmp_path, kind):
    """A FIFO (nobody writing) must not hang the load, a device must not be read: both are
    refused, as is a directory (found by fuzzing the loader with key file paths)."""
    key = tmp_path / "wg0.key"
    if kind == "fifo":
        os.mkfifo(key, 0o600)
    elif kind == "directory":
        key.mkdir(mode=0o700)
    target = "/dev/null" if kind == "device" else "wg0.key"
    conf = tmp_path / "wg.toml"
    conf.write_text(f'[interfaces.wg0]\ntype = "wireguard"\nprivate_key_file = "{target}"\n')
    with pytest.raises(ConfigError) as info:
        load(conf)
    assert info.value.key == "interfaces.wg0.private_key_file"
    assert_one_clean_line(str(info.value), str(conf), [PRIV])


@pytest.mark.parametrize(
    "content", ["not base64 at all!", base64.b64encode(bytes(31)).decode(), "\xff\xfe garbage"]
)
def test_bad_key_file_content(tmp_path, content):
    key = tmp_path / "wg0.key"
    key.write_text(content, encoding="latin-1")
    os.chmod(key, 0o600)
    conf = tmp_path / "wg.toml"
    conf.write_text('[interfaces.wg0]\ntype = "wireguard"\nprivate_key_file = "wg0.key"\n')
    error = config_error(conf.read_text(), str(conf))
    assert error.key == "interfaces.wg0.private_key_file"
    assert_one_clean_line(str(error), str(conf), [content])


# Small cases that do not need a file of their own: (config text, key path, reason substring).
INLINE_CASES = [
    ("[interfaces.vx0]\ntype = 3\n", "interfaces.vx0.type", "unknown interface type an integer"),
    ("interfaces = 5\n", "interfaces", "expected a table, got an integer"),
    ('[interfaces]\nvx0 = "vxlan"\n', "interfaces.vx0", "expected a table, got a string"),
    (VXLAN.replace("vx0", '"a/b"'), 'interfaces."a/b"', "not a valid Linux interface name"),
    (VXLAN.replace("vx0", "'..'"), 'interfaces.".."', "not a valid Linux interface name"),
    (VXLAN.replace("vx0", '"a b"'), 'interfaces."a b"', "not a valid Linux interface name"),
    (VXLAN + "vni = -1\n", "", ""),  # duplicate key in TOML: syntax error
    (VXLAN.replace("42", "-1"), "interfaces.vx0.vni", "-1 is out of range 0..16777215"),
    (VXLAN + "port = 0\n", "interfaces.vx0.port", "out of range 1..65535"),
    (VXLAN + "learning = 1\n", "interfaces.vx0.learning", "expected a boolean"),
    (VXLAN + "ageing = true\n", "interfaces.vx0.ageing", "expected a number, got a boolean"),
    (VXLAN + "ageing = inf\n", "interfaces.vx0.ageing", "not a positive number"),
    (VXLAN + "mtu = 1450.0\n", "interfaces.vx0.mtu", "expected an integer, got a float"),
    (VXLAN + 'bridge = "vx0 "\n', "interfaces.vx0.bridge", "not a valid Linux interface name"),
    (VXLAN + 'address = ["10.0.0.1/24", "10.0.0.1/24"]\n', "interfaces.vx0.address[1]", "twice"),
    (VXLAN + 'flood = ["192.0.2.1/32"]\n', "interfaces.vx0.flood[0]", "is not an IP address"),
    (VXLAN + 'flood = ["224.0.0.1"]\n', "interfaces.vx0.flood[0]", "not a unicast address"),
    (
        VXLAN + '[[interfaces.vx0.fdb]]\nmac = "ff:ff:ff:ff:ff:ff"\nremote = "192.0.2.2"\n',
        "interfaces.vx0.fdb[0].mac",
        "multicast",
    ),
    (
        VXLAN + '[[interfaces.vx0.fdb]]\nmac = "00:00:00:00:00:00"\nremote = "192.0.2.2"\n',
        "interfaces.vx0.fdb[0].mac",
        "use 'flood'",
    ),
    (
        VXLAN + '[[interfaces.vx0.fdb]]\nmac = "02:00:00:00:00:02"\n',
        "interfaces.vx0.fdb[0].remote",
        "missing required key",
    ),
    (
        VXLAN
        + '[[interfaces.vx0.fdb]]\nmac = "02:00:00:00:00:02"\nremote = "192.0.2.2"\nvlan = 1\n',
        "interfaces.vx0.fdb[0].vlan",
        "unknown key",
    ),
    (
        VXLAN + VXLAN.replace("vx0", "vx1").replace('"192.0.2.1"', '"0.0.0.0"'),
        "interfaces.vx1.port",
        "already used by interfaces.vx0.port",
    ),
    (
        VXLAN + 'bridge = "vx1"\n' + VXLAN.replace("vx0", "vx1").replace("4", "5") + "port = 1\n",
        "interfaces.vx0.bridge",
        "is a tunneld interface, not a bridge",
    ),
    (
        '[interfaces.wg0]\ntype = "wireguard"\n',
        "interfaces.wg0.private_key",
        "missing required key",
    ),
    (WG + "listen_port = 0\n", "interfaces.wg0.listen_port", "out of range 1..65535"),
    (WG + "mtu = 70000\n", "interfaces.wg0.mtu", "out of range 576..65535"),
    (
        WG + f'[[interfaces.wg0.peers]]\npublic_key = "{PRIV_PUB}"\n',
        "interfaces.wg0.peers[0].public_key",
        "own public key",
    ),
    (
        WG + '[[interfaces.wg0.peers]]\nendpoint = "192.0.2.2:1"\n',
        "interfaces.wg0.peers[0].public_key",
        "missing required key",
    ),
    (
        WG + '[[interfaces.wg0.peers]]\npublic_key = "abc"\n',
        "interfaces.wg0.peers[0].public_key",
        "public key is not valid base64",
    ),
    (
        WG + f'[[interfaces.wg0.peers]]\npublic_key = "{PUB_A}"\nendpoint = "192.0.2.2"\n',
        "interfaces.wg0.peers[0].endpoint",
        "needs a port",
    ),
    (
        WG + f'[[interfaces.wg0.peers]]\npublic_key = "{PUB_A}"\nendpoint = "192.0.2.2:70000"\n',
        "interfaces.wg0.peers[0].endpoint",
        "out of range 1..65535",
    ),
    (
        WG + f'[[interfaces.wg0.peers]]\npublic_key = "{PUB_A}"\nendpoint = "[10.0.0.1]:5"\n',
        "interfaces.wg0.peers[0].endpoint",
        "not an IPv6 address",
    ),
    (
        WG + f'[[interfaces.wg0.peers]]\npublic_key = "{PUB_A}"\nendpoint = "300.1.1.1:5"\n',
        "interfaces.wg0.peers[0].endpoint",
        "not an IPv4 address or DNS name",
    ),
    (
        WG
        + f'[[interfaces.wg0.peers]]\npublic_key = "{PUB_A}"\n'
        + 'allowed_ips = ["10.0.0.0/8", "10.0.0.0/8"]\n',
        "interfaces.wg0.peers[0].allowed_ips[1]",
        "already allowed",
    ),
    (
        WG + f'[[interfaces.wg0.peers]]\npublic_key = "{PUB_A}"\npersistent_keepalive = 65536\n',
        "interfaces.wg0.peers[0].persistent_keepalive",
        "out of range",
    ),
    (
        WG + f'[[interfaces.wg0.peers]]\npublic_key = "{PUB_A}"\npreshared_key = "{PSK}"\n'
        f'preshared_key_file = "x"\n',
        "interfaces.wg0.peers[0].preshared_key_file",
        "not both",
    ),
    (
        '[interfaces.o]\ntype = "overlay"\npublic_ip = "192.0.2.1"\nregistry = "etcd"\n'
        "etcd_endpoints = []\n",
        "interfaces.o.etcd_endpoints",
        "at least one",
    ),
    (
        '[interfaces.o]\ntype = "overlay"\npublic_ip = "192.0.2.1"\nregistry = "etcd"\n'
        'etcd_endpoints = ["127.0.0.1:2379"]\n',
        "interfaces.o.etcd_endpoints[0]",
        "not an http",
    ),
    (
        '[interfaces.o]\ntype = "overlay"\npublic_ip = "192.0.2.1"\nregistry = "etcd"\n'
        'etcd_prefix = "coreos.com/"\n',
        "interfaces.o.etcd_prefix",
        "must start with '/'",
    ),
    (
        '[interfaces.o]\ntype = "overlay"\npublic_ip = "192.0.2.1"\nregistry = "etcd"\n'
        "lease_ttl = 0\n",
        "interfaces.o.lease_ttl",
        "out of range",
    ),
    (
        '[interfaces.o]\ntype = "overlay"\npublic_ip = "192.0.2.1"\nregistry = "etcd"\n'
        'network = "fd00::/48"\n',
        "interfaces.o.network",
        "not an IPv4 prefix",
    ),
    (
        '[interfaces.o]\ntype = "overlay"\npublic_ip = "192.0.2.1"\nregistry = "consul"\n',
        "interfaces.o.registry",
        "is not one of: static, etcd",
    ),
    (
        '[interfaces.o]\ntype = "overlay"\nnetwork = "10.5.0.0/24"\npublic_ip = "192.0.2.1"\n'
        'subnet = "10.5.0.0/26"\n',
        "interfaces.o.subnet_len",
        "default 24 does not fit",
    ),
    (
        '[interfaces.o]\ntype = "overlay"\nnetwork = "10.5.0.0/16"\nsubnet_len = 16\n'
        'public_ip = "192.0.2.1"\nsubnet = "10.5.0.0/16"\n',
        "interfaces.o.subnet_len",
        "17..30",
    ),
    (
        '[interfaces.o]\ntype = "overlay"\nnetwork = "10.5.0.0/16"\npublic_ip = "192.0.2.1"\n'
        'subnet = "10.6.1.0/24"\n',
        "interfaces.o.subnet",
        "outside network",
    ),
    (
        '[interfaces.o]\ntype = "overlay"\nnetwork = "10.5.0.0/16"\npublic_ip = "192.0.2.1"\n'
        'subnet = "10.5.1.0/24"\nprivate_key = "x"\n',
        "interfaces.o.private_key",
        'only used with encryption = "wireguard"',
    ),
    (
        '[interfaces.o]\ntype = "overlay"\nnetwork = "10.5.0.0/16"\npublic_ip = "192.0.2.1"\n'
        'subnet = "10.5.1.0/24"\n[[interfaces.o.hosts]]\nsubnet = "10.5.2.0/24"\n'
        'public_ip = "192.0.2.1"\n',
        "interfaces.o.hosts[0].public_ip",
        "duplicate public_ip",
    ),
    (
        '[interfaces.o]\ntype = "overlay"\nnetwork = "10.5.0.0/16"\npublic_ip = "192.0.2.1"\n'
        'subnet = "10.5.1.0/24"\n[[interfaces.o.hosts]]\nsubnet = "10.5.2.0/24"\n'
        f'public_ip = "192.0.2.2"\npublic_key = "{PUB_A}"\n',
        "interfaces.o.hosts[0].public_key",
        'only used with encryption = "wireguard"',
    ),
    (
        '[interfaces.o]\ntype = "overlay"\nnetwork = "10.5.0.0/16"\npublic_ip = "192.0.2.1"\n'
        f'subnet = "10.5.1.0/24"\nencryption = "wireguard"\nprivate_key = "{PRIV}"\n'
        f'[[interfaces.o.hosts]]\nsubnet = "10.5.2.0/24"\npublic_ip = "192.0.2.2"\n'
        f'public_key = "{PUB_A}"\n'
        f'[[interfaces.o.hosts]]\nsubnet = "10.5.3.0/24"\npublic_ip = "192.0.2.3"\n'
        f'public_key = "{PUB_A}"\n',
        "interfaces.o.hosts[1].public_key",
        "duplicate public_key",
    ),
    (
        '[interfaces.o]\ntype = "overlay"\nnetwork = "10.5.0.0/16"\npublic_ip = "192.0.2.1"\n'
        'subnet = "10.5.1.0/24"\nport = 4789\n' + VXLAN.replace('"192.0.2.1"', '"192.0.2.9"'),
        "interfaces.vx0.port",
        "UDP port 4789 is already used by interfaces.o.port",
    ),
    ('[daemon]\ncontrol_socket = "/' + "x" * 120 + '"\n', "daemon.control_socket", "longer than"),
    ("[daemon]\nlog_level = 1\n", "daemon.log_level", "expected a string, got an integer"),
    ("[daemon]\nstart = 1979-05-27\n", "daemon.start", "unknown key"),
]


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    INLINE_CASES,
    ids=[f"{i:02}-{case[1] or 'syntax'}" for i, case in enumerate(INLINE_CASES)],
)
def test_inline_bad_config(text, key, reason):
    error = config_error(text, "/etc/tunneld/site.toml")
    if key == "":
        assert error.key == "(syntax)" and "line" in error.reason
    else:
        assert (error.key, reason in error.reason) == (key, True), str(error)
    assert_one_clean_line(str(error), "/etc/tunneld/site.toml", [PRIV, PSK])


def test_ok_cases_that_look_suspicious():
    # nested allowed-ips prefixes on different peers are fine (longest match wins)
    loads(
        WG
        + f"""
[[interfaces.wg0.peers]]
public_key = "{PUB_A}"
allowed_ips = ["10.0.0.0/8"]
[[interfaces.wg0.peers]]
public_key = "{PUB_B}"
allowed_ips = ["10.1.0.0/16", "0.0.0.0/0"]
"""
    )
    # the same port on different local addresses, and a random listen port twice
    loads(
        VXLAN
        + VXLAN.replace("vx0", "vx1").replace("192.0.2.1", "192.0.2.2")
        + WG
        + WG.replace("wg0", "wg1")
    )
    # interface names up to 15 bytes, with dots and dashes
    loads(VXLAN.replace("vx0", '"vx.site-b_15ch"'))
    # a config without interfaces is valid (the daemon serves only its control socket)
    assert loads("").interfaces == {}
    # log level is case-insensitive
    assert loads('[daemon]\nlog_level = "DEBUG"\n').daemon.log_level == "debug"


def test_handshake_load_threshold_default_and_range():
    key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
    base = f'[interfaces.wg0]\ntype = "wireguard"\nprivate_key = "{key}"\n'
    assert loads(base).interfaces["wg0"].handshake_load_threshold == 128
    assert (
        loads(base + "handshake_load_threshold = 20\n").interfaces["wg0"].handshake_load_threshold
        == 20
    )
    with pytest.raises(ConfigError, match=r"handshake_load_threshold: 0 is out of range"):
        loads(base + "handshake_load_threshold = 0\n")
