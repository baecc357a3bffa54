//! Event-time sliding windows of panes, per entity.
//!
//! A window (`window`) is a run of panes of length `every`, aligned to the epoch. Each key holds
//! only its non-empty panes, oldest first, and rotates lazily when it is touched: a key that
//! sees no events costs nothing per tick.
//!
//! Reads are O(1) amortized: a key with one pane reads its pane directly; a busy key with
//! several keeps a window-level partial per slot that every event updates alongside its pane.
//! When panes leave the window that cache is dropped and rebuilt on the next read by merging the
//! remaining panes, which happens at most once per pane change of the key, never per event. A
//! sparse key (fewer than [`CACHE_MIN_EVENTS`] events) folds its few small panes on each read
//! ([`crate::agg::read_merged`]) instead of holding a second copy of its state. A key is read
//! once per batch for all the rules of its table ([`KeyState::window`]).

use crate::agg::{Input, Partial, SlotKind, merge_all, read_merged};
use crate::plan::FeatureRead;
use cordon_rules::AggKind;
use serde::{Deserialize, Serialize};

/// The slot whose count measures how busy a key is: [`crate::plan::Plan`] puts the first
/// rule's event count first in every table.
pub const EVENTS_SLOT: usize = 0;

/// Events (in [`EVENTS_SLOT`]'s count) from which a multi-pane key keeps its window cache.
pub const CACHE_MIN_EVENTS: u64 = 64;

/// Request ids an alert carries as samples: the entity's latest requests in the micro-batch
/// that raised it. They are taken from the batch, not kept per key, so state stays small.
pub const SAMPLE_IDS: usize = 3;

/// Window geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WindowSpec {
    /// Pane length (`every`) in ms.
    pub pane_ms: i64,
    /// Panes per window (`window / every`).
    pub panes: i64,
}

impl WindowSpec {
    /// The pane an event time falls in.
    pub fn pane_of(&self, ts: i64) -> i64 {
        ts.div_euclid(self.pane_ms)
    }

    /// `[start, end)` in ms of the window whose newest pane is `head`.
    pub fn bounds(&self, head: i64) -> (i64, i64) {
        (
            (head - self.panes + 1) * self.pane_ms,
            (head + 1) * self.pane_ms,
        )
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Pane {
    idx: i64,
    /// Earliest and latest event time, as ms after the pane's start (a pane is shorter than
    /// 49 days, the range of u32 ms).
    min_off: u32,
    max_off: u32,
}

/// A key's panes, oldest first: the one pane inline (most keys have one), several in a vector.
/// 24 bytes, like a `Vec`: the inline pane sits beside the vector's niche. `SmallVec` would
/// take 32 here (see `benches/src/bin/layout.rs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Panes {
    One(Pane),
    Many(Vec<Pane>),
}

impl Panes {
    fn as_slice(&self) -> &[Pane] {
        match self {
            Panes::One(p) => std::slice::from_ref(p),
            Panes::Many(v) => v,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [Pane] {
        match self {
            Panes::One(p) => std::slice::from_mut(p),
            Panes::Many(v) => v,
        }
    }

    fn len(&self) -> usize {
        self.as_slice().len()
    }

    fn insert(&mut self, i: usize, pane: Pane) {
        match self {
            Panes::Many(v) if v.is_empty() => *self = Panes::One(pane),
            Panes::One(p) => {
                let mut v = Vec::with_capacity(2);
                v.push(*p);
                v.insert(i, pane);
                *self = Panes::Many(v);
            }
            Panes::Many(v) => {
                // Exact size, fresh: see the partials in `KeyState::update`.
                let mut grown = Vec::with_capacity(v.len() + 1);
                grown.extend_from_slice(&v[..i]);
                grown.push(pane);
                grown.extend_from_slice(&v[i..]);
                *v = grown;
            }
        }
    }

    /// Drops the oldest `n` panes (at least one) and appends `newest`: what a window that
    /// slides does. One pane out and one in keeps the allocation as it is.
    fn slide(&mut self, n: usize, newest: Pane) {
        match self {
            Panes::Many(v) if n < v.len() => {
                v.drain(..n);
                v.push(newest);
                if v.len() == 1 {
                    *self = Panes::One(newest);
                } else {
                    v.shrink_to_fit();
                }
            }
            _ => *self = Panes::One(newest),
        }
    }

    /// Heap bytes held.
    fn heap_bytes(&self) -> usize {
        match self {
            Panes::One(_) => 0,
            Panes::Many(v) => v.capacity() * std::mem::size_of::<Pane>(),
        }
    }
}

/// Window-level partials per slot, built on the first read of a busy key (see [`KeyState::window`]).
type Cache = Box<[Option<Partial>]>;

/// The dirty flag's bit in [`KeyState`]'s packed `slot_dirty`.
const DIRTY: u32 = 1 << 31;

/// Where [`KeyState`]'s packed `slot_dirty` keeps the window's [`EVENTS_SLOT`] count: 11 bits
/// above the batch slot, saturating at [`EVENTS_SATURATED`].
const EVENTS_SHIFT: u32 = 20;

/// The window count at which the packed count stops: it then means "at least this many".
pub const EVENTS_SATURATED: u64 = (1 << 11) - 1;

/// The packed count's bits in `slot_dirty`.
const EVENTS_BITS: u32 = (EVENTS_SATURATED as u32) << EVENTS_SHIFT;

/// Whether a window whose [`KeyState::events_at_most`] is `at_most` may have `events` or more
/// events in its [`EVENTS_SLOT`] count (it has, or the packed count is saturated).
pub fn may_reach(at_most: u64, events: u64) -> bool {
    at_most >= EVENTS_SATURATED || at_most >= events
}

/// Largest batch slot [`KeyState::set_batch_slot`] takes: the bits below the packed count.
/// A table touches at most one key per row, so a batch of fewer rows than this always fits.
pub const MAX_BATCH_SLOT: u32 = (1 << EVENTS_SHIFT) - 1;

/// A snapshot of one key's window as one rule sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowSnapshot {
    /// Window start, ms.
    pub start: i64,
    /// Window end (exclusive), ms.
    pub end: i64,
    /// Feature values in rule order; `None` where undefined (e.g. avg of nothing).
    pub features: Vec<Option<f64>>,
    /// Earliest event time of the key in the window.
    pub first_seen: i64,
    /// Latest event time of the key in the window.
    pub last_seen: i64,
    /// The rule's events in the window.
    pub events: u64,
}

/// A key's window-level partials, one per slot, borrowed for reading ([`KeyState::window`]).
#[derive(Debug)]
pub struct Window<'a> {
    /// Window start, ms.
    pub start: i64,
    /// Window end (exclusive), ms.
    pub end: i64,
    /// Earliest event time of the key in the window.
    pub first_seen: i64,
    /// Latest event time of the key in the window.
    pub last_seen: i64,
    slots: Slots<'a>,
}

#[derive(Debug)]
enum Slots<'a> {
    /// The one pane's partials.
    Plain(&'a [Partial]),
    /// The key's cache (every slot filled).
    Cached(&'a [Option<Partial>]),
    /// Several panes of `n` slots each, read by folding them.
    Panes {
        partials: &'a [Partial],
        n: usize,
        scratch: &'a mut Vec<u64>,
    },
}

impl Window<'_> {
    fn read_slot(&mut self, slot: usize, agg: AggKind, q: f64) -> Option<f64> {
        match &mut self.slots {
            Slots::Plain(p) => p.get(slot)?.read(agg, q),
            Slots::Cached(c) => c.get(slot)?.as_ref()?.read(agg, q),
            Slots::Panes {
                partials,
                n,
                scratch,
            } => {
                let parts = partials.iter().skip(slot).step_by(*n);
                (slot < *n).then(|| read_merged(parts, agg, q, scratch))?
            }
        }
    }

    /// One feature's value.
    pub fn read_one(&mut self, read: &FeatureRead) -> Option<f64> {
        self.read_slot(read.slot, read.agg, read.param)
    }

    /// Appends one rule's features (`reads`, in rule order) to `features` and returns the
    /// rule's event count (slot `events_slot`).
    pub fn read(
        &mut self,
        events_slot: usize,
        reads: &[FeatureRead],
        features: &mut Vec<Option<f64>>,
    ) -> u64 {
        for r in reads {
            let v = self.read_slot(r.slot, r.agg, r.param);
            features.push(v);
        }
        self.read_slot(events_slot, AggKind::Count, 0.0)
            .unwrap_or(0.0) as u64
    }
}

/// What happened to an event offered to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// Counted.
    Applied,
    /// Counted, after the key's window slid while it had unevaluated changes: the caller must
    /// evaluate the previous window first (it did so via the `before_slide` callback).
    AppliedAfterSlide,
    /// Older than the key's window: not counted.
    TooOld,
}

/// One entity's window state in one table.
///
/// Sized for the many keys that see one event: the one pane's header is inline, all panes'
/// partials share one allocation, and the struct fits a 64-byte allocator chunk (56 bytes).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyState {
    /// Non-empty panes, oldest first; the last is the head. Inline while there is one.
    panes: Panes,
    /// The panes' partials, pane by pane: slot `s` of pane `i` is at `i * slots + s`.
    partials: Box<[Partial]>,
    /// Window-level partials per slot, kept once a key with several panes is busy. Boxed twice:
    /// a thin pointer keeps the key state small.
    cache: Option<Box<Cache>>,
    /// Batch sequence of the last update, for least-recently-used eviction.
    pub touch: u32,
    /// Packed so that the struct stays within 56 bytes: the batch slot (low 20 bits, see
    /// [`KeyState::batch_slot`]), the window's [`EVENTS_SLOT`] count (11 bits, see
    /// [`KeyState::events_at_most`]) and the dirty flag (top bit). None of it outlives the
    /// process: a checkpoint holds 0 in its place (one byte), a restored key starts clean
    /// ([`KeyState::reset_batch`]), and the count is worked out again from the panes whenever
    /// a key is decoded or remapped.
    #[serde(serialize_with = "as_zero")]
    slot_dirty: u32,
}

/// `slot_dirty` as a checkpoint holds it: the same field, always 0.
fn as_zero<S: serde::Serializer>(_: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u32(0)
}

impl KeyState {
    /// An empty key.
    pub fn new() -> Self {
        Self {
            panes: Panes::Many(Vec::new()),
            partials: Box::default(),
            cache: None,
            touch: 0,
            slot_dirty: 0,
        }
    }

    /// Whether the key changed since its last snapshot.
    pub fn is_dirty(&self) -> bool {
        self.slot_dirty & DIRTY != 0
    }

    /// Marks the key evaluated.
    pub fn clear_dirty(&mut self) {
        self.slot_dirty &= !DIRTY;
    }

    /// Scratch for the current batch: where the processor tracks this key's rows.
    pub fn batch_slot(&self) -> u32 {
        self.slot_dirty & MAX_BATCH_SLOT
    }

    /// Sets the batch slot (at most [`MAX_BATCH_SLOT`]; the processor splits larger batches).
    pub fn set_batch_slot(&mut self, slot: u32) {
        debug_assert!(slot <= MAX_BATCH_SLOT, "batch slot {slot} out of range");
        self.slot_dirty = (self.slot_dirty & !MAX_BATCH_SLOT) | (slot & MAX_BATCH_SLOT);
    }

    /// The window's [`EVENTS_SLOT`] count, or [`EVENTS_SATURATED`] when it is at least that:
    /// an upper bound on every count the window holds under the same filter, known without
    /// touching the panes. The processor skips a key's window read when this is below every
    /// rule's volume threshold, which most keys are.
    pub fn events_at_most(&self) -> u64 {
        u64::from((self.slot_dirty & EVENTS_BITS) >> EVENTS_SHIFT)
    }

    fn set_events(&mut self, events: u64) {
        let packed = (events.min(EVENTS_SATURATED) as u32) << EVENTS_SHIFT;
        self.slot_dirty = (self.slot_dirty & !EVENTS_BITS) | packed;
    }

    /// The sum of the [`EVENTS_SLOT`] counts of `panes`.
    fn pane_events(&self, panes: std::ops::Range<usize>) -> u64 {
        let n = self.slots();
        if n == 0 {
            return 0;
        }
        self.partials
            .chunks_exact(n)
            .take(panes.end)
            .skip(panes.start)
            .map(|p| match &p[EVENTS_SLOT] {
                Partial::Count(c) => *c,
                _ => 0,
            })
            .sum()
    }

    /// Works the packed window count out from the panes again: for a key decoded from a
    /// checkpoint ([`crate::keys::KeyTable`]'s decoding calls it) or remapped.
    pub(crate) fn recount_events(&mut self) {
        self.set_events(self.pane_events(0..usize::MAX));
    }

    /// The newest pane index, `i64::MIN` before any event.
    pub fn head(&self) -> i64 {
        self.panes.as_slice().last().map_or(i64::MIN, |p| p.idx)
    }

    /// Slots per pane.
    fn slots(&self) -> usize {
        self.partials.len() / self.panes.len().max(1)
    }

    /// Whether the key's whole window has expired by `watermark`.
    pub fn expired(&self, spec: &WindowSpec, watermark: i64) -> bool {
        let head = self.head();
        head == i64::MIN || spec.pane_of(watermark) - head >= spec.panes
    }

    /// Adds one event. `inputs[slot]` is the slot's input, or `None` when the event does not
    /// count for that slot. If the window must slide while the key has unevaluated changes,
    /// `before_slide` is called first with the key as it was.
    ///
    /// Always inlined into its one caller, the processor's loop over a batch's rows: the
    /// compiler's own choice went back and forth with unrelated changes to that loop, and
    /// each time it called instead, the 40k mix cost 70-110 more instructions an event
    /// (callgrind, 2026-12-07).
    #[inline(always)]
    pub fn update(
        &mut self,
        spec: &WindowSpec,
        kinds: &[SlotKind],
        ts: i64,
        inputs: &[Option<Input>],
        before_slide: impl FnOnce(&mut KeyState),
    ) -> Update {
        let n = kinds.len();
        let p = spec.pane_of(ts);
        let head = self.head();
        let mut slid = false;
        if p > head {
            if self.is_dirty() {
                before_slide(self);
                self.clear_dirty();
                slid = true;
            }
            let keep_from = self
                .panes
                .as_slice()
                .partition_point(|pane| pane.idx <= p - spec.panes);
            if keep_from > 0 {
                // Panes expire as the new newest one starts: drop and append in one move, so
                // that a steady key (one pane out, one in) keeps its allocations.
                let off = (ts - p * spec.pane_ms) as u32;
                let newest = Pane {
                    idx: p,
                    min_off: off,
                    max_off: off,
                };
                // The dropped panes' counts come off the packed count, which is exact below
                // saturation; a saturated one is counted again from the panes that stay.
                let events = self.events_at_most();
                let saturated = events >= EVENTS_SATURATED;
                if !saturated {
                    let dropped = self.pane_events(0..keep_from);
                    self.set_events(events.saturating_sub(dropped));
                }
                self.panes.slide(keep_from, newest);
                let mut partials = std::mem::take(&mut self.partials).into_vec();
                partials.drain(..keep_from * n);
                partials.extend(kinds.iter().map(|k| Partial::new(*k)));
                self.partials = partials.into_boxed_slice();
                self.cache = None;
                if saturated {
                    self.recount_events();
                }
            }
        } else if p <= head - spec.panes {
            return Update::TooOld;
        }
        let off = (ts - p * spec.pane_ms) as u32;
        let pos = match self
            .panes
            .as_slice()
            .binary_search_by_key(&p, |pane| pane.idx)
        {
            Ok(i) => i,
            Err(i) => {
                self.panes.insert(
                    i,
                    Pane {
                        idx: p,
                        min_off: off,
                        max_off: off,
                    },
                );
                // A fresh allocation of the exact size, the old one's partials moved in: a
                // `realloc` here cost about three times as much (it rarely grows in place).
                let mut old = std::mem::take(&mut self.partials).into_vec().into_iter();
                let mut partials = Vec::with_capacity(old.len() + n);
                partials.extend(old.by_ref().take(i * n));
                partials.extend(kinds.iter().map(|k| Partial::new(*k)));
                partials.extend(old);
                self.partials = partials.into_boxed_slice();
                i
            }
        };
        let pane = &mut self.panes.as_mut_slice()[pos];
        pane.min_off = pane.min_off.min(off);
        pane.max_off = pane.max_off.max(off);
        let partials = &mut self.partials[pos * n..(pos + 1) * n];
        // Most keys have no window cache: their partials take the input alone, without a
        // look for a cached partial per slot (-216 instructions an event, callgrind). A cache
        // has a partial per slot; one that has not (a damaged checkpoint) is dropped, to be
        // merged again from the panes on the next read.
        match self.cache.as_mut() {
            Some(cache) if cache.len() == n => {
                let slots = partials.iter_mut().zip(inputs).zip(cache.iter_mut());
                for ((partial, input), cached) in slots {
                    if let Some(input) = input {
                        partial.add_with_window(cached.as_mut(), *input);
                    }
                }
            }
            cache => {
                if cache.is_some() {
                    self.cache = None;
                }
                for (partial, input) in partials.iter_mut().zip(inputs) {
                    if let Some(input) = input {
                        partial.add(*input);
                    }
                }
            }
        }
        if let Some(Some(_)) = inputs.get(EVENTS_SLOT) {
            self.set_events(self.events_at_most() + 1);
        }
        self.slot_dirty |= DIRTY;
        if slid {
            Update::AppliedAfterSlide
        } else {
            Update::Applied
        }
    }

    /// The key's window, slot by slot, for reading any number of rules. A key with one pane
    /// reads its pane directly. A busy key with several ([`CACHE_MIN_EVENTS`] events or more)
    /// merges them once into its cache, which every later event updates and which is dropped
    /// when panes expire. A sparse key folds its few small panes on each read
    /// ([`crate::agg::read_merged`]), which costs less than holding a second copy of its state.
    /// `scratch` is working space for those reads.
    pub fn window<'a>(&'a mut self, spec: &WindowSpec, scratch: &'a mut Vec<u64>) -> Window<'a> {
        let (start, end) = spec.bounds(self.head());
        let panes = self.panes.as_slice();
        let first_seen = panes
            .first()
            .map_or(start, |p| p.idx * spec.pane_ms + i64::from(p.min_off));
        let last_seen = panes
            .last()
            .map_or(start, |p| p.idx * spec.pane_ms + i64::from(p.max_off));
        let n = self.slots();
        let slots = if panes.len() <= 1 || n == 0 {
            Slots::Plain(&self.partials)
        } else if self
            .cache
            .as_ref()
            .is_some_and(|c| c.iter().all(Option::is_some))
        {
            Slots::Cached(self.cache.as_deref().map_or(&[], |c| &c[..]))
        } else {
            // The packed count is exact this far below its saturation.
            const _: () = assert!(CACHE_MIN_EVENTS < EVENTS_SATURATED);
            if self.events_at_most() < CACHE_MIN_EVENTS {
                Slots::Panes {
                    partials: &self.partials,
                    n,
                    scratch,
                }
            } else {
                let merged: Vec<Option<Partial>> = (0..n)
                    .map(|slot| merge_all(self.partials.iter().skip(slot).step_by(n)))
                    .collect();
                let cache = self.cache.insert(Box::new(merged.into_boxed_slice()));
                Slots::Cached(&cache[..])
            }
        };
        Window {
            start,
            end,
            first_seen,
            last_seen,
            slots,
        }
    }

    /// Reads the key's current window for one rule.
    pub fn snapshot(
        &mut self,
        spec: &WindowSpec,
        events_slot: usize,
        reads: &[FeatureRead],
    ) -> WindowSnapshot {
        let mut scratch = Vec::new();
        let mut w = self.window(spec, &mut scratch);
        let mut features = Vec::with_capacity(reads.len());
        let events = w.read(events_slot, reads, &mut features);
        WindowSnapshot {
            start: w.start,
            end: w.end,
            features,
            first_seen: w.first_seen,
            last_seen: w.last_seen,
            events,
        }
    }

    /// Moves the key to a new slot layout (a rule reload): new slot `i` takes old slot
    /// `map[i]`'s partials, or starts empty when `map[i]` is `None`. `kinds` are the new
    /// slots' kinds. Pane times and the window cache of carried slots stay as they were.
    pub fn remap_slots(&mut self, map: &[Option<usize>], kinds: &[SlotKind]) {
        let old_n = self.slots();
        let mut old = std::mem::take(&mut self.partials).into_vec();
        let mut partials = Vec::with_capacity(self.panes.len() * map.len());
        for i in 0..self.panes.len() {
            let pane = &mut old[i * old_n..(i + 1) * old_n];
            partials.extend(map.iter().zip(kinds).map(|(m, k)| match m {
                Some(o) => std::mem::replace(&mut pane[*o], Partial::Count(0)),
                None => Partial::new(*k),
            }));
        }
        self.partials = partials.into_boxed_slice();
        if let Some(cache) = self.cache.as_mut() {
            **cache = map
                .iter()
                .map(|m| m.and_then(|o| cache[o].take()))
                .collect();
        }
        self.recount_events();
    }

    /// Forgets the batch bookkeeping (`touch`, `batch_slot`) of another process: a key restored
    /// from a checkpoint looks least recently used and untouched in the current batch.
    pub fn reset_batch(&mut self) {
        self.touch = 0;
        self.slot_dirty &= EVENTS_BITS;
    }

    /// Starts loading the memory an update of the key's newest pane reads: its pane list, the
    /// newest pane's partials and the window cache ([`crate::prefetch`]). A hint only: it
    /// changes nothing. (Prefetching one level further, the boxed sets those partials point
    /// to, measured no faster.) `n` is the table's slots per pane, as [`KeyState::update`]
    /// takes them: the caller knows it, and working it out here would cost a division per key.
    pub fn prefetch(&self, n: usize) {
        use crate::prefetch::prefetch;
        if let Panes::Many(v) = &self.panes {
            prefetch(v.as_ptr());
            prefetch(v.as_ptr().wrapping_add(v.len().saturating_sub(1)));
        }
        let head = self
            .partials
            .as_ptr()
            .wrapping_add(self.partials.len().saturating_sub(n));
        prefetch(head);
        prefetch(head.wrapping_add(n.saturating_sub(1)));
        if let Some(c) = &self.cache {
            prefetch(&raw const **c);
        }
    }

    /// Starts loading the sketch registers that values hashed to `hashes` would raise in slot
    /// `slot` of the newest pane and of the window cache, where those are sketches
    /// ([`Partial::prefetch_registers`]). `n` is the table's slots per pane.
    pub fn prefetch_distinct(&self, n: usize, slot: usize, hashes: impl Iterator<Item = u64>) {
        let newest = self.partials.len().saturating_sub(n) + slot;
        if let Some(pane) = self.partials.get(newest) {
            let window = self.cache.as_ref().and_then(|c| c.get(slot)?.as_ref());
            pane.prefetch_registers(window, hashes);
        }
    }

    /// Estimated bytes held by this key, excluding the table's own entry overhead.
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        let panes = self.panes.heap_bytes();
        let partials = self.partials.len() * size_of::<Partial>()
            + self.partials.iter().map(Partial::heap_bytes).sum::<usize>();
        let cache = self.cache.as_ref().map_or(0, |c| {
            size_of::<Cache>()
                + c.len() * size_of::<Option<Partial>>()
                + c.iter().flatten().map(Partial::heap_bytes).sum::<usize>()
        });
        panes + partials + cache
    }
}

impl Default for KeyState {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cordon_rules::AggKind;

    const SPEC: WindowSpec = WindowSpec {
        pane_ms: 60_000,
        panes: 5,
    };
    const KINDS: [SlotKind; 4] = [
        SlotKind::Count,
        SlotKind::Count,
        SlotKind::Moments,
        SlotKind::Distinct,
    ];
    const READS: [FeatureRead; 4] = [
        FeatureRead {
            slot: 0,
            agg: AggKind::Count,
            param: 0.0,
        },
        FeatureRead {
            slot: 1,
            agg: AggKind::CountIf,
            param: 0.0,
        },
        FeatureRead {
            slot: 2,
            agg: AggKind::Sum,
            param: 0.0,
        },
        FeatureRead {
            slot: 3,
            agg: AggKind::Distinct,
            param: 0.0,
        },
    ];
    pub(super) const T0: i64 = 1_772_359_200_000;

    pub(super) fn ev(
        k: &mut KeyState,
        ts: i64,
        flag: bool,
        x: f64,
        h: u64,
    ) -> (Update, Option<WindowSnapshot>) {
        let inputs = [
            Some(Input::One),
            flag.then_some(Input::One),
            Some(Input::Number(x)),
            Some(Input::Hash(h)),
        ];
        let mut closed = None;
        let u = k.update(&SPEC, &KINDS, ts, &inputs, |k| {
            closed = Some(k.snapshot(&SPEC, 0, &READS))
        });
        (u, closed)
    }

    fn read(k: &mut KeyState) -> WindowSnapshot {
        k.clear_dirty();
        k.snapshot(&SPEC, 0, &READS)
    }

    #[test]
    fn the_batch_slot_the_count_and_the_dirty_flag_keep_to_their_bits() {
        let mut k = KeyState::new();
        for _ in 0..3 {
            ev(&mut k, T0, false, 1.0, 1);
        }
        assert!(k.is_dirty());
        k.set_batch_slot(MAX_BATCH_SLOT);
        assert_eq!(
            (k.batch_slot(), k.events_at_most(), k.is_dirty()),
            (MAX_BATCH_SLOT, 3, true)
        );
        k.set_events(EVENTS_SATURATED + 5);
        k.clear_dirty();
        assert_eq!(
            (k.batch_slot(), k.events_at_most(), k.is_dirty()),
            (MAX_BATCH_SLOT, EVENTS_SATURATED, false)
        );
        k.set_batch_slot(0);
        k.reset_batch();
        assert_eq!(
            (k.batch_slot(), k.events_at_most(), k.touch),
            (0, EVENTS_SATURATED, 0)
        );
        // Saturated: it may reach any count; below, only what it holds.
        assert!(may_reach(EVENTS_SATURATED, u64::MAX));
        assert!(may_reach(3, 3) && !may_reach(3, 4));
    }

    proptest::proptest! {
        /// The packed window count is the window's events-slot count (capped at saturation)
        /// after every update: in order, late into an older pane, too old, sliding by one
        /// pane or past the whole window, saturated or not, and after a checkpoint's decoding
        /// and a remap.
        #[test]
        fn the_packed_count_is_the_windows_events(
            steps in proptest::collection::vec((0i64..8, 0u32..3_000, 0usize..40), 1..60),
        ) {
            let mut k = KeyState::new();
            let mut newest = T0;
            for (back, burst, gap) in steps {
                // `gap` panes on from the newest event, or `back` panes behind it.
                newest += gap.saturating_sub(30) as i64 * SPEC.pane_ms;
                let ts = newest - back * SPEC.pane_ms;
                for i in 0..(burst % 7 + if burst > 2_900 { 2_100 } else { 0 }) {
                    ev(&mut k, ts + i64::from(i), i % 2 == 0, 1.0, u64::from(i));
                }
                let held = k.pane_events(0..usize::MAX).min(EVENTS_SATURATED);
                proptest::prop_assert_eq!(k.events_at_most(), held);
                proptest::prop_assert!(may_reach(k.events_at_most(), held));
            }
            let held = k.events_at_most();
            let mut table = crate::keys::KeyTable::default();
            let (slot, _) = table.slot_or_insert(7);
            if let Some(s) = table.state_mut(slot) {
                *s = k.clone();
                s.set_events(0);
            }
            let bytes = crate::codec::encode_state(&table).map_err(|e| {
                proptest::test_runner::TestCaseError::fail(e.to_string())
            })?;
            let mut back: crate::keys::KeyTable = crate::codec::decode_state(&bytes).map_err(|e| {
                proptest::test_runner::TestCaseError::fail(e.to_string())
            })?;
            let restored = back.get_mut(7).map(|s| s.events_at_most());
            proptest::prop_assert_eq!(restored, Some(held));
            // Slot 1 (the flagged events) becomes the events slot.
            k.remap_slots(&[Some(1), Some(0), Some(2), Some(3)], &KINDS);
            let flagged = k.pane_events(0..usize::MAX).min(EVENTS_SATURATED);
            proptest::prop_assert_eq!(k.events_at_most(), flagged);
        }
    }

    #[test]
    fn a_busy_keys_cached_sketch_reads_as_the_merge_of_its_panes() {
        // Thousands of distinct values in each of three panes: the panes' and the window
        // cache's sets are sketches, raised together by every event once the cache exists.
        let mut k = KeyState::new();
        let mut n = 0u64;
        for pane in 0..3 {
            for i in 0..2_000 {
                ev(
                    &mut k,
                    T0 + pane * SPEC.pane_ms + i,
                    false,
                    1.0,
                    xxhash_rust::xxh3::xxh3_64(&n.to_le_bytes()),
                );
                n += 1;
                if pane == 1 && i == 10 {
                    read(&mut k);
                }
            }
        }
        assert!(
            matches!(
                k.cache.as_deref().map(|c| &c[..]),
                Some([.., Some(Partial::DistinctHll(_))])
            ),
            "the cache holds a sketch"
        );
        let cached = read(&mut k);
        let mut uncached = k.clone();
        uncached.cache = None;
        let merged = read(&mut uncached);
        assert_eq!(cached.features, merged.features);
        let distinct = cached.features[3].unwrap_or(0.0);
        assert!((distinct - 6_000.0).abs() < 6_000.0 * 0.05, "{distinct}");
    }

    #[test]
    fn totals_follow_the_window_as_it_slides() {
        let mut k = KeyState::new();
        for i in 0..5 {
            ev(&mut k, T0 + i * 60_000, i % 2 == 0, 10.0, i as u64);
        }
        let s = read(&mut k);
        assert_eq!(
            s.features,
            vec![Some(5.0), Some(3.0), Some(50.0), Some(5.0)]
        );
        assert_eq!((s.start, s.end), (T0, T0 + 5 * 60_000));
        assert_eq!(
            (s.first_seen, s.last_seen, s.events),
            (T0, T0 + 4 * 60_000, 5)
        );
        // minute 6: panes 0 and 1 leave the window
        ev(&mut k, T0 + 6 * 60_000, false, 1.0, 99);
        let s = read(&mut k);
        assert_eq!(
            s.features,
            vec![Some(4.0), Some(2.0), Some(31.0), Some(4.0)]
        );
        assert_eq!(s.start, T0 + 2 * 60_000);
        // reads are repeatable and updates after a read keep the cache right
        ev(&mut k, T0 + 6 * 60_000 + 1, true, 2.0, 100);
        let s = read(&mut k);
        assert_eq!(
            s.features,
            vec![Some(5.0), Some(3.0), Some(33.0), Some(5.0)]
        );
        assert_eq!(read(&mut k).features, s.features);
    }

    #[test]
    fn idle_keys_expire_whole() {
        let mut k = KeyState::new();
        ev(&mut k, T0, true, 1.0, 1);
        assert!(!k.expired(&SPEC, T0 + 4 * 60_000));
        assert!(k.expired(&SPEC, T0 + 5 * 60_000));
        ev(&mut k, T0 + 60 * 60_000, true, 2.0, 2);
        assert_eq!(
            read(&mut k).features,
            vec![Some(1.0), Some(1.0), Some(2.0), Some(1.0)]
        );
    }

    #[test]
    fn a_slide_hands_back_the_unevaluated_window() {
        let mut k = KeyState::new();
        ev(&mut k, T0, true, 1.0, 1);
        ev(&mut k, T0 + 1, true, 1.0, 2);
        let (u, closed) = ev(&mut k, T0 + 60_000, true, 1.0, 3);
        assert_eq!(u, Update::AppliedAfterSlide);
        let closed = closed.expect("closed window");
        assert_eq!(closed.features[0], Some(2.0));
        assert_eq!(closed.end, T0 + 60_000);
        read(&mut k);
        let (u, closed) = ev(&mut k, T0 + 120_000, true, 1.0, 4);
        assert_eq!((u, closed), (Update::Applied, None));
    }

    #[test]
    fn late_events_within_the_window_land_in_their_pane() {
        let mut k = KeyState::new();
        ev(&mut k, T0 + 3 * 60_000, true, 1.0, 1);
        ev(&mut k, T0 + 60_000, true, 1.0, 2);
        assert_eq!(ev(&mut k, T0 - 2 * 60_000, true, 1.0, 3).0, Update::TooOld);
        let s = read(&mut k);
        assert_eq!(s.features[0], Some(2.0));
        assert_eq!(s.first_seen, T0 + 60_000);
        ev(&mut k, T0 + 6 * 60_000, true, 1.0, 4);
        assert_eq!(read(&mut k).features[0], Some(2.0));
    }

    #[test]
    fn slots_only_count_their_events() {
        let mut k = KeyState::new();
        let inputs = [Some(Input::One), None, None, Some(Input::Hash(7))];
        k.update(&SPEC, &KINDS, T0, &inputs, |_| {});
        let s = read(&mut k);
        assert_eq!(s.features, vec![Some(1.0), Some(0.0), Some(0.0), Some(1.0)]);
    }

    #[test]
    fn remapped_slots_keep_their_panes() {
        let mut k = KeyState::new();
        for i in 0..100 {
            ev(&mut k, T0 + (i % 3) * 60_000, i % 2 == 0, 1.0, i as u64 % 7);
        }
        let before = read(&mut k);
        // New layout: count, distinct (old 3), a new count_if, moments (old 2).
        let kinds = [
            SlotKind::Count,
            SlotKind::Distinct,
            SlotKind::Count,
            SlotKind::Moments,
        ];
        k.remap_slots(&[Some(0), Some(3), None, Some(2)], &kinds);
        let reads = [READS[0], READS[3], READS[1], READS[2]];
        let reads = [0, 1, 2, 3].map(|slot| FeatureRead {
            slot,
            ..reads[slot]
        });
        let after = k.snapshot(&SPEC, 0, &reads);
        assert_eq!(
            after.features,
            vec![
                before.features[0],
                before.features[3],
                Some(0.0),
                before.features[2]
            ]
        );
        assert_eq!(
            (after.first_seen, after.last_seen),
            (before.first_seen, before.last_seen)
        );
        // Events keep landing in the new layout, in old and new panes.
        let inputs = [
            Some(Input::One),
            Some(Input::Hash(99)),
            Some(Input::One),
            None,
        ];
        k.update(&SPEC, &kinds, T0 + 60_000, &inputs, |_| {});
        k.update(&SPEC, &kinds, T0 + 3 * 60_000, &inputs, |_| {});
        let s = k.snapshot(&SPEC, 0, &reads);
        assert_eq!(s.features[0], Some(102.0));
        assert_eq!(s.features[1], Some(8.0));
        assert_eq!(s.features[2], Some(2.0));
    }

    #[test]
    fn a_prefetch_works_out_its_addresses_whatever_the_key_holds() {
        // Pass 2 prefetches every touched key: the address arithmetic must not panic on an
        // empty key (no panes, no partials), one pane, or several panes with a window cache.
        let empty = KeyState::new();
        let mut one = KeyState::new();
        ev(&mut one, T0, true, 1.0, 1);
        let mut busy = KeyState::new();
        for i in 0..200u64 {
            ev(&mut busy, T0 + (i as i64 % 4) * 60_000, false, 1.0, i);
        }
        read(&mut busy);
        assert!(busy.cache.is_some(), "the busy key has built its cache");
        for k in [empty, one, busy] {
            k.prefetch(KINDS.len());
        }
    }

    #[test]
    fn state_round_trips_through_its_serialized_form() {
        let mut k = KeyState::new();
        for i in 0..300u64 {
            ev(
                &mut k,
                T0 + (i as i64 % 5) * 60_000,
                i % 3 == 0,
                i as f64,
                xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()),
            );
        }
        let bytes = crate::codec::encode_state(&k).expect("encode");
        let mut back: KeyState = crate::codec::decode_state(&bytes).expect("decode");
        assert_eq!(read(&mut back), read(&mut k));
    }
}

#[cfg(test)]
mod format_tests {
    use super::tests::{T0, ev};
    use super::*;

    /// The serialized key states a checkpoint holds, pinned by a hash of their bytes: a change
    /// of the in-memory layout must not change what a checkpoint reads and writes.
    #[test]
    fn the_serialized_form_of_a_key_state_is_pinned() {
        // The body alone: the header's format version moves with any persisted type.
        let hash = |k: &KeyState| {
            let mut body = Vec::new();
            crate::codec::encode_into(k, &mut body).expect("encode");
            xxhash_rust::xxh3::xxh3_64(&body)
        };
        let empty = KeyState::new();
        let mut one = KeyState::new();
        ev(&mut one, T0 + 1_000, true, 3.0, 7);
        let mut many = KeyState::new();
        for i in 0..300u64 {
            // Out of order within the hour, over five panes, past the exact distinct limit.
            let ts = T0 + ((i * 7) % 5) as i64 * 60_000 + (i % 13) as i64;
            ev(&mut many, ts, i % 3 == 0, i as f64, i);
        }
        assert_eq!(
            [hash(&empty), hash(&one), hash(&many)],
            // The last two changed once, when the transient batch word started to be written
            // as 0 (the same u32 field, so older checkpoints still decode); all three when the
            // hash left out the header (format version 4).
            [
                8_182_951_325_042_164_471,
                12_491_993_000_895_998_476,
                14_117_912_057_369_321_232
            ],
            "the checkpoint form of a key state changed"
        );
    }
}

#[cfg(test)]
mod size_tests {
    /// A key state is allocated per key: 56 bytes fill a 64-byte allocator chunk.
    #[test]
    fn key_state_stays_small() {
        let size = std::mem::size_of::<super::KeyState>();
        assert!(size <= 56, "{size}");
    }
}
