//! Cordon's rule format v1: parse, validate, compile.
//!
//! A rule describes one campaign behaviour: which events count (`where`), who they are grouped
//! by (`entity`), what is measured over a sliding window (`features`) and when that is an alert
//! (`condition`). This crate knows nothing of Kafka or of state: it turns YAML text into
//! [`CompiledRule`]s whose expressions the engine evaluates on Arrow batches.
//!
//! # Layout
//! - [`yaml`]: a YAML tree whose every node knows its line and column (parse).
//! - [`rule`]: the rule model and its validation, collecting every error at once (validate).
//! - [`compile`]: DataFusion typing of expressions, the function whitelist (compile).
//! - [`schema`]: event schema v1 as Arrow columns, shared with the engine's decoder.
//! - [`udf`]: functions Cordon adds to SQL (`ip_prefix`).
//! - [`load`]: rule sets from files and directories, all-or-nothing.
//! - [`jsonschema`]: the JSON Schema of the rule format, for editors.
//! - [`diag`]: diagnostics with file:line:column and "did you mean".

pub mod compile;
pub mod diag;
pub mod jsonschema;
pub mod load;
pub mod rule;
pub mod schema;
pub mod udf;
pub mod yaml;

pub use compile::{Bound, BoundOp, CompiledFeature, CompiledRule, Compiler};
pub use diag::{Diagnostic, RuleSetError};
pub use load::{RuleSet, load_paths, load_sources};
pub use rule::{AggKind, Rule, Severity};
