//! Decoding: message bytes to an Arrow batch of event schema v1.
//!
//! `cordon_engine::decode::EventBatchBuilder::push` appends simulator events (JSON as a gateway
//! writes them, benign traffic and every campaign kind) to a builder and finishes the batch,
//! one micro-batch of the engine's default size per iteration.
//!
//! Run: `cargo bench -p cordon-benches --bench decode`.

mod common;

use cordon_engine::decode::{EventBatchBuilder, MAX_TS_MS, TimeCheck};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

/// The engine's default `source.max_batch_messages`.
const BATCH: usize = 5_000;

fn decode(c: &mut Criterion) {
    let payloads = cordon_benches::sim_payloads(BATCH, 7);
    let bytes: usize = payloads.iter().map(Vec::len).sum();
    let mut group = c.benchmark_group("cordon_engine::decode::EventBatchBuilder::push");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(
        format!(
            "simulator, {BATCH} events, {} bytes avg, +finish",
            bytes / BATCH
        ),
        |b| {
            let mut builder = EventBatchBuilder::new(1 << 20);
            b.iter(|| {
                let mut time = TimeCheck {
                    watermark: i64::MIN,
                    allowed_lateness_ms: 300_000,
                    max_ts: MAX_TS_MS,
                    clamp_future: false,
                };
                for p in &payloads {
                    // Every simulator event is valid; a refusal would show as a faster run.
                    let _ = black_box(builder.push(p, &mut time));
                }
                black_box(builder.finish())
            });
        },
    );
    // The same bytes through serde_json's untyped `Value`: what a decode that does not borrow
    // would cost, for scale.
    group.bench_function("serde_json::Value (for scale)", |b| {
        b.iter(|| {
            for p in &payloads {
                let _ = black_box(serde_json::from_slice::<serde_json::Value>(p));
            }
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config(4);
    targets = decode
}
criterion_main!(benches);
