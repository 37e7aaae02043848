"""`tunneld top`'s pure part on synthetic `show` replies: rates, resets, rows coming and
going, drops by reason, handshake ages, sparklines and the 80-column limit."""

from __future__ import annotations

import pytest

from tunneld.top import (
    SPARK,
    History,
    Row,
    Snapshot,
    age,
    compute_rows,
    fit,
    render,
    si,
    sparkline,
)

PEER_A = "A" * 43 + "="
PEER_B = "B" * 43 + "="
WALL = 1_800_000_000.0


def wg(rx=0, tx=0, rxp=0, txp=0, peers=(), drops=None):
    return {"type": "wireguard", "peers": list(peers),
            "counters": {"rx_bytes": rx, "tx_bytes": tx, "rx_packets": rxp, "tx_packets": txp,
                         "rx_dropped": drops or {"bad_mac": 0}, "tx_dropped": {}}}  # fmt: skip


def peer(key, rx=0, tx=0, shake=0):
    return {"public_key": key, "rx_bytes": rx, "tx_bytes": tx, "latest_handshake": shake}


def snap(mono, **ifaces):
    return Snapshot(mono, WALL + mono, {"version": 1, "interfaces": ifaces})


def by_key(rows):
    return {r.key: r for r in rows}


def test_rates_are_deltas_over_the_interval_in_bits():
    a = snap(10.0, wg0=wg(rx=1000, tx=0, rxp=10, peers=[peer(PEER_A, rx=500, shake=WALL)]))
    b = snap(12.0, wg0=wg(rx=251000, tx=2000, rxp=210, txp=4,
                          peers=[peer(PEER_A, rx=100500, tx=2000, shake=WALL + 11)]))  # fmt: skip
    rows = by_key(compute_rows(a, b))
    iface, p = rows[("wg0",)], rows[("wg0", PEER_A)]
    assert (iface.rx_bps, iface.tx_bps, iface.rx_pps, iface.tx_pps) == (1e6, 8000, 100, 2)
    assert (p.rx_bps, p.tx_bps, p.rx_pps) == (400000, 8000, None)  # peers have no packet counts
    assert p.handshake_age == 1.0 and not p.never  # wall 12 s after WALL, handshake at +11
    assert iface.handshake_age is None


def test_first_sample_has_no_rates():
    rows = compute_rows(None, snap(0.0, wg0=wg(rx=5, peers=[peer(PEER_A, rx=5)])))
    assert all(r.rx_bps is None and r.rx_pps is None for r in rows)
    assert [si(r.rx_bps) for r in rows] == ["-", "-"]


def test_counter_reset_after_restart_counts_from_zero():
    a = snap(0.0, wg0=wg(rx=10_000_000, rxp=9000, peers=[peer(PEER_A, rx=10_000)]))
    b = snap(1.0, wg0=wg(rx=125, rxp=3, peers=[peer(PEER_A, rx=50)]))  # daemon restarted
    rows = by_key(compute_rows(a, b))
    assert rows[("wg0",)].rx_bps == 1000 and rows[("wg0",)].rx_pps == 3
    assert rows[("wg0", PEER_A)].rx_bps == 400
    assert all(v is None or v >= 0 for r in rows.values() for v in (r.rx_bps, r.rx_pps))


def test_new_and_removed_peers():
    a = snap(0.0, wg0=wg(peers=[peer(PEER_A, rx=100)]))
    b = snap(1.0, wg0=wg(peers=[peer(PEER_B, rx=100)]))
    rows = by_key(compute_rows(a, b))
    assert ("wg0", PEER_A) not in rows
    assert rows[("wg0", PEER_B)].rx_bps is None  # new: no rate until its second sample
    history = History()
    history.add(compute_rows(a, snap(0.5, wg0=wg(peers=[peer(PEER_A, rx=100)]))))
    assert ("wg0", PEER_A) in history.series
    history.add(compute_rows(a, b))
    assert ("wg0", PEER_A) not in history.series, "a removed peer's history is dropped"


def test_drops_per_second_by_reason_only_when_they_move():
    def vx(bad_header):
        return {"type": "vxlan", "counters": {"rx_dropped": {"bad_header": bad_header,
                "unknown_vni": 0}, "tx_dropped": {"no_route": 1}}}  # fmt: skip

    a, b = snap(0.0, vx0=vx(4)), snap(2.0, vx0=vx(24))
    (row,) = compute_rows(a, b)
    assert row.drops == {"rx bad_header": 10.0}
    assert row.rx_bps is None  # no byte counter in this reply: no rate, not a crash
    assert "    drops/s: rx bad_header 10" in render([row], History(), "h")


def test_never_handshaken_peer_and_overlay_routes():
    a = snap(0.0, fl0={"type": "overlay", "counters": {}, "routes": [
        {"subnet": "10.5.2.0/24", "public_ip": "192.0.2.2"},
        {"subnet": "10.5.3.0/24", "public_key": PEER_A, "rx_bytes": 0, "tx_bytes": 0,
         "latest_handshake": None}]})  # fmt: skip
    rows = by_key(compute_rows(None, a))
    assert ("fl0", "10.5.2.0/24") not in rows, "plain routes carry no counters"
    assert age(rows[("fl0", "10.5.3.0/24")]) == "never"


@pytest.mark.parametrize("seconds,text", [(0, "0s ago"), (59.9, "59s ago"), (61, "1m01s"),
                                          (7322, "2h02m")])  # fmt: skip
def test_handshake_age_text(seconds, text):
    assert age(Row(("x", "y"), "", handshake_age=seconds)) == text


SI = [(None, "-"), (0, "0"), (0.5, "0.5"), (999, "999"), (999.9, "1k"), (1500, "1.5k"),
      (12_345_678, "12.3M"), (4.2e9, "4.2G"), (2e12, "2T"), (2e15, "2000T")]  # fmt: skip


@pytest.mark.parametrize("value,text", SI)
def test_si_units(value, text):
    assert si(value) == text


def test_sparkline_scales_to_the_row_maximum():
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7], 8) == SPARK
    assert sparkline([0, 0, 0], 8) == SPARK[0] * 3
    assert sparkline([50, 0, 7, 14], 3) == "▁▅█", "only the last `width` values"
    assert sparkline([1, 2], 0) == ""


def test_history_is_bounded():
    history = History(size=3)
    for i in range(10):
        history.add([Row(("wg0",), "wg0", rx_bps=float(i), tx_bps=1.0)])
    assert list(history.series[("wg0",)]) == [8.0, 9.0, 10.0]


def _many_rows():
    a = snap(0.0, **{f"interface{i}": wg(peers=[peer(PEER_A), peer(PEER_B)]) for i in range(5)})
    b = snap(1.0, **{f"interface{i}": wg(rx=10**12, tx=10**12, rxp=10**9, txp=10**9,
                                         drops={"bad_mac": 10**9, "replay_window": 5},
                                         peers=[peer(PEER_A, rx=10**12, shake=WALL - 7200),
                                                peer(PEER_B)]) for i in range(5)})  # fmt: skip
    return compute_rows(a, b)


@pytest.mark.parametrize("width", [80, 40, 120])
def test_frame_fits_the_width(width):
    rows, history = _many_rows(), History()
    for _ in range(70):
        history.add(rows)
    lines = render(rows, history, "x" * 200, width=width)
    assert max(len(line) for line in lines) <= width
    assert lines[0].endswith("…"), "a long header is ellipsized"
    peer_line = next(line for line in lines if line.startswith("  AAAA"))
    assert "…" in peer_line[:22], "a public key is cut to its column"
    if width >= 80:
        assert "HISTORY" in lines[1] and peer_line.endswith("█" * (width - 71))
        assert "2h00m" in peer_line and " 8T " in peer_line


def test_frame_respects_the_height():
    lines = render(_many_rows(), History(), "h", width=80, height=6)
    assert len(lines) == 6 and lines[-1].startswith("… ")


def test_fit():
    assert fit("abc", 3) == "abc" and fit("abcd", 3) == "ab…" and fit("abc", 0) == ""
