//! Cordon's connectors: they move bytes, keys, offsets and timestamps between Kafka and the
//! engine, and know nothing of rules or state.
//!
//! # Layout
//! - [`kafka`]: the consumer-group source (offsets committed by the engine, never auto-commit)
//!   and the idempotent producer sink, both on rdkafka.

pub mod kafka;

pub use kafka::{
    AssignHook, ClientSettings, ConnectorError, KafkaSink, KafkaSource, ReadRecord, SourceRecord,
    read_to_end,
};
