"""`tunneld import`: wg-quick files -> tunneld TOML that tunneld's own loader accepts.

Good files are checked through `loads` of the output (the resolved Config), not by
comparing text; malformed files must name the line and the key.
"""

from __future__ import annotations

import os
import tomllib
from ipaddress import ip_interface, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunneld.config import loads
from tunneld.errors import ConfigError
from tunneld.proto.wg import encode_key, generate_private_key, public_key
from tunneld.wgimport import convert, interface_name, parse

PRIV = encode_key(generate_private_key(os.urandom))
OWN_PUB = encode_key(public_key(__import__("base64").b64decode(PRIV)))
PUB1 = encode_key(public_key(generate_private_key(os.urandom)))
PUB2 = encode_key(public_key(generate_private_key(os.urandom)))
PSK = encode_key(os.urandom(32))


def wg(body: str) -> str:
    return body.replace("PRIV", PRIV).replace("PUB1", PUB1).replace("PUB2", PUB2) \
        .replace("PSK", PSK).replace("OWN", OWN_PUB)  # fmt: skip


def imported(body: str, name: str = "wg0"):
    out = convert(wg(body), "wg0.conf", name)
    return out, loads(out, "<test>").interfaces[name]


# (id, wg-quick text, check on the resolved WireguardConfig)
GOOD = [
    ("minimal", "[Interface]\nPrivateKey = PRIV\n",
     lambda c: c.peers == () and c.listen_port is None and c.mtu is None),
    ("road-warrior",
     "[Interface]\nPrivateKey = PRIV\nAddress = 10.8.0.2/24\nDNS = 1.1.1.1\n\n"
     "[Peer]\nPublicKey = PUB1\nEndpoint = vpn.example.com:51820\n"
     "AllowedIPs = 0.0.0.0/0, ::/0\nPersistentKeepalive = 25\n",
     lambda c: c.address == (ip_interface("10.8.0.2/24"),)
     and c.peers[0].endpoint == ("vpn.example.com", 51820)
     and c.peers[0].allowed_ips == (ip_network("0.0.0.0/0"), ip_network("::/0"))
     and c.peers[0].persistent_keepalive == 25),
    ("server-two-peers-psk",
     "[Interface]\nPrivateKey = PRIV\nListenPort = 51820\nAddress = 10.0.0.1/24\nMTU = 1380\n"
     "[Peer]\nPublicKey = PUB1\nPresharedKey = PSK\nAllowedIPs = 10.0.0.2/32\n"
     "[Peer]\nPublicKey = PUB2\nAllowedIPs = 10.0.0.3/32, 192.168.5.0/24\n",
     lambda c: c.listen_port == 51820 and c.mtu == 1380 and len(c.peers) == 2
     and c.peers[0].preshared_key is not None and c.peers[1].preshared_key is None
     and c.peers[1].allowed_ips[1] == ip_network("192.168.5.0/24")),
    ("case-insensitive-keys-and-sections",
     "[interface]\nprivatekey=PRIV\nLISTENPORT = 1234\n[PEER]\npublickey = PUB1\n"
     "allowedIPs = 10.1.0.0/16\n",
     lambda c: c.listen_port == 1234 and c.peers[0].allowed_ips == (ip_network("10.1.0.0/16"),)),
    ("comments-blank-lines-crlf-whitespace",
     "# a comment\r\n\r\n  [Interface]   # trailing\r\n\tPrivateKey\t=\tPRIV # key\r\n"
     "Address = 10.0.0.1/24 # ours\r\n",
     lambda c: c.address == (ip_interface("10.0.0.1/24"),)),
    ("repeated-list-keys-add-up",
     "[Interface]\nPrivateKey = PRIV\nAddress = 10.0.0.1/24\nAddress = fd00::1/64, 10.9.0.1\n"
     "[Peer]\nPublicKey = PUB1\nAllowedIPs = 10.0.0.2/32\nAllowedIPs = fd00::2/128\n",
     lambda c: c.address == tuple(map(ip_interface, ["10.0.0.1/24", "fd00::1/64", "10.9.0.1/32"]))
     and len(c.peers[0].allowed_ips) == 2),
    ("ipv6-endpoint-and-no-prefix-allowed-ip",
     "[Interface]\nPrivateKey = PRIV\n[Peer]\nPublicKey = PUB1\n"
     "Endpoint = [2001:db8::7]:51820\nAllowedIPs = 10.0.0.2, fd00::2\n",
     lambda c: c.peers[0].endpoint == ("2001:db8::7", 51820)
     and c.peers[0].allowed_ips == (ip_network("10.0.0.2/32"), ip_network("fd00::2/128"))),
    ("host-bits-masked-like-the-kernel",
     "[Interface]\nPrivateKey = PRIV\n[Peer]\nPublicKey = PUB1\nAllowedIPs = 10.0.0.5/24\n",
     lambda c: c.peers[0].allowed_ips == (ip_network("10.0.0.0/24"),)),
    ("keepalive-off-and-listenport-0",
     "[Interface]\nPrivateKey = PRIV\nListenPort = 0\n[Peer]\nPublicKey = PUB1\n"
     "PersistentKeepalive = off\n",
     lambda c: c.listen_port is None and c.peers[0].persistent_keepalive is None),
    ("peer-without-allowed-ips", "[Interface]\nPrivateKey = PRIV\n[Peer]\nPublicKey = PUB1\n",
     lambda c: c.peers[0].allowed_ips == ()),
    ("peer-before-interface",
     "[Peer]\nPublicKey = PUB1\nAllowedIPs = 10.0.0.2/32\n[Interface]\nPrivateKey = PRIV\n",
     lambda c: len(c.peers) == 1),
    ("wg-quick-only-keys-become-comments",
     "[Interface]\nPrivateKey = PRIV\nTable = off\nFwMark = 0x1234\nDNS = 10.0.0.53, lan\n"
     "PreUp = echo pre\nPostUp = iptables -A FORWARD -i %i\nPostUp = echo two\n"
     "PreDown = true\nPostDown = echo down\nSaveConfig = true\n",
     lambda c: True),
]  # fmt: skip


@pytest.mark.parametrize("body,check", [g[1:] for g in GOOD], ids=[g[0] for g in GOOD])
def test_good_files_load_with_tunneld(body, check):
    out, cfg = imported(body)
    assert cfg.type == "wireguard" and cfg.private_key.value == __import__("base64").b64decode(PRIV)
    assert check(cfg), out
    assert PRIV in out, "a private key given inline stays inline"
    tomllib.loads(out)  # plain TOML too


def test_unsupported_keys_are_comments_that_say_so():
    out, cfg = imported(dict((g[0], g[1]) for g in GOOD)["wg-quick-only-keys-become-comments"])
    comments = [line for line in out.splitlines() if line.startswith("# ")]
    assert "# DNS = 10.0.0.53, lan (not supported by tunneld yet)" in comments, out
    assert any(c.startswith("# SaveConfig = true (tunneld never writes") for c in comments)
    # Table, FwMark and the hooks are tunneld keys (links/policy.py, runtime/hooks.py)
    assert not [c for c in comments if c.startswith(("# Table", "# FwMark", "# P"))], out
    assert (cfg.table, cfg.fwmark) == ("off", 0x1234)
    assert cfg.pre_up == ("echo pre",) and cfg.pre_down == ("true",)
    assert cfg.post_up == ("iptables -A FORWARD -i %i", "echo two")
    assert cfg.post_down == ("echo down",)


def test_full_tunnel_gets_policy_routing_not_a_note():
    """With `table` in the schema, a /0 is routed as wg-quick does: no warning note."""
    out, cfg = imported(
        "[Interface]\nPrivateKey = PRIV\nTable = main\n"
        "[Peer]\nPublicKey = PUB1\nAllowedIPs = ::/0\n"
    )
    assert "/0 here" not in out and cfg.table == 254
    _, cfg = imported(
        "[Interface]\nPrivateKey = PRIV\n[Peer]\nPublicKey = PUB1\nAllowedIPs = ::/0\n"
    )
    assert cfg.table == "auto"


def test_single_valued_key_repeated_takes_the_last_like_wg():
    _, cfg = imported("[Interface]\nPrivateKey = PRIV\nListenPort = 1\nListenPort = 2\n")
    assert cfg.listen_port == 2


def test_toml_strings_are_escaped():
    # a name wg-quick allows that is not a bare TOML key, and an endpoint name
    out, cfg = imported("[Interface]\nPrivateKey = PRIV\n", name="wg.0")
    assert '[interfaces."wg.0"]' in out and cfg.name == "wg.0"


@pytest.mark.parametrize("path,name", [("/etc/wireguard/wg0.conf", "wg0"), ("office=1.conf",
                         "office=1"), ("a/b/x_y-z+.conf", "x_y-z+")])  # fmt: skip
def test_interface_name_from_file_name_like_wg_quick(path, name):
    assert interface_name(path) == name


@pytest.mark.parametrize("path", ["wg0.toml", "/etc/wireguard/name-longer-than-15.conf", ".conf"])
def test_bad_file_names_are_refused(path):
    with pytest.raises(ConfigError, match="--name"):
        interface_name(path)


# (id, text, line, key, reason substring)
MALFORMED = [
    ("no-equals", "[Interface]\nPrivateKey = PRIV\nAddress 10.0.0.1/24\n", 3, "", "Key = value"),
    ("key-lost-its-name", "[Interface]\nPRIV\n", 2, "", "Key = value"),
    ("key-lost-its-name-no-padding", "[Interface]\nPrivateKey = PRIV\n[Peer]\nPSK\n", 4, "",
     "Key = value"),
    ("key-outside-section", "PrivateKey = PRIV\n[Interface]\n", 1, "PrivateKey", "before any"),
    ("unknown-key", "[Interface]\nPrivateKey = PRIV\nListenPrt = 1\n", 3, "ListenPrt", "unknown"),
    ("peer-key-in-interface", "[Interface]\nPrivateKey = PRIV\nEndpoint = 1.2.3.4:5\n", 3,
     "Endpoint", "belongs in a [Peer]"),
    ("bad-section", "[Interface]\nPrivateKey = PRIV\n[Peers]\n", 3, "",
     "not [Interface] or [Peer]"),
    ("unclosed-section", "[Interface\nPrivateKey = PRIV\n", 1, "", "not [Interface]"),
    ("second-interface", "[Interface]\nPrivateKey = PRIV\n[Interface]\n", 3, "",
     "second [Interface]"),
    ("no-interface", "[Peer]\nPublicKey = PUB1\n", 0, "", "no [Interface]"),
    ("no-private-key", "\n[Interface]\nListenPort = 1\n", 2, "[Interface]", "no PrivateKey"),
    ("bad-private-key", "[Interface]\nPrivateKey = abc\n", 2, "PrivateKey", "base64"),
    ("bad-port-text", "[Interface]\nPrivateKey = PRIV\nListenPort = http\n", 3, "ListenPort",
     "not a number"),
    ("port-out-of-range", "[Interface]\nPrivateKey = PRIV\nListenPort = 70000\n", 3, "ListenPort",
     "out of range"),
    ("mtu-too-small", "[Interface]\nPrivateKey = PRIV\nMTU = 100\n", 3, "MTU", "out of range"),
    ("bad-address", "[Interface]\nPrivateKey = PRIV\nAddress = 10.0.0.1/24, 10.0.0.300/24\n", 3,
     "Address", "'10.0.0.300/24' is not an IP address"),
    ("peer-without-public-key", "[Interface]\nPrivateKey = PRIV\n\n[Peer]\nAllowedIPs = ::/0\n", 4,
     "[Peer]", "no PublicKey"),
    ("bad-public-key", "[Interface]\nPrivateKey = PRIV\n[Peer]\nPublicKey = PUB1x\n", 4,
     "PublicKey", "public key"),
    ("own-public-key", "[Interface]\nPrivateKey = PRIV\n[Peer]\nPublicKey = OWN\n", 4,
     "PublicKey", "own public key"),
    ("bad-allowed-ip", "[Interface]\nPrivateKey = PRIV\n[Peer]\nPublicKey = PUB1\n"
     "AllowedIPs = 10.0.0.0/24\nAllowedIPs = 10.0.0.0/33\n", 6, "AllowedIPs", "not an IP prefix"),
    ("endpoint-without-port", "[Interface]\nPrivateKey = PRIV\n[Peer]\nPublicKey = PUB1\n"
     "Endpoint = 192.0.2.1\n", 5, "Endpoint", "needs a port"),
    ("endpoint-v6-no-brackets", "[Interface]\nPrivateKey = PRIV\n[Peer]\nPublicKey = PUB1\n"
     "Endpoint = 2001:db8::1:51820\n", 5, "Endpoint", "[address]:port"),
    ("keepalive-text", "[Interface]\nPrivateKey = PRIV\n[Peer]\nPublicKey = PUB1\n"
     "PersistentKeepalive = often\n", 5, "PersistentKeepalive", "or 'off'"),
    ("keepalive-too-big", "[Interface]\nPrivateKey = PRIV\n[Peer]\nPublicKey = PUB1\n"
     "PersistentKeepalive = 70000\n", 5, "PersistentKeepalive", "out of range"),
    ("save-config-not-bool", "[Interface]\nPrivateKey = PRIV\nSaveConfig = yes\n", 3, "SaveConfig",
     "true or false"),
    ("duplicate-peer", "[Interface]\nPrivateKey = PRIV\n[Peer]\nPublicKey = PUB1\n[Peer]\n"
     "PublicKey = PUB1\n", 6, "PublicKey", "duplicate peer: same public key as [Peer] on line 3"),
    ("same-allowed-ip-twice", "[Interface]\nPrivateKey = PRIV\n[Peer]\nPublicKey = PUB1\n"
     "AllowedIPs = 10.0.0.2/32\n[Peer]\nPublicKey = PUB2\nAllowedIPs = 10.0.0.2/32\n", 8,
     "AllowedIPs", "already allowed for [Peer] on line 3"),
]  # fmt: skip


@pytest.mark.parametrize("body,line,key,reason", [m[1:] for m in MALFORMED],
                         ids=[m[0] for m in MALFORMED])  # fmt: skip
def test_malformed_files_name_the_line(body, line, key, reason):
    with pytest.raises(ConfigError) as info:
        convert(wg(body), "wg0.conf", "wg0")
    exc = info.value
    assert exc.exit_code == 2
    assert exc.file == (f"wg0.conf:{line}" if line else "wg0.conf"), str(exc)
    assert exc.key == key, str(exc)
    assert reason in exc.reason, str(exc)
    assert "\n" not in str(exc)
    assert PRIV[:16] not in str(exc) and PSK[:16] not in str(exc), "an error never repeats a key"


def test_parse_keeps_line_numbers_and_order():
    sections = parse(wg("[Peer]\nPublicKey = PUB1\n[Interface]\n\nPrivateKey = PRIV\n"), "f")
    assert [s.kind for s in sections] == ["Interface", "Peer"]
    assert [(e.key, e.line) for e in sections[0].entries] == [("PrivateKey", 5)]
    assert sections[1].line == 1


def test_keys_tunneld_gains_are_written_as_keys(monkeypatch):
    from tunneld.config import interfaces

    keys, parser = interfaces._PARSERS["wireguard"]
    planned = ("fwmark", "table", "dns", "pre_up", "post_up", "pre_down", "post_down")
    monkeypatch.setitem(interfaces._PARSERS, "wireguard", (keys + planned, parser))
    body = dict((g[0], g[1]) for g in GOOD)["wg-quick-only-keys-become-comments"]
    out, _ = imported(body)
    lines = out.splitlines()
    for expected in ("fwmark = 4660", 'table = "off"', 'dns = ["10.0.0.53", "lan"]',
                     'pre_up = ["echo pre"]', 'post_up = ["iptables -A FORWARD -i %i", "echo two"]',
                     'pre_down = ["true"]', 'post_down = ["echo down"]'):  # fmt: skip
        assert expected in lines, out
    assert "not supported by tunneld yet" not in out


LINES = st.sampled_from(["[Interface]", "[Peer]", "[peer", "PrivateKey = PRIV", "PublicKey = PUB1",
                         "PublicKey = PUB2", "AllowedIPs = 10.0.0.0/24", "AllowedIPs = ::/0, x",
                         "Address = 10.0.0.1/24", "Endpoint = [::1]:1", "Endpoint = a:b",
                         "ListenPort = 0x10", "MTU = 9000000000", "PersistentKeepalive = off",
                         "DNS = ,", "PostUp = #", "= x", "# c", "", "Table = main",
                         "junk"])  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(LINES, st.text(max_size=20)), max_size=12))
def test_any_text_gives_toml_that_loads_or_one_config_error(lines):
    try:
        out = convert(wg("\n".join(lines)), "f.conf", "wg0")
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("f.conf")
        return
    loads(out, "<fuzz>")
