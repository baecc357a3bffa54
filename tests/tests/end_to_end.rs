//! End to end: a real broker, the `cordon` binary as a separate process, a deterministic
//! fixture stream with two extraction campaigns, benign traffic and one message of every
//! malformed kind; then exact assertions on the alerts topic, the dead-letter topic and the
//! consumer group's committed offsets.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
    time::Duration,
};

use chrono::{DateTime, SecondsFormat, Utc};
use cordon_tests::{
    Broker, Engine, EngineConfig, Record, S3Server, TEST_RULES, Topics, unique_name, wait_for,
};
use serde_json::{Value, json};

/// Start of the fixture's event time, on a 5-minute pane boundary.
const T0: &str = "2026-03-01T10:00:00Z";

/// Appears only inside raw `prompt` fields: it must never leave the engine.
const PROMPT_MARKER: &str = "zqxrawpromptmarker";

/// How long the engine gets to consume, alert, dead-letter and commit the whole fixture.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(90);

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(T0)
        .expect("T0 is RFC 3339")
        .with_timezone(&Utc)
}

/// Event time `secs` seconds after [`T0`] as an RFC 3339 string.
fn ts(secs: i64) -> Value {
    Value::from((t0() + chrono::Duration::seconds(secs)).to_rfc3339_opts(SecondsFormat::Secs, true))
}

/// Event time `secs` seconds after [`T0`] as integer epoch milliseconds.
fn ts_ms(secs: i64) -> Value {
    Value::from((t0() + chrono::Duration::seconds(secs)).timestamp_millis())
}

/// One message of the fixture, before it is produced.
#[derive(Clone, Debug)]
struct Message {
    key: String,
    payload: Vec<u8>,
    /// The dead-letter reason the engine must give it; `None` for a valid event.
    reason: Option<&'static str>,
    /// The message carries a raw prompt, which the dead-letter copy must redact.
    has_prompt: bool,
}

impl Message {
    fn valid(key: &str, event: &Value) -> Self {
        Self {
            key: key.to_owned(),
            payload: event.to_string().into_bytes(),
            reason: None,
            has_prompt: event.get("prompt").is_some(),
        }
    }

    fn bad(key: &str, reason: &'static str, payload: impl Into<Vec<u8>>) -> Self {
        let payload = payload.into();
        let has_prompt = String::from_utf8_lossy(&payload).contains("\"prompt\"");
        Self {
            key: key.to_owned(),
            payload,
            reason: Some(reason),
            has_prompt,
        }
    }
}

/// A message after it was produced, with where it landed.
#[derive(Clone, Debug)]
struct Produced {
    partition: i32,
    offset: i64,
    message: Message,
}

/// Produces each partition's messages in order and returns where every message landed.
fn produce_all(broker: &Broker, topic: &str, partitions: &[(i32, Vec<Message>)]) -> Vec<Produced> {
    let mut produced = Vec::new();
    for (partition, messages) in partitions {
        let records: Vec<(&str, &[u8])> = messages
            .iter()
            .map(|m| (m.key.as_str(), m.payload.as_slice()))
            .collect();
        let offsets = broker.produce(topic, *partition, &records);
        produced.extend(
            offsets
                .into_iter()
                .zip(messages)
                .map(|(offset, message)| Produced {
                    partition: *partition,
                    offset,
                    message: message.clone(),
                }),
        );
    }
    produced
}

/// A chain-of-thought harvesting campaign: `n` requests from one account inside the 5-minute
/// pane starting `start` seconds after T0, every one labelled, every prompt distinct. Half
/// carry a `prompt_fp`, half a raw `prompt` (which the engine must fingerprint and drop).
fn cot_campaign(account: &str, start: i64, n: i64) -> Vec<Message> {
    (0..n)
        .map(|i| {
            let mut event = json!({
                "ts": if i % 3 == 0 { ts_ms(start + i * 4) } else { ts(start + i * 4) },
                "account_id": account,
                "ip": "192.0.2.10",
                "request_id": format!("req-{account}-{i:03}"),
                "model": "frontier-large",
                "endpoint": "/v1/messages",
                "status": 200,
                "input_tokens": 300 + i,
                "output_tokens": 1800 + i,
                "reasoning_tokens": 1200,
                "labels": ["cot_elicitation"],
                "country": "ZZ",
            });
            if i % 2 == 0 {
                event["prompt_fp"] = Value::from(format!("pfp-{account}-{i:03}"));
            } else {
                event["prompt"] = Value::from(format!(
                    "Think step by step and show all of your reasoning {PROMPT_MARKER}: \
                     puzzle number {i} about the {} of {account}",
                    [
                        "rivers",
                        "prime gaps",
                        "tax law",
                        "enzymes",
                        "chess openings"
                    ][(i % 5) as usize]
                ));
            }
            Message::valid(account, &event)
        })
        .collect()
}

/// A hydra cluster: `accounts` accounts, each on its own address in 203.0.113.0/24, two
/// requests each, all inside the pane starting at T0.
fn hydra_cluster(accounts: i64) -> Vec<Message> {
    let mut messages = Vec::new();
    for round in 0..2 {
        for a in 0..accounts {
            let account = format!("acct-hydra-{a:02}");
            let secs = 10 + round * 90 + a * 2;
            let event = json!({
                "ts": if round == 0 { ts(secs) } else { ts_ms(secs) },
                "account_id": account,
                "ip": format!("203.0.113.{}", 10 + a),
                "request_id": format!("req-{account}-{round}"),
                "org_id": format!("org-hydra-{a:02}"),
                "api_key_id": format!("key-hydra-{a:02}"),
                "user_agent": "python-httpx/0.27",
                "client_fp": "ja4-hydra",
                "model": "frontier-large",
                "status": 200,
                "input_tokens": 120,
                "output_tokens": 900,
                "prompt_fp": format!("pfp-hydra-{a:02}-{round}"),
                "template_fp": "tfp-hydra",
                "prompt_simhash": "0123456789abcdef",
                "labels": ["coding"],
                "payment_fp": "pay-shared-1",
                "asn": 64500,
                "account_created": ts(-86_400),
                "attrs": {"tier": "free", "retries": 0, "beta": false},
            });
            messages.push(Message::valid(&account, &event));
        }
    }
    messages
}

/// Benign traffic: accounts `first..first + count`, three requests each between 10:05 and
/// 10:20, spread over five /24s and a few IPv6 /48s, far below every threshold.
fn benign(first: i64, count: i64, start: i64) -> Vec<Message> {
    let mut messages = Vec::new();
    for round in 0..3 {
        for a in first..first + count {
            let account = format!("acct-benign-{a:02}");
            let ip = if a % 7 == 0 {
                format!("2001:db8:{a:x}::{}", round + 1)
            } else {
                format!("198.51.{}.{}", 100 + a % 5, 20 + a)
            };
            let secs = start + round * 300 + (a - first) * 7;
            let mut event = json!({
                "ts": if (a + round) % 2 == 0 { ts(secs) } else { ts_ms(secs) },
                "account_id": account,
                "ip": ip,
                "request_id": format!("req-{account}-{round}"),
                "model": if a % 2 == 0 { "frontier-large" } else { "frontier-small" },
                "status": if (a + round) % 11 == 0 { 429 } else { 200 },
                "input_tokens": 50 + a,
                "output_tokens": 200 + a * 3,
                "latency_ms": 800 + a,
                "labels": if round == 0 { json!(["cot_elicitation"]) } else { json!(["coding"]) },
                "prompt_fp": format!("pfp-{account}-{round}"),
            });
            if a % 4 == 0 {
                event["prompt"] = Value::from(format!(
                    "please review my code {PROMPT_MARKER} for account {a} round {round}"
                ));
            }
            messages.push(Message::valid(&account, &event));
        }
    }
    // Produce each partition in time order (the engine dead-letters events older than the
    // partition's newest minus the allowed lateness).
    messages.sort_by_key(|m| event_millis(&m.payload));
    messages
}

fn event_millis(payload: &[u8]) -> i64 {
    let event: Value = serde_json::from_slice(payload).expect("fixture events are JSON");
    match &event["ts"] {
        Value::Number(n) => n.as_i64().expect("integer ts"),
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .expect("fixture ts is RFC 3339")
            .timestamp_millis(),
        other => panic!("fixture event without ts: {other}"),
    }
}

/// The expected content of one alert.
#[derive(Debug)]
struct ExpectedAlert {
    rule: &'static str,
    title: &'static str,
    severity: &'static str,
    entity_kind: &'static str,
    entity: String,
    /// Bounds of `event_count` and of the count-like features: the condition may first hold
    /// at the end of any micro-batch between the threshold and the whole campaign.
    count_range: (f64, f64),
    /// Evidence features that must be present, with their accepted ranges.
    features: Vec<(&'static str, f64, f64)>,
    /// Request ids the samples must come from.
    request_ids: BTreeSet<String>,
    first_seen: DateTime<Utc>,
    last_seen_max: DateTime<Utc>,
    /// The 5-minute pane that holds the whole campaign; the window ends with it.
    pane_end: DateTime<Utc>,
}

fn request_ids(messages: &[Message]) -> BTreeSet<String> {
    messages
        .iter()
        .filter_map(|m| {
            let event: Value = serde_json::from_slice(&m.payload).ok()?;
            event["request_id"].as_str().map(str::to_owned)
        })
        .collect()
}

fn time_span(messages: &[Message]) -> (DateTime<Utc>, DateTime<Utc>) {
    let millis: Vec<i64> = messages.iter().map(|m| event_millis(&m.payload)).collect();
    let at = |ms: i64| DateTime::from_timestamp_millis(ms).expect("fixture time in range");
    (
        at(*millis.iter().min().expect("non-empty")),
        at(*millis.iter().max().expect("non-empty")),
    )
}

fn expect_cot(account: &str, campaign: &[Message]) -> ExpectedAlert {
    let n = campaign.len() as f64;
    let (first, last) = time_span(campaign);
    ExpectedAlert {
        rule: "test.cot-harvest",
        title: "Reasoning-trace harvesting",
        severity: "high",
        entity_kind: "account_id",
        entity: account.to_owned(),
        count_range: (50.0, n),
        // distinct() is a sketch: allow a few percent either way.
        features: vec![
            ("requests", 50.0, n),
            ("cot", 50.0, n),
            ("prompts", 0.8 * 50.0, n * 1.05),
        ],
        request_ids: request_ids(campaign),
        first_seen: first,
        last_seen_max: last,
        pane_end: pane_end(last),
    }
}

fn expect_hydra(cluster: &[Message]) -> ExpectedAlert {
    let n = cluster.len() as f64;
    let (first, last) = time_span(cluster);
    ExpectedAlert {
        rule: "test.hydra",
        title: "Many accounts behind one /24",
        severity: "medium",
        entity_kind: "ip_prefix(ip, 24, 48)",
        entity: "203.0.113.0/24".to_owned(),
        count_range: (20.0, n),
        features: vec![("accounts", 20.0, 25.0 * 1.05), ("requests", 20.0, n)],
        request_ids: request_ids(cluster),
        first_seen: first,
        last_seen_max: last,
        pane_end: pane_end(last),
    }
}

fn pane_end(t: DateTime<Utc>) -> DateTime<Utc> {
    let pane_ms = 5 * 60 * 1000;
    let ms = t.timestamp_millis();
    DateTime::from_timestamp_millis(ms - ms.rem_euclid(pane_ms) + pane_ms).expect("in range")
}

fn parse_time(value: &Value, what: &str, problems: &mut Vec<String>) -> Option<DateTime<Utc>> {
    match value.as_str().map(DateTime::parse_from_rfc3339) {
        Some(Ok(t)) => Some(t.with_timezone(&Utc)),
        _ => {
            problems.push(format!("{what} is not an RFC 3339 string: {value}"));
            None
        }
    }
}

fn is_hex32(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Checks one alert record against its expectation; returns the problems found.
fn check_alert(record: &Record, expected: &ExpectedAlert) -> Vec<String> {
    let mut problems = Vec::new();
    let alert = record.json();
    macro_rules! check {
        ($ok:expr, $what:expr $(,)?) => {
            if !$ok {
                problems.push($what);
            }
        };
    }
    check!(
        alert["schema"] == "cordon.alert.v1",
        format!("schema is {}", alert["schema"]),
    );
    check!(
        alert["alert_id"].as_str().is_some_and(is_hex32),
        format!("alert_id is not 32 hex digits: {}", alert["alert_id"]),
    );
    check!(
        alert["status"] == "new",
        format!("status is {}", alert["status"])
    );
    check!(
        record.key_str() == expected.entity,
        format!("Kafka key is {:?}, not the entity value", record.key_str()),
    );
    let rule = &alert["rule"];
    check!(
        rule["id"] == expected.rule,
        format!("rule.id is {}", rule["id"])
    );
    check!(
        rule["version"] == 1,
        format!("rule.version is {}", rule["version"])
    );
    check!(
        rule["title"] == expected.title,
        format!("rule.title is {}", rule["title"])
    );
    check!(
        rule["severity"] == expected.severity,
        format!("rule.severity is {}", rule["severity"]),
    );
    check!(
        rule["tags"] == json!(["atlas.AML.T0024.002"]),
        format!("rule.tags is {}", rule["tags"]),
    );
    check!(
        alert["entity"]["kind"] == expected.entity_kind,
        format!("entity.kind is {}", alert["entity"]["kind"]),
    );
    check!(
        alert["entity"]["value"] == expected.entity.as_str(),
        format!("entity.value is {}", alert["entity"]["value"]),
    );

    // Features: exactly the evidence (all features when evidence is absent), plausible values.
    let features = alert["features"].as_object();
    let names: BTreeSet<&str> = features
        .map(|f| f.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let want: BTreeSet<&str> = expected.features.iter().map(|(name, _, _)| *name).collect();
    check!(
        names == want,
        format!("features are {names:?}, expected exactly {want:?}"),
    );
    for (name, low, high) in &expected.features {
        match alert["features"][name].as_f64() {
            Some(v) if (*low..=*high).contains(&v) => {}
            _ => problems.push(format!(
                "feature {name} = {} is not a number in [{low}, {high}]",
                alert["features"][name]
            )),
        }
    }
    if expected.rule == "test.cot-harvest" {
        // Every campaign request is labelled: the two counts must agree.
        if alert["features"]["cot"] != alert["features"]["requests"] {
            problems.push(format!(
                "cot ({}) != requests ({}) although every campaign event is labelled",
                alert["features"]["cot"], alert["features"]["requests"]
            ));
        }
    }
    for name in ["requests", "cot"] {
        if let Some(v) = alert["features"][name].as_f64()
            && v.fract() != 0.0
        {
            problems.push(format!("count feature {name} = {v} is not a whole number"));
        }
    }

    match alert["event_count"].as_u64() {
        Some(n) if (expected.count_range.0..=expected.count_range.1).contains(&(n as f64)) => {}
        _ => problems.push(format!(
            "event_count {} is not an integer in {:?}",
            alert["event_count"], expected.count_range
        )),
    }

    // Times.
    let first_seen = parse_time(&alert["first_seen"], "first_seen", &mut problems);
    let last_seen = parse_time(&alert["last_seen"], "last_seen", &mut problems);
    let start = parse_time(&alert["window"]["start"], "window.start", &mut problems);
    let end = parse_time(&alert["window"]["end"], "window.end", &mut problems);
    parse_time(&alert["detected_at"], "detected_at", &mut problems);
    if let Some(first_seen) = first_seen
        && first_seen != expected.first_seen
    {
        problems.push(format!(
            "first_seen {first_seen} is not the campaign's first event {}",
            expected.first_seen
        ));
    }
    if let (Some(first), Some(last)) = (first_seen, last_seen)
        && !(first <= last && last <= expected.last_seen_max)
    {
        problems.push(format!(
            "last_seen {last} is not between first_seen {first} and the campaign's last event {}",
            expected.last_seen_max
        ));
    }
    if let Some(end) = end
        && end != expected.pane_end
    {
        problems.push(format!(
            "window.end {end} is not the end of the campaign's pane {}",
            expected.pane_end
        ));
    }
    if let (Some(start), Some(end)) = (start, end)
        && end - start != chrono::Duration::hours(1)
    {
        problems.push(format!("window {start}..{end} is not 1h long"));
    }

    // Samples come from the entity's own requests.
    match alert["sample_request_ids"].as_array() {
        Some(ids) if !ids.is_empty() => {
            for id in ids {
                if !id
                    .as_str()
                    .is_some_and(|id| expected.request_ids.contains(id))
                {
                    problems.push(format!("sample request id {id} is not one of the entity's"));
                }
            }
        }
        _ => problems.push(format!(
            "sample_request_ids is not a non-empty array: {}",
            alert["sample_request_ids"]
        )),
    }
    check!(
        alert["engine"]["version"]
            .as_str()
            .is_some_and(|v| !v.is_empty()),
        format!("engine.version is {}", alert["engine"]["version"]),
    );
    check!(
        alert["engine"]["instance"].is_string(),
        format!("engine.instance is {}", alert["engine"]["instance"]),
    );
    problems
}

/// Asserts the alerts topic holds exactly `expected`, one `new` alert each, and returns the
/// alert ids by (rule, entity).
#[track_caller]
fn assert_alerts(
    records: &[Record],
    expected: &[ExpectedAlert],
) -> BTreeMap<(String, String), String> {
    let dump = || {
        records
            .iter()
            .map(|r| {
                format!(
                    "  {}/{} key={:?} {}",
                    r.partition,
                    r.offset,
                    r.key_str(),
                    String::from_utf8_lossy(r.payload.as_deref().unwrap_or_default())
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut problems = Vec::new();
    let mut ids = BTreeMap::new();
    let mut seen_ids = BTreeSet::new();
    let mut matched = vec![0usize; expected.len()];
    for record in records {
        let alert = record.json();
        let rule = alert["rule"]["id"].as_str().unwrap_or_default().to_owned();
        let entity = alert["entity"]["value"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let id = alert["alert_id"].as_str().unwrap_or_default().to_owned();
        if !seen_ids.insert(id.clone()) {
            problems.push(format!("alert_id {id} appears more than once"));
        }
        match expected
            .iter()
            .position(|e| e.rule == rule && e.entity == entity)
        {
            Some(i) => {
                matched[i] += 1;
                for problem in check_alert(record, &expected[i]) {
                    problems.push(format!("alert {rule} / {entity}: {problem}"));
                }
                ids.insert((rule, entity), id);
            }
            None => problems.push(format!(
                "unexpected alert {rule} / {entity} (status {})",
                alert["status"]
            )),
        }
    }
    for (e, count) in expected.iter().zip(&matched) {
        if *count != 1 {
            problems.push(format!(
                "expected exactly one alert {} / {}, found {count}",
                e.rule, e.entity
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "the alerts topic is not as expected:\n- {}\nalerts topic ({} records):\n{}",
        problems.join("\n- "),
        records.len(),
        dump()
    );
    ids
}

/// Asserts the dead-letter topic holds exactly the malformed messages of `produced`, each with
/// its reason and source headers, its original key, and its original bytes (prompt redacted).
#[track_caller]
fn assert_dead_letters(records: &[Record], produced: &[Produced], input_topic: &str) {
    let expected: BTreeMap<(i32, i64), &Produced> = produced
        .iter()
        .filter(|p| p.message.reason.is_some())
        .map(|p| ((p.partition, p.offset), p))
        .collect();
    let mut problems = Vec::new();
    let mut found = BTreeSet::new();
    for record in records {
        let where_ = format!("dead letter at {}/{}", record.partition, record.offset);
        let source_partition = record.header("cordon.source.partition");
        let source_offset = record.header("cordon.source.offset");
        let source = source_partition
            .as_deref()
            .and_then(|p| p.parse::<i32>().ok())
            .zip(source_offset.as_deref().and_then(|o| o.parse::<i64>().ok()));
        let Some(source) = source else {
            problems.push(format!(
                "{where_}: source headers missing or not decimal: partition {source_partition:?}, \
                 offset {source_offset:?}; headers {:?}",
                header_names(record)
            ));
            continue;
        };
        let Some(original) = expected.get(&source) else {
            problems.push(format!(
                "{where_}: unexpected, source {source:?}, reason {:?}, detail {:?}, payload {}",
                record.header("cordon.reason"),
                record.header("cordon.detail"),
                String::from_utf8_lossy(record.payload.as_deref().unwrap_or_default())
            ));
            continue;
        };
        if !found.insert(source) {
            problems.push(format!("{where_}: source {source:?} dead-lettered twice"));
        }
        let reason = original.message.reason.unwrap_or_default();
        let context = format!("{where_} (source {source:?}, expected reason {reason})");
        if record.header("cordon.reason").as_deref() != Some(reason) {
            problems.push(format!(
                "{context}: cordon.reason is {:?} (detail {:?})",
                record.header("cordon.reason"),
                record.header("cordon.detail")
            ));
        }
        if record
            .header("cordon.detail")
            .is_none_or(|d| d.trim().is_empty())
        {
            problems.push(format!("{context}: cordon.detail is missing or empty"));
        }
        if record.header("cordon.source.topic").as_deref() != Some(input_topic) {
            problems.push(format!(
                "{context}: cordon.source.topic is {:?}",
                record.header("cordon.source.topic")
            ));
        }
        if record.key.as_deref() != Some(original.message.key.as_bytes()) {
            problems.push(format!(
                "{context}: key {:?} is not the original {:?}",
                record.key_str(),
                original.message.key
            ));
        }
        let payload = record.payload.as_deref().unwrap_or_default();
        if original.message.has_prompt {
            check_redacted(payload, &original.message.payload, &context, &mut problems);
        } else if payload != original.message.payload.as_slice() {
            problems.push(format!(
                "{context}: payload is not the original bytes\n    got:      {}\n    original: {}",
                String::from_utf8_lossy(payload),
                String::from_utf8_lossy(&original.message.payload)
            ));
        }
    }
    for (source, p) in &expected {
        if !found.contains(source) {
            problems.push(format!(
                "missing dead letter for {source:?} (reason {}): {}",
                p.message.reason.unwrap_or_default(),
                String::from_utf8_lossy(&p.message.payload)
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "the dead-letter topic is not as expected:\n- {}",
        problems.join("\n- ")
    );
}

/// A dead-lettered message that had a `prompt` keeps every other field but not the text.
fn check_redacted(payload: &[u8], original: &[u8], context: &str, problems: &mut Vec<String>) {
    if String::from_utf8_lossy(payload).contains(PROMPT_MARKER) {
        problems.push(format!(
            "{context}: the raw prompt was not redacted: {}",
            String::from_utf8_lossy(payload)
        ));
        return;
    }
    let (Ok(Value::Object(mut got)), Ok(Value::Object(mut want))) = (
        serde_json::from_slice::<Value>(payload),
        serde_json::from_slice::<Value>(original),
    ) else {
        problems.push(format!(
            "{context}: redacted payload is not the original JSON object: {}",
            String::from_utf8_lossy(payload)
        ));
        return;
    };
    got.remove("prompt");
    want.remove("prompt");
    if got != want {
        problems.push(format!(
            "{context}: redacted payload changed fields other than prompt:\n    got:  {}\n    want: {}",
            Value::Object(got),
            Value::Object(want)
        ));
    }
}

fn header_names(record: &Record) -> Vec<&str> {
    record.headers.iter().map(|(k, _)| k.as_str()).collect()
}

/// Fails if the raw prompt marker appears in any file under `dir`.
#[track_caller]
fn assert_no_prompt_in_files(dir: &Path) {
    let mut stack = vec![dir.to_owned()];
    let mut leaks = Vec::new();
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            for entry in fs::read_dir(&path)
                .expect("state dir is readable")
                .flatten()
            {
                stack.push(entry.path());
            }
        } else if let Ok(bytes) = fs::read(&path)
            && bytes
                .windows(PROMPT_MARKER.len())
                .any(|w| w == PROMPT_MARKER.as_bytes())
        {
            leaks.push(path.display().to_string());
        }
    }
    assert!(leaks.is_empty(), "raw prompt text was stored in {leaks:?}");
}

/// Topics, directories and config of one test.
struct Setup {
    broker: Broker,
    input: String,
    alerts: String,
    dlq: String,
    config: EngineConfig,
    _dir: tempfile::TempDir,
}

fn setup(name: &str) -> Setup {
    let broker = Broker::start();
    let t = Topics::create(&broker, name, 2);
    fs::write(t.rules_dir.join("test.yaml"), TEST_RULES).expect("rules file");
    let config = t.config(&broker);
    Setup {
        broker,
        input: t.input,
        alerts: t.alerts,
        dlq: t.dlq,
        config,
        _dir: t.dir,
    }
}

/// Waits until the engine's group has committed the high watermark of every input partition.
#[track_caller]
fn wait_caught_up(setup: &Setup, engine: &mut Engine) {
    let probe = setup.broker.offsets(&setup.config.group_id, &setup.input);
    let what = format!(
        "group {} to commit the high watermark of every partition of {}",
        setup.config.group_id, setup.input
    );
    wait_for(CATCH_UP_TIMEOUT, &what, || {
        engine.assert_running();
        probe.caught_up()
    });
}

/// The malformed messages, one per reason, each tied to a partition, with a valid-looking
/// timestamp `secs` after T0 where it has one.
fn malformed_p0(secs: i64) -> Vec<Message> {
    let t = ts(secs);
    vec![
        Message::bad(
            "bad-invalid-json",
            "invalid_json",
            format!(r#"{{"ts":{t},"account_id":"acct-x","ip":"#),
        ),
        Message::bad(
            "bad-not-object",
            "not_object",
            format!(r#"[{{"ts":{t},"account_id":"acct-x","ip":"198.51.100.1"}}]"#),
        ),
        Message::bad(
            "bad-missing-field",
            "missing_field",
            format!(r#"{{"ts":{t},"ip":"198.51.100.1","request_id":"req-missing"}}"#),
        ),
        Message::bad(
            "bad-ip-with-prompt",
            "bad_ip",
            format!(
                r#"{{"ts":{t},"account_id":"acct-bad-ip","ip":"999.12.1.1","prompt":"explain your hidden reasoning {PROMPT_MARKER} in full","status":200}}"#
            ),
        ),
        Message::bad(
            "bad-too-large",
            "too_large",
            format!(
                r#"{{"ts":{t},"account_id":"acct-big","ip":"198.51.100.2","user_agent":"{}"}}"#,
                "x".repeat(3000)
            ),
        ),
    ]
}

fn malformed_p1(secs: i64) -> Vec<Message> {
    let t = ts(secs);
    vec![
        Message::bad(
            "bad-wrong-type",
            "wrong_type",
            format!(r#"{{"ts":{t},"account_id":12345,"ip":"198.51.100.3"}}"#),
        ),
        Message::bad(
            "bad-timestamp",
            "bad_timestamp",
            r#"{"ts":"yesterday at noon","account_id":"acct-ts","ip":"198.51.100.4"}"#,
        ),
        Message::bad(
            "bad-ip",
            "bad_ip",
            format!(r#"{{"ts":{t},"account_id":"acct-ip","ip":"300.1.2.3"}}"#),
        ),
        Message::bad(
            "bad-value",
            "bad_value",
            format!(
                r#"{{"ts":{t},"account_id":"acct-simhash","ip":"198.51.100.5","prompt_simhash":"zz-not-hex"}}"#
            ),
        ),
        Message::bad(
            "bad-future",
            "future",
            r#"{"ts":"2100-01-01T00:00:00Z","account_id":"acct-future","ip":"198.51.100.6"}"#,
        ),
    ]
}

/// A valid event older than its partition's newest minus the allowed lateness (5m).
fn late_event(secs: i64) -> Message {
    let event = json!({"ts": ts(secs), "account_id": "acct-late", "ip": "198.51.100.7"});
    Message {
        reason: Some("late"),
        ..Message::valid("bad-late", &event)
    }
}

#[test]
fn detects_campaigns_and_dead_letters_malformed_events() {
    let setup = setup("e2e");

    // Partition 0: the harvesting campaign (10:00-10:04), malformed messages, benign traffic
    // (10:05-10:20), and at the end one event an hour late.
    let cot = cot_campaign("acct-cot-7", 0, 60);
    let mut p0 = cot.clone();
    p0.extend(malformed_p0(290));
    p0.extend(benign(0, 20, 300));
    p0.push(late_event(-3600));

    // Partition 1: the hydra cluster (10:00-10:03), benign traffic with malformed messages
    // and one event from the far future in the middle.
    let hydra = hydra_cluster(25);
    let mut p1 = hydra.clone();
    let benign_p1 = benign(20, 20, 300);
    let (first_half, second_half) = benign_p1.split_at(benign_p1.len() / 2);
    p1.extend_from_slice(first_half);
    p1.extend(malformed_p1(600));
    p1.extend_from_slice(second_half);

    let produced = produce_all(&setup.broker, &setup.input, &[(0, p0), (1, p1)]);

    let mut engine = Engine::start(&setup.config.to_yaml());
    wait_caught_up(&setup, &mut engine);
    engine.stop();

    // Offsets stay at the end after shutdown.
    if let Err(state) = setup
        .broker
        .offsets(&setup.config.group_id, &setup.input)
        .caught_up()
    {
        panic!("committed offsets moved after shutdown: {state}");
    }

    let alerts = setup.broker.read_topic(&setup.alerts);
    assert_alerts(
        &alerts,
        &[expect_cot("acct-cot-7", &cot), expect_hydra(&hydra)],
    );

    let dead_letters = setup.broker.read_topic(&setup.dlq);
    assert_dead_letters(&dead_letters, &produced, &setup.input);

    // The raw prompt text never leaves the engine: not in alerts, dead letters (payloads or
    // headers), logs, or state on disk.
    for record in alerts.iter().chain(&dead_letters) {
        let mut bytes = record.payload.clone().unwrap_or_default();
        for (_, value) in &record.headers {
            bytes.extend_from_slice(value);
        }
        assert!(
            !String::from_utf8_lossy(&bytes).contains(PROMPT_MARKER),
            "raw prompt text in {}/{}",
            record.partition,
            record.offset
        );
    }
    for (name, log) in [("stderr", engine.stderr()), ("stdout", engine.stdout())] {
        assert!(
            !log.contains(PROMPT_MARKER),
            "raw prompt text in the engine's {name}"
        );
    }
    assert_no_prompt_in_files(&setup.config.state_dir);
}

/// Messages larger than the engine's producer can write (librdkafka's 1,000,000 bytes) are
/// dead-lettered cut to fit, with their whole size in `cordon.truncated`, instead of failing
/// the send and stopping the engine at every restart: one past `source.max_message_bytes`
/// (`too_large`), and, with the repartition stage, one the input stage accepts and counts but
/// cannot forward (`too_large`, said so in its detail). The events after them still alert,
/// through the repartition stage.
#[test]
fn messages_too_large_for_the_producer_are_dead_lettered_cut_and_the_engine_goes_on() {
    let mut setup = setup("oversize");
    setup.config.max_message_bytes = 2 << 20;
    setup
        .config
        .repartition_through(&setup.broker, "oversize", 1);
    let padded = |secs: i64, account: &str, pad: usize| {
        json!({"ts": ts(secs), "account_id": account, "ip": "198.51.100.9",
               "attrs": {"pad": "x".repeat(pad)}})
    };
    let unforwardable = Message::valid("acct-big", &padded(1, "acct-big", 1_500_000));
    let too_large = Message::bad(
        "acct-huge",
        "too_large",
        padded(2, "acct-huge", 2_500_000).to_string(),
    );
    let hydra = hydra_cluster(25);
    let mut p0 = vec![unforwardable.clone(), too_large.clone()];
    p0.extend(hydra.iter().cloned());
    let produced = produce_all(&setup.broker, &setup.input, &[(0, p0)]);

    let mut engine = Engine::start(&setup.config.to_yaml());
    wait_caught_up(&setup, &mut engine);
    let alerts_topic = setup.alerts.clone();
    wait_for(CATCH_UP_TIMEOUT, "the hydra cluster's alert", || {
        engine.assert_running();
        let alerts = setup.broker.read_topic(&alerts_topic);
        if alerts
            .iter()
            .any(|a| a.json()["rule"]["id"] == "test.hydra")
        {
            Ok(())
        } else {
            Err(format!("{} alerts", alerts.len()))
        }
    });
    engine.stop();

    let dead = setup.broker.read_topic(&setup.dlq);
    let by_offset: BTreeMap<String, &Record> = dead
        .iter()
        .map(|r| (r.header("cordon.source.offset").unwrap_or_default(), r))
        .collect();
    assert_eq!(dead.len(), 2, "{:?}", by_offset.keys());
    for (produced, detail) in [(&produced[0], "repartition topic"), (&produced[1], "bytes")] {
        let record = by_offset
            .get(&produced.offset.to_string())
            .unwrap_or_else(|| panic!("no dead letter for offset {}", produced.offset));
        assert_eq!(record.header("cordon.reason").as_deref(), Some("too_large"));
        let whole = produced.message.payload.len();
        assert_eq!(
            record.header("cordon.truncated"),
            Some(whole.to_string()),
            "the whole size"
        );
        let payload = record.payload.as_deref().unwrap_or_default();
        assert!(
            payload.len() < 1_000_000 && payload.len() > 900_000,
            "{}",
            payload.len()
        );
        assert!(
            produced.message.payload.starts_with(payload),
            "the message's start"
        );
        assert_eq!(record.key_str(), produced.message.key);
        let got = record.header("cordon.detail").unwrap_or_default();
        assert!(got.contains(detail), "{got}");
    }
}

#[test]
fn restart_resumes_from_committed_offsets_without_repeating_alerts() {
    let setup = setup("restart");

    // Run 1: one campaign on partition 0, benign traffic and a malformed message on 1.
    let first = cot_campaign("acct-cot-first", 0, 60);
    let mut p1 = benign(0, 10, 300);
    p1.push(Message::bad("bad-run-1", "invalid_json", "{not json"));
    let mut produced = produce_all(&setup.broker, &setup.input, &[(0, first.clone()), (1, p1)]);

    let mut engine = Engine::start(&setup.config.to_yaml());
    wait_caught_up(&setup, &mut engine);
    engine.stop();
    let run1 = assert_alerts(
        &setup.broker.read_topic(&setup.alerts),
        &[expect_cot("acct-cot-first", &first)],
    );
    assert_dead_letters(
        &setup.broker.read_topic(&setup.dlq),
        &produced,
        &setup.input,
    );

    // Run 2, same group and state dir: a second campaign half an hour later on partition 1,
    // more benign traffic on partition 0, one more malformed message.
    let second = cot_campaign("acct-cot-second", 1800, 60);
    let mut p1 = second.clone();
    p1.push(Message::bad("bad-run-2", "not_object", "42"));
    produced.extend(produce_all(
        &setup.broker,
        &setup.input,
        &[(0, benign(10, 10, 1800)), (1, p1)],
    ));
    if let Ok(state) = setup
        .broker
        .offsets(&setup.config.group_id, &setup.input)
        .caught_up()
    {
        panic!("new input should be ahead of the committed offsets: {state}");
    }

    let mut engine = Engine::start(&setup.config.to_yaml());
    wait_caught_up(&setup, &mut engine);
    engine.stop();

    let run2 = assert_alerts(
        &setup.broker.read_topic(&setup.alerts),
        &[
            expect_cot("acct-cot-first", &first),
            expect_cot("acct-cot-second", &second),
        ],
    );
    let key = ("test.cot-harvest".to_owned(), "acct-cot-first".to_owned());
    assert_eq!(
        run1.get(&key),
        run2.get(&key),
        "the first run's alert changed id across the restart"
    );
    // Each malformed message is dead-lettered once: the second run did not re-read run 1.
    assert_dead_letters(
        &setup.broker.read_topic(&setup.dlq),
        &produced,
        &setup.input,
    );
}

/// A partition that moves to another replica takes its window state with it, through the
/// checkpoints in a state directory both replicas use (as a volume several pods mount would
/// be).
#[test]
fn a_partition_moving_to_another_engine_takes_its_window_state_along() {
    let setup = setup("move");
    let yaml = setup.config.to_yaml();
    move_a_partition(&setup, [&yaml, &yaml]);
}

/// The same through object storage (an S3 stand-in), each engine with a state directory of
/// its own, as pods with a volume each and a bucket they share.
#[test]
fn a_partition_moving_to_another_engine_takes_its_window_state_along_through_s3() {
    let setup = setup("move-s3");
    let s3 = S3Server::start();
    let dirs = [(); 2].map(|()| tempfile::tempdir().expect("temp dir"));
    let yamls = [0, 1].map(|i| {
        let mut config = setup.config.clone();
        config.state_dir = dirs[i].path().to_owned();
        config.state_yaml = s3.state_yaml("cordon");
        config.to_yaml()
    });
    move_a_partition(&setup, [&yamls[0], &yamls[1]]);
    let keys = s3.keys("cordon/");
    assert!(
        keys.iter()
            .any(|k| k.starts_with(&format!("cordon/{}/p0/ckpt-", setup.input)))
            && keys
                .iter()
                .any(|k| k.starts_with(&format!("cordon/{}/p1/ckpt-", setup.input))),
        "checkpoints of both partitions in the bucket: {keys:?}"
    );
    for dir in &dirs {
        let files: Vec<_> = fs::read_dir(dir.path())
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(
            files.is_empty(),
            "nothing in the state directory: {files:?}"
        );
    }
}

/// One campaign per partition, each sent half before a second engine (`yamls[1]`) joins the
/// group of the first (`yamls[0]`) and half after: whichever partition the group moves, its
/// campaign alerts only if the new owner restored the first half, and alerts once.
fn move_a_partition(setup: &Setup, yamls: [&str; 2]) {
    let campaigns: Vec<(String, Vec<Message>)> = (0..2)
        .map(|p| {
            let account = format!("acct-move-{p}");
            let campaign = cot_campaign(&account, 0, 60);
            (account, campaign)
        })
        .collect();
    let part = |from: usize, to: usize| -> Vec<(i32, Vec<Message>)> {
        (0..)
            .zip(&campaigns)
            .map(|(p, (_, c))| (p, c[from..to].to_vec()))
            .collect()
    };
    produce_all(&setup.broker, &setup.input, &part(0, 30));
    let mut first = Engine::start(yamls[0]);
    wait_caught_up(setup, &mut first);
    assert!(
        setup.broker.read_topic(&setup.alerts).is_empty(),
        "30 events of a campaign are below the rule's 50"
    );

    // A second engine joins the group, which gives it one of the two partitions.
    let mut second = Engine::start(yamls[1]);
    let took = wait_for(
        CATCH_UP_TIMEOUT,
        "the second engine to take a partition over",
        || {
            first.assert_running();
            second.assert_running();
            second
                .stderr()
                .lines()
                .find(|l| l.contains("partitions taken over"))
                .map(str::to_owned)
                .ok_or_else(|| second.logs(20))
        },
    );
    assert!(
        took.contains("restored_keys=") && !took.contains("restored_keys=0 "),
        "the moved partition's state came from its checkpoint: {took}"
    );

    produce_all(&setup.broker, &setup.input, &part(30, 60));
    let probe = setup.broker.offsets(&setup.config.group_id, &setup.input);
    wait_for(
        CATCH_UP_TIMEOUT,
        "the two engines to commit all input",
        || {
            first.assert_running();
            second.assert_running();
            probe.caught_up()
        },
    );
    second.stop();
    first.stop();
    let expected: Vec<ExpectedAlert> = campaigns
        .iter()
        .map(|(account, campaign)| expect_cot(account, campaign))
        .collect();
    assert_alerts(&setup.broker.read_topic(&setup.alerts), &expected);
}

#[test]
fn environment_overrides_config_keys() {
    let setup = setup("env");
    let campaign = cot_campaign("acct-cot-env", 0, 60);
    produce_all(
        &setup.broker,
        &setup.input,
        &[(0, campaign.clone()), (1, benign(0, 5, 300))],
    );

    // The file names one group, the environment another: the environment wins.
    let env_group = unique_name("cordon-env-group");
    let mut engine = Engine::start_with_env(
        &setup.config.to_yaml(),
        &[("CORDON_SOURCE__GROUP_ID", &env_group)],
    );
    let probe = setup.broker.offsets(&env_group, &setup.input);
    wait_for(
        CATCH_UP_TIMEOUT,
        &format!("group {env_group} (from CORDON_SOURCE__GROUP_ID) to commit the input's end"),
        || {
            engine.assert_running();
            probe.caught_up()
        },
    );
    engine.stop();

    let file_group = setup
        .broker
        .offsets(&setup.config.group_id, &setup.input)
        .committed()
        .expect("committed offsets of the file's group");
    assert!(
        file_group.values().all(Option::is_none),
        "the group named in the file committed offsets although the environment overrode it: \
         {file_group:?}"
    );
    assert_alerts(
        &setup.broker.read_topic(&setup.alerts),
        &[expect_cot("acct-cot-env", &campaign)],
    );
}
