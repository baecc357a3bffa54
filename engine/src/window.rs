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
//! sparse key (fewer than [`CACHE_MIN_EVENTS`] events) merges its few small panes on each read
//! instead of holding a second copy of its state.

use crate::agg::{Input, Partial, SlotKind};
use crate::plan::FeatureRead;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

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

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pane {
    idx: i64,
    /// Earliest and latest event time, as ms after the pane's start (a pane is shorter than
    /// 49 days, the range of u32 ms).
    min_off: u32,
    max_off: u32,
    partials: Box<[Partial]>,
}

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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyState {
    /// Non-empty panes, oldest first; the last is the head.
    panes: Vec<Pane>,
    /// Window-level partials per slot, when the key has more than one pane.
    cache: Option<Box<[Option<Partial>]>>,
    /// Batch sequence of the last update, for least-recently-used eviction.
    pub touch: u32,
    /// Scratch for the current batch: where the processor tracks this key's rows.
    pub batch_slot: u32,
    dirty: bool,
}

impl KeyState {
    /// An empty key.
    pub fn new() -> Self {
        Self {
            panes: Vec::new(),
            cache: None,
            touch: 0,
            batch_slot: 0,
            dirty: false,
        }
    }

    /// Whether the key changed since its last snapshot.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Marks the key evaluated.
    pub fn clear_dirty(&mut self) {
        self.dirty = false;
    }

    /// The newest pane index, `i64::MIN` before any event.
    pub fn head(&self) -> i64 {
        self.panes.last().map_or(i64::MIN, |p| p.idx)
    }

    /// Whether the key's whole window has expired by `watermark`.
    pub fn expired(&self, spec: &WindowSpec, watermark: i64) -> bool {
        let head = self.head();
        head == i64::MIN || spec.pane_of(watermark) - head >= spec.panes
    }

    /// Adds one event. `inputs[slot]` is the slot's input, or `None` when the event does not
    /// count for that slot. If the window must slide while the key has unevaluated changes,
    /// `before_slide` is called first with the key as it was.
    pub fn update(
        &mut self,
        spec: &WindowSpec,
        kinds: &[SlotKind],
        ts: i64,
        inputs: &[Option<Input>],
        before_slide: impl FnOnce(&mut KeyState),
    ) -> Update {
        let p = spec.pane_of(ts);
        let head = self.head();
        let mut slid = false;
        if p > head {
            if self.dirty {
                before_slide(self);
                self.dirty = false;
                slid = true;
            }
            let keep_from = self
                .panes
                .partition_point(|pane| pane.idx <= p - spec.panes);
            if keep_from > 0 {
                self.panes.drain(..keep_from);
                self.cache = None;
            }
        } else if p <= head - spec.panes {
            return Update::TooOld;
        }
        let off = (ts - p * spec.pane_ms) as u32;
        let pos = match self.panes.binary_search_by_key(&p, |pane| pane.idx) {
            Ok(i) => i,
            Err(i) => {
                if self.panes.capacity() == self.panes.len() {
                    self.panes.reserve_exact(1);
                }
                let partials = kinds.iter().map(|k| Partial::new(*k)).collect();
                self.panes.insert(
                    i,
                    Pane {
                        idx: p,
                        min_off: off,
                        max_off: off,
                        partials,
                    },
                );
                if self.panes.len() == 2 && self.cache.is_none() {
                    self.cache = Some(vec![None; kinds.len()].into_boxed_slice());
                }
                i
            }
        };
        let pane = &mut self.panes[pos];
        pane.min_off = pane.min_off.min(off);
        pane.max_off = pane.max_off.max(off);
        for (slot, input) in inputs.iter().enumerate() {
            if let Some(input) = input {
                pane.partials[slot].add(*input);
                if let Some(Some(c)) = self.cache.as_mut().map(|c| &mut c[slot]) {
                    c.add(*input);
                }
            }
        }
        self.dirty = true;
        if slid {
            Update::AppliedAfterSlide
        } else {
            Update::Applied
        }
    }

    /// The window-level partial of `slot`. A key with one pane reads it directly; a key with
    /// several merges its panes, and keeps the result (updated by every later event, dropped
    /// when panes expire) once it has [`CACHE_MIN_EVENTS`] events: a sparse key re-merges a few
    /// small panes instead, which costs less than holding a second copy of its state.
    fn window_partial(&mut self, slot: usize) -> Option<Cow<'_, Partial>> {
        if self.panes.len() <= 1 {
            return self.panes.first().map(|p| Cow::Borrowed(&p.partials[slot]));
        }
        if self.cache.as_ref().is_some_and(|c| c[slot].is_some()) {
            return self
                .cache
                .as_ref()
                .and_then(|c| c[slot].as_ref())
                .map(Cow::Borrowed);
        }
        let mut merged = self.panes[0].partials[slot].clone();
        for pane in &self.panes[1..] {
            merged.merge(&pane.partials[slot]);
        }
        let events: u64 = self
            .panes
            .iter()
            .map(|p| match &p.partials[EVENTS_SLOT] {
                Partial::Count(c) => *c,
                _ => 0,
            })
            .sum();
        if events < CACHE_MIN_EVENTS {
            return Some(Cow::Owned(merged));
        }
        let n = self.panes[0].partials.len();
        let cache = self
            .cache
            .get_or_insert_with(|| vec![None; n].into_boxed_slice());
        cache[slot] = Some(merged);
        cache[slot].as_ref().map(Cow::Borrowed)
    }

    /// Reads the key's current window for one rule.
    pub fn snapshot(
        &mut self,
        spec: &WindowSpec,
        events_slot: usize,
        reads: &[FeatureRead],
    ) -> WindowSnapshot {
        let (start, end) = spec.bounds(self.head());
        let features = reads
            .iter()
            .map(|r| {
                self.window_partial(r.slot)
                    .and_then(|p| p.read(r.agg, r.param))
            })
            .collect();
        let events = self
            .window_partial(events_slot)
            .and_then(|p| p.read(cordon_rules::AggKind::Count, 0.0))
            .unwrap_or(0.0) as u64;
        WindowSnapshot {
            start,
            end,
            features,
            first_seen: self
                .panes
                .first()
                .map_or(start, |p| p.idx * spec.pane_ms + i64::from(p.min_off)),
            last_seen: self
                .panes
                .last()
                .map_or(start, |p| p.idx * spec.pane_ms + i64::from(p.max_off)),
            events,
        }
    }

    /// Moves the key to a new slot layout (a rule reload): new slot `i` takes old slot
    /// `map[i]`'s partials, or starts empty when `map[i]` is `None`. `kinds` are the new
    /// slots' kinds. Pane times and the window cache of carried slots stay as they were.
    pub fn remap_slots(&mut self, map: &[Option<usize>], kinds: &[SlotKind]) {
        fn remap(old: &mut [Partial], map: &[Option<usize>], kinds: &[SlotKind]) -> Box<[Partial]> {
            map.iter()
                .zip(kinds)
                .map(|(m, k)| match m {
                    Some(o) => std::mem::replace(&mut old[*o], Partial::new(*k)),
                    None => Partial::new(*k),
                })
                .collect()
        }
        for pane in &mut self.panes {
            pane.partials = remap(&mut pane.partials, map, kinds);
        }
        if let Some(cache) = self.cache.as_mut() {
            *cache = map
                .iter()
                .map(|m| m.and_then(|o| cache[o].take()))
                .collect();
        }
    }

    /// Estimated bytes held by this key, excluding the table's own entry overhead.
    pub fn heap_bytes(&self) -> usize {
        let partial = std::mem::size_of::<Partial>();
        let panes: usize = self
            .panes
            .iter()
            .map(|p| {
                p.partials.len() * partial
                    + p.partials.iter().map(Partial::heap_bytes).sum::<usize>()
            })
            .sum::<usize>()
            + self.panes.capacity() * std::mem::size_of::<Pane>();
        let cache = self.cache.as_ref().map_or(0, |c| {
            c.len() * std::mem::size_of::<Option<Partial>>()
                + c.iter().flatten().map(|p| p.heap_bytes()).sum::<usize>()
        });
        panes + cache
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
    const T0: i64 = 1_772_359_200_000;

    fn ev(
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
