"""STYLE.md's tooling as tests: ruff (lint and format) on the tree, mypy --strict on proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TREES = ["tunneld", "tests", "bench"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_ruff_lint_is_clean():
    out = _run("ruff", "check", "--output-format", "concise", *TREES)
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format_is_clean():
    out = _run("ruff", "format", "--check", *TREES)
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_strict_on_the_sans_io_cores():
    out = _run("mypy", "--strict", "tunneld/proto")
    assert out.returncode == 0, out.stdout + out.stderr
