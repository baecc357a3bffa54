//! Cordon's connectors: they move bytes, keys, offsets and timestamps between Kafka and the
//! engine, and bytes to and from object storage, and know nothing of rules or state.
//!
//! # Layout
//! - [`kafka`]: the consumer-group source (offsets committed by the engine, never auto-commit)
//!   and the idempotent producer sink, both on rdkafka.
//! - [`objects`]: objects under a prefix of S3 (or a local stand-in), behind a blocking API,
//!   where the engine keeps checkpoints that several replicas share.

pub mod kafka;
pub mod objects;

pub use kafka::{
    AssignHook, ClientSettings, ConnectorError, KafkaSink, KafkaSource, ReadRecord, SourceRecord,
    read_to_end,
};
pub use objects::{ObjectError, ObjectStorage};
