//! The runtime: wires the pure core to Kafka, the wall clock, checkpoints and signals.
//!
//! One loop on the calling thread: poll a micro-batch, process it, write its alerts and dead
//! letters, and wait until the broker has acknowledged all of them. Each input partition is
//! checkpointed `state.checkpoint_interval` after its previous checkpoint if it changed
//! ([`crate::checkpoint`]), one partition at a time, encoded a slice per pass of the loop while
//! batches go on (`Checkpoints`), and its offset is committed only once the file is
//! written: offsets are committed for exactly what a checkpoint covers. A failed delivery stops
//! the loop with an error before the next checkpoint, so a restart replays from the last one
//! and no alert is lost.
//!
//! When partitions are assigned (start-up, rebalance), the consumer starts each at its newest
//! complete checkpoint's offset (set in the assignment itself, [`KafkaSource::on_assign`]); the
//! loop restores the state, then reads the alerts topic from the end offsets the checkpoint
//! recorded to its current end and seeds the alert gates with the alerts found there (from the
//! headers written beside every alert, [`HEADER_ALERT_ID`]), so the replay writes none of them
//! again. A revoked partition is checkpointed before its state is dropped. SIGTERM or SIGINT
//! stops polling; the loop finishes its batch, flushes, checkpoints, commits and returns; during
//! the start-up wait for Kafka it returns within a second.
//! Between batches the loop checks the rule files ([`RuleWatch`]) and swaps in a changed set
//! that loads ([`Processor::replace_rules`]); a set that does not load is reported and the
//! running rules stay.
//!
//! With `repartition.topic`, two such loops run, one per stage ([`Stage`]): the input stage on
//! the calling thread, which also forwards events to the repartition topic, and the
//! repartition stage on a thread of its own, reading that topic in a consumer group of its own.
//! Each has its own consumer, producer, processor and checkpoints; they share the HTTP port,
//! the metrics and the rule files (the input stage hands each set it loads to the other), and
//! when one stops the other does too.
//!
//! Before it touches Kafka, the runtime binds the HTTP port ([`crate::http`]), so `/healthz`
//! answers while the brokers are still unreachable; the server stops after the loop returns.
//! The loop reports to [`Metrics`] once per batch and to [`Health`] once per iteration; the
//! walks over every key, for metrics ([`Processor::table_stats`]) and for expiry, run every
//! [`STATE_STATS_INTERVAL`] and [`EXPIRY_INTERVAL`], or less often when they take long
//! (`Walk`); the cheaper reports (lag, assignment, checkpoint age) every [`TICK_INTERVAL`].

use crate::checkpoint::{
    Checkpoint, CheckpointMeta, CheckpointStore, CheckpointWriter, WriteJob, Written,
};
use crate::config::{Config, FutureEvents, SinkFormat};
use crate::frame::{self, Framer, HEADER_FRAME};
use crate::gate::Status;
use crate::http::{Health, HttpServer};
use crate::metrics::{Metrics, Scope};
use crate::processor::{CoreConfig, Input, Output, Processor, Stage};
use crate::reload::RuleWatch;
use anyhow::Context;
use cordon_connectors::{
    ClientSettings, ConnectorError, KafkaSink, KafkaSource, ObjectError, ObjectStorage, ReadRecord,
    SourceRecord,
};
use cordon_rules::RuleSet;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest the engine waits for the broker to acknowledge a batch's output.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(310);
/// How long start-up waits for the brokers to answer.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How many bytes of frames the repartition stage takes in a batch (or
/// `source.max_batch_messages` frames, whichever comes first): about as many events as a batch
/// of the input topic, where a frame holds hundreds.
pub const REPARTITION_BATCH_BYTES: usize = 4 << 20;
/// What a message's key, headers and framing may take beside its payload: a dead letter's
/// payload, or a forwarded event, is held to the producer's `message.max.bytes` less this.
pub const MESSAGE_HEADROOM: usize = 16 << 10;
/// Longest a takeover of partitions waits to read back the alerts topic.
pub const SEED_TIMEOUT: Duration = Duration::from_secs(120);

/// Headers written beside every alert (whatever `sink.format`), which a restart reads back to
/// seed the alert gate: the alert's id, `new` or `update`, its rule id and version, the end of
/// its window (epoch ms), and the input topic and partition whose state raised it. The entity
/// is the message key.
pub const HEADER_ALERT_ID: &str = "cordon.alert_id";
/// See [`HEADER_ALERT_ID`].
pub const HEADER_STATUS: &str = "cordon.status";
/// See [`HEADER_ALERT_ID`].
pub const HEADER_RULE_ID: &str = "cordon.rule.id";
/// See [`HEADER_ALERT_ID`].
pub const HEADER_RULE_VERSION: &str = "cordon.rule.version";
/// See [`HEADER_ALERT_ID`].
pub const HEADER_WINDOW_END: &str = "cordon.window.end";
/// See [`HEADER_ALERT_ID`].
pub const HEADER_SOURCE_TOPIC: &str = "cordon.source.topic";
/// See [`HEADER_ALERT_ID`].
pub const HEADER_SOURCE_PARTITION: &str = "cordon.source.partition";
/// How often, at most, the loop walks the state for `cordon_state_*` (it visits every key).
pub const STATE_STATS_INTERVAL: Duration = Duration::from_secs(5);
/// A walk over every key waits at least this many times as long as its last run took
/// (`Walk`), so that each takes at most a fiftieth of the loop's time however many keys
/// there are: the metrics walk took 80-124 ms for the throughput harness's 2.1M keys (Intel
/// host, 2026-11-28), which every 5 s is up to 2.5%.
pub const WALK_SPACING: u32 = 50;
/// How often, at most, the loop drops keys whose windows have expired (it visits every key).
/// Expiry is only memory: an expired key that is still held reads as empty.
pub const EXPIRY_INTERVAL: Duration = Duration::from_secs(10);
/// How often the loop publishes consumer lag and assigned partitions, and flushes throttled
/// log lines.
pub const TICK_INTERVAL: Duration = Duration::from_secs(1);
/// Longest a pass of the loop spends encoding the checkpoint under way (`Checkpoints::step`):
/// events that arrive meanwhile wait at most this long for it.
pub const CHECKPOINT_SLICE: Duration = Duration::from_millis(10);

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
    let result = match &config.repartition.topic {
        None => run_loop(
            config,
            &StageRun::whole(config)?,
            rules,
            Reloads::Watch(RuleWatch::new(&config.rules.paths)?, None),
            Stop::new(shutdown, None),
            &metrics,
            &health,
        ),
        Some(topic) => run_stages(config, topic, rules, shutdown, &metrics, &health),
    };
    // Not ready from here on; the server answers until the loop has returned.
    health.set_consuming(false);
    server.stop();
    result
}

/// Runs the two stages of `repartition.topic`: the input stage on this thread, the
/// repartition stage on a thread of its own. When either stops, for whatever reason, the other
/// stops too (cleanly: it flushes, checkpoints and commits). The input stage watches the rule
/// files and hands each set that loads to the other, so both run the same rules.
fn run_stages(
    config: &Config,
    topic: &str,
    rules: &RuleSet,
    shutdown: &AtomicBool,
    metrics: &Metrics,
    health: &Health,
) -> anyhow::Result<RunTotals> {
    let watch = RuleWatch::new(&config.rules.paths)?;
    let (source, repartitioned) = (
        StageRun::source(config, topic)?,
        StageRun::repartitioned(config, topic)?,
    );
    let (to_second, from_first) = std::sync::mpsc::channel();
    let second_health = Arc::new(Health::new());
    second_health.set_rules_loaded(rules.len());
    health.attach(second_health.clone());
    let halt = AtomicBool::new(false);
    let (first, second) = std::thread::scope(|scope| {
        let second = std::thread::Builder::new()
            .name("cordon-repartition".into())
            .spawn_scoped(scope, || {
                let r = run_loop(
                    config,
                    &repartitioned,
                    rules,
                    Reloads::From(from_first),
                    Stop::new(shutdown, Some(&halt)),
                    metrics,
                    &second_health,
                );
                halt.store(true, Ordering::Relaxed);
                second_health.set_consuming(false);
                r
            });
        let first = run_loop(
            config,
            &source,
            rules,
            Reloads::Watch(watch, Some(to_second)),
            Stop::new(shutdown, Some(&halt)),
            metrics,
            health,
        );
        halt.store(true, Ordering::Relaxed);
        let second = match second {
            Ok(handle) => handle
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the repartition stage panicked"))),
            Err(e) => Err(anyhow::Error::from(e).context("starting the repartition stage")),
        };
        (first, second)
    });
    let (first, second) = (
        first.context("the input stage")?,
        second.context("the repartition stage")?,
    );
    Ok(RunTotals {
        messages: first.messages,
        events: first.events,
        alerts: first.alerts + second.alerts,
        dead_letters: first.dead_letters + second.dead_letters,
    })
}

/// What one loop reads and does: the whole engine, or one of the two stages of
/// `repartition.topic` ([`Stage`]).
struct StageRun {
    stage: Stage,
    /// The topic it reads.
    topic: String,
    /// Its consumer group.
    group: String,
    /// Where the input stage forwards events (the repartition topic).
    forward_to: Option<String>,
    /// What a dead letter's key and payload, or a forwarded event, may take: the producer's
    /// `message.max.bytes` less [`MESSAGE_HEADROOM`].
    budget: usize,
}

impl StageRun {
    fn whole(config: &Config) -> anyhow::Result<Self> {
        Ok(Self {
            stage: Stage::Whole,
            topic: config.source.topic.clone(),
            group: config.source.group_id.clone(),
            forward_to: None,
            budget: message_budget(config)?,
        })
    }

    fn source(config: &Config, repartition_topic: &str) -> anyhow::Result<Self> {
        Ok(Self {
            stage: Stage::Source {
                input_entity: config.repartition.input_entity.clone(),
            },
            forward_to: Some(repartition_topic.to_owned()),
            ..Self::whole(config)?
        })
    }

    fn repartitioned(config: &Config, repartition_topic: &str) -> anyhow::Result<Self> {
        Ok(Self {
            stage: Stage::Repartitioned {
                input_entity: config.repartition.input_entity.clone(),
            },
            topic: repartition_topic.to_owned(),
            group: config.repartition_group(),
            ..Self::whole(config)?
        })
    }

    /// Which stage's metrics and checkpoints it reports as.
    fn scope(&self) -> Scope {
        match self.stage {
            Stage::Repartitioned { .. } => Scope::Repartition,
            Stage::Whole | Stage::Source { .. } => Scope::Input,
        }
    }
}

/// Where a loop's rule reloads come from.
enum Reloads {
    /// The rule files and SIGHUP; each set that loads also goes to the repartition stage.
    Watch(RuleWatch, Option<Sender<RuleSet>>),
    /// The sets the input stage loaded.
    From(Receiver<RuleSet>),
}

/// When a loop stops: on SIGTERM or SIGINT, or when the other stage has stopped.
#[derive(Clone, Copy)]
struct Stop<'a> {
    signal: &'a AtomicBool,
    other: Option<&'a AtomicBool>,
}

impl<'a> Stop<'a> {
    fn new(signal: &'a AtomicBool, other: Option<&'a AtomicBool>) -> Self {
        Self { signal, other }
    }

    fn asked(&self) -> bool {
        self.signal.load(Ordering::Relaxed) || self.other.is_some_and(|o| o.load(Ordering::Relaxed))
    }
}

/// The checkpoint store `config` asks for, for `topic`'s partitions: object storage
/// (`state.object_store_url`), which must answer a listing now, or `state.dir`. Errors name
/// the config key at fault.
fn checkpoint_store(config: &Config, topic: &str) -> anyhow::Result<CheckpointStore> {
    let Some(url) = &config.state.object_store_url else {
        return Ok(CheckpointStore::new(&config.state.dir, topic));
    };
    let objects = ObjectStorage::open(url, &config.state.object_store_options).map_err(|e| {
        let key = match &e {
            ObjectError::Option { key, .. } => format!("state.object_store_options.{key}"),
            _ => "state.object_store_url".to_owned(),
        };
        anyhow::anyhow!("config key `{key}`: {e}")
    })?;
    let store = CheckpointStore::objects(&objects, topic);
    store.check().with_context(|| {
        format!(
            "config key `state.object_store_url`: cannot list {}",
            store.location()
        )
    })?;
    tracing::info!(location = %store.location(), "checkpoints in object storage");
    Ok(store)
}

/// Waits for the brokers to list `topics`, retrying an unreachable cluster for up to
/// [`STARTUP_TIMEOUT`] in short attempts so that SIGTERM is seen within a second. Returns
/// false when shutdown was asked for first.
fn wait_for_topics(
    check: impl Fn(Duration) -> Result<(), ConnectorError>,
    stop: Stop<'_>,
) -> anyhow::Result<bool> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if stop.asked() {
            return Ok(false);
        }
        match check(Duration::from_secs(1)) {
            Ok(()) => return Ok(true),
            Err(ConnectorError::Unreachable { .. }) if Instant::now() < deadline => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Checkpoints loaded by the assignment hook (inside the consumer's poll), waiting for the loop
/// to restore them: partition -> the newest complete checkpoint and its size, or the error.
type Loaded = Arc<Mutex<BTreeMap<i32, Result<Option<(Checkpoint, usize)>, String>>>>;

/// The loop's checkpoint bookkeeping for the partitions it owns.
///
/// Each owned partition is checkpointed `interval` after its previous checkpoint, one partition
/// at a time (`Checkpoints::step`), and partitions taken over together have their first
/// periodic checkpoints spread over one interval ([`spread`]). A periodic checkpoint does not
/// stop the loop: it is taken as of one moment ([`Processor::begin_checkpoint`]) and encoded at
/// most a [`CHECKPOINT_SLICE`] per pass while batches go on. Encoded in one go, the throughput
/// harness's 2.1M keys took about 0.6 s even with the slot order, bincode's direct writer and
/// large tables on threads of their own, and every event that arrived meanwhile waited for it:
/// with one partition holding them, p99 latency was 0.7-1.2 s. Revoked partitions, partitions
/// taken over without a checkpoint, and shutdown still wait for their checkpoints
/// ([`Checkpoints::write_now`]). The file is written and synced by [`CheckpointWriter`]'s
/// thread, and the partition's offset is committed when the writer reports the file written.
struct Checkpoints {
    writer: CheckpointWriter,
    /// Which stage's checkpoints, for `cordon_checkpoint_age_seconds`.
    scope: Scope,
    topic: String,
    alerts_topic: String,
    interval: Duration,
    /// Next input offset per owned partition (`-1`: unknown, resume from the committed one).
    positions: BTreeMap<i32, i64>,
    /// Owned partitions with input since their last checkpoint.
    dirty: BTreeSet<i32>,
    /// Alerts-topic end offsets known so far (a lower bound of the ends).
    alerts_end: BTreeMap<i32, i64>,
    /// Per owned partition, when it was last checkpointed or found unchanged: its next
    /// checkpoint is due `interval` later ([`due`]).
    taken: BTreeMap<i32, Instant>,
    /// Per owned partition, when its state on disk was last current: the oldest is what
    /// `cordon_checkpoint_age_seconds` and `/readyz` count from.
    durable: BTreeMap<i32, Instant>,
    /// The periodic checkpoint being encoded ([`Processor::begin_checkpoint`]).
    encoding: Option<Encoding>,
}

/// A periodic checkpoint the processor is encoding a slice at a time.
struct Encoding {
    partition: i32,
    next_offset: i64,
    /// When its state was taken.
    taken: Instant,
    /// Time spent encoding it so far.
    spent: Duration,
}

/// A periodic walk over every key, run every `every` or, when it takes long, [`WALK_SPACING`]
/// times as long as its last run took.
struct Walk {
    every: Duration,
    next: Duration,
    last: Instant,
}

impl Walk {
    fn new(every: Duration) -> Self {
        Self {
            every,
            next: every,
            last: Instant::now(),
        }
    }

    /// Runs `walk` if it is due.
    fn run(&mut self, walk: impl FnOnce()) {
        if self.last.elapsed() >= self.next {
            let started = Instant::now();
            walk();
            self.next = self.every.max(started.elapsed() * WALK_SPACING);
            self.last = Instant::now();
        }
    }
}

/// The owned partition whose periodic checkpoint is due at `now`: the one checkpointed longest
/// ago (`taken`), once that is at least `interval` ago.
fn due(taken: &BTreeMap<i32, Instant>, now: Instant, interval: Duration) -> Option<i32> {
    let (p, at) = taken.iter().min_by_key(|(_, at)| **at)?;
    (now.saturating_duration_since(*at) >= interval).then_some(*p)
}

/// When partitions taken over together at `now` count as last checkpointed: the k-th of n as
/// k/n of an interval ago, so that their next checkpoints fall evenly over the coming interval
/// rather than all in one pass. Each is current on disk at `now` (restored from its checkpoint,
/// or written at once when it had none), so none waits longer than `interval`.
fn spread(partitions: &[i32], now: Instant, interval: Duration) -> Vec<(i32, Instant)> {
    let n = u32::try_from(partitions.len()).unwrap_or(u32::MAX).max(1);
    partitions
        .iter()
        .zip(0u32..)
        .map(|(p, k)| (*p, now.checked_sub(interval * k / n).unwrap_or(now)))
        .collect()
}

impl Checkpoints {
    /// Waits until the broker has acknowledged every alert and dead letter sent so far, and
    /// moves the known alerts-topic ends up to them. Every checkpoint is taken after one: a
    /// checkpoint must never cover output that could still be lost, so a failed delivery stops
    /// the engine here and a restart replays from the previous checkpoint.
    fn flush(&mut self, sink: &KafkaSink, metrics: &Metrics) -> anyhow::Result<()> {
        sink.flush(FLUSH_TIMEOUT)
            .inspect_err(|e| metrics.sink_error("alerts and dead letters", e))
            .context("writing alerts and dead letters before a checkpoint")?;
        for (p, end) in sink.delivered_ends(&self.alerts_topic) {
            let e = self.alerts_end.entry(p).or_insert(end);
            *e = (*e).max(end);
        }
        Ok(())
    }

    /// What partition `p`'s checkpoint as of now covers, and its next input offset.
    fn meta(&self, p: i32) -> (CheckpointMeta, i64) {
        let next_offset = self.positions.get(&p).copied().unwrap_or(-1);
        let meta = CheckpointMeta {
            topic: self.topic.clone(),
            partition: p,
            next_offset,
            watermark: i64::MIN,
            alerts_topic: self.alerts_topic.clone(),
            alerts_end: self.alerts_end.clone(),
            written_at_ms: now_ms(),
        };
        (meta, next_offset)
    }

    /// Encodes partition `p`'s state (a partition the processor holds no state for as empty
    /// state) and hands it to the writer. Call [`flush`](Self::flush) first. For the
    /// checkpoints the loop waits for anyway ([`write_now`](Self::write_now)): in one go rather
    /// than by [`begin`](Self::begin) and [`encode_slice`](Self::encode_slice), because one go
    /// encodes large tables in parallel when another CPU is free
    /// ([`CheckpointRef::encode_parts`](crate::checkpoint::CheckpointRef::encode_parts)).
    fn submit(&mut self, processor: &Processor, p: i32) -> anyhow::Result<()> {
        let (meta, next_offset) = self.meta(p);
        let taken = Instant::now();
        let parts = processor
            .checkpoint_parts(p, meta)
            .with_context(|| format!("encoding the checkpoint of partition {p}"))?;
        self.writer.submit(WriteJob {
            partition: p,
            next_offset,
            taken,
            encode: taken.elapsed(),
            parts,
        })?;
        self.dirty.remove(&p);
        self.taken.insert(p, taken);
        Ok(())
    }

    /// Takes partition `p`'s checkpoint as of now, to be encoded a slice per pass
    /// ([`encode_slice`](Self::encode_slice)). Call [`flush`](Self::flush) first.
    fn begin(&mut self, processor: &mut Processor, p: i32) -> anyhow::Result<()> {
        let (meta, next_offset) = self.meta(p);
        let taken = Instant::now();
        processor
            .begin_checkpoint(p, meta)
            .with_context(|| format!("encoding the checkpoint of partition {p}"))?;
        self.encoding = Some(Encoding {
            partition: p,
            next_offset,
            taken,
            spent: taken.elapsed(),
        });
        self.dirty.remove(&p);
        self.taken.insert(p, taken);
        Ok(())
    }

    /// Encodes the checkpoint under way for up to `slice`, and hands it to the writer once it
    /// is complete.
    fn encode_slice(&mut self, processor: &mut Processor, slice: Duration) -> anyhow::Result<()> {
        let Some(enc) = self.encoding.as_mut() else {
            return Ok(());
        };
        // The processor keeps its checkpoint until it returns it complete (below).
        if processor.checkpoint_under_way() != Some(enc.partition) {
            let p = enc.partition;
            self.encoding = None;
            anyhow::bail!("the checkpoint of partition {p} went missing while it was encoded");
        }
        let started = Instant::now();
        let done = processor.continue_checkpoint_while(|| started.elapsed() < slice);
        enc.spent += started.elapsed();
        let Some((p, parts)) = done else {
            return Ok(());
        };
        let Some(enc) = self.encoding.take() else {
            return Ok(());
        };
        let parts = parts.with_context(|| format!("encoding the checkpoint of partition {p}"))?;
        self.writer.submit(WriteJob {
            partition: enc.partition,
            next_offset: enc.next_offset,
            taken: enc.taken,
            encode: enc.spent,
            parts,
        })?;
        Ok(())
    }

    /// Books finished writes: commits the offsets they cover (offsets are committed only for
    /// what a checkpoint covers; a failed commit is retried with the next checkpoint, and the
    /// checkpoint, not the commit, is where a restart resumes). A failed write stops the engine.
    fn settle(
        &mut self,
        written: Vec<Written>,
        source: &KafkaSource,
        metrics: &Metrics,
        sync: bool,
    ) -> anyhow::Result<()> {
        let mut commit = BTreeMap::new();
        for w in written {
            let location = w
                .result
                .with_context(|| format!("writing the checkpoint of partition {}", w.partition))?;
            metrics.checkpoint_written(w.duration);
            tracing::debug!(
                partition = w.partition,
                location = %location,
                seconds = w.duration.as_secs_f64(),
                "checkpoint written"
            );
            if let Some(at) = self.durable.get_mut(&w.partition) {
                *at = (*at).max(w.taken);
            }
            if w.next_offset >= 0 {
                commit.insert(w.partition, w.next_offset);
            }
        }
        if let Err(e) = source.commit(&commit, sync) {
            tracing::warn!(error = %e, "committing checkpointed offsets failed; the next checkpoint retries");
        }
        Ok(())
    }

    /// Tells metrics and health how current the state on disk is: as of the oldest owned
    /// partition's last checkpoint, or now when none is owned (an idle replica has nothing to
    /// lose). The loop calls it once a [`TICK_INTERVAL`].
    fn report_age(&self, metrics: &Metrics, health: &Health) {
        let as_of = self
            .durable
            .values()
            .min()
            .copied()
            .unwrap_or_else(Instant::now);
        metrics.checkpoint_current(self.scope, as_of);
        health.checkpoint_current(as_of);
    }

    /// Checkpoints `partitions` now and waits until they, and every checkpoint handed over
    /// before them, are written and their offsets committed: for revoked partitions, partitions
    /// taken over without a checkpoint, and shutdown (`sync` commits synchronously).
    fn write_now(
        &mut self,
        processor: &mut Processor,
        partitions: &[i32],
        source: &KafkaSource,
        sink: &KafkaSink,
        metrics: &Metrics,
        sync: bool,
    ) -> anyhow::Result<()> {
        // The periodic checkpoint under way first, so that files are written in the order
        // their states were taken.
        self.encode_slice(processor, Duration::MAX)?;
        self.flush(sink, metrics)?;
        for &p in partitions {
            self.submit(processor, p)?;
        }
        let written = self.writer.wait_all()?;
        self.settle(written, source, metrics, sync)
    }

    /// One pass's share of the periodic checkpoints: books the writes finished since the last
    /// pass, then encodes a slice of the checkpoint under way or, with none under way, takes
    /// the checkpoint of the partition most overdue, if one is. A partition unchanged since its
    /// last checkpoint is only marked current.
    fn step(
        &mut self,
        processor: &mut Processor,
        source: &KafkaSource,
        sink: &KafkaSink,
        metrics: &Metrics,
    ) -> anyhow::Result<()> {
        let finished = self.writer.finished()?;
        if !finished.is_empty() {
            self.settle(finished, source, metrics, false)?;
        }
        if self.encoding.is_some() {
            return self.encode_slice(processor, CHECKPOINT_SLICE);
        }
        let now = Instant::now();
        let Some(p) = due(&self.taken, now, self.interval) else {
            return Ok(());
        };
        if self.dirty.contains(&p) {
            self.flush(sink, metrics)?;
            self.begin(processor, p)?;
            self.encode_slice(processor, CHECKPOINT_SLICE)
        } else {
            self.taken.insert(p, now);
            // Current now, unless a write of it is still under way (the write's report makes
            // it current as of when it was taken).
            if self.writer.in_flight() == 0
                && let Some(at) = self.durable.get_mut(&p)
            {
                *at = now;
            }
            Ok(())
        }
    }

    /// Stops tracking partitions this instance no longer owns.
    fn forget(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.positions.remove(p);
            self.dirty.remove(p);
            self.taken.remove(p);
            self.durable.remove(p);
        }
    }
}

/// Restores newly assigned partitions from their checkpoints, reads back the alerts written
/// since each checkpoint to seed the alert gates, and writes a first checkpoint for partitions
/// that had none (so that a crash before the first periodic checkpoint still knows where the
/// alerts topic ended).
#[allow(clippy::too_many_arguments)]
fn take_over(
    assigned: &[i32],
    loaded: &Loaded,
    processor: &mut Processor,
    ckpts: &mut Checkpoints,
    settings: &ClientSettings,
    source: &KafkaSource,
    sink: &KafkaSink,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut found: BTreeMap<i32, Option<Checkpoint>> = BTreeMap::new();
    {
        let mut l = loaded
            .lock()
            .map_err(|_| anyhow::anyhow!("checkpoint loader poisoned"))?;
        for p in assigned {
            match l.remove(p) {
                Some(Ok(c)) => {
                    found.insert(*p, c.map(|(c, _)| c));
                }
                Some(Err(e)) => anyhow::bail!(e),
                None => {
                    found.insert(*p, None);
                }
            }
        }
    }
    // Where to read the alerts topic from, per input partition and in all.
    let mut seed_from: BTreeMap<i32, BTreeMap<i32, i64>> = BTreeMap::new();
    let mut read_from: BTreeMap<i32, i64> = BTreeMap::new();
    let mut keys = 0u64;
    let mut fresh = Vec::new();
    let mut restored_offsets = BTreeMap::new();
    for (p, c) in found {
        processor.drop_partition(p);
        match c {
            Some(c) => {
                if c.meta.alerts_topic == ckpts.alerts_topic {
                    for (ap, o) in &c.meta.alerts_end {
                        let e = read_from.entry(*ap).or_insert(*o);
                        *e = (*e).min(*o);
                    }
                    seed_from.insert(p, c.meta.alerts_end.clone());
                }
                ckpts.positions.insert(p, c.meta.next_offset);
                if c.meta.next_offset >= 0 {
                    restored_offsets.insert(p, c.meta.next_offset);
                }
                tracing::info!(
                    partition = p,
                    next_offset = c.meta.next_offset,
                    "restoring partition state from its checkpoint"
                );
                keys += processor.restore(c);
            }
            None => {
                ckpts.positions.insert(p, -1);
                fresh.push(p);
            }
        }
    }
    let (records, ends) =
        cordon_connectors::read_to_end(settings, &ckpts.alerts_topic, &read_from, SEED_TIMEOUT)
            .context("reading back the alerts written since the last checkpoint")?;
    let mut seeded = 0u64;
    for r in &records {
        let Some(a) = ReadAlert::from_record(r, &ckpts.topic) else {
            continue;
        };
        let covered = seed_from
            .get(&a.partition)
            .is_some_and(|from| r.offset >= from.get(&r.partition).copied().unwrap_or(0));
        if covered
            && processor.seed_alert(
                a.partition,
                &a.rule_id,
                a.version,
                &a.entity,
                &a.alert_id,
                a.new,
                a.window_end,
            )
        {
            seeded += 1;
        }
    }
    for (p, end) in ends {
        let e = ckpts.alerts_end.entry(p).or_insert(end);
        *e = (*e).max(end);
    }
    // The restored checkpoints' offsets, committed now: an engine that died between writing a
    // checkpoint and committing its offset left the group's commit behind the state, and a
    // partition without new input is not checkpointed (nor committed) again, so its lag would
    // count messages the state already holds until new ones came.
    if let Err(e) = source.commit(&restored_offsets, false) {
        tracing::warn!(error = %e, "committing the restored checkpoints' offsets failed; the next checkpoint retries");
    }
    ckpts.write_now(processor, &fresh, source, sink, metrics, false)?;
    let now = Instant::now();
    for (p, at) in spread(assigned, now, ckpts.interval) {
        ckpts.taken.insert(p, at);
        ckpts.durable.insert(p, now);
    }
    metrics.state(ckpts.scope, &processor.table_stats());
    tracing::info!(
        topic = %ckpts.topic,
        partitions = ?assigned,
        restored_keys = keys,
        alerts_read_back = records.len(),
        alerts_seeded = seeded,
        seconds = started.elapsed().as_secs_f64(),
        "partitions taken over"
    );
    Ok(())
}

/// An alert read back from the alerts topic, from the headers the engine writes beside it.
struct ReadAlert {
    partition: i32,
    rule_id: String,
    version: u32,
    entity: String,
    alert_id: String,
    new: bool,
    window_end: i64,
}

impl ReadAlert {
    /// `None` for records without Cordon's headers or from another input topic.
    fn from_record(r: &ReadRecord, topic: &str) -> Option<Self> {
        let h = |name: &str| {
            r.headers
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| std::str::from_utf8(v).ok())
        };
        if h(HEADER_SOURCE_TOPIC)? != topic {
            return None;
        }
        Some(Self {
            partition: h(HEADER_SOURCE_PARTITION)?.parse().ok()?,
            rule_id: h(HEADER_RULE_ID)?.to_owned(),
            version: h(HEADER_RULE_VERSION)?.parse().ok()?,
            entity: String::from_utf8(r.key.clone()?).ok()?,
            alert_id: h(HEADER_ALERT_ID)?.to_owned(),
            new: h(HEADER_STATUS)? == "new",
            window_end: h(HEADER_WINDOW_END)?.parse().ok()?,
        })
    }
}

/// One loop: the whole engine, or one stage of two (`run`). Its rule reloads come from
/// `reloads`, whose watch the caller creates first, so that a SIGHUP during start-up reloads
/// rather than kills (its default action).
fn run_loop(
    config: &Config,
    run: &StageRun,
    rules: &RuleSet,
    mut reloads: Reloads,
    stop: Stop<'_>,
    metrics: &Metrics,
    health: &Health,
) -> anyhow::Result<RunTotals> {
    let settings = ClientSettings {
        brokers: config.source.brokers.clone(),
        properties: config.source.properties.clone(),
    };
    let mut sink_settings = settings.clone();
    sink_settings
        .properties
        .extend(config.sink.properties.clone());

    // Before Kafka, so that a wrong store fails start-up at once, naming its key.
    let store = checkpoint_store(config, &run.topic)?;
    let source = KafkaSource::new(&settings, &run.group, &run.topic)
        .context("config key `source.properties`")?
        .read_headers(run.scope() == Scope::Repartition);
    let sink = KafkaSink::new(&sink_settings).context("config key `sink.properties`")?;
    let mut outputs = vec![config.sink.topic.as_str(), &config.dead_letter.topic];
    outputs.extend(run.forward_to.as_deref());
    let topics_ready = wait_for_topics(|t| source.check_topics(&[&run.topic], t), stop)?
        && wait_for_topics(|t| sink.check_topics(&outputs, t), stop)?;
    if !topics_ready {
        tracing::info!("shut down before Kafka answered");
        return Ok(RunTotals::default());
    }
    // Read once: an entity's partition depends on the count, so adding partitions to the
    // repartition topic takes a restart of every replica (README, "Repartitioning").
    let mut forwarding = match &run.forward_to {
        Some(topic) => {
            let partitions = sink
                .partition_count(topic, STARTUP_TIMEOUT)
                .with_context(|| format!("config key `repartition.topic`: `{topic}`"))?;
            Some(Forwarding {
                topic: topic.clone(),
                // A frame also carries a header: held to the budget, not to the bare limit.
                framer: Framer::new(
                    partitions,
                    config.repartition.max_frame_bytes.min(run.budget),
                ),
            })
        }
        None => None,
    };

    let loaded: Loaded = Arc::default();
    {
        let store = store.clone();
        let loaded = loaded.clone();
        source.on_assign(Box::new(move |partitions| {
            let mut offsets = BTreeMap::new();
            let Ok(mut l) = loaded.lock() else {
                return offsets;
            };
            for &p in partitions {
                let c = store.load(p).map_err(|e| e.to_string());
                if let Ok(Some((c, _))) = &c
                    && c.meta.next_offset >= 0
                {
                    offsets.insert(p, c.meta.next_offset);
                }
                l.insert(p, c);
            }
            offsets
        }));
    }
    source.subscribe()?;
    health.set_consuming(true);
    tracing::info!(
        topic = %run.topic,
        group = %run.group,
        forward_to = run.forward_to.as_deref().unwrap_or(""),
        forward_partitions = forwarding.as_ref().map_or(0, |f| f.framer.partitions()),
        state_dir = %config.state.dir.display(),
        "cordon started"
    );

    let core = CoreConfig {
        max_message_bytes: config.source.max_message_bytes,
        allowed_lateness_ms: config.time.allowed_lateness.as_millis() as i64,
        max_future_skew_ms: config.time.max_future_skew.as_millis() as i64,
        instance: instance_name(),
        max_keys: config.state.max_keys,
        clamp_future: config.time.future_events == FutureEvents::Clamp,
        sketch_seed: store
            .sketch_seed()
            .context("config key `state.dir`: the sketch seed")?,
        stage: run.stage.clone(),
        max_forward_bytes: run.budget,
    };
    let mut processor = Processor::new(rules, core);
    if let Stage::Source { input_entity } = &run.stage
        && !processor
            .plan()
            .tables
            .iter()
            .any(|t| t.entity_text.trim() == input_entity.trim())
    {
        tracing::warn!(
            input_entity = %input_entity,
            "no rule groups by repartition.input_entity: every rule runs in the repartition stage and every event is forwarded once per entity; set it to the entity the input topic is keyed by, as the rules write it"
        );
    }
    let mut ckpts = Checkpoints {
        writer: CheckpointWriter::new(store)?,
        scope: run.scope(),
        topic: run.topic.clone(),
        alerts_topic: config.sink.topic.clone(),
        interval: config.state.checkpoint_interval,
        positions: BTreeMap::new(),
        dirty: BTreeSet::new(),
        alerts_end: BTreeMap::new(),
        taken: BTreeMap::new(),
        durable: BTreeMap::new(),
        encoding: None,
    };
    let mut totals = RunTotals::default();
    let mut records: Vec<SourceRecord> = Vec::with_capacity(config.source.max_batch_messages);
    let mut expiry = Walk::new(EXPIRY_INTERVAL);
    let mut last_report = Instant::now();
    let mut reported = RunTotals::default();
    let mut last_tick = Instant::now();
    let mut state_stats = Walk::new(STATE_STATS_INTERVAL);
    metrics.state(run.scope(), &processor.table_stats());

    // One output for every batch: it keeps its vectors' room ([`Output::clear`]).
    let mut out = Output::default();
    while !stop.asked() {
        health.heartbeat();
        records.clear();
        source.poll_batch(
            config.source.max_batch_messages,
            match run.scope() {
                Scope::Input => usize::MAX,
                Scope::Repartition => REPARTITION_BATCH_BYTES,
            },
            config.source.max_batch_wait,
            &mut records,
        );
        // The repartition stage takes a set the input stage reloaded before the batch it
        // polled: the input stage hands the set over before it forwards anything under it, so
        // the batch's events for an entity the set adds are counted, not dropped as unrouted.
        if let Reloads::From(from_first) = &reloads
            && let Some(set) = from_first.try_iter().last()
        {
            let summary = processor.replace_rules(&set);
            tracing::info!(
                kept = summary.kept.len(),
                fresh = summary.fresh.len(),
                removed = summary.removed.len(),
                "repartition stage: rules reloaded"
            );
            metrics.state(run.scope(), &processor.table_stats());
            health.set_rules_loaded(set.len());
        }
        // A rebalance ends a poll, so these records all come from partitions owned before it.
        // Records below a restored checkpoint's offset (a commit that did not land) are
        // already in the state.
        records.retain(|r| r.offset >= ckpts.positions.get(&r.partition).copied().unwrap_or(-1));
        if !records.is_empty() {
            let started = Instant::now();
            process_batch(
                &mut processor,
                &records,
                config,
                run,
                &sink,
                forwarding.as_mut(),
                metrics,
                &mut out,
            )?;
            metrics.batch_done(run.scope(), &out, started.elapsed());
            health.batch_done();
            health.set_assigned(source.assigned_partitions());
            totals.messages += records.len() as u64;
            totals.events += out.stats.events;
            totals.alerts += out.alerts.len() as u64;
            totals.dead_letters += out.dead_letters.len() as u64;
            for r in &records {
                let next = ckpts.positions.entry(r.partition).or_insert(-1);
                *next = (*next).max(r.offset + 1);
                ckpts.dirty.insert(r.partition);
            }
        }
        let revoked = source.take_revoked();
        if !revoked.is_empty() {
            // Checkpoint what was processed, so the partition's next owner (or this instance,
            // when it gets the partition back) resumes from here.
            ckpts.write_now(&mut processor, &revoked, &source, &sink, metrics, false)?;
            for &p in &revoked {
                processor.drop_partition(p);
            }
            ckpts.forget(&revoked);
        }
        let assigned = source.take_assigned();
        if !assigned.is_empty() {
            take_over(
                &assigned,
                &loaded,
                &mut processor,
                &mut ckpts,
                &settings,
                &source,
                &sink,
                metrics,
            )?;
            health.set_assigned(source.assigned_partitions());
        }
        ckpts.step(&mut processor, &source, &sink, metrics)?;
        // The input stage (or the single one) reloads after its batch; the repartition stage
        // takes the sets it hands over before its batches, above.
        if let Reloads::Watch(watch, to_second) = &mut reloads {
            match watch.poll() {
                Some(Ok(set)) => {
                    let summary = processor.replace_rules(&set);
                    metrics.rule_reload_succeeded(&set, &summary);
                    metrics.state(run.scope(), &processor.table_stats());
                    health.set_rules_loaded(set.len());
                    health.set_rules_error(None);
                    // The repartition stage takes it between its batches; a closed channel
                    // means it has stopped, and so will this loop.
                    if let Some(to) = to_second {
                        let _ = to.send(set);
                    }
                }
                Some(Err(e)) => {
                    metrics.rule_reload_failed(&e);
                    health.set_rules_error(Some(e));
                }
                None => {}
            }
        }
        expiry.run(|| processor.expire_idle(now_ms()));
        state_stats.run(|| metrics.state(run.scope(), &processor.table_stats()));
        if last_tick.elapsed() >= TICK_INTERVAL {
            metrics.consumer_lag(&run.topic, &source.consumer_lag());
            health.set_assigned(source.assigned_partitions());
            // An instance that owns no partition has nothing on disk to fall behind.
            ckpts.report_age(metrics, health);
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
    tracing::info!("shutting down: flushing output, checkpointing and committing offsets");
    health.set_consuming(false);
    metrics.tick(true);
    sink.flush(FLUSH_TIMEOUT)
        .inspect_err(|e| metrics.sink_error("output", e))?;
    let owned: Vec<i32> = ckpts.positions.keys().copied().collect();
    ckpts.write_now(&mut processor, &owned, &source, &sink, metrics, true)?;
    tracing::info!(
        topic = %run.topic,
        messages = totals.messages,
        events = totals.events,
        alerts = totals.alerts,
        dead_letters = totals.dead_letters,
        checkpointed_partitions = ?owned,
        "cordon stopped"
    );
    Ok(totals)
}

/// Processes one batch into `out`, emptied first, and queues the output for the broker; the
/// acknowledgements are awaited by the next checkpoint ([`Checkpoints::write`]).
/// Logging and counting the batch is the caller's ([`Metrics::batch_done`]), except for a
/// failed write, which is counted here ([`Metrics::sink_error`]) before it stops the engine.
/// Eight arguments: the loop's parts, each borrowed differently (the processor and the output
/// mutably, the forwarding optionally); a struct of them would be built for this call alone.
#[allow(clippy::too_many_arguments)]
fn process_batch(
    processor: &mut Processor,
    records: &[SourceRecord],
    config: &Config,
    run: &StageRun,
    sink: &KafkaSink,
    forwarding: Option<&mut Forwarding>,
    metrics: &Metrics,
    out: &mut Output,
) -> anyhow::Result<()> {
    let inputs = inputs_of(records, run.scope() == Scope::Repartition);
    out.clear();
    processor.process(&inputs, now_ms(), out)?;
    for a in &out.alerts {
        let payload = match config.sink.format {
            SinkFormat::Native => serde_json::to_vec(&a.alert),
            SinkFormat::Ocsf => serde_json::to_vec(&crate::ocsf::detection_finding(a)),
        }
        .context("serializing an alert")?;
        let version = a.alert.rule.version.to_string();
        let end = a.times.window_end.to_string();
        let partition = a.partition.to_string();
        let status = match a.alert.status {
            Status::New => "new",
            Status::Update => "update",
        };
        let headers: [(&str, &[u8]); 7] = [
            (HEADER_ALERT_ID, a.alert.alert_id.as_bytes()),
            (HEADER_STATUS, status.as_bytes()),
            (HEADER_RULE_ID, a.alert.rule.id.as_bytes()),
            (HEADER_RULE_VERSION, version.as_bytes()),
            (HEADER_WINDOW_END, end.as_bytes()),
            (HEADER_SOURCE_TOPIC, run.topic.as_bytes()),
            (HEADER_SOURCE_PARTITION, partition.as_bytes()),
        ];
        sink.send(
            &config.sink.topic,
            Some(a.key.as_bytes()),
            &payload,
            &headers,
        )
        .inspect_err(|e| metrics.sink_error("an alert", e))?;
    }
    for d in &out.dead_letters {
        let partition = d.partition.to_string();
        let offset = d.offset.to_string();
        let mut headers: Vec<(&str, &[u8])> = vec![
            ("cordon.reason", d.reason.as_str().as_bytes()),
            ("cordon.detail", d.detail.as_bytes()),
            ("cordon.source.topic", run.topic.as_bytes()),
            ("cordon.source.partition", partition.as_bytes()),
            ("cordon.source.offset", offset.as_bytes()),
        ];
        if d.redacted {
            headers.push(("cordon.redacted", b"prompt"));
        }
        let (key, payload, cut) = fit(d.key.as_deref(), &d.payload, run.budget);
        let whole = cut.map(|n| n.to_string());
        if let Some(n) = &whole {
            headers.push(("cordon.truncated", n.as_bytes()));
        }
        sink.send(&config.dead_letter.topic, key, payload, &headers)
            .inspect_err(|e| metrics.sink_error("a dead letter", e))?;
    }
    if let Some(Forwarding { topic, framer }) = forwarding {
        let headers: [(&str, &[u8]); 1] = [(HEADER_FRAME, frame::FRAME_VERSION)];
        let mut emit = |partition: i32, bytes: &[u8]| {
            sink.send_to(topic, partition, bytes, &headers)
                .inspect_err(|e| metrics.sink_error("forwarded events", e))
        };
        for f in &out.forwards {
            let payload = match &f.payload {
                Some(rewritten) => rewritten.as_slice(),
                None => records[f.input].payload.as_slice(),
            };
            for (entity, hash) in out.keys_of(f) {
                framer.push(entity, *hash, f.partition, f.offset, payload, &mut emit)?;
            }
        }
        framer.finish(&mut emit)?;
    }
    // No flush here: the broker acknowledges while the next batches are processed, and the
    // next checkpoint waits for every acknowledgement before it covers this batch.
    sink.poll();
    Ok(())
}

/// [`StageRun::budget`] for `config`.
fn message_budget(config: &Config) -> anyhow::Result<usize> {
    Ok(config
        .producer_message_max()?
        .saturating_sub(MESSAGE_HEADROOM)
        .max(1))
}

/// A dead letter's key and payload held to `budget` bytes together, so that a message too
/// large for the producer is still dead-lettered (its start) instead of failing the send and
/// stopping the engine on every restart. Returns the payload's whole length when it was cut.
fn fit<'a>(
    key: Option<&'a [u8]>,
    payload: &'a [u8],
    budget: usize,
) -> (Option<&'a [u8]>, &'a [u8], Option<usize>) {
    let key = key.map(|k| &k[..k.len().min(budget)]);
    let room = budget - key.map_or(0, <[u8]>::len);
    if payload.len() <= room {
        (key, payload, None)
    } else {
        (key, &payload[..room], Some(payload.len()))
    }
}

/// Where the input stage forwards events, and the frames it packs them in.
struct Forwarding {
    /// The repartition topic.
    topic: String,
    framer: Framer,
}

/// The processor's inputs for a batch of `records`. For the repartition stage
/// (`repartitioned`), each frame's events, each with the frame's partition and offset; a
/// record that is not a frame this build reads goes as it came, without
/// [`Input::forwarded`], and the processor dead-letters it.
fn inputs_of(records: &[SourceRecord], repartitioned: bool) -> Vec<Input<'_>> {
    let mut inputs = Vec::with_capacity(records.len());
    for r in records {
        let version = r
            .headers
            .iter()
            .find(|(k, _)| repartitioned && k == HEADER_FRAME)
            .map(|(_, v)| v.as_slice());
        if let Some(version) = version {
            let first = inputs.len();
            let read = frame::unpack(version, &r.payload, |forwarded, payload| {
                inputs.push(Input {
                    partition: r.partition,
                    offset: r.offset,
                    key: None,
                    payload,
                    forwarded: Some(forwarded),
                });
            });
            match read {
                Ok(()) => continue,
                Err(e) => {
                    inputs.truncate(first);
                    // Debug only: the dead-letter summary warns, at most every interval, with
                    // the count of `not_forwarded`; this says why each frame did not read.
                    tracing::debug!(
                        partition = r.partition,
                        offset = r.offset,
                        error = %e,
                        "a frame on the repartition topic does not read; it goes to the dead-letter topic whole"
                    );
                }
            }
        }
        inputs.push(Input {
            partition: r.partition,
            offset: r.offset,
            key: r.key.as_deref(),
            payload: &r.payload,
            forwarded: None,
        });
    }
    inputs
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(30);

    #[test]
    fn a_dead_letter_too_large_for_the_producer_is_cut_to_fit() {
        let payload = vec![b'x'; 100];
        assert_eq!(
            fit(Some(b"key"), &payload, 200),
            (Some(&b"key"[..]), &payload[..], None)
        );
        let (key, cut, whole) = fit(Some(b"key"), &payload, 50);
        assert_eq!((key, cut.len(), whole), (Some(&b"key"[..]), 47, Some(100)));
        assert_eq!(fit(None, &payload, 100), (None, &payload[..], None));
        assert_eq!(fit(None, &payload, 99).2, Some(100));
        // A key larger than the budget is cut too, and the payload goes empty.
        let key = vec![b'k'; 80];
        let (k, p, whole) = fit(Some(&key), &payload, 60);
        assert_eq!(
            (k.map(<[u8]>::len), p.len(), whole),
            (Some(60), 0, Some(100))
        );
        // The budget: the producer's limit less the headroom.
        let config = Config::from_yaml(
            "source: {brokers: b:1}\nsink: {properties: {message.max.bytes: '100000'}}\n",
            "f",
            Vec::new(),
        )
        .expect("valid");
        assert_eq!(
            message_budget(&config).expect("a budget"),
            100_000 - MESSAGE_HEADROOM
        );
    }

    #[test]
    fn the_repartition_stage_reads_each_frames_events_and_passes_other_records_whole() {
        use crate::processor::Forwarded;
        let record = |offset: i64, headers: &[(&str, &[u8])], payload: Vec<u8>| SourceRecord {
            partition: 1,
            offset,
            key: Some(b"k".to_vec()),
            payload,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.to_vec()))
                .collect(),
        };
        let entity: Arc<str> = "ip_prefix(ip, 24, 48)".into();
        let mut framer = Framer::new(1, frame::DEFAULT_MAX_FRAME_BYTES);
        let mut body = Vec::new();
        let mut keep = |_: i32, frame: &[u8]| -> Result<(), std::convert::Infallible> {
            body = frame.to_vec();
            Ok(())
        };
        for (offset, payload) in [(1234, b"{\"a\":1}"), (1235, b"{\"a\":2}")] {
            let hash = frame::value_hash(b"198.51.100.0/24");
            let Ok(()) = framer.push(&entity, hash, 3, offset, payload, &mut keep);
        }
        let Ok(()) = framer.finish(&mut keep);
        let frame_header: [(&str, &[u8]); 2] =
            [("other", b"x"), (HEADER_FRAME, frame::FRAME_VERSION)];
        let mut damaged = body.clone();
        damaged.pop();
        let records = [
            record(40, &frame_header, body.clone()),
            record(41, &[], b"{}".to_vec()),
            record(42, &frame_header, damaged),
            record(43, &[(HEADER_FRAME, b"9")], body.clone()),
        ];
        let inputs = inputs_of(&records, true);
        let seen: Vec<_> = inputs
            .iter()
            .map(|i| (i.offset, i.forwarded, i.payload.len()))
            .collect();
        let from = |offset| {
            Some(Forwarded {
                entity: "ip_prefix(ip, 24, 48)",
                partition: 3,
                offset,
            })
        };
        assert_eq!(
            seen,
            [
                (40, from(1234), 7),
                (40, from(1235), 7),
                (41, None, 2),
                (42, None, body.len() - 1),
                (43, None, body.len()),
            ]
        );
        // The input stage reads no frames: a record is an event, whatever its headers.
        let inputs = inputs_of(&records[..1], false);
        assert_eq!(inputs.len(), 1);
        assert_eq!(inputs[0].forwarded, None);
    }

    #[test]
    fn partitions_taken_over_together_are_due_one_after_another_over_an_interval() {
        let now = Instant::now();
        let taken: BTreeMap<i32, Instant> = spread(&[0, 1, 2, 3, 4, 5], now, INTERVAL)
            .into_iter()
            .collect();
        // None is due at once; over the next interval each falls due in its turn, a sixth of
        // an interval apart, the last taken over first.
        assert_eq!(due(&taken, now, INTERVAL), None);
        let mut order = Vec::new();
        let mut taken = taken;
        for step in 1..=6u32 {
            let at = now + INTERVAL * step / 6;
            let p = due(&taken, at, INTERVAL).expect("one partition due per sixth");
            taken.insert(p, at);
            assert_eq!(due(&taken, at, INTERVAL), None, "only one at a time");
            order.push(p);
        }
        assert_eq!(order, [5, 4, 3, 2, 1, 0]);
        // Then each every interval, still a sixth apart.
        let p = due(&taken, now + INTERVAL * 7 / 6, INTERVAL);
        assert_eq!(p, Some(5));
    }

    #[test]
    fn the_partition_checkpointed_longest_ago_is_due_first() {
        let now = Instant::now();
        let taken = BTreeMap::from([
            (3, now - Duration::from_secs(31)),
            (7, now - Duration::from_secs(45)),
            (9, now - Duration::from_secs(10)),
        ]);
        assert_eq!(due(&taken, now, INTERVAL), Some(7));
        assert_eq!(due(&taken, now, Duration::from_secs(60)), None);
        assert_eq!(due(&BTreeMap::new(), now, INTERVAL), None);
    }

    #[test]
    fn one_partition_taken_over_is_due_a_whole_interval_later() {
        let now = Instant::now();
        assert_eq!(spread(&[4], now, INTERVAL), [(4, now)]);
        assert!(spread(&[], now, INTERVAL).is_empty());
    }
}
