//! Event-time sliding windows of panes, per entity.
//!
//! A rule's window (`window`) is a run of panes of length `every`, aligned to the epoch. Each key
//! holds only its non-empty panes, newest last, and rotates lazily when it is touched: a key that
//! sees no events costs nothing per tick. Counts and sums are kept as running totals (added on
//! update, subtracted when a pane leaves the window), so reading them is O(1); `distinct`
//! unions its per-pane sets on read.

use cordon_rules::AggKind;
use datasketches::hll::{HllSketch, HllType, HllUnion};
use std::collections::VecDeque;

/// Distinct values kept exactly per pane before switching to HyperLogLog.
pub const EXACT_DISTINCT_LIMIT: usize = 64;
/// HyperLogLog precision (lg of the number of registers): about 1.6% standard error.
pub const HLL_LG_K: u8 = 12;
/// Request ids kept per key for alert evidence.
pub const SAMPLE_IDS: usize = 5;

/// Window geometry of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Distinct values of one pane: exact hashes while few, HyperLogLog beyond.
#[derive(Debug, Clone)]
pub enum DistinctSet {
    /// Sorted, unique 64-bit hashes.
    Exact(Vec<u64>),
    /// A sketch.
    Hll(Box<HllSketch>),
}

impl DistinctSet {
    fn insert(&mut self, h: u64) {
        match self {
            DistinctSet::Exact(v) => {
                if let Err(i) = v.binary_search(&h) {
                    if v.len() < EXACT_DISTINCT_LIMIT {
                        v.insert(i, h);
                    } else {
                        let mut s = new_hll();
                        for x in v.iter() {
                            s.update(*x);
                        }
                        s.update(h);
                        *self = DistinctSet::Hll(Box::new(s));
                    }
                }
            }
            DistinctSet::Hll(s) => s.update(h),
        }
    }
}

fn new_hll() -> HllSketch {
    // lg_k 12 is within the library's valid range (4..=21); the error cannot happen.
    HllSketch::new(HLL_LG_K, HllType::Hll8).unwrap_or_else(|_| unreachable!("valid lg_k"))
}

/// The number of distinct values across several panes' sets.
pub fn distinct_union<'a>(sets: impl Iterator<Item = &'a DistinctSet> + Clone) -> f64 {
    if sets.clone().all(|s| matches!(s, DistinctSet::Exact(_))) {
        let mut all: Vec<u64> = sets
            .flat_map(|s| match s {
                DistinctSet::Exact(v) => v.iter().copied(),
                DistinctSet::Hll(_) => [].iter().copied(),
            })
            .collect();
        all.sort_unstable();
        all.dedup();
        return all.len() as f64;
    }
    let mut union = HllUnion::new(HLL_LG_K).unwrap_or_else(|_| unreachable!("valid lg_k"));
    for s in sets {
        match s {
            DistinctSet::Exact(v) => v.iter().for_each(|h| union.update_value(*h)),
            DistinctSet::Hll(h) => union.update(h),
        }
    }
    union.estimate().round()
}

/// One feature's partial aggregate in one pane.
#[derive(Debug, Clone)]
pub enum PaneAgg {
    /// count / count_if.
    Count(u64),
    /// sum / avg: the sum and the number of non-null values.
    Sum(f64, u64),
    /// distinct.
    Distinct(DistinctSet),
}

impl PaneAgg {
    fn new(agg: AggKind) -> Self {
        match agg {
            AggKind::Count | AggKind::CountIf => PaneAgg::Count(0),
            AggKind::Sum | AggKind::Avg => PaneAgg::Sum(0.0, 0),
            AggKind::Distinct => PaneAgg::Distinct(DistinctSet::Exact(Vec::new())),
        }
    }
}

/// The per-event input of one feature.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FeatureInput {
    /// count(): always counts.
    One,
    /// count_if(p): whether p held.
    Flag(bool),
    /// sum/avg: the value, or none for null.
    Number(Option<f64>),
    /// distinct: a hash of the value, or none for null.
    Hash(Option<u64>),
}

#[derive(Debug, Clone)]
struct Pane {
    idx: i64,
    events: u64,
    min_ts: i64,
    max_ts: i64,
    aggs: Vec<PaneAgg>,
}

/// Running totals over the live panes, for O(1) reads.
#[derive(Debug, Clone, Copy, Default)]
struct Total {
    count: u64,
    sum: f64,
}

/// A snapshot of one key's window, ready for the condition.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowSnapshot {
    /// Window start, ms.
    pub start: i64,
    /// Window end (exclusive), ms.
    pub end: i64,
    /// Feature values in rule order; `None` where undefined (avg of nothing).
    pub features: Vec<Option<f64>>,
    /// Earliest event time in the window.
    pub first_seen: i64,
    /// Latest event time in the window.
    pub last_seen: i64,
    /// Events in the window.
    pub events: u64,
    /// Recent request ids of the key.
    pub samples: Vec<String>,
}

/// What happened to an event offered to a key.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Counted.
    Applied,
    /// Counted, and the key's previous window closed with unevaluated changes: evaluate this.
    AppliedAfterClose(Box<WindowSnapshot>),
    /// Older than the key's window: not counted.
    TooOld,
}

/// One entity's window state for one rule.
#[derive(Debug, Clone)]
pub struct KeyState {
    head: i64,
    panes: VecDeque<Pane>,
    totals: Vec<Total>,
    samples: VecDeque<String>,
    dirty: bool,
}

impl KeyState {
    /// An empty key for a rule with these aggregates.
    pub fn new(aggs: &[AggKind]) -> Self {
        Self {
            head: i64::MIN,
            panes: VecDeque::new(),
            totals: vec![Total::default(); aggs.len()],
            samples: VecDeque::new(),
            dirty: false,
        }
    }

    /// Whether the key changed since its last snapshot.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// The newest pane index, `i64::MIN` before any event.
    pub fn head(&self) -> i64 {
        self.head
    }

    /// Whether the key's whole window has expired by `watermark`.
    pub fn expired(&self, spec: &WindowSpec, watermark: i64) -> bool {
        self.head == i64::MIN || spec.pane_of(watermark) - self.head >= spec.panes
    }

    /// Adds one event. `inputs` are in rule feature order.
    pub fn update(
        &mut self,
        spec: &WindowSpec,
        aggs: &[AggKind],
        ts: i64,
        inputs: &[FeatureInput],
        request_id: Option<&str>,
    ) -> Update {
        let p = spec.pane_of(ts);
        let mut closed = None;
        if p > self.head {
            if self.dirty {
                closed = Some(Box::new(self.snapshot(spec, aggs)));
                self.dirty = false;
            }
            self.head = p;
            self.expire(spec, aggs);
        } else if p <= self.head - spec.panes {
            return Update::TooOld;
        }
        let pos = match self.panes.iter().rposition(|pane| pane.idx <= p) {
            Some(i) if self.panes[i].idx == p => i,
            found => {
                let at = found.map_or(0, |i| i + 1);
                let pane = Pane {
                    idx: p,
                    events: 0,
                    min_ts: ts,
                    max_ts: ts,
                    aggs: aggs.iter().map(|a| PaneAgg::new(*a)).collect(),
                };
                self.panes.insert(at, pane);
                at
            }
        };
        let pane = &mut self.panes[pos];
        pane.events += 1;
        pane.min_ts = pane.min_ts.min(ts);
        pane.max_ts = pane.max_ts.max(ts);
        for ((agg, total), input) in pane.aggs.iter_mut().zip(self.totals.iter_mut()).zip(inputs) {
            match (agg, input) {
                (PaneAgg::Count(c), FeatureInput::One | FeatureInput::Flag(true)) => {
                    *c += 1;
                    total.count += 1;
                }
                (PaneAgg::Sum(s, n), FeatureInput::Number(Some(x))) => {
                    *s += x;
                    *n += 1;
                    total.sum += x;
                    total.count += 1;
                }
                (PaneAgg::Distinct(set), FeatureInput::Hash(Some(h))) => set.insert(*h),
                _ => {}
            }
        }
        if let Some(id) = request_id {
            if self.samples.len() == SAMPLE_IDS {
                self.samples.pop_front();
            }
            self.samples.push_back(id.to_owned());
        }
        self.dirty = true;
        match closed {
            Some(s) => Update::AppliedAfterClose(s),
            None => Update::Applied,
        }
    }

    fn expire(&mut self, spec: &WindowSpec, aggs: &[AggKind]) {
        while self
            .panes
            .front()
            .is_some_and(|pane| pane.idx <= self.head - spec.panes)
        {
            let Some(pane) = self.panes.pop_front() else {
                break;
            };
            for (agg, total) in pane.aggs.iter().zip(self.totals.iter_mut()) {
                match agg {
                    PaneAgg::Count(c) => total.count -= c,
                    PaneAgg::Sum(s, n) => {
                        total.sum -= s;
                        total.count -= n;
                    }
                    PaneAgg::Distinct(_) => {}
                }
            }
        }
        if self.panes.is_empty() {
            // Guard against float drift once nothing is left.
            self.totals.iter_mut().for_each(|t| *t = Total::default());
        }
        let _ = aggs;
    }

    /// Reads the key's current window and clears its dirty mark.
    pub fn take_snapshot(&mut self, spec: &WindowSpec, aggs: &[AggKind]) -> WindowSnapshot {
        self.dirty = false;
        self.snapshot(spec, aggs)
    }

    fn snapshot(&self, spec: &WindowSpec, aggs: &[AggKind]) -> WindowSnapshot {
        let (start, end) = spec.bounds(self.head);
        let features = aggs
            .iter()
            .enumerate()
            .map(|(i, agg)| {
                let t = self.totals[i];
                match agg {
                    AggKind::Count | AggKind::CountIf => Some(t.count as f64),
                    AggKind::Sum => Some(t.sum),
                    AggKind::Avg => (t.count > 0).then(|| t.sum / t.count as f64),
                    AggKind::Distinct => Some(distinct_union(self.panes.iter().filter_map(
                        move |p| match &p.aggs[i] {
                            PaneAgg::Distinct(s) => Some(s),
                            _ => None,
                        },
                    ))),
                }
            })
            .collect();
        WindowSnapshot {
            start,
            end,
            features,
            first_seen: self.panes.iter().map(|p| p.min_ts).min().unwrap_or(start),
            last_seen: self.panes.iter().map(|p| p.max_ts).max().unwrap_or(start),
            events: self.panes.iter().map(|p| p.events).sum(),
            samples: self.samples.iter().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: WindowSpec = WindowSpec {
        pane_ms: 60_000,
        panes: 5,
    };
    const AGGS: [AggKind; 4] = [
        AggKind::Count,
        AggKind::CountIf,
        AggKind::Sum,
        AggKind::Distinct,
    ];
    const T0: i64 = 1_772_359_200_000;

    fn ev(k: &mut KeyState, ts: i64, flag: bool, x: f64, h: u64) -> Update {
        let inputs = [
            FeatureInput::One,
            FeatureInput::Flag(flag),
            FeatureInput::Number(Some(x)),
            FeatureInput::Hash(Some(h)),
        ];
        k.update(&SPEC, &AGGS, ts, &inputs, Some("r"))
    }

    #[test]
    fn totals_follow_the_window_as_it_slides() {
        let mut k = KeyState::new(&AGGS);
        for i in 0..5 {
            // one event per minute, minutes 0..4
            ev(&mut k, T0 + i * 60_000, i % 2 == 0, 10.0, i as u64);
        }
        let s = k.take_snapshot(&SPEC, &AGGS);
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
        let s = k.take_snapshot(&SPEC, &AGGS);
        assert_eq!(
            s.features,
            vec![Some(4.0), Some(2.0), Some(31.0), Some(4.0)]
        );
        assert_eq!(s.start, T0 + 2 * 60_000);
    }

    #[test]
    fn idle_keys_expire_whole() {
        let mut k = KeyState::new(&AGGS);
        ev(&mut k, T0, true, 1.0, 1);
        assert!(!k.expired(&SPEC, T0 + 4 * 60_000));
        assert!(k.expired(&SPEC, T0 + 5 * 60_000));
        // an event much later starts from an empty window
        ev(&mut k, T0 + 60 * 60_000, true, 2.0, 2);
        let s = k.take_snapshot(&SPEC, &AGGS);
        assert_eq!(s.features, vec![Some(1.0), Some(1.0), Some(2.0), Some(1.0)]);
    }

    #[test]
    fn pane_close_hands_back_the_unevaluated_window() {
        let mut k = KeyState::new(&AGGS);
        ev(&mut k, T0, true, 1.0, 1);
        ev(&mut k, T0 + 1, true, 1.0, 2);
        match ev(&mut k, T0 + 60_000, true, 1.0, 3) {
            Update::AppliedAfterClose(s) => {
                assert_eq!(s.features[0], Some(2.0));
                assert_eq!(s.end, T0 + 60_000);
            }
            other => panic!("expected a closed window, got {other:?}"),
        }
        // after a snapshot, the next pane change hands nothing back
        k.take_snapshot(&SPEC, &AGGS);
        assert_eq!(ev(&mut k, T0 + 120_000, true, 1.0, 4), Update::Applied);
    }

    #[test]
    fn late_events_within_the_window_land_in_their_pane() {
        let mut k = KeyState::new(&AGGS);
        ev(&mut k, T0 + 3 * 60_000, true, 1.0, 1);
        ev(&mut k, T0 + 60_000, true, 1.0, 2);
        assert_eq!(ev(&mut k, T0 - 2 * 60_000, true, 1.0, 3), Update::TooOld);
        let s = k.take_snapshot(&SPEC, &AGGS);
        assert_eq!(s.features[0], Some(2.0));
        assert_eq!(s.first_seen, T0 + 60_000);
        // the late pane expires on time
        ev(&mut k, T0 + 6 * 60_000, true, 1.0, 4);
        assert_eq!(k.take_snapshot(&SPEC, &AGGS).features[0], Some(2.0));
    }

    #[test]
    fn distinct_is_exact_when_small_and_close_when_large() {
        let mut k = KeyState::new(&AGGS);
        for h in 0..50u64 {
            ev(&mut k, T0 + (h as i64 % 3) * 60_000, true, 0.0, h % 40);
        }
        assert_eq!(k.take_snapshot(&SPEC, &AGGS).features[3], Some(40.0));
        let mut k = KeyState::new(&AGGS);
        let n = 20_000u64;
        for h in 0..n {
            let hash = xxhash_rust::xxh3::xxh3_64(&h.to_le_bytes());
            ev(&mut k, T0 + (h as i64 % 5) * 60_000, true, 0.0, hash);
        }
        let est = k.take_snapshot(&SPEC, &AGGS).features[3].expect("defined");
        let err = (est - n as f64).abs() / n as f64;
        assert!(err < 0.05, "estimate {est} for {n}: error {err}");
    }
}
