"""The 60-second soak (tunneld/testbed/soak.py): iperf3 through vxlan, wireguard and overlay
at once, each at 100 Mbit/s; after a 15 s warm-up every daemon's RSS stays within 10% and
its open fds do not change; tables keep their size (one learned MAC, one peer, one route).
The documented 10-minute run is bench/soak.py --seconds 600."""

from __future__ import annotations

import pytest

from tunneld.testbed import soak

pytestmark = pytest.mark.netns("iperf3")


def test_soak_60s_rss_and_fds_bounded():
    result = soak.run(60, interval=4, warmup=15, log=lambda line: None)
    print("\n" + soak.report_markdown(result))
    assert soak.check(result) == []
    summary = soak.summary(result)
    for kind, table in (("vxlan", "fdb"), ("wireguard", "peers"), ("overlay", "routes")):
        for side in (0, 1):
            assert summary[f"{kind}{side}"][table] == [1], (kind, summary[f"{kind}{side}"])
    for kind, r in result["iperf"].items():
        assert r["bytes"] > 60 * 100e6 / 8 * 0.8, (kind, r)  # the capped rate, nearly all of it
