//! The runtime: wires the pure core to Kafka, the wall clock and signals.
//!
//! One loop on the calling thread: poll a micro-batch, process it, write its alerts and dead
//! letters, wait until the broker has acknowledged all of them, then commit the input offsets.
//! A failed delivery stops the loop with an error before anything is committed, so a restart
//! replays the batch and no alert is lost. SIGTERM or SIGINT stops polling; the loop finishes
//! its batch, flushes, commits and returns. Between batches the loop checks the rule files
//! ([`RuleWatch`]) and swaps in a changed set that loads ([`Processor::replace_rules`]); a set
//! that does not load is reported and the running rules stay.
//!
//! Before it touches Kafka, the runtime binds the HTTP port ([`crate::http`]), so `/healthz`
//! answers while the brokers are still unreachable; the server stops after the loop returns.
//! The loop reports to [`Metrics`] once per batch and to [`Health`] once per iteration; the
//! state walk ([`Processor::table_stats`]) runs every [`STATE_STATS_INTERVAL`], the cheaper
//! reports (lag, assignment) every [`TICK_INTERVAL`].

use crate::config::{Config, SinkFormat};
use crate::http::{Health, HttpServer};
use crate::metrics::Metrics;
use crate::processor::{CoreConfig, Input, Output, Processor};
use crate::reload::RuleWatch;
use anyhow::Context;
use cordon_connectors::{ClientSettings, KafkaSink, KafkaSource, SourceRecord};
use cordon_rules::RuleSet;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Longest the engine waits for the broker to acknowledge a batch's output.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(310);
/// How long start-up waits for the brokers to answer.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the loop walks the state for `cordon_state_*` (it visits every key).
pub const STATE_STATS_INTERVAL: Duration = Duration::from_secs(5);
/// How often the loop publishes consumer lag and assigned partitions, and flushes throttled
/// log lines.
pub const TICK_INTERVAL: Duration = Duration::from_secs(1);

/// Totals of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunTotals {
    /// Messages consumed.
    pub messages: u64,
    /// Events decoded.
    pub events: u64,
    /// Alerts written.
    pub alerts: u64,
    /// Messages dead-lettered.
    pub dead_letters: u64,
}

/// Registers SIGTERM and SIGINT to set the returned flag.
pub fn shutdown_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, flag.clone()).context("installing signal handlers")?;
    }
    Ok(flag)
}

/// The instance name written into alerts: `POD_NAME`, else `HOSTNAME`, else `cordon`.
pub fn instance_name() -> String {
    std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "cordon".into())
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Loads the configured rules, or fails with every error found.
pub fn load_rules(config: &Config) -> anyhow::Result<RuleSet> {
    let rules =
        cordon_rules::load_paths(&config.rules.paths).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(rules)
}

/// Runs the engine until `shutdown` is set or an unrecoverable error occurs.
///
/// Serves `http.listen` from the start; a port that cannot be bound is an error naming it.
pub fn run(config: &Config, rules: &RuleSet, shutdown: &AtomicBool) -> anyhow::Result<RunTotals> {
    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    let health = Arc::new(Health::new());
    // The rules are loaded before the port opens, so `/readyz` never shows them missing.
    metrics.rules_loaded(rules);
    health.set_rules_loaded(rules.len());
    let server = HttpServer::start(&config.http.listen, metrics.clone(), health.clone())?;
    let result = run_loop(config, rules, shutdown, &metrics, &health);
    // Not ready from here on; the server answers until the loop has returned.
    health.set_consuming(false);
    server.stop();
    result
}

fn run_loop(
    config: &Config,
    rules: &RuleSet,
    shutdown: &AtomicBool,
    metrics: &Metrics,
    health: &Health,
) -> anyhow::Result<RunTotals> {
    // First, so a SIGHUP during start-up reloads rather than kills (its default action).
    let mut rule_watch = RuleWatch::new(&config.rules.paths)?;
    let settings = ClientSettings {
        brokers: config.source.brokers.clone(),
        properties: config.source.properties.clone(),
    };
    let mut sink_settings = settings.clone();
    sink_settings
        .properties
        .extend(config.sink.properties.clone());

    let source = KafkaSource::new(&settings, &config.source.group_id, &config.source.topic)
        .context("config key `source.properties`")?;
    let sink = KafkaSink::new(&sink_settings).context("config key `sink.properties`")?;
    source.check_topics(&[&config.source.topic], STARTUP_TIMEOUT)?;
    sink.check_topics(
        &[&config.sink.topic, &config.dead_letter.topic],
        STARTUP_TIMEOUT,
    )?;
    source.subscribe()?;
    health.set_consuming(true);
    tracing::info!(
        topic = %config.source.topic,
        group = %config.source.group_id,
        "cordon started"
    );

    let core = CoreConfig {
        max_message_bytes: config.source.max_message_bytes,
        allowed_lateness_ms: config.time.allowed_lateness.as_millis() as i64,
        max_future_skew_ms: config.time.max_future_skew.as_millis() as i64,
        instance: instance_name(),
        max_keys: config.state.max_keys,
    };
    let mut processor = Processor::new(rules, core);
    let mut totals = RunTotals::default();
    let mut records: Vec<SourceRecord> = Vec::with_capacity(config.source.max_batch_messages);
    let mut next_offsets: BTreeMap<i32, i64> = BTreeMap::new();
    let mut last_expiry = Instant::now();
    let mut last_report = Instant::now();
    let mut reported = RunTotals::default();
    let mut last_tick = Instant::now();
    let mut last_state_stats = Instant::now();
    metrics.state(&processor.table_stats());

    while !shutdown.load(Ordering::Relaxed) {
        health.heartbeat();
        records.clear();
        source.poll_batch(
            config.source.max_batch_messages,
            config.source.max_batch_wait,
            &mut records,
        );
        for p in source.take_revoked() {
            processor.drop_partition(p);
            next_offsets.remove(&p);
        }
        if !records.is_empty() {
            let started = Instant::now();
            let out = process_batch(&mut processor, &records, config, &sink, metrics)?;
            metrics.batch_done(&out, started.elapsed());
            health.batch_done();
            health.set_assigned(source.assigned_partitions());
            totals.messages += records.len() as u64;
            totals.events += out.stats.events;
            totals.alerts += out.alerts.len() as u64;
            totals.dead_letters += out.dead_letters.len() as u64;
            for r in &records {
                let next = next_offsets.entry(r.partition).or_insert(0);
                *next = (*next).max(r.offset + 1);
            }
            source.commit(&next_offsets, false)?;
        }
        if let Some(reloaded) = rule_watch.poll() {
            match reloaded {
                Ok(set) => {
                    let summary = processor.replace_rules(&set);
                    metrics.rule_reload_succeeded(&set, &summary);
                    metrics.state(&processor.table_stats());
                    health.set_rules_loaded(set.len());
                    health.set_rules_error(None);
                }
                Err(e) => {
                    metrics.rule_reload_failed(&e);
                    health.set_rules_error(Some(e));
                }
            }
        }
        if last_expiry.elapsed() >= Duration::from_secs(10) {
            processor.expire_idle();
            last_expiry = Instant::now();
        }
        if last_state_stats.elapsed() >= STATE_STATS_INTERVAL {
            metrics.state(&processor.table_stats());
            last_state_stats = Instant::now();
        }
        if last_tick.elapsed() >= TICK_INTERVAL {
            metrics.consumer_lag(&source.consumer_lag());
            health.set_assigned(source.assigned_partitions());
            metrics.tick(false);
            last_tick = Instant::now();
        }
        if last_report.elapsed() >= Duration::from_secs(30) && totals != reported {
            tracing::info!(
                messages = totals.messages,
                events = totals.events,
                alerts = totals.alerts,
                dead_letters = totals.dead_letters,
                live_keys = processor.live_keys(),
                "progress"
            );
            reported = totals.clone();
            last_report = Instant::now();
        }
    }
    tracing::info!("shutting down: flushing output and committing offsets");
    health.set_consuming(false);
    metrics.tick(true);
    sink.flush(FLUSH_TIMEOUT)
        .inspect_err(|e| metrics.sink_error("output", e))?;
    source.commit(&next_offsets, true)?;
    tracing::info!(
        messages = totals.messages,
        events = totals.events,
        alerts = totals.alerts,
        dead_letters = totals.dead_letters,
        "cordon stopped"
    );
    Ok(totals)
}

/// Processes one batch and writes its output; returns once the broker has acknowledged it.
/// Logging and counting the batch is the caller's ([`Metrics::batch_done`]), except for a
/// failed write, which is counted here ([`Metrics::sink_error`]) before it stops the engine.
fn process_batch(
    processor: &mut Processor,
    records: &[SourceRecord],
    config: &Config,
    sink: &KafkaSink,
    metrics: &Metrics,
) -> anyhow::Result<Output> {
    let inputs: Vec<Input<'_>> = records
        .iter()
        .map(|r| Input {
            partition: r.partition,
            offset: r.offset,
            key: r.key.as_deref(),
            payload: &r.payload,
        })
        .collect();
    let mut out = Output::default();
    processor.process(&inputs, now_ms(), &mut out)?;
    for a in &out.alerts {
        let payload = match config.sink.format {
            SinkFormat::Native => serde_json::to_vec(&a.alert),
            SinkFormat::Ocsf => serde_json::to_vec(&crate::ocsf::detection_finding(a)),
        }
        .context("serializing an alert")?;
        sink.send(&config.sink.topic, Some(a.key.as_bytes()), &payload, &[])
            .inspect_err(|e| metrics.sink_error("an alert", e))?;
    }
    for d in &out.dead_letters {
        let partition = d.partition.to_string();
        let offset = d.offset.to_string();
        let mut headers: Vec<(&str, &[u8])> = vec![
            ("cordon.reason", d.reason.as_str().as_bytes()),
            ("cordon.detail", d.detail.as_bytes()),
            ("cordon.source.topic", config.source.topic.as_bytes()),
            ("cordon.source.partition", partition.as_bytes()),
            ("cordon.source.offset", offset.as_bytes()),
        ];
        if d.redacted {
            headers.push(("cordon.redacted", b"prompt"));
        }
        sink.send(
            &config.dead_letter.topic,
            d.key.as_deref(),
            &d.payload,
            &headers,
        )
        .inspect_err(|e| metrics.sink_error("a dead letter", e))?;
    }
    if !out.alerts.is_empty() || !out.dead_letters.is_empty() {
        sink.flush(FLUSH_TIMEOUT)
            .inspect_err(|e| metrics.sink_error("alerts and dead letters", e))
            .context("writing alerts and dead letters")?;
    }
    Ok(out)
}
