"""The 60-second soak (tunneld/testbed/soak.py): iperf3 through vxlan, wireguard, overlay and
overlay over WireGuard at once, each at 100 Mbit/s; after a 15 s warm-up every daemon's RSS
stays within 10% and its open fds do not change; tables keep their size (one learned MAC,
one peer, one route). The documented 10-minute run is bench/soak.py --seconds 600."""

from __future__ import annotations

import pytest

from tunneld.testbed import soak

pytestmark = pytest.mark.netns("iperf3")


def test_soak_60s_rss_and_fds_bounded():
    result = soak.run(60, interval=4, warmup=15, log=lambda line: None)
    print("\n" + soak.report_markdown(result))
    assert soak.check(result) == []
    summary = soak.summary(result)
    tables = (("vxlan", "fdb"), ("wireguard", "peers"), ("overlay", "routes"),
              ("overlay-wg", "routes"))  # fmt: skip
    for kind, table in tables:
        for side in (0, 1):
            assert summary[f"{kind}{side}"][table] == [1], (kind, summary[f"{kind}{side}"])
    for kind, r in result["iperf"].items():
        assert r["bytes"] > 60 * 100e6 / 8 * 0.5, (kind, r)  # half the capped rate at least


def synthetic(rss: list[int], fds: list[int]) -> dict:
    """A soak result with one daemon pair whose side 0 has these RSS/fd samples (4 s apart)."""
    rows = [[{"t": 4.0 * i, "rss_kb": r, "fds": f, "cpu_s": 0.0, "fdb": 1, "peers": 0,
              "routes": 0, "rx_packets": 100 * i, "tx_packets": 100 * i, "drops": {}}
             for i, (r, f) in enumerate(zip(rss, fds, strict=True))] for _ in (0, 1)]  # fmt: skip
    return {"seconds": 4.0 * len(rss), "interval": 4.0, "warmup": 8.0, "rate": "1M",
            "samples": {"vxlan": rows}, "iperf": {"vxlan": {"bytes": 1}},
            "alive": {"vxlan": [True, True]}}  # fmt: skip


def test_check_catches_growth_fd_leaks_and_idle_daemons():
    """The soak's verdict can fail: the warm-up may grow, after it nothing may."""
    steady = [40_000, 50_000, 52_000, 52_400, 51_900, 52_100]
    assert soak.check(synthetic(steady, [16, 17, 18, 18, 18, 18])) == []
    leaking = soak.check(synthetic([*steady[:3], 55_000, 58_000, 60_000], [18] * 6))
    assert leaking and all("RSS 52000..60000 kB" in p for p in leaking), leaking
    assert any("fds changed" in p for p in soak.check(synthetic(steady, [18, 18, 18, 19, 19, 19])))
    idle = synthetic(steady, [18] * 6)
    for row in idle["samples"]["vxlan"][1]:
        row["rx_packets"] = 7
    assert soak.check(idle) == ["vxlan1: no traffic after warm-up (0 rx)"]
