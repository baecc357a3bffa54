//! What this machine's memory allows one core: the cost of a cache line loaded from a random
//! place in a working set of a given size, which bounds a keyed engine whose state is larger
//! than the caches, whatever its code.
//!
//! The in-process harness (`throughput`) keeps 500 MB and more of state for the 1M-account mix,
//! and every event reads and writes a few lines of it per state table at places no hardware
//! prefetcher can guess (an index entry, a key state, its partials, a set, a sketch register).
//! This harness measures, for working sets from inside the caches to far outside them:
//! - **chase**: each load's address depends on the one before (a random cyclic permutation of
//!   the lines): the full latency of one miss, nothing overlapped;
//! - **independent**: loads whose addresses are known in advance (random lines, read and
//!   summed), which the out-of-order core overlaps as far as it can on its own;
//! - **prefetched**: the same, with a prefetch hint [`DISTANCE`] loads ahead, as the engine's
//!   processor issues them ([`cordon_engine::prefetch::prefetch`]);
//! - **prefetched update**: the same, adding one to the line's second word (read, then
//!   write), which is what a state update does;
//! - **three-line chain**: a key's lookup as the engine makes it, three dependent lines (an
//!   index entry, the key state it points to, the partials that points to), the last one
//!   read. Software-pipelined as the processor's passes are: the first line of the key
//!   [`DISTANCE`] x 3 keys ahead is prefetched, the second of the key 2 x [`DISTANCE`] ahead
//!   (its first line has arrived), the third [`DISTANCE`] ahead. Per chain, not per line.
//!
//! The prefetched columns at the mix's working set are a floor under the engine's cost per
//! event: an event that touches N random lines of state, their addresses known a little
//! ahead, cannot take less than N prefetched updates, nor a key's lookup less than a chain.
//!
//! Run: `cargo run --release -p cordon-benches --bin memory -- [--max-mb N] [--loads N]
//! [--json FILE]` (pin it, e.g. `taskset -c 1`, to compare with `throughput`). To see what
//! transparent huge pages change, run it again with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`
//! (glibc then asks for huge pages for its large allocations).

use clap::Parser;
use cordon_engine::prefetch::prefetch;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

/// Words in a 64-byte cache line.
const LINE_WORDS: usize = 8;

/// How many loads ahead the prefetched rows hint, as the engine's first pass does (16 rows).
const DISTANCE: usize = 16;

/// Nanoseconds per load of each access pattern over one working set.
struct Row {
    mb: usize,
    chase: f64,
    independent: f64,
    prefetched: f64,
    update: f64,
    chain: f64,
}

/// Measures the five patterns over `lines` cache lines with `loads` loads each.
fn measure(lines: usize, loads: usize, rng: &mut ChaCha8Rng) -> Row {
    // Every line holds, in its first word, the next line of one random cycle through all of
    // them (Sattolo's algorithm), so the chase visits every line before it repeats.
    let mut order: Vec<usize> = (0..lines).collect();
    for i in (1..lines).rev() {
        let j = rng.random_range(0..i);
        order.swap(i, j);
    }
    let mut mem = vec![0u64; lines * LINE_WORDS];
    for w in order.windows(2) {
        mem[w[0] * LINE_WORDS] = w[1] as u64;
    }
    if let (Some(&last), Some(&first)) = (order.last(), order.first()) {
        mem[last * LINE_WORDS] = first as u64;
    }
    drop(order);
    // The independent loads' addresses, drawn beforehand and read in order (a stream the
    // hardware prefetcher follows), so that drawing them costs nothing in the timed loops.
    let idx: Vec<u32> = (0..loads + DISTANCE)
        .map(|_| rng.random_range(0..lines) as u32)
        .collect();

    let chase = {
        let started = Instant::now();
        let mut at = 0usize;
        for _ in 0..loads {
            at = mem[at * LINE_WORDS] as usize;
        }
        black_box(at);
        started.elapsed().as_nanos() as f64 / loads as f64
    };
    let independent = {
        let started = Instant::now();
        let mut sum = 0u64;
        for &i in &idx[..loads] {
            sum = sum.wrapping_add(mem[i as usize * LINE_WORDS]);
        }
        black_box(sum);
        started.elapsed().as_nanos() as f64 / loads as f64
    };
    // Where line `l` starts; a raw pointer, which a prefetch needs and which borrows nothing,
    // so that the update loop below can write `mem` beside it.
    let base = mem.as_ptr();
    let at = |l: usize| base.wrapping_add(l * LINE_WORDS);
    let prefetched = {
        let started = Instant::now();
        let mut sum = 0u64;
        for (k, &i) in idx[..loads].iter().enumerate() {
            prefetch(at(idx[k + DISTANCE] as usize));
            sum = sum.wrapping_add(mem[i as usize * LINE_WORDS]);
        }
        black_box(sum);
        started.elapsed().as_nanos() as f64 / loads as f64
    };
    let update = {
        let started = Instant::now();
        for k in 0..loads {
            prefetch(at(idx[k + DISTANCE] as usize));
            let w = &mut mem[idx[k] as usize * LINE_WORDS + 1];
            *w = w.wrapping_add(1);
        }
        black_box(&mem);
        started.elapsed().as_nanos() as f64 / loads as f64
    };
    // The chains start at random lines and follow the cycle: line -> next -> next.
    let next = |line: usize| mem[line * LINE_WORDS] as usize;
    let chain = {
        let started = Instant::now();
        let mut sum = 0u64;
        for k in 0..loads - 2 * DISTANCE {
            prefetch(at(idx[k + 3 * DISTANCE] as usize));
            prefetch(at(next(idx[k + 2 * DISTANCE] as usize)));
            prefetch(at(next(next(idx[k + DISTANCE] as usize))));
            let third = next(next(idx[k] as usize));
            sum = sum.wrapping_add(mem[third * LINE_WORDS + 1]);
        }
        black_box(sum);
        started.elapsed().as_nanos() as f64 / (loads - 2 * DISTANCE) as f64
    };
    Row {
        mb: (lines * 64) >> 20,
        chase,
        independent,
        prefetched,
        update,
        chain,
    }
}

/// What this machine's memory allows one core (see the module docs); prints one table.
#[derive(Parser)]
struct Args {
    /// Largest working set, in MB.
    #[arg(long, default_value_t = 2048)]
    max_mb: u64,
    /// Loads timed per working set.
    #[arg(long, default_value_t = 20_000_000)]
    loads: u64,
    /// Also write the table to this file as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    let max_mb = args.max_mb.max(1) as usize;
    let loads = args.loads.max(3 * DISTANCE as u64) as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let sizes: Vec<usize> = [1, 16, 64, 256, 512, 1024, 2048, 4096]
        .into_iter()
        .filter(|&mb| mb <= max_mb)
        .collect();
    let machine = cordon_benches::machine();
    let huge_pages = cordon_benches::huge_pages_setting();
    println!("machine: {machine}\nhuge pages: {huge_pages}\n");
    println!(
        "| working set | chase, ns a load | independent, ns a load | prefetched {DISTANCE} ahead, ns a load | prefetched update, ns a line | three-line chain, ns a chain |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    let mut rows = Vec::new();
    for mb in sizes {
        let r = measure((mb << 20) / 64, loads, &mut rng);
        println!(
            "| {} MB | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            r.mb, r.chase, r.independent, r.prefetched, r.update, r.chain
        );
        rows.push(serde_json::json!({
            "working_set_mb": r.mb,
            "chase_ns": r.chase,
            "independent_ns": r.independent,
            "prefetched_ns": r.prefetched,
            "prefetched_update_ns": r.update,
            "three_line_chain_ns": r.chain,
        }));
    }
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "machine": machine,
            "huge_pages": huge_pages,
            "loads": loads,
            "distance": DISTANCE,
            "rows": rows,
        });
        if let Err(e) = std::fs::write(path, format!("{doc:#}\n")) {
            eprintln!("memory: cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
    }
}
