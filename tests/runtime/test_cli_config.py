"""`tunneld check-config` and `tunneld --config` on broken files, as a user runs them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BAD = sorted((Path(__file__).parent.parent / "unit" / "bad_configs").glob("*.toml"))
EXAMPLES = sorted((Path(__file__).parent.parent.parent / "configs").glob("*.toml"))


def _expectation(path: Path) -> tuple[str, str]:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect:"), f"{path.name} lacks its '# expect:' line"
    key, reason = (part.strip() for part in first[len("# expect:") :].split("|", 1))
    return key, reason


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunneld", *args], capture_output=True, text=True, timeout=30
    )


def test_there_are_at_least_ten_broken_files():
    assert len(BAD) >= 10


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
@pytest.mark.parametrize("command", ["check-config", "--config"])
def test_broken_config_exits_2_with_one_line(path: Path, command: str, tmp_path: Path):
    target = tmp_path / path.name
    shutil.copy(path, target)
    target.chmod(0o600)
    out = _run(command, str(target))
    key, reason = _expectation(path)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert str(target) in lines[0] and key in lines[0] and reason in lines[0], lines[0]
    assert "Traceback" not in out.stderr and out.stdout == ""


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_configs_check_clean(path: Path):
    out = _run("check-config", str(path))
    assert out.returncode == 0, out.stderr
    assert "(hidden)" in out.stdout or "private_key" not in path.read_text()
