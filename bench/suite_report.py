"""The results of `bench/suite.py`: medians, min-max, ratios to anchors, the acceptance
ratios of issue 7, the Markdown table and the JSON document, and the machine they ran on."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from suite_cases import ACCEPTANCE, CASES_BY_ID  # noqa: E402
from suite_measure import METRICS, Sample  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent

# samples[case id][metric name] -> the runs that completed, in order
Samples = dict[str, dict[str, list[Sample]]]


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(samples: Samples) -> dict[str, dict[str, dict[str, Any]]]:
    """Per case and metric: median, min, max (metric unit), median loss %, per-daemon median
    CPU s/GB, and the ratio of the median to the anchor's median in the same run."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for case_id, by_metric in samples.items():
        out[case_id] = {}
        for name, runs in by_metric.items():
            values = [s.value for s in runs]
            losses = [s.loss_percent for s in runs if s.loss_percent is not None]
            labels = sorted({label for s in runs for label in s.cpu_s})
            cpu = {
                lb: _median([s.cpu_s_per_gb()[lb] for s in runs if lb in s.cpu_s_per_gb()])
                for lb in labels
            }
            out[case_id][name] = {
                "unit": METRICS[name].unit,
                "samples": values,
                "median": _median(values),
                "min": min(values) if values else None,
                "max": max(values) if values else None,
                "loss_percent_median": _median(losses),
                "udp_payload": runs[0].payload if runs else None,
                "cpu_s_per_gb": cpu,
                "runs": [vars(s) for s in runs],
            }
    for case_id, by_metric in out.items():
        anchor = CASES_BY_ID[case_id].anchor
        for name, row in by_metric.items():
            base = out.get(anchor or "", {}).get(name, {}).get("median")
            row["anchor"] = anchor
            row["ratio_to_anchor"] = row["median"] / base if base and row["median"] else None
    return out


def acceptance(summary: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Issue 7's acceptance ratios, TCP single stream each way (None where not measured)."""
    rows = []
    for what, subject, anchor, goal in ACCEPTANCE:
        row: dict[str, Any] = {"what": what, "subject": subject, "anchor": anchor, "goal": goal}
        for metric in ("tcp1", "tcp1r"):
            num = summary.get(subject, {}).get(metric, {}).get("median")
            den = summary.get(anchor, {}).get(metric, {}).get("median")
            row[metric] = num / den if num and den else None
        measured = [row[m] for m in ("tcp1", "tcp1r") if row[m] is not None]
        # met: both directions measured and at goal; NO as soon as one falls short
        if any(r < goal for r in measured):
            row["met"] = False
        else:
            row["met"] = True if len(measured) == 2 else None
        rows.append(row)
    return rows


# --- text -------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:.0f}"


def _cpu_cell(cpu: dict[str, float]) -> str:
    return ", ".join(f"{label} {_num(v)}" for label, v in cpu.items()) or "-"


def results_table(summary: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = [
        "| case | metric | median | min-max | ratio to anchor | loss % | daemon CPU s/GB |",
        "|---|---|---|---|---|---|---|",
    ]
    for case_id, by_metric in summary.items():
        title = CASES_BY_ID[case_id].title
        for name, row in by_metric.items():
            metric = METRICS[name].title
            if row["udp_payload"] not in (None, METRICS[name].udp_payload):
                metric += f" (sent {row['udp_payload']} B)"
            spread = f"{_num(row['min'])}-{_num(row['max'])}" if row["samples"] else "failed"
            ratio = _num(row["ratio_to_anchor"]) if row["ratio_to_anchor"] else "-"
            if row["ratio_to_anchor"]:
                ratio += f" ({row['anchor']})"
            lines.append(
                f"| {title} | {metric} | {_num(row['median'])} {row['unit']} | {spread} | "
                f"{ratio} | {_num(row['loss_percent_median'], 2)} | "
                f"{_cpu_cell(row['cpu_s_per_gb'])} |"
            )
    return "\n".join(lines)


def acceptance_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| acceptance ratio (offload on) | goal | TCP 1 stream | TCP 1 stream -R | met |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        met = {True: "yes", False: "NO", None: "-"}[r["met"]]
        lines.append(
            f"| {r['what']} | >= {r['goal']:g} | {_num(r['tcp1'])} | {_num(r['tcp1r'])} | {met} |"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None
            )
    except OSError:
        pass
    return {
        "kernel": platform.release(),
        "cpu_model": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT)
        return out.stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD") or None,
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


def markdown(doc: dict[str, Any]) -> str:
    m, a = doc["machine"], doc["args"]
    head = (
        f"# tunneld bench suite, {doc['time']}\n\n"
        f"Machine: {m['cpu_model']}, {m['cores']} cores, Linux {m['kernel']}, Python "
        f"{m['python']}; commit {(doc['commit'] or 'unknown')[:12]}"
        f"{' (with uncommitted changes)' if doc['dirty'] else ''}; tunneld native: "
        f"{doc['tunneld_native'] or 'not reported'}.\n"
        f"Runs: {a['runs']} x {a['seconds']:g} s per metric, interleaved; medians, min-max "
        f"and same-run ratios to each case's anchor.\n"
    )
    parts = [head, results_table(doc["summary"]), "", acceptance_table(doc["acceptance"])]
    parts += ["", peak_rss_line(doc["cases"])]
    if doc["errors"]:
        parts += ["", "Errors (in full in the JSON):"]
        parts += [f"- {k}: {short(v)}" for k, v in doc["errors"].items()]
    return "\n".join(parts) + "\n"


def short(error: str, limit: int = 300) -> str:
    """An error's first line and, for a daemon's traceback, its last line."""
    lines = [ln.strip() for ln in error.strip().splitlines() if ln.strip()]
    text = lines[0] if len(lines) < 2 else f"{lines[0]} ... {lines[-1]}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def peak_rss_line(cases: dict[str, dict[str, Any]]) -> str:
    """The largest peak RSS of each daemon kind over the built cases."""
    peaks: dict[str, tuple[int, str]] = {}
    for case_id, case in cases.items():
        for d in case["daemons"]:
            kb = d["peak_rss_kb"]
            if kb is not None and kb > peaks.get(d["kind"], (0, ""))[0]:
                peaks[d["kind"]] = (kb, f"{case_id} {d['side']}")
    if not peaks:
        return "Peak RSS: no daemons."
    items = [f"{kind} {kb / 1024:.1f} MiB ({where})" for kind, (kb, where) in peaks.items()]
    return "Peak RSS of one daemon over the run (VmHWM): " + ", ".join(items) + "."


def write(doc: dict[str, Any], now: datetime.datetime) -> tuple[Path, Path]:
    """suite-<UTC>.md and .json in bench/results/, and LATEST.md (overwritten)."""
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"suite-{now:%Y%m%dT%H%M%SZ}"
    text = markdown(doc)
    md, js = stem.with_suffix(".md"), stem.with_suffix(".json")
    md.write_text(text)
    js.write_text(json.dumps(doc, indent=2) + "\n")
    (RESULTS / "LATEST.md").write_text(text)
    return md, js
