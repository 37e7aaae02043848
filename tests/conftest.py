"""Suite-wide pytest plumbing: the `netns` marker's skip-or-fail rule.

Tests marked `netns` (and every test under tests/netns/) need root, iproute2 and
/dev/net/tun; extra tools are named as marker arguments:
`@pytest.mark.netns("iperf3", "tcpdump")`. Without them a test SKIPS with a loud
reason and the run ends with a banner counting the skips. In CI (CI=true) the
same missing requirement FAILS the test instead: CI runs as root and must never
go green by skipping the interop tests.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

BASE_TOOLS = ("ip", "ping")
_NETNS_DIR = Path(__file__).parent / "netns"
_skipped: Counter[str] = Counter()


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def netns_problems(tools: tuple[str, ...] = ()) -> list[str]:
    """What stops netns tests from running here (empty when nothing does)."""
    problems = []
    if os.geteuid() != 0:
        problems.append(f"not root (uid={os.geteuid()})")
    if not os.path.exists("/dev/net/tun"):
        problems.append("/dev/net/tun missing")
    missing = [t for t in (*BASE_TOOLS, *tools) if shutil.which(t) is None]
    if missing:
        problems.append(f"missing tools: {', '.join(missing)}")
    return problems


def require_netns(*tools: str) -> None:
    """Skip (or, in CI, fail) the running test unless netns tests can run with `tools`."""
    problems = netns_problems(tuple(tools))
    if not problems:
        return
    reason = "; ".join(problems)
    if in_ci():
        pytest.fail(
            f"NETNS TESTS CANNOT RUN IN CI: {reason} — CI must run them as root with "
            "the tools installed (./tunneld.sh test installs them)",
            pytrace=False,
        )
    _skipped[reason] += 1
    pytest.skip(f"NETNS TESTS SKIPPED: {reason} — these run in CI as root")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _NETNS_DIR in Path(str(item.path)).parents and item.get_closest_marker("netns") is None:
            item.add_marker(pytest.mark.netns)


def pytest_runtest_setup(item: pytest.Item) -> None:
    markers = list(item.iter_markers("netns"))
    if markers:
        require_netns(*(tool for m in markers for tool in m.args))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not _skipped:
        return
    total = sum(_skipped.values())
    tr = terminalreporter
    tr.write_sep("!", f"{total} NETNS TESTS SKIPPED", red=True, bold=True)
    for reason, n in _skipped.items():
        tr.write_line(f"  {n} skipped: {reason}", red=True, bold=True)
    tr.write_line(
        "  The interop tests did not run. Run as root on a machine with the tools",
        red=True,
        bold=True,
    )
    tr.write_line("  (./tunneld.sh test installs them); CI runs them as root.", red=True, bold=True)
    tr.write_sep("!", red=True, bold=True)
