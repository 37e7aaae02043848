"""`tunneld top`: live per-interface and per-peer rates from the control socket.

Theory of operation. Every `interval` seconds the daemon's `show` reply is taken
(`Snapshot`: the reply plus the monotonic and wall time it was taken at). The pure part
turns two snapshots into `Row`s: bit rates and packet rates from counter deltas over the
time between them, drops per second by reason, and the age of the latest handshake. A
counter that went down was reset (the daemon restarted, or a peer was removed and added
again): its new value is the whole increase since then, as Prometheus' `rate()` assumes.
A row seen for the first time has no rates yet ("-"); a row that is gone loses its
history. `History` keeps the last bit rates of each row for a sparkline. `render` lays
rows out in at most `width` columns (80 by default, as over ssh) and `height` lines.

The I/O part, `top_main`, draws with plain ANSI (alternate screen, cursor home, clear to
end of line/screen), no curses. With a terminal on stdin it switches it to cbreak mode
(`q` quits without Enter; Ctrl-C still raises SIGINT) and restores the saved mode on any
exit. Without one only Ctrl-C quits. `--once` prints one frame of two samples one
interval apart, without ANSI, for scripts and tests.
"""

from __future__ import annotations

import os
import select
import shutil
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, TextIO

from tunneld.errors import SetupError, TunneldError, UsageError

SPARK = "▁▂▃▄▅▆▇█"
HISTORY_LEN = 60
ENTER, LEAVE = "\x1b[?1049h\x1b[?25l", "\x1b[?25h\x1b[?1049l"  # alternate screen, cursor
HOME, EOL, EOS = "\x1b[H", "\x1b[K", "\x1b[J"
COLUMNS = (("NAME", 22), ("RX bit/s", 9), ("TX bit/s", 9), ("RX pkt/s", 8), ("TX pkt/s", 8),
           ("HANDSHAKE", 9))  # fmt: skip
RowKey = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Snapshot:
    mono: float  # seconds, time.monotonic() when the reply came
    wall: float  # seconds since the epoch, for handshake ages
    reply: dict[str, Any]


@dataclass(slots=True)
class Row:
    key: RowKey  # (iface,) or (iface, peer public key or route subnet)
    label: str
    rx_bps: float | None = None  # bits per second; None: no earlier sample of this row
    tx_bps: float | None = None
    rx_pps: float | None = None  # packets per second; None also where there is no counter
    tx_pps: float | None = None
    handshake_age: float | None = None  # seconds; None: not a WireGuard peer
    never: bool = False  # a WireGuard peer without a handshake yet
    drops: dict[str, float] = field(default_factory=dict)  # "rx bad_mac" -> per second


def _counters(reply: dict[str, Any]) -> dict[RowKey, dict[str, Any]]:
    """Each row's counters by key, in display order: interfaces, each followed by its peers."""
    out: dict[RowKey, dict[str, Any]] = {}
    for name, iface in reply.get("interfaces", {}).items():
        c = dict(iface.get("counters") or {})
        c["label"] = f"{name} ({iface.get('type', '?')})"
        out[(name,)] = c
        for p in iface.get("peers") or []:
            out[(name, p.get("public_key", "?"))] = {**p, "label": f"  {p.get('public_key', '?')}"}
        for r in iface.get("routes") or []:
            if r.get("public_key") or "rx_bytes" in r:
                out[(name, r.get("subnet", "?"))] = {**r, "label": f"  {r.get('subnet', '?')}"}
    return out


def _delta(now: Any, before: Any) -> int | None:
    if not isinstance(now, int) or not isinstance(before, int):
        return None
    return now - before if now >= before else now  # went down: reset, count from zero


def _rate(cur: dict[str, Any], prev: dict[str, Any] | None, key: str, dt: float) -> float | None:
    if prev is None or dt <= 0:
        return None
    d = _delta(cur.get(key), prev.get(key))
    return None if d is None else d / dt


def _drops(cur: dict[str, Any], prev: dict[str, Any] | None, dt: float) -> dict[str, float]:
    out: dict[str, float] = {}
    if prev is None or dt <= 0:
        return out
    for direction in ("rx_dropped", "tx_dropped"):
        before = prev.get(direction) or {}
        for reason, count in (cur.get(direction) or {}).items():
            d = _delta(count, before.get(reason, 0))
            if d:
                out[f"{direction[:2]} {reason}"] = d / dt
    return out


def compute_rows(prev: Snapshot | None, cur: Snapshot) -> list[Row]:
    """Rows of `cur`, with rates over the time since `prev` (None: first sample, no rates)."""
    before = _counters(prev.reply) if prev is not None else {}
    dt = cur.mono - prev.mono if prev is not None else 0.0
    rows = []
    for key, c in _counters(cur.reply).items():
        p = before.get(key)
        rx, tx = _rate(c, p, "rx_bytes", dt), _rate(c, p, "tx_bytes", dt)
        row = Row(key, c["label"], None if rx is None else rx * 8, None if tx is None else tx * 8,
                  _rate(c, p, "rx_packets", dt), _rate(c, p, "tx_packets", dt),
                  drops=_drops(c, p, dt))  # fmt: skip
        if "latest_handshake" in c:
            shake = c["latest_handshake"]
            row.never = not shake
            row.handshake_age = max(0.0, cur.wall - shake) if shake else None
        rows.append(row)
    return rows


class History:
    """The last `size` bit rates (rx + tx) of each row; rows that are gone are forgotten."""

    def __init__(self, size: int = HISTORY_LEN) -> None:
        self.size = size
        self.series: dict[RowKey, deque[float]] = {}

    def add(self, rows: list[Row]) -> None:
        live = {row.key for row in rows}
        for key in [k for k in self.series if k not in live]:
            del self.series[key]
        for row in rows:
            if row.rx_bps is not None or row.tx_bps is not None:
                series = self.series.setdefault(row.key, deque(maxlen=self.size))
                series.append((row.rx_bps or 0.0) + (row.tx_bps or 0.0))


def sparkline(values: list[float] | deque[float], width: int) -> str:
    """The last `width` values as blocks, scaled to their maximum (all ▁ when all are 0)."""
    tail = list(values)[-width:] if width > 0 else []
    top = max(tail, default=0.0)
    if top <= 0:
        return SPARK[0] * len(tail)
    return "".join(SPARK[min(7, round(v / top * 7))] for v in tail)


def si(value: float | None) -> str:
    """3 significant digits with k/M/G (powers of 1000); '-' for None."""
    if value is None:
        return "-"
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size * 0.9995:
            scaled = value / size
            return f"{scaled:.3g}{unit}" if scaled < 1000 else f"{scaled:.0f}{unit}"
    return f"{value:.0f}" if value >= 10 or value == 0 else f"{value:.1f}"


def age(row: Row) -> str:
    if row.never:
        return "never"
    if row.handshake_age is None:
        return ""
    s = int(row.handshake_age)
    if s < 60:
        return f"{s}s ago"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def fit(text: str, width: int) -> str:
    """`text` cut to `width` characters, the last one an ellipsis when something was cut."""
    if len(text) <= width:
        return text
    return text[: max(0, width - 1)] + "…" if width > 0 else ""


def _cells(row: Row) -> list[str]:
    return [si(row.rx_bps), si(row.tx_bps), si(row.rx_pps), si(row.tx_pps), age(row)]


def render(rows: list[Row], history: History, header: str, width: int = 80,
           height: int | None = None) -> list[str]:  # fmt: skip
    """The frame's lines, none longer than `width`; at most `height` lines (then a '…' line)."""
    spark_width = width - sum(w + 1 for _, w in COLUMNS)
    head = "".join(f"{t:<{w}} " if i == 0 else f"{t:>{w}} " for i, (t, w) in enumerate(COLUMNS))
    lines = [header, head + ("HISTORY" if spark_width >= 7 else "")]
    for row in rows:
        name_width = COLUMNS[0][1]
        line = fit(row.label, name_width).ljust(name_width) + " "
        line += "".join(f"{c:>{w}} " for c, (_, w) in zip(_cells(row), COLUMNS[1:], strict=True))
        line += sparkline(history.series.get(row.key, []), spark_width)
        lines.append(line)
        if row.drops:
            listed = ", ".join(f"{k} {si(v)}" for k, v in sorted(row.drops.items()))
            lines.append(f"    drops/s: {listed}")
    lines = [fit(line.rstrip(), width) for line in lines]
    if height is not None and len(lines) > height:
        hidden = len(lines) - height + 1
        lines = lines[: max(0, height - 1)] + [fit(f"… {hidden} more lines (a wider window?)",
                                                   width)]  # fmt: skip
    return lines


def header_line(socket_path: str, rows: list[Row], interval: float, note: str = "") -> str:
    ifaces = sum(1 for r in rows if len(r.key) == 1)
    peers = len(rows) - ifaces
    clock = time.strftime("%H:%M:%S")
    text = f"tunneld top  {clock}  {ifaces} interface(s), {peers} peer(s)  every {interval:g}s"
    return f"{text}  {note or 'q quits'}  {socket_path}"


# --- I/O: the control socket and the terminal ------------------------------------------------


def sample(socket_path: str) -> Snapshot:
    from tunneld.runtime.control import request

    reply = request(socket_path, {"cmd": "show", "iface": None})
    if "error" in reply:
        raise SetupError(str(reply["error"]))
    return Snapshot(time.monotonic(), time.time(), reply)


def top_main(socket_path: str, interval: float = 1.0, once: bool = False,
             stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:  # fmt: skip
    """`tunneld top`. Returns the exit code; SetupError (exit 1) when no daemon answers."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    if not 0 < interval <= 3600:
        raise UsageError("top: --interval must be more than 0 and at most 3600 seconds")
    first = sample(socket_path)
    if once:
        time.sleep(interval)
        rows, history = compute_rows(first, sample(socket_path)), History()
        history.add(rows)
        stdout.write("\n".join(render(rows, history, header_line(socket_path, rows, interval,
                                                                 "once"))) + "\n")  # fmt: skip
        return 0
    return _live(socket_path, interval, first, stdin, stdout)


def _live(socket_path: str, interval: float, first: Snapshot, stdin: TextIO,
          stdout: TextIO) -> int:  # fmt: skip
    fd = _tty_fd(stdin)
    saved = None
    stdout.write(ENTER)
    try:
        if fd is not None:
            import termios
            import tty

            saved = termios.tcgetattr(fd)
            tty.setcbreak(fd)  # no echo, no line buffering; ISIG stays: Ctrl-C is SIGINT
        prev, history, note = first, History(), ""
        rows = compute_rows(None, first)
        while True:
            _draw(stdout, render(rows, history, header_line(socket_path, rows, interval, note),
                                 *_size()))  # fmt: skip
            if _quit_requested(fd, time.monotonic() + interval):
                return 0
            try:
                cur = sample(socket_path)
            except TunneldError as exc:
                note = f"not answering: {exc}"
                continue
            rows, prev, note = compute_rows(prev, cur), cur, ""
            history.add(rows)
    except KeyboardInterrupt:
        return 0
    finally:
        if saved is not None and fd is not None:
            import termios

            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        stdout.write(LEAVE)
        stdout.flush()


def _tty_fd(stdin: TextIO) -> int | None:
    try:
        fd = stdin.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    return fd if os.isatty(fd) else None


def _size() -> tuple[int, int]:
    size = shutil.get_terminal_size((80, 24))
    return max(20, size.columns), max(3, size.lines)


def _draw(stdout: TextIO, lines: list[str]) -> None:
    stdout.write(HOME + (EOL + "\r\n").join(lines) + EOL + EOS)  # no newline after the last
    stdout.flush()


def _quit_requested(fd: int | None, deadline: float) -> bool:
    """Wait until `deadline` (monotonic); True as soon as `q` is typed on the terminal."""
    while (left := deadline - time.monotonic()) > 0:
        if fd is None:
            time.sleep(left)
            return False
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            data = os.read(fd, 64)
            if not data:  # the terminal went away: keep drawing until Ctrl-C or SIGHUP
                fd = None
            elif b"q" in data or b"Q" in data:
                return True
    return False
