"""tunneld.native: the C extension and the pure-Python fallback against independent references.

checksum: a naive word-at-a-time RFC 1071 sum and the RFC 1071 section 3 example. ChaChaRun:
`cryptography`'s ChaCha20Poly1305 per message, and the RFC 8439 section 2.8.2 vector. Both
implementations must give the same bytes, return values and exception types. The C side is
skipped only where the extension is not built and CI is not set; in CI its absence fails.

Measurements (not a test, no timing asserts): `python -m tests.unit.test_native`.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
import timeit
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import in_ci
from tunneld.native import _fallback

_cnative: ModuleType | None
try:
    from tunneld.native import _cnative
except ImportError:
    _cnative = None

ROOT = Path(__file__).resolve().parents[2]
VECTOR = json.loads((ROOT / "tests/vectors/rfc8439_aead_2_8_2.json").read_text())
IMPLS = [pytest.param("c", id="c"), pytest.param("python", id="python")]
HEADER = struct.Struct("<B3xIQ")
U64_MAX = (1 << 64) - 1


def implementation(name: str) -> Any:
    if name == "python":
        return _fallback
    if _cnative is None:
        message = "tunneld.native._cnative is not built (needs gcc, python3-dev, libssl-dev)"
        if in_ci():
            pytest.fail(message + ": CI installs them, so the build must not be missing")
        pytest.skip(message)
    return _cnative


def both() -> tuple[ModuleType, ModuleType]:
    """For tests that compare the two: skips (fails in CI) without the C extension."""
    return implementation("c"), _fallback


def available() -> list[ModuleType]:
    """For tests against a reference: every implementation that is here (C is required in CI)."""
    if _cnative is None and in_ci():
        implementation("c")
    return [impl for impl in (_cnative, _fallback) if impl is not None]


# ------------------------------------------------------------------------------- selection


def _import_in_child(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = "import tunneld.native as n; print(n.IMPLEMENTATION, n.checksum.__module__)"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)  # fmt: skip


def test_environment_forces_the_fallback() -> None:
    out = _import_in_child({"TUNNELD_NATIVE": "python"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["python", "tunneld.native._fallback"]


def test_default_picks_c_when_built() -> None:
    implementation("c")
    out = _import_in_child({"TUNNELD_NATIVE": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["c", "tunneld.native._cnative"]


def test_unknown_choice_is_refused() -> None:
    out = _import_in_child({"TUNNELD_NATIVE": "rust"})
    assert out.returncode != 0 and "TUNNELD_NATIVE" in out.stderr


# -------------------------------------------------------------------------------- checksum


def naive_checksum(data: bytes, initial: int = 0) -> int:
    """RFC 1071 section 4.1 one 16-bit word at a time, folding the carry after every add."""
    if len(data) % 2:
        data += b"\0"
    total = initial
    for i in range(0, len(data), 2):
        total += data[i] << 8 | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


@pytest.mark.parametrize("name", IMPLS)
def test_checksum_rfc1071_example(name: str) -> None:
    # RFC 1071 section 3, "Numerical Examples": 00 01 f2 03 f4 f5 f6 f7 sums to ddf2
    assert implementation(name).checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xDDF2


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=2100), offset=st.integers(0, 7), initial=st.integers(0, 0xFFFF))
def test_checksum_matches_naive_at_any_length_and_offset(data: bytes, offset: int,
                                                         initial: int) -> None:  # fmt: skip
    backing = bytearray(os.urandom(offset)) + data + b"\xa5"  # junk on both sides
    view = memoryview(backing)[offset : offset + len(data)]
    want = naive_checksum(data, initial)
    for impl in available():
        assert impl.checksum(view, initial) == want
        assert impl.checksum(data, initial) == want  # read-only bytes
        assert impl.checksum(memoryview(data)) == naive_checksum(data)


@pytest.mark.parametrize("name", IMPLS)
@pytest.mark.parametrize(
    ("data", "initial", "want"),
    [
        (b"", 0, 0),
        (b"\0" * 9, 0, 0),  # all zero, odd length: the only way to get 0
        (b"", 0xFFFF, 0xFFFF),
        (b"\xff\xff", 0, 0xFFFF),
        (b"\xff\xff" * 33, 0, 0xFFFF),
        (b"\x80\x00\x7f\xff", 0, 0xFFFF),  # a non-zero multiple of 0xffff folds to 0xffff
        (b"\x00\x01", 0xFFFE, 0xFFFF),
        (b"\x00\x02", 0xFFFF, 0x0002),  # end-around carry
        (b"\x01", 0, 0x0100),  # the odd byte is the high byte of a zero-padded word
        (b"\xff" * 65535, 0, 0xFF00),  # 32767 words of ffff, then ff00
    ],
)
def test_checksum_edges(name: str, data: bytes, initial: int, want: int) -> None:
    assert implementation(name).checksum(data, initial) == want
    assert implementation(name).checksum(data, initial=initial) == want


def test_checksum_of_big_and_strided_and_typed_buffers() -> None:
    big = os.urandom(200_001)
    strided = memoryview(big)[1:999:3]  # not contiguous: its bytes in order
    words = memoryview(bytearray(big[:6])).cast("H")  # 3 items, 6 bytes: no padding byte
    for impl in available():
        assert impl.checksum(big, 7) == naive_checksum(big, 7)
        assert impl.checksum(strided) == naive_checksum(bytes(strided))
        assert impl.checksum(words) == naive_checksum(big[:6])


@pytest.mark.parametrize("initial", [0x10000, 0xFFFF * 7, 2**63 - 1, 2**63, 2**64 + 5, 2**200])
def test_checksum_accepts_any_non_negative_initial(initial: int) -> None:
    reduced = initial % 0xFFFF or 0xFFFF  # 2**16 == 1 (mod 0xffff); non-zero stays non-zero
    for impl in available():
        assert impl.checksum(b"\x12\x34\x56", initial) == naive_checksum(b"\x12\x34\x56", reduced)
        assert impl.checksum(b"", initial) == reduced


@pytest.mark.parametrize("name", IMPLS)
@pytest.mark.parametrize(
    ("args", "error"),
    [((b"ab", -1), ValueError), ((b"ab", -(2**70)), ValueError), ((b"ab", 1.0), TypeError),
     (("ab",), TypeError), ((12,), TypeError), ((), TypeError)],
)  # fmt: skip
def test_checksum_rejects_misuse(name: str, args: tuple[object, ...], error: type) -> None:
    with pytest.raises(error):
        implementation(name).checksum(*args)


# ------------------------------------------------------------------------------- ChaChaRun


def nonce_for(counter: int) -> bytes:
    return bytes(4) + counter.to_bytes(8, "little")


def reference_seal(key: bytes, buf: bytearray, start: int, stride: int, count: int,
                   plain_len: int, last: int, receiver: int,
                   counter0: int) -> bytearray:  # fmt: skip
    """What seal_run must leave in buf, message by message with cryptography."""
    out, aead = bytearray(buf), ChaCha20Poly1305(key)
    for i in range(count):
        d, length = start + i * stride, last if i == count - 1 else plain_len
        plain = bytes(out[d + 16 : d + 16 + length])
        out[d : d + 16] = HEADER.pack(4, receiver, counter0 + i)
        out[d + 16 : d + 32 + length] = aead.encrypt(nonce_for(counter0 + i), plain, None)
    return out


runs = st.fixed_dictionaries(
    {
        "key": st.binary(min_size=32, max_size=32),
        "count": st.integers(1, 64),
        "plain_len": st.integers(0, 1500),
        "last_len": st.integers(0, 1500),
        "start": st.integers(0, 9),
        "slack": st.integers(0, 7),
        "receiver": st.integers(0, 2**32 - 1),
        "counter0": st.one_of(st.integers(0, 2**64 - 65), st.just(2**64 - 64)),
    }
)


def _layout(run: dict[str, int]) -> tuple[bytearray, int, int]:
    """Random bytes holding the run with `slack` spare bytes after every datagram."""
    stride, last = run["plain_len"] + 32 + run["slack"], run["last_len"]
    size = run["start"] + (run["count"] - 1) * stride + last + 32 + run["slack"]
    return bytearray(os.urandom(size)), stride, last


@settings(max_examples=60, deadline=None)
@given(run=runs)
def test_seal_run_matches_cryptography(run: dict[str, Any]) -> None:
    buf, stride, last = _layout(run)
    args = (run["start"], stride, run["count"], run["plain_len"], last, run["receiver"],
            run["counter0"])  # fmt: skip
    want = reference_seal(run["key"], buf, *args)
    for impl in available():
        got = bytearray(buf)
        impl.ChaChaRun(run["key"]).seal_run(memoryview(got), *args)
        assert got == want  # every datagram, and nothing outside them changed


@settings(max_examples=60, deadline=None)
@given(run=runs, data=st.data())
def test_open_run_flags_exactly_the_tampered(run: dict[str, Any], data: st.DataObject) -> None:
    buf, stride, last = _layout(run)
    start, count, plain_len = run["start"], run["count"], run["plain_len"]
    sealed = reference_seal(run["key"], buf, start, stride, count, plain_len, last,
                            run["receiver"], run["counter0"])  # fmt: skip
    lengths = [last if i == count - 1 else plain_len for i in range(count)]
    tampered = set(data.draw(st.sets(st.integers(0, count - 1))))
    for i in tampered:  # one bit anywhere in ciphertext, tag or the counter field
        d, length = start + i * stride, lengths[i]
        where = data.draw(st.integers(8, 31 + length))
        sealed[d + where] ^= 1 << data.draw(st.integers(0, 7))
    asked = data.draw(st.lists(st.integers(0, 255), min_size=count, max_size=count))
    good = [i for i in range(count) if asked[i] and i not in tampered]
    for impl in available():
        got, ok = bytearray(sealed), bytearray(asked)  # any non-zero byte asks
        n = impl.ChaChaRun(run["key"]).open_run(memoryview(got), start, stride, count,
                                                plain_len + 16, last + 16, ok)  # fmt: skip
        assert n == len(good)
        assert list(ok) == [asked[i] if i in good else 0 for i in range(count)]
        for i in range(count):
            d = start + i * stride
            if i in good:  # plaintext back in place, header untouched
                assert got[d + 16 : d + 16 + lengths[i]] == buf[d + 16 : d + 16 + lengths[i]]
                assert got[d : d + 16] == sealed[d : d + 16]
            elif not asked[i]:  # not asked: not touched
                assert got[d : d + 32 + lengths[i]] == sealed[d : d + 32 + lengths[i]]


@pytest.mark.parametrize("name", IMPLS)
def test_rfc8439_section_2_8_2_vector(name: str) -> None:
    key, nonce, aad = (bytes.fromhex(VECTOR[k]) for k in ("key", "nonce", "aad"))
    plain, cipher = bytes.fromhex(VECTOR["plaintext"]), bytes.fromhex(VECTOR["ciphertext"])
    sealed = cipher + bytes.fromhex(VECTOR["tag"])
    assert ChaCha20Poly1305(key).encrypt(nonce, plain, aad) == sealed  # the reference itself
    run = implementation(name).ChaChaRun(key)
    buf = bytearray(b"\xee" * 3) + plain + bytes(16) + b"\xee"
    run._seal_with(nonce, aad, memoryview(buf), 3, len(plain))
    assert buf == b"\xee" * 3 + sealed + b"\xee"
    assert run._open_with(nonce, aad, memoryview(buf), 3, len(sealed))
    assert buf[3 : 3 + len(plain)] == plain
    bad = bytearray(sealed)
    bad[-1] ^= 0x80
    assert not run._open_with(nonce, aad, memoryview(bad), 0, len(bad))
    with pytest.raises(ValueError):
        run._seal_with(nonce[:8], aad, memoryview(buf), 0, 1)


@settings(max_examples=100, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), plain=st.binary(max_size=3000),
       offset=st.integers(0, 9), counter=st.integers(0, U64_MAX))  # fmt: skip
def test_single_seal_and_open_match_cryptography(key: bytes, plain: bytes, offset: int,
                                                 counter: int) -> None:  # fmt: skip
    want = ChaCha20Poly1305(key).encrypt(nonce_for(counter), plain, None)
    for impl in available():
        run, buf = impl.ChaChaRun(key), bytearray(offset) + plain + bytes(16)
        run.seal(buf, offset, len(plain), counter)  # a bytearray works as well as a view
        assert buf == bytes(offset) + want
        assert not run.open(buf, offset, len(want), counter ^ 1)
        buf[offset:] = want
        assert run.open(memoryview(buf), offset, len(want), counter)
        assert buf[offset : offset + len(plain)] == plain


@pytest.mark.parametrize("name", IMPLS)
def test_keys_and_buffer_kinds(name: str) -> None:
    impl = implementation(name)
    with pytest.raises(ValueError):
        impl.ChaChaRun(bytes(31))
    with pytest.raises(TypeError):
        impl.ChaChaRun("k" * 32)
    run = impl.ChaChaRun(bytearray(range(32)))
    for readonly in (bytes(64), memoryview(bytearray(64)).toreadonly()):
        with pytest.raises(TypeError):
            run.seal_run(readonly, 0, 48, 1, 16, 16, 1, 0)
        with pytest.raises(TypeError):
            run.open_run(readonly, 0, 48, 1, 32, 32, bytearray(1))
    with pytest.raises(TypeError):
        run.open_run(bytearray(64), 0, 48, 1, 32, 32, b"\x01")  # ok must be writable
    with pytest.raises(TypeError):
        run.seal_run(bytearray(64), 0.0, 48, 1, 16, 16, 1, 0)
    words = memoryview(bytearray(64)).cast("I")  # an item format other than bytes: raw bytes
    run.seal_run(words, 0, 48, 1, 16, 16, 9, 5)
    assert words.tobytes()[:16] == HEADER.pack(4, 9, 5)
    kw = bytearray(64)
    run.seal_run(buf=kw, start=0, stride=48, count=1, plain_len=16, last_plain_len=16,
                 receiver=9, counter0=5)  # fmt: skip
    assert kw == words.tobytes()


def _bad_calls() -> list[Any]:
    b = 1000  # buffer size; a datagram is L + 32 bytes sealed, C + 16 bytes to open
    seal = [
        (0, 100, 10, 68, 68, 1, 0),  # the last datagram ends at 1000: fits
        (1, 100, 10, 68, 68, 1, 0),  # ...one byte further does not
        (0, 100, 10, 68, 69, 1, 0),
        (0, 0, 2, b - 31, 0, 1, 0),  # a middle datagram longer than the buffer
        (b - 31, 0, 1, 0, 0, 1, 0),
        (-1, 0, 1, 0, 0, 1, 0), (0, -1, 1, 0, 0, 1, 0), (0, 0, -1, 0, 0, 1, 0),
        (0, 0, 1, -1, 0, 1, 0), (0, 0, 1, 0, -1, 1, 0), (0, 0, 1, -32, -32, 1, 0),
        (0, 0, 1, 0, 0, -1, 0), (0, 0, 1, 0, 0, 2**32, 0), (0, 0, 1, 0, 0, 1, -1),
        (0, 0, 1, 0, 0, 1, 2**64), (0, 0, 2, 0, 0, 1, U64_MAX), (0, 0, 1, 0, 0, 1, U64_MAX),
        (2**63, 0, 1, 0, 0, 1, 0), (0, 2**62, 3, 0, 0, 1, 0), (0, 1, 2**62, 0, 0, 1, 0),
        (0, 2**63 - 1, 2, 0, 0, 1, 0), (2**70, 0, 1, 0, 0, 1, 0), (0, 0, 1, 2**63 - 1, 0, 1, 0),
        (0, 0, 2, 2**63 - 1, 0, 1, 0), (0, 1, 2**70, 0, 0, 1, 0), (0, 0, 0, -5, 10**30, 1, 0),
    ]  # fmt: skip
    opens = [
        (0, 100, 10, 84, 84),
        (1, 100, 10, 84, 84),
        (0, 0, 1, 15, 16),
        (0, 0, 1, 16, 15),
        (0, 0, 2, b - 15, 16),
        (0, 100, 11, 16, 16),
        (0, 50, 11, 16, 16),
        (0, 50, 10, 16, 16),
        (0, 0, 1, 2**63 - 1, 16),
        (-1, 0, 1, 16, 16),
    ]  # ok holds 10 entries
    single = [(0, b - 16), (1, b - 16), (0, -1), (-1, 0), (2**63, 0), (0, 0)]
    calls: list[tuple[str, tuple[int, ...]]] = [("seal_run", a) for a in seal]
    calls += [("open_run", a) for a in opens]
    calls += [(m, a) for m in ("seal", "open") for a in single]
    return [pytest.param(m, a, id=f"{m}{a}") for m, a in calls]


@pytest.mark.parametrize(("method", "args"), _bad_calls())
def test_range_checks_agree_and_write_nothing_on_error(method: str, args: tuple[int, ...]) -> None:
    outcomes: list[object] = []
    for impl in both():
        buf, ok = bytearray(b"\x5a" * 1000), bytearray(b"\x01" * 10)
        call = getattr(impl.ChaChaRun(bytes(32)), method)
        extra = (ok,) if method == "open_run" else (7,) if method in ("seal", "open") else ()
        try:
            result = call(memoryview(buf), *args, *extra)
        except ValueError:
            assert buf == b"\x5a" * 1000 and ok == b"\x01" * 10  # checked before any write
            outcomes.append("ValueError")
        else:
            outcomes.append((result, bytes(buf), bytes(ok)))
    assert outcomes[0] == outcomes[1]


HUGE = [2**31, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 2**64 + 1, 2**80]
small_or_huge = st.one_of(st.integers(-3, 80), st.sampled_from(HUGE))


@settings(max_examples=300, deadline=None)
@given(start=small_or_huge, stride=small_or_huge, count=small_or_huge, length=small_or_huge,
       last=small_or_huge, receiver=small_or_huge, counter0=small_or_huge, ok_len=st.integers(0, 9),
       opening=st.booleans())  # fmt: skip
def test_fuzzed_arguments_agree(start: int, stride: int, count: int, length: int, last: int,
                                receiver: int, counter0: int, ok_len: int,
                                opening: bool) -> None:  # fmt: skip
    if count > 80 and stride < 1:
        count = 80  # a huge count at stride 0 fits and would run (correctly) for ever
    outcomes = []
    for impl in both():
        buf, ok = bytearray(range(256)) * 2, bytearray(b"\x01" * ok_len)
        run = impl.ChaChaRun(bytes(range(32)))
        try:
            if opening:
                result = run.open_run(buf, start, stride, count, length, last, ok)
            else:
                result = run.seal_run(buf, start, stride, count, length, last, receiver, counter0)
        except ValueError:
            outcomes.append(("ValueError", bytes(buf), bytes(ok)))
        else:
            outcomes.append((result, bytes(buf), bytes(ok)))
    assert outcomes[0] == outcomes[1]


def test_one_object_from_many_threads() -> None:
    """The C contexts are used with the GIL released (runs of >= 8 KiB): a lock serializes."""
    c = implementation("c")
    key, count, plain_len = os.urandom(32), 16, 1400
    stride = plain_len + 32
    buf = bytearray(os.urandom(stride * count))
    run = c.ChaChaRun(key)
    want = reference_seal(key, buf, 0, stride, count, plain_len, plain_len, 3, 1000)
    failures: list[int] = []

    def work() -> None:
        for _ in range(30):
            got = bytearray(buf)
            run.seal_run(got, 0, stride, count, plain_len, plain_len, 3, 1000)
            ok = bytearray(b"\x01" * count)
            opened = run.open_run(bytearray(got), 0, stride, count, 1416, 1416, ok)
            if got != want or opened != count:
                failures.append(1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


# ---------------------------------------------------------------------------- measurements


def _best(fn: Any, number: int) -> float:
    """Seconds per call: the best of 5 repeats (the machine is shared; the minimum is stable)."""
    return min(timeit.repeat(fn, number=number, repeat=5)) / number


def _reopen(run: Any, buf: memoryview, sealed: bytes, ok: bytearray, stride: int,
            count: int, cipher_len: int) -> None:  # fmt: skip
    buf[:] = sealed  # opening is in place: restore the ciphertext every time
    ok[:] = b"\x01" * count
    run.open_run(buf, 0, stride, count, cipher_len, cipher_len, ok)


def measure() -> None:
    """Prints checksum GB/s and per-segment AEAD costs, C vs Python (a report, no asserts)."""
    impls = [("c", _cnative), ("python", _fallback)] if _cnative else [("python", _fallback)]
    for size in (20, 1448, 65536):
        data = os.urandom(size)
        for name, impl in impls:
            t = _best(partial(impl.checksum, data), max(20, 2_000_000 // size))
            print(f"checksum {name:6} {size:6} B: {t * 1e9:9.0f} ns  {size / t / 1e9:6.2f} GB/s")
    key, count = os.urandom(32), 44
    aead = ChaCha20Poly1305(key)
    for plain_len in (16, 1420):
        stride, nonce = plain_len + 32, bytes(12)
        buf = memoryview(bytearray(stride * count))
        body, out = buf[16 : 32 + plain_len], bytearray(plain_len)
        t_enc = _best(partial(aead.encrypt_into, nonce, body[:plain_len], b"", body), 2000)
        t_dec = _best(partial(aead.decrypt_into, nonce, body, b"", out), 2000)
        print(f"cryptography {plain_len:4} B: encrypt_into {t_enc * 1e9:5.0f} ns per call,"
              f" decrypt_into {t_dec * 1e9:5.0f} ns per call")  # fmt: skip
        for name, impl in impls:
            run = impl.ChaChaRun(key)
            seal = partial(run.seal_run, buf, 0, stride, count, plain_len, plain_len, 1, 0)
            t_seal = _best(seal, 50) / count
            sealed, ok = bytes(buf), bytearray(count)
            t_copy = _best(partial(buf.__setitem__, slice(None), sealed), 200)
            reopen = partial(_reopen, run, buf, sealed, ok, stride, count, plain_len + 16)
            t_open = (_best(reopen, 50) - t_copy) / count
            print(f"{name:6} {plain_len:4} B x{count}: seal_run {t_seal * 1e9:5.0f} ns/segment,"
                  f" open_run {t_open * 1e9:5.0f} ns/segment ({sum(ok)}/{count} ok)")  # fmt: skip


if __name__ == "__main__":
    measure()
