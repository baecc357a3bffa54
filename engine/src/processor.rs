//! The pure core: message bytes in, alerts and dead letters out. No I/O.
//!
//! A micro-batch of messages is split by input partition; each partition has its own watermark
//! and its own window and gate state per rule, so a partition's state can move with the
//! partition. For each partition sub-batch the processor decodes the messages into one Arrow
//! batch, evaluates each rule's filter, entity and feature arguments over the whole batch with
//! DataFusion, updates the touched keys row by row, and then evaluates each rule's condition
//! once over all touched keys.

use crate::agg::{Input as AggInput, InputKind, SlotKind};
use crate::checkpoint::{Checkpoint, CheckpointMeta, CheckpointRef, encode_head};
use crate::codec::{self, CodecError};
use crate::decode::{
    Decoded, EventBatchBuilder, Reason, Rejection, TimeCheck, dead_letter_payload, forward_payload,
};
use crate::fingerprint::Fingerprints;
use crate::gate::{
    ALERT_SCHEMA, Alert, AlertEngine, AlertEntity, AlertRule, AlertWindow, Decision, Gate, rfc3339,
};
use crate::keys::{KeyTable, Slot, key_of};
use crate::plan::{Conv, Plan, RulePlan, SlotSpec};
use crate::remap::{Layout, Remap};
use crate::window::{KeyState, MAX_BATCH_SLOT, SAMPLE_IDS, Update, WindowSnapshot, may_reach};
use cordon_rules::{CompiledRule, RuleSet};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, RecordBatch, StringArray};
use datafusion::arrow::buffer::BooleanBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::DataFusionError;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

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
    /// For a message of the repartition topic: what the first stage forwarded it for, from
    /// its frame ([`Stage::Repartitioned`], [`crate::frame`]); `None` elsewhere.
    pub forwarded: Option<Forwarded<'a>>,
}

/// Where a message of the repartition topic came from: the entity it was forwarded for and
/// the input partition and offset of the event (a record of a [`crate::frame`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarded<'a> {
    /// The entity expression, as the plan writes it ([`crate::plan::ExprCol::text`]).
    pub entity: &'a str,
    /// The event's input partition.
    pub partition: i32,
    /// The event's offset there.
    pub offset: i64,
}

/// Which part of the work a processor does. One process runs one [`Stage::Whole`], or, with
/// `repartition.topic` set, one [`Stage::Source`] and one [`Stage::Repartitioned`], each with
/// the whole rule set: a table belongs to one of the two by its entity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Stage {
    /// Every table, from the input topic.
    #[default]
    Whole,
    /// Reads the input topic: keeps the tables whose entity is `input_entity` (the entity the
    /// input is keyed by), and forwards each event once for every other entity the rules
    /// group by ([`Output::forwards`]).
    Source {
        /// `repartition.input_entity`.
        input_entity: String,
    },
    /// Reads the repartition topic: keeps every table but `input_entity`'s, each from the
    /// events forwarded for its entity. Events the first stage forwarded again after a replay
    /// (at or below the highest offset already counted for their input partition and entity)
    /// are dropped ([`BatchStats::replayed`]), and lateness is not judged again: the first
    /// stage judged it against the event's own partition.
    Repartitioned {
        /// `repartition.input_entity`.
        input_entity: String,
    },
}

impl Stage {
    /// Whether a table of entity `entity` (as the rules write it) belongs to this stage.
    fn owns(&self, entity: &str) -> bool {
        match self {
            Stage::Whole => true,
            Stage::Source { input_entity } => entity.trim() == input_entity.trim(),
            Stage::Repartitioned { input_entity } => entity.trim() != input_entity.trim(),
        }
    }
}

/// An event to forward to the repartition topic ([`Stage::Source`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// Its index in the messages given to [`Processor::process`].
    pub input: usize,
    /// Input partition.
    pub partition: i32,
    /// Input offset.
    pub offset: i64,
    /// The event rewritten without its raw prompt text ([`crate::decode::forward_payload`]);
    /// `None` when it had none, and goes as it came (the input's payload).
    pub payload: Option<Vec<u8>>,
    /// Where in [`Output::forward_keys`] the entities it goes to are.
    pub keys: std::ops::Range<usize>,
}

impl<'a> Input<'a> {
    /// Unkeyed messages of one partition at consecutive offsets from `first_offset`: what a
    /// file, a fixture or a benchmark feeds the core.
    pub fn sequence(
        partition: i32,
        first_offset: i64,
        payloads: impl IntoIterator<Item = &'a [u8]>,
    ) -> Vec<Input<'a>> {
        payloads
            .into_iter()
            .zip(first_offset..)
            .map(|(payload, offset)| Input {
                partition,
                offset,
                key: None,
                payload,
                forwarded: None,
            })
            .collect()
    }
}

/// An alert ready for the sink.
#[derive(Debug, Clone)]
pub struct AlertRecord {
    /// Kafka key: the entity value.
    pub key: String,
    /// The alert.
    pub alert: Alert,
    /// The alert's times in epoch ms (the alert carries them as RFC 3339 text).
    pub times: AlertTimes,
    /// The input partition whose state raised it.
    pub partition: i32,
    /// The rule's description (for formats that carry it, such as OCSF).
    pub description: String,
}

/// An alert's times in epoch ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertTimes {
    /// Earliest event in the window.
    pub first_seen: i64,
    /// Latest event in the window.
    pub last_seen: i64,
    /// Wall clock of detection.
    pub detected: i64,
    /// End (exclusive) of the window that matched.
    pub window_end: i64,
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
    /// Matches the gate suppressed, per rule id.
    pub suppressed_by_rule: BTreeMap<String, u64>,
    /// Events older than their key's window (counted nowhere else).
    pub too_old: u64,
    /// New keys sampled (one in [`SPLIT_SAMPLE`], by the key's own bits, so that a split
    /// entity is sampled in every partition it reaches) and looked up in the same table of
    /// every other partition the processor holds, by state table name. State is kept per
    /// input partition, so a key that two partitions hold is an entity whose events each
    /// counts apart: an entity the input topic is not keyed by (an IP range, when the gateway
    /// keys by account), or any entity when the producer does not key by entity at all. Only
    /// the partitions this processor holds are seen.
    pub split_checks: BTreeMap<String, SplitChecks>,
    /// Messages to write to the repartition topic ([`Stage::Source`]: each event once per
    /// entity it has a value for).
    pub forwarded: u64,
    /// Forwarded events dropped as counted already ([`Stage::Repartitioned`]).
    pub replayed: u64,
    /// Forwarded events for an entity no running rule groups by (a reload removed it).
    pub unrouted: u64,
}

/// What the split check found for one state table in one batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SplitChecks {
    /// New keys sampled while the processor held other partitions.
    pub checked: u64,
    /// Of those, keys another partition already held: that entity's events are counted
    /// apart in each partition.
    pub split: u64,
}

/// What one batch produced.
#[derive(Debug, Default)]
pub struct Output {
    /// Alerts, in the order they were raised.
    pub alerts: Vec<AlertRecord>,
    /// Dead letters, in input order per partition.
    pub dead_letters: Vec<DeadLetter>,
    /// Events for the repartition topic ([`Stage::Source`]), in input order per partition.
    pub forwards: Vec<Forward>,
    /// Per forwarded event and entity ([`Forward::keys`]): the entity expression
    /// ([`Forwarded::entity`]) and the hash of the event's value of it, which picks its
    /// partition of the repartition topic ([`crate::frame::value_hash`]). One vector for the
    /// batch, so that a forward costs no allocation of its own.
    pub forward_keys: Vec<(Arc<str>, u64)>,
    /// Counters.
    pub stats: BatchStats,
}

impl Output {
    /// Empties it for the next batch and keeps its vectors' room. A fresh output for every
    /// batch grew `forwards` and `forward_keys` from nothing each time, reallocating and
    /// copying them a dozen times a batch: about 100 instructions an event in the input stage
    /// (callgrind, `throughput --stage source`, the 40k mix).
    pub fn clear(&mut self) {
        self.alerts.clear();
        self.dead_letters.clear();
        self.forwards.clear();
        self.forward_keys.clear();
        self.stats = BatchStats::default();
    }

    /// The entities `forward` goes to, with its values' hashes ([`Output::forward_keys`]).
    pub fn keys_of(&self, forward: &Forward) -> &[(Arc<str>, u64)] {
        self.forward_keys
            .get(forward.keys.clone())
            .unwrap_or_default()
    }
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
    /// `state.max_keys`: most keys across tables and partitions before LRU eviction.
    pub max_keys: u64,
    /// `time.future_events: clamp`: an event stamped past the wall clock plus
    /// `max_future_skew` counts at that limit instead of being dead-lettered as `future`.
    pub clamp_future: bool,
    /// Mixed into each value's hash before it reaches a `distinct`, `top_share` or `entropy`
    /// state, so that which HyperLogLog register a value raises cannot be worked out without
    /// it: with DataSketches' fixed hash alone, a sender who controls the values (prompts) could
    /// grind offline for values that fall into a few registers and make `distinct` undercount.
    /// `cordon run` keeps one per state directory, or draws one per process with object
    /// storage ([`crate::checkpoint::CheckpointStore::sketch_seed`]); 0 (the unseeded hash)
    /// elsewhere, so that backtests and rule tests stay reproducible. It seeds partitions that
    /// start empty; a partition restored from a checkpoint keeps the seed recorded there.
    pub sketch_seed: u64,
    /// Which tables it keeps, and whether it forwards ([`Stage`]).
    pub stage: Stage,
    /// The largest event [`Stage::Source`] forwards (after its prompt is replaced by
    /// fingerprints): a larger one would not fit in a message of the repartition topic, and is
    /// dead-lettered as `too_large` instead (its input stage's tables have counted it).
    pub max_forward_bytes: usize,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 1 << 20,
            allowed_lateness_ms: 300_000,
            max_future_skew_ms: 60_000,
            instance: "cordon".into(),
            max_keys: 10_000_000,
            clamp_future: false,
            sketch_seed: 0,
            stage: Stage::Whole,
            max_forward_bytes: usize::MAX,
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

/// How long an input partition may send the repartition stage nothing before its clock stops
/// holding back expiry there ([`Processor::expire_idle`]): one that is quiet is not behind.
pub const SOURCE_IDLE_MS: i64 = 60_000;

/// One input partition's events as the repartition stage has seen them: the newest event time,
/// and the wall clock of the batch that brought its last event.
#[derive(Debug, Clone, Copy)]
struct SourceClock {
    watermark: i64,
    heard_ms: i64,
}

/// One partition's state: its watermark, its keys per table, its gate per rule.
#[derive(Debug)]
struct PartitionState {
    watermark: i64,
    /// Per input partition, the events forwarded from it ([`Stage::Repartitioned`]): a key or
    /// gate entry expires only past the slowest input partition still sending, so that one
    /// that runs behind the others (a replica catching up) does not find its entities'
    /// windows dropped for the faster ones' time. Not checkpointed: a restored partition
    /// expires nothing until its inputs are heard from again.
    sources: BTreeMap<i32, SourceClock>,
    /// The seed hashed into this partition's sketch values: the processor's
    /// [`CoreConfig::sketch_seed`] for a partition that starts empty, the checkpoint's for a
    /// restored one ([`Checkpoint::sketch_seed`]).
    sketch_seed: u64,
    /// The highest input offset counted per entity and input partition, of the events
    /// forwarded to this partition ([`Stage::Repartitioned`]). By entity first, so that a
    /// message finds its entry without allocating the entity's text.
    forwarded: BTreeMap<String, BTreeMap<i32, i64>>,
    tables: Vec<KeyTable>,
    gates: Vec<Gate>,
}

/// What a rule reload ([`Processor::replace_rules`]) kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Rules that kept their state.
    pub kept: Vec<String>,
    /// New or changed rules, starting fresh.
    pub fresh: Vec<String>,
    /// Rules no longer in the set (or replaced by a changed version).
    pub removed: Vec<String>,
    /// Aggregates whose state carried over.
    pub kept_slots: usize,
    /// Aggregates starting empty.
    pub fresh_slots: usize,
}

/// Live keys, evictions and estimated bytes of one state table (all partitions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableStats {
    /// Table name, `entity/window/every` (a bounded label).
    pub name: String,
    /// Live keys.
    pub keys: u64,
    /// Keys evicted by `state.max_keys` since start.
    pub evictions: u64,
    /// Estimated bytes held (keys, panes, sketches, map overhead).
    pub bytes: u64,
}

/// The detection core.
#[derive(Debug)]
pub struct Processor {
    plan: Plan,
    /// Per table, whether this stage keeps it ([`Stage`]).
    owned: Vec<bool>,
    /// The entity columns the events are forwarded for, with their text ([`Stage::Source`]).
    forward: Vec<(usize, Arc<str>)>,
    kinds: Vec<Vec<SlotKind>>,
    partitions: HashMap<i32, PartitionState>,
    config: CoreConfig,
    builder: EventBatchBuilder,
    batch_seq: u32,
    live_keys: u64,
    evictions: Vec<u64>,
    /// Per-batch working buffers, kept between batches so that they are not grown again.
    scratch: Scratch,
    /// The checkpoint being encoded a little at a time, if any
    /// ([`Processor::begin_checkpoint`]).
    pending: Option<PendingCheckpoint>,
}

/// A partition's checkpoint encoded a little at a time ([`Processor::begin_checkpoint`]).
#[derive(Debug)]
struct PendingCheckpoint {
    partition: i32,
    /// The metadata, the layout and the tables' count ([`encode_head`]).
    head: Vec<u8>,
    /// Each table's parts once its snapshot is complete ([`KeyTable::take_snapshot`]).
    tables: Vec<Option<Result<[Vec<u8>; 2], CodecError>>>,
    /// The gates, encoded when the checkpoint began.
    gates: Vec<u8>,
}

/// One new key in this many (by the key's bits) is looked up in the processor's other
/// partitions ([`BatchStats::split_checks`]): a branch per new key on the hot path, and a
/// lookup per partition for the few sampled.
pub const SPLIT_SAMPLE: u64 = 64;

/// Key slots a checkpoint under way encodes between two questions of whether to go on
/// ([`Processor::continue_checkpoint_while`]): about a millisecond's worth.
pub const CHECKPOINT_CHUNK: usize = 4096;

/// The messages of one partition (and, in the repartition stage, one entity) of a batch, each
/// with its index in the batch.
type Group<'i, 'a> = Vec<(usize, &'i Input<'a>)>;

/// A finished checkpoint: its partition and its body's parts, or why it could not be encoded.
pub type CheckpointParts = (i32, Result<Vec<Vec<u8>>, CodecError>);

/// Buffers a batch fills and the next reuses.
#[derive(Debug, Default)]
struct Scratch {
    /// Per rule.
    candidates: Vec<Candidates>,
    /// The keys one table's update touched.
    touched: Vec<Touched>,
    /// The rows of the table being updated.
    rows: Rows,
    /// Entity hash columns of the last batch, for the next one's text columns. Taken fresh
    /// each batch, they landed in new pages whenever new keys had taken the freed ones.
    hashes: Vec<Vec<Option<u64>>>,
    /// The tables a partition's messages update ([`Stage`]).
    tables: Vec<usize>,
    /// The indices of the messages that decoded, row by row.
    accepted: Vec<usize>,
    /// Per planned expression, what the batch's tables and forwarding read of it
    /// ([`needed_columns`]).
    needed: Vec<Need>,
}

/// One table's view of a batch's rows, rebuilt for each table.
#[derive(Debug, Default)]
struct Rows {
    /// Each row's key slot ([`Slot::MAX`]: the row is not counted).
    slots: Vec<Slot>,
    /// Each row's key's place in the batch's touched keys (`u32::MAX`: not counted).
    keys: Vec<u32>,
    /// Per touched key: its rows, then where its run starts in `order`, then where it ends.
    counts: Vec<u32>,
    /// The counted rows grouped by key (keys in first-touch order), in row order within a key.
    order: Vec<u32>,
    /// Whether to note new keys for the split check ([`BatchStats::split_checks`]).
    sample_new_keys: bool,
    /// The new keys noted, one in [`SPLIT_SAMPLE`], with their tables: every table's, until
    /// the check after the partition's batch.
    sampled: Vec<(usize, u64)>,
}

/// One key's window waiting for a rule's condition.
/// Text (entity, request ids) stays in the batch as row numbers: only the few candidates that
/// match their condition ever turn into strings.
#[derive(Debug)]
struct Candidate {
    /// A row of the batch carrying the key's entity text.
    row: u32,
    start: i64,
    end: i64,
    first_seen: i64,
    last_seen: i64,
    events: u64,
    /// Rows of the key's latest events in this batch, oldest first (for sample request ids).
    samples: [u32; SAMPLE_IDS],
    sample_count: u8,
}

/// A rule's candidates in a batch, with their features in one run: candidate `i`'s feature
/// `f` is at `i * features + f` (no allocation per candidate).
#[derive(Debug, Default)]
struct Candidates {
    cands: Vec<Candidate>,
    values: Vec<Option<f64>>,
}

impl Candidates {
    fn feature(&self, cand: usize, f: usize) -> Option<f64> {
        let n = self.values.len() / self.cands.len().max(1);
        self.values.get(cand * n + f).copied().flatten()
    }
}

/// A key touched in the current batch: its rows (the last few, for samples).
#[derive(Debug)]
struct Touched {
    /// The key's slot in its table.
    slot: Slot,
    /// The key's last rows of the batch, a ring indexed by `seen % ROW_RING`: the last
    /// [`SAMPLE_IDS`] of them give the alert's sample request ids.
    rows: [u32; ROW_RING],
    seen: usize,
    /// A row carrying the key's entity text.
    row: usize,
    /// The key's [`KeyState::events_at_most`] after the batch's rows: read while the state
    /// is in cache, so that a key below every rule's floor is not visited again.
    held: u64,
}

/// Length of [`Touched::rows`]: the power of two from [`SAMPLE_IDS`] up, so that the ring's
/// index is a mask where `% 3` was a multiplication and a subtraction for every row and table
/// (44 instructions an event on the 40k mix, callgrind).
const ROW_RING: usize = SAMPLE_IDS.next_power_of_two();

/// An expression evaluated over a batch, converted for its use.
enum Col {
    /// A predicate's rows that are true: NULL folded into false once per batch, so that the
    /// per-row check is one bit.
    Bool(BooleanBuffer),
    Number(Float64Array),
    /// Text and the 64-bit hash of each value ([`key_of`]); no hashes for a column read for
    /// its values alone ([`Need::Values`]), so readers of the hashes check their length.
    Text(StringArray, Vec<Option<u64>>),
}

/// Where a slot's input comes from in a batch.
#[derive(Clone, Copy)]
enum Source<'a> {
    One,
    Time,
    Number(&'a Float64Array),
    /// Each row's hash, and the seed mixed into it ([`CoreConfig::sketch_seed`]).
    Hash(&'a [Option<u64>], u64),
    /// The slot's argument or a predicate has a column of another kind: it takes nothing.
    Never,
}

/// One slot's filter and input over a batch, worked out once per table and batch: the row
/// loop then reads a bit and a value per slot. Matching the slot's kind, predicates and
/// columns row by row cost about 900 instructions an event more (callgrind, 40k-account
/// throughput mix: 13,641 against 12,733).
struct SlotInput<'a> {
    /// The rows all of the slot's predicates hold for; `None` when it has none.
    when: Option<BooleanBuffer>,
    source: Source<'a>,
}

impl<'a> SlotInput<'a> {
    fn new(s: &SlotSpec, cols: &'a [Col], rows: usize, seed: u64) -> Self {
        const NEVER: SlotInput<'static> = SlotInput {
            when: None,
            source: Source::Never,
        };
        let mut when: Option<BooleanBuffer> = None;
        for p in &s.preds {
            // Every evaluated column has the batch's rows; one that had not would take none.
            let Some(Col::Bool(b)) = cols.get(*p) else {
                return NEVER;
            };
            if b.len() != rows {
                return NEVER;
            }
            when = Some(match when {
                None => b.clone(),
                Some(w) => &w & b,
            });
        }
        let source = match (s.kind.input(), s.arg.and_then(|a| cols.get(a))) {
            (InputKind::Nothing, _) => Source::One,
            (InputKind::Time, _) => Source::Time,
            (InputKind::Number, Some(Col::Number(a))) if a.len() == rows => Source::Number(a),
            (InputKind::Hash, Some(Col::Text(_, h))) if h.len() == rows => Source::Hash(h, seed),
            _ => Source::Never,
        };
        SlotInput { when, source }
    }

    /// The slot's input from row `row` (`row` is below the batch's rows), stamped `ts`.
    fn at(&self, row: usize, ts: i64) -> Option<AggInput> {
        if let Some(w) = &self.when
            && !w.value(row)
        {
            return None;
        }
        match self.source {
            Source::One => Some(AggInput::One),
            Source::Time => Some(AggInput::Time(ts)),
            Source::Number(a) => a.is_valid(row).then(|| AggInput::Number(a.value(row))),
            Source::Hash(h, seed) => h[row].map(|h| AggInput::Hash(h ^ seed)),
            Source::Never => None,
        }
    }
}

/// The rows some count slot of a table takes, which are the rows that count for its keys;
/// `None` when that is every row.
fn counted_rows(
    slots: &[SlotSpec],
    inputs: &[SlotInput<'_>],
    rows: usize,
) -> Option<BooleanBuffer> {
    let mut counted = BooleanBuffer::new_unset(rows);
    for (s, i) in slots.iter().zip(inputs) {
        if s.kind != SlotKind::Count || matches!(i.source, Source::Never) {
            continue;
        }
        match &i.when {
            None => return None,
            Some(w) => counted = &counted | w,
        }
    }
    Some(counted)
}

/// A table of a checkpoint under way that went away before its snapshot was taken: a bug, since
/// every path that drops or remaps tables completes the snapshots first.
fn lost_snapshot<T>() -> Result<T, CodecError> {
    Err(CodecError::Corrupt(
        "a table of the checkpoint under way went away before it was encoded".into(),
    ))
}

impl Processor {
    /// A processor running `rules`.
    pub fn new(rules: &RuleSet, config: CoreConfig) -> Self {
        let plan = Plan::new(rules);
        let kinds = plan
            .tables
            .iter()
            .map(|t| t.slots.iter().map(|s| s.kind).collect())
            .collect();
        let evictions = vec![0; plan.tables.len()];
        let mut builder = EventBatchBuilder::new(config.max_message_bytes);
        builder.project(&plan.columns_read());
        let (owned, forward) = roles(&plan, &config.stage);
        Self {
            plan,
            owned,
            forward,
            kinds,
            partitions: HashMap::new(),
            builder,
            config,
            batch_seq: 0,
            live_keys: 0,
            evictions,
            scratch: Scratch::default(),
            pending: None,
        }
    }

    /// Swaps in a new rule set (a hot reload), keeping what still means the same thing
    /// ([`crate::remap`]: unchanged rules keep their windows and alert gates, new or changed
    /// rules start fresh, tables no rule uses are dropped).
    pub fn replace_rules(&mut self, rules: &RuleSet) -> ReloadSummary {
        // The tables are about to be remapped: a checkpoint under way is completed with the
        // state it began with.
        self.complete_pending_tables();
        let new = Plan::new(rules);
        let old = std::mem::take(&mut self.plan);
        let remap = Remap::new(&Layout::of(&old), &new);
        let mut summary = ReloadSummary::default();
        for (r, u) in new.rules.iter().zip(&remap.unchanged) {
            let id = r.compiled.rule.id.clone();
            match u {
                Some(_) => summary.kept.push(id),
                None => summary.fresh.push(id),
            }
        }
        summary.removed = old
            .rules
            .iter()
            .enumerate()
            .filter(|(i, _)| !remap.unchanged.contains(&Some(*i)))
            .map(|(_, or)| or.compiled.rule.id.clone())
            .collect();
        for p in self.partitions.values_mut() {
            let (tables, gates) =
                remap.apply(std::mem::take(&mut p.tables), std::mem::take(&mut p.gates));
            p.tables = tables;
            p.gates = gates;
        }
        self.evictions = (0..new.tables.len())
            .map(|t| new.find_table(&old, t).map_or(0, |ot| self.evictions[ot]))
            .collect();
        summary.kept_slots = remap.kept_slots();
        summary.fresh_slots = new.slot_count() - summary.kept_slots;
        self.kinds = new
            .tables
            .iter()
            .map(|t| t.slots.iter().map(|s| s.kind).collect())
            .collect();
        self.builder.project(&new.columns_read());
        (self.owned, self.forward) = roles(&new, &self.config.stage);
        self.plan = new;
        self.live_keys = self
            .partitions
            .values()
            .flat_map(|p| p.tables.iter().map(|t| t.len() as u64))
            .sum();
        summary
    }

    /// The plan (tables and slots) the processor runs.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    fn empty_partition(&self) -> PartitionState {
        PartitionState {
            watermark: i64::MIN,
            sources: BTreeMap::new(),
            sketch_seed: self.config.sketch_seed,
            forwarded: BTreeMap::new(),
            tables: (0..self.plan.tables.len())
                .map(|_| KeyTable::default())
                .collect(),
            gates: (0..self.plan.rules.len())
                .map(|_| Gate::default())
                .collect(),
        }
    }

    /// Encodes a partition's checkpoint (an empty state if the partition has none yet);
    /// `meta.watermark` is filled in here.
    pub fn checkpoint(&self, partition: i32, meta: CheckpointMeta) -> Result<Vec<u8>, CodecError> {
        self.with_checkpoint(partition, meta, |c| c.encode())
    }

    /// [`checkpoint`](Self::checkpoint) as the body's parts, without the header
    /// ([`CheckpointRef::encode_parts`]): large tables are encoded in parallel, and the
    /// checkpoint writer adds the header as it writes the file.
    pub fn checkpoint_parts(
        &self,
        partition: i32,
        meta: CheckpointMeta,
    ) -> Result<Vec<Vec<u8>>, CodecError> {
        self.with_checkpoint(partition, meta, |c| c.encode_parts())
    }

    fn with_checkpoint<T>(
        &self,
        partition: i32,
        mut meta: CheckpointMeta,
        encode: impl FnOnce(&CheckpointRef<'_>) -> T,
    ) -> T {
        let empty;
        let state = match self.partitions.get(&partition) {
            Some(s) => s,
            None => {
                empty = self.empty_partition();
                &empty
            }
        };
        meta.watermark = state.watermark;
        encode(&CheckpointRef {
            meta,
            sketch_seed: state.sketch_seed,
            forwarded: forwarded_list(&state.forwarded),
            layout: Layout::of(&self.plan),
            tables: state.tables.iter().collect(),
            gates: state.gates.iter().collect(),
        })
    }

    /// Starts a checkpoint of `partition` as of now (an empty state if the partition has none
    /// yet) that is encoded a little at a time while batches go on
    /// ([`continue_checkpoint`](Self::continue_checkpoint)), so that the caller never stops
    /// for a whole partition's encoding. The metadata (`meta.watermark` is filled in here) and
    /// the alert gates are encoded now, the tables from snapshots ([`KeyTable::begin_snapshot`]),
    /// which encode a state before any change to it. The parts made are the ones
    /// [`checkpoint_parts`](Self::checkpoint_parts) would have made now, but for the order of
    /// each table's entries. A checkpoint under way is dropped.
    pub fn begin_checkpoint(
        &mut self,
        partition: i32,
        mut meta: CheckpointMeta,
    ) -> Result<(), CodecError> {
        self.abandon_checkpoint();
        if !self.partitions.contains_key(&partition) {
            let empty = self.empty_partition();
            self.partitions.insert(partition, empty);
        }
        let layout = Layout::of(&self.plan);
        let Some(state) = self.partitions.get_mut(&partition) else {
            return Ok(());
        };
        meta.watermark = state.watermark;
        let head = encode_head(
            &meta,
            state.sketch_seed,
            &forwarded_list(&state.forwarded),
            &layout,
            state.tables.len(),
        )?;
        let mut gates = Vec::new();
        codec::encode_into(&state.gates, &mut gates)?;
        for t in &mut state.tables {
            t.begin_snapshot();
        }
        self.pending = Some(PendingCheckpoint {
            partition,
            head,
            tables: state.tables.iter().map(|_| None).collect(),
            gates,
        });
        Ok(())
    }

    /// Encodes up to `slots` more key slots of the checkpoint under way; once it is complete,
    /// returns it. `None` while it is not complete, or when none is under way.
    pub fn continue_checkpoint(&mut self, slots: usize) -> Option<CheckpointParts> {
        if !self.step_pending_tables(slots) {
            return None;
        }
        let pending = self.pending.take()?;
        let mut parts = Vec::with_capacity(2 * pending.tables.len() + 2);
        parts.push(pending.head);
        for table in pending.tables {
            match table {
                Some(Ok([count, entries])) => {
                    parts.push(count);
                    parts.push(entries);
                }
                Some(Err(e)) => return Some((pending.partition, Err(e))),
                None => return Some((pending.partition, lost_snapshot())),
            }
        }
        parts.push(pending.gates);
        Some((pending.partition, Ok(parts)))
    }

    /// [`continue_checkpoint`](Self::continue_checkpoint)s [`CHECKPOINT_CHUNK`] slots at a
    /// time for as long as `more` says, asking it after each chunk: the caller's clock
    /// decides how long a slice is. Returns the checkpoint once it is complete.
    pub fn continue_checkpoint_while(
        &mut self,
        mut more: impl FnMut() -> bool,
    ) -> Option<CheckpointParts> {
        loop {
            if let Some(done) = self.continue_checkpoint(CHECKPOINT_CHUNK) {
                return Some(done);
            }
            if self.pending.is_none() || !more() {
                return None;
            }
        }
    }

    /// Encodes up to `slots` more key slots of the checkpoint under way, table by table,
    /// keeping each table's parts with it once its snapshot is complete. True when every
    /// table is done, or when none is under way.
    fn step_pending_tables(&mut self, mut slots: usize) -> bool {
        let Some(pending) = self.pending.as_mut() else {
            return true;
        };
        let mut tables = self
            .partitions
            .get_mut(&pending.partition)
            .map(|s| s.tables.iter_mut());
        for done in &mut pending.tables {
            let table = tables.as_mut().and_then(Iterator::next);
            if done.is_some() {
                continue;
            }
            let Some(t) = table else {
                *done = Some(lost_snapshot());
                continue;
            };
            if !t.snapshot_step(&mut slots) {
                return false;
            }
            *done = Some(t.take_snapshot().unwrap_or_else(lost_snapshot));
        }
        true
    }

    /// Completes the checkpoint under way now
    /// ([`continue_checkpoint`](Self::continue_checkpoint) without a limit).
    pub fn finish_checkpoint(&mut self) -> Option<CheckpointParts> {
        self.continue_checkpoint(usize::MAX)
    }

    /// The partition whose checkpoint is under way.
    pub fn checkpoint_under_way(&self) -> Option<i32> {
        self.pending.as_ref().map(|p| p.partition)
    }

    /// Drops the checkpoint under way, if any.
    fn abandon_checkpoint(&mut self) {
        if let Some(p) = self.pending.take()
            && let Some(state) = self.partitions.get_mut(&p.partition)
        {
            for t in &mut state.tables {
                t.cancel_snapshot();
            }
        }
    }

    /// Completes the snapshots of the checkpoint under way, and keeps their parts with it, so
    /// that its partition's tables can be dropped or remapped.
    fn complete_pending_tables(&mut self) {
        self.step_pending_tables(usize::MAX);
    }

    /// Replaces a partition's state with a checkpoint's, remapped to the running plan the way a
    /// rule reload is ([`crate::remap`]). Returns the keys restored.
    pub fn restore(&mut self, c: Checkpoint) -> u64 {
        let partition = c.meta.partition;
        self.drop_partition(partition);
        let remap = Remap::new(&c.layout, &self.plan);
        let (mut tables, gates) = remap.apply(c.tables, c.gates);
        for keys in &mut tables {
            keys.for_each_mut(KeyState::reset_batch);
        }
        let keys = tables.iter().map(|t| t.len() as u64).sum::<u64>();
        self.live_keys += keys;
        self.partitions.insert(
            partition,
            PartitionState {
                watermark: c.meta.watermark,
                sources: BTreeMap::new(),
                sketch_seed: c.sketch_seed,
                forwarded: c.forwarded.into_iter().fold(
                    BTreeMap::new(),
                    |mut m: BTreeMap<String, BTreeMap<i32, i64>>, (e, p, o)| {
                        m.entry(e).or_default().insert(p, o);
                        m
                    },
                ),
                tables,
                gates,
            },
        );
        keys
    }

    /// Seeds the gate of rule `rule_id` version `version` on `partition` with an alert read
    /// back from the alerts topic ([`Gate::seed`]). Returns false when no running rule has that
    /// id and version (the alert is then irrelevant to the replay).
    #[allow(clippy::too_many_arguments)]
    pub fn seed_alert(
        &mut self,
        partition: i32,
        rule_id: &str,
        version: u32,
        entity: &str,
        alert_id: &str,
        new: bool,
        window_end: i64,
    ) -> bool {
        let Some(r) = self
            .plan
            .rules
            .iter()
            .position(|r| r.compiled.rule.id == rule_id && r.compiled.rule.version == version)
        else {
            return false;
        };
        let suppress_ms = self.plan.rules[r].suppress_ms;
        if !self.partitions.contains_key(&partition) {
            let empty = self.empty_partition();
            self.partitions.insert(partition, empty);
        }
        if let Some(state) = self.partitions.get_mut(&partition) {
            state.gates[r].seed(entity, alert_id, new, window_end, suppress_ms);
        }
        true
    }

    /// Forgets a partition's state (it was revoked from this instance). A checkpoint of it
    /// under way is completed first.
    pub fn drop_partition(&mut self, partition: i32) {
        if self.checkpoint_under_way() == Some(partition) {
            self.complete_pending_tables();
        }
        if let Some(p) = self.partitions.remove(&partition) {
            self.live_keys -= p.tables.iter().map(|t| t.len() as u64).sum::<u64>();
        }
    }

    /// Live keys across all tables and partitions.
    pub fn live_keys(&self) -> u64 {
        self.live_keys
    }

    /// Per-table keys, evictions and estimated bytes. Walks every key: call it every few
    /// seconds, not per batch.
    pub fn table_stats(&self) -> Vec<TableStats> {
        self.plan
            .tables
            .iter()
            .enumerate()
            .filter(|&(t, _)| self.owned[t])
            .map(|(t, spec)| {
                let (mut keys, mut bytes) = (0u64, 0u64);
                for p in self.partitions.values() {
                    let map = &p.tables[t];
                    keys += map.len() as u64;
                    bytes += map.bytes() as u64;
                }
                TableStats {
                    name: spec.name.clone(),
                    keys,
                    evictions: self.evictions[t],
                    bytes,
                }
            })
            .collect()
    }

    /// The current window of `entity` as rule `rule` (an index into the plan's rules) reads
    /// it, from whichever partition holds the key; `None` when no partition has it. For rule
    /// tests and diagnostics, not the hot path.
    pub fn peek(&mut self, rule: usize, entity: &str) -> Option<WindowSnapshot> {
        let rp = self.plan.rules.get(rule)?;
        let spec = &self.plan.tables[rp.table];
        let hash = key_of(entity);
        self.partitions.values_mut().find_map(|p| {
            p.tables[rp.table]
                .get_mut(hash)
                .map(|k| k.snapshot(&spec.window, rp.events, &rp.reads))
        })
    }

    /// Drops keys whose windows have fully expired and gate entries past suppression, by each
    /// partition's watermark. In the repartition stage that is the slowest input partition's
    /// among those heard from in the last [`SOURCE_IDLE_MS`] before `now_ms` (wall clock, ms),
    /// and a partition none of them was heard from keeps everything.
    pub fn expire_idle(&mut self, now_ms: i64) {
        let repartitioned = matches!(self.config.stage, Stage::Repartitioned { .. });
        let mut dropped = 0u64;
        for p in self.partitions.values_mut() {
            let watermark = if repartitioned {
                let active = p
                    .sources
                    .values()
                    .filter(|c| c.heard_ms >= now_ms.saturating_sub(SOURCE_IDLE_MS));
                match active.map(|c| c.watermark).min() {
                    Some(w) => w,
                    None => continue,
                }
            } else {
                p.watermark
            };
            for (spec, keys) in self.plan.tables.iter().zip(p.tables.iter_mut()) {
                let before = keys.len();
                keys.retain_states(|k| !k.expired(&spec.window, watermark));
                dropped += (before - keys.len()) as u64;
            }
            for gate in &mut p.gates {
                gate.expire(watermark);
            }
        }
        self.live_keys -= dropped;
    }

    /// Evicts least recently used keys until at most 90% of `max_keys` remain. Keys last
    /// touched in the same batch are told apart by their key, and partitions and tables are
    /// visited in a fixed order, so that the same input evicts the same keys in every run
    /// (the index's own order is seeded at random).
    fn enforce_max_keys(&mut self) {
        let max = self.config.max_keys;
        if self.live_keys <= max {
            return;
        }
        let target = max - max / 10;
        let excess = (self.live_keys - target) as usize;
        let mut order: Vec<(u32, u64)> = self
            .partitions
            .values()
            .flat_map(|p| {
                p.tables
                    .iter()
                    .flat_map(|t| t.iter().map(|(key, k)| (k.touch, key)))
            })
            .collect();
        let nth = excess.saturating_sub(1).min(order.len().saturating_sub(1));
        let (_, cutoff, _) = order.select_nth_unstable(nth);
        let cutoff = *cutoff;
        // At most `excess - 1` keys come strictly before the cutoff, so `left` runs out only
        // on keys equal to it: one per table (the same key in several tables), taken in table
        // order.
        let mut left = excess;
        let mut ids: Vec<i32> = self.partitions.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let Some(p) = self.partitions.get_mut(&id) else {
                continue;
            };
            for (t, keys) in p.tables.iter_mut().enumerate() {
                let before = keys.len();
                keys.retain(|key, k| {
                    if left > 0 && (k.touch, key) <= cutoff {
                        left -= 1;
                        false
                    } else {
                        true
                    }
                });
                let evicted = (before - keys.len()) as u64;
                self.evictions[t] += evicted;
                self.live_keys -= evicted;
            }
        }
        tracing::warn!(
            evicted = excess - left,
            max_keys = max,
            "state.max_keys reached: least recently used keys evicted"
        );
    }

    /// Processes one micro-batch. `now_ms` is the wall clock (for future-skew and `detected_at`).
    pub fn process(
        &mut self,
        inputs: &[Input<'_>],
        now_ms: i64,
        out: &mut Output,
    ) -> Result<(), ProcessError> {
        // A key's batch slot has room for this many keys per table, and a table touches at
        // most one key per message: a larger batch goes through in parts.
        if inputs.len() > MAX_BATCH_SLOT as usize {
            for (k, part) in inputs.chunks(MAX_BATCH_SLOT as usize).enumerate() {
                let first = out.forwards.len();
                self.process(part, now_ms, out)?;
                for f in &mut out.forwards[first..] {
                    f.input += k * MAX_BATCH_SLOT as usize;
                }
            }
            return Ok(());
        }
        // Never 0: a new key's `touch` is 0 and must not look touched in this batch.
        self.batch_seq = self.batch_seq.checked_add(1).unwrap_or(1);
        // Forwarded events update only their entity's tables: they go through per entity.
        let repartitioned = matches!(self.config.stage, Stage::Repartitioned { .. });
        // Grouped in a short list, the group of the message before checked first: messages
        // come in runs of one partition, and a group's neighbours are the ones made last (a
        // frame's entities). A map lookup for every message cost about 85 instructions an
        // event (callgrind, the 40k mix).
        let mut groups: Vec<((i32, Option<&str>), Group<'_, '_>)> = Vec::new();
        let mut last = 0;
        for (i, input) in inputs.iter().enumerate() {
            let key = (
                input.partition,
                input.forwarded.filter(|_| repartitioned).map(|f| f.entity),
            );
            if groups.get(last).is_none_or(|(k, _)| *k != key) {
                last = match groups.iter().rposition(|(k, _)| *k == key) {
                    Some(g) => g,
                    None => {
                        groups.push((key, Vec::new()));
                        groups.len() - 1
                    }
                };
            }
            groups[last].1.push((i, input));
        }
        // In the order of the keys, as before: partitions, then entities.
        groups.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for ((partition, entity), inputs) in groups {
            self.process_partition(partition, entity, &inputs, now_ms, out)?;
            self.check_split_keys(partition, &mut out.stats);
        }
        self.enforce_max_keys();
        Ok(())
    }

    /// Looks the sampled new keys of `partition`'s batch up in the other partitions, and
    /// counts them in `stats` ([`BatchStats::split_checks`]).
    fn check_split_keys(&mut self, partition: i32, stats: &mut BatchStats) {
        let mut sampled = std::mem::take(&mut self.scratch.rows.sampled);
        for (t, key) in sampled.drain(..) {
            let split = self
                .partitions
                .iter()
                .any(|(p, s)| *p != partition && s.tables.get(t).is_some_and(|k| k.contains(key)));
            let Some(spec) = self.plan.tables.get(t) else {
                continue;
            };
            let c = stats.split_checks.entry(spec.name.clone()).or_default();
            c.checked += 1;
            c.split += u64::from(split);
        }
        self.scratch.rows.sampled = sampled;
    }

    /// Processes one partition's messages of a batch, each with its index in the batch; with
    /// [`Stage::Repartitioned`], the ones forwarded for `entity` (`None`: messages without the
    /// frame of forwarded events, which are dead-lettered).
    fn process_partition(
        &mut self,
        partition: i32,
        entity: Option<&str>,
        inputs: &[(usize, &Input<'_>)],
        now_ms: i64,
        out: &mut Output,
    ) -> Result<(), ProcessError> {
        let rules = self.plan.rules.len();
        if !self.partitions.contains_key(&partition) {
            let empty = self.empty_partition();
            self.partitions.insert(partition, empty);
        }
        self.scratch.rows.sample_new_keys = self.partitions.len() > 1;
        self.scratch.rows.sampled.clear();
        let Some(state) = self.partitions.get_mut(&partition) else {
            return Ok(());
        };
        out.stats.messages += inputs.len() as u64;
        let repartitioned = matches!(self.config.stage, Stage::Repartitioned { .. });
        // The tables these messages update: with forwarding, those of their entity.
        let mut tables = std::mem::take(&mut self.scratch.tables);
        tables.clear();
        tables.extend((0..self.plan.tables.len()).filter(|&t| {
            self.owned[t]
                && (!repartitioned
                    || entity
                        .is_some_and(|e| self.plan.exprs[self.plan.tables[t].entity].text == e))
        }));
        if repartitioned && entity.is_some() && tables.is_empty() {
            out.stats.unrouted += inputs.len() as u64;
            self.scratch.tables = tables;
            return Ok(());
        }
        let mut time = TimeCheck {
            watermark: state.watermark,
            // The first stage judged lateness against each event's own input partition; the
            // events of several meet here, each partition's at its own pace.
            allowed_lateness_ms: if repartitioned {
                i64::MAX
            } else {
                self.config.allowed_lateness_ms
            },
            max_ts: now_ms.saturating_add(self.config.max_future_skew_ms),
            clamp_future: self.config.clamp_future,
        };
        // Which messages decoded (their places in `inputs`), row by row: only for forwarding.
        let forwarding = !self.forward.is_empty();
        let mut accepted = std::mem::take(&mut self.scratch.accepted);
        accepted.clear();
        for (pos, &(_, input)) in inputs.iter().enumerate() {
            let refused = if repartitioned {
                match (entity, input.forwarded) {
                    (Some(e), Some(f)) => {
                        let by_partition = match state.forwarded.get_mut(e) {
                            Some(m) => m,
                            None => state.forwarded.entry(e.to_owned()).or_default(),
                        };
                        let seen = by_partition.entry(f.partition).or_insert(-1);
                        if f.offset <= *seen {
                            out.stats.replayed += 1;
                            continue;
                        }
                        *seen = f.offset;
                        None
                    }
                    _ => Some(Rejection {
                        reason: Reason::NotForwarded,
                        detail: format!(
                            "a message on the repartition topic that is not a frame of forwarded events (header `{}: {}`, a body of that form)",
                            crate::frame::HEADER_FRAME,
                            String::from_utf8_lossy(crate::frame::FRAME_VERSION),
                        ),
                    }),
                }
            } else {
                None
            };
            let result = match refused {
                Some(r) => Err(r),
                None => self.builder.push(input.payload, &mut time),
            };
            match result {
                Ok(()) => {
                    // The input partition it was forwarded from heard, at the event's time.
                    if repartitioned
                        && let Some(f) = input.forwarded
                        && let Some(ts) = self.builder.last_time()
                    {
                        let clock = state.sources.entry(f.partition).or_insert(SourceClock {
                            watermark: ts,
                            heard_ms: now_ms,
                        });
                        clock.watermark = clock.watermark.max(ts);
                        clock.heard_ms = now_ms;
                    }
                    if forwarding {
                        accepted.push(pos);
                    }
                }
                Err(r) => dead_letter(out, partition, input, r),
            }
        }
        state.watermark = time.watermark;
        if self.builder.is_empty() {
            self.scratch.tables = tables;
            self.scratch.accepted = accepted;
            return Ok(());
        }
        let decoded = self.builder.finish();
        let (batch, times) = (&decoded.batch, &decoded.times);
        out.stats.events += times.len() as u64;
        // A stage evaluates only what its tables here (and its forwarding) read.
        let needed = match self.config.stage {
            Stage::Whole => None,
            _ => {
                needed_columns(&self.plan, &tables, &self.forward, &mut self.scratch.needed);
                Some(self.scratch.needed.as_slice())
            }
        };
        let cols = evaluate_columns(&self.plan, &decoded, needed, &mut self.scratch.hashes)?;
        if forwarding {
            forward_rows(
                &self.forward,
                &cols,
                inputs,
                &accepted,
                &decoded.prompts,
                self.config.max_forward_bytes,
                out,
            );
        }
        let mut candidates = std::mem::take(&mut self.scratch.candidates);
        candidates.resize_with(rules, Candidates::default);
        for c in &mut candidates {
            c.cands.clear();
            c.values.clear();
        }
        for &t in &tables {
            let added = update_table(
                &self.plan,
                t,
                &self.kinds[t],
                &mut state.tables[t],
                &cols,
                times,
                self.batch_seq,
                &mut candidates,
                &mut self.scratch.touched,
                &mut self.scratch.rows,
                &mut out.stats,
                state.sketch_seed,
            );
            self.live_keys += added;
        }
        let request_ids = batch
            .column_by_name("request_id")
            .map(|a| a.as_string::<i32>());
        let result = candidates.iter().enumerate().try_for_each(|(r, cands)| {
            let rp = &self.plan.rules[r];
            let Col::Text(entity, _) = &cols[self.plan.tables[rp.table].entity] else {
                return Ok(());
            };
            if cands.cands.is_empty() {
                return Ok(());
            }
            let text = BatchText {
                entity,
                request_ids,
                partition,
            };
            gate_rule(
                rp,
                &mut state.gates[r],
                cands,
                text,
                now_ms,
                &self.config.instance,
                out,
            )
        });
        self.scratch.candidates = candidates;
        self.scratch.tables = tables;
        self.scratch.accepted = accepted;
        self.builder.recycle(decoded);
        self.scratch
            .hashes
            .extend(cols.into_iter().filter_map(|c| match c {
                Col::Text(_, hashes) => Some(hashes),
                _ => None,
            }));
        result
    }
}

/// Per table, whether `stage` keeps it; and the entity columns (distinct) of the tables it does
/// not keep, with their text, which a [`Stage::Source`] forwards events for.
fn roles(plan: &Plan, stage: &Stage) -> (Vec<bool>, Vec<(usize, Arc<str>)>) {
    let owned: Vec<bool> = plan
        .tables
        .iter()
        .map(|t| stage.owns(&t.entity_text))
        .collect();
    let mut forward: Vec<(usize, Arc<str>)> = Vec::new();
    if matches!(stage, Stage::Source { .. }) {
        for (t, spec) in plan.tables.iter().enumerate() {
            if !owned[t] && !forward.iter().any(|(e, _)| *e == spec.entity) {
                forward.push((spec.entity, plan.exprs[spec.entity].text.as_str().into()));
            }
        }
    }
    (owned, forward)
}

/// What a stage reads of a planned expression over a batch ([`needed_columns`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Need {
    /// Nothing: an empty column stands in its place.
    Nothing,
    /// Its values, not its key hashes: an entity the input stage only forwards, whose values
    /// are hashed for their destination instead ([`crate::frame::value_hash`]).
    Values,
    /// Its values and, for text, each value's key hash ([`key_of`]).
    Keys,
}

/// Marks in `needed`, per planned expression, what `tables` (their entities, slot arguments
/// and predicates) and the forwarded entities read of it.
fn needed_columns(
    plan: &Plan,
    tables: &[usize],
    forward: &[(usize, Arc<str>)],
    needed: &mut Vec<Need>,
) {
    needed.clear();
    needed.resize(plan.exprs.len(), Need::Nothing);
    let mut mark = |i: usize, need: Need| {
        if let Some(n) = needed.get_mut(i) {
            *n = (*n).max(need);
        }
    };
    for spec in tables.iter().filter_map(|&t| plan.tables.get(t)) {
        mark(spec.entity, Need::Keys);
        for slot in &spec.slots {
            slot.arg
                .into_iter()
                .chain(slot.preds.iter().copied())
                .for_each(|i| mark(i, Need::Keys));
        }
    }
    for (e, _) in forward {
        mark(*e, Need::Values);
    }
}

/// The forwarding state of a partition as a checkpoint keeps it.
fn forwarded_list(forwarded: &BTreeMap<String, BTreeMap<i32, i64>>) -> Vec<(String, i32, i64)> {
    forwarded
        .iter()
        .flat_map(|(e, offsets)| offsets.iter().map(|(p, o)| (e.clone(), *p, *o)))
        .collect()
}

/// Queues the batch's decoded events (`accepted` holds their places in `inputs`, row by row;
/// `prompts` the rows that carried a raw prompt, [`Decoded::prompts`]) for the repartition
/// topic, once per entity of `forward` they have a value for. An event larger than `max_bytes`
/// once its prompt is replaced, or whose prompt cannot be removed, is dead-lettered instead.
fn forward_rows(
    forward: &[(usize, Arc<str>)],
    cols: &[Col],
    inputs: &[(usize, &Input<'_>)],
    accepted: &[usize],
    prompts: &[(usize, Fingerprints)],
    max_bytes: usize,
    out: &mut Output,
) {
    let mut prompts = prompts.iter().peekable();
    for (row, &i) in accepted.iter().enumerate() {
        let derived = prompts.next_if(|(r, _)| *r == row).map(|(_, f)| f);
        let first = out.forward_keys.len();
        for (e, text) in forward {
            if let Col::Text(values, _) = &cols[*e]
                && values.is_valid(row)
            {
                let hash = crate::frame::value_hash(values.value(row).as_bytes());
                out.forward_keys.push((text.clone(), hash));
            }
        }
        let keys = first..out.forward_keys.len();
        if keys.is_empty() {
            continue;
        }
        let (index, input) = inputs[i];
        let refused = match forward_payload(input.payload, derived) {
            Some(payload) if payload.len() <= max_bytes => {
                out.stats.forwarded += keys.len() as u64;
                out.forwards.push(Forward {
                    input: index,
                    partition: input.partition,
                    offset: input.offset,
                    payload: match payload {
                        Cow::Borrowed(_) => None,
                        Cow::Owned(rewritten) => Some(rewritten),
                    },
                    keys,
                });
                continue;
            }
            Some(payload) => Rejection {
                reason: Reason::TooLarge,
                detail: format!(
                    "{} bytes: too large to forward to the repartition topic (at most {max_bytes}; raise the producer's message.max.bytes); the rules of repartition.input_entity counted it",
                    payload.len()
                ),
            },
            None => Rejection {
                reason: Reason::InvalidJson,
                detail: "its raw prompt cannot be removed for the repartition topic (the bytes do not parse as a JSON object there); the rules of repartition.input_entity counted it".into(),
            },
        };
        out.forward_keys.truncate(first);
        dead_letter(out, input.partition, input, refused);
    }
}

/// Counts `input` of `partition` as refused for `r` and queues it for the dead-letter topic,
/// with any raw prompt redacted.
fn dead_letter(out: &mut Output, partition: i32, input: &Input<'_>, r: Rejection) {
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

fn eval_err(what: &'static str, text: &str, e: DataFusionError) -> ProcessError {
    ProcessError::Eval {
        rule: format!("expression `{text}`"),
        what,
        source: Box::new(e),
    }
}

/// Evaluates every planned expression once over the batch (of those `needed` marks; all
/// without it); text columns' key hashes go into vectors from `pool`. A column read for its
/// values alone has none: the input stage hashed its forwarded entities twice, once for keys
/// no table of its own looks up (about 50 instructions an event, callgrind, `--stage
/// source`, the 40k mix).
fn evaluate_columns(
    plan: &Plan,
    decoded: &Decoded,
    needed: Option<&[Need]>,
    pool: &mut Vec<Vec<Option<u64>>>,
) -> Result<Vec<Col>, ProcessError> {
    let batch = &decoded.batch;
    let addrs = &decoded.addrs;
    plan.exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let need = needed.map_or(Need::Keys, |n| n.get(i).copied().unwrap_or(Need::Keys));
            if need == Need::Nothing {
                // Read by no table this batch updates: an empty column stands in its place.
                return Ok(Col::Bool(BooleanBuffer::new_unset(0)));
            }
            let a = match e.addr_prefix {
                Some((v4, v6)) if addrs.len() == batch.num_rows() => {
                    cordon_rules::udf::prefixes(addrs.iter().copied().map(Some), v4, v6)
                        .map(|a| Arc::new(a) as ArrayRef)
                }
                _ => e
                    .expr
                    .evaluate(batch)
                    .and_then(|v| v.into_array(batch.num_rows())),
            }
            .map_err(|err| eval_err("evaluation", &e.text, err))?;
            let cast_to = |dt: &DataType| {
                cast(&a, dt).map_err(|err| {
                    eval_err(
                        "cast",
                        &e.text,
                        DataFusionError::ArrowError(Box::new(err), None),
                    )
                })
            };
            Ok(match e.conv {
                Conv::Bool => {
                    let a = a.as_boolean();
                    Col::Bool(match a.nulls() {
                        Some(valid) => a.values() & valid.inner(),
                        None => a.values().clone(),
                    })
                }
                Conv::Number => Col::Number(cast_to(&DataType::Float64)?.as_primitive().clone()),
                Conv::Text => {
                    let s = cast_to(&DataType::Utf8)?.as_string::<i32>().clone();
                    let mut hashes = pool.pop().unwrap_or_default();
                    hashes.clear();
                    if need == Need::Keys {
                        hashes.extend(
                            (0..s.len()).map(|i| s.is_valid(i).then(|| key_of(s.value(i)))),
                        );
                    }
                    Col::Text(s, hashes)
                }
            })
        })
        .collect()
}

/// How many keys ahead pass 2 of [`update_table`] prefetches a key's panes and partials
/// ([`KeyState::prefetch`]).
const PREFETCH_AHEAD: usize = 8;

/// How many rows ahead pass 1 of [`update_table`] prefetches a row's index entry, and the
/// first-touch loop a row's key state.
const LOOKUP_AHEAD: usize = 16;

/// Notes a new key of table `table` for the split check ([`BatchStats::split_checks`]). Out
/// of line and cold, so that the hot loop holds only the test: the push inline cost 20 more
/// instructions an event on the 40k mix (callgrind).
#[cold]
#[inline(never)]
fn note_sampled(sampled: &mut Vec<(usize, u64)>, table: usize, key: u64) {
    sampled.push((table, key));
}

/// Updates one table with the batch; pushes candidates for its rules; returns keys added.
///
/// Out of line: its hot row loop then compiles the same whatever `process_partition` around it
/// holds. Inlined there, the repartition stage's additions to `process_partition` cost the
/// row loop 205 instructions an event in register traffic (10,927 against 10,722 on the 40k
/// mix, callgrind); out of line, 10,709.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn update_table(
    plan: &Plan,
    t: usize,
    kinds: &[SlotKind],
    keys: &mut KeyTable,
    cols: &[Col],
    times: &[i64],
    batch_seq: u32,
    candidates: &mut [Candidates],
    touched: &mut Vec<Touched>,
    rows: &mut Rows,
    stats: &mut BatchStats,
    seed: u64,
) -> u64 {
    let spec = &plan.tables[t];
    let Col::Text(_, hashes) = &cols[spec.entity] else {
        return 0;
    };
    let mut inputs: Vec<Option<AggInput>> = vec![None; spec.slots.len()];
    let batch_rows = times.len();
    let slot_inputs: Vec<SlotInput<'_>> = spec
        .slots
        .iter()
        .map(|s| SlotInput::new(s, cols, batch_rows, seed))
        .collect();
    let counted = counted_rows(&spec.slots, &slot_inputs, batch_rows);
    touched.clear();
    let mut added = 0u64;
    let mut scratch: Vec<u64> = Vec::new();
    let mut snapshot_rules = |k: &mut KeyState, t: &Touched, candidates: &mut [Candidates]| {
        let n = t.seen.min(SAMPLE_IDS);
        let mut samples = [0u32; SAMPLE_IDS];
        for (slot, i) in (t.seen - n..t.seen).enumerate() {
            samples[slot] = t.rows[i % ROW_RING];
        }
        // A key whose window holds fewer events than every rule's volume threshold needs, as
        // most keys do, is not read at all: its count is packed in its state.
        let held = k.events_at_most();
        if !may_reach(held, spec.min_events) {
            return;
        }
        // The key's panes are merged once for all of the table's rules.
        let mut w = k.window(&spec.window, &mut scratch);
        for r in &spec.rules {
            let rp = &plan.rules[*r];
            if !may_reach(held, rp.min_events) {
                continue;
            }
            // A window outside a bound the condition requires cannot match: skip it before
            // reading the rest (most keys are far below every rule's volume threshold).
            let admitted = rp
                .compiled
                .bounds
                .iter()
                .all(|b| b.admits(rp.reads.get(b.feature).and_then(|read| w.read_one(read))));
            if !admitted {
                continue;
            }
            let c = &mut candidates[*r];
            let events = w.read(rp.events, &rp.reads, &mut c.values);
            c.cands.push(Candidate {
                row: t.row as u32,
                start: w.start,
                end: w.end,
                first_seen: w.first_seen,
                last_seen: w.last_seen,
                events,
                samples,
                sample_count: n as u8,
            });
        }
    };
    // Pass 1: find (or add) the key of every counted row and note first touches. Each row's
    // lookup is independent of the others', so their cache misses overlap; pass 2 then finds
    // the states in cache. Every rule has a count slot under its filter: an event counts for
    // the key when one of them takes it, even if every feature argument is NULL.
    let counted = |row: usize| counted.as_ref().is_none_or(|c| c.value(row));
    let row_slots = &mut rows.slots;
    row_slots.clear();
    for (row, hash) in hashes.iter().take(batch_rows).enumerate() {
        // The index entry of a key a few rows ahead starts loading now (see `KeyTable::prefetch`).
        if let Some(Some(ahead)) = hashes.get(row + LOOKUP_AHEAD) {
            keys.prefetch(*ahead);
        }
        let slot = match hash {
            Some(hash) if counted(row) => {
                let (slot, new) = keys.slot_or_insert(*hash);
                added += u64::from(new);
                if new && rows.sample_new_keys && hash.is_multiple_of(SPLIT_SAMPLE) {
                    note_sampled(&mut rows.sampled, t, *hash);
                }
                slot
            }
            _ => Slot::MAX,
        };
        row_slots.push(slot);
    }
    // First touches, in a loop of their own: the states' loads of different rows overlap too.
    // Each counted row notes its key's place among the batch's touched keys.
    let (row_keys, counts) = (&mut rows.keys, &mut rows.counts);
    row_keys.clear();
    counts.clear();
    for (row, slot) in row_slots.iter().enumerate() {
        // Likewise the state of a key a few rows ahead.
        if let Some(ahead) = row_slots.get(row + LOOKUP_AHEAD) {
            keys.prefetch_state(*ahead);
        }
        let Some(ks) = keys.state_mut(*slot) else {
            row_keys.push(u32::MAX);
            continue;
        };
        if ks.touch != batch_seq {
            // First event of this key in the batch. Its state is in cache now, so the panes
            // and partials it points to can start loading: pass 2 then finds them nearer than
            // memory (its own prefetch, a few keys ahead, is kept: without it, slower).
            ks.prefetch(kinds.len());
            ks.touch = batch_seq;
            ks.set_batch_slot(touched.len() as u32);
            touched.push(Touched {
                slot: *slot,
                rows: [0; ROW_RING],
                seen: 0,
                row,
                held: 0,
            });
            counts.push(0);
        }
        let b = ks.batch_slot();
        counts[b as usize] += 1;
        row_keys.push(b);
    }
    // The rows grouped by key, in row order within a key (a counting sort): pass 2 then meets
    // a key's state, panes and sets once for all of its rows, not again after other keys' rows
    // have pushed them out of cache. Each key still sees its events in order.
    let mut next = 0u32;
    for c in counts.iter_mut() {
        (*c, next) = (next, next + *c);
    }
    let order = &mut rows.order;
    order.clear();
    order.resize(next as usize, 0);
    for (row, b) in row_keys.iter().enumerate() {
        if let Some(c) = counts.get_mut(*b as usize) {
            order[*c as usize] = row as u32;
            *c += 1;
        }
    }
    // Pass 2: update the states, key by key: key `b`'s rows end at `counts[b]` in `order`.
    let mut start = 0;
    for (b, end) in counts.iter().enumerate() {
        let run = &order[start as usize..*end as usize];
        start = *end;
        // The panes and partials of a key a few runs ahead start loading now, so that the
        // misses of several keys overlap instead of each key waiting for its own.
        if let Some(s) = touched
            .get(b + PREFETCH_AHEAD)
            .and_then(|t| keys.state(t.slot))
        {
            s.prefetch(kinds.len());
        }
        let Some(ks) = keys.state_mut(touched[b].slot) else {
            continue;
        };
        // A key with several rows in the batch: the sketch registers its rows will raise start
        // loading together, rather than one miss after another as the rows are applied.
        if run.len() > 1 {
            for (slot, s) in spec.slots.iter().enumerate() {
                if let (SlotKind::Distinct, Some(Col::Text(_, h))) =
                    (s.kind, s.arg.map(|a| &cols[a]))
                {
                    let hashes = run
                        .iter()
                        .filter_map(|r| h.get(*r as usize).copied().flatten())
                        .map(|h| h ^ seed);
                    ks.prefetch_distinct(kinds.len(), slot, hashes);
                }
            }
        }
        for row in run.iter().map(|r| *r as usize) {
            let ts = times[row];
            for (s, input) in slot_inputs.iter().zip(inputs.iter_mut()) {
                *input = s.at(row, ts);
            }
            let update = ks.update(&spec.window, kinds, ts, &inputs, |k| {
                snapshot_rules(k, &touched[b], candidates)
            });
            match update {
                Update::Applied | Update::AppliedAfterSlide => {
                    let t = &mut touched[b];
                    t.rows[t.seen % ROW_RING] = row as u32;
                    t.seen += 1;
                }
                Update::TooOld => stats.too_old += 1,
            }
        }
        touched[b].held = ks.events_at_most();
    }
    for t in touched.iter() {
        // A key no rule can match is left dirty: evaluating it would find nothing, and so
        // would the evaluation before its window slides (`snapshot_rules` skips it there).
        if !may_reach(t.held, spec.min_events) {
            continue;
        }
        if let Some(ks) = keys.state_mut(t.slot)
            && ks.is_dirty()
        {
            ks.clear_dirty();
            snapshot_rules(ks, t, candidates);
        }
    }
    added
}

/// Evaluates a rule's condition over its candidates and turns matches into alerts.
/// The text columns candidates point into.
#[derive(Clone, Copy)]
struct BatchText<'a> {
    entity: &'a StringArray,
    request_ids: Option<&'a StringArray>,
    /// The input partition of the batch.
    partition: i32,
}

fn gate_rule(
    rp: &RulePlan,
    gate: &mut Gate,
    candidates: &Candidates,
    text: BatchText<'_>,
    now_ms: i64,
    instance: &str,
    out: &mut Output,
) -> Result<(), ProcessError> {
    let c = &rp.compiled;
    let matched = evaluate_condition(c, candidates)?;
    let r = &c.rule;
    for ((i, cand), hit) in candidates.cands.iter().enumerate().zip(matched) {
        if !hit {
            continue;
        }
        let entity = text.entity.value(cand.row as usize);
        match gate.decide(
            &r.id,
            r.version,
            &r.entity.text,
            entity,
            cand.start,
            cand.end,
            rp.suppress_ms,
        ) {
            Decision::Suppressed => {
                out.stats.suppressed += 1;
                *out.stats
                    .suppressed_by_rule
                    .entry(r.id.clone())
                    .or_default() += 1;
            }
            Decision::Emit { alert_id, status } => {
                let features = c
                    .evidence
                    .iter()
                    .map(|f| {
                        let v = candidates
                            .feature(i, *f)
                            .map_or(serde_json::Value::Null, feature_json);
                        (c.features[*f].name.clone(), v)
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
                        value: entity.to_owned(),
                    },
                    window: AlertWindow {
                        start: rfc3339(cand.start),
                        end: rfc3339(cand.end),
                    },
                    features,
                    first_seen: rfc3339(cand.first_seen),
                    last_seen: rfc3339(cand.last_seen),
                    event_count: cand.events,
                    sample_request_ids: cand.samples[..usize::from(cand.sample_count)]
                        .iter()
                        .filter_map(|row| {
                            let ids = text.request_ids?;
                            let row = *row as usize;
                            ids.is_valid(row).then(|| ids.value(row).to_owned())
                        })
                        .collect(),
                    detected_at: rfc3339(now_ms),
                    engine: AlertEngine {
                        version: env!("CARGO_PKG_VERSION"),
                        instance: instance.to_owned(),
                    },
                };
                out.alerts.push(AlertRecord {
                    key: entity.to_owned(),
                    alert,
                    times: AlertTimes {
                        first_seen: cand.first_seen,
                        last_seen: cand.last_seen,
                        detected: now_ms,
                        window_end: cand.end,
                    },
                    partition: text.partition,
                    description: r.description.clone(),
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
fn evaluate_condition(
    c: &CompiledRule,
    candidates: &Candidates,
) -> Result<Vec<bool>, ProcessError> {
    let columns: Vec<ArrayRef> = (0..c.features.len())
        .map(|f| {
            Arc::new(Float64Array::from_iter(
                (0..candidates.cands.len())
                    .map(|i| candidates.feature(i, f).filter(|v| v.is_finite())),
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
    let result = c
        .condition
        .evaluate(&batch)
        .and_then(|v| v.into_array(batch.num_rows()))
        .map_err(err)?;
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
        rules_of(RULES)
    }

    fn rules_of(yaml: &str) -> Processor {
        let rules =
            cordon_rules::load_sources(&[("t.yaml".into(), yaml.into())]).expect("rules load");
        Processor::new(&rules, CoreConfig::default())
    }

    fn ev(ts: i64, account: &str, ip: &str, extra: &str) -> Vec<u8> {
        format!(r#"{{"ts":{ts},"account_id":"{account}","ip":"{ip}","request_id":"r-{ts}-{account}"{extra}}}"#).into_bytes()
    }

    fn run(p: &mut Processor, batches: &[Vec<Vec<u8>>]) -> Output {
        let mut out = Output::default();
        let mut offset = 0;
        for batch in batches {
            let inputs = Input::sequence(0, offset + 1, batch.iter().map(Vec::as_slice));
            offset += batch.len() as i64;
            p.process(&inputs, NOW, &mut out).expect("process");
        }
        out
    }

    /// A processor of `rules` whose empty partitions hash sketch values with `sketch_seed`.
    fn seeded(rules: &RuleSet, sketch_seed: u64) -> Processor {
        let config = CoreConfig {
            sketch_seed,
            ..CoreConfig::default()
        };
        Processor::new(rules, config)
    }

    fn harvest(n: i64) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| ev(T0 + i * 1000, "acct-7", "203.0.113.9", &format!(r#","labels":["cot_elicitation"],"prompt":"step by step: problem {i}","output_tokens":100"#)))
            .collect()
    }

    #[test]
    fn fixed_intervals_are_exact_at_the_millisecond_and_months_stay_calendar_months() {
        // `ts - INTERVAL '3 days'` compiles to a duration (integer arithmetic); a month stays a
        // calendar interval. T0 is 1 March, so a month back is 1 February (28 days).
        const DAY: i64 = 86_400_000;
        let rules = cordon_rules::load_sources(&[(
            "t.yaml".into(),
            "id: t.young\nversion: 1\ntitle: t\nseverity: low\nentity: account_id\n\
             window: 1h\nevery: 5m\nfeatures:\n  n: count()\n\
             \x20 young: count_if(account_created > ts - INTERVAL '3 days')\n\
             \x20 month: count_if(account_created > ts - INTERVAL '1 month')\n\
             condition: n > 100\n"
                .into(),
        )])
        .expect("rules load");
        let mut p = Processor::new(&rules, CoreConfig::default());
        let created = |ts: i64, age: i64| format!(r#","account_created":{}"#, ts - age);
        run(
            &mut p,
            &[vec![
                ev(T0, "a", "192.0.2.1", &created(T0, 3 * DAY - 1)),
                ev(T0 + 1, "a", "192.0.2.1", &created(T0 + 1, 3 * DAY)),
                ev(T0 + 2, "a", "192.0.2.1", &created(T0 + 2, 29 * DAY)),
            ]],
        );
        let snap = p.peek(0, "a").expect("key a");
        assert_eq!(snap.features, vec![Some(3.0), Some(1.0), Some(2.0)]);
    }

    #[test]
    fn a_filter_that_is_null_does_not_count() {
        // `status < 400` is NULL for an event without a status: SQL's NULL is not true.
        let mut p = rules_of(
            "id: t.ok\nversion: 1\ntitle: t\nseverity: low\nentity: account_id\n\
             where: status < 400\nwindow: 1h\nevery: 5m\nfeatures:\n  n: count()\n\
             \x20 errors: count_if(status >= 500)\ncondition: n >= 1000\n",
        );
        let status = |i: i64| match i % 3 {
            0 => r#","status":200"#,
            1 => r#","status":503"#,
            _ => "",
        };
        let batch: Vec<Vec<u8>> = (0..9)
            .map(|i| ev(T0 + i, "a", "192.0.2.1", status(i)))
            .collect();
        run(&mut p, &[batch]);
        let snap = p.peek(0, "a").expect("key a");
        assert_eq!(snap.features, vec![Some(3.0), Some(0.0)]);
    }

    #[test]
    fn each_slot_takes_the_rows_its_filters_pass_and_its_argument_has() {
        // The filter and the count_if predicate are ANDed per slot once per batch; a NULL
        // argument gives the slot nothing; a key none of whose rows pass is not created.
        let mut p = rules_of(
            "id: t.slots\nversion: 1\ntitle: t\nseverity: low\nentity: account_id\n\
             where: status IS NOT NULL\nwindow: 1h\nevery: 5m\nfeatures:\n  n: count()\n\
             \x20 big: count_if(output_tokens > 100)\n  avg_out: avg(output_tokens)\n\
             \x20 models: distinct(model)\ncondition: n >= 1000\n",
        );
        let extra = |i: i64| {
            let status = if i % 3 == 2 { "" } else { r#","status":200"# };
            let tokens = if i % 4 == 0 {
                String::new()
            } else {
                format!(r#","output_tokens":{}"#, i * 50)
            };
            let model = if i % 2 == 0 { "m1" } else { "m2" };
            format!(r#"{status}{tokens},"model":"{model}""#)
        };
        let mut batch: Vec<Vec<u8>> = (0..12)
            .map(|i| ev(T0 + i, "a", "192.0.2.1", &extra(i)))
            .collect();
        batch.extend((0..3).map(|i| ev(T0 + i, "b", "192.0.2.2", r#","output_tokens":7"#)));
        run(&mut p, &[batch]);
        // Passing: i = 0, 1, 3, 4, 6, 7, 9, 10. With tokens: 1, 3, 6, 7, 9, 10 (50 to 500);
        // over 100: 3, 6, 7, 9, 10.
        let snap = p.peek(0, "a").expect("key a");
        assert_eq!(
            snap.features,
            vec![Some(8.0), Some(5.0), Some(300.0), Some(2.0)]
        );
        assert_eq!(p.peek(0, "b"), None);
    }

    #[test]
    fn a_volume_threshold_past_the_packed_count_still_fires() {
        // A key's window count is packed in 11 bits and saturates at 2,047: a rule that needs
        // 2,500 events must still see the key, before and after its window slides.
        let mut p = rules_of(
            "id: t.big\nversion: 1\ntitle: t\nseverity: low\nentity: account_id\n\
             window: 1h\nevery: 5m\nsuppress: 5m\nfeatures:\n  n: count()\ncondition: n >= 2500\n",
        );
        // One event a second for 100 minutes, in batches of 500.
        let events: Vec<Vec<u8>> = (0..6_000)
            .map(|i| ev(T0 + i * 1000, "a", "192.0.2.1", ""))
            .collect();
        let batches: Vec<Vec<Vec<u8>>> = events.chunks(500).map(<[_]>::to_vec).collect();
        let out = run(&mut p, &batches);
        let new: Vec<_> = out
            .alerts
            .iter()
            .filter(|a| a.alert.status == crate::gate::Status::New)
            .collect();
        assert!(!new.is_empty(), "no alert at 2,500 events");
        assert_eq!(new[0].alert.features["n"], serde_json::json!(2500));
        // After the first hour the window slides every 5 minutes and keeps about 3,600
        // events, so it matches again once the first alert's suppression is over.
        assert!(new.len() >= 2, "{new:?}");
    }

    #[test]
    fn a_rule_counting_what_the_events_slot_does_not_is_never_skipped() {
        // The table's events slot counts `status < 400`; the second rule counts server errors,
        // which that slot never sees, so its threshold says nothing about the slot's count.
        let mut p = rules_of(
            "id: t.ok\nversion: 1\ntitle: t\nseverity: low\nentity: account_id\n\
             where: status < 400\nwindow: 1h\nevery: 5m\nfeatures:\n  n: count()\n\
             condition: n >= 1000\n---\n\
             id: t.errors\nversion: 1\ntitle: t\nseverity: low\nentity: account_id\n\
             window: 1h\nevery: 5m\nfeatures:\n  errors: count_if(status >= 500)\n\
             condition: errors >= 5\n",
        );
        let plan = &p.plan;
        assert_eq!(plan.rules[0].min_events, 1000);
        assert_eq!(plan.rules[1].min_events, 0);
        assert_eq!(plan.tables[0].min_events, 0);
        let batch: Vec<Vec<u8>> = (0..5)
            .map(|i| ev(T0 + i, "a", "192.0.2.1", r#","status":503"#))
            .collect();
        let out = run(&mut p, &[batch]);
        assert_eq!(out.alerts.len(), 1, "{:?}", out.alerts);
        assert_eq!(out.alerts[0].alert.rule.id, "t.errors");
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
    fn a_key_sliding_mid_batch_among_other_keys_is_evaluated_on_its_own_rows() {
        // Rows are applied key by key within a batch. acct-7's window slides on its last
        // event, in the middle of a batch where acct-8's rows interleave with its own: the
        // window it leaves must alert with acct-7's events and request ids only.
        let cot = r#","labels":["cot_elicitation"],"output_tokens":100"#;
        let mut events = Vec::new();
        for i in 0..20 {
            let ts = T0 + i * 1000;
            let fp = format!(r#"{cot},"prompt_fp":"p{i}""#);
            events.push(ev(ts, "acct-7", "203.0.113.9", &fp));
            events.push(ev(ts + 500, "acct-8", "198.51.100.7", ""));
        }
        let later = T0 + 65 * 60_000;
        events.push(ev(later, "acct-7", "203.0.113.9", ""));
        events.push(ev(later + 1, "acct-8", "198.51.100.7", ""));
        let out = run(&mut processor(), std::slice::from_ref(&events));
        assert_eq!(out.alerts.len(), 1, "{:?}", out.alerts);
        let a = &out.alerts[0].alert;
        assert_eq!(a.entity.value, "acct-7");
        assert_eq!(a.event_count, 20);
        assert_eq!(a.features["requests"], serde_json::json!(20));
        assert_eq!(a.window.end, "2026-03-01T10:05:00.000Z");
        let samples: Vec<String> = (17..20)
            .map(|i| format!("r-{}-acct-7", T0 + i * 1000))
            .collect();
        assert_eq!(a.sample_request_ids, samples);
        // The same events one per batch raise the same alert, for the same window.
        let singles: Vec<Vec<Vec<u8>>> = events.iter().map(|e| vec![e.clone()]).collect();
        let again = run(&mut processor(), &singles);
        let ids = |o: &Output| {
            o.alerts
                .iter()
                .map(|a| a.alert.alert_id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&again), ids(&out));
    }

    #[test]
    fn prompts_ground_to_share_sketch_registers_are_counted_with_a_seed() {
        // A campaign that knows the unseeded hash picks prompt fingerprints whose coupons fall
        // into 16 of the 4,096 registers with a rank of at most 2: past the exact range,
        // `distinct` then reads a small fraction of them, and the ratio rule stays quiet. With
        // a seed, the same values spread over the registers.
        const RULE: &str = r#"
id: t.ratio
version: 1
title: ratio
severity: high
entity: account_id
window: 1h
every: 5m
features:
  requests: count()
  prompts: distinct(prompt_fp)
condition: requests >= 1000 AND prompts / requests >= 0.8
"#;
        let mut ground = Vec::new();
        let mut i = 0u64;
        while ground.len() < 1_000 {
            let fp = format!("fp-{i}");
            let (register, rank) = crate::hll::coupon(key_of(&fp));
            if register < 16 && rank <= 2 {
                ground.push(fp);
            }
            i += 1;
        }
        let events: Vec<Vec<u8>> = ground
            .iter()
            .enumerate()
            .map(|(n, fp)| {
                ev(
                    T0 + n as i64,
                    "acct-7",
                    "203.0.113.9",
                    &format!(r#","prompt_fp":"{fp}""#),
                )
            })
            .collect();
        let rules =
            cordon_rules::load_sources(&[("t.yaml".into(), RULE.into())]).expect("rules load");
        let run_with = |seed: u64| run(&mut seeded(&rules, seed), std::slice::from_ref(&events));
        assert!(
            run_with(0).alerts.is_empty(),
            "unseeded, the ground values evade"
        );
        let seeded = run_with(0x9e37_79b9_7f4a_7c15);
        assert_eq!(seeded.alerts.len(), 1, "{:?}", seeded.alerts);
        let prompts = seeded.alerts[0].alert.features["prompts"]
            .as_f64()
            .expect("a number");
        assert!(
            (prompts - 1_000.0).abs() < 50.0,
            "{prompts} distinct of 1000"
        );
    }

    #[test]
    fn a_restored_partition_hashes_with_its_checkpoints_seed() {
        // 500 prompts before a restart and the same 500 after it are 500 distinct prompts,
        // whatever seed the restarted engine has for new partitions: hashed with that seed,
        // the second 500 would land in other registers of the restored sketch and count again.
        const RULE: &str = r#"
id: t.prompts
version: 1
title: prompts
severity: high
entity: account_id
window: 1h
every: 5m
features:
  requests: count()
  prompts: distinct(prompt_fp)
condition: requests >= 1000
"#;
        let rules =
            cordon_rules::load_sources(&[("t.yaml".into(), RULE.into())]).expect("rules load");
        let events = |from: i64| -> Vec<Vec<u8>> {
            (0..500)
                .map(|n| {
                    ev(
                        T0 + from + n,
                        "acct-7",
                        "203.0.113.9",
                        &format!(r#","prompt_fp":"fp-{n}""#),
                    )
                })
                .collect()
        };
        // A seeded checkpoint, and one of format version 3, written before seeds (unseeded).
        for (before, v3) in [(0x1234_5678_9abc_def0, false), (0, true)] {
            let mut p = seeded(&rules, before);
            assert!(run(&mut p, &[events(0)]).alerts.is_empty());
            let mut bytes = p.checkpoint(0, meta()).expect("encode");
            if v3 {
                let c = Checkpoint::decode(&bytes).expect("decode");
                bytes =
                    codec::encode_state(&(c.meta, c.layout, c.tables, c.gates)).expect("encode");
                bytes[4..6].copy_from_slice(&3u16.to_le_bytes());
            }
            let c = Checkpoint::decode(&bytes).expect("decode");
            assert_eq!(c.sketch_seed, before);
            let mut q = seeded(&rules, 0x0fed_cba9_8765_4321);
            q.restore(c);
            let out = run(&mut q, &[events(1_000)]);
            assert_eq!(out.alerts.len(), 1, "{:?}", out.alerts);
            let prompts = out.alerts[0].alert.features["prompts"]
                .as_f64()
                .expect("a number");
            assert!(
                (prompts - 500.0).abs() < 25.0,
                "{prompts} distinct of 500 (version 3: {v3})"
            );
            // Its next checkpoint records the seed it hashes with.
            let again = Checkpoint::decode(&q.checkpoint(0, meta()).expect("encode"));
            assert_eq!(again.expect("decode").sketch_seed, before);
        }
    }

    #[test]
    fn a_batch_alternating_between_partitions_is_taken_partition_by_partition_in_order() {
        // A consumer's batch holds runs of several partitions, which can alternate message by
        // message. Each partition's messages must reach its state, and its dead letters the
        // output, in their order, partitions in ascending order.
        let account = |name: &str| -> Vec<Vec<u8>> {
            let mut events: Vec<Vec<u8>> = (0..30)
                .map(|i| {
                    ev(
                        T0 + i * 1000,
                        name,
                        "203.0.113.9",
                        &format!(r#","labels":["cot_elicitation"],"prompt_fp":"fp-{i}""#),
                    )
                })
                .collect();
            events.insert(7, b"not json".to_vec());
            events.insert(19, br#"{"ts":1}"#.to_vec());
            events
        };
        let (a, b, c) = (account("acct-a"), account("acct-b"), account("acct-c"));
        let (a, b, c) = (
            Input::sequence(2, 100, a.iter().map(Vec::as_slice)),
            Input::sequence(0, 200, b.iter().map(Vec::as_slice)),
            Input::sequence(1, 300, c.iter().map(Vec::as_slice)),
        );
        // a, b, c, a, b, c, ... then a, b, ... and a run of partition 1 alone.
        let mut inputs = Vec::new();
        for (n, (x, y)) in a.iter().zip(&b).enumerate() {
            inputs.extend([*x, *y]);
            inputs.extend(c.get(n).filter(|_| n < 20));
        }
        inputs.extend_from_slice(&c[20..]);
        let mut p = processor();
        let mut out = Output::default();
        p.process(&inputs, NOW, &mut out).expect("process");

        assert_eq!(out.stats.messages, 96);
        let letters: Vec<(i32, i64)> = out
            .dead_letters
            .iter()
            .map(|d| (d.partition, d.offset))
            .collect();
        assert_eq!(
            letters,
            [(0, 207), (0, 219), (1, 307), (1, 319), (2, 107), (2, 119)]
        );
        let mut alerts: Vec<(i32, &str)> = out
            .alerts
            .iter()
            .map(|a| (a.partition, a.key.as_str()))
            .collect();
        alerts.sort_unstable();
        assert_eq!(alerts, [(0, "acct-b"), (1, "acct-c"), (2, "acct-a")]);
        for a in &out.alerts {
            assert_eq!(a.alert.event_count, 30, "{}: every event counted", a.key);
        }
    }

    #[test]
    fn entities_held_by_two_partitions_are_counted_as_split() {
        // The input keyed by account, as a gateway does: each account in one partition, the
        // /24s they share in both. `RULES` keeps accounts (t.cot) and /24s (t.hydra).
        let rules =
            cordon_rules::load_sources(&[("t.yaml".into(), RULES.into())]).expect("rules load");
        let batch = |prefix: &str| -> Vec<Vec<u8>> {
            (0..1_000)
                .map(|n| {
                    let ip = format!("10.0.{}.{}", n % 200, n / 200 + 1);
                    ev(T0 + n, &format!("{prefix}-{n}"), &ip, "")
                })
                .collect()
        };
        let (a, b) = (batch("a"), batch("b"));
        fn inputs(p: i32, events: &[Vec<u8>]) -> Vec<Input<'_>> {
            Input::sequence(p, 0, events.iter().map(Vec::as_slice))
        }
        let sampled = |values: &mut dyn Iterator<Item = String>| {
            values
                .filter(|v| key_of(v).is_multiple_of(SPLIT_SAMPLE))
                .count() as u64
        };
        let ranges = sampled(&mut (0..200).map(|n| format!("10.0.{n}.0/24")));
        let accounts = sampled(&mut (0..1_000).map(|n| format!("b-{n}")));
        assert!(ranges > 0 && accounts > 0, "the fixture samples some keys");

        let mut p = Processor::new(&rules, CoreConfig::default());
        let mut first = Output::default();
        p.process(&inputs(0, &a), NOW, &mut first).expect("process");
        assert!(
            first.stats.split_checks.is_empty(),
            "one partition held: nothing to check"
        );
        let mut second = Output::default();
        p.process(&inputs(1, &b), NOW, &mut second)
            .expect("process");
        let checks = &second.stats.split_checks;
        let name = |rule: usize| p.plan().tables[p.plan().rules[rule].table].name.clone();
        assert_eq!(
            checks.get(&name(0)),
            Some(&SplitChecks {
                checked: accounts,
                split: 0
            }),
            "every account in one partition"
        );
        assert_eq!(
            checks.get(&name(1)),
            Some(&SplitChecks {
                checked: ranges,
                split: ranges
            }),
            "every /24 in both"
        );
    }

    #[test]
    fn the_same_input_evicts_the_same_keys_in_every_run() {
        // Every key of a batch is last touched in that batch, so `state.max_keys` must choose
        // among equals. Two processors (each with its own randomly seeded index order) fed
        // the same batches must keep the same keys.
        let rules =
            cordon_rules::load_sources(&[("t.yaml".into(), RULES.into())]).expect("rules load");
        let config = CoreConfig {
            max_keys: 500,
            ..CoreConfig::default()
        };
        let batches: Vec<Vec<Vec<u8>>> = (0..4)
            .map(|b| {
                (0..300)
                    .map(|i| {
                        let n = b * 300 + i;
                        ev(
                            T0 + n,
                            &format!("acct-{n}"),
                            &format!("10.0.{}.{}", n / 250, n % 250),
                            "",
                        )
                    })
                    .collect()
            })
            .collect();
        let live = |p: &Processor| {
            let mut keys: Vec<(usize, u64)> = p.partitions[&0]
                .tables
                .iter()
                .enumerate()
                .flat_map(|(t, keys)| keys.iter().map(move |(k, _)| (t, k)))
                .collect();
            keys.sort_unstable();
            keys
        };
        let mut a = Processor::new(&rules, config.clone());
        let mut b = Processor::new(&rules, config);
        run(&mut a, &batches);
        run(&mut b, &batches);
        assert!(a.evictions.iter().sum::<u64>() > 0, "the limit was reached");
        assert!(a.live_keys <= 500, "{}", a.live_keys);
        assert_eq!(live(&a), live(&b));
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

    /// A hydra range of 12 accounts, 3 templated requests each, keyed by account onto input
    /// partitions 0 and 1 as a gateway would: each partition holds 6 of the accounts.
    fn hydra_by_account() -> Vec<(i32, Vec<u8>)> {
        let mut events = Vec::new();
        for a in 0..12 {
            for i in 0..3 {
                let prompt =
                    format!(r#","prompt":"You are an expert. Answer question {i}{a} in full""#);
                let e = ev(
                    T0 + a * 10 + i,
                    &format!("hydra-{a}"),
                    &format!("198.51.100.{a}"),
                    &prompt,
                );
                events.push(((a % 2) as i32, e));
            }
        }
        events
    }

    fn staged(stage: Stage) -> Processor {
        let rules =
            cordon_rules::load_sources(&[("t.yaml".into(), RULES.into())]).expect("rules load");
        let config = CoreConfig {
            stage,
            ..CoreConfig::default()
        };
        Processor::new(&rules, config)
    }

    fn input_entity() -> String {
        "account_id".into()
    }

    /// The messages of the repartition topic for `forwards` of the input stage's `sources`, all
    /// in its partition 0 from offset `first`.
    fn repartition_inputs<'a>(
        out: &'a Output,
        sources: &[Input<'a>],
        first: i64,
    ) -> Vec<Input<'a>> {
        out.forwards
            .iter()
            .flat_map(|f| out.keys_of(f).iter().map(move |(entity, _)| (f, entity)))
            .zip(first..)
            .map(|((f, entity), offset)| Input {
                partition: 0,
                offset,
                key: None,
                payload: f.payload.as_deref().unwrap_or(sources[f.input].payload),
                forwarded: Some(Forwarded {
                    entity,
                    partition: f.partition,
                    offset: f.offset,
                }),
            })
            .collect()
    }

    /// The repartition stage expires by the slowest input partition still sending: a range
    /// forwarded from an input partition three hours behind another keeps its window while
    /// that partition sends, and goes once it has been quiet for [`SOURCE_IDLE_MS`] while
    /// the other sends on.
    #[test]
    fn the_repartition_stage_expires_keys_by_its_slowest_sending_input_partition() {
        const RANGE: &str = "ip_prefix(ip, 24, 48)";
        let behind: Vec<Vec<u8>> = (0..3)
            .map(|i| ev(T0 + i, &format!("slow-{i}"), "198.51.100.7", ""))
            .collect();
        let ahead = |from: i64| -> Vec<Vec<u8>> {
            (0..3)
                .map(|i| ev(T0 + 3 * 3_600_000 + from + i, "fast", "203.0.113.9", ""))
                .collect()
        };
        // Frames from input partition 0 (behind) and 1 (three hours ahead), both in
        // repartition partition 0.
        fn frames<'a>(events: &[(i32, &'a Vec<u8>)], first: i64) -> Vec<Input<'a>> {
            events
                .iter()
                .zip(first..)
                .map(|(&(source, payload), offset)| Input {
                    partition: 0,
                    offset,
                    key: None,
                    payload,
                    forwarded: Some(Forwarded {
                        entity: RANGE,
                        partition: source,
                        offset,
                    }),
                })
                .collect()
        }
        // The wall clock of the run: after every event, so that none is from the future.
        const WALL: i64 = T0 + 4 * 3_600_000;
        let mut second = staged(Stage::Repartitioned {
            input_entity: input_entity(),
        });
        let rule = second
            .plan()
            .rules
            .iter()
            .position(|r| r.compiled.rule.id == "t.hydra")
            .expect("t.hydra");
        let first = ahead(0);
        let batch: Vec<(i32, &Vec<u8>)> = behind
            .iter()
            .map(|e| (0, e))
            .chain(first.iter().map(|e| (1, e)))
            .collect();
        let mut out = Output::default();
        second
            .process(&frames(&batch, 0), WALL, &mut out)
            .expect("process");
        assert_eq!((out.stats.events, out.stats.too_old), (6, 0));
        let held = |p: &mut Processor, range: &str| p.peek(rule, range).map(|w| w.events);

        // Both input partitions sent within the last minute: the slow one's range stays.
        second.expire_idle(WALL);
        assert_eq!(held(&mut second, "198.51.100.0/24"), Some(3));
        assert_eq!(held(&mut second, "203.0.113.0/24"), Some(3));

        // Neither has sent for two minutes: nothing is in flight to judge by, and the stage
        // keeps what it has (by the newest event time alone, the slow range would go).
        second.expire_idle(WALL + 2 * SOURCE_IDLE_MS);
        assert_eq!(held(&mut second, "198.51.100.0/24"), Some(3));

        // Then only the fast partition sends again: the slow one no longer holds expiry back,
        // and its range, three hours older than the fast one's events, expires.
        let later = WALL + 3 * SOURCE_IDLE_MS;
        let second_batch = ahead(1_000);
        let batch: Vec<(i32, &Vec<u8>)> = second_batch.iter().map(|e| (1, e)).collect();
        second
            .process(&frames(&batch, 6), later, &mut Output::default())
            .expect("process");
        second.expire_idle(later);
        assert_eq!(held(&mut second, "198.51.100.0/24"), None);
        assert_eq!(held(&mut second, "203.0.113.0/24"), Some(6));
    }

    #[test]
    fn a_range_split_across_input_partitions_fires_once_its_events_are_repartitioned() {
        let events = hydra_by_account();
        let inputs: Vec<Input<'_>> = events
            .iter()
            .zip(0i64..)
            .map(|((p, e), offset)| Input {
                forwarded: None,
                ..Input::sequence(*p, offset, [e.as_slice()])[0]
            })
            .collect();
        // One stage: each partition counts its 6 accounts, and the range stays quiet.
        let mut whole = Output::default();
        processor()
            .process(&inputs, NOW, &mut whole)
            .expect("process");
        assert!(whole.alerts.is_empty(), "{:?}", whole.alerts);

        // The input stage keeps the account table and forwards every event for its /24.
        let mut first = staged(Stage::Source {
            input_entity: input_entity(),
        });
        let mut out = Output::default();
        first.process(&inputs, NOW, &mut out).expect("process");
        assert!(out.alerts.is_empty());
        assert_eq!(out.forwards.len(), 36);
        assert_eq!(out.stats.forwarded, 36);
        // An event without a prompt goes as it came: no copy.
        let plain = ev(T0 + 200, "acct-plain", "198.51.100.99", "");
        let mut one = Output::default();
        first
            .process(&Input::sequence(0, 99, [plain.as_slice()]), NOW, &mut one)
            .expect("process");
        assert_eq!(
            one.forwards
                .iter()
                .map(|f| (f.input, f.offset, f.payload.is_none()))
                .collect::<Vec<_>>(),
            [(0, 99, true)]
        );
        let names: Vec<String> = first.table_stats().into_iter().map(|t| t.name).collect();
        assert_eq!(
            names,
            [first.plan().tables[0].name.clone()],
            "the account table only"
        );
        assert!(names[0].starts_with("account_id/"), "{names:?}");
        for f in &out.forwards {
            let range = crate::frame::value_hash(b"198.51.100.0/24");
            assert_eq!(out.keys_of(f), [("ip_prefix(ip, 24, 48)".into(), range)]);
            assert_eq!(
                (inputs[f.input].partition, inputs[f.input].offset),
                (f.partition, f.offset)
            );
            let text = String::from_utf8(f.payload.clone().expect("rewritten")).expect("utf-8");
            assert!(
                !text.contains("prompt\""),
                "no raw prompt forwarded: {text}"
            );
            assert!(
                text.contains("template_fp"),
                "its fingerprints instead: {text}"
            );
        }
        // Every event, in input order per partition.
        let mut sent: Vec<(i32, i64)> = inputs.iter().map(|i| (i.partition, i.offset)).collect();
        sent.sort_unstable();
        assert_eq!(
            out.forwards
                .iter()
                .map(|f| (f.partition, f.offset))
                .collect::<Vec<_>>(),
            sent
        );

        // The repartition stage sees the whole range in one partition, and it fires.
        let mut second = staged(Stage::Repartitioned {
            input_entity: input_entity(),
        });
        let mut fired = Output::default();
        second
            .process(&repartition_inputs(&out, &inputs, 0), NOW, &mut fired)
            .expect("process");
        let hydra: Vec<&AlertRecord> = fired.alerts.iter().collect();
        assert_eq!(hydra.len(), 1, "{:?}", fired.alerts);
        assert_eq!(hydra[0].alert.rule.id, "t.hydra");
        assert_eq!(hydra[0].key, "198.51.100.0/24");
        assert_eq!(hydra[0].alert.event_count, 36);
        assert_eq!(fired.stats.events, 36);
        assert!(
            second
                .table_stats()
                .iter()
                .all(|t| t.name.starts_with("ip_prefix"))
        );

        // The input stage restarts from a checkpoint and forwards the same events again, at
        // later offsets of the repartition topic: none is counted twice, in this process or
        // in one restored from the repartition stage's checkpoint.
        let mut again = Output::default();
        second
            .process(&repartition_inputs(&out, &inputs, 36), NOW, &mut again)
            .expect("process");
        assert_eq!((again.stats.replayed, again.stats.events), (36, 0));
        assert!(again.alerts.is_empty());
        let ckpt = second.checkpoint(0, meta()).expect("checkpoint");
        let mut restored = staged(Stage::Repartitioned {
            input_entity: input_entity(),
        });
        restored.restore(Checkpoint::decode(&ckpt).expect("decode"));
        let mut after = Output::default();
        restored
            .process(&repartition_inputs(&out, &inputs, 72), NOW, &mut after)
            .expect("process");
        assert_eq!((after.stats.replayed, after.stats.events), (36, 0));
        let window = restored
            .peek(1, "198.51.100.0/24")
            .expect("the range's window");
        assert_eq!(window.events, 36, "counted once");
    }

    #[test]
    fn the_input_stage_raises_its_entitys_alerts_as_one_stage_does() {
        // The harvest with status codes (the rule's filter) and a second account's benign
        // requests: the input stage evaluates only what the account table reads, and must
        // alert exactly as the whole engine does.
        let mut events = harvest(30);
        events.push(ev(T0 + 40_000, "acct-7", "203.0.113.9", r#","status":500"#));
        events.extend((0..5).map(|i| ev(T0 + i, "acct-8", "198.51.100.3", "")));
        let alerts = |p: &mut Processor| -> Vec<(String, String, serde_json::Value)> {
            run(p, std::slice::from_ref(&events))
                .alerts
                .iter()
                .map(|a| {
                    let features = serde_json::to_value(&a.alert.features).expect("json");
                    (a.alert.alert_id.clone(), a.key.clone(), features)
                })
                .collect()
        };
        let whole = alerts(&mut processor());
        let cot: Vec<_> = whole.iter().filter(|a| a.1 == "acct-7").collect();
        assert_eq!(cot.len(), 1, "{whole:?}");
        let mut first = staged(Stage::Source {
            input_entity: input_entity(),
        });
        assert_eq!(
            alerts(&mut first),
            cot.into_iter().cloned().collect::<Vec<_>>()
        );
    }

    #[test]
    fn an_output_cleared_for_the_next_batch_holds_that_batch_alone() {
        // `cordon run` keeps one output for every batch and clears it in between: the second
        // batch must come out as it would into a fresh output.
        let batch = |from: i64| -> Vec<Vec<u8>> {
            let mut events: Vec<Vec<u8>> = (0..50)
                .map(|i| {
                    let extra = format!(r#","prompt":"question {i}","template_fp":"t-{}""#, i % 3);
                    ev(
                        T0 + from + i,
                        &format!("acct-{}", i % 7),
                        "198.51.100.9",
                        &extra,
                    )
                })
                .collect();
            events.insert(11, b"{oops".to_vec());
            events
        };
        let (one, two) = (batch(0), batch(1_000));
        let (one, two) = (
            Input::sequence(0, 0, one.iter().map(Vec::as_slice)),
            Input::sequence(0, 51, two.iter().map(Vec::as_slice)),
        );
        let source = || {
            staged(Stage::Source {
                input_entity: input_entity(),
            })
        };
        let (mut kept, mut fresh) = (source(), source());
        let mut reused = Output::default();
        kept.process(&one, NOW, &mut reused).expect("process");
        assert!(!reused.forwards.is_empty() && !reused.forward_keys.is_empty());
        assert_eq!(reused.dead_letters.len(), 1);
        reused.clear();
        kept.process(&two, NOW, &mut reused).expect("process");

        fresh
            .process(&one, NOW, &mut Output::default())
            .expect("process");
        let mut want = Output::default();
        fresh.process(&two, NOW, &mut want).expect("process");
        assert_eq!(reused.stats, want.stats);
        assert_eq!(reused.stats.messages, 51);
        assert_eq!(format!("{reused:?}"), format!("{want:?}"));
    }

    #[test]
    fn the_repartition_stage_dead_letters_messages_that_were_not_forwarded() {
        let mut second = staged(Stage::Repartitioned {
            input_entity: input_entity(),
        });
        let e = ev(T0, "acct-1", "198.51.100.7", "");
        let mut out = Output::default();
        second
            .process(&Input::sequence(0, 5, [e.as_slice()]), NOW, &mut out)
            .expect("process");
        assert_eq!(out.stats.events, 0);
        assert_eq!(out.dead_letters.len(), 1);
        assert_eq!(out.dead_letters[0].reason, Reason::NotForwarded);
        assert_eq!(out.dead_letters[0].offset, 5);
        // One forwarded for an entity no rule groups by any more (a reload removed it) is
        // skipped and counted.
        let input = Input {
            forwarded: Some(Forwarded {
                entity: "payment_fp",
                partition: 0,
                offset: 1,
            }),
            ..Input::sequence(0, 6, [e.as_slice()])[0]
        };
        let mut out = Output::default();
        second.process(&[input], NOW, &mut out).expect("process");
        assert_eq!((out.stats.unrouted, out.stats.events), (1, 0));
        assert!(out.dead_letters.is_empty());
    }

    #[test]
    fn an_event_too_large_to_forward_is_dead_lettered_and_still_counted_by_the_input_stage() {
        let rules =
            cordon_rules::load_sources(&[("t.yaml".into(), RULES.into())]).expect("rules load");
        let small = ev(T0, "acct-1", "198.51.100.7", "");
        let padding = "p".repeat(2_000);
        let large = ev(
            T0 + 1,
            "acct-1",
            "198.51.100.8",
            &format!(r#","attrs":{{"pad":"{padding}"}}"#),
        );
        let limit = (small.len() + large.len()) / 2;
        let mut first = Processor::new(
            &rules,
            CoreConfig {
                stage: Stage::Source {
                    input_entity: input_entity(),
                },
                max_forward_bytes: limit,
                ..CoreConfig::default()
            },
        );
        let mut out = Output::default();
        first
            .process(
                &Input::sequence(0, 10, [small.as_slice(), large.as_slice()]),
                NOW,
                &mut out,
            )
            .expect("process");
        assert_eq!(out.stats.events, 2, "both count in the input stage");
        let offsets: Vec<i64> = out.forwards.iter().map(|f| f.offset).collect();
        assert_eq!(offsets, [10], "only the small one is forwarded");
        assert_eq!(
            out.keys_of(&out.forwards[0]).len(),
            out.forward_keys.len(),
            "no entity left behind by the one not forwarded"
        );
        assert_eq!(out.dead_letters.len(), 1);
        let dead = &out.dead_letters[0];
        assert_eq!((dead.reason, dead.offset), (Reason::TooLarge, 11));
        assert!(dead.detail.contains("repartition topic"), "{}", dead.detail);
        assert_eq!(dead.payload, large);
        assert_eq!(out.stats.rejected.get(&Reason::TooLarge), Some(&1));
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

    fn meta() -> CheckpointMeta {
        CheckpointMeta {
            topic: "requests".into(),
            partition: 0,
            next_offset: 7,
            watermark: 0,
            alerts_topic: "alerts".into(),
            alerts_end: BTreeMap::new(),
            written_at_ms: 0,
        }
    }

    fn restored(p: &Processor, rules: &RuleSet) -> Processor {
        let bytes = p.checkpoint(0, meta()).expect("encode");
        let c = Checkpoint::decode(&bytes).expect("decode");
        assert_eq!(c.meta.next_offset, 7);
        let mut q = Processor::new(rules, CoreConfig::default());
        q.restore(c);
        q
    }

    fn new_ids(o: &Output) -> Vec<String> {
        o.alerts
            .iter()
            .filter(|a| a.alert.status == crate::gate::Status::New)
            .map(|a| a.alert.alert_id.clone())
            .collect()
    }

    #[test]
    fn restored_state_continues_the_windows_and_the_gate() {
        let rules = cordon_rules::load_sources(&[("t.yaml".into(), RULES.into())]).expect("rules");
        let events = harvest(40);
        let (head, tail) = events.split_at(15);
        // Clean run.
        let clean = run(&mut processor(), std::slice::from_ref(&events));
        // Crash after 15 events, restore from the checkpoint, go on.
        let mut p = processor();
        let first = run(&mut p, &[head.to_vec()]);
        assert!(first.alerts.is_empty(), "15 events are below the threshold");
        let mut q = restored(&p, &rules);
        assert_eq!(q.live_keys(), p.live_keys());
        let second = run(&mut q, &[tail.to_vec()]);
        assert_eq!(
            new_ids(&clean),
            new_ids(&second),
            "the windows carried over"
        );
        // A checkpoint after the alert keeps the gate: the same input again is suppressed.
        let mut r = restored(&q, &rules);
        assert!(new_ids(&run(&mut r, &[tail[20..].to_vec()])).is_empty());
        // The watermark came back too: an event an hour older is late.
        let late = run(&mut r, &[vec![ev(T0 - 3_600_000, "x", "10.0.0.1", "")]]);
        assert_eq!(late.dead_letters[0].reason, Reason::Late);
    }

    /// A checkpoint's content in a form that does not depend on the order of its tables'
    /// entries: its metadata, sketch seed, layout and gates as encoded, and each table's keys with their
    /// encoded states, sorted.
    type Canonical = (Vec<u8>, Vec<Vec<(u64, Vec<u8>)>>);

    fn canonical(bytes: &[u8]) -> Canonical {
        let c = Checkpoint::decode(bytes).expect("decode");
        let mut fixed = Vec::new();
        codec::encode_into(&c.meta, &mut fixed).expect("encode");
        codec::encode_into(&c.sketch_seed, &mut fixed).expect("encode");
        codec::encode_into(&c.layout, &mut fixed).expect("encode");
        codec::encode_into(&c.gates, &mut fixed).expect("encode");
        let tables = c
            .tables
            .iter()
            .map(|t| {
                let mut keys: Vec<(u64, Vec<u8>)> = t
                    .iter()
                    .map(|(k, s)| {
                        let mut state = Vec::new();
                        codec::encode_into(s, &mut state).expect("encode");
                        (k, state)
                    })
                    .collect();
                keys.sort_unstable();
                keys
            })
            .collect();
        (fixed, tables)
    }

    /// The file a checkpoint's parts make.
    fn joined((_, parts): CheckpointParts) -> Vec<u8> {
        let parts = parts.expect("encoded");
        let mut bytes = codec::header(&parts).to_vec();
        for p in &parts {
            bytes.extend_from_slice(p);
        }
        bytes
    }

    /// Events of `accounts` accounts over as many /24s, from `t`.
    fn spread_events(t: i64, accounts: std::ops::Range<u32>) -> Vec<Vec<u8>> {
        accounts
            .map(|n| {
                ev(
                    t + i64::from(n),
                    &format!("acct-{n}"),
                    &format!("10.{}.{}.1", n / 250, n % 250),
                    r#","labels":["cot_elicitation"],"prompt":"p","template_fp":"t""#,
                )
            })
            .collect()
    }

    #[test]
    fn a_checkpoint_encoded_while_batches_go_on_is_the_state_it_began_with() {
        let rules =
            cordon_rules::load_sources(&[("t.yaml".into(), RULES.into())]).expect("rules load");
        let config = CoreConfig {
            max_keys: 700,
            ..CoreConfig::default()
        };
        let mut p = Processor::new(&rules, config);
        let before = run(&mut p, &[spread_events(T0, 0..300), harvest(15)]);
        assert!(
            before.alerts.is_empty(),
            "15 events are below the threshold"
        );
        let expected = p.checkpoint(0, meta()).expect("encode");
        p.begin_checkpoint(0, meta()).expect("begin");
        assert_eq!(p.checkpoint_under_way(), Some(0));
        // Slices of a few slots, with batches in between that change known keys (and raise
        // an alert), add keys past `max_keys` (evicting others), and move the watermark two
        // hours on so that every key of the first batches expires.
        assert!(p.continue_checkpoint(5).is_none());
        let out = run(
            &mut p,
            &[harvest_from(15, 10), spread_events(T0 + 60_000, 200..600)],
        );
        assert!(!out.alerts.is_empty(), "the harvest reached its threshold");
        assert!(p.evictions.iter().sum::<u64>() > 0, "keys were evicted");
        assert!(p.continue_checkpoint(5).is_none());
        let later = spread_events(T0 + 2 * 3_600_000, 900..950);
        let inputs = Input::sequence(0, 1, later.iter().map(Vec::as_slice));
        p.process(&inputs, T0 + 3 * 3_600_000, &mut Output::default())
            .expect("process");
        p.expire_idle(T0 + 3 * 3_600_000);
        assert!(p.live_keys() <= 100, "{} keys left", p.live_keys());
        let mut done = None;
        for _ in 0..10_000 {
            done = p.continue_checkpoint(5);
            if done.is_some() {
                break;
            }
        }
        let done = done.expect("the checkpoint completes");
        assert_eq!(done.0, 0);
        assert_eq!(p.checkpoint_under_way(), None);
        assert_eq!(canonical(&joined(done)), canonical(&expected));
    }

    #[test]
    fn a_checkpoint_begun_again_is_of_the_state_at_the_second_start() {
        let mut p = processor();
        run(&mut p, &[spread_events(T0, 0..50)]);
        p.begin_checkpoint(0, meta()).expect("begin");
        assert!(p.continue_checkpoint(3).is_none());
        run(&mut p, &[spread_events(T0 + 1_000, 20..80)]);
        let expected = canonical(&p.checkpoint(0, meta()).expect("encode"));
        p.begin_checkpoint(0, meta()).expect("begin again");
        let done = p.finish_checkpoint().expect("under way");
        assert_eq!(canonical(&joined(done)), expected);
    }

    #[test]
    fn a_checkpoint_under_way_outlives_a_reload_and_a_revoke_of_its_partition() {
        let mut p = processor();
        run(&mut p, &[spread_events(T0, 0..50), harvest(15)]);
        let expected = canonical(&p.checkpoint(0, meta()).expect("encode"));
        // A reload that drops t.hydra and its table.
        p.begin_checkpoint(0, meta()).expect("begin");
        assert!(p.continue_checkpoint(3).is_none());
        let cot = RULES.split("---").next().unwrap_or_default().to_owned();
        let summary = reload(&mut p, &cot);
        assert_eq!(summary.removed, ["t.hydra"]);
        run(&mut p, &[harvest_from(15, 10)]);
        let done = p.finish_checkpoint().expect("under way");
        assert_eq!(canonical(&joined(done)), expected);
        // The partition revoked: its checkpoint is completed before its state goes.
        let expected = canonical(&p.checkpoint(0, meta()).expect("encode"));
        p.begin_checkpoint(0, meta()).expect("begin");
        assert!(p.continue_checkpoint(0).is_none());
        p.drop_partition(0);
        assert_eq!(p.live_keys(), 0);
        let done = p.finish_checkpoint().expect("under way");
        assert_eq!(canonical(&joined(done)), expected);
        assert!(p.finish_checkpoint().is_none(), "nothing under way");
    }

    #[test]
    fn seeded_alerts_are_not_written_again_by_the_replay() {
        let rules = cordon_rules::load_sources(&[("t.yaml".into(), RULES.into())]).expect("rules");
        let mut p = processor();
        let before = restored(&p, &rules);
        let out = run(&mut p, &[harvest(30)]);
        let a = &out.alerts[0];
        // The checkpoint predates the alert; the alerts topic holds it.
        let mut q = before;
        assert!(q.seed_alert(
            0,
            &a.alert.rule.id,
            a.alert.rule.version,
            &a.key,
            &a.alert.alert_id,
            true,
            a.times.window_end
        ));
        assert!(!q.seed_alert(0, "no.such.rule", 1, "e", "id", true, 0));
        let replay = run(&mut q, &[harvest(30)]);
        assert!(replay.alerts.is_empty(), "{:?}", replay.alerts);
        assert!(replay.stats.suppressed > 0);
    }

    #[test]
    fn a_checkpoint_loads_under_another_rule_set_as_a_reload_would() {
        let mut p = processor();
        run(&mut p, &[harvest(15)]);
        // Another rule set: t.cot unchanged, t.hydra gone, a new rule on another entity.
        let cot = RULES.split("---").next().unwrap_or_default().to_owned();
        let changed = cot.clone()
            + "---\nid: t.org\nversion: 1\ntitle: org\nseverity: low\nentity: org_id\nwindow: 1h\nevery: 5m\nfeatures:\n  n: count()\ncondition: n > 1000\n";
        let rules =
            cordon_rules::load_sources(&[("t.yaml".into(), changed)]).expect("changed rules");
        let mut q = restored(&p, &rules);
        assert_eq!(
            q.live_keys(),
            1,
            "the account key kept, the /24 key dropped"
        );
        // 15 more events reach the threshold of 20 only because the first 15 were kept.
        let out = run(&mut q, &[harvest(30)[15..].to_vec()]);
        let alerts: Vec<_> = out
            .alerts
            .iter()
            .filter(|a| a.alert.rule.id == "t.cot")
            .collect();
        assert_eq!(alerts.len(), 1, "{:?}", out.alerts);
        assert_eq!(alerts[0].alert.features["requests"], serde_json::json!(30));
        // A changed t.cot (a new version) starts fresh, as after a reload.
        let bumped = cordon_rules::load_sources(&[(
            "t.yaml".into(),
            cot.replace("version: 2", "version: 3"),
        )])
        .expect("bumped rules");
        let mut r = restored(&p, &bumped);
        assert_eq!(r.live_keys(), 0);
        assert!(run(&mut r, &[harvest(30)[15..].to_vec()]).alerts.is_empty());
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
                forwarded: None,
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

    fn harvest_from(start: i64, n: i64) -> Vec<Vec<u8>> {
        (start..start + n)
            .map(|i| ev(T0 + i * 1000, "acct-7", "203.0.113.9", &format!(r#","labels":["cot_elicitation"],"prompt":"step by step: problem {i}","output_tokens":100"#)))
            .collect()
    }

    fn reload(p: &mut Processor, text: &str) -> ReloadSummary {
        let rules =
            cordon_rules::load_sources(&[("t.yaml".into(), text.into())]).expect("rules load");
        p.replace_rules(&rules)
    }

    fn cot_alerts(out: &Output) -> Vec<&AlertRecord> {
        out.alerts
            .iter()
            .filter(|a| a.alert.rule.id == "t.cot")
            .collect()
    }

    const EXTRA_RULE: &str = "
---
id: t.errors
version: 1
title: errors
severity: low
entity: account_id
window: 1h
every: 5m
features:
  errors: count_if(status >= 500)
condition: errors >= 1000
";

    #[test]
    fn reload_keeps_the_state_of_unchanged_rules() {
        let mut p = processor();
        assert!(cot_alerts(&run(&mut p, &[harvest_from(0, 15)])).is_empty());
        // t.hydra changes meaning (same version: still a change), a rule is added.
        let changed = RULES.replace("templates <= 5", "templates <= 6").to_owned() + EXTRA_RULE;
        let summary = reload(&mut p, &changed);
        assert_eq!(summary.kept, ["t.cot"]);
        assert_eq!(summary.fresh, ["t.hydra", "t.errors"]);
        assert_eq!(summary.removed, ["t.hydra"]);
        assert!(
            summary.kept_slots >= 4 && summary.fresh_slots >= 1,
            "{summary:?}"
        );
        // 15 before the reload plus 15 after: t.cot's threshold of 20 is crossed.
        let out = run(&mut p, &[harvest_from(15, 15)]);
        let cot = cot_alerts(&out);
        assert_eq!(cot.len(), 1, "{:?}", out.alerts);
        assert_eq!(cot[0].alert.features["requests"], serde_json::json!(30));
        assert_eq!(cot[0].alert.features["prompts"], serde_json::json!(30));
    }

    #[test]
    fn reload_starts_a_changed_rule_fresh() {
        let mut p = processor();
        run(&mut p, &[harvest_from(0, 15)]);
        let summary = reload(&mut p, &RULES.replace("version: 2", "version: 3"));
        assert_eq!(summary.fresh, ["t.cot"]);
        assert_eq!(summary.kept, ["t.hydra"]);
        // Only the 15 events after the reload count for version 3.
        assert!(cot_alerts(&run(&mut p, &[harvest_from(15, 15)])).is_empty());
        let out = run(&mut p, &[harvest_from(30, 5)]);
        let cot = cot_alerts(&out);
        assert_eq!(cot.len(), 1, "{:?}", out.alerts);
        assert_eq!(cot[0].alert.features["requests"], serde_json::json!(20));
        assert_eq!(cot[0].alert.rule.version, 3);
    }

    #[test]
    fn reload_keeps_suppression_of_unchanged_rules() {
        let mut p = processor();
        let first = run(&mut p, &[harvest_from(0, 30)]);
        assert_eq!(cot_alerts(&first).len(), 1);
        let summary = reload(&mut p, RULES);
        assert_eq!(summary.fresh, Vec::<String>::new());
        assert_eq!(summary.removed, Vec::<String>::new());
        assert_eq!(summary.fresh_slots, 0);
        let out = run(&mut p, &[harvest_from(30, 400)]);
        assert!(
            cot_alerts(&out)
                .iter()
                .all(|a| a.alert.status == crate::gate::Status::Update),
            "no second new alert inside suppress: {:?}",
            out.alerts
        );
    }

    #[test]
    fn reload_drops_tables_no_rule_uses() {
        let mut p = processor();
        run(&mut p, &[harvest_from(0, 15)]);
        let keys_before = p.live_keys();
        assert_eq!(keys_before, 2, "one account key, one /24 key");
        let only_cot = RULES
            .split("---")
            .next()
            .expect("first document")
            .to_owned();
        let summary = reload(&mut p, &only_cot);
        assert_eq!(summary.removed, ["t.hydra"]);
        assert_eq!(p.live_keys(), 1);
        assert_eq!(p.table_stats().len(), 1);
    }

    #[test]
    fn ip_prefix_of_the_decoded_address_is_what_the_function_gives() {
        // `ip_prefix(ip, ..)` is formatted from the decoder's parsed addresses; every other
        // use of the function goes through DataFusion. Both must give the same text.
        let p = rules_of(
            "id: t.nets\nversion: 1\ntitle: t\nseverity: low\nentity: ip_prefix(ip, 20, 40)\n\
             window: 1h\nevery: 5m\nfeatures:\n  n: count()\n\
             \x20 nets: distinct(ip_prefix(ip, 24))\n\
             \x20 fps: distinct(ip_prefix(client_fp, 24))\n\
             \x20 all: distinct(ip_prefix(ip, 0, 0))\n\
             condition: n > 100\n",
        );
        let native: Vec<(u8, u8)> = p
            .plan()
            .exprs
            .iter()
            .filter_map(|e| e.addr_prefix)
            .collect();
        assert_eq!(native, [(20, 40), (24, 64), (0, 0)], "{:?}", p.plan().exprs);
        let mut b = EventBatchBuilder::new(1 << 20);
        let mut time = TimeCheck::accept_all();
        let ips = [
            "203.0.113.77",
            " 10.1.2.3 ",
            "0.0.0.0",
            "255.255.255.255",
            "2001:DB8:1234:5678::1",
            "::ffff:192.0.2.1",
            "::",
            "fe80::1:2:3:4",
        ];
        for (i, ip) in ips.iter().enumerate() {
            let event = ev(T0 + i as i64, "a", ip, r#","client_fp":"198.51.100.4""#);
            b.push(&event, &mut time).expect("valid event");
        }
        let decoded = b.finish();
        assert_eq!(decoded.addrs.len(), ips.len());
        let cols = evaluate_columns(p.plan(), &decoded, None, &mut Vec::new()).expect("evaluates");
        let mut compared = 0;
        for (e, col) in p.plan().exprs.iter().zip(&cols) {
            let Col::Text(fast, _) = col else { continue };
            let slow = e
                .expr
                .evaluate(&decoded.batch)
                .and_then(|v| v.into_array(decoded.batch.num_rows()))
                .expect("the function evaluates");
            assert_eq!(fast, slow.as_string::<i32>(), "{}", e.text);
            compared += usize::from(e.addr_prefix.is_some());
        }
        assert_eq!(compared, 3);
    }
}
