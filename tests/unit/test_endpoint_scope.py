"""Endpoint parsing keeps an IPv6 scope (issue 9): config text -> socket address tuple
(`recvfrom`'s form: the bare address, the scope id as the interface index) -> `show`
(`[fe80::1%lo]:51820`, as wg(8) prints it)."""

from __future__ import annotations

import socket

import pytest

from tunneld.config import loads
from tunneld.errors import SetupError
from tunneld.links.wgport import format_endpoint
from tunneld.links.wireguard import numeric_endpoint, resolve_endpoint

LO = socket.if_nametoindex("lo")
PRIV = "kJfqk+WMcRtAMHr8fhaQPd/PpjGOaGx63E7DI2bmi0k="
PUB = "3YoEqPY6aoqJXJm1L3WA09VcQe9DulE8nGp3RuGBYig="


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("192.0.2.1", ("192.0.2.1", 51820)),
        ("2001:db8::1", ("2001:db8::1", 51820, 0, 0)),
        ("fe80::1%lo", ("fe80::1", 51820, 0, LO)),
        (f"fe80::1%{LO}", ("fe80::1", 51820, 0, LO)),
    ],  # fmt: skip
)
def test_numeric_endpoints_keep_the_scope(host, expected):
    assert numeric_endpoint(host, 51820) == expected
    assert resolve_endpoint(host, 51820) == expected


def test_a_scope_naming_no_interface_is_a_setup_error():
    with pytest.raises(SetupError, match="no interface 'nosuch0'"):
        numeric_endpoint("fe80::1%nosuch0", 51820)


def test_config_keeps_the_scope_and_show_prints_it():
    cfg = loads(
        f'[interfaces.wg0]\ntype = "wireguard"\nprivate_key = "{PRIV}"\n'
        f'[[interfaces.wg0.peers]]\npublic_key = "{PUB}"\nendpoint = "[fe80::1%lo]:51820"\n'
    )
    host, port = cfg.interfaces["wg0"].peers[0].endpoint
    assert (host, port) == ("fe80::1%lo", 51820)
    assert format_endpoint(resolve_endpoint(host, port)) == "[fe80::1%lo]:51820"
    assert format_endpoint(("fe80::1", 51820, 0, LO)) == "[fe80::1%lo]:51820"  # from recvfrom
    assert format_endpoint(("2001:db8::1", 51820, 0, 0)) == "[2001:db8::1]:51820"
