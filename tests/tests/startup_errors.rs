//! Start-up failures seen through the process boundary: `cordon run` must exit non-zero, soon,
//! with a message that names what to fix.

use std::{fs, time::Duration};

use cordon_tests::{Broker, Engine, EngineConfig, S3Server, unique_topic};

/// A start-up error must end the process well within this.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

const VALID_RULE: &str = r#"id: test.volume
version: 1
title: Volume
description: many requests from one account
severity: low
tags: [test]
entity: account_id
window: 1h
every: 5m
features:
  requests: count()
condition: requests >= 1000
suppress: 6h
"#;

/// A broker with the three topics of a valid config, and the config itself.
struct Fixture {
    _broker: Broker,
    config: EngineConfig,
    _dir: tempfile::TempDir,
}

/// Creates the topics named `true` in `create` (input, alerts, dead letters) and a config that
/// names all three.
fn fixture(create: [bool; 3]) -> Fixture {
    let broker = Broker::start();
    let input = unique_topic("startup-requests");
    let alerts = unique_topic("startup-alerts");
    let dlq = unique_topic("startup-dlq");
    for ((topic, partitions), create) in [(&input, 2), (&alerts, 1), (&dlq, 1)]
        .into_iter()
        .zip(create)
    {
        if create {
            broker.create_topic(topic, partitions);
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let rules_dir = dir.path().join("rules");
    let state_dir = dir.path().join("state");
    fs::create_dir_all(&rules_dir).expect("rules dir");
    fs::create_dir_all(&state_dir).expect("state dir");
    fs::write(rules_dir.join("volume.yaml"), VALID_RULE).expect("rule file");
    let config = EngineConfig::new(&broker, &input, &alerts, &dlq, &rules_dir, &state_dir);
    Fixture {
        _broker: broker,
        config,
        _dir: dir,
    }
}

/// Runs the engine with `yaml` and asserts it exits non-zero, mentioning every one of `needles`
/// (ignoring case) on stderr or stdout.
#[track_caller]
fn assert_fails_naming(yaml: &str, needles: &[&str]) {
    assert_fails_naming_with_env(yaml, &[], needles);
}

/// [`assert_fails_naming`] with environment variables for the engine.
#[track_caller]
fn assert_fails_naming_with_env(yaml: &str, env: &[(&str, &str)], needles: &[&str]) {
    let mut engine = Engine::start_with_env(yaml, env);
    let status = engine.wait_exit(EXIT_TIMEOUT);
    let output = format!("{}\n{}", engine.stderr(), engine.stdout()).to_lowercase();
    assert!(
        !status.success(),
        "cordon run exited 0, expected a start-up failure\nconfig:\n{yaml}\n{}",
        engine.logs(40)
    );
    for needle in needles {
        assert!(
            output.contains(&needle.to_lowercase()),
            "cordon run failed ({status}) but its output does not name {needle:?}\n\
             config:\n{yaml}\n{}",
            engine.logs(40)
        );
    }
}

#[test]
fn unknown_config_key_fails_naming_the_key() {
    let fixture = fixture([true, true, true]);
    let yaml = fixture.config.to_yaml();
    // A typo in a nested key: `max_message_bytes` spelled with one `s`.
    let typo = yaml.replace("max_message_bytes:", "max_mesage_bytes:");
    assert_ne!(
        typo, yaml,
        "the config template has no max_message_bytes key"
    );
    assert_fails_naming(&typo, &["max_mesage_bytes"]);

    // An unknown top-level section.
    let mut config = fixture.config.clone();
    config.extra_yaml = "alerting:\n  topic: nope\n".to_owned();
    assert_fails_naming(&config.to_yaml(), &["alerting"]);
}

#[test]
fn unknown_environment_override_fails_naming_it() {
    let fixture = fixture([true, true, true]);
    assert_fails_naming_with_env(
        &fixture.config.to_yaml(),
        &[("CORDON_SOURCE__BROKRS", "127.0.0.1:1")],
        &["brokrs"],
    );
}

#[test]
fn missing_topics_fail_start_up_naming_the_topic() {
    // Each case leaves one of the three topics uncreated, on a broker of its own.
    let missing_alerts = fixture([true, false, true]);
    let yaml = missing_alerts.config.to_yaml();
    assert_fails_naming(&yaml, &[&missing_alerts.config.alerts_topic]);

    let missing_input = fixture([false, true, true]);
    let yaml = missing_input.config.to_yaml();
    assert_fails_naming(&yaml, &[&missing_input.config.input_topic]);

    let missing_dlq = fixture([true, true, false]);
    let yaml = missing_dlq.config.to_yaml();
    assert_fails_naming(&yaml, &[&missing_dlq.config.dlq_topic]);

    // The repartition topic, which the engine does not create either.
    let mut missing_repartition = fixture([true, true, true]);
    let topic = unique_topic("startup-repartition");
    missing_repartition.config.extra_yaml = format!("repartition:\n  topic: {topic}\n");
    assert_fails_naming(&missing_repartition.config.to_yaml(), &[&topic]);
}

#[test]
fn a_checkpoint_that_cannot_be_written_stops_the_engine_naming_the_path() {
    // Each partition's first checkpoint file cannot be created: a directory stands where its
    // temporary file goes (permissions would not stop root, as CI runs). Loading finds no
    // checkpoint; the first checkpoint (written when the partitions are taken over) fails on
    // the writer thread, and the engine must stop with the error rather than consume without
    // checkpoints.
    let f = fixture([true, true, true]);
    for p in 0..2 {
        let blocker = f
            .config
            .state_dir
            .join(&f.config.input_topic)
            .join(format!("p{p}"))
            .join("ckpt-00000000000000000001.tmp");
        fs::create_dir_all(&blocker).expect("blocker");
    }
    let yaml = f.config.to_yaml();
    assert_fails_naming(
        &yaml,
        &[
            "writing the checkpoint of partition",
            "ckpt-00000000000000000001.tmp",
        ],
    );
}

#[test]
fn a_bad_object_store_fails_start_up_naming_the_key() {
    let fixture = fixture([true, true, true]);
    let with = |state_yaml: String| {
        let mut config = fixture.config.clone();
        config.state_yaml = state_yaml;
        config.to_yaml()
    };
    // A scheme this build does not support.
    assert_fails_naming(
        &with("  object_store_url: gs://bucket/cordon\n".to_owned()),
        &["state.object_store_url", "`gs://` is not supported"],
    );
    // An option the S3 client does not know.
    assert_fails_naming(
        &with(
            "  object_store_url: s3://bucket/cordon\n  object_store_options:\n    aws_endpointt: http://127.0.0.1:1\n"
                .to_owned(),
        ),
        &["state.object_store_options.aws_endpointt"],
    );
    // Options without a store.
    assert_fails_naming(
        &with("  object_store_options:\n    aws_region: us-east-1\n".to_owned()),
        &["state.object_store_options", "needs state.object_store_url"],
    );
    // A bucket that does not exist: the listing at start-up fails, before Kafka is asked.
    let s3 = S3Server::start();
    let missing = s3
        .state_yaml("cordon")
        .replace(&s3.url(""), "s3://no-such-bucket/");
    assert_fails_naming(
        &with(missing),
        &["state.object_store_url", "no-such-bucket"],
    );
}

#[test]
fn invalid_rule_fails_start_up_naming_the_file_and_the_name() {
    let fixture = fixture([true, true, true]);
    let bad = VALID_RULE
        .replace("id: test.volume", "id: test.typo")
        .replace("condition: requests >= 1000", "condition: requets >= 1000");
    fs::write(fixture.config.rules_dir.join("typo.yaml"), bad).expect("rule file");
    assert_fails_naming(&fixture.config.to_yaml(), &["typo.yaml", "requets"]);
}

#[test]
fn sigterm_while_waiting_for_kafka_exits_zero() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rules_dir = dir.path().join("rules");
    fs::create_dir_all(&rules_dir).expect("rules dir");
    fs::write(rules_dir.join("rule.yaml"), VALID_RULE).expect("rule file");
    // Nothing listens on this port: the engine waits for Kafka (up to 30 s) when SIGTERM comes.
    let config = EngineConfig {
        brokers: format!("127.0.0.1:{}", cordon_tests::free_port()),
        input_topic: unique_topic("startup-requests"),
        group_id: cordon_tests::unique_name("startup-group"),
        source_properties: Default::default(),
        max_message_bytes: 2048,
        source_yaml: String::new(),
        alerts_topic: unique_topic("startup-alerts"),
        dlq_topic: unique_topic("startup-dlq"),
        rules_dir,
        state_dir: dir.path().join("state"),
        checkpoint_interval: "1s".to_owned(),
        http_listen: "127.0.0.1:0".to_owned(),
        state_yaml: String::new(),
        extra_yaml: String::new(),
    };
    let mut engine = Engine::start(&config.to_yaml());
    cordon_tests::wait_until(
        EXIT_TIMEOUT,
        "the engine to start waiting for Kafka",
        || {
            engine.assert_running();
            engine.stderr().contains("http server listening")
        },
    );
    let status = engine.terminate();
    assert!(
        status.success(),
        "SIGTERM during the start-up wait must exit 0, got {status}\n{}",
        engine.logs(40)
    );
}
