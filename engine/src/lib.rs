//! Cordon: streaming detection of model-extraction and distillation campaigns.
//!
//! An inference gateway writes one event per API request to Kafka. Cordon groups the events by
//! entity (account, IP range, payment fingerprint, prompt template, ...), keeps sliding windows
//! of aggregates per entity, evaluates YAML rules over them, and writes alerts to Kafka.
//!
//! # Layout
//! The pure core does no I/O and is driven by tests with bytes in and alerts out:
//! - [`decode`]: message bytes to Arrow batches of event schema v1, or dead letters.
//! - [`fingerprint`]: raw prompt text to fingerprints (the text goes no further).
//! - [`frame`]: the frames that carry forwarded events through the repartition topic.
//! - [`agg`]: aggregates: per-pane partials, exact when small, sketches when large.
//! - [`hll`]: the HyperLogLog sketch of `distinct()` (DataSketches' hash and wire format).
//! - [`plan`]: shared state tables, slots and expressions of a rule set.
//! - [`window`]: per-entity sliding windows of panes.
//! - [`keys`]: the keys of a state table, found a batch at a time.
//! - [`codec`]: the versioned binary encoding of persisted state.
//! - [`checkpoint`]: per-partition checkpoints (state, offsets) and their files.
//! - [`remap`]: carrying state to another rule set (reloads, checkpoints).
//! - [`gate`]: suppression, deterministic alert ids, alert schema v1.
//! - [`ocsf`]: alerts as OCSF Detection Findings (`sink.format: ocsf`).
//! - [`processor`]: the core loop over a micro-batch.
//!
//! Around it:
//! - [`config`]: Config v1.
//! - [`runtime`]: wires the core to Kafka, the HTTP server, signals and the clock
//!   (`cordon run`).
//! - [`http`]: the HTTP port: `/healthz`, `/readyz` and `/metrics`.
//! - [`metrics`]: the Prometheus series and the log lines that go with them.
//! - [`reload`]: rule hot reload on file change and SIGHUP.
//! - [`ruletest`]: `cordon rules test`, rules' fixtures through the core.
//! - [`simulate`]: `cordon simulate`, traffic with campaigns and ground truth.
//! - [`backtest`]: `cordon backtest`, rules over recorded traffic, scored against truth.
//! - [`demo`]: `cordon demo`, with an in-process Kafka cluster and a traffic generator.

pub mod agg;
pub mod backtest;
pub mod checkpoint;
pub mod codec;
pub mod config;
pub mod decode;
pub mod demo;
pub mod fingerprint;
pub mod frame;
pub mod gate;
pub mod hll;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod ocsf;
pub mod plan;
pub mod prefetch;
pub mod processor;
pub mod reload;
pub mod remap;
pub mod ruletest;
pub mod runtime;
pub mod simulate;
pub mod window;
