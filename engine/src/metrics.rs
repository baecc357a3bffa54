//! Metrics, and the log lines that go with them.
//!
//! Every instrumented event of the runtime is one method here that updates the Prometheus
//! series and writes the log line together, so the two cannot drift apart (STYLE.md #7): a
//! micro-batch ([`Metrics::batch_done`]), a rule set taking effect ([`Metrics::rules_loaded`]),
//! a state walk ([`Metrics::state`]), consumer lag ([`Metrics::consumer_lag`]) and a failed
//! write to Kafka ([`Metrics::sink_error`]). Counters move once per batch by the batch's
//! totals, never once per record, and the repeating warnings (dead letters, entities split
//! across partitions) are written at most once per [`LOG_INTERVAL`] with what they summarize
//! since the previous one.
//!
//! Names follow `cordon_<noun>_<unit>[_total]`; the Grafana dashboard in
//! `helm/cordon/dashboards/cordon.json` queries exactly these. Every label comes from a bounded
//! set: dead-letter reasons ([`Reason::ALL`]), rule ids and severities of the loaded rules,
//! state table names (`entity/window/every` of the loaded rules), input partitions, and
//! `success`/`failure`. Entity values (accounts, addresses, ...) never become labels. The
//! labels known in advance are registered at zero, so every series exists from the start and
//! `rate()` sees the first increment.
//!
//! The registry belongs to Cordon (not the `prometheus` crate's global default registry), so
//! nothing a dependency registers ends up on `/metrics` unasked.

use crate::decode::Reason;
use crate::gate::Status;
use crate::processor::{Output, ReloadSummary, SplitChecks, TableStats};
use cordon_connectors::ConnectorError;
use cordon_rules::RuleSet;
use prometheus::{
    Encoder as _, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Upper bounds of `cordon_batch_duration_seconds`: 100 µs to 10 s.
pub const BATCH_DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Upper bounds of `cordon_checkpoint_duration_seconds`: 1 ms to 60 s.
pub const CHECKPOINT_DURATION_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Shortest time between two dead-letter warnings.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Whether a dead-letter reason is malformed input (counted as a decode failure) rather than
/// a well-formed event refused for its time (`late`, `future`).
fn is_decode_failure(reason: Reason) -> bool {
    !matches!(reason, Reason::Late | Reason::Future | Reason::NotForwarded)
}

/// Which of the engine's two stages reports ([`crate::processor::Stage`]): the one that reads
/// the input topic (the only one without `repartition.topic`), or the repartition stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Reads the input topic.
    Input,
    /// Reads the repartition topic.
    Repartition,
}

impl Scope {
    /// Both stages, as a label's values are registered at zero.
    const ALL: [Scope; 2] = [Scope::Input, Scope::Repartition];

    /// The stage as the `stage` label names it.
    fn label(self) -> &'static str {
        match self {
            Scope::Input => "input",
            Scope::Repartition => "repartition",
        }
    }
}

/// The results of `cordon_repartition_messages_total`, all registered at zero.
const REPARTITION_RESULTS: [&str; 4] = ["forwarded", "counted", "replayed", "unrouted"];

fn status_label(status: Status) -> &'static str {
    match status {
        Status::New => "new",
        Status::Update => "update",
    }
}

/// Cordon's metrics: the registry `/metrics` serves and a handle to every series.
pub struct Metrics {
    registry: Registry,
    events_consumed: IntCounter,
    decode_failures: IntCounterVec,
    dead_letters: IntCounterVec,
    late_events: IntCounter,
    alerts: IntCounterVec,
    suppressed: IntCounterVec,
    state_evictions: IntCounterVec,
    split_checks: IntCounterVec,
    repartition: IntCounterVec,
    rule_reloads: IntCounterVec,
    sink_errors: IntCounter,
    state_keys: IntGaugeVec,
    state_bytes: IntGauge,
    consumer_lag: IntGaugeVec,
    checkpoint_age: Gauge,
    rules_loaded: IntGauge,
    batch_duration: HistogramVec,
    checkpoint_duration: Histogram,
    state: Mutex<LogState>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// What the metrics remember between calls: previous cumulative values and label sets, and
/// the dead letters not yet logged.
#[derive(Default)]
struct LogState {
    /// Cumulative evictions per table at the previous [`Metrics::state`] call.
    evictions: HashMap<String, u64>,
    /// Tables with a `cordon_state_keys` series, and the bytes of their state, by the stage
    /// that keeps them.
    tables: BTreeMap<Scope, (BTreeSet<String>, u64)>,
    /// Topics and partitions with a `cordon_consumer_lag_messages` series.
    lag_partitions: BTreeSet<(String, i32)>,
    /// When the last dead-letter warning was written.
    last_dead_letter_log: Option<Instant>,
    /// Dead letters per reason since that warning.
    pending_dead_letters: BTreeMap<&'static str, u64>,
    /// Batches with dead letters since that warning.
    pending_batches: u64,
    /// When the last warning of entities split across partitions was written.
    last_split_log: Option<Instant>,
    /// Split checks per table since that warning.
    pending_split: BTreeMap<String, SplitChecks>,
    /// As of when each stage's state on disk was last current.
    last_checkpoint: BTreeMap<Scope, Instant>,
}

fn counter(registry: &Registry, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
    let c = IntCounter::new(name, help)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, prometheus::Error> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
) -> Result<Histogram, prometheus::Error> {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))?;
    registry.register(Box::new(h.clone()))?;
    Ok(h)
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> Result<HistogramVec, prometheus::Error> {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )?;
    registry.register(Box::new(h.clone()))?;
    Ok(h)
}

impl Metrics {
    /// Registers every series in a registry of its own, with the labels known in advance at
    /// zero. Fails only on a bug (an invalid or duplicate name).
    pub fn new() -> Result<Self, prometheus::Error> {
        let r = Registry::new();
        let m = Self {
            events_consumed: counter(
                &r,
                "cordon_events_consumed_total",
                "Events read from the input topic and accepted (decoded, on time).",
            )?,
            decode_failures: counter_vec(
                &r,
                "cordon_decode_failures_total",
                "Malformed input messages, by reason (every dead-letter reason except late and future).",
                &["reason"],
            )?,
            dead_letters: counter_vec(
                &r,
                "cordon_dead_letters_total",
                "Messages written to the dead-letter topic, by reason.",
                &["reason"],
            )?,
            late_events: counter(
                &r,
                "cordon_late_events_total",
                "Events older than their partition's watermark minus time.allowed_lateness (dead-lettered as late).",
            )?,
            alerts: counter_vec(
                &r,
                "cordon_alerts_total",
                "Alerts written to the alerts topic, by rule, severity and status (new or update).",
                &["rule", "severity", "status"],
            )?,
            suppressed: counter_vec(
                &r,
                "cordon_suppressed_matches_total",
                "Rule matches the alert gate suppressed (the entity already had an alert in this window), by rule.",
                &["rule"],
            )?,
            state_evictions: counter_vec(
                &r,
                "cordon_state_evictions_total",
                "Keys evicted from state because state.max_keys was reached, by state table.",
                &["table"],
            )?,
            split_checks: counter_vec(
                &r,
                "cordon_state_split_checks_total",
                "New keys sampled (1 in 64) and looked up in this instance's other input partitions, by state table and result: split when another partition already held the key, so that the entity's events are counted apart in each partition (an entity the input topic is not keyed by), else alone.",
                &["table", "result"],
            )?,
            repartition: counter_vec(
                &r,
                "cordon_repartition_messages_total",
                "Events through the repartition topic, by result: forwarded (written by the first stage, once per entity), counted (read and counted by the second stage), replayed (read again after the first stage replayed, and dropped), unrouted (for an entity no running rule groups by).",
                &["result"],
            )?,
            rule_reloads: counter_vec(
                &r,
                "cordon_rule_reloads_total",
                "Rule set reloads (file change or SIGHUP), by result: success, or failure when the new set was rejected and the running rules stayed.",
                &["result"],
            )?,
            sink_errors: counter(
                &r,
                "cordon_sink_errors_total",
                "Messages to Kafka (alerts, dead letters) that could not be sent or were not delivered; each stops the engine before it commits.",
            )?,
            state_keys: gauge_vec(
                &r,
                "cordon_state_keys",
                "Live keys in state, by state table (entity/window/every), all partitions of this instance.",
                &["table"],
            )?,
            state_bytes: {
                let g = IntGauge::new(
                    "cordon_state_bytes",
                    "Estimated bytes of window state held (keys, panes, sketches, map overhead).",
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            consumer_lag: gauge_vec(
                &r,
                "cordon_consumer_lag_messages",
                "Messages between the consumer group's committed offset and the high watermark, by topic (the input topic, and the repartition topic with repartition.topic) and assigned partition (from librdkafka statistics, every statistics.interval.ms).",
                &["topic", "partition"],
            )?,
            checkpoint_age: {
                let g = Gauge::new(
                    "cordon_checkpoint_age_seconds",
                    "Seconds since the state on disk was last current for every owned partition: the age of the oldest partition's checkpoint, where a partition found unchanged since its last one counts as current, and an instance that owns no partition is current (0 until the first report).",
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            rules_loaded: {
                let g = IntGauge::new(
                    "cordon_rules_loaded",
                    "Enabled rules in the running rule set.",
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            batch_duration: histogram_vec(
                &r,
                "cordon_batch_duration_seconds",
                "Time to process one micro-batch and write its output: decode, evaluate, and wait for the broker to acknowledge its alerts and dead letters; by the stage that read the batch (`input`, or `repartition` for the repartition topic's).",
                BATCH_DURATION_BUCKETS,
                &["stage"],
            )?,
            checkpoint_duration: histogram(
                &r,
                "cordon_checkpoint_duration_seconds",
                "Time to checkpoint one input partition: encoding its state (periodic checkpoints in slices of at most 10 ms between batches, counted without the batches) and writing and syncing the file (on a thread of its own).",
                CHECKPOINT_DURATION_BUCKETS,
            )?,
            registry: r,
            state: Mutex::default(),
        };
        for reason in Reason::ALL {
            m.dead_letters.with_label_values(&[reason.as_str()]);
            if is_decode_failure(reason) {
                m.decode_failures.with_label_values(&[reason.as_str()]);
            }
        }
        for result in ["success", "failure"] {
            m.rule_reloads.with_label_values(&[result]);
        }
        for scope in Scope::ALL {
            m.batch_duration.with_label_values(&[scope.label()]);
        }
        for result in REPARTITION_RESULTS {
            m.repartition.with_label_values(&[result]);
        }
        // Set explicitly: 0 until the first checkpoint (see its help text).
        m.checkpoint_age.set(0.0);
        Ok(m)
    }

    /// The registry `/metrics` serves.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// All series in the Prometheus text format (version 0.0.4).
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }

    /// A rule set took effect: sets `cordon_rules_loaded`, registers the alert and
    /// suppression series of every enabled rule at zero, and logs the rule counts.
    pub fn rules_loaded(&self, rules: &RuleSet) {
        self.rules_loaded.set(rules.len() as i64);
        for r in &rules.rules {
            let (id, severity) = (r.rule.id.as_str(), r.rule.severity.as_str());
            for status in [Status::New, Status::Update] {
                self.alerts
                    .with_label_values(&[id, severity, status_label(status)]);
            }
            self.suppressed.with_label_values(&[id]);
        }
        tracing::info!(
            rules = rules.len(),
            disabled = rules.disabled.len(),
            "rules loaded"
        );
    }

    /// A reloaded rule set took effect: counts the reload and logs what kept its state.
    pub fn rule_reload_succeeded(&self, rules: &RuleSet, summary: &ReloadSummary) {
        self.rule_reloads.with_label_values(&["success"]).inc();
        self.rules_loaded(rules);
        tracing::info!(
            kept = ?summary.kept,
            fresh = ?summary.fresh,
            removed = ?summary.removed,
            kept_aggregates = summary.kept_slots,
            fresh_aggregates = summary.fresh_slots,
            "rules reloaded"
        );
    }

    /// A changed rule set was rejected; the running rules stay.
    pub fn rule_reload_failed(&self, error: &str) {
        self.rule_reloads.with_label_values(&["failure"]).inc();
        tracing::error!(
            error,
            "rule reload rejected: the running rules stay in effect"
        );
    }

    /// One micro-batch was processed and its output acknowledged by the broker: counts its
    /// events, dead letters, alerts and suppressed matches, observes its duration, logs each
    /// alert (rule, severity, id and status; never the entity) and, at most once per
    /// [`LOG_INTERVAL`], a summary of the dead letters. The events of the repartition stage
    /// (`scope`) count as `cordon_repartition_messages_total{result="counted"}`, not as
    /// consumed: each was consumed once already, from the input topic.
    pub fn batch_done(&self, scope: Scope, out: &Output, elapsed: Duration) {
        let stats = &out.stats;
        match scope {
            Scope::Input => self.events_consumed.inc_by(stats.events),
            Scope::Repartition => self
                .repartition
                .with_label_values(&["counted"])
                .inc_by(stats.events),
        }
        for (result, n) in [
            ("forwarded", stats.forwarded),
            ("replayed", stats.replayed),
            ("unrouted", stats.unrouted),
        ] {
            if n > 0 {
                self.repartition.with_label_values(&[result]).inc_by(n);
            }
        }
        for (reason, n) in &stats.rejected {
            self.dead_letters
                .with_label_values(&[reason.as_str()])
                .inc_by(*n);
            if *reason == Reason::Late {
                self.late_events.inc_by(*n);
            }
            if is_decode_failure(*reason) {
                self.decode_failures
                    .with_label_values(&[reason.as_str()])
                    .inc_by(*n);
            }
        }
        let mut alerts: BTreeMap<(&str, &str, &str), u64> = BTreeMap::new();
        for a in &out.alerts {
            let rule = &a.alert.rule;
            *alerts
                .entry((&rule.id, rule.severity, status_label(a.alert.status)))
                .or_default() += 1;
            tracing::info!(
                rule = %rule.id,
                severity = rule.severity,
                alert_id = %a.alert.alert_id,
                status = status_label(a.alert.status),
                "alert"
            );
        }
        for ((rule, severity, status), n) in alerts {
            self.alerts
                .with_label_values(&[rule, severity, status])
                .inc_by(n);
        }
        for (rule, n) in &stats.suppressed_by_rule {
            self.suppressed.with_label_values(&[rule]).inc_by(*n);
        }
        for (table, c) in &stats.split_checks {
            self.split_checks
                .with_label_values(&[table, "split"])
                .inc_by(c.split);
            self.split_checks
                .with_label_values(&[table, "alone"])
                .inc_by(c.checked - c.split);
        }
        self.batch_duration
            .with_label_values(&[scope.label()])
            .observe(elapsed.as_secs_f64());
        tracing::debug!(
            messages = stats.messages,
            events = stats.events,
            alerts = out.alerts.len(),
            dead_letters = out.dead_letters.len(),
            suppressed = stats.suppressed,
            too_old = stats.too_old,
            seconds = elapsed.as_secs_f64(),
            "batch done"
        );
        // Every batch's checks count towards the next warning's "of", split or not.
        if !stats.split_checks.is_empty() {
            let Ok(mut state) = self.state.lock() else {
                return;
            };
            for (table, c) in &stats.split_checks {
                let p = state.pending_split.entry(table.clone()).or_default();
                p.checked += c.checked;
                p.split += c.split;
            }
            log_split(&mut state, false);
        }
        if !stats.rejected.is_empty() {
            let Ok(mut state) = self.state.lock() else {
                return;
            };
            for (reason, n) in &stats.rejected {
                *state
                    .pending_dead_letters
                    .entry(reason.as_str())
                    .or_default() += n;
            }
            state.pending_batches += 1;
            log_dead_letters(&mut state, false);
        }
    }

    /// Updates `cordon_checkpoint_age_seconds` and writes the pending dead-letter summary if
    /// [`LOG_INTERVAL`] has passed since the last one (or at once with `force`, at shutdown).
    /// Call it every second or so.
    pub fn tick(&self, force: bool) {
        if let Ok(mut state) = self.state.lock() {
            if let Some(t) = state.last_checkpoint.values().min() {
                self.checkpoint_age.set(t.elapsed().as_secs_f64());
            }
            log_dead_letters(&mut state, force);
            log_split(&mut state, force);
        }
    }

    /// One partition's checkpoint was written in `elapsed` (encoding on the loop, writing and
    /// syncing the file on the writer's thread).
    pub fn checkpoint_written(&self, elapsed: Duration) {
        self.checkpoint_duration.observe(elapsed.as_secs_f64());
    }

    /// Every owned partition's state on disk is current as of `as_of` (the oldest partition's
    /// last checkpoint, or the last time it was found unchanged since); with no partition owned,
    /// as of now. `cordon_checkpoint_age_seconds` counts from it; with two stages (`scope`),
    /// from the older of their two.
    pub fn checkpoint_current(&self, scope: Scope, as_of: Instant) {
        if let Ok(mut state) = self.state.lock() {
            state.last_checkpoint.insert(scope, as_of);
            if let Some(t) = state.last_checkpoint.values().min() {
                self.checkpoint_age.set(t.elapsed().as_secs_f64());
            }
        }
    }

    /// The state tables' sizes (from [`Processor::table_stats`](crate::processor::Processor::table_stats)):
    /// sets keys per table and total bytes, and adds the evictions since the previous call.
    /// Each stage (`scope`) reports the tables it keeps.
    pub fn state(&self, scope: Scope, tables: &[TableStats]) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let mut bytes = 0u64;
        let mut seen = BTreeSet::new();
        for t in tables {
            let name = t.name.as_str();
            self.state_keys
                .with_label_values(&[name])
                .set(i64::try_from(t.keys).unwrap_or(i64::MAX));
            let before = state.evictions.insert(t.name.clone(), t.evictions);
            // A count below the previous one means a new processor (a rule reload): all of it
            // is new.
            let delta = match before {
                Some(b) if b <= t.evictions => t.evictions - b,
                _ => t.evictions,
            };
            self.state_evictions
                .with_label_values(&[name])
                .inc_by(delta);
            for result in ["split", "alone"] {
                self.split_checks.with_label_values(&[name, result]);
            }
            bytes = bytes.saturating_add(t.bytes);
            seen.insert(t.name.clone());
        }
        let before = state.tables.insert(scope, (seen, bytes));
        if let (Some((gone, _)), Some((seen, _))) = (before, state.tables.get(&scope)) {
            for gone in gone.difference(seen) {
                let _ = self.state_keys.remove_label_values(&[gone]);
            }
        }
        let bytes = state
            .tables
            .values()
            .fold(0u64, |sum, (_, b)| sum.saturating_add(*b));
        self.state_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Consumer lag of `topic`'s assigned partitions whose lag is known; the series of a
    /// partition of `topic` that is no longer listed is removed.
    pub fn consumer_lag(&self, topic: &str, lag: &BTreeMap<i32, i64>) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        for (p, n) in lag {
            self.consumer_lag
                .with_label_values(&[topic, &p.to_string()])
                .set(*n);
        }
        state.lag_partitions.retain(|(t, p)| {
            let keep = t != topic || lag.contains_key(p);
            if !keep {
                let _ = self.consumer_lag.remove_label_values(&[t, &p.to_string()]);
            }
            keep
        });
        state
            .lag_partitions
            .extend(lag.keys().map(|p| (topic.to_owned(), *p)));
    }

    /// A write to Kafka failed (`what`: which write): counts the messages it lost (the failed
    /// deliveries of a flush, or the one message a send refused) and logs the error. Every
    /// such error stops the engine before it commits, so this logs at most once per run.
    pub fn sink_error(&self, what: &str, e: &ConnectorError) {
        let n = match e {
            ConnectorError::Delivery { failed, .. } => *failed,
            _ => 1,
        };
        self.sink_errors.inc_by(n);
        tracing::error!(error = %e, messages = n, "writing {what} to Kafka failed");
    }
}

/// Whether a repeating warning last written at `last` is due: [`LOG_INTERVAL`] after it, or
/// at once with `force` (shutdown).
fn log_due(last: Option<Instant>, force: bool) -> bool {
    force || last.is_none_or(|t| t.elapsed() >= LOG_INTERVAL)
}

/// Writes the summary of entities split across partitions if there is one and it is due:
/// the tables whose sampled new keys another partition already held, with how many of how
/// many, since the last one.
fn log_split(state: &mut LogState, force: bool) {
    if !state.pending_split.values().any(|c| c.split > 0) {
        return;
    }
    if !log_due(state.last_split_log, force) {
        return;
    }
    let tables: BTreeMap<String, String> = std::mem::take(&mut state.pending_split)
        .into_iter()
        .filter(|(_, c)| c.split > 0)
        .map(|(t, c)| (t, format!("{} of {} sampled keys", c.split, c.checked)))
        .collect();
    tracing::warn!(
        tables = ?tables,
        "entities counted apart in several input partitions: state is kept per partition, and these tables' new keys were already held by another one; set repartition.topic, key the input topic by the entity, or use one partition (README: Entities split across partitions)"
    );
    state.last_split_log = Some(Instant::now());
}

/// Writes the dead-letter summary if there is one and it is due.
fn log_dead_letters(state: &mut LogState, force: bool) {
    if state.pending_dead_letters.is_empty() {
        return;
    }
    if !log_due(state.last_dead_letter_log, force) {
        return;
    }
    let reasons = std::mem::take(&mut state.pending_dead_letters);
    let count: u64 = reasons.values().sum();
    tracing::warn!(
        count,
        reasons = ?reasons,
        batches = std::mem::take(&mut state.pending_batches),
        "events dead-lettered"
    );
    state.last_dead_letter_log = Some(Instant::now());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processor::{CoreConfig, Input, Processor};

    const RULES: &str = r#"
id: t.cot
version: 1
title: cot
severity: high
entity: account_id
window: 1h
every: 5m
features:
  requests: count()
condition: requests >= 5
suppress: 6h
---
id: t.quiet
version: 1
title: quiet
severity: low
entity: ip_prefix(ip, 24, 48)
window: 1h
every: 5m
features:
  requests: count()
condition: requests >= 1000
"#;

    const T0: i64 = 1_772_359_200_000; // 2026-03-01T10:00:00Z

    /// The samples of `name` as (sorted labels, value).
    fn samples(text: &str, name: &str) -> BTreeMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let (n, labels) = series.split_once('{').unwrap_or((series, "}"));
                (n == name).then(|| {
                    (
                        labels.trim_end_matches('}').to_owned(),
                        value.parse().expect("a number"),
                    )
                })
            })
            .collect()
    }

    fn value(text: &str, name: &str, labels: &str) -> f64 {
        *samples(text, name)
            .get(labels)
            .unwrap_or_else(|| panic!("no {name}{{{labels}}} in\n{text}"))
    }

    #[test]
    fn every_series_exists_from_the_start_with_its_known_labels() {
        let m = Metrics::new().expect("metrics");
        let rules =
            cordon_rules::load_sources(&[("t.yaml".into(), RULES.into())]).expect("rules load");
        m.rules_loaded(&rules);
        let text = m.encode().expect("encode");
        for name in [
            "cordon_events_consumed_total",
            "cordon_decode_failures_total",
            "cordon_dead_letters_total",
            "cordon_late_events_total",
            "cordon_alerts_total",
            "cordon_suppressed_matches_total",
            "cordon_rule_reloads_total",
            "cordon_sink_errors_total",
            "cordon_state_bytes",
            "cordon_checkpoint_age_seconds",
            "cordon_rules_loaded",
            "cordon_batch_duration_seconds",
            "cordon_checkpoint_duration_seconds",
        ] {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} is not registered:\n{text}"
            );
        }
        for reason in Reason::ALL {
            let labels = format!("reason=\"{}\"", reason.as_str());
            assert_eq!(value(&text, "cordon_dead_letters_total", &labels), 0.0);
            let decode = samples(&text, "cordon_decode_failures_total");
            assert_eq!(
                decode.contains_key(&labels),
                !matches!(reason, Reason::Late | Reason::Future | Reason::NotForwarded),
                "{labels}"
            );
        }
        assert_eq!(samples(&text, "cordon_decode_failures_total").len(), 8);
        for result in ["success", "failure"] {
            let labels = format!("result=\"{result}\"");
            assert_eq!(value(&text, "cordon_rule_reloads_total", &labels), 0.0);
        }
        for (rule, severity) in [("t.cot", "high"), ("t.quiet", "low")] {
            for status in ["new", "update"] {
                let labels = format!("rule=\"{rule}\",severity=\"{severity}\",status=\"{status}\"");
                assert_eq!(value(&text, "cordon_alerts_total", &labels), 0.0);
            }
            let labels = format!("rule=\"{rule}\"");
            assert_eq!(
                value(&text, "cordon_suppressed_matches_total", &labels),
                0.0
            );
        }
        assert_eq!(value(&text, "cordon_rules_loaded", ""), 2.0);
        assert_eq!(value(&text, "cordon_checkpoint_age_seconds", ""), 0.0);
        let buckets = samples(&text, "cordon_batch_duration_seconds_bucket");
        for stage in ["input", "repartition"] {
            for le in ["0.0001", "10"] {
                let labels = format!("stage=\"{stage}\",le=\"{le}\"");
                assert_eq!(buckets.get(&labels), Some(&0.0), "{labels}: {buckets:?}");
            }
        }
        assert_eq!(buckets.len(), 2 * BATCH_DURATION_BUCKETS.len() + 2);
    }

    #[test]
    fn split_checks_count_by_table_and_result() {
        let m = Metrics::new().expect("metrics");
        let rules =
            cordon_rules::load_sources(&[("t.yaml".into(), RULES.into())]).expect("rules load");
        let p = Processor::new(&rules, CoreConfig::default());
        m.state(Scope::Input, &p.table_stats());
        let zero = samples(
            &m.encode().expect("encode"),
            "cordon_state_split_checks_total",
        );
        assert_eq!(
            zero.len(),
            4,
            "both results of both tables from the start: {zero:?}"
        );
        assert!(zero.values().all(|v| *v == 0.0), "{zero:?}");
        let table = p.table_stats()[1].name.clone();
        let mut out = Output::default();
        out.stats.split_checks.insert(
            table.clone(),
            SplitChecks {
                checked: 10,
                split: 3,
            },
        );
        m.batch_done(Scope::Input, &out, Duration::from_millis(1));
        m.batch_done(Scope::Input, &out, Duration::from_millis(1));
        let text = m.encode().expect("encode");
        let series = |result: &str| {
            let labels = format!("result=\"{result}\",table=\"{table}\"");
            value(&text, "cordon_state_split_checks_total", &labels)
        };
        assert_eq!((series("split"), series("alone")), (6.0, 14.0));
        let all: f64 = samples(&text, "cordon_state_split_checks_total")
            .values()
            .sum();
        assert_eq!(all, 20.0, "the other table's series stay at zero");
    }

    #[test]
    fn counters_move_after_a_batch() {
        let m = Metrics::new().expect("metrics");
        let rules =
            cordon_rules::load_sources(&[("t.yaml".into(), RULES.into())]).expect("rules load");
        m.rules_loaded(&rules);
        let mut p = Processor::new(&rules, CoreConfig::default());
        let mut payloads: Vec<Vec<u8>> = (0..8)
            .map(|i| {
                format!(
                    r#"{{"ts":{},"account_id":"acct-secret-1","ip":"192.0.2.77"}}"#,
                    T0 + i * 1000
                )
                .into_bytes()
            })
            .collect();
        payloads.push(b"{not json".to_vec());
        payloads.push(br#"{"ts":1772359200000,"ip":"192.0.2.77"}"#.to_vec());
        payloads.push(br#"{"ts":1000000000000,"account_id":"a","ip":"192.0.2.77"}"#.to_vec());
        let inputs = Input::sequence(0, 0, payloads.iter().map(Vec::as_slice));
        let mut out = Output::default();
        p.process(&inputs, T0 + 60_000, &mut out).expect("process");
        assert_eq!(out.alerts.len(), 1, "{:?}", out.stats);
        m.batch_done(Scope::Input, &out, Duration::from_millis(3));
        m.state(Scope::Input, &p.table_stats());
        m.consumer_lag("requests", &BTreeMap::from([(0, 7), (3, 0)]));

        let text = m.encode().expect("encode");
        assert_eq!(value(&text, "cordon_events_consumed_total", ""), 8.0);
        for (reason, n) in [("invalid_json", 1.0), ("missing_field", 1.0), ("late", 1.0)] {
            let labels = format!("reason=\"{reason}\"");
            assert_eq!(value(&text, "cordon_dead_letters_total", &labels), n);
        }
        let decode = samples(&text, "cordon_decode_failures_total");
        assert_eq!(decode["reason=\"invalid_json\""], 1.0);
        assert_eq!(decode["reason=\"missing_field\""], 1.0);
        assert_eq!(
            decode.values().sum::<f64>(),
            2.0,
            "late is not a decode failure"
        );
        assert_eq!(value(&text, "cordon_late_events_total", ""), 1.0);
        assert_eq!(
            value(
                &text,
                "cordon_alerts_total",
                "rule=\"t.cot\",severity=\"high\",status=\"new\""
            ),
            1.0
        );
        let suppressed: f64 = samples(&text, "cordon_suppressed_matches_total")
            .values()
            .sum();
        assert_eq!(suppressed, out.stats.suppressed as f64);
        let input = "stage=\"input\"";
        assert_eq!(
            value(&text, "cordon_batch_duration_seconds_count", input),
            1.0
        );
        assert_eq!(
            value(
                &text,
                "cordon_batch_duration_seconds_bucket",
                "stage=\"input\",le=\"0.005\""
            ),
            1.0
        );
        assert_eq!(
            value(
                &text,
                "cordon_batch_duration_seconds_bucket",
                "stage=\"input\",le=\"0.0025\""
            ),
            0.0
        );
        let keys = samples(&text, "cordon_state_keys");
        assert_eq!(keys.len(), 2, "one series per table: {keys:?}");
        assert_eq!(keys.values().sum::<f64>(), 2.0, "{keys:?}");
        assert!(value(&text, "cordon_state_bytes", "") > 0.0);
        assert_eq!(
            value(
                &text,
                "cordon_consumer_lag_messages",
                "partition=\"0\",topic=\"requests\""
            ),
            7.0
        );
        assert_eq!(
            value(
                &text,
                "cordon_consumer_lag_messages",
                "partition=\"3\",topic=\"requests\""
            ),
            0.0
        );
        assert!(
            !text.contains("acct-secret-1") && !text.contains("192.0.2"),
            "{text}"
        );

        // A partition that is gone loses its lag series; evictions count deltas.
        m.consumer_lag("requests", &BTreeMap::from([(0, 0)]));
        let text = m.encode().expect("encode");
        assert_eq!(samples(&text, "cordon_consumer_lag_messages").len(), 1);
        let mut tables = p.table_stats();
        tables[0].evictions = 5;
        m.state(Scope::Input, &tables);
        tables[0].evictions = 7;
        m.state(Scope::Input, &tables);
        let text = m.encode().expect("encode");
        let evicted: f64 = samples(&text, "cordon_state_evictions_total")
            .values()
            .sum();
        assert_eq!(evicted, 7.0);
    }

    #[test]
    fn two_stages_report_their_own_tables_lag_and_traffic() {
        let m = Metrics::new().expect("metrics");
        let table = |name: &str, keys: u64, bytes: u64| TableStats {
            name: name.into(),
            keys,
            evictions: 0,
            bytes,
        };
        m.state(Scope::Input, &[table("account_id/1h/5m", 10, 1000)]);
        m.state(Scope::Repartition, &[table("ip/1h/5m", 3, 500)]);
        m.state(Scope::Input, &[table("account_id/1h/5m", 12, 1200)]);
        let text = m.encode().expect("encode");
        let keys = samples(&text, "cordon_state_keys");
        assert_eq!(keys.get("table=\"account_id/1h/5m\""), Some(&12.0));
        assert_eq!(keys.get("table=\"ip/1h/5m\""), Some(&3.0), "{keys:?}");
        assert_eq!(value(&text, "cordon_state_bytes", ""), 1700.0);
        m.state(Scope::Repartition, &[]);
        let text = m.encode().expect("encode");
        assert_eq!(samples(&text, "cordon_state_keys").len(), 1);
        assert_eq!(value(&text, "cordon_state_bytes", ""), 1200.0);

        m.consumer_lag("requests", &BTreeMap::from([(0, 4)]));
        m.consumer_lag("repartition", &BTreeMap::from([(0, 9), (1, 0)]));
        m.consumer_lag("requests", &BTreeMap::from([(0, 2)]));
        let text = m.encode().expect("encode");
        let lag = samples(&text, "cordon_consumer_lag_messages");
        assert_eq!(
            lag,
            BTreeMap::from([
                ("partition=\"0\",topic=\"repartition\"".to_owned(), 9.0),
                ("partition=\"0\",topic=\"requests\"".to_owned(), 2.0),
                ("partition=\"1\",topic=\"repartition\"".to_owned(), 0.0),
            ])
        );

        let mut out = Output::default();
        out.stats.events = 5;
        out.stats.forwarded = 9;
        m.batch_done(Scope::Input, &out, Duration::from_millis(1));
        out.stats = crate::processor::BatchStats {
            events: 7,
            replayed: 2,
            ..crate::processor::BatchStats::default()
        };
        m.batch_done(Scope::Repartition, &out, Duration::from_millis(30));
        let text = m.encode().expect("encode");
        assert_eq!(value(&text, "cordon_events_consumed_total", ""), 5.0);
        // Each stage's batches in its own histogram: 1 ms for the input stage's, 30 ms for
        // the repartition stage's.
        let batches = samples(&text, "cordon_batch_duration_seconds_bucket");
        for (labels, want) in [
            ("stage=\"input\",le=\"0.0025\"", 1.0),
            ("stage=\"input\",le=\"+Inf\"", 1.0),
            ("stage=\"repartition\",le=\"0.025\"", 0.0),
            ("stage=\"repartition\",le=\"0.05\"", 1.0),
            ("stage=\"repartition\",le=\"+Inf\"", 1.0),
        ] {
            assert_eq!(batches.get(labels), Some(&want), "{labels}: {batches:?}");
        }
        let traffic = samples(&text, "cordon_repartition_messages_total");
        assert_eq!(
            traffic,
            BTreeMap::from([
                ("result=\"counted\"".to_owned(), 7.0),
                ("result=\"forwarded\"".to_owned(), 9.0),
                ("result=\"replayed\"".to_owned(), 2.0),
                ("result=\"unrouted\"".to_owned(), 0.0),
            ])
        );
    }

    #[test]
    fn failed_deliveries_count_each_lost_message() {
        let m = Metrics::new().expect("metrics");
        m.sink_error(
            "alerts",
            &ConnectorError::Delivery {
                failed: 3,
                last: "broker down".into(),
            },
        );
        m.sink_error(
            "alerts",
            &ConnectorError::MissingTopic {
                topic: "t".into(),
                brokers: "b".into(),
            },
        );
        let text = m.encode().expect("encode");
        assert_eq!(value(&text, "cordon_sink_errors_total", ""), 4.0);
    }
}
