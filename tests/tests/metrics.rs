//! The HTTP port of a running engine: `/healthz`, `/readyz` and `/metrics` after real traffic
//! through a real broker, the scrape checked by `promtool check metrics`; and the start-up
//! behaviour of the port (answers before Kafka does, a port in use is an error naming
//! `http.listen`).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use cordon_tests::{
    Broker, Engine, EngineConfig, Setup, TEST_RULES, free_port, http_get, unique_name,
    unique_topic, wait_for,
};
use serde_json::{Value, json};

/// 2026-03-01T10:00:00Z in epoch milliseconds, on a 5-minute pane boundary.
const T0: i64 = 1_772_359_200_000;

/// How long the engine gets to consume, alert, dead-letter and commit the fixture.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(90);

/// How long a metric published on the loop's timers (state walk every 5 s, librdkafka
/// statistics every 5 s) gets to show the caught-up state.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// The fixture: what was produced, and the entity values that must never reach `/metrics`.
struct Traffic {
    /// Valid, on-time events (what `cordon_events_consumed_total` must count).
    valid: u64,
    /// Dead letters per reason.
    dead_letters: BTreeMap<&'static str, u64>,
    /// Account ids, addresses, address ranges and request ids of the fixture.
    entity_values: BTreeSet<String>,
}

fn event(secs: i64, account: &str, ip: &str, request: &str, extra: Value) -> Vec<u8> {
    let mut e = json!({
        "ts": T0 + secs * 1000,
        "account_id": account,
        "ip": ip,
        "request_id": request,
        "status": 200,
        "model": "frontier-large",
    });
    if let (Value::Object(e), Value::Object(extra)) = (&mut e, extra) {
        e.extend(extra);
    }
    e.to_string().into_bytes()
}

/// Produces, in event-time order per partition: on partition 0 a reasoning-trace harvest
/// (60 events from one account) then benign traffic with two malformed messages; on
/// partition 1 a hydra cluster (25 accounts behind one /24) then benign traffic with one
/// malformed message.
fn produce_traffic(broker: &Broker, topic: &str) -> Traffic {
    let mut entity_values = BTreeSet::new();
    let mut valid = 0;
    let mut p0: Vec<(String, Vec<u8>)> = Vec::new();
    let mut p1: Vec<(String, Vec<u8>)> = Vec::new();

    let harvester = "acct-harvester-7731";
    entity_values.extend([harvester.to_owned(), "192.0.2.10".to_owned()]);
    for i in 0..60 {
        let request = format!("req-harvest-{i:03}");
        entity_values.insert(request.clone());
        let extra = json!({"labels": ["cot_elicitation"], "prompt_fp": format!("pfp-h-{i}")});
        p0.push((
            harvester.to_owned(),
            event(i * 4, harvester, "192.0.2.10", &request, extra),
        ));
        valid += 1;
    }
    for round in 0..2 {
        for a in 0..25 {
            let account = format!("acct-hydra-{a:02}");
            let ip = format!("203.0.113.{}", 10 + a);
            let request = format!("req-hydra-{a:02}-{round}");
            let extra = json!({"labels": ["coding"], "template_fp": "tfp-hydra"});
            p1.push((
                account.clone(),
                event(10 + round * 90 + a * 2, &account, &ip, &request, extra),
            ));
            entity_values.extend([account, ip, request]);
            valid += 1;
        }
    }
    entity_values.insert("203.0.113.0/24".to_owned());
    for (partition, first) in [(0, 0), (1, 10)] {
        let out = if partition == 0 { &mut p0 } else { &mut p1 };
        for round in 0..3 {
            for a in first..first + 10 {
                let account = format!("acct-benign-{a:02}");
                let ip = format!("198.51.100.{}", 20 + a);
                let request = format!("req-benign-{a:02}-{round}");
                let extra = json!({"labels": ["coding"], "prompt_fp": format!("pfp-{a}-{round}")});
                out.push((
                    account.clone(),
                    event(300 + round * 300 + a, &account, &ip, &request, extra),
                ));
                entity_values.extend([account, ip, request]);
                valid += 1;
            }
        }
    }
    let late_ts = T0 + 900_000;
    p0.push(("bad-1".into(), b"{\"ts\":".to_vec()));
    p0.push((
        "bad-2".into(),
        format!(r#"{{"ts":{late_ts},"ip":"198.51.100.99","request_id":"req-missing-account"}}"#)
            .into_bytes(),
    ));
    p1.push((
        "bad-3".into(),
        format!(r#"{{"ts":{late_ts},"account_id":"acct-bad-ip-42","ip":"300.1.2.3"}}"#)
            .into_bytes(),
    ));
    entity_values.extend([
        "198.51.100.99".to_owned(),
        "req-missing-account".to_owned(),
        "acct-bad-ip-42".to_owned(),
        "300.1.2.3".to_owned(),
    ]);
    broker.produce(topic, 0, &p0);
    broker.produce(topic, 1, &p1);
    Traffic {
        valid,
        dead_letters: BTreeMap::from([("invalid_json", 1), ("missing_field", 1), ("bad_ip", 1)]),
        entity_values,
    }
}

/// One sample of a scrape.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format (the subset the `prometheus` crate writes).
fn parse_scrape(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("no value in {line:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|e| panic!("bad value in {line:?}: {e}"));
            let Some((name, rest)) = series.split_once('{') else {
                return Sample {
                    name: series.to_owned(),
                    labels: BTreeMap::new(),
                    value,
                };
            };
            let mut labels = BTreeMap::new();
            let mut chars = rest.chars().peekable();
            loop {
                let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                assert_eq!(chars.next(), Some('"'), "label {key} unquoted in {line:?}");
                let mut val = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => match chars.next() {
                            Some('n') => val.push('\n'),
                            Some(other) => val.push(other),
                            None => panic!("dangling escape in {line:?}"),
                        },
                        '"' => break,
                        c => val.push(c),
                    }
                }
                labels.insert(key.trim_start_matches(',').to_owned(), val);
                match chars.peek() {
                    Some(',') => {
                        chars.next();
                        if chars.peek() == Some(&'}') {
                            break;
                        }
                    }
                    _ => break,
                }
            }
            Sample {
                name: name.to_owned(),
                labels,
                value,
            }
        })
        .collect()
}

/// The samples of `name` whose labels include every pair of `labels`.
fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

/// The value of the one sample of `name` with exactly `labels`; panics if there is none.
#[track_caller]
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = find(samples, name, labels)
        .into_iter()
        .filter(|s| s.labels.len() == labels.len())
        .collect();
    match found.as_slice() {
        [one] => one.value,
        _ => panic!("expected one series {name}{labels:?}, found {found:?}"),
    }
}

fn sum(samples: &[Sample], name: &str) -> f64 {
    find(samples, name, &[]).iter().map(|s| s.value).sum()
}

/// `GET path` that must answer `status`; returns the body.
#[track_caller]
fn get_ok(addr: &str, path: &str, status: u16) -> String {
    let (got, body) = http_get(addr, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(got, status, "GET {path} answered {got}: {body}");
    body
}

/// `promtool` on `PATH`; panics with the install command when it is missing.
fn promtool() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("promtool"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "promtool is not on PATH; it checks the /metrics scrape. Install it with:\n    \
                 apt-get install -y prometheus"
            )
        })
}

/// Runs `promtool check metrics` on `text` and panics with its findings if it objects.
#[track_caller]
fn promtool_check(text: &str) {
    let bin = promtool();
    let mut child = Command::new(&bin)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    child
        .stdin
        .take()
        .expect("promtool stdin is piped")
        .write_all(text.as_bytes())
        .expect("write the scrape to promtool");
    let output = child.wait_with_output().expect("promtool runs");
    assert!(
        output.status.success(),
        "promtool check metrics failed ({}):\n{}{}\nscrape:\n{text}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

/// Entities whose events arrive in several input partitions show in
/// `cordon_state_split_checks_total` and in a warning that names their table: 400 /24s, each
/// with one account on partition 0 and another on partition 1 (the input keyed by account, as
/// a gateway does). The engine samples one new key in 64 by its hash, so which /24s are
/// checked is fixed by their text: about six of these.
#[test]
fn entities_split_across_partitions_are_counted_and_named() {
    let setup = Setup::new("split", 2);
    let (broker, input) = (&setup.broker, &setup.input);
    fs::write(setup.rules_dir.join("test.yaml"), TEST_RULES).expect("rules file");
    let mut config = setup.config();
    let addr = format!("127.0.0.1:{}", free_port());
    config.http_listen = addr.clone();
    for partition in 0..2 {
        let records: Vec<(String, Vec<u8>)> = (0..400)
            .map(|n| {
                let account = format!("acct-split-{partition}-{n}");
                let ip = format!("10.{}.{}.{}", n / 200, n % 200, 1 + partition);
                let request = format!("req-split-{partition}-{n}");
                let payload = event(n, &account, &ip, &request, json!({}));
                (account, payload)
            })
            .collect();
        broker.produce(input, partition, &records);
    }
    let mut engine = Engine::start(&config.to_yaml());
    let probe = broker.offsets(&config.group_id, input);
    wait_for(CATCH_UP_TIMEOUT, "the engine to commit all input", || {
        engine.assert_running();
        probe.caught_up()
    });

    let samples = parse_scrape(&get_ok(&addr, "/metrics", 200));
    let checks = |table: &str, result: &str| {
        find(
            &samples,
            "cordon_state_split_checks_total",
            &[("result", result)],
        )
        .iter()
        .filter(|s| s.labels["table"].starts_with(table))
        .map(|s| s.value)
        .sum::<f64>()
    };
    assert!(
        checks("ip_prefix", "split") >= 1.0,
        "the /24s are held by both partitions: {samples:?}"
    );
    assert_eq!(
        checks("account_id", "split"),
        0.0,
        "each account is in one partition"
    );
    assert!(checks("account_id", "alone") >= 1.0, "{samples:?}");
    let logs = engine.stderr();
    let warning = logs
        .lines()
        .find(|l| l.contains("entities counted apart in several input partitions"))
        .unwrap_or_else(|| panic!("no warning of split entities\n{}", engine.logs(40)));
    assert!(
        warning.contains("ip_prefix") && !warning.contains("account_id/"),
        "{warning}"
    );
    engine.stop();
}

/// The events of a frame of the repartition topic, read by the form the engine documents
/// (`engine/src/frame.rs`), apart from the engine's reader: entity, input partition, input
/// offset, payload. Panics on a frame that does not read to its end.
fn read_frame(body: &[u8]) -> Vec<(String, i32, i64, Vec<u8>)> {
    let le = |b: &[u8]| b.iter().rev().fold(0u64, |n, &x| n << 8 | u64::from(x));
    let footer = body.len().checked_sub(10).expect("a footer");
    let entities_at = le(&body[footer..footer + 4]) as usize;
    let count = le(&body[footer + 4..footer + 6]) as usize;
    let records = le(&body[footer + 6..]) as usize;
    let mut at = entities_at;
    let mut entities = Vec::new();
    for _ in 0..count {
        let len = le(&body[at..at + 4]) as usize;
        entities.push(String::from_utf8(body[at + 4..at + 4 + len].to_vec()).expect("UTF-8"));
        at += 4 + len;
    }
    assert_eq!(at, footer, "the entity list ends at the footer");
    let mut at = 0;
    let mut events = Vec::new();
    for _ in 0..records {
        let entity = entities[le(&body[at..at + 2]) as usize].clone();
        let partition = le(&body[at + 2..at + 6]) as i32;
        let offset = le(&body[at + 6..at + 14]) as i64;
        let len = le(&body[at + 14..at + 18]) as usize;
        events.push((
            entity,
            partition,
            offset,
            body[at + 18..at + 18 + len].to_vec(),
        ));
        at += 18 + len;
    }
    assert_eq!(at, entities_at, "the records end at the entity list");
    events
}

/// With `repartition.topic`, a hydra cluster whose 24 accounts are keyed onto two input
/// partitions (12 each, short of the rule's 20) meets in the repartition stage and raises one
/// alert; the repartition topic holds the events once per entity, without their prompt text;
/// `/metrics` counts them and `/readyz` reports both stages.
#[test]
fn a_range_split_across_partitions_meets_in_the_repartition_stage() {
    let setup = Setup::new("repart", 2);
    let (broker, input) = (&setup.broker, &setup.input);
    fs::write(setup.rules_dir.join("test.yaml"), TEST_RULES).expect("rules file");
    let mut config = setup.config();
    let addr = format!("127.0.0.1:{}", free_port());
    config.http_listen = addr.clone();
    let repartition = config.repartition_through(broker, "repart", 2);
    let secret = "Summarise the confidential merger plan";
    for partition in 0..2 {
        let records: Vec<(String, Vec<u8>)> = (0..12)
            .flat_map(|a| {
                let account = format!("acct-rp-{partition}-{a}");
                let ip = format!("198.18.7.{}", 2 * a + partition + 10);
                (0..2).map(move |i| {
                    let request = format!("req-rp-{partition}-{a}-{i}");
                    let prompt = json!({"prompt": format!("{secret} {a} {i}")});
                    (
                        account.clone(),
                        event(a * 10 + i, &account, &ip, &request, prompt),
                    )
                })
            })
            .collect();
        broker.produce(input, partition as i32, &records);
    }
    let mut engine = Engine::start(&config.to_yaml());
    for (group, topic) in [
        (config.group_id.clone(), input),
        (format!("{}.repartition", config.group_id), &repartition),
    ] {
        let probe = broker.offsets(&group, topic);
        wait_for(
            CATCH_UP_TIMEOUT,
            "both stages to commit their input",
            || {
                engine.assert_running();
                probe.caught_up()
            },
        );
    }

    let alerts = broker.read_topic(&setup.alerts);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let alert = alerts[0].json();
    assert_eq!(alert["rule"]["id"], "test.hydra");
    assert_eq!(alert["entity"]["value"], "198.18.7.0/24");
    assert_eq!(alert["features"]["accounts"], 24.0, "{alert}");
    assert_eq!(
        alerts[0].header("cordon.source.topic").as_deref(),
        Some(repartition.as_str()),
        "raised by the repartition stage"
    );
    // Frames of forwarded events, each read by the form the engine's `frame` module documents.
    let frames = broker.read_topic(&repartition);
    let mut events = Vec::new();
    for r in &frames {
        assert_eq!(r.header("cordon.forwards").as_deref(), Some("1"), "a frame");
        assert_eq!(r.key, None, "frames go to their partition unkeyed");
        for (entity, partition, offset, payload) in
            read_frame(r.payload.as_deref().unwrap_or_default())
        {
            assert_eq!(entity, "ip_prefix(ip, 24, 48)");
            assert!([0, 1].contains(&partition), "{partition}");
            events.push((r.partition, partition, offset, payload));
        }
    }
    assert_eq!(events.len(), 48, "each event once, for its /24");
    let destinations: BTreeSet<i32> = events.iter().map(|e| e.0).collect();
    assert_eq!(
        destinations.len(),
        1,
        "one /24, one partition: {destinations:?}"
    );
    for input in 0..2 {
        let offsets: Vec<i64> = events
            .iter()
            .filter(|e| e.1 == input)
            .map(|e| e.2)
            .collect();
        assert_eq!(
            offsets,
            (0..24).collect::<Vec<_>>(),
            "input partition {input}, in order"
        );
    }
    for (.., payload) in &events {
        let text = String::from_utf8_lossy(payload);
        assert!(
            !text.contains(secret) && !text.contains("\"prompt\""),
            "{text}"
        );
        assert!(text.contains("prompt_fp"), "{text}");
    }

    let samples = parse_scrape(&get_ok(&addr, "/metrics", 200));
    let counted = |result: &str| {
        value(
            &samples,
            "cordon_repartition_messages_total",
            &[("result", result)],
        )
    };
    assert_eq!(counted("forwarded"), 48.0);
    assert_eq!(counted("counted"), 48.0);
    assert_eq!(counted("replayed"), 0.0);
    assert_eq!(
        value(&samples, "cordon_events_consumed_total", &[]),
        48.0,
        "each event consumed once"
    );
    // Each stage times its own batches.
    for stage in ["input", "repartition"] {
        let batches = value(
            &samples,
            "cordon_batch_duration_seconds_count",
            &[("stage", stage)],
        );
        assert!(batches >= 1.0, "{stage}: {batches} batches");
    }
    wait_for(
        PUBLISH_TIMEOUT,
        "both stages' tables in cordon_state_keys",
        || {
            let samples = parse_scrape(&get_ok(&addr, "/metrics", 200));
            let keys = |table: &str| {
                find(&samples, "cordon_state_keys", &[])
                    .iter()
                    .filter(|s| s.labels["table"].starts_with(table))
                    .map(|s| s.value)
                    .sum::<f64>()
            };
            let (accounts, ranges) = (keys("account_id"), keys("ip_prefix"));
            if accounts == 24.0 && ranges == 1.0 {
                Ok(())
            } else {
                Err(format!("{accounts} accounts, {ranges} ranges"))
            }
        },
    );
    let ready: Value =
        serde_json::from_str(&get_ok(&addr, "/readyz", 200)).expect("readyz is JSON");
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["repartition"]["ready"], true, "{ready}");
    assert_eq!(
        ready["repartition"]["assigned_partitions"],
        json!([0, 1]),
        "{ready}"
    );
    engine.stop();
}

/// A `repartition.input_entity` that no rule groups by (a typo, or the wrong entity) would send
/// every rule to the repartition stage and every event through it once per entity: the
/// engine warns at start-up, naming the key.
#[test]
fn an_input_entity_no_rule_groups_by_is_warned_about() {
    let setup = Setup::new("repart-typo", 1);
    fs::write(setup.rules_dir.join("test.yaml"), TEST_RULES).expect("rules file");
    let mut config = setup.config();
    config.repartition_through(&setup.broker, "repart-typo", 1);
    // Under the `repartition:` section the helper wrote last.
    config.extra_yaml.push_str("  input_entity: acount_id\n");
    let mut engine = Engine::start(&config.to_yaml());
    wait_for(CATCH_UP_TIMEOUT, "the warning", || {
        engine.assert_running();
        let logs = engine.stderr();
        match logs
            .lines()
            .find(|l| l.contains("repartition.input_entity"))
        {
            Some(line) if line.contains("acount_id") && line.contains("WARN") => Ok(()),
            _ => Err(engine.logs(20)),
        }
    });
    engine.stop();
}

#[test]
fn metrics_and_health_after_traffic() {
    let setup = Setup::new("metrics", 2);
    let (broker, input) = (&setup.broker, &setup.input);
    fs::write(setup.rules_dir.join("test.yaml"), TEST_RULES).expect("rules file");
    let mut config = setup.config();
    let addr = format!("127.0.0.1:{}", free_port());
    config.http_listen = addr.clone();

    let traffic = produce_traffic(broker, input);
    let mut engine = Engine::start(&config.to_yaml());

    let probe = broker.offsets(&config.group_id, input);
    wait_for(
        CATCH_UP_TIMEOUT,
        &format!("group {} to commit the end of {input}", config.group_id),
        || {
            engine.assert_running();
            probe.caught_up()
        },
    );

    assert_eq!(get_ok(&addr, "/healthz", 200), "ok");

    // The assignment is published once per batch and every second: wait for it.
    let readiness: Value = wait_for(
        PUBLISH_TIMEOUT,
        "/readyz to list both input partitions",
        || {
            let body = get_ok(&addr, "/readyz", 200);
            let readiness: Value = serde_json::from_str(&body)
                .map_err(|e| format!("/readyz is not JSON ({e}): {body}"))?;
            if readiness["assigned_partitions"] == json!([0, 1])
                && readiness["last_checkpoint_age_seconds"].is_f64()
            {
                Ok(readiness)
            } else {
                Err(body)
            }
        },
    );
    assert_eq!(readiness["ready"], true, "{readiness}");
    assert_eq!(readiness["consuming"], true, "{readiness}");
    assert_eq!(readiness["rules_loaded"], 2, "{readiness}");
    assert!(
        readiness["last_batch_age_seconds"]
            .as_f64()
            .is_some_and(|age| age >= 0.0),
        "{readiness}"
    );
    assert!(
        readiness["last_checkpoint_age_seconds"]
            .as_f64()
            .is_some_and(|age| age >= 0.0),
        "{readiness}"
    );
    assert_eq!(readiness["rules_error"], Value::Null);

    // State and lag are published on timers: wait until the scrape shows them caught up.
    let text = wait_for(
        PUBLISH_TIMEOUT,
        "/metrics to show state keys and zero lag on both partitions",
        || {
            engine.assert_running();
            let (status, text) = http_get(&addr, "/metrics")?;
            if status != 200 {
                return Err(format!("status {status}: {text}"));
            }
            let samples = parse_scrape(&text);
            let lag: Vec<(String, f64)> = find(
                &samples,
                "cordon_consumer_lag_messages",
                &[("topic", input)],
            )
            .iter()
            .map(|s| (s.labels["partition"].clone(), s.value))
            .collect();
            let keys = sum(&samples, "cordon_state_keys");
            if keys > 0.0 && lag == [("0".to_owned(), 0.0), ("1".to_owned(), 0.0)] {
                Ok(text)
            } else {
                Err(format!("state keys {keys}, lag {lag:?}"))
            }
        },
    );
    let samples = parse_scrape(&text);

    assert_eq!(
        value(&samples, "cordon_events_consumed_total", &[]),
        traffic.valid as f64
    );
    for reason in [
        "invalid_json",
        "not_object",
        "missing_field",
        "wrong_type",
        "bad_timestamp",
        "bad_ip",
        "bad_value",
        "too_large",
        "late",
        "future",
    ] {
        let expected = traffic.dead_letters.get(reason).copied().unwrap_or(0) as f64;
        let labels = [("reason", reason)];
        assert_eq!(
            value(&samples, "cordon_dead_letters_total", &labels),
            expected,
            "dead letters {reason}"
        );
        let decode = find(&samples, "cordon_decode_failures_total", &labels);
        if matches!(reason, "late" | "future") {
            assert!(
                decode.is_empty(),
                "{reason} is no decode failure: {decode:?}"
            );
        } else {
            assert_eq!(
                value(&samples, "cordon_decode_failures_total", &labels),
                expected,
                "decode failures {reason}"
            );
        }
    }
    assert_eq!(value(&samples, "cordon_late_events_total", &[]), 0.0);
    for (rule, severity) in [("test.cot-harvest", "high"), ("test.hydra", "medium")] {
        let new = [("rule", rule), ("severity", severity), ("status", "new")];
        assert_eq!(value(&samples, "cordon_alerts_total", &new), 1.0, "{rule}");
        let update = [("rule", rule), ("severity", severity), ("status", "update")];
        assert_eq!(
            value(&samples, "cordon_alerts_total", &update),
            0.0,
            "{rule}"
        );
        value(
            &samples,
            "cordon_suppressed_matches_total",
            &[("rule", rule)],
        );
    }
    assert_eq!(sum(&samples, "cordon_alerts_total"), 2.0);
    let tables: BTreeSet<&str> = find(&samples, "cordon_state_keys", &[])
        .iter()
        .map(|s| s.labels["table"].as_str())
        .collect();
    assert_eq!(tables.len(), 2, "one series per state table: {tables:?}");
    assert!(value(&samples, "cordon_state_bytes", &[]) > 0.0);
    assert_eq!(sum(&samples, "cordon_state_evictions_total"), 0.0);
    // The split check's series exist for every table, both results, from the start.
    for table in &tables {
        for result in ["split", "alone"] {
            let labels = [("result", result), ("table", *table)];
            value(&samples, "cordon_state_split_checks_total", &labels);
        }
    }
    // Batches by stage: this engine runs the input stage alone.
    let input = [("stage", "input")];
    assert!(value(&samples, "cordon_batch_duration_seconds_count", &input) > 0.0);
    assert!(value(&samples, "cordon_batch_duration_seconds_sum", &input) > 0.0);
    let repartition = [("stage", "repartition")];
    assert_eq!(
        value(
            &samples,
            "cordon_batch_duration_seconds_count",
            &repartition
        ),
        0.0
    );
    // The committed offsets caught up, which happens only at a checkpoint.
    assert!(value(&samples, "cordon_checkpoint_duration_seconds_count", &[]) > 0.0);
    assert!(value(&samples, "cordon_checkpoint_age_seconds", &[]) >= 0.0);
    assert_eq!(value(&samples, "cordon_rules_loaded", &[]), 2.0);
    for result in ["success", "failure"] {
        assert_eq!(
            value(&samples, "cordon_rule_reloads_total", &[("result", result)]),
            0.0
        );
    }
    assert_eq!(value(&samples, "cordon_sink_errors_total", &[]), 0.0);

    // Labels come from bounded sets only: no entity value anywhere in the scrape.
    for entity in &traffic.entity_values {
        assert!(
            !text.contains(entity.as_str()),
            "entity value {entity:?} appears in /metrics:\n{text}"
        );
    }
    let label_names: BTreeSet<&str> = samples
        .iter()
        .flat_map(|s| s.labels.keys().map(String::as_str))
        .collect();
    assert_eq!(
        label_names,
        BTreeSet::from([
            "le",
            "partition",
            "reason",
            "result",
            "rule",
            "severity",
            "stage",
            "status",
            "table",
            "topic"
        ])
    );

    promtool_check(&text);

    engine.stop();
    assert!(
        http_get(&addr, "/healthz").is_err(),
        "the HTTP port still answers after the engine exited"
    );
}

/// A config whose brokers are a closed port on 127.0.0.1: nothing answers there.
fn config_without_kafka(dir: &tempfile::TempDir, http_listen: &str) -> EngineConfig {
    let rules_dir = dir.path().join("rules");
    let state_dir = dir.path().join("state");
    fs::create_dir_all(&rules_dir).expect("rules dir");
    fs::create_dir_all(&state_dir).expect("state dir");
    fs::write(rules_dir.join("test.yaml"), TEST_RULES).expect("rules file");
    EngineConfig {
        brokers: format!("127.0.0.1:{}", free_port()),
        input_topic: unique_topic("metrics-requests"),
        group_id: unique_name("metrics-group"),
        source_properties: Default::default(),
        max_message_bytes: 2048,
        source_yaml: String::new(),
        alerts_topic: unique_topic("metrics-alerts"),
        dlq_topic: unique_topic("metrics-dlq"),
        rules_dir,
        state_dir,
        checkpoint_interval: "1s".to_owned(),
        http_listen: http_listen.to_owned(),
        state_yaml: String::new(),
        extra_yaml: String::new(),
    }
}

#[test]
fn health_answers_before_kafka_is_reachable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let addr = format!("127.0.0.1:{}", free_port());
    let config = config_without_kafka(&dir, &addr);
    let mut engine = Engine::start(&config.to_yaml());

    // The engine waits up to 30 s for the brokers before it gives up; ask well within that.
    let body = wait_for(
        Duration::from_secs(20),
        "/healthz to answer while Kafka is unreachable",
        || {
            engine.assert_running();
            match http_get(&addr, "/healthz")? {
                (200, body) => Ok(body),
                (status, body) => Err(format!("status {status}: {body}")),
            }
        },
    );
    assert_eq!(body, "ok");
    let (status, body) = http_get(&addr, "/readyz").expect("GET /readyz");
    engine.assert_running();
    assert_eq!(status, 503, "ready without Kafka: {body}");
    let readiness: Value = serde_json::from_str(&body).expect("/readyz answers JSON");
    assert_eq!(readiness["ready"], false, "{readiness}");
    assert_eq!(readiness["consuming"], false, "{readiness}");
    assert_eq!(readiness["rules_loaded"], 2, "{readiness}");
    let (status, scrape) = http_get(&addr, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200);
    assert_eq!(
        value(&parse_scrape(&scrape), "cordon_events_consumed_total", &[]),
        0.0
    );
}

#[test]
fn http_listen_port_in_use_fails_start_up_naming_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let addr = taken.local_addr().expect("bound address").to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_without_kafka(&dir, &addr);
    let mut engine = Engine::start(&config.to_yaml());
    // The port is bound before Kafka is asked anything, so this is well inside the 30 s the
    // engine would wait for the (absent) brokers.
    let status = engine.wait_exit(Duration::from_secs(20));
    assert!(!status.success(), "cordon started on a port in use");
    let stderr = engine.stderr();
    assert!(
        stderr.contains("http.listen") && stderr.contains(&addr),
        "the start-up error does not name http.listen and {addr}:\n{}",
        engine.logs(20)
    );
    drop(taken);
}
