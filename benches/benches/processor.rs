//! The core over a micro-batch, with the shipped pack, and the two DataFusion stages inside it.
//!
//! - `cordon_engine::processor::Processor::process`: message bytes of simulator traffic in,
//!   alerts out, steady state (the processor has seen the traffic before the measured batches;
//!   time only moves forward). This is decode + expression evaluation + key routing and state
//!   update + condition evaluation + gate, in one: the processor's public API takes bytes, so
//!   routing and state update cannot be timed apart from it here; `state` times
//!   `KeyState::update` alone, and the two stages below time the DataFusion work alone.
//! - `cordon_engine::plan::ExprCol::expr`: every expression the pack's plan evaluates per batch
//!   (filters, entities, feature arguments), over a decoded batch, converted as the processor
//!   converts them (text cast to Utf8 and hashed with xxh3, numbers cast to Float64). Once all
//!   together, then each alone, named by its SQL text.
//! - `cordon_rules::udf::ArrayHas`: `array_has(labels, 'cot_elicitation')` over the same
//!   batch, Cordon's own path against DataFusion's, which it replaces.
//! - `cordon_rules::CompiledRule::condition`: each rule's condition over a batch of candidate
//!   keys' features, including building the feature batch, as the processor does per rule and
//!   micro-batch.
//!
//! Run: `cargo bench -p cordon-benches --bench processor`.

mod common;

use cordon_engine::decode::{EventBatchBuilder, TimeCheck};
use cordon_engine::plan::{Conv, ExprCol, Plan};
use cordon_engine::processor::{CoreConfig, Input, Output, Processor};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::common::ScalarValue;
use datafusion::config::ConfigOptions;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The engine's default `source.max_batch_messages`.
const BATCH: usize = 5_000;
/// Events the processor sees before measured batches.
const WARM: usize = 100_000;
/// Simulator events generated in all (warm-up plus measured; time must only move forward, so
/// after these the processor starts again from scratch, outside the measurement).
const SUPPLY: usize = 400_000;

/// Evaluates one planned expression as the processor does; returns a value to keep.
fn evaluate(e: &ExprCol, batch: &RecordBatch) -> usize {
    let Ok(a) = e
        .expr
        .evaluate(batch)
        .and_then(|v| v.into_array(batch.num_rows()))
    else {
        return 0;
    };
    match e.conv {
        Conv::Bool => a.as_boolean().true_count(),
        Conv::Number => cast(&a, &DataType::Float64).map_or(0, |a| a.len()),
        Conv::Text => cast(&a, &DataType::Utf8).map_or(0, |s| {
            let s = s.as_string::<i32>();
            // As the processor does: one hash per value, `None` for NULL.
            let hashes: Vec<Option<u64>> = (0..s.len())
                .map(|i| {
                    s.is_valid(i)
                        .then(|| xxhash_rust::xxh3::xxh3_64(s.value(i).as_bytes()))
                })
                .collect();
            hashes.len()
        }),
    }
}

fn process(c: &mut Criterion) {
    let rules = cordon_benches::load_pack();
    let payloads = cordon_benches::sim_payloads(SUPPLY, 7);
    let now = cordon_engine::decode::MAX_TS_MS - 1;
    let config = CoreConfig {
        // Simulated time is in the past; the wall clock must not make it look future.
        max_future_skew_ms: 0,
        ..CoreConfig::default()
    };

    let mut group = c.benchmark_group("cordon_engine::processor::Processor::process");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(
        format!(
            "simulator, batch {BATCH}, {} rules, after {WARM} events",
            rules.len()
        ),
        |b| {
            let fresh = || {
                let mut p = Processor::new(&rules, config.clone());
                for (i, chunk) in payloads[..WARM].chunks(BATCH).enumerate() {
                    run_batch(&mut p, chunk, (i * BATCH) as i64, now);
                }
                p
            };
            let mut p = fresh();
            let mut next = WARM;
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    if next + BATCH > payloads.len() {
                        p = fresh();
                        next = WARM;
                    }
                    let chunk = &payloads[next..next + BATCH];
                    let started = Instant::now();
                    black_box(run_batch(&mut p, chunk, next as i64, now));
                    total += started.elapsed();
                    next += BATCH;
                }
                total
            });
        },
    );
    group.finish();

    // One decoded batch for the DataFusion stages.
    let plan = Plan::new(&rules);
    let mut builder = EventBatchBuilder::new(1 << 20);
    let mut time = TimeCheck::accept_all();
    for p in &payloads[WARM..WARM + BATCH] {
        let _ = builder.push(p, &mut time);
    }
    let batch = builder.finish().batch;

    let mut group = c.benchmark_group("cordon_engine::plan::ExprCol::expr");
    group.throughput(Throughput::Elements(batch.num_rows() as u64));
    group.bench_function(
        format!(
            "all {} expressions of the pack, batch {}",
            plan.exprs.len(),
            batch.num_rows()
        ),
        |b| {
            b.iter(|| {
                plan.exprs
                    .iter()
                    .map(|e| evaluate(e, &batch))
                    .fold(0, usize::wrapping_add)
            })
        },
    );
    group.finish();
    let mut group = c.benchmark_group("cordon_engine::plan::ExprCol::expr (each)");
    group.throughput(Throughput::Elements(batch.num_rows() as u64));
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_millis(800));
    for e in &plan.exprs {
        group.bench_function(format!("{:?}: {}", e.conv, e.text), |b| {
            b.iter(|| evaluate(e, &batch))
        });
    }
    group.finish();

    // `array_has` over the batch's labels, Cordon's own path against DataFusion's, which
    // Cordon's wraps and replaces (`cordon_rules::udf::ArrayHas`).
    let mut group = c.benchmark_group("cordon_rules::udf::ArrayHas");
    group.throughput(Throughput::Elements(batch.num_rows() as u64));
    let labels = batch.column_by_name("labels").expect("labels").clone();
    let ours = ScalarUDF::from(cordon_rules::udf::ArrayHas::default());
    let theirs = datafusion::functions_nested::array_has::array_has_udf();
    for (name, f) in [("cordon", &ours), ("datafusion", theirs.as_ref())] {
        group.bench_function(
            format!("{name}: array_has(labels, 'cot_elicitation')"),
            |b| {
                b.iter(|| {
                    let args = ScalarFunctionArgs {
                        args: vec![
                            ColumnarValue::Array(labels.clone()),
                            ColumnarValue::Scalar(ScalarValue::Utf8(Some(
                                "cot_elicitation".into(),
                            ))),
                        ],
                        arg_fields: vec![
                            Arc::new(Field::new("labels", labels.data_type().clone(), true)),
                            Arc::new(Field::new("needle", DataType::Utf8, true)),
                        ],
                        number_rows: labels.len(),
                        return_field: Arc::new(Field::new("has", DataType::Boolean, true)),
                        config_options: Arc::new(ConfigOptions::default()),
                    };
                    f.invoke_with_args(args)
                        .and_then(|v| v.into_array(labels.len()))
                        .map_or(0, |a| a.as_boolean().true_count())
                })
            },
        );
    }
    group.finish();

    // Condition evaluation: candidates with features around typical thresholds.
    const CANDIDATES: usize = 1_000;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let features: Vec<Vec<Vec<Option<f64>>>> = rules
        .rules
        .iter()
        .map(|r| {
            (0..CANDIDATES)
                .map(|_| {
                    (0..r.features.len())
                        .map(|_| Some(rng.random_range(0.0..1_000.0)))
                        .collect()
                })
                .collect()
        })
        .collect();
    let mut group = c.benchmark_group("cordon_rules::CompiledRule::condition");
    group.throughput(Throughput::Elements((CANDIDATES * rules.len()) as u64));
    group.bench_function(
        format!(
            "{} rules x {CANDIDATES} candidates, feature batch built",
            rules.len()
        ),
        |b| {
            b.iter(|| {
                let mut matched = 0;
                for (r, cands) in rules.rules.iter().zip(&features) {
                    let columns: Vec<ArrayRef> = (0..r.features.len())
                        .map(|i| {
                            Arc::new(Float64Array::from_iter(cands.iter().map(|f| f[i])))
                                as ArrayRef
                        })
                        .collect();
                    let Ok(fb) = RecordBatch::try_new(r.feature_schema.clone(), columns) else {
                        continue;
                    };
                    if let Ok(v) = r
                        .condition
                        .evaluate(&fb)
                        .and_then(|v| v.into_array(fb.num_rows()))
                    {
                        matched += v.as_boolean().true_count();
                    }
                }
                matched
            })
        },
    );
    group.finish();
}

fn run_batch(p: &mut Processor, chunk: &[Vec<u8>], first_offset: i64, now: i64) -> usize {
    let inputs = Input::sequence(0, first_offset, chunk.iter().map(Vec::as_slice));
    let mut out = Output::default();
    if let Err(e) = p.process(&inputs, now, &mut out) {
        panic!("the shipped pack failed on simulator traffic: {e}");
    }
    out.alerts.len()
}

criterion_group! {
    name = benches;
    config = common::config(4);
    targets = process
}
criterion_main!(benches);
