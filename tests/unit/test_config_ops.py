"""[daemon] metrics_listen and user: accepted forms, rejections naming the key, render."""

from __future__ import annotations

import pwd

import pytest

from tunneld.config import loads
from tunneld.config.render import render
from tunneld.errors import ConfigError


def _daemon(body: str):
    return loads(f"[daemon]\n{body}\n", "/etc/tunneld/site.toml").daemon


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9586", ("127.0.0.1", 9586)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("[::1]:9586", ("::1", 9586)),
        ("[::]:9586", ("::", 9586)),
    ],
)
def test_metrics_listen_forms(text, expected):
    assert _daemon(f'metrics_listen = "{text}"').metrics_listen == expected


def test_metrics_listen_off_by_default():
    assert _daemon("").metrics_listen is None
    assert _daemon("").user is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("localhost:9586", "not a name"),
        ("127.0.0.1", "needs a port"),
        ("127.0.0.1:0", "out of range 1..65535"),
        ("::1:9586", "[address]:port"),
        ("[10.0.0.1]:9586", "not an IPv6 address"),
    ],
)
def test_metrics_listen_rejected(text, reason):
    with pytest.raises(ConfigError) as info:
        _daemon(f'metrics_listen = "{text}"')
    assert info.value.key == "daemon.metrics_listen"
    assert reason in info.value.reason


def test_metrics_listen_wrong_type():
    with pytest.raises(ConfigError) as info:
        _daemon("metrics_listen = 9586")
    assert (info.value.key, info.value.reason) == (
        "daemon.metrics_listen",
        "expected a string, got an integer",
    )


def test_user_must_exist_and_not_be_root():
    with pytest.raises(ConfigError) as info:
        _daemon('user = "tunneld-no-such-user-x"')
    assert info.value.key == "daemon.user" and "no such user" in info.value.reason
    with pytest.raises(ConfigError) as info:
        _daemon('user = "root"')
    assert info.value.key == "daemon.user" and "is root" in info.value.reason


def test_existing_user_accepted():
    name = pwd.getpwuid(65534).pw_name  # nobody: present on every Debian system
    assert _daemon(f'user = "{name}"').user == name


@pytest.mark.parametrize("listen", ["127.0.0.1:9586", "[::1]:9586"])
def test_render_round_trip(listen):
    name = pwd.getpwuid(65534).pw_name
    cfg = loads(f'[daemon]\nmetrics_listen = "{listen}"\nuser = "{name}"\n', "/x/site.toml")
    text = render(cfg)
    assert f'metrics_listen = "{listen}"' in text
    assert loads(text, "/x/site.toml") == cfg
    assert "# metrics_listen: unset (off)" in render(loads("", "/x/site.toml"))
