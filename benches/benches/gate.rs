//! The alert gate: a condition match to an alert decision.
//!
//! `cordon_engine::gate::Gate::decide` for matches of new entities (a deterministic alert id
//! is computed and remembered), for matches suppressed in the same window (a map look-up), and
//! for a later window of a suppressed entity (an update).
//!
//! Run: `cargo bench -p cordon-benches --bench gate`.

mod common;

use cordon_engine::gate::Gate;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

const T0: i64 = 1_772_359_200_000;
const WINDOW: i64 = 3_600_000;
const PANE: i64 = 300_000;
const SUPPRESS: i64 = 6 * 3_600_000;
const N: usize = 10_000;

fn decide(gate: &mut Gate, entity: &str, end: i64) -> bool {
    matches!(
        gate.decide(
            "extraction.cot-harvest",
            2,
            "account_id",
            entity,
            end - WINDOW,
            end,
            SUPPRESS,
        ),
        cordon_engine::gate::Decision::Emit { .. }
    )
}

fn gate(c: &mut Criterion) {
    let entities: Vec<String> = (0..N).map(|i| format!("acct-h7q2-{i:06}")).collect();
    let mut group = c.benchmark_group("cordon_engine::gate::Gate::decide");
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function(format!("{N} new entities (alert id, insert)"), |b| {
        b.iter_batched_ref(
            Gate::default,
            |g| {
                for e in &entities {
                    black_box(decide(g, e, T0));
                }
            },
            BatchSize::SmallInput,
        );
    });
    let mut seeded = Gate::default();
    for e in &entities {
        decide(&mut seeded, e, T0);
    }
    group.bench_function(format!("{N} suppressed matches, same window"), |b| {
        b.iter(|| {
            for e in &entities {
                black_box(decide(&mut seeded, e, T0));
            }
        });
    });
    group.bench_function(format!("{N} updates, next window"), |b| {
        b.iter_batched_ref(
            || seeded.clone(),
            |g| {
                for e in &entities {
                    black_box(decide(g, e, T0 + PANE));
                }
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config(3);
    targets = gate
}
criterion_main!(benches);
