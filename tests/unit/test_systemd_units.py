"""systemd/tunneld.service and tunneld@.service: `systemd-analyze verify` accepts both, and
the settings the daemon relies on are there (Type=notify, watchdog, capabilities, hardening).

systemd is not PID 1 on these machines: verify loads the units in a test manager, which
checks syntax, directives, specifiers and that the Exec binaries exist (the tunneld path is
pointed at this venv's script for that). systemd-analyze comes from Debian's `systemd`
package (tunneld.sh); without it the verify test skips, in CI it fails.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import in_ci

UNITS = Path(__file__).parents[2] / "systemd"
INSTALLED = "/usr/local/bin/tunneld"


def directives(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


@pytest.fixture(scope="module")
def analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if in_ci():
            pytest.fail("systemd-analyze missing in CI: install Debian's systemd (tunneld.sh)")
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    return tool


def test_systemd_analyze_verify_accepts_both_units(analyze, tmp_path):
    script = Path(sys.executable).with_name("tunneld")
    assert script.exists(), script
    for name, as_name in (("tunneld.service", "tunneld.service"),
                          ("tunneld@.service", "tunneld@site.service")):  # fmt: skip
        text = (UNITS / name).read_text()
        assert INSTALLED in text
        (tmp_path / as_name).write_text(text.replace(INSTALLED, str(script)))
    units = [str(tmp_path / "tunneld.service"), str(tmp_path / "tunneld@site.service")]
    out = subprocess.run([analyze, "verify", *units], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "tunneld" not in out.stderr, out.stderr  # no warning about our units at all


def test_verify_rejects_a_broken_unit(analyze, tmp_path):
    """The check can fail: a misspelt directive in our unit is reported."""
    script = Path(sys.executable).with_name("tunneld")
    text = (UNITS / "tunneld.service").read_text().replace(INSTALLED, str(script))
    (tmp_path / "tunneld.service").write_text(text.replace("NotifyAccess=", "NotifyAcess="))
    out = subprocess.run([analyze, "verify", str(tmp_path / "tunneld.service")],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert "NotifyAcess" in out.stderr


@pytest.mark.parametrize("name", ["tunneld.service", "tunneld@.service"])
def test_the_settings_the_daemon_relies_on(name):
    d = directives(UNITS / name)
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["WatchdogSec"] and d["Restart"] == ["on-failure"]
    bounding = d["CapabilityBoundingSet"][0].split()
    assert bounding == ["CAP_NET_ADMIN", "CAP_SETUID", "CAP_SETGID"]  # no CAP_NET_BIND_SERVICE
    assert d["AmbientCapabilities"] == ["CAP_NET_ADMIN"]
    assert d["DeviceAllow"] == ["/dev/net/tun rw"]
    families = d["RestrictAddressFamilies"][0].split()
    assert families == ["AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"]
    assert d["SystemCallFilter"] == ["@system-service"]
    for key in ("NoNewPrivileges", "ProtectKernelTunables", "ProtectKernelModules",
                "ProtectControlGroups", "LockPersonality", "MemoryDenyWriteExecute",
                "RestrictNamespaces", "ProtectHome", "PrivateTmp"):  # fmt: skip
        assert d[key] == ["yes"], key
    assert d["ProtectSystem"] == ["strict"]
    text = (UNITS / name).read_text()
    assert "CAP_NET_ADMIN and nothing else" not in text  # the old, wrong comment
    if "@" in name:
        assert "--config /etc/tunneld/%i.toml" in d["ExecStart"][0]
        assert d["RuntimeDirectory"] == ["tunneld/%i"]
    else:
        assert d["RuntimeDirectory"] == ["tunneld"]
