"""contrib/grafana-tunneld.json uses exactly the metric names tunneld exports.

The known names come from the exporter itself (the collector on fake data plus the
process collector, through the real exposition and parser), not from a list kept here;
every expression must name only those, every DESIGN.md name must be on some panel, and
every label a panel groups or labels by must be one the series carry.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.test_metrics import SHOWS
from tunneld.runtime.metrics import LinkCollector

DASHBOARD = Path(__file__).parents[2] / "contrib" / "grafana-tunneld.json"
DESIGN_NAMES = {
    "tunneld_interface_receive_bytes_total", "tunneld_interface_transmit_bytes_total",
    "tunneld_interface_receive_packets_total", "tunneld_interface_transmit_packets_total",
    "tunneld_interface_dropped_packets_total", "tunneld_peer_receive_bytes_total",
    "tunneld_peer_transmit_bytes_total", "tunneld_peer_latest_handshake_seconds",
    "tunneld_peer_handshakes_total", "tunneld_fdb_entries", "tunneld_overlay_routes",
    "tunneld_registry_connected",
}  # fmt: skip
PROMQL_WORDS = {"rate", "sum", "by", "count", "time", "label_values", "without", "irate",
                "avg", "max", "min", "increase", "and", "or", "unless", "on", "bool"}  # fmt: skip
SCRAPE_LABELS = {"job", "instance"}


def exported() -> tuple[set[str], set[str]]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LinkCollector(lambda: SHOWS))
    ProcessCollector(registry=registry)
    names, labels = set(), set(SCRAPE_LABELS)
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            names.add(s.name)
            labels |= set(s.labels)
    return names, labels


def expressions(dash: dict) -> list[str]:
    out = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    out += [v["definition"] for v in dash["templating"]["list"] if "definition" in v]
    return out


def metric_names(expr: str) -> set[str]:
    """Identifiers of an expression that are not functions, keywords, labels or strings."""
    bare = re.sub(r'"[^"]*"', "", expr)  # label values
    bare = re.sub(r"\{[^}]*\}", "{}", bare)  # matchers
    bare = re.sub(r"\[[^\]]*\]", "", bare)  # ranges
    bare = re.sub(r"\b(by|without|on)\s*\([^)]*\)", "", bare)  # grouping labels
    bare = re.sub(r"label_values\(([^,]*),\s*\w+\)", r"\1", bare)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", bare))
    return {w for w in words if w not in PROMQL_WORDS and not w.startswith("__")}


def test_every_expression_names_only_exported_metrics():
    dash = json.loads(DASHBOARD.read_text())
    known, _ = exported()
    assert DESIGN_NAMES <= known
    used: set[str] = set()
    for expr in expressions(dash):
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= known, f"{expr!r} uses unknown {sorted(names - known)}"
        used |= names
    assert DESIGN_NAMES <= used, f"not on any panel: {sorted(DESIGN_NAMES - used)}"


def test_grouping_and_legend_labels_exist():
    dash = json.loads(DASHBOARD.read_text())
    _, labels = exported()
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            grouped = re.findall(r"\bby\s*\(([^)]*)\)", target["expr"])
            used = {w.strip() for g in grouped for w in g.split(",")}
            used |= set(re.findall(r"\{\{(\w+)\}\}", target.get("legendFormat", "")))
            used |= set(re.findall(r"(\w+)=~?\"", target["expr"]))
            assert used <= labels, (panel["title"], sorted(used - labels))


def test_the_checker_can_fail():
    known, _ = exported()
    assert metric_names('rate(tunneld_interface_rx_bytes{interface=~"$x"}[5m])') - known
    assert not metric_names('sum by (reason) (rate(process_cpu_seconds_total{a="b"}[1m]))') - known


def test_panels_cover_rates_drops_handshakes_fdb_routes_registry():
    titles = " | ".join(p["title"].lower() for p in json.loads(DASHBOARD.read_text())["panels"])
    for word in ("throughput", "packets per second", "drops", "handshake", "fdb", "routes",
                 "registry"):  # fmt: skip
        assert word in titles, word
