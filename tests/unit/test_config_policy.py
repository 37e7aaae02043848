"""Config keys of the policy-routing and hooks issue: `table`, `fwmark` (wireguard) and
`pre_up` / `post_up` / `pre_down` / `post_down` (every type): defaults, accepted forms,
rejections naming the key, and the round trip through check-config's rendering."""

from __future__ import annotations

import pytest

from tunneld.config import loads, render
from tunneld.errors import ConfigError

PRIV = "kJfqk+WMcRtAMHr8fhaQPd/PpjGOaGx63E7DI2bmi0k="
PUB = "3YoEqPY6aoqJXJm1L3WA09VcQe9DulE8nGp3RuGBYig="

TYPES = {
    "wireguard": f'type = "wireguard"\nprivate_key = "{PRIV}"\n',
    "vxlan": 'type = "vxlan"\nvni = 1\nlocal = "192.0.2.1"\n',
    "overlay": 'type = "overlay"\nnetwork = "10.5.0.0/16"\nsubnet = "10.5.1.0/24"\n'
    'public_ip = "192.0.2.1"\n',
}


def one(body: str, kind: str = "wireguard"):
    return loads(f"[interfaces.x0]\n{TYPES[kind]}{body}", "t.toml").interfaces["x0"]


def rejected(body: str, kind: str = "wireguard") -> str:
    with pytest.raises(ConfigError) as info:
        one(body, kind)
    return str(info.value)


def test_defaults():
    cfg = one("")
    assert (cfg.table, cfg.fwmark) == ("auto", 0)
    for kind in TYPES:
        c = one("", kind)
        assert (c.pre_up, c.post_up, c.pre_down, c.post_down) == ((), (), (), ())


@pytest.mark.parametrize("text,value", [('"auto"', "auto"), ('"off"', "off"), ("1", 1),
                                        ("51820", 51820), ("4294967295", 2**32 - 1)])  # fmt: skip
def test_table_values(text, value):
    assert one(f"table = {text}\n").table == value


@pytest.mark.parametrize("text,reason", [
    ('"main"', "t.toml: interfaces.x0.table: expected \"auto\", \"off\" or a table number, "
               "got 'main'"),
    ("0", "t.toml: interfaces.x0.table: 0 is out of range 1..4294967295"),
    ("4294967296", "out of range 1..4294967295"),
    ("true", "got a boolean"),
    ("[1]", "got an array"),
])  # fmt: skip
def test_table_rejections(text, reason):
    assert reason in rejected(f"table = {text}\n")


def test_fwmark():
    assert one("fwmark = 0x1234\n").fwmark == 0x1234
    assert one("fwmark = 0\n").fwmark == 0
    assert "interfaces.x0.fwmark: -1 is out of range 0..4294967295" in rejected("fwmark = -1\n")
    assert "interfaces.x0.fwmark: expected an integer, got a string" in rejected('fwmark = "a"\n')


@pytest.mark.parametrize("kind", sorted(TYPES))
def test_table_and_fwmark_are_wireguard_only(kind):
    if kind != "wireguard":
        assert "interfaces.x0.table: unknown key" in rejected("table = 1\n", kind)
        assert "interfaces.x0.fwmark: unknown key" in rejected("fwmark = 1\n", kind)


@pytest.mark.parametrize("kind", sorted(TYPES))
def test_hooks_string_or_list_on_every_type(kind):
    cfg = one('pre_up = "echo %i"\npost_up = ["a", "b c"]\npre_down = []\n'
              "post_down = ['x']\n", kind)  # fmt: skip
    assert cfg.pre_up == ("echo %i",) and cfg.post_up == ("a", "b c")
    assert cfg.pre_down == () and cfg.post_down == ("x",)


@pytest.mark.parametrize("body,reason", [
    ("pre_up = 1\n", "interfaces.x0.pre_up: expected a string or an array of strings, got an "
                     "integer"),
    ('post_up = ["a", 2]\n', "interfaces.x0.post_up[1]: expected a string, got an integer"),
    ('pre_down = ""\n', "interfaces.x0.pre_down: empty command"),
    ('post_down = ["a", "  "]\n', "interfaces.x0.post_down[1]: empty command"),
    ('pre_up = "a\\u0000b"\n', "interfaces.x0.pre_up: contains a NUL character"),
    ('preup = "a"\n', "interfaces.x0.preup: unknown key (did you mean 'pre_up'?)"),
])  # fmt: skip
def test_hook_rejections(body, reason):
    assert reason in rejected(body)


def test_render_round_trips():
    text = (f'[interfaces.wg0]\ntype = "wireguard"\nprivate_key = "{PRIV}"\ntable = 7\n'
            'fwmark = 9\npre_up = "echo \\"%i\\""\npost_down = ["a", "b"]\n'
            "[[interfaces.wg0.peers]]\n"
            f'public_key = "{PUB}"\nallowed_ips = ["0.0.0.0/0"]\n')  # fmt: skip
    cfg = loads(text, "t.toml")
    shown = render(cfg)
    assert "table = 7\nfwmark = 9\n" in shown and 'pre_up = ["echo \\"%i\\""]' in shown
    again = loads(shown.replace('"(hidden)"', f'"{PRIV}"'), "t.toml")
    assert again.interfaces == cfg.interfaces
    auto = loads(text.replace("table = 7\n", ""), "t.toml")
    assert 'table = "auto"' in render(auto)
