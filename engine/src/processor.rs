//! The pure core: message bytes in, alerts and dead letters out. No I/O.
//!
//! A micro-batch of messages is split by input partition; each partition has its own watermark
//! and its own window and gate state per rule, so a partition's state can move with the
//! partition. For each partition sub-batch the processor decodes the messages into one Arrow
//! batch, evaluates each rule's filter, entity and feature arguments over the whole batch with
//! DataFusion, updates the touched keys row by row, and then evaluates each rule's condition
//! once over all touched keys.

use crate::decode::{EventBatchBuilder, Reason, TimeCheck, dead_letter_payload};
use crate::gate::{
    ALERT_SCHEMA, Alert, AlertEngine, AlertEntity, AlertRule, AlertWindow, Decision, Gate, rfc3339,
};
use crate::window::{FeatureInput, KeyState, Update, WindowSnapshot, WindowSpec};
use cordon_rules::{AggKind, CompiledRule, RuleSet};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, RecordBatch, StringArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::DataFusionError;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use xxhash_rust::xxh3::xxh3_64;

/// One input message, borrowed from the source.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Input partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Message key.
    pub key: Option<&'a [u8]>,
    /// Message value.
    pub payload: &'a [u8],
}

/// An alert ready for the sink.
#[derive(Debug, Clone)]
pub struct AlertRecord {
    /// Kafka key: the entity value.
    pub key: String,
    /// The alert.
    pub alert: Alert,
}

/// A refused message ready for the dead-letter topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Source key.
    pub key: Option<Vec<u8>>,
    /// Original bytes (prompt redacted).
    pub payload: Vec<u8>,
    /// Whether a prompt was redacted.
    pub redacted: bool,
    /// Why.
    pub reason: Reason,
    /// Details.
    pub detail: String,
}

/// Counters of one batch, for metrics and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Messages seen.
    pub messages: u64,
    /// Events decoded.
    pub events: u64,
    /// Refused messages per reason.
    pub rejected: BTreeMap<Reason, u64>,
    /// Matches the gate suppressed.
    pub suppressed: u64,
    /// Events older than their key's window (counted nowhere else).
    pub too_old: u64,
}

/// What one batch produced.
#[derive(Debug, Default)]
pub struct Output {
    /// Alerts, in the order they were raised.
    pub alerts: Vec<AlertRecord>,
    /// Dead letters, in input order per partition.
    pub dead_letters: Vec<DeadLetter>,
    /// Counters.
    pub stats: BatchStats,
}

/// Settings of the core that come from config.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// `source.max_message_bytes`.
    pub max_message_bytes: usize,
    /// `time.allowed_lateness` in ms.
    pub allowed_lateness_ms: i64,
    /// `time.max_future_skew` in ms.
    pub max_future_skew_ms: i64,
    /// Instance name for alerts.
    pub instance: String,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 1 << 20,
            allowed_lateness_ms: 300_000,
            max_future_skew_ms: 60_000,
            instance: "cordon".into(),
        }
    }
}

/// A bug or resource problem while evaluating (bad input never gets here: it is dead-lettered).
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// DataFusion failed to evaluate a compiled expression.
    #[error("rule {rule}: evaluating {what} failed: {source}")]
    Eval {
        /// Rule id.
        rule: String,
        /// Which expression.
        what: &'static str,
        /// The error.
        #[source]
        source: Box<DataFusionError>,
    },
}

/// A running rule: the compiled rule plus what the hot path needs precomputed.
#[derive(Debug)]
struct RunRule {
    compiled: Arc<CompiledRule>,
    spec: WindowSpec,
    aggs: Vec<AggKind>,
    suppress_ms: i64,
}

#[derive(Debug, Default)]
struct RuleState {
    keys: HashMap<String, KeyState>,
    gate: Gate,
}

#[derive(Debug)]
struct PartitionState {
    watermark: i64,
    rules: Vec<RuleState>,
}

/// The detection core.
#[derive(Debug)]
pub struct Processor {
    rules: Vec<RunRule>,
    partitions: HashMap<i32, PartitionState>,
    config: CoreConfig,
    builder: EventBatchBuilder,
}

/// One key's window waiting for its rule's condition.
struct Candidate {
    entity: String,
    snap: WindowSnapshot,
}

impl Processor {
    /// A processor running `rules`.
    pub fn new(rules: &RuleSet, config: CoreConfig) -> Self {
        let rules = rules
            .rules
            .iter()
            .map(|c| RunRule {
                spec: WindowSpec {
                    pane_ms: c.rule.every.as_millis() as i64,
                    panes: c.rule.panes() as i64,
                },
                aggs: c.features.iter().map(|f| f.agg).collect(),
                suppress_ms: c.rule.suppress.as_millis() as i64,
                compiled: c.clone(),
            })
            .collect();
        Self {
            rules,
            partitions: HashMap::new(),
            builder: EventBatchBuilder::new(config.max_message_bytes),
            config,
        }
    }

    /// Forgets a partition's state (it was revoked from this instance).
    pub fn drop_partition(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// Live keys across all rules and partitions.
    pub fn live_keys(&self) -> usize {
        self.partitions
            .values()
            .flat_map(|p| p.rules.iter())
            .map(|r| r.keys.len())
            .sum()
    }

    /// Drops keys whose windows have fully expired and gate entries past suppression.
    pub fn expire_idle(&mut self) {
        for p in self.partitions.values_mut() {
            for (rule, state) in self.rules.iter().zip(p.rules.iter_mut()) {
                state
                    .keys
                    .retain(|_, k| !k.expired(&rule.spec, p.watermark));
                state.gate.expire(p.watermark);
            }
        }
    }

    /// Processes one micro-batch. `now_ms` is the wall clock (for future-skew and `detected_at`).
    pub fn process(
        &mut self,
        inputs: &[Input<'_>],
        now_ms: i64,
        out: &mut Output,
    ) -> Result<(), ProcessError> {
        let mut by_partition: BTreeMap<i32, Vec<&Input<'_>>> = BTreeMap::new();
        for input in inputs {
            by_partition.entry(input.partition).or_default().push(input);
        }
        for (partition, inputs) in by_partition {
            self.process_partition(partition, &inputs, now_ms, out)?;
        }
        Ok(())
    }

    fn process_partition(
        &mut self,
        partition: i32,
        inputs: &[&Input<'_>],
        now_ms: i64,
        out: &mut Output,
    ) -> Result<(), ProcessError> {
        let rule_count = self.rules.len();
        let state = self
            .partitions
            .entry(partition)
            .or_insert_with(|| PartitionState {
                watermark: i64::MIN,
                rules: (0..rule_count).map(|_| RuleState::default()).collect(),
            });
        let mut time = TimeCheck {
            watermark: state.watermark,
            allowed_lateness_ms: self.config.allowed_lateness_ms,
            max_ts: now_ms.saturating_add(self.config.max_future_skew_ms),
        };
        out.stats.messages += inputs.len() as u64;
        for input in inputs {
            if let Err(r) = self.builder.push(input.payload, &mut time) {
                *out.stats.rejected.entry(r.reason).or_default() += 1;
                let (payload, redacted) = dead_letter_payload(input.payload);
                out.dead_letters.push(DeadLetter {
                    partition,
                    offset: input.offset,
                    key: input.key.map(<[u8]>::to_vec),
                    payload: payload.into_owned(),
                    redacted,
                    reason: r.reason,
                    detail: r.detail,
                });
            }
        }
        state.watermark = time.watermark;
        if self.builder.is_empty() {
            return Ok(());
        }
        let (batch, times) = self.builder.finish();
        out.stats.events += times.len() as u64;
        for (rule, rstate) in self.rules.iter().zip(state.rules.iter_mut()) {
            run_rule(
                rule,
                rstate,
                &batch,
                &times,
                now_ms,
                &self.config.instance,
                out,
            )?;
        }
        Ok(())
    }
}

fn eval(
    rule: &RunRule,
    expr: &Arc<dyn datafusion::physical_expr::PhysicalExpr>,
    batch: &RecordBatch,
    what: &'static str,
) -> Result<ArrayRef, ProcessError> {
    let err = |e: DataFusionError| ProcessError::Eval {
        rule: rule.compiled.rule.id.clone(),
        what,
        source: Box::new(e),
    };
    expr.evaluate(batch)
        .and_then(|v| v.into_array(batch.num_rows()))
        .map_err(err)
}

fn cast_to(
    rule: &RunRule,
    a: &ArrayRef,
    dt: &DataType,
    what: &'static str,
) -> Result<ArrayRef, ProcessError> {
    cast(a, dt).map_err(|e| ProcessError::Eval {
        rule: rule.compiled.rule.id.clone(),
        what,
        source: Box::new(DataFusionError::ArrowError(Box::new(e), None)),
    })
}

/// Per-row inputs of one feature, evaluated over the batch.
enum Column {
    One,
    Flags(BooleanArray),
    Numbers(Float64Array),
    Hashes(StringArray),
}

#[allow(clippy::too_many_arguments)]
fn run_rule(
    rule: &RunRule,
    state: &mut RuleState,
    batch: &RecordBatch,
    times: &[i64],
    now_ms: i64,
    instance: &str,
    out: &mut Output,
) -> Result<(), ProcessError> {
    let c = &rule.compiled;
    let mask = match &c.filter {
        Some(f) => Some(eval(rule, f, batch, "where")?.as_boolean().clone()),
        None => None,
    };
    let entity = eval(rule, &c.entity, batch, "entity")?;
    let entity = cast_to(rule, &entity, &DataType::Utf8, "entity")?;
    let entity = entity.as_string::<i32>();
    let mut columns = Vec::with_capacity(c.features.len());
    for f in &c.features {
        let col = match (&f.arg, f.agg) {
            (None, _) => Column::One,
            (Some(e), AggKind::CountIf) => {
                Column::Flags(eval(rule, e, batch, "count_if")?.as_boolean().clone())
            }
            (Some(e), AggKind::Sum | AggKind::Avg) => {
                let a = cast_to(
                    rule,
                    &eval(rule, e, batch, "sum")?,
                    &DataType::Float64,
                    "sum",
                )?;
                Column::Numbers(a.as_primitive().clone())
            }
            (Some(e), _) => {
                let a = cast_to(
                    rule,
                    &eval(rule, e, batch, "distinct")?,
                    &DataType::Utf8,
                    "distinct",
                )?;
                Column::Hashes(a.as_string::<i32>().clone())
            }
        };
        columns.push(col);
    }
    let request_ids = batch
        .column_by_name("request_id")
        .map(|a| a.as_string::<i32>());

    let mut candidates: Vec<Candidate> = Vec::new();
    let mut touched: Vec<String> = Vec::new();
    let mut inputs = vec![FeatureInput::One; columns.len()];
    for (row, ts) in times.iter().enumerate() {
        if mask
            .as_ref()
            .is_some_and(|m| !(m.is_valid(row) && m.value(row)))
            || entity.is_null(row)
        {
            continue;
        }
        for (slot, col) in inputs.iter_mut().zip(&columns) {
            *slot = match col {
                Column::One => FeatureInput::One,
                Column::Flags(a) => FeatureInput::Flag(a.is_valid(row) && a.value(row)),
                Column::Numbers(a) => FeatureInput::Number(a.is_valid(row).then(|| a.value(row))),
                Column::Hashes(a) => {
                    FeatureInput::Hash(a.is_valid(row).then(|| xxh3_64(a.value(row).as_bytes())))
                }
            };
        }
        let key = entity.value(row);
        let request_id = request_ids.and_then(|r| r.is_valid(row).then(|| r.value(row)));
        let ks = match state.keys.get_mut(key) {
            Some(k) => k,
            None => state
                .keys
                .entry(key.to_owned())
                .or_insert_with(|| KeyState::new(&rule.aggs)),
        };
        let was_dirty = ks.is_dirty();
        match ks.update(&rule.spec, &rule.aggs, *ts, &inputs, request_id) {
            Update::Applied => {}
            Update::AppliedAfterClose(snap) => {
                candidates.push(Candidate {
                    entity: key.to_owned(),
                    snap: *snap,
                });
            }
            Update::TooOld => {
                out.stats.too_old += 1;
                continue;
            }
        }
        // Every key is clean at the start of a batch, so a key enters `touched` exactly once:
        // when it first turns dirty.
        if !was_dirty {
            touched.push(key.to_owned());
        }
    }
    for key in touched {
        if let Some(ks) = state.keys.get_mut(&key)
            && ks.is_dirty()
        {
            let snap = ks.take_snapshot(&rule.spec, &rule.aggs);
            candidates.push(Candidate { entity: key, snap });
        }
    }
    if candidates.is_empty() {
        return Ok(());
    }
    let matched = evaluate_condition(rule, &candidates)?;
    for (cand, hit) in candidates.into_iter().zip(matched) {
        if !hit {
            continue;
        }
        let r = &c.rule;
        match state.gate.decide(
            &r.id,
            r.version,
            &r.entity.text,
            &cand.entity,
            cand.snap.start,
            cand.snap.end,
            rule.suppress_ms,
        ) {
            Decision::Suppressed => out.stats.suppressed += 1,
            Decision::Emit { alert_id, status } => {
                let features = c
                    .evidence
                    .iter()
                    .map(|i| {
                        let v =
                            cand.snap.features[*i].map_or(serde_json::Value::Null, feature_json);
                        (c.features[*i].name.clone(), v)
                    })
                    .collect();
                let alert = Alert {
                    schema: ALERT_SCHEMA,
                    alert_id,
                    status,
                    rule: AlertRule {
                        id: r.id.clone(),
                        version: r.version,
                        title: r.title.clone(),
                        severity: r.severity.as_str(),
                        tags: r.tags.clone(),
                    },
                    entity: AlertEntity {
                        kind: r.entity.text.clone(),
                        value: cand.entity.clone(),
                    },
                    window: AlertWindow {
                        start: rfc3339(cand.snap.start),
                        end: rfc3339(cand.snap.end),
                    },
                    features,
                    first_seen: rfc3339(cand.snap.first_seen),
                    last_seen: rfc3339(cand.snap.last_seen),
                    event_count: cand.snap.events,
                    sample_request_ids: cand.snap.samples,
                    detected_at: rfc3339(now_ms),
                    engine: AlertEngine {
                        version: env!("CARGO_PKG_VERSION"),
                        instance: instance.to_owned(),
                    },
                };
                out.alerts.push(AlertRecord {
                    key: cand.entity,
                    alert,
                });
            }
        }
    }
    Ok(())
}

/// A feature value as JSON: whole numbers as integers, others as floats, non-finite as null.
fn feature_json(v: f64) -> serde_json::Value {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        serde_json::Value::from(v as i64)
    } else {
        serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, serde_json::Value::Number)
    }
}

/// Evaluates the rule's condition over all candidates at once.
fn evaluate_condition(rule: &RunRule, candidates: &[Candidate]) -> Result<Vec<bool>, ProcessError> {
    let c = &rule.compiled;
    let columns: Vec<ArrayRef> = (0..c.features.len())
        .map(|i| {
            Arc::new(Float64Array::from_iter(
                candidates
                    .iter()
                    .map(|cand| cand.snap.features[i].filter(|v| v.is_finite())),
            )) as ArrayRef
        })
        .collect();
    let err = |e: DataFusionError| ProcessError::Eval {
        rule: c.rule.id.clone(),
        what: "condition",
        source: Box::new(e),
    };
    let batch = RecordBatch::try_new(c.feature_schema.clone(), columns)
        .map_err(|e| err(DataFusionError::ArrowError(Box::new(e), None)))?;
    let result = eval(rule, &c.condition, &batch, "condition")?;
    let result = result.as_boolean();
    Ok((0..result.len())
        .map(|i| result.is_valid(i) && result.value(i))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_772_359_200_000; // 2026-03-01T10:00:00Z
    const NOW: i64 = T0 + 3_600_000;

    const RULES: &str = r#"
id: t.cot
version: 2
title: cot
severity: high
tags: [atlas.AML.T0024.002]
entity: account_id
where: coalesce(status, 200) < 400
window: 1h
every: 5m
features:
  requests: count()
  cot: count_if(array_has(labels, 'cot_elicitation'))
  prompts: distinct(prompt_fp)
  out: sum(output_tokens)
condition: requests >= 20 AND cot / requests >= 0.5 AND prompts / requests >= 0.8
suppress: 6h
evidence: [requests, cot, prompts]
---
id: t.hydra
version: 1
title: hydra
severity: medium
entity: ip_prefix(ip, 24, 48)
window: 1h
every: 5m
features:
  accounts: distinct(account_id)
  requests: count()
  templated: count_if(template_fp IS NOT NULL)
  templates: distinct(template_fp)
condition: accounts >= 10 AND requests >= 20 AND templated / requests >= 0.9 AND templates <= 5
suppress: 6h
"#;

    fn processor() -> Processor {
        let rules =
            cordon_rules::load_sources(&[("t.yaml".into(), RULES.into())]).expect("rules load");
        Processor::new(&rules, CoreConfig::default())
    }

    fn ev(ts: i64, account: &str, ip: &str, extra: &str) -> Vec<u8> {
        format!(r#"{{"ts":{ts},"account_id":"{account}","ip":"{ip}","request_id":"r-{ts}-{account}"{extra}}}"#).into_bytes()
    }

    fn run(p: &mut Processor, batches: &[Vec<Vec<u8>>]) -> Output {
        let mut out = Output::default();
        let mut offset = 0;
        for batch in batches {
            let inputs: Vec<Input<'_>> = batch
                .iter()
                .map(|payload| {
                    offset += 1;
                    Input {
                        partition: 0,
                        offset,
                        key: None,
                        payload,
                    }
                })
                .collect();
            p.process(&inputs, NOW, &mut out).expect("process");
        }
        out
    }

    fn harvest(n: i64) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| ev(T0 + i * 1000, "acct-7", "203.0.113.9", &format!(r#","labels":["cot_elicitation"],"prompt":"step by step: problem {i}","output_tokens":100"#)))
            .collect()
    }

    #[test]
    fn campaign_fires_once_with_evidence() {
        let mut p = processor();
        let out = run(&mut p, &[harvest(30)]);
        let cot: Vec<_> = out
            .alerts
            .iter()
            .filter(|a| a.alert.rule.id == "t.cot")
            .collect();
        assert_eq!(cot.len(), 1, "{:?}", out.alerts);
        let a = &cot[0].alert;
        assert_eq!(cot[0].key, "acct-7");
        assert_eq!(a.status, crate::gate::Status::New);
        assert_eq!(a.entity.kind, "account_id");
        assert_eq!(a.features["requests"], serde_json::json!(30));
        assert_eq!(a.features["cot"], serde_json::json!(30));
        assert_eq!(a.features["prompts"], serde_json::json!(30));
        assert!(
            !a.features.contains_key("out"),
            "only evidence features are reported"
        );
        assert_eq!(a.event_count, 30);
        assert_eq!(a.window.start, "2026-03-01T09:05:00.000Z");
        assert_eq!(a.window.end, "2026-03-01T10:05:00.000Z");
        assert_eq!(a.sample_request_ids.len(), crate::window::SAMPLE_IDS);
        let json = serde_json::to_string(a).expect("json");
        assert!(
            !json.contains("step by step"),
            "no prompt text in alerts: {json}"
        );
        assert_eq!(
            a.alert_id,
            crate::gate::alert_id(
                "t.cot",
                2,
                "account_id",
                "acct-7",
                T0 - 3_300_000,
                T0 + 300_000
            )
        );
    }

    #[test]
    fn batch_boundaries_do_not_change_alert_ids() {
        let events = harvest(40);
        let one = run(&mut processor(), std::slice::from_ref(&events));
        let many: Vec<Vec<Vec<u8>>> = events.chunks(3).map(<[Vec<u8>]>::to_vec).collect();
        let split = run(&mut processor(), &many);
        let ids = |o: &Output| {
            o.alerts
                .iter()
                .filter(|a| a.alert.status == crate::gate::Status::New)
                .map(|a| a.alert.alert_id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&one), ids(&split));
        assert_eq!(ids(&one).len(), 1);
    }

    #[test]
    fn benign_traffic_stays_quiet() {
        let mut batch = Vec::new();
        for u in 0..50 {
            for i in 0..5 {
                batch.push(ev(
                    T0 + i * 60_000 + u,
                    &format!("user-{u}"),
                    &format!("10.0.{u}.1"),
                    r#","prompt":"hello there","labels":["cot_elicitation"]"#,
                ));
            }
        }
        let out = run(&mut processor(), &[batch]);
        assert!(out.alerts.is_empty(), "{:?}", out.alerts);
        assert_eq!(out.stats.events, 250);
    }

    #[test]
    fn hydra_range_fires_on_shared_templates_only() {
        let mut batch = Vec::new();
        for a in 0..12 {
            for i in 0..3 {
                batch.push(ev(
                    T0 + a * 10 + i,
                    &format!("hydra-{a}"),
                    &format!("198.51.100.{a}"),
                    &format!(r#","prompt":"You are an expert. Answer question {i}{a} in full""#),
                ));
                batch.push(ev(
                    T0 + a * 10 + i,
                    &format!("office-{a}"),
                    &format!("192.0.2.{a}"),
                    &format!(
                        r#","prompt":"{} office question {a}{i}""#,
                        ["why", "how", "what", "who", "where", "when"]
                            [(a as usize + i as usize) % 6]
                    ),
                ));
            }
        }
        let out = run(&mut processor(), &[batch]);
        let hydra: Vec<_> = out
            .alerts
            .iter()
            .filter(|a| a.alert.rule.id == "t.hydra")
            .collect();
        assert_eq!(hydra.len(), 1, "{:?}", out.alerts);
        assert_eq!(hydra[0].key, "198.51.100.0/24");
        assert_eq!(hydra[0].alert.entity.kind, "ip_prefix(ip, 24, 48)");
    }

    #[test]
    fn suppressed_entity_gets_one_update_per_later_window() {
        let mut p = processor();
        let first = run(&mut p, &[harvest(30)]);
        assert_eq!(first.alerts.len(), 1);
        // ten more minutes of the campaign: the window slides twice
        let more: Vec<Vec<u8>> = (30..30 + 600)
            .map(|i| {
                ev(
                    T0 + i * 1000,
                    "acct-7",
                    "203.0.113.9",
                    &format!(
                        r#","labels":["cot_elicitation"],"prompt":"step by step: problem {i}""#
                    ),
                )
            })
            .collect();
        let out = run(&mut p, &[more]);
        let cot: Vec<_> = out
            .alerts
            .iter()
            .filter(|a| a.alert.rule.id == "t.cot")
            .collect();
        assert!(
            cot.iter()
                .all(|a| a.alert.status == crate::gate::Status::Update
                    && a.alert.alert_id == first.alerts[0].alert.alert_id)
        );
        assert_eq!(cot.len(), 2, "one update per later window: {cot:?}");
        assert!(out.stats.suppressed > 0);
    }

    #[test]
    fn malformed_events_become_dead_letters_and_the_rest_is_processed() {
        let mut batch = harvest(30);
        batch.insert(3, b"{oops".to_vec());
        batch.insert(
            10,
            br#"{"ts":"2026-03-01T10:00:00Z","account_id":"x","ip":"nope","prompt":"secret"}"#
                .to_vec(),
        );
        let out = run(&mut processor(), &[batch]);
        assert_eq!(
            out.alerts
                .iter()
                .filter(|a| a.alert.rule.id == "t.cot")
                .count(),
            1
        );
        assert_eq!(out.dead_letters.len(), 2);
        assert_eq!(out.dead_letters[0].reason, Reason::InvalidJson);
        assert_eq!(out.dead_letters[0].offset, 4);
        assert_eq!(out.dead_letters[0].payload, b"{oops");
        assert_eq!(out.dead_letters[1].reason, Reason::BadIp);
        assert!(out.dead_letters[1].redacted);
        assert!(!String::from_utf8_lossy(&out.dead_letters[1].payload).contains("secret"));
        assert_eq!(out.stats.rejected[&Reason::InvalidJson], 1);
    }

    #[test]
    fn partitions_keep_separate_state() {
        let mut p = processor();
        let events = harvest(30);
        let inputs: Vec<Input<'_>> = events
            .iter()
            .enumerate()
            .map(|(i, payload)| Input {
                partition: (i % 2) as i32,
                offset: i as i64,
                key: None,
                payload,
            })
            .collect();
        let mut out = Output::default();
        p.process(&inputs, NOW, &mut out).expect("process");
        // 15 events per partition: below the threshold of 20 in each
        assert!(out.alerts.iter().all(|a| a.alert.rule.id != "t.cot"));
        p.drop_partition(0);
        assert!(p.live_keys() > 0);
        p.drop_partition(1);
        assert_eq!(p.live_keys(), 0);
    }
}
