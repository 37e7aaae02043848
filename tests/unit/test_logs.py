"""The log format (one key=value line per event), JOURNAL_STREAM detection, levels and the
per-template rate limiter, with an injected clock."""

from __future__ import annotations

import io
import logging
import os
import re

import pytest

from tunneld.runtime.logs import (
    KeyValueFormatter,
    RateLimiter,
    RateLimitFilter,
    journal_stream,
    quote,
    setup,
)


def record(msg="hello %s", args=("world",), level=logging.INFO, name="tunneld.wireguard",
           extra=None, exc_info=None):  # fmt: skip
    rec = logging.LogRecord(name, level, __file__, 1, msg, args, exc_info)
    for k, v in (extra or {}).items():
        setattr(rec, k, v)
    return rec


QUOTES = [("wg0", "wg0"), ("", '""'), ("a b", '"a b"'), ('say "hi"', '"say \\"hi\\""'),
          ("k=v", '"k=v"'), ("two\nlines", '"two\\nlines"'), ("back\\slash", '"back\\\\slash"'),
          ("bell\x07", '"bell\\x07"'), ("AbC+/9=", '"AbC+/9="'),
          ("peer AbCdEfGh…", '"peer AbCdEfGh…"'), (42, "42")]  # fmt: skip


@pytest.mark.parametrize("value,text", QUOTES)
def test_quote(value, text):
    assert quote(value) == text


def test_plain_line_has_timestamp_level_logger_msg():
    line = KeyValueFormatter().format(record())
    assert re.fullmatch(r'ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=info '
                        r'logger=tunneld\.wireguard msg="hello world"', line), line  # fmt: skip


def test_extra_fields_come_before_msg_in_call_order():
    rec = record("%s: peer %s: handshake complete", ("wg0", "AbCdEfGh…"),
                 extra={"iface": "wg0", "event": "handshake", "peer": "AbC/+=="})  # fmt: skip
    line = KeyValueFormatter(journal=True).format(rec)
    assert line == ('<6>level=info logger=tunneld.wireguard iface=wg0 event=handshake '
                    'peer="AbC/+==" msg="wg0: peer AbCdEfGh…: handshake complete"')  # fmt: skip


PRIORITIES = [(logging.DEBUG, "<7>level=debug"), (logging.INFO, "<6>level=info"),
              (logging.WARNING, "<4>level=warning"), (logging.ERROR, "<3>level=error"),
              (logging.CRITICAL, "<2>level=critical")]  # fmt: skip


@pytest.mark.parametrize("level,prefix", PRIORITIES)
def test_journal_lines_carry_the_syslog_priority_and_no_timestamp(level, prefix):
    line = KeyValueFormatter(journal=True).format(record(level=level))
    assert line.startswith(prefix + " ") and "ts=" not in line


def test_a_traceback_stays_on_one_line():
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        import sys

        rec = record("failed", (), level=logging.ERROR, exc_info=sys.exc_info())
    line = KeyValueFormatter().format(rec)
    assert "\n" not in line and 'exc="Traceback (most recent call last):\\n' in line
    assert "ValueError: boom\\nsecond line" in line


def test_journal_stream_must_name_the_stream(tmp_path):
    with open(tmp_path / "log", "w") as f, open(tmp_path / "other", "w") as g:
        st, other = os.fstat(f.fileno()), os.fstat(g.fileno())
        assert journal_stream({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, f.fileno())
        assert not journal_stream({"JOURNAL_STREAM": f"{other.st_dev}:{other.st_ino}"},
                                  f.fileno())  # fmt: skip
        for value in ("", "garbage", "1:", ":2", "a:b"):
            assert not journal_stream({"JOURNAL_STREAM": value}, f.fileno())
        assert not journal_stream({}, f.fileno())


@pytest.fixture
def restore_root_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_setup_under_journald_and_levels_honoured(tmp_path, restore_root_logging):
    with open(tmp_path / "stderr", "w+") as stream:
        st = os.fstat(stream.fileno())
        setup("warning", stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        log = logging.getLogger("tunneld.test")
        log.info("not shown at warning")
        log.warning("shown %d", 1, extra={"iface": "vx0"})
        logging.getLogger().setLevel("DEBUG")  # what a reload with log_level = "debug" does
        log.debug("now shown")
        stream.seek(0)
        assert stream.read().splitlines() == [
            '<4>level=warning logger=tunneld.test iface=vx0 msg="shown 1"',
            '<7>level=debug logger=tunneld.test msg="now shown"']  # fmt: skip


def test_setup_elsewhere_stamps_lines(restore_root_logging):
    stream = io.StringIO()
    setup("info", stream, {"JOURNAL_STREAM": "1:2"})
    logging.getLogger("tunneld").info("up")
    assert stream.getvalue().startswith("ts=") and stream.getvalue().count("\n") == 1


def test_rate_limiter_burst_then_rate_then_summary():
    limiter = RateLimiter(burst=3, rate=0.5)
    now = 100.0
    assert [limiter.allow("k", now) for _ in range(5)] == [(True, 0)] * 3 + [(False, 0)] * 2
    now += 1.0  # half a token
    assert limiter.allow("k", now) == (False, 0)
    now += 1.0  # a whole one: passes and reports the three it dropped
    assert limiter.allow("k", now) == (True, 3)
    assert limiter.allow("k", now) == (False, 0)
    assert limiter.allow("other", now) == (True, 0), "templates are limited separately"
    now += 1000.0
    assert [limiter.allow("k", now)[0] for _ in range(4)] == [True, True, True, False]


def test_rate_limiter_forgets_the_oldest_key_beyond_its_bound():
    limiter = RateLimiter(burst=1, rate=0.0, max_keys=2)
    for key in ("a", "b", "c"):
        assert limiter.allow(key, 0.0) == (True, 0)
    assert len(limiter._buckets) == 2
    assert limiter.allow("a", 0.0) == (True, 0), "'a' was forgotten: a fresh bucket"
    assert limiter.allow("c", 0.0) == (False, 0)


def test_flood_of_one_warning_is_limited_with_a_suppressed_count():
    now = [0.0]
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(KeyValueFormatter(journal=True))
    handler.addFilter(RateLimitFilter(lambda: now[0], RateLimiter(burst=10, rate=0.5)))
    log = logging.getLogger("tunneld.test.flood")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    try:
        for i in range(1000):  # what an attacker's bad handshakes could trigger
            log.warning("%s: bad handshake from %s", "wg0", f"192.0.2.{i % 250}")
        log.warning("a different template")
        for peer in ("A=", "B="):  # one peer's lines do not use up another's
            log.info("%s: peer %s: handshake complete", "wg0", peer, extra={"peer": peer})
        now[0] = 2.0
        log.warning("%s: bad handshake from %s", "wg0", "192.0.2.9")
    finally:
        log.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 14
    assert lines[10] == '<4>level=warning logger=tunneld.test.flood msg="a different template"'
    assert 'peer="A="' in lines[11] and 'peer="B="' in lines[12]
    assert lines[13].endswith('msg="wg0: bad handshake from 192.0.2.9" suppressed=990')
