"""values.yaml and values.schema.json: the schema types every value and rejects typos, and
every value is documented in values.yaml and in the chart's README."""

from __future__ import annotations

import json
import re

import helm_python as helm
import jsonschema
import pytest

from conftest import CHART, MINIMAL, NAMESPACE, RELEASE, TESTS, load_yaml, merge

SCHEMA = json.loads((CHART / "values.schema.json").read_text())


def test_schema_is_valid_draft_07():
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(SCHEMA)


def test_schema_closes_every_section():
    """Every object of the schema that lists its properties refuses others, so a misspelt key
    anywhere is an error rather than a silently ignored value."""

    def walk(schema, path):
        if "properties" in schema:
            assert schema.get("additionalProperties") is False, path
            for k, v in schema["properties"].items():
                walk(v, f"{path}/{k}")
        for k in ("items", "additionalProperties"):
            if isinstance(schema.get(k), dict):
                walk(schema[k], f"{path}[{k}]")
        for k in ("oneOf", "anyOf", "allOf"):
            for i, v in enumerate(schema.get(k, [])):
                walk(v, f"{path}[{k}/{i}]")

    # Lists of Kubernetes objects give `properties` only to require a name; they stay open.
    open_items = {"extraEnv", "extraVolumes", "extraVolumeMounts"}
    for key, node in SCHEMA["properties"].items():
        if key not in open_items:
            walk(node, f"/{key}")
    for key, node in SCHEMA["definitions"].items():
        walk(node, f"#/definitions/{key}")
    assert SCHEMA["additionalProperties"] is False


def test_defaults_and_values_all_pass(chart, values_all):
    chart.validate_schema(MINIMAL)
    chart.validate_schema(values_all)
    # The same values through the Python validator (a second implementation of draft-07).
    defaults = load_yaml(CHART / "values.yaml")
    jsonschema.Draft7Validator(SCHEMA).validate(merge(defaults, MINIMAL))
    jsonschema.Draft7Validator(SCHEMA).validate(merge(defaults, values_all))


@pytest.mark.parametrize(
    "file, expected",
    [
        ("unknown-key.yaml", "additional properties 'persistance' not allowed"),
        ("wrong-type.yaml", "/replicaCount"),
    ],
)
def test_bad_values_files_are_rejected(chart, file, expected):
    values = load_yaml(TESTS / "bad-values" / file)
    with pytest.raises(helm.HelmValuesError, match=re.escape(expected)):
        chart.validate_schema(values)
    # An install or `helm template` refuses it the same way.
    with pytest.raises(helm.HelmValuesError, match=re.escape(expected)):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def test_wrong_type_names_every_bad_key(chart):
    values = load_yaml(TESTS / "bad-values" / "wrong-type.yaml")
    with pytest.raises(helm.HelmValuesError) as e:
        chart.validate_schema(values)
    assert "/replicaCount" in str(e.value) and "/persistence/enabled" in str(e.value)


@pytest.mark.parametrize(
    "bad, where",
    [
        ({"replicas": 3}, "replicas"),
        ({"persistence": {"enbled": False}}, "enbled"),
        ({"config": {"source": {"broker": "x:9092"}}}, "broker"),
        ({"config": {"rules": {"paths": ["/x"]}}}, "rules"),  # owned by the chart
        ({"config": {"state": {"dir": "/x"}}}, "dir"),  # owned by the chart
        ({"config": {"source": {"properties": {"group.id": "x"}}}}, "group.id"),
        ({"config": {"source": {"properties": {"fetch.max.bytes": [1]}}}}, "fetch.max.bytes"),
        ({"config": {"sink": {"format": "json"}}}, "/config/sink/format"),
        ({"config": {"time": {"allowed_lateness": "five minutes"}}}, "allowed_lateness"),
        ({"config": {"state": {"max_keys": 0}}}, "max_keys"),
        ({"config": {"state": {"object_store_url": "gs://b/x"}}}, "object_store_url"),
        (
            {"config": {"state": {"object_store_options": {"aws_secret_access_key": "x"}}}},
            "aws_secret_access_key",
        ),
        ({"config": {"http": {"listen": "localhost:9464"}}}, "listen"),
        ({"rules": {"files": {"rules.json": "{}"}}}, "rules.json"),
        ({"livenessProbe": {"enabled": True, "periodSecond": 5}}, "periodSecond"),
        ({"terminationGracePeriodSeconds": "60"}, "terminationGracePeriodSeconds"),
        ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
        ({"image": {"digest": "latest"}}, "digest"),
        ({"kafka": {"sasl": {"mechanism": "SCRAM-SHA-1"}}}, "mechanism"),
        ({"podDisruptionBudget": {"maxUnavailable": "half"}}, "maxUnavailable"),
        ({"persistence": {"size": "10 GB"}}, "size"),
        ({"resources": {"limit": {"memory": "1Gi"}}}, "limit"),
        ({"metrics": {"serviceMonitor": {"interval": 30}}}, "interval"),
        ({"podAnnotations": {"a": 1}}, "podAnnotations"),
    ],
)
def test_schema_rejects(chart, bad, where):
    with pytest.raises(helm.HelmValuesError, match=re.escape(where)):
        chart.validate_schema(merge(MINIMAL, bad))


# --- documentation ----------------------------------------------------------------------------


def documented_keys() -> list[tuple[str, bool]]:
    """(dotted key, has a comment on the line above) for every key of values.yaml that is not
    inside a documented key's block (a documented object, such as securityContext, is
    documented as a whole). A comment separated from a key by a blank line is a section's."""
    out = []
    stack: list[tuple[int, str, bool]] = []  # (indent, key, documented)
    previous = ""
    for line in (CHART / "values.yaml").read_text().splitlines():
        m = re.match(r"^(\s*)([A-Za-z_][\w.-]*):(.*)$", line)
        if m:
            indent, key = len(m.group(1)), m.group(2)
            while stack and stack[-1][0] >= indent:
                stack.pop()
            inside_documented = any(doc for _, _, doc in stack)
            commented = previous.lstrip().startswith("#")
            path = ".".join([k for _, k, _ in stack] + [key])
            if not inside_documented:
                out.append((path, commented))
            stack.append((indent, key, commented or inside_documented))
        previous = line
    return out


def test_every_value_has_a_comment():
    keys = documented_keys()
    assert len(keys) > 50
    leaves = load_yaml(CHART / "values.yaml")

    def is_section(path: str) -> bool:
        node = leaves
        for part in path.split("."):
            node = node[part]
        return isinstance(node, dict) and bool(node)

    undocumented = [p for p, doc in keys if not doc and not is_section(p)]
    assert undocumented == []


def test_readme_lists_every_value():
    readme = (CHART / "README.md").read_text()
    missing = [p for p, doc in documented_keys() if doc and f"`{p}`" not in readme]
    assert missing == []
