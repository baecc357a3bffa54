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
//! This library holds what they share: the shipped pack, simulator payloads, the machine's
//! description that heads each table and the heap's huge pages.

use cordon_engine::simulate::{SimEvent, SimOptions, Simulation};
use cordon_rules::RuleSet;
use std::path::PathBuf;

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

/// The machine a harness runs on, for the first row of its table: the processor as Linux names
/// it (vendor, family and model), the CPUs, the memory, and whether it is a virtual machine.
/// Rates on a virtual machine move with the host under it: this project's development machine
/// moved from an AMD EPYC host to an Intel Xeon one between two rounds, unnoticed until
/// `lscpu` was read (README, "Performance"), so every table now says where it ran.
pub fn machine() -> String {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    describe_machine(&read("/proc/cpuinfo"), &read("/proc/meminfo"))
}

/// [`machine`] from the text of `/proc/cpuinfo` and `/proc/meminfo`; what is missing is left
/// out, and with nothing to go on it says so.
pub fn describe_machine(cpuinfo: &str, meminfo: &str) -> String {
    let fields = || {
        cpuinfo
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim(), v.trim()))
    };
    let field = |name: &str| fields().find(|(k, _)| *k == name).map(|(_, v)| v);
    let mut parts = Vec::new();
    if let Some(name) = field("model name") {
        parts.push(
            match (field("vendor_id"), field("cpu family"), field("model")) {
                (Some(v), Some(f), Some(m)) => format!("{name} ({v}, family {f}, model {m})"),
                _ => name.to_owned(),
            },
        );
    }
    let cpus = fields().filter(|(k, _)| *k == "processor").count();
    if cpus > 0 {
        parts.push(format!("{cpus} CPUs"));
    }
    let mem_kb = meminfo.lines().find_map(|l| {
        let kb = l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?;
        kb.trim().parse::<u64>().ok()
    });
    if let Some(kb) = mem_kb {
        parts.push(format!("{:.0} GiB", kb as f64 / f64::from(1 << 20)));
    }
    if field("flags").is_some_and(|f| f.split_whitespace().any(|x| x == "hypervisor")) {
        parts.push("virtual machine".to_owned());
    }
    if parts.is_empty() {
        "unknown (no /proc/cpuinfo or /proc/meminfo)".to_owned()
    } else {
        parts.join(", ")
    }
}

/// Whether the process's heap can sit in transparent huge pages, for a harness's table: the
/// kernel's mode (`/sys/kernel/mm/transparent_hugepage/enabled`), whether glibc's malloc asks
/// for them (the `glibc.malloc.hugetlb` tunable in `GLIBC_TUNABLES`, which glibc reads at
/// start-up), and how much of the process's memory is in huge pages when it is called
/// (`AnonHugePages` of `/proc/self/smaps_rollup`). On this project's virtual machine a random
/// cache line over 512 MB cost about a quarter less with them (`memory`), so a rate means
/// little without it (README, "Where the time goes").
pub fn huge_pages() -> String {
    huge_pages_with(Some(
        &std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default(),
    ))
}

/// [`huge_pages`] without their use: what a harness that frees its memory as it goes can
/// say at its start.
pub fn huge_pages_setting() -> String {
    huge_pages_with(None)
}

fn huge_pages_with(smaps_rollup: Option<&str>) -> String {
    describe_huge_pages(
        &std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default(),
        std::env::var("GLIBC_TUNABLES").ok().as_deref(),
        smaps_rollup,
    )
}

/// [`huge_pages`] from the text of the kernel's mode, `GLIBC_TUNABLES` and, for their use,
/// `/proc/self/smaps_rollup`.
pub fn describe_huge_pages(
    enabled: &str,
    tunables: Option<&str>,
    smaps_rollup: Option<&str>,
) -> String {
    let mode = enabled
        .split_whitespace()
        .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
        .unwrap_or("unknown");
    // The last setting wins, as glibc reads them.
    let hugetlb = tunables
        .into_iter()
        .flat_map(|t| t.split(':'))
        .filter_map(|kv| kv.strip_prefix("glibc.malloc.hugetlb="))
        .next_back();
    let malloc = match hugetlb {
        Some(v @ ("1" | "2")) => format!("malloc asks for them (glibc.malloc.hugetlb={v})"),
        _ => "malloc does not ask for them (no glibc.malloc.hugetlb)".to_owned(),
    };
    let Some(rollup) = smaps_rollup else {
        return format!("kernel mode {mode}; {malloc}");
    };
    let in_huge = rollup.lines().find_map(|l| {
        let kb = l
            .strip_prefix("AnonHugePages:")?
            .trim()
            .strip_suffix("kB")?;
        kb.trim().parse::<u64>().ok()
    });
    let now = match in_huge {
        Some(kb) => format!("{} MiB of the process in huge pages", kb / 1024),
        None => "unknown use".to_owned(),
    };
    format!("kernel mode {mode}; {malloc}; {now}")
}

#[cfg(test)]
mod tests {
    use super::{describe_huge_pages, describe_machine};

    #[test]
    fn huge_pages_name_the_kernel_mode_the_tunable_and_their_use() {
        let madvise = "always [madvise] never\n";
        let rollup = "Rss:             1220456 kB\nAnonHugePages:    1048576 kB\nSwap: 0 kB\n";
        assert_eq!(
            describe_huge_pages(
                madvise,
                Some("glibc.malloc.tcache_count=0:glibc.malloc.hugetlb=1"),
                Some(rollup)
            ),
            "kernel mode madvise; malloc asks for them (glibc.malloc.hugetlb=1); \
             1024 MiB of the process in huge pages"
        );
        // Not asked for, asked for and taken back, or another tunable alone.
        for tunables in [
            None,
            Some("glibc.malloc.hugetlb=1:glibc.malloc.hugetlb=0"),
            Some("glibc.malloc.arena_max=1"),
        ] {
            assert_eq!(
                describe_huge_pages(
                    "[always] madvise never",
                    tunables,
                    Some("AnonHugePages: 0 kB")
                ),
                "kernel mode always; malloc does not ask for them (no glibc.malloc.hugetlb); \
                 0 MiB of the process in huge pages",
                "{tunables:?}"
            );
        }
        assert_eq!(
            describe_huge_pages("", None, Some("")),
            "kernel mode unknown; malloc does not ask for them (no glibc.malloc.hugetlb); \
             unknown use"
        );
        // The setting alone.
        assert_eq!(
            describe_huge_pages(madvise, Some("glibc.malloc.hugetlb=2"), None),
            "kernel mode madvise; malloc asks for them (glibc.malloc.hugetlb=2)"
        );
    }

    const MEMINFO: &str = "MemTotal:       24731708 kB\nMemFree:         3399960 kB\n";

    fn cpu(i: usize, vendor: &str, family: u32, model: u32, name: &str, flags: &str) -> String {
        format!(
            "processor\t: {i}\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n\
             model name\t: {name}\nstepping\t: 2\nflags\t\t: {flags}\n\n"
        )
    }

    #[test]
    fn names_the_processor_the_cpus_the_memory_and_a_hypervisor() {
        let info: String = (0..2)
            .map(|i| {
                cpu(
                    i,
                    "GenuineIntel",
                    6,
                    207,
                    "Intel(R) Xeon(R) Processor",
                    "fpu sse2 hypervisor avx2",
                )
            })
            .collect();
        assert_eq!(
            describe_machine(&info, MEMINFO),
            "Intel(R) Xeon(R) Processor (GenuineIntel, family 6, model 207), 2 CPUs, 24 GiB, virtual machine"
        );
    }

    #[test]
    fn tells_hosts_apart_and_bare_metal_from_a_virtual_machine() {
        let amd: String = (0..4)
            .map(|i| cpu(i, "AuthenticAMD", 25, 1, "AMD EPYC 7B13", "fpu sse2 avx2"))
            .collect();
        assert_eq!(
            describe_machine(&amd, ""),
            "AMD EPYC 7B13 (AuthenticAMD, family 25, model 1), 4 CPUs"
        );
    }

    #[test]
    fn says_so_when_there_is_nothing_to_read() {
        assert_eq!(
            describe_machine("", "garbage"),
            "unknown (no /proc/cpuinfo or /proc/meminfo)"
        );
        assert_eq!(describe_machine("", MEMINFO), "24 GiB");
    }
}
