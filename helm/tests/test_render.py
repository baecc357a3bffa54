"""Render the chart with Helm's engine and check the manifests: Kubernetes schemas, the
properties an SRE relies on (security, probes, shutdown, state, config rollout, rules, Kafka
credentials), and that the rendered config is one the engine accepts."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from conftest import CHART, MINIMAL, NAMESPACE, REPO, RELEASE, TESTS, Rendered, load_yaml, merge

#: Kubernetes versions whose schemas every manifest must pass: the oldest the chart supports
#: (Chart.yaml kubeVersion) and the newest kubernetes-validate ships.
KUBE_VERSIONS = ["1.30", kubernetes_validate.latest_version()]

#: Kinds that come from CRDs: kubernetes-validate has no schema for them; checked by hand below.
CRD_KINDS = {"ServiceMonitor"}

#: Variants rendered and validated besides the defaults and values-all.yaml.
VARIANTS: dict[str, dict[str, Any]] = {
    "minimal": MINIMAL,
    "no-persistence": merge(
        MINIMAL,
        {
            "persistence": {"enabled": False, "size": "2Gi"},
            "podDisruptionBudget": {"enabled": False},
            "startupProbe": {"enabled": False},
            "livenessProbe": {"enabled": False},
            "readinessProbe": {"enabled": False},
            "resources": {},
        },
    ),
    "tls-from-configmap": merge(
        MINIMAL,
        {"kafka": {"securityProtocol": "SSL", "tls": {"ca": {"configMapName": "kafka-ca"}}}},
    ),
    "existing-rules": merge(MINIMAL, {"rules": {"existingConfigMap": "team-rules"}}),
}


@pytest.fixture(scope="module")
def minimal(render) -> Rendered:
    return render(MINIMAL)


@pytest.fixture(scope="module")
def full(render, values_all) -> Rendered:
    return render(values_all)


def all_variants(values_all: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {**VARIANTS, "all": values_all}


# --- rendering and Kubernetes schemas -----------------------------------------------------


def test_defaults_alone_ask_for_the_brokers(chart):
    """The broker list is the one value without a default: rendering without it fails and says
    which key is missing (values.schema.json)."""
    with pytest.raises(helm.HelmValuesError, match="/config/source/brokers"):
        chart.render(None, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize("variant", [*VARIANTS, "all"])
@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_every_manifest_passes_the_kubernetes_schema(render, values_all, variant, kube):
    rendered = render(all_variants(values_all)[variant])
    kinds = set()
    for obj in rendered.objects:
        kinds.add(obj["kind"])
        if obj["kind"] in CRD_KINDS:
            continue
        # strict: unknown fields are errors too (a misplaced key would be dropped silently by
        # the API server).
        kubernetes_validate.validate(obj, kube, strict=True)
    assert {"StatefulSet", "ConfigMap", "Service"} <= kinds


@pytest.mark.parametrize("variant", [*VARIANTS, "all"])
def test_helm_lint_is_clean(values_all, variant):
    report = helm.lint(
        str(CHART), all_variants(values_all)[variant], strict=True, kube_version="v1.30.0"
    )
    assert report["errors"] == []
    # Severity 1 is informational ("icon is recommended"); 2 and up are warnings and errors.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_values_all_sets_every_key_of_values_yaml(values_all):
    """values-all.yaml exercises every option: each key path of values.yaml appears in it."""

    def paths(d: dict[str, Any], prefix: str = "") -> list[str]:
        out = []
        for k, v in d.items():
            p = f"{prefix}{k}"
            if isinstance(v, dict) and v and not k.endswith(("SecurityContext", "securityContext")):
                out += paths(v, p + ".")
            else:
                out.append(p)
        return out

    def has(d: dict[str, Any], path: str) -> bool:
        for part in path.split("."):
            if not isinstance(d, dict) or part not in d:
                return False
            d = d[part]
        return True

    defaults = load_yaml(CHART / "values.yaml")
    missing = [p for p in paths(defaults) if not has(values_all, p)]
    assert missing == [], f"values-all.yaml lacks {missing}"


# --- the workload ---------------------------------------------------------------------------


def test_statefulset_shape(minimal: Rendered):
    sts = minimal.sts
    assert sts["metadata"]["name"] == RELEASE
    assert sts["metadata"]["namespace"] == NAMESPACE
    assert sts["spec"]["replicas"] == 1
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    # The selector picks the pod template's labels, and the governing Service is headless.
    selector = sts["spec"]["selector"]["matchLabels"]
    assert selector.items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    headless = minimal.one("Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == selector
    c = minimal.container
    assert c["image"] == "cordon:0.1.0"  # tag defaults to the chart's appVersion
    assert c["args"] == ["run", "--config", "/etc/cordon/cordon.yaml"]
    assert c["ports"] == [{"name": "http", "containerPort": 9464, "protocol": "TCP"}]


def test_security_context_is_locked_down(minimal: Rendered):
    pod_sc = minimal.pod["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] == 65532
    assert pod_sc["runAsGroup"] == 65532
    assert pod_sc["fsGroup"] == 65532  # the state volume is writable by the engine's user
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = minimal.container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 65532
    assert sc["runAsGroup"] == 65532
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert minimal.pod["automountServiceAccountToken"] is False
    assert minimal.pod["enableServiceLinks"] is False
    # The only writable paths: /tmp (emptyDir) and the state directory.
    assert minimal.mount("tmp")["mountPath"] == "/tmp"
    assert "emptyDir" in minimal.volume("tmp")
    writable = [m["mountPath"] for m in minimal.container["volumeMounts"] if not m.get("readOnly")]
    assert sorted(writable) == ["/tmp", "/var/lib/cordon"]


def test_probes(minimal: Rendered, render):
    c = minimal.container
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert "enabled" not in c["livenessProbe"]
    off = render(merge(MINIMAL, {"livenessProbe": {"enabled": False}}))
    assert "livenessProbe" not in off.container
    assert "readinessProbe" in off.container


def test_env_has_pod_name_and_log_filter(minimal: Rendered, full: Rendered):
    env = minimal.env()
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["RUST_LOG"]["value"] == "info"
    assert full.env()["RUST_LOG"]["value"] == "info,cordon_engine=debug"
    # extraEnv is passed through as given.
    assert full.env()["CORDON_SOURCE__PROPERTIES__SSL_KEY_PASSWORD"]["valueFrom"] == {
        "secretKeyRef": {"name": "kafka-client-cert", "key": "password"}
    }
    # No SASL variables without a Secret.
    assert not [k for k in env if "SASL" in k]


def test_heap_huge_pages_are_asked_for_unless_turned_off(minimal: Rendered, full: Rendered):
    assert minimal.env()["GLIBC_TUNABLES"]["value"] == "glibc.malloc.hugetlb=1"
    assert "GLIBC_TUNABLES" not in full.env()


def test_termination_grace_period(minimal: Rendered, full: Rendered):
    assert minimal.pod["terminationGracePeriodSeconds"] == 60
    assert full.pod["terminationGracePeriodSeconds"] == 120


def test_resources_from_values(minimal: Rendered, full: Rendered, values_all):
    assert minimal.container["resources"] == load_yaml(CHART / "values.yaml")["resources"]
    assert full.container["resources"] == values_all["resources"]


# --- state ----------------------------------------------------------------------------------


def test_state_gets_one_claim_per_replica(minimal: Rendered, full: Rendered):
    (claim,) = minimal.sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "state"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert "storageClassName" not in claim["spec"]  # the cluster default
    assert minimal.mount("state")["mountPath"] == "/var/lib/cordon"
    assert minimal.volume("state") is None  # the claim, not a pod volume
    assert "persistentVolumeClaimRetentionPolicy" not in minimal.sts["spec"]
    (claim,) = full.sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    assert claim["spec"]["accessModes"] == ["ReadWriteOncePod"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert claim["metadata"]["labels"]["backup"] == "daily"
    assert full.sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Delete",
        "whenScaled": "Retain",
    }


def test_state_without_persistence_is_an_empty_dir(render):
    r = render(VARIANTS["no-persistence"])
    assert "volumeClaimTemplates" not in r.sts["spec"]
    assert r.volume("state") == {"name": "state", "emptyDir": {"sizeLimit": "2Gi"}}
    assert r.mount("state")["mountPath"] == "/var/lib/cordon"
    assert r.maybe("PodDisruptionBudget") is None


def test_storage_class_dash_means_none(render):
    r = render(merge(MINIMAL, {"persistence": {"storageClassName": "-"}}))
    assert r.sts["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == ""


# --- config and its rollout ------------------------------------------------------------------


def engine_config_keys() -> dict[str, set[str]]:
    """Config v1's keys as the engine knows them (engine/src/config.rs, `KEYS`)."""
    src = (REPO / "engine" / "src" / "config.rs").read_text()
    table = src[src.index("pub const KEYS") :]
    table = table[: table.index("];")]
    sections = re.findall(r'\(\s*"(\w+)",\s*&\[(.*?)\]', table, re.S)
    assert sections, "cannot read the KEYS table of engine/src/config.rs"
    return {s: set(re.findall(r'"(\w+)"', keys)) for s, keys in sections}


def test_config_is_config_v1_with_the_mounted_paths(minimal: Rendered, full: Rendered):
    known = engine_config_keys()
    for r in (minimal, full):
        cfg = r.config
        assert set(cfg) <= set(known), "a config section the engine does not know"
        for section, body in cfg.items():
            assert set(body) <= known[section], f"{section}: keys the engine does not know"
        assert cfg["rules"] == {"paths": ["/etc/cordon/rules"]}
        assert cfg["state"]["dir"] == "/var/lib/cordon"
        for section in ("source", "sink"):
            assert all(isinstance(v, str) for v in cfg[section]["properties"].values())
    cfg = minimal.config
    assert cfg["source"]["brokers"] == "kafka:9092"
    assert cfg["source"]["group_id"] == "cordon"
    assert cfg["http"]["listen"] == "0.0.0.0:9464"
    props = full.config["source"]["properties"]
    # Numbers become the strings librdkafka expects, whole numbers without an exponent.
    assert props["fetch.max.bytes"] == "104857600"
    assert props["session.timeout.ms"] == "45000"
    assert props["enable.ssl.certificate.verification"] == "true"
    assert full.config["sink"]["properties"]["linger.ms"] == "5"
    assert full.config["state"]["object_store_url"] == "s3://detection-state/cordon"
    assert full.config["state"]["object_store_options"]["aws_region"] == "eu-west-1"
    # The container port follows http.listen ("[::]:9000"), and the Service targets it by name.
    assert full.container["ports"][0]["containerPort"] == 9000
    svc = full.one("Service", "cordon-prod")
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 9000, "targetPort": "http", "protocol": "TCP"}
    ]


def test_every_engine_config_key_can_be_set_from_values():
    """values.schema.json admits every key of Config v1 except the two the chart owns."""
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    config = schema["properties"]["config"]["properties"]
    owned = {("rules", "paths"), ("state", "dir")}
    for section, keys in engine_config_keys().items():
        for key in keys:
            if (section, key) in owned:
                assert key not in config.get(section, {}).get("properties", {})
            else:
                assert key in config[section]["properties"], f"config.{section}.{key}"


def test_checksum_is_the_config_map_hash(minimal: Rendered):
    text = minimal.files["cordon/templates/configmap.yaml"]
    assert minimal.checksum == hashlib.sha256(text.encode()).hexdigest()


def test_config_change_rolls_the_pods(render, minimal: Rendered):
    for change in (
        {"config": {"time": {"allowed_lateness": "10m"}}},
        {"config": {"source": {"properties": {"auto.offset.reset": "latest"}}}},
        {"kafka": {"securityProtocol": "SSL"}},
    ):
        changed = render(merge(MINIMAL, change))
        assert changed.checksum != minimal.checksum, change


def test_rule_change_does_not_roll_the_pods(render, values_all):
    before = render(values_all)
    edited = merge(values_all, {})
    edited["rules"]["files"]["local.yml"] = edited["rules"]["files"]["local.yml"].replace(
        "50000000", "80000000"
    )
    edited["rules"]["files"]["new.yaml"] = "id: x.y\n"
    after = render(edited)
    rules = lambda r: r.one("ConfigMap", "cordon-prod-rules")["data"]  # noqa: E731
    assert rules(after) != rules(before)
    assert after.checksum == before.checksum
    assert after.sts == before.sts


def test_engine_accepts_the_rendered_config(minimal: Rendered, full: Rendered, tmp_path):
    """Parse the rendered config with the engine's own loader, SASL variables included.

    Needs the `cordon` binary (CORDON_BIN, else target/debug/cordon). `cordon run` reads the
    config before anything else; the first thing it does after is load the rules from
    /etc/cordon/rules, which does not exist here, so "loading rules" is the sign the config
    passed."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    binary = os.environ.get("CORDON_BIN") or os.path.join(repo, "target", "debug", "cordon")
    assert os.path.isfile(binary), (
        f"the cordon binary is missing at {binary}: build it first (cargo build --bin cordon) "
        "or set CORDON_BIN"
    )
    for name, r in (("minimal", minimal), ("all", full)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(r.one("ConfigMap", r.sts["metadata"]["name"])["data"]["cordon.yaml"])
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORDON_")}
        for var in r.env():
            if var.startswith("CORDON_"):
                env[var] = "from-a-secret"
        out = subprocess.run(
            [binary, "run", "--config", str(path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode != 0
        assert "loading rules" in out.stderr and "/etc/cordon/rules" in out.stderr, out.stderr


# --- rules ----------------------------------------------------------------------------------


def test_rules_default_to_the_image_pack(minimal: Rendered):
    assert minimal.volume("rules") is None
    assert minimal.mount("rules") is None
    assert [c["metadata"]["name"] for c in minimal.all("ConfigMap")] == [RELEASE]


def test_rules_from_values_are_mounted_as_a_directory(full: Rendered, values_all):
    cm = full.one("ConfigMap", "cordon-prod-rules")
    assert cm["data"] == values_all["rules"]["files"]  # byte for byte
    assert full.volume("rules") == {"name": "rules", "configMap": {"name": "cordon-prod-rules"}}
    mount = full.mount("rules")
    assert mount["mountPath"] == "/etc/cordon/rules"
    assert mount["readOnly"] is True
    # A subPath mount would never see ConfigMap updates, and hot reload needs them.
    assert "subPath" not in mount
    annotations = full.sts["spec"]["template"]["metadata"]["annotations"]
    assert [k for k in annotations if k.startswith("checksum/")] == ["checksum/config"]


def test_rules_from_an_existing_config_map(render):
    r = render(VARIANTS["existing-rules"])
    assert r.volume("rules") == {"name": "rules", "configMap": {"name": "team-rules"}}
    assert r.mount("rules")["mountPath"] == "/etc/cordon/rules"
    assert [c["metadata"]["name"] for c in r.all("ConfigMap")] == [RELEASE]


# --- Kafka security --------------------------------------------------------------------------


def test_sasl_credentials_come_from_the_secret(full: Rendered):
    env = full.env()
    assert env["CORDON_SOURCE__PROPERTIES__SASL_USERNAME"]["valueFrom"] == {
        "secretKeyRef": {"name": "kafka-credentials", "key": "user"}
    }
    assert env["CORDON_SOURCE__PROPERTIES__SASL_PASSWORD"]["valueFrom"] == {
        "secretKeyRef": {"name": "kafka-credentials", "key": "pass"}
    }
    props = full.config["source"]["properties"]
    assert props["security.protocol"] == "SASL_SSL"
    assert props["sasl.mechanism"] == "SCRAM-SHA-512"
    # The credentials reach the engine only through the environment, never a ConfigMap.
    assert "sasl.username" not in props and "sasl.password" not in props


def test_tls_ca_from_a_secret(full: Rendered):
    props = full.config["source"]["properties"]
    assert props["ssl.ca.location"] == "/etc/cordon/tls/ca.pem"
    assert full.volume("kafka-tls-ca")["secret"] == {
        "secretName": "kafka-ca",
        "items": [{"key": "ca.pem", "path": "ca.pem"}],
    }
    mount = full.mount("kafka-tls-ca")
    assert mount == {"name": "kafka-tls-ca", "mountPath": "/etc/cordon/tls", "readOnly": True}


def test_tls_ca_from_a_config_map(render):
    r = render(VARIANTS["tls-from-configmap"])
    assert r.config["source"]["properties"] == {
        "security.protocol": "SSL",
        "ssl.ca.location": "/etc/cordon/tls/ca.crt",
    }
    assert r.volume("kafka-tls-ca")["configMap"] == {
        "name": "kafka-ca",
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }
    assert r.mount("kafka-tls-ca")["readOnly"] is True


@pytest.mark.parametrize(
    "values, message",
    [
        (
            {"config": {"source": {"properties": {"sasl.password": "hunter2"}}}},
            "would put a secret into a ConfigMap",
        ),
        (
            {"config": {"sink": {"properties": {"ssl.key.password": "x"}}}},
            "extraEnv with a secretKeyRef (CORDON_SINK__PROPERTIES__SSL_KEY_PASSWORD)",
        ),
        (
            {"config": {"source": {"properties": {"ssl.key.pem": "-----BEGIN"}}}},
            "(CORDON_SOURCE__PROPERTIES__SSL_KEY_PEM)",
        ),
        (
            {"kafka": {"securityProtocol": "SSL"},
             "config": {"source": {"properties": {"security.protocol": "SSL"}}}},
            "set it in one place",
        ),
        (
            {"kafka": {"securityProtocol": "SASL_SSL", "sasl": {"existingSecret": "k"}}},
            "needs kafka.sasl.mechanism",
        ),
        (
            {"kafka": {"sasl": {"mechanism": "PLAIN", "existingSecret": "k"}}},
            "needs a SASL security protocol",
        ),
        (
            {"kafka": {"securityProtocol": "SASL_PLAINTEXT", "tls": {"ca": {"secretName": "ca"}}}},
            "needs a TLS security protocol",
        ),
        (
            {"kafka": {"securityProtocol": "SSL",
                       "tls": {"ca": {"secretName": "ca", "configMapName": "ca"}}}},
            "not both",
        ),
        (
            {"rules": {"existingConfigMap": "r", "files": {"a.yaml": "id: a\n"}}},
            "not both",
        ),
    ],
)
def test_inconsistent_values_fail_with_a_message(chart, values, message):
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        chart.render(merge(MINIMAL, values), name=RELEASE, namespace=NAMESPACE)


# --- the other objects ------------------------------------------------------------------------


def test_service_monitor(full: Rendered, minimal: Rendered):
    """A CRD kind, so no Kubernetes schema: its structure is checked here."""
    assert minimal.maybe("ServiceMonitor") is None
    sm = full.one("ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["name"] == "cordon-prod"
    assert sm["metadata"]["namespace"] == "monitoring"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert set(sm["spec"]) == {"namespaceSelector", "selector", "endpoints"}
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    selector = sm["spec"]["selector"]["matchLabels"]
    # It selects the metrics Service and not the headless one (no double scraping).
    selected = [
        s["metadata"]["name"]
        for s in full.all("Service")
        if selector.items() <= s["metadata"]["labels"].items()
    ]
    assert selected == ["cordon-prod"]
    (endpoint,) = sm["spec"]["endpoints"]
    assert set(endpoint) <= {
        "port", "path", "interval", "scrapeTimeout", "relabelings", "metricRelabelings"
    }
    assert endpoint["port"] in [p["name"] for p in full.one("Service", "cordon-prod")["spec"]["ports"]]
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "15s"
    assert endpoint["scrapeTimeout"] == "5s"
    for relabel in endpoint["relabelings"] + endpoint["metricRelabelings"]:
        assert set(relabel) <= {
            "sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement", "action"
        }
    assert endpoint["metricRelabelings"][0]["action"] == "drop"


def test_pod_disruption_budget(minimal: Rendered, full: Rendered):
    pdb = minimal.one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == minimal.sts["spec"]["selector"]["matchLabels"]
    assert full.one("PodDisruptionBudget")["spec"]["maxUnavailable"] == "34%"


def test_service_account(minimal: Rendered, full: Rendered):
    assert minimal.maybe("ServiceAccount") is None
    assert "serviceAccountName" not in minimal.pod
    sa = full.one("ServiceAccount", "cordon-engine")
    assert sa["automountServiceAccountToken"] is False
    assert "iam.gke.io/gcp-service-account" in sa["metadata"]["annotations"]
    assert full.pod["serviceAccountName"] == "cordon-engine"


def test_scheduling_and_pod_metadata(full: Rendered, values_all):
    pod = full.pod
    assert pod["nodeSelector"] == values_all["nodeSelector"]
    assert pod["tolerations"] == values_all["tolerations"]
    assert pod["affinity"] == values_all["affinity"]
    assert pod["priorityClassName"] == "security-critical"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "topology.kubernetes.io/zone"
    # No labelSelector given: the chart selects its own pods.
    assert spread["labelSelector"] == {"matchLabels": full.sts["spec"]["selector"]["matchLabels"]}
    meta = full.sts["spec"]["template"]["metadata"]
    assert meta["annotations"]["team"] == "detection"
    assert meta["labels"]["tier"] == "security"
    assert full.container["image"] == (
        "registry.example.com/security/cordon:0.1.0-rc.1@sha256:"
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    )
    assert full.container["imagePullPolicy"] == "Always"
    assert full.sts["spec"]["replicas"] == 3
    assert full.sts["spec"]["podManagementPolicy"] == "OrderedReady"
    assert full.mount("client-cert")["mountPath"] == "/etc/cordon/client"
    assert full.volume("client-cert")["secret"]["secretName"] == "kafka-client-cert"


def test_grafana_dashboard_config_map(full: Rendered, minimal: Rendered):
    assert minimal.maybe("ConfigMap", "cordon-dashboard") is None
    cm = full.one("ConfigMap", "cordon-prod-dashboard")
    assert cm["metadata"]["namespace"] == "grafana"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"]["grafana_folder"] == "Security"
    shipped = (CHART / "dashboards" / "cordon.json").read_text()
    assert yaml.safe_load(cm["data"]["cordon.json"]) == yaml.safe_load(shipped)


def test_names_fit_kubernetes_limits(render):
    long = "a-release-name-that-is-quite-long-indeed-for-kubernetes"
    r = render(MINIMAL, name=long)
    assert len(r.sts["metadata"]["name"]) <= 52
    for obj in r.objects:
        assert len(obj["metadata"]["name"]) <= 63
    for obj in r.objects:
        if obj["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(obj, KUBE_VERSIONS[-1], strict=True)


def test_notes_render(minimal: Rendered):
    notes = minimal.files["cordon/templates/NOTES.txt"]
    assert "statefulset/cordon" in notes
    assert "kafka:9092" in notes
    assert "volume each" not in notes, "one replica: nothing moves"


def test_notes_name_where_checkpoints_go_with_several_replicas(render):
    three = render(merge(MINIMAL, {"replicaCount": 3})).files["cordon/templates/NOTES.txt"]
    assert "3 replicas keep checkpoints in a volume each" in three
    assert "config.state.object_store_url" in three
    shared = render(
        merge(
            MINIMAL,
            {"replicaCount": 3, "config": {"state": {"object_store_url": "s3://b/cordon"}}},
        )
    ).files["cordon/templates/NOTES.txt"]
    assert "volume each" not in shared
    assert "Checkpoints: s3://b/cordon" in shared
