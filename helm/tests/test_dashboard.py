"""The Grafana dashboard shipped with the chart: valid JSON, and it queries only the engine's
metrics, each with labels the metric has."""

from __future__ import annotations

import json
import re

from conftest import CHART, METRICS

DASHBOARD = CHART / "dashboards" / "cordon.json"
#: Labels every series has once Prometheus scrapes it through the ServiceMonitor.
TARGET_LABELS = {"namespace", "pod"}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def queries() -> list[str]:
    out = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            out.append(target["expr"])
    return out


def metric_of(series: str) -> str:
    """The metric a series name belongs to (histograms have _bucket, _sum and _count)."""
    for suffix in ("_bucket", "_sum", "_count"):
        base = series.removesuffix(suffix)
        if base != series and METRICS.get(base, {}).get("type") == "histogram":
            return base
    return series


def test_dashboard_is_a_grafana_dashboard():
    d = dashboard()
    assert d["title"] == "Cordon"
    assert d["uid"] == "cordon-engine"
    assert isinstance(d["schemaVersion"], int)
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    names = [v["name"] for v in d["templating"]["list"]]
    assert names == ["datasource", "namespace", "pod"]
    for panel in d["panels"]:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
            assert panel["targets"], panel["title"]


def test_dashboard_uses_only_engine_metrics():
    used = set()
    for expr in queries():
        series = set(re.findall(r"\bcordon_[a-z_]+", expr))
        assert series, expr
        for s in series:
            metric = metric_of(s)
            assert metric in METRICS, f"unknown metric {s} in {expr}"
            if METRICS[metric]["type"] == "histogram":
                assert s != metric, f"histogram {s} is queried by its series, not its name"
            used.add(metric)
        allowed = TARGET_LABELS | {"le"} | {
            label for s in series for label in METRICS[metric_of(s)]["labels"]
        }
        for group in re.findall(r"\bby \(([^)]*)\)", expr):
            labels = {label.strip() for label in group.split(",")}
            assert labels <= allowed, f"{expr}: no such label {labels - allowed}"
        for selector in re.findall(r"\{([^}]*)\}", expr):
            labels = set(re.findall(r"(\w+)\s*=~?", selector))
            assert labels <= allowed, f"{expr}: no such label {labels - allowed}"
    assert used == set(METRICS), f"not on the dashboard: {set(METRICS) - used}"


def test_readme_lists_every_metric():
    readme = (CHART / "README.md").read_text()
    missing = [m for m in METRICS if f"`{m}" not in readme]
    assert missing == []
