//! Aggregates: the partial state of one aggregate in one pane, how partials merge into a
//! window, and how a window is read.
//!
//! Small stays exact and tiny: one value (one hash, one number) is held inline in the partial;
//! distinct values, quantile samples and value frequencies are kept exactly while few (a sorted
//! vector), and switch to an Apache DataSketches sketch past a limit (HyperLogLog, KLL, frequent
//! items). Most keys see a handful of events and never allocate a sketch; the few heavy keys get
//! bounded, accurate sketches.
//!
//! One partial kind serves several aggregates: `sum`, `avg` and `stddev` of one argument share
//! moments ([`Partial::Moments`], [`Partial::MomentsOne`]); `min` and `max` share extrema
//! ([`Partial::Extrema`], [`Partial::ExtremaOne`]); every `quantile` of one
//! argument shares one [`Partial::Quantiles`]; `top_share` and `entropy` share
//! [`Partial::Frequencies`].

use crate::hll::Hll;
use cordon_rules::AggKind;
use datasketches::common::SearchCriteria;
use datasketches::frequencies::{ErrorType, FrequentItemsSketch};
use datasketches::kll::{KllFloat, KllSketch};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thin_vec::ThinVec;

/// Distinct values kept exactly (per pane and per window) before switching to HyperLogLog.
pub const EXACT_DISTINCT_LIMIT: usize = 128;
/// HyperLogLog precision (lg of the register count): 1.6% relative standard error.
pub const HLL_LG_K: u8 = crate::hll::LG_K;
/// Values kept exactly for quantiles before switching to KLL.
pub const EXACT_QUANTILE_LIMIT: usize = 64;
/// KLL accuracy parameter: about 1.65% normalized rank error.
pub const KLL_K: u16 = 200;
/// Distinct values counted exactly for `top_share`/`entropy` before switching to a
/// frequent-items sketch.
pub const EXACT_FREQUENCY_LIMIT: usize = 64;
/// Map size of the frequent-items sketch (a power of two).
pub const FREQUENCY_MAP_SIZE: usize = 256;

/// How a slot stores its aggregate; several aggregates can share one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SlotKind {
    /// `count()`, `count_if(p)`.
    Count,
    /// `sum`, `avg`, `stddev`.
    Moments,
    /// `min`, `max`.
    Extrema,
    /// `distinct`.
    Distinct,
    /// `quantile`.
    Quantiles,
    /// `top_share`, `entropy`.
    Frequencies,
    /// `interarrival_cv`.
    Arrivals,
}

impl SlotKind {
    /// The slot kind an aggregate is computed from.
    pub fn of(agg: AggKind) -> Self {
        match agg {
            AggKind::Count | AggKind::CountIf => SlotKind::Count,
            AggKind::Sum | AggKind::Avg | AggKind::Stddev => SlotKind::Moments,
            AggKind::Min | AggKind::Max => SlotKind::Extrema,
            AggKind::Distinct => SlotKind::Distinct,
            AggKind::Quantile => SlotKind::Quantiles,
            AggKind::TopShare | AggKind::Entropy => SlotKind::Frequencies,
            AggKind::InterarrivalCv => SlotKind::Arrivals,
        }
    }

    /// What the slot takes from each event.
    pub fn input(self) -> InputKind {
        match self {
            SlotKind::Count => InputKind::Nothing,
            SlotKind::Moments | SlotKind::Extrema | SlotKind::Quantiles => InputKind::Number,
            SlotKind::Distinct | SlotKind::Frequencies => InputKind::Hash,
            SlotKind::Arrivals => InputKind::Time,
        }
    }
}

/// What a slot takes from an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InputKind {
    /// Only that the event happened.
    Nothing,
    /// The argument as a number.
    Number,
    /// A 64-bit hash of the argument's text.
    Hash,
    /// The event time.
    Time,
}

/// One event's contribution to a slot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Input {
    /// Counts.
    One,
    /// A number.
    Number(f64),
    /// A hashed value.
    Hash(u64),
    /// An event time, ms.
    Time(i64),
}

/// Serde for sketches: their own compact binary form.
mod sketch_bytes {
    use super::*;

    pub(super) fn ser<S: Serializer>(bytes: Vec<u8>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&bytes)
    }

    pub(super) fn de<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("sketch bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_bytes(V)
    }
}

macro_rules! sketch_serde {
    ($ty:ty, $modname:ident, $de:expr) => {
        mod $modname {
            use super::*;
            pub(super) fn serialize<S: Serializer>(v: &$ty, s: S) -> Result<S::Ok, S::Error> {
                sketch_bytes::ser(v.serialize(), s)
            }
            pub(super) fn deserialize<'de, D: Deserializer<'de>>(
                d: D,
            ) -> Result<Box<$ty>, D::Error> {
                let bytes = sketch_bytes::de(d)?;
                let f: fn(&[u8]) -> Result<$ty, datasketches::error::Error> = $de;
                f(&bytes).map(Box::new).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// Serde for an exact distinct set: as the `Option<Box<Vec<u64>>>` it replaced (`None` when
/// empty), so that checkpoints load unchanged.
mod exact_serde {
    use super::*;
    pub(super) fn serialize<S: Serializer>(v: &ThinVec<u64>, s: S) -> Result<S::Ok, S::Error> {
        if v.is_empty() {
            s.serialize_none()
        } else {
            s.serialize_some(&v[..])
        }
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ThinVec<u64>, D::Error> {
        Ok(Option::<Vec<u64>>::deserialize(d)?
            .map(ThinVec::from)
            .unwrap_or_default())
    }
}

/// Serde for [`Hll`]: DataSketches' HLL image, as the library's sketches were written.
mod hll_serde {
    use super::*;
    pub(super) fn serialize<S: Serializer>(v: &Hll, s: S) -> Result<S::Ok, S::Error> {
        sketch_bytes::ser(v.to_bytes(), s)
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Box<Hll>, D::Error> {
        let bytes = sketch_bytes::de(d)?;
        Hll::from_bytes(&bytes)
            .map(Box::new)
            .map_err(serde::de::Error::custom)
    }
}
sketch_serde!(
    KllSketch<KllFloat<f64>>,
    kll_serde,
    KllSketch::<KllFloat<f64>>::deserialize
);
sketch_serde!(
    FrequentItemsSketch<u64>,
    freq_serde,
    FrequentItemsSketch::<u64>::deserialize
);

/// A sketch of `values`.
fn hll_of(values: &[u64]) -> Box<Hll> {
    let mut s = Box::<Hll>::default();
    values.iter().for_each(|x| s.insert(*x));
    s
}

fn new_kll() -> KllSketch<KllFloat<f64>> {
    KllSketch::new(KLL_K).unwrap_or_else(|_| unreachable!("valid k"))
}

fn new_freq() -> FrequentItemsSketch<u64> {
    FrequentItemsSketch::new(FREQUENCY_MAP_SIZE).unwrap_or_else(|_| unreachable!("valid map size"))
}

/// Values for quantiles: exact while few, KLL beyond.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum QuantileSet {
    /// The values, unsorted.
    Exact(Vec<f64>),
    /// A KLL sketch.
    Kll(#[serde(with = "kll_serde")] Box<KllSketch<KllFloat<f64>>>),
}

impl QuantileSet {
    fn insert(&mut self, x: f64) {
        let Ok(item) = KllFloat::<f64>::new(x) else {
            return;
        };
        match self {
            QuantileSet::Exact(v) if v.len() < EXACT_QUANTILE_LIMIT => {
                if v.capacity() == v.len() {
                    v.reserve_exact(v.len().max(1));
                }
                v.push(x);
            }
            QuantileSet::Exact(v) => {
                let mut s = new_kll();
                for y in v.iter() {
                    if let Ok(y) = KllFloat::<f64>::new(*y) {
                        s.update(y);
                    }
                }
                s.update(item);
                *self = QuantileSet::Kll(Box::new(s));
            }
            QuantileSet::Kll(s) => s.update(item),
        }
    }

    fn merge(&mut self, other: &QuantileSet) {
        match other {
            QuantileSet::Exact(v) => v.iter().for_each(|x| self.insert(*x)),
            QuantileSet::Kll(o) => {
                if let QuantileSet::Exact(v) = self {
                    let mut s = new_kll();
                    v.iter()
                        .filter_map(|x| KllFloat::<f64>::new(*x).ok())
                        .for_each(|x| s.update(x));
                    *self = QuantileSet::Kll(Box::new(s));
                }
                if let QuantileSet::Kll(s) = self {
                    // Same k on both sides: merging cannot fail.
                    let _ = s.merge(o);
                }
            }
        }
    }

    /// The `q` quantile (0..=1): nearest rank when exact, KLL's estimate otherwise.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        match self {
            QuantileSet::Exact(v) if v.is_empty() => None,
            QuantileSet::Exact(v) => {
                let mut sorted = v.clone();
                sorted.sort_by(f64::total_cmp);
                let rank = (q * sorted.len() as f64).ceil() as usize;
                Some(sorted[rank.clamp(1, sorted.len()) - 1])
            }
            QuantileSet::Kll(s) => s
                .quantile(q, SearchCriteria::Inclusive)
                .ok()
                .flatten()
                .map(KllFloat::into_inner),
        }
    }

    /// The documented normalized rank error of the answer: 0 while exact, KLL's bound beyond.
    pub fn rank_error(&self) -> f64 {
        match self {
            QuantileSet::Exact(_) => 0.0,
            QuantileSet::Kll(s) => s.normalized_rank_error(),
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            QuantileSet::Exact(v) => v.capacity() * 8,
            QuantileSet::Kll(s) => s.num_retained() * 8 + 64,
        }
    }
}

/// Value frequencies: exact counts while few distinct values, a frequent-items sketch beyond.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FreqSet {
    /// (hash, count), sorted by hash.
    Exact(Vec<(u64, u64)>),
    /// A frequent-items sketch.
    Sketch(#[serde(with = "freq_serde")] Box<FrequentItemsSketch<u64>>),
}

impl FreqSet {
    fn add(&mut self, h: u64, n: u64) {
        match self {
            FreqSet::Exact(v) => match v.binary_search_by_key(&h, |(k, _)| *k) {
                Ok(i) => v[i].1 += n,
                Err(i) if v.len() < EXACT_FREQUENCY_LIMIT => {
                    if v.capacity() == v.len() {
                        v.reserve_exact(v.len().max(1));
                    }
                    v.insert(i, (h, n));
                }
                Err(_) => {
                    let mut s = new_freq();
                    v.iter().for_each(|(k, c)| s.update_with_count(*k, *c));
                    s.update_with_count(h, n);
                    *self = FreqSet::Sketch(Box::new(s));
                }
            },
            FreqSet::Sketch(s) => s.update_with_count(h, n),
        }
    }

    fn merge(&mut self, other: &FreqSet) {
        match other {
            FreqSet::Exact(v) => v.iter().for_each(|(h, n)| self.add(*h, *n)),
            FreqSet::Sketch(o) => {
                if let FreqSet::Exact(v) = self {
                    let mut s = new_freq();
                    v.iter().for_each(|(k, c)| s.update_with_count(*k, *c));
                    *self = FreqSet::Sketch(Box::new(s));
                }
                if let FreqSet::Sketch(s) = self {
                    s.merge(o);
                }
            }
        }
    }

    /// Counts of the (frequent) values, the total weight, and the largest error of a count.
    fn counts(&self) -> (Vec<u64>, u64, u64) {
        match self {
            FreqSet::Exact(v) => (
                v.iter().map(|(_, c)| *c).collect(),
                v.iter().map(|(_, c)| c).sum(),
                0,
            ),
            FreqSet::Sketch(s) => (
                s.frequent_items(ErrorType::NoFalseNegatives)
                    .iter()
                    .map(|r| r.estimate())
                    .collect(),
                s.total_weight(),
                s.maximum_error(),
            ),
        }
    }

    /// Share of the most frequent value.
    pub fn top_share(&self) -> Option<f64> {
        let (counts, total, _) = self.counts();
        (total > 0).then(|| counts.iter().copied().max().unwrap_or(0) as f64 / total as f64)
    }

    /// Shannon entropy of the value distribution, normalized to 0..=1 by the log of the number
    /// of distinct values. Past the sketch's capacity, the weight of the values it no longer
    /// tracks is spread evenly over as many values as the sketch's error bound implies (each
    /// untracked value occurred at most `maximum_error` times): an estimate.
    pub fn entropy(&self) -> Option<f64> {
        let (counts, total, max_err) = self.counts();
        if total == 0 {
            return None;
        }
        let listed: u64 = counts.iter().sum();
        let mut buckets: Vec<(f64, f64)> = counts
            .iter()
            .filter(|c| **c > 0)
            .map(|c| (*c as f64, 1.0))
            .collect();
        if total > listed {
            let rest = (total - listed) as f64;
            let values = (rest / max_err.max(1) as f64).ceil().clamp(1.0, rest);
            buckets.push((rest / values, values));
        }
        let k: f64 = buckets.iter().map(|(_, n)| n).sum();
        if k < 2.0 {
            return Some(0.0);
        }
        let h: f64 = buckets
            .iter()
            .map(|(c, n)| {
                let p = c / total as f64;
                -n * p * p.ln()
            })
            .sum();
        Some((h / k.ln()).clamp(0.0, 1.0))
    }

    /// The largest possible error of a value's count: 0 while exact, the sketch's bound beyond.
    pub fn max_count_error(&self) -> u64 {
        match self {
            FreqSet::Exact(_) => 0,
            FreqSet::Sketch(s) => s.maximum_error(),
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            FreqSet::Exact(v) => v.capacity() * 16,
            FreqSet::Sketch(s) => s.estimated_size(),
        }
    }
}

/// Inter-arrival statistics of event times, in time order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Arrivals {
    n: u64,
    first: i64,
    last: i64,
    gaps: u64,
    gap_sum: f64,
    gap_sumsq: f64,
}

impl Arrivals {
    fn add(&mut self, ts: i64) {
        if self.n == 0 {
            self.first = ts;
            self.last = ts;
        } else if ts >= self.last {
            self.gap((ts - self.last) as f64);
            self.last = ts;
        } else {
            // Out of order within the pane: it cannot extend the sequence; keep the bounds.
            self.first = self.first.min(ts);
        }
        self.n += 1;
    }

    fn gap(&mut self, g: f64) {
        self.gaps += 1;
        self.gap_sum += g;
        self.gap_sumsq += g * g;
    }

    /// Appends `later`, whose events all come after `self`'s.
    fn append(&mut self, later: &Arrivals) {
        if later.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = later.clone();
            return;
        }
        if later.first >= self.last {
            self.gap((later.first - self.last) as f64);
        }
        self.gaps += later.gaps;
        self.gap_sum += later.gap_sum;
        self.gap_sumsq += later.gap_sumsq;
        self.last = self.last.max(later.last);
        self.first = self.first.min(later.first);
        self.n += later.n;
    }

    /// Coefficient of variation of the gaps between events: near 0 for machine-regular timing,
    /// about 1 for random (Poisson) arrivals. Needs at least two gaps.
    pub fn cv(&self) -> Option<f64> {
        if self.gaps < 2 {
            return None;
        }
        let mean = self.gap_sum / self.gaps as f64;
        if mean <= 0.0 {
            return Some(0.0);
        }
        let var = (self.gap_sumsq / self.gaps as f64 - mean * mean).max(0.0);
        Some(var.sqrt() / mean)
    }
}

/// Count, sum and sum of squares of two or more values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    n: u64,
    sum: f64,
    sumsq: f64,
}

/// Smallest and largest of two or more values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Extrema {
    min: f64,
    max: f64,
}

/// The partial state of one slot in one pane (or of a whole window).
///
/// Sixteen bytes: a partial sits in every pane of every key, and most keys see one or a few
/// events. Each kind holds its small case inline (a count, one value, one hash) and boxes the
/// rest. The variants are flat, not one nested enum per kind, because each nested enum would
/// carry its own tag and make a partial 24 bytes (`size_tests` holds the line).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Partial {
    /// Events counted.
    Count(u64),
    /// Moments (count, sum, sum of squares) of exactly one value.
    MomentsOne(f64),
    /// Moments of no value (`None`) or of two or more.
    Moments(Option<Box<Moments>>),
    /// Smallest and largest of exactly one value (or of equal values).
    ExtremaOne(f64),
    /// Smallest and largest of no value (`None`) or of several.
    Extrema(Option<Box<Extrema>>),
    /// Exactly one distinct value.
    DistinctOne(u64),
    /// Exactly two distinct values, sorted: one 16-byte allocation (a vector would take two).
    DistinctTwo(Box<[u64; 2]>),
    /// No distinct value (empty, no allocation), or three or more sorted unique 64-bit hashes
    /// while few: one allocation with its length and capacity in front, so that a lookup
    /// loads the set's first line once rather than a boxed vector's header and then its values.
    DistinctExact(#[serde(with = "exact_serde")] ThinVec<u64>),
    /// Distinct values in a HyperLogLog sketch.
    DistinctHll(#[serde(with = "hll_serde")] Box<Hll>),
    /// Values for quantiles (`None` before the first).
    Quantiles(Option<Box<QuantileSet>>),
    /// Value frequencies (`None` before the first).
    Frequencies(Option<Box<FreqSet>>),
    /// The event time of exactly one event, for inter-arrival statistics.
    ArrivalsOne(i64),
    /// Inter-arrival statistics of no event (`None`) or of two or more.
    Arrivals(Option<Box<Arrivals>>),
}

impl Partial {
    /// An empty partial of `kind`.
    pub fn new(kind: SlotKind) -> Self {
        match kind {
            SlotKind::Count => Partial::Count(0),
            SlotKind::Moments => Partial::Moments(None),
            SlotKind::Extrema => Partial::Extrema(None),
            SlotKind::Distinct => Partial::DistinctExact(ThinVec::new()),
            SlotKind::Quantiles => Partial::Quantiles(None),
            SlotKind::Frequencies => Partial::Frequencies(None),
            SlotKind::Arrivals => Partial::Arrivals(None),
        }
    }

    /// Count, sum and sum of squares, for a moments partial.
    fn moments(&self) -> Option<(u64, f64, f64)> {
        match self {
            Partial::Moments(None) => Some((0, 0.0, 0.0)),
            Partial::MomentsOne(x) => Some((1, *x, x * x)),
            Partial::Moments(Some(m)) => Some((m.n, m.sum, m.sumsq)),
            _ => None,
        }
    }

    /// Minimum and maximum (`+inf`/`-inf` when none), for an extrema partial.
    fn extrema(&self) -> Option<(f64, f64)> {
        match self {
            Partial::Extrema(None) => Some((f64::INFINITY, f64::NEG_INFINITY)),
            Partial::ExtremaOne(x) => Some((*x, *x)),
            Partial::Extrema(Some(e)) => Some((e.min, e.max)),
            _ => None,
        }
    }

    /// Inter-arrival statistics, for an arrivals partial.
    fn arrivals(&self) -> Option<Arrivals> {
        match self {
            Partial::Arrivals(None) => Some(Arrivals::default()),
            Partial::ArrivalsOne(ts) => {
                let mut a = Arrivals::default();
                a.add(*ts);
                Some(a)
            }
            Partial::Arrivals(Some(a)) => Some((**a).clone()),
            _ => None,
        }
    }

    /// The quantile values, for a quantiles partial that has seen a value.
    pub fn quantiles(&self) -> Option<&QuantileSet> {
        match self {
            Partial::Quantiles(q) => q.as_deref(),
            _ => None,
        }
    }

    fn is_distinct(&self) -> bool {
        matches!(
            self,
            Partial::DistinctOne(_)
                | Partial::DistinctTwo(_)
                | Partial::DistinctExact(_)
                | Partial::DistinctHll(_)
        )
    }

    /// Adds one event's input to a pane's partial and, for a busy key, to the window's
    /// partial of the same slot. Where both are sketches, the value's coupon (a hash of the
    /// value) is worked out once for both.
    ///
    /// Inlined, with [`Partial::add`] inlined into it: as a call it took 190 instructions an
    /// event more on a mix of 20,000 busy accounts (callgrind, 10,731 against 10,541), where
    /// every event of a busy key passes here once per slot.
    #[inline]
    pub fn add_with_window(&mut self, window: Option<&mut Partial>, input: Input) {
        match (self, window, input) {
            (Partial::DistinctHll(p), Some(Partial::DistinctHll(w)), Input::Hash(h)) => {
                let (register, value) = crate::hll::coupon(h);
                p.raise(register, value);
                w.raise(register, value);
            }
            (pane, window, input) => {
                pane.add(input);
                if let Some(w) = window {
                    w.add(input);
                }
            }
        }
    }

    /// Starts loading the sketch registers that the values hashed to `hashes` would raise in
    /// this pane's partial and the window's, where those are sketches. Nothing is worked out
    /// when neither is one.
    pub fn prefetch_registers(&self, window: Option<&Partial>, hashes: impl Iterator<Item = u64>) {
        fn sketch(p: Option<&Partial>) -> Option<&Hll> {
            match p {
                Some(Partial::DistinctHll(s)) => Some(s),
                _ => None,
            }
        }
        let (pane, window) = (sketch(Some(self)), sketch(window));
        if pane.is_none() && window.is_none() {
            return;
        }
        for h in hashes {
            let (register, _) = crate::hll::coupon(h);
            pane.into_iter()
                .chain(window)
                .for_each(|s| s.prefetch(register));
        }
    }

    /// Adds one event's input. Here are the cases a key meets on most of its events; a
    /// partial's first values and the rarer kinds go to `add_other`, which keeps
    /// this function small: it saves few registers and inlines where it is called, which
    /// `always` makes sure of (left to the compiler, it stayed a call in
    /// [`Partial::add_with_window`]).
    #[inline(always)]
    pub fn add(&mut self, input: Input) {
        match (&mut *self, input) {
            (Partial::Count(c), _) => *c += 1,
            (Partial::Moments(Some(m)), Input::Number(x)) => {
                m.n = m.n.saturating_add(1);
                m.sum += x;
                m.sumsq += x * x;
            }
            (Partial::DistinctHll(s), Input::Hash(h)) => s.insert(h),
            (p, Input::Hash(h)) if p.is_distinct() => p.distinct_insert(h),
            (Partial::Arrivals(Some(a)), Input::Time(ts)) => a.add(ts),
            _ => self.add_other(input),
        }
    }

    /// The cases [`Partial::add`] leaves to it: a partial's first values and the rarer kinds.
    /// The common cases are not repeated here; `add` never passes them on.
    #[inline(never)]
    fn add_other(&mut self, input: Input) {
        match (&mut *self, input) {
            (Partial::Moments(None), Input::Number(x)) => self.grow(Partial::MomentsOne(x)),
            (Partial::MomentsOne(a), Input::Number(x)) => {
                let a = *a;
                self.grow(Partial::Moments(Some(Box::new(Moments {
                    n: 2,
                    sum: a + x,
                    sumsq: a * a + x * x,
                }))));
            }
            // NaN is no value: it neither sets nor moves a bound.
            (Partial::Extrema(None), Input::Number(x)) if !x.is_nan() => {
                self.grow(Partial::ExtremaOne(x))
            }
            (Partial::ExtremaOne(a), Input::Number(x)) if !x.is_nan() && x != *a => {
                let a = *a;
                self.grow(Partial::Extrema(Some(Box::new(Extrema {
                    min: a.min(x),
                    max: a.max(x),
                }))));
            }
            (Partial::Extrema(Some(e)), Input::Number(x)) => {
                e.min = e.min.min(x);
                e.max = e.max.max(x);
            }
            (Partial::Quantiles(s), Input::Number(x)) => s
                .get_or_insert_with(|| Box::new(QuantileSet::Exact(Vec::new())))
                .insert(x),
            (Partial::Frequencies(s), Input::Hash(h)) => s
                .get_or_insert_with(|| Box::new(FreqSet::Exact(Vec::new())))
                .add(h, 1),
            (Partial::Arrivals(None), Input::Time(ts)) => self.grow(Partial::ArrivalsOne(ts)),
            (Partial::ArrivalsOne(first), Input::Time(ts)) => {
                let mut a = Arrivals::default();
                a.add(*first);
                a.add(ts);
                self.grow(Partial::Arrivals(Some(Box::new(a))));
            }
            _ => {}
        }
    }

    /// Puts `bigger` in the place of this partial. One that holds no heap memory (a kind's
    /// empty or one-value case, which is what grows) is replaced without the enum's drop glue,
    /// a call through every kind's match, whose removal saved 141 instructions an event as
    /// partials took their first values (callgrind, the throughput mix); any other is dropped.
    fn grow(&mut self, bigger: Partial) {
        if self.holds_no_heap() {
            std::mem::forget(std::mem::replace(self, bigger));
        } else {
            *self = bigger;
        }
    }

    /// Whether dropping this partial would free nothing.
    fn holds_no_heap(&self) -> bool {
        match self {
            Partial::Count(_)
            | Partial::MomentsOne(_)
            | Partial::Moments(None)
            | Partial::ExtremaOne(_)
            | Partial::Extrema(None)
            | Partial::DistinctOne(_)
            | Partial::Quantiles(None)
            | Partial::Frequencies(None)
            | Partial::ArrivalsOne(_)
            | Partial::Arrivals(None) => true,
            Partial::DistinctExact(v) => v.capacity() == 0,
            _ => false,
        }
    }

    /// Merges a partial of the same kind whose events come after this one's.
    pub fn merge(&mut self, later: &Partial) {
        if let (Some((n, sum, sumsq)), Some((n2, s2, q2))) = (self.moments(), later.moments()) {
            match (n, n2) {
                (_, 0) => {}
                (0, _) => *self = later.clone(),
                _ => {
                    let m = Moments {
                        n: n.saturating_add(n2),
                        sum: sum + s2,
                        sumsq: sumsq + q2,
                    };
                    match self {
                        Partial::Moments(Some(b)) => **b = m,
                        _ => *self = Partial::Moments(Some(Box::new(m))),
                    }
                }
            }
            return;
        }
        if let (Some((min, max)), Some((a, b))) = (self.extrema(), later.extrema()) {
            let (min, max) = (min.min(a), max.max(b));
            match self {
                Partial::Extrema(Some(e)) => **e = Extrema { min, max },
                _ if min > max => {}
                _ if min == max => *self = Partial::ExtremaOne(min),
                _ => *self = Partial::Extrema(Some(Box::new(Extrema { min, max }))),
            }
            return;
        }
        match (&mut *self, later) {
            (Partial::Count(a), Partial::Count(b)) => *a += b,
            (a, b) if a.is_distinct() && b.is_distinct() => a.distinct_merge(b),
            (Partial::Quantiles(_), Partial::Quantiles(None)) => {}
            (Partial::Quantiles(a @ None), Partial::Quantiles(b)) => a.clone_from(b),
            (Partial::Quantiles(Some(a)), Partial::Quantiles(Some(b))) => a.merge(b),
            (Partial::Frequencies(_), Partial::Frequencies(None)) => {}
            (Partial::Frequencies(a @ None), Partial::Frequencies(b)) => a.clone_from(b),
            (Partial::Frequencies(Some(a)), Partial::Frequencies(Some(b))) => a.merge(b),
            (Partial::Arrivals(Some(a)), b) => {
                if let Some(b) = b.arrivals() {
                    a.append(&b);
                }
            }
            (a, b) => {
                if let (Some(mut x), Some(y)) = (a.arrivals(), b.arrivals()) {
                    x.append(&y);
                    *a = match x.n {
                        0 => Partial::Arrivals(None),
                        1 => Partial::ArrivalsOne(x.first),
                        _ => Partial::Arrivals(Some(Box::new(x))),
                    };
                }
            }
        }
    }

    /// Reads aggregate `agg` (with `q` for quantiles) from this partial.
    pub fn read(&self, agg: AggKind, q: f64) -> Option<f64> {
        if let Some((n, sum, sumsq)) = self.moments() {
            return read_moments(n, sum, sumsq, agg);
        }
        if let Some((min, max)) = self.extrema() {
            return read_extrema(min, max, agg);
        }
        match (self, agg) {
            (Partial::Count(c), _) => Some(*c as f64),
            (p, _) if p.is_distinct() => p.distinct_count(),
            (Partial::Quantiles(s), _) => s.as_ref().and_then(|s| s.quantile(q)),
            (Partial::Frequencies(s), AggKind::TopShare) => s.as_ref().and_then(|s| s.top_share()),
            (Partial::Frequencies(s), AggKind::Entropy) => s.as_ref().and_then(|s| s.entropy()),
            // One event has no gap: only two or more can have a coefficient of variation.
            (Partial::Arrivals(Some(a)), _) => a.cv(),
            _ => None,
        }
    }

    /// Heap bytes held beyond the partial itself (estimate).
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        match self {
            Partial::Moments(Some(_)) => size_of::<Moments>(),
            Partial::Extrema(Some(_)) => size_of::<Extrema>(),
            Partial::DistinctTwo(_) => size_of::<[u64; 2]>(),
            // The set's header (length and capacity) sits in its allocation.
            Partial::DistinctExact(v) if v.capacity() > 0 => 16 + v.capacity() * 8,
            Partial::DistinctHll(_) => size_of::<Hll>(),
            Partial::Quantiles(Some(s)) => size_of::<QuantileSet>() + s.heap_bytes(),
            Partial::Frequencies(Some(s)) => size_of::<FreqSet>() + s.heap_bytes(),
            Partial::Arrivals(Some(_)) => size_of::<Arrivals>(),
            _ => 0,
        }
    }
}

/// Reads `agg` (with `q` for quantiles) from the merge of `parts`, one slot's partials oldest
/// pane first, with the result `Partial::merge` of them all and then [`Partial::read`] give.
/// Counts, moments, extrema, arrivals and exact distinct sets are folded without building the
/// merged partial: a sparse key with several panes is read on every batch that touches it, and
/// cloning and merging its sets was most of that cost. Other kinds are merged. `scratch` is
/// reused for distinct values.
pub fn read_merged<'a, I>(parts: I, agg: AggKind, q: f64, scratch: &mut Vec<u64>) -> Option<f64>
where
    I: Iterator<Item = &'a Partial> + Clone,
{
    match parts.clone().next()? {
        Partial::Count(_) => {
            let n: u64 = parts
                .map(|p| match p {
                    Partial::Count(c) => *c,
                    _ => 0,
                })
                .sum();
            return Some(n as f64);
        }
        Partial::Moments(_) | Partial::MomentsOne(_) => {
            // Summed in pane order, as successive merges do.
            let (mut n, mut sum, mut sumsq) = (0u64, 0.0, 0.0);
            for (n2, s2, q2) in parts.filter_map(Partial::moments) {
                if n2 == 0 {
                    continue;
                }
                if n == 0 {
                    (n, sum, sumsq) = (n2, s2, q2);
                } else {
                    (n, sum, sumsq) = (n.saturating_add(n2), sum + s2, sumsq + q2);
                }
            }
            return read_moments(n, sum, sumsq, agg);
        }
        Partial::Extrema(_) | Partial::ExtremaOne(_) => {
            let (min, max) = parts
                .filter_map(Partial::extrema)
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), (x, y)| {
                    (a.min(x), b.max(y))
                });
            return read_extrema(min, max, agg);
        }
        Partial::Arrivals(_) | Partial::ArrivalsOne(_) => {
            let mut acc = Arrivals::default();
            for a in parts.filter_map(Partial::arrivals) {
                acc.append(&a);
            }
            return acc.cv();
        }
        p if p.is_distinct() && parts.clone().all(|p| !matches!(p, Partial::DistinctHll(_))) => {
            scratch.clear();
            parts
                .clone()
                .for_each(|p| scratch.extend_from_slice(p.exact_values()));
            scratch.sort_unstable();
            scratch.dedup();
            // Past the exact limit the merge is a sketch: read its estimate below.
            if scratch.len() <= EXACT_DISTINCT_LIMIT {
                return Some(scratch.len() as f64);
            }
        }
        _ => {}
    }
    merge_all(parts)?.read(agg, q)
}

/// The merge of `parts` (one slot's partials, oldest pane first), as successive
/// [`Partial::merge`]s give it; `None` when there are none. Distinct sets with a sketch among
/// them go through one HyperLogLog union rather than one union per pane (each union copies
/// the registers three times): the registers, and so the estimate, are the same.
pub fn merge_all<'a, I>(mut parts: I) -> Option<Partial>
where
    I: Iterator<Item = &'a Partial> + Clone,
{
    let first = parts.clone().next()?;
    if first.is_distinct() && parts.clone().any(|p| matches!(p, Partial::DistinctHll(_))) {
        let mut u = Box::<Hll>::default();
        u.merge_all(parts.clone().filter_map(|p| match p {
            Partial::DistinctHll(s) => Some(&**s),
            _ => None,
        }));
        parts.for_each(|p| p.exact_values().iter().for_each(|h| u.insert(*h)));
        return Some(Partial::DistinctHll(u));
    }
    let mut merged = parts.next()?.clone();
    parts.for_each(|p| merged.merge(p));
    Some(merged)
}

/// Sum, average or standard deviation of `n` values with `sum` and `sumsq`.
fn read_moments(n: u64, sum: f64, sumsq: f64, agg: AggKind) -> Option<f64> {
    match agg {
        AggKind::Sum => Some(sum),
        AggKind::Avg => (n > 0).then(|| sum / n as f64),
        AggKind::Stddev => (n > 0).then(|| {
            let mean = sum / n as f64;
            (sumsq / n as f64 - mean * mean).max(0.0).sqrt()
        }),
        _ => None,
    }
}

/// Minimum or maximum, `None` when there is no value (`+inf`/`-inf`).
fn read_extrema(min: f64, max: f64, agg: AggKind) -> Option<f64> {
    match agg {
        AggKind::Min => min.is_finite().then_some(min),
        AggKind::Max => max.is_finite().then_some(max),
        _ => None,
    }
}

/// Distinct values in a [`Partial`]: none, one or two hashes, up to
/// [`EXACT_DISTINCT_LIMIT`] sorted unique hashes, or a HyperLogLog sketch beyond.
impl Partial {
    /// The values of an exact distinct partial, sorted (empty for a sketch).
    fn exact_values(&self) -> &[u64] {
        match self {
            Partial::DistinctOne(h) => std::slice::from_ref(h),
            Partial::DistinctTwo(v) => &v[..],
            Partial::DistinctExact(v) => v,
            _ => &[],
        }
    }

    fn distinct_insert(&mut self, h: u64) {
        match self {
            Partial::DistinctExact(v) if v.is_empty() => self.grow(Partial::DistinctOne(h)),
            Partial::DistinctOne(a) if *a == h => {}
            Partial::DistinctOne(a) => {
                let a = *a;
                self.grow(Partial::DistinctTwo(Box::new(if a < h {
                    [a, h]
                } else {
                    [h, a]
                })));
            }
            Partial::DistinctTwo(v) => {
                if let Err(i) = v.binary_search(&h) {
                    let mut set = ThinVec::with_capacity(4);
                    set.extend_from_slice(&v[..]);
                    set.insert(i, h);
                    *self = Partial::DistinctExact(set);
                }
            }
            Partial::DistinctExact(v) => {
                if let Err(i) = v.binary_search(&h) {
                    if v.len() < EXACT_DISTINCT_LIMIT {
                        if v.capacity() == v.len() {
                            v.reserve_exact(v.len().max(1));
                        }
                        v.insert(i, h);
                    } else {
                        let mut s = hll_of(v);
                        s.insert(h);
                        *self = Partial::DistinctHll(s);
                    }
                }
            }
            Partial::DistinctHll(s) => s.insert(h),
            _ => {}
        }
    }

    fn distinct_merge(&mut self, other: &Partial) {
        let Partial::DistinctHll(o) = other else {
            let b = other.exact_values();
            if b.is_empty() {
                return;
            }
            if matches!(self, Partial::DistinctHll(_)) {
                b.iter().for_each(|h| self.distinct_insert(*h));
                return;
            }
            // Both exact: one pass over the two sorted runs.
            let a = self.exact_values();
            let mut union = Vec::with_capacity(a.len() + b.len());
            let (mut i, mut j) = (0, 0);
            while i < a.len() && j < b.len() {
                match a[i].cmp(&b[j]) {
                    std::cmp::Ordering::Less => {
                        union.push(a[i]);
                        i += 1;
                    }
                    std::cmp::Ordering::Greater => {
                        union.push(b[j]);
                        j += 1;
                    }
                    std::cmp::Ordering::Equal => {
                        union.push(a[i]);
                        i += 1;
                        j += 1;
                    }
                }
            }
            union.extend_from_slice(&a[i..]);
            union.extend_from_slice(&b[j..]);
            *self = Partial::distinct_of_sorted(union);
            return;
        };
        match self {
            Partial::DistinctHll(s) => s.merge(o),
            _ => {
                let mut s = o.clone();
                self.exact_values().iter().for_each(|h| s.insert(*h));
                *self = Partial::DistinctHll(s);
            }
        }
    }

    /// The distinct partial of sorted unique hashes: the smallest shape that holds them.
    fn distinct_of_sorted(values: Vec<u64>) -> Partial {
        match values[..] {
            [] => Partial::DistinctExact(ThinVec::new()),
            [a] => Partial::DistinctOne(a),
            [a, b] => Partial::DistinctTwo(Box::new([a, b])),
            _ if values.len() <= EXACT_DISTINCT_LIMIT => {
                Partial::DistinctExact(ThinVec::from(values))
            }
            _ => Partial::DistinctHll(hll_of(&values)),
        }
    }

    /// The number of distinct values (exact, or the HLL estimate rounded); `None` for a
    /// partial of another kind.
    pub fn distinct_count(&self) -> Option<f64> {
        match self {
            Partial::DistinctOne(_) => Some(1.0),
            Partial::DistinctTwo(_) => Some(2.0),
            Partial::DistinctExact(v) => Some(v.len() as f64),
            // The estimate depends only on the registers, so a window reads the same whether
            // its values arrived in one pane or were merged from several.
            Partial::DistinctHll(s) => Some(s.estimate().round()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xxhash_rust::xxh3::xxh3_64;

    fn h(i: u64) -> u64 {
        xxh3_64(&i.to_le_bytes())
    }

    #[test]
    fn moments_read_sum_avg_stddev() {
        let mut p = Partial::new(SlotKind::Moments);
        for x in [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0] {
            p.add(Input::Number(x));
        }
        assert_eq!(p.read(AggKind::Sum, 0.0), Some(40.0));
        assert_eq!(p.read(AggKind::Avg, 0.0), Some(5.0));
        assert_eq!(p.read(AggKind::Stddev, 0.0), Some(2.0));
        assert_eq!(
            Partial::new(SlotKind::Moments).read(AggKind::Avg, 0.0),
            None
        );
    }

    #[test]
    fn extrema_and_empty() {
        let mut p = Partial::new(SlotKind::Extrema);
        assert_eq!(p.read(AggKind::Min, 0.0), None);
        p.add(Input::Number(3.0));
        p.add(Input::Number(-1.5));
        assert_eq!(
            (p.read(AggKind::Min, 0.0), p.read(AggKind::Max, 0.0)),
            (Some(-1.5), Some(3.0))
        );
    }

    #[test]
    fn frequencies_top_share_and_entropy() {
        let mut p = Partial::new(SlotKind::Frequencies);
        for _ in 0..6 {
            p.add(Input::Hash(1));
        }
        p.add(Input::Hash(2));
        p.add(Input::Hash(3));
        assert_eq!(p.read(AggKind::TopShare, 0.0), Some(0.75));
        let e = p.read(AggKind::Entropy, 0.0).expect("defined");
        assert!(e > 0.0 && e < 1.0, "{e}");
        let mut uniform = Partial::new(SlotKind::Frequencies);
        for i in 0..10 {
            uniform.add(Input::Hash(i));
        }
        assert!((uniform.read(AggKind::Entropy, 0.0).expect("defined") - 1.0).abs() < 1e-9);
        let mut one = Partial::new(SlotKind::Frequencies);
        one.add(Input::Hash(9));
        assert_eq!(one.read(AggKind::Entropy, 0.0), Some(0.0));
    }

    #[test]
    fn arrivals_cv_separates_regular_from_random() {
        let mut regular = Partial::new(SlotKind::Arrivals);
        for i in 0..100 {
            regular.add(Input::Time(i * 1000));
        }
        assert_eq!(regular.read(AggKind::InterarrivalCv, 0.0), Some(0.0));
        // Appending panes keeps the gap between them.
        let mut a = Partial::new(SlotKind::Arrivals);
        let mut b = Partial::new(SlotKind::Arrivals);
        for i in 0..50 {
            a.add(Input::Time(i * 1000));
            b.add(Input::Time(50_000 + i * 1000));
        }
        a.merge(&b);
        assert_eq!(a.read(AggKind::InterarrivalCv, 0.0), Some(0.0));
        let mut one = Partial::new(SlotKind::Arrivals);
        one.add(Input::Time(5));
        one.add(Input::Time(6));
        assert_eq!(
            one.read(AggKind::InterarrivalCv, 0.0),
            None,
            "one gap is not enough"
        );
    }

    #[test]
    fn a_sketch_partial_from_the_library_era_decodes_into_the_same_registers() {
        // How the last round wrote `Partial::DistinctHll`: variant 8, then DataSketches' own
        // image of its sketch as bytes. The library keeps 200 values in its set mode and
        // 5,000 in HLL_8 registers; both must load as the sketch of the same values.
        use datasketches::hll::{HllSketch, HllType};
        for n in [200u64, 5_000] {
            let mut lib = HllSketch::new(HLL_LG_K, HllType::Hll8).expect("valid lg_k");
            (0..n).for_each(|i| lib.update(h(i)));
            let mut old = vec![8u8];
            old.extend(
                bincode::serde::encode_to_vec(
                    serde_bytes_of(&lib.serialize()),
                    bincode::config::standard(),
                )
                .expect("encode"),
            );
            let (p, used): (Partial, usize) =
                bincode::serde::decode_from_slice(&old, bincode::config::standard())
                    .expect("an old partial decodes");
            assert_eq!(used, old.len());
            let mut ours = Partial::new(SlotKind::Distinct);
            (0..n).for_each(|i| ours.add(Input::Hash(h(i))));
            match (&p, &ours) {
                (Partial::DistinctHll(a), Partial::DistinctHll(b)) => assert!(a == b, "{n}"),
                _ => panic!("{n} values: not sketches"),
            }
        }
    }

    /// Bytes that serialize as serde bytes (what `sketch_bytes::ser` writes).
    fn serde_bytes_of(b: &[u8]) -> impl Serialize + '_ {
        struct B<'a>(&'a [u8]);
        impl Serialize for B<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        B(b)
    }

    #[test]
    fn distinct_switches_to_hll_past_the_exact_limit() {
        let mut p = Partial::new(SlotKind::Distinct);
        for i in 0..EXACT_DISTINCT_LIMIT as u64 {
            p.add(Input::Hash(h(i)));
            p.add(Input::Hash(h(i)));
        }
        assert!(matches!(&p, Partial::DistinctExact(v) if v.len() == EXACT_DISTINCT_LIMIT));
        assert_eq!(
            p.read(AggKind::Distinct, 0.0),
            Some(EXACT_DISTINCT_LIMIT as f64)
        );
        p.add(Input::Hash(h(1_000_000)));
        assert!(matches!(p, Partial::DistinctHll(_)));
    }

    #[test]
    fn quantiles_exact_when_small() {
        let mut p = Partial::new(SlotKind::Quantiles);
        for x in 1..=10 {
            p.add(Input::Number(f64::from(x)));
        }
        assert_eq!(p.read(AggKind::Quantile, 0.5), Some(5.0));
        assert_eq!(p.read(AggKind::Quantile, 0.9), Some(9.0));
        assert_eq!(p.read(AggKind::Quantile, 1.0), Some(10.0));
        assert_eq!(p.read(AggKind::Quantile, 0.0), Some(1.0));
    }
}

#[cfg(test)]
mod size_tests {
    /// Memory per key is the scale limit: a partial is in every pane of every key.
    #[test]
    fn partials_stay_small() {
        assert!(
            std::mem::size_of::<super::Partial>() <= 16,
            "{}",
            std::mem::size_of::<super::Partial>()
        );
    }
}
