"""Unit tests for tunneld.proto.wg modules: replay (Hypothesis vs a naive model),
keys (against `wg genkey | wg pubkey`), TAI64N, message classification, token
bucket, keypair slots, and the proto import rule."""

from __future__ import annotations

import ast
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunneld.proto.wg import keys, messages
from tunneld.proto.wg.constants import (
    MESSAGE_COOKIE_REPLY_SIZE,
    MESSAGE_INITIATION_SIZE,
    MESSAGE_RESPONSE_SIZE,
    REJECT_AFTER_MESSAGES,
    REPLAY_WINDOW_SIZE,
)
from tunneld.proto.wg.drops import WgDrop
from tunneld.proto.wg.ratelimit import TokenBucket
from tunneld.proto.wg.replay import ReplayWindow
from tunneld.proto.wg.tai64n import tai64n

WG_DIR = Path(__file__).resolve().parents[2] / "tunneld" / "proto" / "wg"


# --- replay window vs a set ----------------------------------------------------------


class NaiveWindow:
    """Accept a counter once, never older than REPLAY_WINDOW_SIZE behind the newest."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.top = -1

    def validate(self, n: int) -> bool:
        if n >= REJECT_AFTER_MESSAGES or n in self.seen or n < self.top - REPLAY_WINDOW_SIZE:
            return False
        self.seen.add(n)
        self.top = max(self.top, n)
        return True


counters = st.one_of(
    st.integers(0, 3 * REPLAY_WINDOW_SIZE),
    st.integers(REJECT_AFTER_MESSAGES - 3 * REPLAY_WINDOW_SIZE, REJECT_AFTER_MESSAGES + 5),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(counters, st.booleans()), max_size=300))
def test_replay_window_matches_naive_model(steps: list[tuple[int, bool]]) -> None:
    window, model = ReplayWindow(), NaiveWindow()
    for n, authentic in steps:
        ok = window.check(n)
        if not authentic:  # a forged packet: checked, never committed
            assert ok == (
                n < REJECT_AFTER_MESSAGES
                and n not in model.seen
                and n >= model.top - REPLAY_WINDOW_SIZE
            )
            continue
        assert ok == model.validate(n)
        if ok:
            window.commit(n)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**40), st.lists(st.integers(-REPLAY_WINDOW_SIZE - 70, 70), max_size=200))
def test_replay_window_near_a_moving_top(base: int, deltas: list[int]) -> None:
    window, model = ReplayWindow(), NaiveWindow()
    for d in deltas:
        n = max(0, base + d)
        assert window.check_and_commit(n) == model.validate(n)
        base = max(base, n)


# --- keys -----------------------------------------------------------------------------


def test_generated_private_key_is_clamped() -> None:
    k = keys.generate_private_key(lambda n: b"\xff" * n)
    assert k[0] & 7 == 0 and k[31] & 0x80 == 0 and k[31] & 0x40


def test_key_text_round_trip_and_rejects() -> None:
    k = bytes(range(32))
    assert keys.decode_key(keys.encode_key(k)) == k
    for bad in ["", "abc", keys.encode_key(k)[:-2], "!" * 44, keys.encode_key(k) + "AA=="]:
        with pytest.raises(ValueError):
            keys.decode_key(bad)


def test_public_key_matches_wg_pubkey() -> None:
    if shutil.which("wg") is None:
        # CI installs wireguard-tools (./tunneld.sh test): there a missing wg is a failure
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("wireguard-tools (wg) not installed in CI")
        pytest.skip("wireguard-tools (wg) not installed: run ./tunneld.sh test to install it")
    for _ in range(3):
        private = subprocess.run(
            ["wg", "genkey"], capture_output=True, text=True, check=True
        ).stdout.strip()
        expected = subprocess.run(
            ["wg", "pubkey"], input=private + "\n", capture_output=True, text=True, check=True
        ).stdout.strip()
        assert keys.encode_key(keys.public_key(keys.decode_key(private))) == expected


# --- TAI64N -----------------------------------------------------------------------------


def test_tai64n_layout_and_whitening() -> None:
    stamp = tai64n(1_700_000_000.999_999)
    seconds, nanos = struct.unpack(">QI", stamp)
    assert len(stamp) == 12
    assert seconds == 2**62 + 10 + 1_700_000_000
    assert nanos % (1 << 24) == 0 and nanos <= 999_999_999
    assert tai64n(1_700_000_001.0) > stamp > tai64n(1_700_000_000.5)
    assert tai64n(1_700_000_000.001) == tai64n(1_700_000_000.0)  # within one whitening step


# --- message classification: one table for sizes ------------------------------------------

SIZES = [
    (1, MESSAGE_INITIATION_SIZE),
    (2, MESSAGE_RESPONSE_SIZE),
    (3, MESSAGE_COOKIE_REPLY_SIZE),
    (4, 32),
    (4, 1500),
]


@pytest.mark.parametrize("kind,size", SIZES)
def test_classify_table(kind: int, size: int) -> None:
    data = bytes([kind, 0, 0, 0]) + bytes(size - 4)
    assert messages.classify(data) == kind
    if size <= 148:  # fixed sizes, and the 32-byte minimum transport
        assert messages.classify(data[:-1]) == 0  # truncated
    if kind != 4:
        assert messages.classify(data + b"\x00") == 0
    assert messages.classify(bytes([kind, 0, 1, 0]) + data[4:]) == 0  # reserved bytes
    for i in range(4):  # byte-at-a-time prefixes never classify
        assert messages.classify(data[:i]) == 0


def test_struct_layouts_match_whitepaper_sizes() -> None:
    assert messages.INITIATION.size == 148 and messages.RESPONSE.size == 92
    assert messages.COOKIE_REPLY.size == 64 and messages.TRANSPORT_HEADER.size == 16
    assert messages.INITIATION_MAC1_OFFSET == 4 + 4 + 32 + 48 + 28
    assert messages.RESPONSE_MAC1_OFFSET == 4 + 4 + 4 + 32 + 16


# --- token bucket -------------------------------------------------------------------------


def test_token_bucket_burst_then_rate() -> None:
    bucket = TokenBucket(rate=20.0, burst=5)
    assert [bucket.allow("x", 0.0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.allow("y", 0.0)  # per source
    assert not bucket.allow("x", 0.01)
    assert bucket.allow("x", 0.06)  # one token refilled after 50 ms
    bucket.expire(10.0)
    assert len(bucket) == 0


# --- drop enum and the proto import rule ----------------------------------------------------


def test_drop_reasons_are_dense_and_snake_case() -> None:
    assert [int(m) for m in WgDrop] == list(range(len(WgDrop)))
    assert all(m.name.lower().replace("_", "").isalnum() for m in WgDrop)


FORBIDDEN = {"asyncio", "socket", "os", "fcntl", "time", "random", "pyroute2", "select"}


@pytest.mark.parametrize("path", sorted(WG_DIR.glob("*.py")), ids=lambda p: p.name)
def test_wg_core_imports_nothing_forbidden(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"
    assert len(path.read_text().splitlines()) <= 520, f"{path.name} is too long"
