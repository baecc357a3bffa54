//! Cordon's benchmarks.
//!
//! # Layout
//! - `src/bin/throughput.rs`: in-process throughput of the core (message bytes in, alerts out)
//!   with the shipped extraction pack on a heavy-tailed synthetic stream.
//! - `src/bin/layout.rs`: the sizes behind the key state's pane list (why not `SmallVec`).
