//! What the criterion benchmarks share (each `benches/*.rs` is its own crate and includes
//! this module).

use criterion::Criterion;
use std::time::Duration;

/// Short runs, so the whole suite takes a few minutes: 20 samples, 1 s of warm-up,
/// `measurement_secs` of measurement per benchmark.
pub(crate) fn config(measurement_secs: u64) -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(measurement_secs))
}
