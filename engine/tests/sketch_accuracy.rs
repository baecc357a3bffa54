//! Accuracy of the window aggregates against exact computation on generated streams.
//!
//! Bounds, as documented in the README:
//! - `distinct`: exact below 128 values; within 3% beyond (HyperLogLog, lg_k 12: 1.6% standard
//!   error, so 3% is about two standard errors; the streams here are fixed by seed).
//! - `quantile`: exact (nearest rank) below 64 values; beyond, the true rank of the answer is
//!   within KLL's documented normalized rank error (k = 200: 1.65%) of `q`.
//! - `top_share`: exact below 64 distinct values; beyond, within the frequent-items sketch's
//!   maximum count error divided by the total (at most 3.5 / 256 of the weight).
//! - `entropy`: exact while every value fits the sketch's map; beyond, an estimate that keeps
//!   the order that matters to rules: one template < half one template < a sweep, within 0..=1.

use cordon_engine::agg::{Input, Partial, QuantileSet, SlotKind};
use cordon_rules::AggKind;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{HashMap, HashSet};
use xxhash_rust::xxh3::xxh3_64;

fn h(v: u64) -> u64 {
    xxh3_64(&v.to_le_bytes())
}

/// Spreads values over `panes` partials and merges them like a window does.
fn windowed(kind: SlotKind, inputs: impl IntoIterator<Item = Input>, panes: usize) -> Partial {
    let mut parts: Vec<Partial> = (0..panes).map(|_| Partial::new(kind)).collect();
    for (i, input) in inputs.into_iter().enumerate() {
        parts[i % panes].add(input);
    }
    let mut merged = parts[0].clone();
    for p in &parts[1..] {
        merged.merge(p);
    }
    merged
}

#[test]
fn distinct_is_exact_when_small_and_within_3_percent_beyond() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for n in [1u64, 10, 99, 127] {
        let values: Vec<u64> = (0..n * 3).map(|i| i % n).collect();
        let p = windowed(
            SlotKind::Distinct,
            values.iter().map(|v| Input::Hash(h(*v))),
            12,
        );
        assert_eq!(p.read(AggKind::Distinct, 0.0), Some(n as f64), "n = {n}");
    }
    for n in [200u64, 1_000, 10_000, 100_000, 1_000_000] {
        let base: u64 = rng.random();
        let values: Vec<u64> = (0..n).map(|i| base.wrapping_add(i)).collect();
        let p = windowed(
            SlotKind::Distinct,
            values.iter().map(|v| Input::Hash(h(*v))),
            12,
        );
        let est = p.read(AggKind::Distinct, 0.0).expect("defined");
        let err = (est - n as f64).abs() / n as f64;
        assert!(
            err <= 0.03,
            "n = {n}: estimate {est}, error {:.2}%",
            err * 100.0
        );
    }
}

#[test]
fn quantiles_are_within_the_documented_rank_error() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    // Small: exact nearest rank.
    let small: Vec<f64> = (0..50).map(|_| rng.random_range(0.0..1000.0)).collect();
    let p = windowed(
        SlotKind::Quantiles,
        small.iter().map(|x| Input::Number(*x)),
        5,
    );
    let mut sorted = small.clone();
    sorted.sort_by(f64::total_cmp);
    for q in [0.0, 0.1, 0.5, 0.9, 0.99, 1.0] {
        let rank = ((q * 50.0_f64).ceil() as usize).clamp(1, 50);
        assert_eq!(
            p.read(AggKind::Quantile, q),
            Some(sorted[rank - 1]),
            "q = {q}"
        );
    }
    // Large, heavy-tailed (latency-like): rank error within KLL's bound.
    let n = 200_000;
    let values: Vec<f64> = (0..n)
        .map(|_| (rng.random::<f64>().powi(4) * 30_000.0).round())
        .collect();
    let p = windowed(
        SlotKind::Quantiles,
        values.iter().map(|x| Input::Number(*x)),
        12,
    );
    let Some(set) = p.quantiles() else {
        panic!("quantile partial")
    };
    let bound = set.rank_error();
    assert!(bound > 0.0 && bound < 0.02, "KLL bound {bound}");
    let mut sorted = values.clone();
    sorted.sort_by(f64::total_cmp);
    for q in [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99] {
        let x = p.read(AggKind::Quantile, q).expect("defined");
        // The true normalized rank interval of x (ties make it an interval).
        let lo = sorted.partition_point(|v| *v < x) as f64 / n as f64;
        let hi = sorted.partition_point(|v| *v <= x) as f64 / n as f64;
        let off = if q < lo {
            lo - q
        } else if q > hi {
            q - hi
        } else {
            0.0
        };
        assert!(
            off <= bound,
            "q = {q}: answer {x} has rank [{lo}, {hi}], off by {off} > {bound}"
        );
    }
    assert!(matches!(QuantileSet::Exact(vec![1.0]).rank_error(), 0.0));
}

fn exact_counts(values: &[u64]) -> HashMap<u64, u64> {
    let mut m = HashMap::new();
    for v in values {
        *m.entry(*v).or_default() += 1;
    }
    m
}

#[test]
fn top_share_is_exact_when_small_and_within_the_sketch_error_beyond() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    // 40 distinct values, one dominant.
    let small: Vec<u64> = (0..2_000)
        .map(|i| {
            if i % 3 == 0 {
                7
            } else {
                rng.random_range(0..40)
            }
        })
        .collect();
    let counts = exact_counts(&small);
    let truth = *counts.values().max().expect("some") as f64 / small.len() as f64;
    let p = windowed(
        SlotKind::Frequencies,
        small.iter().map(|v| Input::Hash(h(*v))),
        6,
    );
    let got = p.read(AggKind::TopShare, 0.0).expect("defined");
    assert!((got - truth).abs() < 1e-12, "{got} vs {truth}");
    // 50k events over a Zipf-like tail of 20k values, one template at 30%.
    let n = 50_000usize;
    let big: Vec<u64> = (0..n)
        .map(|i| {
            if i % 10 < 3 {
                1
            } else {
                (20_000f64.powf(rng.random::<f64>()) as u64) + 2
            }
        })
        .collect();
    let counts = exact_counts(&big);
    let truth = *counts.values().max().expect("some") as f64 / n as f64;
    let p = windowed(
        SlotKind::Frequencies,
        big.iter().map(|v| Input::Hash(h(*v))),
        12,
    );
    let got = p.read(AggKind::TopShare, 0.0).expect("defined");
    let bound = 3.5 / 256.0;
    assert!(
        (got - truth).abs() <= bound,
        "top_share {got} vs {truth}, bound {bound}"
    );
}

#[test]
fn entropy_is_exact_while_values_fit_and_bounded_beyond() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    // 150 distinct values, skewed: fits the sketch map (no purge), so exact.
    let values: Vec<u64> = (0..30_000)
        .map(|_| (150f64.powf(rng.random::<f64>()) as u64).min(149))
        .collect();
    let counts = exact_counts(&values);
    let total = values.len() as f64;
    let k = counts.len() as f64;
    let truth = counts
        .values()
        .map(|c| {
            let p = *c as f64 / total;
            -p * p.ln()
        })
        .sum::<f64>()
        / k.ln();
    let p = windowed(
        SlotKind::Frequencies,
        values.iter().map(|v| Input::Hash(h(*v))),
        12,
    );
    let got = p.read(AggKind::Entropy, 0.0).expect("defined");
    assert!((got - truth).abs() < 1e-9, "entropy {got} vs {truth}");
    // A template campaign (one value) is near 0, a sweep of distinct values near 1.
    let one = windowed(
        SlotKind::Frequencies,
        (0..10_000).map(|_| Input::Hash(h(5))),
        12,
    );
    assert_eq!(one.read(AggKind::Entropy, 0.0), Some(0.0));
    let sweep = windowed(
        SlotKind::Frequencies,
        (0..100_000u64).map(|i| Input::Hash(h(i))),
        12,
    );
    let e = sweep.read(AggKind::Entropy, 0.0).expect("defined");
    assert!((0.0..=1.0).contains(&e), "{e}");
    let mixed: Vec<u64> = (0..100_000u64)
        .map(|i| if i % 2 == 0 { 1 } else { i })
        .collect();
    let m = windowed(
        SlotKind::Frequencies,
        mixed.iter().map(|v| Input::Hash(h(*v))),
        12,
    );
    let em = m.read(AggKind::Entropy, 0.0).expect("defined");
    assert!(
        em < e,
        "half one template ({em}) is less diverse than a sweep ({e})"
    );
    let _ = HashSet::<u64>::new();
}

#[test]
fn interarrival_cv_matches_exact_gaps() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut t = 1_772_359_200_000i64;
    let mut times = Vec::new();
    for _ in 0..5_000 {
        t += rng.random_range(100..5_000);
        times.push(t);
    }
    let gaps: Vec<f64> = times.windows(2).map(|w| (w[1] - w[0]) as f64).collect();
    let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
    let sd = (gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64).sqrt();
    // Panes hold consecutive runs of time, as in a window.
    let mut parts: Vec<Partial> = (0..10).map(|_| Partial::new(SlotKind::Arrivals)).collect();
    for (i, ts) in times.iter().enumerate() {
        parts[i * 10 / times.len()].add(Input::Time(*ts));
    }
    let mut merged = parts[0].clone();
    for p in &parts[1..] {
        merged.merge(p);
    }
    let got = merged.read(AggKind::InterarrivalCv, 0.0).expect("defined");
    assert!((got - sd / mean).abs() < 1e-9, "cv {got} vs {}", sd / mean);
}
