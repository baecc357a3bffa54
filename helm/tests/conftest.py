"""Shared helpers of the chart tests: render helm/cordon with Helm's own engine (helm-python-sdk,
the Helm v4 Go SDK behind a C ABI) and pick objects out of the result."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

TESTS = Path(__file__).resolve().parent
CHART = TESTS.parent / "cordon"
REPO = TESTS.parent.parent

RELEASE = "cordon"
NAMESPACE = "detection"

#: The one value the chart cannot default.
MINIMAL: dict[str, Any] = {"config": {"source": {"brokers": "kafka:9092"}}}

#: The metrics the engine exposes (issue 6); the dashboard and the README use exactly these.
METRICS: dict[str, dict[str, Any]] = {
    "cordon_events_consumed_total": {"type": "counter", "labels": []},
    "cordon_decode_failures_total": {"type": "counter", "labels": ["reason"]},
    "cordon_dead_letters_total": {"type": "counter", "labels": ["reason"]},
    "cordon_late_events_total": {"type": "counter", "labels": []},
    "cordon_alerts_total": {"type": "counter", "labels": ["rule", "severity", "status"]},
    "cordon_suppressed_matches_total": {"type": "counter", "labels": ["rule"]},
    "cordon_state_evictions_total": {"type": "counter", "labels": ["table"]},
    "cordon_state_split_checks_total": {"type": "counter", "labels": ["table", "result"]},
    "cordon_repartition_messages_total": {"type": "counter", "labels": ["result"]},
    "cordon_rule_reloads_total": {"type": "counter", "labels": ["result"]},
    "cordon_sink_errors_total": {"type": "counter", "labels": []},
    "cordon_state_keys": {"type": "gauge", "labels": ["table"]},
    "cordon_state_bytes": {"type": "gauge", "labels": []},
    "cordon_consumer_lag_messages": {"type": "gauge", "labels": ["topic", "partition"]},
    "cordon_checkpoint_age_seconds": {"type": "gauge", "labels": []},
    "cordon_rules_loaded": {"type": "gauge", "labels": []},
    "cordon_batch_duration_seconds": {"type": "histogram", "labels": ["stage"]},
    "cordon_checkpoint_duration_seconds": {"type": "histogram", "labels": []},
}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep merge (override wins), like Helm's coalescing of several values files."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


class Rendered:
    """The manifests of one render, by template and by kind/name."""

    def __init__(self, files: dict[str, str]):
        self.files = files
        self.objects: list[dict[str, Any]] = []
        for name, text in sorted(files.items()):
            if not name.endswith((".yaml", ".yml")):
                continue  # NOTES.txt
            for doc in yaml.safe_load_all(text):
                if doc is not None:
                    self.objects.append(doc)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    def maybe(self, kind: str, name: str | None = None) -> dict[str, Any] | None:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) <= 1
        return found[0] if found else None

    @property
    def sts(self) -> dict[str, Any]:
        return self.one("StatefulSet")

    @property
    def pod(self) -> dict[str, Any]:
        return self.sts["spec"]["template"]["spec"]

    @property
    def container(self) -> dict[str, Any]:
        (c,) = self.pod["containers"]
        return c

    @property
    def checksum(self) -> str:
        return self.sts["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    @property
    def config(self) -> dict[str, Any]:
        """The engine's config file as the pod reads it."""
        name = next(v["configMap"]["name"] for v in self.pod["volumes"] if v["name"] == "config")
        return yaml.safe_load(self.one("ConfigMap", name)["data"]["cordon.yaml"])

    def env(self) -> dict[str, dict[str, Any]]:
        return {e["name"]: e for e in self.container.get("env", [])}

    def volume(self, name: str) -> dict[str, Any] | None:
        return next((v for v in self.pod["volumes"] if v["name"] == name), None)

    def mount(self, name: str) -> dict[str, Any] | None:
        return next((m for m in self.container["volumeMounts"] if m["name"] == name), None)


@pytest.fixture(scope="session")
def chart():
    with helm.Chart.load(CHART) as c:
        yield c


@pytest.fixture(scope="session")
def values_all() -> dict[str, Any]:
    return load_yaml(TESTS / "values-all.yaml")


@pytest.fixture(scope="session")
def render(chart):
    """render(values) -> Rendered, with the release name and namespace of these tests."""

    def _render(values: dict[str, Any] | None = None, **kw: Any) -> Rendered:
        return Rendered(
            chart.render(values, name=kw.get("name", RELEASE), namespace=NAMESPACE)
        )

    return _render
