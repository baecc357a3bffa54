//! In-process throughput and state size of the detection core on one thread: raw message bytes
//! in, alerts out, with the shipped extraction pack.
//!
//! Three runs:
//! - `mix`: a heavy-tailed key mix. Every one of `--accounts` accounts sends at least one
//!   request, then `--extra` more requests follow Zipf-like volumes (a few accounts send
//!   thousands); accounts sit behind `--ranges` /24 ranges. Prints events/s, MB/s, live keys
//!   and estimated state bytes per key (from the engine's own accounting, and from the process's
//!   resident memory).
//! - `flood`: `--flood` requests from random accounts and random addresses with
//!   `state.max_keys` = `--max-keys`, sampling live keys and resident memory as it goes, to show
//!   the key limit holding and memory staying flat.
//! - `mix, second hour`: the same population's next hour through a processor that has seen
//!   the first, so that keys exist and windows slide and expire (steady state).
//!
//! The last row says whether the heap sat in transparent huge pages (the kernel's mode,
//! glibc's `glibc.malloc.hugetlb` tunable, and how much of the process they held), which moves
//! the rate on a virtual machine (README, "Where the time goes").
//!
//! The mix runs `--runs` times (default 3), each on a fresh processor, and reports the median
//! rate with all of them: on a shared or virtual machine one run varies by 10% or more. State
//! and memory figures come from the first run.
//!
//! `--rules PATH` runs another rule pack (a file or a directory, as `cordon rules validate`
//! takes) over the same traffic in place of the shipped one: what a pack costs per event,
//! and, run with rule files left out (`benches/scripts/costs.sh`), what each of its state
//! tables costs.
//!
//! `--stage source` runs the mix's processors as the input stage of `repartition.topic` does
//! (the `account_id` rules counted, every event forwarded once per other entity): what the
//! input stage's core costs per event, up to the forwards it hands to the runtime (packing
//! them into frames and producing them is the runtime's, and not measured here).
//!
//! Run: `cargo run --release -p cordon-benches --bin throughput -- [--accounts N] [--ranges N]
//! [--extra N] [--runs N] [--flood N] [--max-keys N] [--rules PATH] [--stage whole|source]
//! [--json FILE]`

use clap::Parser;
use cordon_benches::pack_dir;
use cordon_engine::processor::{CoreConfig, Input, Output, Processor, Stage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Resident set size of this process, bytes (Linux).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

const T0: i64 = 1_772_359_200_000;
const SPAN_MS: i64 = 3_600_000;
const BATCH: usize = 5_000;

struct Gen {
    rng: ChaCha8Rng,
    n: u64,
}

impl Gen {
    fn event(&mut self, account: u64, range: u64, ts: i64) -> Vec<u8> {
        self.n += 1;
        let r = &mut self.rng;
        let cot = account.is_multiple_of(97);
        let v = serde_json::json!({
            "ts": ts,
            "account_id": format!("acct-{account}"),
            // `range` picks the /24; the host part varies.
            "ip": format!("{}.{}.{}.{}", 10 + (range >> 16 & 63), range >> 8 & 255, range & 255, r.random_range(1..255)),
            "request_id": format!("req-{}", self.n),
            "model": "frontier-1",
            "status": 200,
            "input_tokens": r.random_range(10..2000),
            "output_tokens": r.random_range(10..4000),
            "prompt_fp": format!("{:016x}", r.random::<u64>()),
            "template_fp": format!("{:016x}", account % 1000),
            "labels": if cot { vec!["cot_elicitation"] } else { vec![] },
        });
        serde_json::to_vec(&v).unwrap_or_default()
    }
}

/// Feeds `payloads` in batches with the wall clock at `now`; returns seconds, alerts and
/// events forwarded ([`Stage::Source`]).
fn run(
    processor: &mut Processor,
    payloads: &[Vec<u8>],
    now: i64,
    mut sample: impl FnMut(&Processor, usize),
) -> (f64, usize, u64) {
    let started = Instant::now();
    let (mut alerts, mut forwarded) = (0, 0);
    let mut offset = 0i64;
    // One output for every batch, as `cordon run` keeps it ([`Output::clear`]).
    let mut out = Output::default();
    for (i, chunk) in payloads.chunks(BATCH).enumerate() {
        let inputs = Input::sequence(0, offset + 1, chunk.iter().map(Vec::as_slice));
        offset += chunk.len() as i64;
        out.clear();
        if let Err(e) = processor.process(&inputs, now, &mut out) {
            eprintln!("{e}");
            std::process::exit(1);
        }
        alerts += out.alerts.len();
        forwarded += out.stats.forwarded;
        sample(processor, i);
    }
    (started.elapsed().as_secs_f64(), alerts, forwarded)
}

/// The second hour's run, a function of its own and never inlined, so that callgrind can count
/// the steady state apart (`SCOPE=steady benches/scripts/instructions.sh BIN`).
#[inline(never)]
fn steady_hour(processor: &mut Processor, payloads: &[Vec<u8>], now: i64) -> (f64, usize, u64) {
    run(processor, payloads, now, |_, _| {})
}

/// One hour of the heavy-tailed mix from `t0`: every account once, in order, then `extra`
/// requests with Zipf-like volumes (`seed` picks them).
fn mix(accounts: u64, extra: u64, ranges: u64, t0: i64, seed: u64) -> Vec<Vec<u8>> {
    let mut g = Gen {
        rng: ChaCha8Rng::seed_from_u64(seed),
        n: 0,
    };
    let total = accounts + extra;
    let mut payloads: Vec<Vec<u8>> = Vec::with_capacity(total as usize);
    for i in 0..total {
        let account = if i < accounts {
            i
        } else {
            // Zipf-like: a^(u^3) puts most of the extra volume on a few accounts.
            let u: f64 = g.rng.random();
            ((accounts as f64).powf(u * u * u) as u64).saturating_sub(1)
        };
        let range = xxhash_rust::xxh3::xxh3_64(&account.to_le_bytes()) % ranges;
        let ts = t0 + (i as i64 * SPAN_MS) / total as i64;
        payloads.push(g.event(account, range, ts));
    }
    payloads
}

/// In-process throughput of the engine's core with a rule pack on a heavy-tailed stream (see
/// the module docs); prints one table.
#[derive(Parser)]
struct Args {
    /// Accounts that each send one request first.
    #[arg(long, default_value_t = 1_000_000)]
    accounts: u64,
    /// /24 ranges the accounts sit behind.
    #[arg(long, default_value_t = 100_000)]
    ranges: u64,
    /// Further requests, spread over the accounts with Zipf-like volumes.
    #[arg(long, default_value_t = 1_000_000)]
    extra: u64,
    /// Events of the key flood (every event new keys); 0 leaves it out.
    #[arg(long, default_value_t = 10_000_000)]
    flood: u64,
    /// Runs of the mix, each on a fresh processor; the median is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    runs: u64,
    /// `state.max_keys` for the flood.
    #[arg(long, default_value_t = 2_000_000)]
    max_keys: u64,
    /// A rule pack (file or directory) to run in place of the shipped one.
    #[arg(long = "rules")]
    pack: Option<PathBuf>,
    /// Which processor the mix runs through: the whole engine, or the input stage of the
    /// repartition stage (`account_id` kept, the rest forwarded).
    #[arg(long, value_enum, default_value_t = StageArg::Whole)]
    stage: StageArg,
    /// Also write the table to this file as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StageArg {
    Whole,
    Source,
}

fn main() {
    let Args {
        accounts,
        ranges,
        extra,
        flood,
        runs,
        max_keys,
        pack,
        stage,
        json,
    } = Args::parse();
    let rules = match cordon_rules::load_paths(&[pack.clone().unwrap_or_else(pack_dir)]) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |k: &str, v: String| {
        println!("| {k} | {v} |");
        rows.push((k.to_owned(), v));
    };
    println!("| measure | value |");
    println!("| --- | --- |");
    row("machine", cordon_benches::machine());

    // The heavy-tailed mix.
    let total = accounts + extra;
    let payloads = mix(accounts, extra, ranges, T0, 42);
    let bytes: usize = payloads.iter().map(Vec::len).sum();
    let rss_before = rss_bytes();
    let config = CoreConfig {
        max_keys: u64::MAX,
        stage: match stage {
            StageArg::Whole => Stage::Whole,
            StageArg::Source => Stage::Source {
                input_entity: "account_id".into(),
            },
        },
        ..CoreConfig::default()
    };
    let mut processor = Processor::new(&rules, config.clone());
    let (secs, alerts, forwarded) = run(&mut processor, &payloads, T0 + SPAN_MS, |_, _| {});
    let rss_after = rss_bytes();
    // The state walk `cordon run` makes every 5 s or more for its `cordon_state_*` metrics.
    let walked = Instant::now();
    let stats = processor.table_stats();
    let walk_secs = walked.elapsed().as_secs_f64();
    // And the expiry walk it makes every 10 s or more (at the end of the hour no key has
    // expired yet: the walk's cost alone).
    let walked = Instant::now();
    processor.expire_idle(T0 + SPAN_MS);
    let expire_secs = walked.elapsed().as_secs_f64();
    let keys: u64 = stats.iter().map(|s| s.keys).sum();
    let state: u64 = stats.iter().map(|s| s.bytes).sum();
    // Checkpoint and restore of the mix's state (one partition): what a restart costs. The
    // first run's processor is dropped here, before the further runs, so that no two are
    // alive at once (the flood's resident memory is measured later in this process).
    let checkpoint_rows = {
        use cordon_engine::checkpoint::{CheckpointMeta, CheckpointStore};
        let dir = std::env::temp_dir().join(format!("cordon-bench-ckpt-{}", std::process::id()));
        let store = CheckpointStore::new(&dir, "requests");
        let meta = CheckpointMeta {
            topic: "requests".into(),
            partition: 0,
            next_offset: total as i64,
            watermark: 0,
            alerts_topic: "alerts".into(),
            alerts_end: Default::default(),
            written_at_ms: 0,
        };
        // As `cordon run` does it: the loop encodes the body's parts (large tables in
        // parallel), the writer adds the header and writes them.
        let started = Instant::now();
        let mut encode_secs = 0.0;
        let written = processor
            .checkpoint_parts(0, meta.clone())
            .map_err(|e| e.to_string())
            .and_then(|parts| {
                encode_secs = started.elapsed().as_secs_f64();
                store
                    .write_parts(0, parts)
                    .map_err(|e| e.to_string())
                    .and_then(|written| {
                        let path = written.as_file().ok_or("not a file")?;
                        std::fs::metadata(path).map_err(|e| e.to_string())
                    })
                    .map(|m| m.len() as usize)
            });
        let write_secs = started.elapsed().as_secs_f64();
        // As the loop encodes a periodic checkpoint: a slice of at most `CHECKPOINT_SLICE`
        // per pass, batches in between (none here).
        let sliced = {
            use cordon_engine::runtime::CHECKPOINT_SLICE;
            let began = Instant::now();
            processor.begin_checkpoint(0, meta).and_then(|()| {
                // The first slice counts the start with it, as the loop's first pass does.
                let (mut slices, mut longest, mut slice) = (0u32, Duration::ZERO, began);
                let parts = loop {
                    let done =
                        processor.continue_checkpoint_while(|| slice.elapsed() < CHECKPOINT_SLICE);
                    slices += 1;
                    longest = longest.max(slice.elapsed());
                    slice = Instant::now();
                    if let Some((_, parts)) = done {
                        break parts;
                    }
                };
                let bytes: usize = parts?.iter().map(Vec::len).sum();
                Ok((
                    began.elapsed().as_secs_f64(),
                    slices,
                    longest.as_secs_f64(),
                    bytes,
                ))
            })
        };
        drop(processor);
        let started = Instant::now();
        let mut restored = Processor::new(&rules, CoreConfig::default());
        let loaded = store.load(0).map_err(|e| e.to_string());
        let restored_keys = match loaded {
            Ok(Some((c, _))) => restored.restore(c),
            _ => 0,
        };
        let restore_secs = started.elapsed().as_secs_f64();
        let _ = std::fs::remove_dir_all(&dir);
        (
            written,
            encode_secs,
            write_secs,
            restore_secs,
            restored_keys,
            sliced,
        )
    };
    let mut rates = vec![total as f64 / secs];
    for _ in 1..runs {
        let mut again = Processor::new(&rules, config.clone());
        let (secs, ..) = run(&mut again, &payloads, T0 + SPAN_MS, |_, _| {});
        rates.push(total as f64 / secs);
    }
    drop(payloads);
    let mut sorted = rates.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    row(
        "mix: events",
        format!(
            "{total} ({accounts} accounts, {ranges} /24 ranges, {} rules of {}, batch {BATCH})",
            rules.len(),
            pack.as_ref().map_or_else(
                || "the shipped pack".to_owned(),
                |p| p.display().to_string()
            )
        ),
    );
    if stage == StageArg::Source {
        row(
            "mix: stage",
            format!(
                "the input stage of repartition.topic (account_id kept): {:.2} forwarded an event",
                forwarded as f64 / total as f64
            ),
        );
    }
    row(
        "mix: events/s (one thread)",
        format!(
            "{median:.0} (median of {runs} runs: {})",
            rates
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    row(
        "mix: MB/s",
        format!("{:.1}", median * bytes as f64 / total as f64 / 1e6),
    );
    row("mix: alerts", alerts.to_string());
    for s in &stats {
        row(
            &format!("mix: keys in {}", s.name),
            format!(
                "{} ({:.0} bytes/key)",
                s.keys,
                s.bytes as f64 / s.keys.max(1) as f64
            ),
        );
    }
    row(
        "mix: state bytes per key (engine estimate)",
        format!("{:.0}", state as f64 / keys.max(1) as f64),
    );
    row(
        "mix: resident memory per key (RSS growth)",
        format!(
            "{:.0}",
            rss_after.saturating_sub(rss_before) as f64 / keys.max(1) as f64
        ),
    );
    row(
        "state walks in `cordon run`: metrics (every 5 s or more) / expiry (every 10 s or more)",
        format!("{:.0} ms / {:.0} ms", walk_secs * 1e3, expire_secs * 1e3),
    );
    {
        let (written, encode_secs, write_secs, restore_secs, restored_keys, sliced) =
            checkpoint_rows;
        match written {
            Ok(bytes) => {
                row(
                    "checkpoint: keys, file size",
                    format!(
                        "{keys} keys, {bytes} bytes ({:.0} bytes/key)",
                        bytes as f64 / keys.max(1) as f64
                    ),
                );
                row(
                    "checkpoint: encode + write + fsync",
                    format!(
                        "{write_secs:.2} s (encode {encode_secs:.2} s, write and fsync {:.2} s)",
                        write_secs - encode_secs
                    ),
                );
                match sliced {
                    Ok((secs, slices, longest, bytes)) => row(
                        "checkpoint: encoded in slices, as the loop does (longest slice)",
                        format!(
                            "{secs:.2} s in {slices} slices ({:.1} ms), {bytes} bytes",
                            longest * 1e3
                        ),
                    ),
                    Err(e) => row("checkpoint in slices", format!("failed: {e}")),
                }
                row(
                    "checkpoint: read + decode + restore (restart)",
                    format!("{restore_secs:.2} s ({restored_keys} keys)"),
                );
            }
            Err(e) => row("checkpoint", format!("failed: {e}")),
        }
    }

    // The flood: every event a new account on a new address.
    if flood > 0 {
        let config = CoreConfig {
            max_keys,
            ..CoreConfig::default()
        };
        let mut processor = Processor::new(&rules, config);
        let chunk = 1_000_000u64;
        let mut peak_keys = 0u64;
        let mut rss_samples: Vec<u64> = Vec::new();
        let mut elapsed = 0.0;
        let mut g = Gen {
            rng: ChaCha8Rng::seed_from_u64(7),
            n: 0,
        };
        let mut done = 0u64;
        while done < flood {
            let n = chunk.min(flood - done);
            let payloads: Vec<Vec<u8>> = (0..n)
                .map(|i| {
                    let a: u64 = g.rng.random();
                    let ts = T0 + ((done + i) as i64 * SPAN_MS) / flood as i64;
                    let ip = u64::from(g.rng.random::<u32>());
                    g.event(a, ip, ts)
                })
                .collect();
            let (secs, ..) = run(&mut processor, &payloads, T0 + SPAN_MS, |p, _| {
                peak_keys = peak_keys.max(p.live_keys())
            });
            elapsed += secs;
            done += n;
            rss_samples.push(rss_bytes());
        }
        let evictions: u64 = processor.table_stats().iter().map(|s| s.evictions).sum();
        let mb = |b: u64| b as f64 / (1 << 20) as f64;
        let half = rss_samples.len() / 2;
        row(
            "flood: events",
            format!("{flood} random accounts and addresses, state.max_keys {max_keys}"),
        );
        row(
            "flood: events/s (one thread)",
            format!("{:.0}", flood as f64 / elapsed),
        );
        row(
            "flood: peak live keys",
            format!("{peak_keys} (limit {max_keys})"),
        );
        row("flood: keys evicted", evictions.to_string());
        row(
            "flood: resident memory, MiB (second half min..max)",
            format!(
                "{:.0}..{:.0}",
                mb(rss_samples[half..].iter().copied().min().unwrap_or(0)),
                mb(rss_samples[half..].iter().copied().max().unwrap_or(0))
            ),
        );
    }
    // Steady state, last (it holds two hours of state, and the flood's resident memory above
    // is measured in the same process): the mix's next hour through a processor that has seen
    // the first, so keys exist and their windows slide and expire.
    {
        let first = mix(accounts, extra, ranges, T0, 42);
        let mut steady = Processor::new(&rules, config);
        run(&mut steady, &first, T0 + SPAN_MS, |_, _| {});
        drop(first);
        let second = mix(accounts, extra, ranges, T0 + SPAN_MS, 43);
        let (secs, alerts, _) = steady_hour(&mut steady, &second, T0 + 2 * SPAN_MS);
        row(
            "mix, second hour (keys exist, windows slide): events/s (one thread)",
            format!("{:.0} ({alerts} alerts)", total as f64 / secs),
        );
        // While the two hours' state is alive: how much of it the huge pages hold.
        row("heap huge pages", cordon_benches::huge_pages());
    }
    if let Some(path) = &json {
        let map: serde_json::Map<String, serde_json::Value> = rows
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        if let Err(e) = std::fs::write(path, serde_json::to_vec_pretty(&map).unwrap_or_default()) {
            eprintln!("cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
    }
}
