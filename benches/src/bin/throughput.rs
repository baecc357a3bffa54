//! In-process throughput of the detection core on one thread: raw message bytes in, alerts out,
//! with the shipped extraction pack.
//!
//! The stream is synthetic and heavy-tailed: accounts drawn from a Zipf-like distribution over
//! `--accounts`, addresses over `--ranges` /24s, most prompts distinct, a few campaign accounts.
//! Run: `cargo run --release -p cordon-benches --bin throughput -- [--events N] [--accounts N] [--ranges N]`

use cordon_engine::processor::{CoreConfig, Input, Output, Processor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let events = arg("--events", 1_000_000);
    let accounts = arg("--accounts", 1_000_000);
    let ranges = arg("--ranges", 100_000);
    let batch = arg("--batch", 5_000) as usize;
    let pack = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules/packs/extraction");
    let rules = match cordon_rules::load_paths(&[pack]) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };

    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let t0: i64 = 1_772_359_200_000;
    let span_ms: i64 = 3_600_000;
    let mut payloads: Vec<Vec<u8>> = Vec::with_capacity(events as usize);
    for i in 0..events {
        // Zipf-like: account index = accounts^(u^2) - 1 puts most mass on few accounts.
        let u: f64 = rng.random();
        let a = ((accounts as f64).powf(u * u) as u64).saturating_sub(1);
        let r = a % ranges;
        let ts = t0 + (i as i64 * span_ms) / events as i64;
        let cot = a.is_multiple_of(97);
        let v = serde_json::json!({
            "ts": ts,
            "account_id": format!("acct-{a}"),
            "ip": format!("10.{}.{}.{}", r >> 16 & 255, r >> 8 & 255, (r & 255) as u8),
            "request_id": format!("req-{i}"),
            "model": "frontier-1",
            "status": 200,
            "input_tokens": rng.random_range(10..2000),
            "output_tokens": rng.random_range(10..4000),
            "prompt_fp": format!("{:016x}", rng.random::<u64>()),
            "template_fp": format!("{:016x}", a % 1000),
            "labels": if cot { vec!["cot_elicitation"] } else { vec![] },
        });
        payloads.push(serde_json::to_vec(&v).unwrap_or_default());
    }
    let bytes: usize = payloads.iter().map(Vec::len).sum();

    let mut processor = Processor::new(&rules, CoreConfig::default());
    let now = t0 + span_ms;
    let started = Instant::now();
    let mut alerts = 0usize;
    let mut offset = 0i64;
    for chunk in payloads.chunks(batch) {
        let inputs: Vec<Input<'_>> = chunk
            .iter()
            .map(|p| {
                offset += 1;
                Input {
                    partition: 0,
                    offset,
                    key: None,
                    payload: p,
                }
            })
            .collect();
        let mut out = Output::default();
        if let Err(e) = processor.process(&inputs, now, &mut out) {
            eprintln!("{e}");
            std::process::exit(1);
        }
        alerts += out.alerts.len();
    }
    let secs = started.elapsed().as_secs_f64();
    println!("| measure | value |");
    println!("| --- | --- |");
    println!("| events | {events} ({accounts} accounts, {ranges} /24 ranges, batch {batch}) |");
    println!("| rules | {} |", rules.len());
    println!("| events/s (one thread) | {:.0} |", events as f64 / secs);
    println!("| MB/s | {:.1} |", bytes as f64 / secs / 1e6);
    println!("| alerts | {alerts} |");
    println!("| live keys | {} |", processor.live_keys());
}
