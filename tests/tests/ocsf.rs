//! `sink.format: ocsf` end to end: the engine, run against a real broker, writes OCSF Detection
//! Findings that a maintained OCSF package validates against the pinned schema (through
//! tests/ocsf/validate.py in the virtualenv tests/ocsf/run-venv.sh builds; tests/run.sh builds
//! it before the Rust tests).

use cordon_tests::{Broker, Engine, EngineConfig, unique_topic, wait_for};
use serde_json::json;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const T0: i64 = 1_772_359_200_000; // 2026-03-01T10:00:00Z

const RULES: &str = r#"id: test.cot-harvest
version: 2
title: Reasoning-trace harvesting
description: many chain-of-thought prompts, nearly all distinct
severity: high
tags: [atlas.AML.T0024.002, atlas.AML.T0005.001, extraction]
entity: account_id
window: 1h
every: 5m
features:
  requests: count()
  cot: count_if(array_has(labels, 'cot_elicitation'))
condition: requests >= 20 AND cot / requests >= 0.5
suppress: 6h
"#;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn ocsf_findings_validate_against_the_pinned_schema() {
    let python = repo_root().join("target/ocsf-venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run tests/ocsf/run-venv.sh (tests/run.sh does) to install the OCSF validator",
        python.display()
    );
    let broker = Broker::start();
    let (input, alerts, dlq) = (
        unique_topic("ocsf-requests"),
        unique_topic("ocsf-alerts"),
        unique_topic("ocsf-dlq"),
    );
    broker.create_topic(&input, 1);
    broker.create_topic(&alerts, 1);
    broker.create_topic(&dlq, 1);
    let dir = tempfile::tempdir().expect("temp dir");
    let (rules_dir, state_dir) = (dir.path().join("rules"), dir.path().join("state"));
    std::fs::create_dir_all(&rules_dir).expect("rules dir");
    std::fs::create_dir_all(&state_dir).expect("state dir");
    std::fs::write(rules_dir.join("r.yaml"), RULES).expect("rules");
    let config = EngineConfig::new(&broker, &input, &alerts, &dlq, &rules_dir, &state_dir);

    // 30 requests in one pane: one new alert. Then 30 more, ten minutes later: an update.
    let mut records = Vec::new();
    for (start, n) in [(0i64, 30i64), (600, 30)] {
        for i in 0..n {
            let e = json!({
                "ts": T0 + (start + i) * 1000,
                "account_id": "acct-7",
                "ip": "203.0.113.9",
                "request_id": format!("req-{start}-{i}"),
                "labels": ["cot_elicitation"],
            });
            records.push(("acct-7".to_owned(), e.to_string()));
        }
    }
    // Produced in two steps, so the first part is surely processed (and alerted) before the
    // second arrives.
    let (first, second) = records.split_at(30);
    broker.produce(&input, 0, first);
    let mut engine = Engine::start(&config.to_yaml().replace("format: native", "format: ocsf"));
    let probe = broker.offsets(&config.group_id, &input);
    wait_for(
        Duration::from_secs(90),
        "the first part to be committed",
        || {
            engine.assert_running();
            probe.caught_up()
        },
    );
    broker.produce(&input, 0, second);
    wait_for(
        Duration::from_secs(90),
        "the second part to be committed",
        || {
            engine.assert_running();
            probe.caught_up()
        },
    );
    engine.stop();

    let findings: Vec<serde_json::Value> = broker
        .read_topic(&alerts)
        .iter()
        .map(|r| r.json())
        .collect();
    let activities: Vec<u64> = findings
        .iter()
        .filter_map(|f| f["activity_id"].as_u64())
        .collect();
    assert_eq!(
        activities,
        vec![1, 2],
        "a Create then an Update: {findings:#?}"
    );
    assert_eq!(
        findings[0]["finding_info"]["uid"],
        findings[1]["finding_info"]["uid"]
    );
    assert_eq!(findings[0]["class_uid"], 2004);
    let attacks: Vec<&str> = findings[0]["finding_info"]["attacks"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x["technique"]["uid"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(attacks, vec!["AML.T0024.002", "AML.T0005.001"]);

    let file = dir.path().join("findings.jsonl");
    let lines: Vec<String> = findings.iter().map(ToString::to_string).collect();
    std::fs::write(&file, lines.join("\n") + "\n").expect("write findings");
    let out = Command::new(&python)
        .arg(repo_root().join("tests/ocsf/validate.py"))
        .arg(&file)
        .output()
        .expect("run the OCSF validator");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "OCSF validation failed:\n{text}");
    assert!(text.contains("2 passed, 0 failed"), "{text}");
}
