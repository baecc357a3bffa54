//! Cordon's benchmarks.
//!
//! # Layout
//! - `src/bin/throughput.rs`: in-process throughput of the core (message bytes in, alerts out)
//!   with the shipped extraction pack on a heavy-tailed synthetic stream.
//! - `src/bin/e2e.rs`: end to end through a local tansu broker: a bare rdkafka consumer's rate
//!   next to the `cordon` release binary's on the same topic, and event-to-alert latency at
//!   half that rate.
//! - `src/bin/layout.rs`: the sizes behind the key state's pane list (why not `SmallVec`).
//! - `src/bin/memory.rs`: what this machine's memory allows one core (random cache-line loads
//!   over working sets from 1 MB to 2 GB), the floor under a state table's cost.
//! - `scripts/ab.sh`: two builds of `throughput` in paired runs; `scripts/costs.sh`: what
//!   groups of a pack's rule files cost per event, by leaving them out;
//!   `scripts/instructions.sh`: the instructions `Processor::process` executes per event,
//!   counted by callgrind.
//! - `benches/*.rs`: criterion micro-benchmarks of the core's stages (decode, expression
//!   evaluation, state update, condition evaluation, alert gate, the whole batch), named by
//!   the type path they measure.
//!
//! This library holds what they share: the shipped pack, simulator payloads and command-line
//! flags.

use cordon_engine::simulate::{SimEvent, SimOptions, Simulation};
use cordon_rules::RuleSet;
use std::path::PathBuf;

/// The value after flag `name` on the command line.
pub fn arg_str(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// The number after flag `name` on the command line, or `default` when it is absent or not a
/// number.
pub fn arg_u64(name: &str, default: u64) -> u64 {
    arg_str(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The shipped extraction pack's directory.
pub fn pack_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../rules/packs/extraction")
}

/// Loads the shipped extraction pack; a pack that does not load is a bug in the checkout.
#[allow(clippy::expect_used)]
pub fn load_pack() -> RuleSet {
    cordon_rules::load_paths(&[pack_dir()]).expect("the shipped pack loads")
}

/// The first `n` events of the default simulation (a day of benign populations and every
/// campaign kind, about 1.1M events and 490 bytes an event for 10,000 benign accounts), in
/// event-time order. Past a million events the benign population grows, 10,000 accounts per
/// million, so the day holds `n`.
pub fn sim_events(n: usize, seed: u64) -> Vec<SimEvent> {
    let millions = n.div_ceil(1_000_000).max(1) as u32;
    let mut sim = Simulation::new(SimOptions {
        seed,
        benign_accounts: 10_000 * millions,
        ..SimOptions::default()
    });
    let mut out = Vec::with_capacity(n);
    let mut h = 0;
    while out.len() < n && h < sim.hours() {
        out.extend(sim.hour(h));
        h += 1;
    }
    out.truncate(n);
    out
}

/// `n` simulator events as message payloads (JSON, as a gateway writes them).
pub fn sim_payloads(n: usize, seed: u64) -> Vec<Vec<u8>> {
    sim_events(n, seed)
        .iter()
        .map(|e| serde_json::to_vec(e).unwrap_or_default())
        .collect()
}
