"""Every atheris target, coverage-guided, for a bounded time from its committed seeds.

TUNNELD_FUZZ_SECONDS (default 4) is each target's budget, so the whole file takes about
ten times that plus start-up: a CI smoke run. The long run is tests/fuzz/run_long.py
(tests/fuzz/README.md). A crash or a broken invariant fails the test with libFuzzer's
report and the crashing input's path; libFuzzer's new inputs go to a temporary directory,
never into the committed corpus. Without atheris the file fails in CI and skips elsewhere.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.targets import names

HERE = Path(__file__).parent
REPO = HERE.parents[1]
SECONDS = int(os.environ.get("TUNNELD_FUZZ_SECONDS", "4"))
INTERRUPTED = 72  # libFuzzer -interrupted_exitcode default
# A fixed seed keeps CI reproducible (the same mutations of the committed corpus each run);
# exploring new inputs is the long run's job (run_long.py). TUNNELD_FUZZ_SEED=0: random.
SEED = int(os.environ.get("TUNNELD_FUZZ_SEED", "1"))

if importlib.util.find_spec("atheris") is None:
    if os.environ.get("CI"):
        raise RuntimeError("atheris is not installed: pip install -e '.[test]' (or '.[fuzz]')")
    pytest.skip("atheris is not installed (pip install -e '.[fuzz]')", allow_module_level=True)


@pytest.mark.parametrize("name", names())
def test_target_survives_bounded_fuzzing(name: str, tmp_path: Path) -> None:
    work = tmp_path / "corpus"
    work.mkdir()
    args = [
        sys.executable,
        "-m",
        "tests.fuzz.atheris_main",
        name,
        f"-max_total_time={SECONDS}",
        *([f"-seed={SEED}"] if SEED else []),
        "-timeout=10",
        "-rss_limit_mb=1024",
        f"-artifact_prefix={tmp_path}/",
        str(work),
        str(HERE / "corpus" / name),
    ]
    for _attempt in range(2):
        proc = subprocess.run(
            args,
            cwd=REPO,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=SECONDS + 120,
        )
        # 72 is libFuzzer's exit code for a SIGINT/SIGTERM from outside ("run interrupted"),
        # seen once in CI on the config target and not reproduced: not a finding (a crash,
        # timeout or OOM has its own code and artifact), so that one case runs again, once.
        if proc.returncode != INTERRUPTED or list(tmp_path.glob("crash-*")):
            break
        print(f"{name}: libFuzzer was interrupted from outside (exit 72); running it again")
    report = "\n".join(line for line in proc.stderr.splitlines() if "Instrumenting" not in line)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{report[-4000:]}"
    assert "\tDONE " in report, report[-2000:]
    crashes = list(tmp_path.glob("crash-*")) + list(tmp_path.glob("timeout-*"))
    assert not crashes, report[-4000:]
