//! Keyed window state: one event into one key's panes, and the aggregates underneath.
//!
//! The slot layout is the shipped pack's busiest table (accounts over 1h in 5m panes, every
//! account rule's aggregates), taken from [`cordon_engine::plan::Plan`]. Each event feeds every
//! slot (a count, moments, distinct hashes, arrival times), as a request that passes every
//! rule's filter does.
//!
//! - `cordon_engine::window::KeyState::update`: a key's first event (most keys see one or a
//!   few); a busy key within one pane; a busy key over two hours (panes slide and expire);
//!   keys filling their window a pane at a time (each event adds a pane and grows the key's
//!   allocations); sparse keys whose every event slides a full window.
//! - `cordon_engine::window::KeyState::snapshot`: reading one rule's features of a busy key
//!   (what a touched key costs per rule and batch).
//! - `cordon_engine::agg::Partial::add`: one value into a partial, per storage kind.
//! - `cordon_engine::keys::KeyTable`: finding a batch's keys among 1,000,000 and touching their
//!   states, as a table's update does, against the boxed hash map it replaced (one lookup and
//!   state per row in turn), and with the index entries and states prefetched 16 rows ahead
//!   as the processor does: the measurement behind `engine/src/keys.rs`.
//! - `cordon_engine::hll::Hll::insert`: values into 1,000 sketches past their exact limit (the
//!   mix's template keys), against DataSketches' `HllSketch::update`, and with the register
//!   prefetched a few values ahead as the processor does for a key's rows: the measurement
//!   behind `engine/src/hll.rs`.
//!
//! Run: `cargo bench -p cordon-benches --bench state`.

mod common;

use cordon_engine::agg::{Input, InputKind, Partial, SlotKind};
use cordon_engine::hll::{Hll, LG_K, coupon};
use cordon_engine::keys::{KeyTable, Slot};
use cordon_engine::plan::Plan;
use cordon_engine::window::{KeyState, WindowSpec};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::collections::HashMap;
use std::hint::black_box;

const T0: i64 = 1_772_359_200_000;

/// Inputs of one event for `kinds`: the `i`th distinct value, `i` as a number, `ts`.
fn inputs(kinds: &[SlotKind], i: u64, ts: i64) -> Vec<Option<Input>> {
    kinds
        .iter()
        .map(|k| {
            Some(match k.input() {
                InputKind::Nothing => Input::One,
                InputKind::Number => Input::Number(500.0 + (i % 1000) as f64),
                InputKind::Hash => Input::Hash(xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes())),
                InputKind::Time => Input::Time(ts),
            })
        })
        .collect()
}

/// The pack's plan, the index of its table with the most slots (the per-account 1h/5m table)
/// and that table's slot kinds.
fn busiest_table() -> Option<(Plan, usize, Vec<SlotKind>)> {
    let plan = Plan::new(&cordon_benches::load_pack());
    let (t, table) = plan
        .tables
        .iter()
        .enumerate()
        .max_by_key(|(_, t)| t.slots.len())?;
    let kinds = table.slots.iter().map(|s| s.kind).collect();
    Some((plan, t, kinds))
}

fn state(c: &mut Criterion) {
    let Some((plan, t, kinds)) = busiest_table() else {
        return;
    };
    let table = &plan.tables[t];
    let spec: WindowSpec = table.window;
    let label = format!("{} ({} slots)", table.name, kinds.len());

    let mut group = c.benchmark_group("cordon_engine::window::KeyState::update");
    const KEYS: usize = 10_000;
    group.throughput(Throughput::Elements(KEYS as u64));
    group.bench_function(format!("first event of {KEYS} keys, {label}"), |b| {
        let events: Vec<Vec<Option<Input>>> = (0..KEYS as u64)
            .map(|i| inputs(&kinds, i, T0 + i as i64))
            .collect();
        b.iter_batched_ref(
            || (0..KEYS).map(|_| KeyState::new()).collect::<Vec<_>>(),
            |keys| {
                for (i, (k, inp)) in keys.iter_mut().zip(&events).enumerate() {
                    black_box(k.update(&spec, &kinds, T0 + i as i64, inp, |_| {}));
                }
            },
            BatchSize::LargeInput,
        );
    });
    const EVENTS: usize = 10_000;
    group.throughput(Throughput::Elements(EVENTS as u64));
    for (name, span_ms) in [
        ("one pane", spec.pane_ms - 1),
        ("over 2h (panes slide)", 2 * spec.pane_ms * spec.panes),
    ] {
        let events: Vec<(i64, Vec<Option<Input>>)> = (0..EVENTS as u64)
            .map(|i| {
                let ts = T0 + (i as i64 * span_ms) / EVENTS as i64;
                (ts, inputs(&kinds, i, ts))
            })
            .collect();
        group.bench_function(
            format!("one key, {EVENTS} distinct events, {name}, {label}"),
            |b| {
                b.iter_batched_ref(
                    KeyState::new,
                    |k| {
                        for (ts, inp) in &events {
                            black_box(k.update(&spec, &kinds, *ts, inp, |_| {}));
                        }
                    },
                    BatchSize::SmallInput,
                );
            },
        );
    }
    // Keys filling their window: one event in each pane in turn, every key growing by a pane
    // per event, as the mix's /24 ranges do over their first hour.
    group.throughput(Throughput::Elements((KEYS as u64) * spec.panes as u64));
    let filling: Vec<(i64, Vec<Option<Input>>)> = (0..spec.panes)
        .map(|pane| {
            let ts = T0 + pane * spec.pane_ms;
            (ts, inputs(&kinds, pane as u64, ts))
        })
        .collect();
    group.bench_function(
        format!(
            "{KEYS} keys, one event in each of their {} panes in turn (the window fills), {label}",
            spec.panes
        ),
        |b| {
            b.iter_batched_ref(
                || (0..KEYS).map(|_| KeyState::new()).collect::<Vec<_>>(),
                |keys| {
                    for (ts, inp) in &filling {
                        for k in keys.iter_mut() {
                            black_box(k.update(&spec, &kinds, *ts, inp, |_| {}));
                        }
                    }
                },
                BatchSize::LargeInput,
            );
        },
    );
    // Steady sparse keys: a full window of one event a pane each, then the next pane's event,
    // which expires the oldest pane as it starts a new one (a slide per event).
    group.throughput(Throughput::Elements(KEYS as u64));
    let full: Vec<KeyState> = (0..KEYS as u64)
        .map(|i| {
            let mut k = KeyState::new();
            for pane in 0..spec.panes {
                let ts = T0 + pane * spec.pane_ms + (i as i64 % 1000);
                k.update(&spec, &kinds, ts, &inputs(&kinds, i, ts), |_| {});
            }
            k
        })
        .collect();
    let next_ts = T0 + spec.panes * spec.pane_ms;
    let next: Vec<Vec<Option<Input>>> = (0..KEYS as u64)
        .map(|i| inputs(&kinds, i + 1, next_ts))
        .collect();
    group.bench_function(
        format!("{KEYS} keys with one event a pane, the event that slides a full window, {label}"),
        |b| {
            b.iter_batched_ref(
                || full.clone(),
                |keys| {
                    for (k, inp) in keys.iter_mut().zip(&next) {
                        black_box(k.update(&spec, &kinds, next_ts, inp, |_| {}));
                    }
                },
                BatchSize::LargeInput,
            );
        },
    );
    group.finish();

    let mut group = c.benchmark_group("cordon_engine::window::KeyState::snapshot");
    group.throughput(Throughput::Elements(1));
    let rule = table.rules.first().map_or(0, |r| *r);
    let rp = &plan.rules[rule];
    for events in [1u64, 1_000] {
        let mut key = KeyState::new();
        for i in 0..events {
            // Spread over the window: a busy key holds all its panes.
            let ts = T0 + (i as i64 * spec.pane_ms * spec.panes) / events as i64;
            key.update(&spec, &kinds, ts, &inputs(&kinds, i, ts), |_| {});
        }
        group.bench_function(
            format!("{}, key with {events} events", rp.compiled.rule.id),
            |b| b.iter(|| black_box(key.snapshot(&spec, rp.events, &rp.reads))),
        );
    }
    group.finish();

    let mut group = c.benchmark_group("cordon_engine::agg::Partial::add");
    const VALUES: u64 = 10_000;
    group.throughput(Throughput::Elements(VALUES));
    for kind in [
        SlotKind::Count,
        SlotKind::Moments,
        SlotKind::Distinct,
        SlotKind::Quantiles,
        SlotKind::Frequencies,
        SlotKind::Arrivals,
    ] {
        let values: Vec<Input> = (0..VALUES)
            .map(|i| {
                let ts = T0 + i as i64 * 100;
                match kind.input() {
                    InputKind::Nothing => Input::One,
                    InputKind::Number => Input::Number((i % 997) as f64),
                    // Frequencies see a heavy head (a few templates), distinct all new values.
                    InputKind::Hash if kind == SlotKind::Frequencies => Input::Hash(i % 7),
                    InputKind::Hash => Input::Hash(xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes())),
                    InputKind::Time => Input::Time(ts),
                }
            })
            .collect();
        group.bench_function(format!("{kind:?}, {VALUES} values"), |b| {
            b.iter_batched_ref(
                || Partial::new(kind),
                |p| {
                    for v in &values {
                        p.add(*v);
                    }
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

fn key_table(c: &mut Criterion) {
    let Some((plan, t, kinds)) = busiest_table() else {
        return;
    };
    let spec: WindowSpec = plan.tables[t].window;
    const KEYS: u64 = 1_000_000;
    const BATCH: usize = 5_000;
    let key = |i: u64| xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes());
    // Every key with one event, as the throughput harness's accounts.
    let mut slab = KeyTable::default();
    let mut boxed: HashMap<u64, Box<KeyState>> = HashMap::new();
    for i in 0..KEYS {
        let ev = inputs(&kinds, i, T0);
        let (slot, _) = slab.slot_or_insert(key(i));
        if let Some(s) = slab.state_mut(slot) {
            s.update(&spec, &kinds, T0, &ev, |_| {});
        }
        let mut b = Box::new(KeyState::new());
        b.update(&spec, &kinds, T0, &ev, |_| {});
        boxed.insert(key(i), b);
    }
    // Batches of random existing keys, many of them, so that a batch finds little in cache.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let batches: Vec<Vec<u64>> = (0..400)
        .map(|_| {
            (0..BATCH)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    key(x % KEYS)
                })
                .collect()
        })
        .collect();
    let mut group = c.benchmark_group("cordon_engine::keys::KeyTable");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut n = 0usize;
    let mut slots: Vec<Slot> = Vec::with_capacity(BATCH);
    group.bench_function(
        format!("find and touch {BATCH} of {KEYS} keys: key table, two passes"),
        |b| {
            b.iter(|| {
                n += 1;
                slots.clear();
                slots.extend(
                    batches[n % batches.len()]
                        .iter()
                        .map(|k| slab.slot_or_insert(*k).0),
                );
                for s in &slots {
                    if let Some(ks) = slab.state_mut(*s) {
                        ks.touch = n as u32;
                    }
                }
                black_box(&slots);
            })
        },
    );
    group.bench_function(
        format!("find and touch {BATCH} of {KEYS} keys: key table, two passes, prefetched"),
        |b| {
            b.iter(|| {
                n += 1;
                let batch = &batches[n % batches.len()];
                slots.clear();
                for (i, k) in batch.iter().enumerate() {
                    if let Some(ahead) = batch.get(i + 16) {
                        slab.prefetch(*ahead);
                    }
                    slots.push(slab.slot_or_insert(*k).0);
                }
                for (i, s) in slots.iter().enumerate() {
                    if let Some(ahead) = slots.get(i + 16) {
                        slab.prefetch_state(*ahead);
                    }
                    if let Some(ks) = slab.state_mut(*s) {
                        ks.touch = n as u32;
                    }
                }
                black_box(&slots);
            })
        },
    );
    group.bench_function(
        format!("find and touch {BATCH} of {KEYS} keys: boxed hash map, one pass"),
        |b| {
            b.iter(|| {
                n += 1;
                for k in &batches[n % batches.len()] {
                    if let Some(ks) = boxed.get_mut(k) {
                        ks.touch = n as u32;
                    }
                }
            })
        },
    );
    group.finish();
}

fn hll(c: &mut Criterion) {
    use datasketches::hll::{HllSketch, HllType};
    // 8,000 sketches of 4 KiB registers: more than the last-level cache holds, as the mix's
    // template keys' panes and windows are, among everything else an event touches.
    const SKETCHES: usize = 8_000;
    const VALUES: usize = 5_000;
    let h = |i: u64| xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes());
    // Each sketch past the library's set mode (400 values), as a busy key's window is.
    let mut library: Vec<HllSketch> = (0..SKETCHES)
        .map(|s| {
            let mut k = HllSketch::new(LG_K, HllType::Hll8).expect("valid lg_k");
            (0..400).for_each(|i| k.update(h((s * 1_000 + i) as u64)));
            k
        })
        .collect();
    let mut ours: Vec<Box<Hll>> = (0..SKETCHES)
        .map(|s| {
            let mut k = Box::<Hll>::default();
            (0..400).for_each(|i| k.insert(h((s * 1_000 + i) as u64)));
            k
        })
        .collect();
    // Batches of new values in runs of five per sketch (a template key's rows in one batch);
    // many batches, so that one finds little of the last in cache.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let batches: Vec<Vec<(usize, u64)>> = (0..200)
        .map(|_| {
            (0..VALUES / 5)
                .flat_map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let sketch = (x % SKETCHES as u64) as usize;
                    let base = x;
                    (0..5).map(move |j| (sketch, h(base.wrapping_add(j))))
                })
                .collect()
        })
        .collect();
    let mut group = c.benchmark_group("cordon_engine::hll::Hll::insert");
    group.throughput(Throughput::Elements(VALUES as u64));
    let mut n = 0usize;
    group.bench_function(
        format!("{VALUES} values into {SKETCHES} sketches: datasketches HllSketch::update"),
        |b| {
            b.iter(|| {
                n += 1;
                for (s, v) in &batches[n % batches.len()] {
                    library[*s].update(*v);
                }
            })
        },
    );
    group.bench_function(
        format!("{VALUES} values into {SKETCHES} sketches: Hll::insert"),
        |b| {
            b.iter(|| {
                n += 1;
                for (s, v) in &batches[n % batches.len()] {
                    ours[*s].insert(*v);
                }
            })
        },
    );
    group.bench_function(
        format!("{VALUES} values into {SKETCHES} sketches: Hll::insert, each run prefetched"),
        |b| {
            b.iter(|| {
                n += 1;
                for run in batches[n % batches.len()].chunks(5) {
                    for (s, v) in run {
                        ours[*s].prefetch(coupon(*v).0);
                    }
                    for (s, v) in run {
                        ours[*s].insert(*v);
                    }
                }
            })
        },
    );
    group.finish();
    black_box((&library, &ours));
}

criterion_group! {
    name = benches;
    config = common::config(3);
    targets = state, key_table, hll
}
criterion_main!(benches);
