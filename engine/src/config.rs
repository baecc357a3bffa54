//! Config v1: the `cordon run` configuration file.
//!
//! Every key has a default except `source.brokers`; unknown keys are errors that name the key.
//! Any key can be overridden from the environment: `CORDON_SOURCE__BROKERS=host:9092` sets
//! `source.brokers` (sections separated by `__`; the value is read as a YAML scalar).

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A bad configuration: names the key and says what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML does not fit Config v1.
    #[error("{origin}: {message}")]
    Invalid {
        /// File and position, or the environment variable.
        origin: String,
        /// serde's message, which names the key.
        message: String,
    },
    /// A value is out of range or inconsistent with another.
    #[error("config key `{key}`: {message}")]
    Value {
        /// Dotted key path.
        key: String,
        /// What is wrong.
        message: String,
    },
}

fn default_topic() -> String {
    "requests".into()
}
fn default_group() -> String {
    "cordon".into()
}
fn default_alerts_topic() -> String {
    "cordon-alerts".into()
}
fn default_dlq_topic() -> String {
    "cordon-dlq".into()
}
fn default_max_message_bytes() -> usize {
    1 << 20
}
fn default_rule_paths() -> Vec<PathBuf> {
    vec![PathBuf::from("rules/packs/extraction")]
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/cordon")
}
fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_max_keys() -> u64 {
    10_000_000
}
fn default_allowed_lateness() -> Duration {
    Duration::from_secs(300)
}
fn default_max_future_skew() -> Duration {
    Duration::from_secs(60)
}
fn default_listen() -> String {
    "0.0.0.0:9464".into()
}
fn default_max_batch_messages() -> usize {
    5000
}
fn default_max_batch_wait() -> Duration {
    Duration::from_millis(20)
}

/// librdkafka properties are strings; accept numbers and booleans as written (`linger.ms: 5`).
fn properties<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = BTreeMap::<String, serde_json::Value>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => Ok((k, s)),
            serde_json::Value::Number(n) => Ok((k, n.to_string())),
            serde_json::Value::Bool(b) => Ok((k, b.to_string())),
            other => Err(serde::de::Error::custom(format!(
                "property `{k}` must be a string, number or boolean, found {other}"
            ))),
        })
        .collect()
}

mod duration {
    use serde::{Deserialize, Deserializer, de::Error};
    use std::time::Duration;

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map_err(|e| {
            D::Error::custom(format!(
                "`{s}` is not a duration ({e}); write e.g. 30s, 5m, 1h"
            ))
        })
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where events come from.
    pub source: SourceConfig,
    /// Where alerts go.
    #[serde(default)]
    pub sink: SinkConfig,
    /// Where malformed and late events go.
    #[serde(default)]
    pub dead_letter: DeadLetterConfig,
    /// Which rules run.
    #[serde(default)]
    pub rules: RulesConfig,
    /// Window state and checkpoints.
    #[serde(default)]
    pub state: StateConfig,
    /// Event-time handling.
    #[serde(default)]
    pub time: TimeConfig,
    /// The HTTP port (metrics, health).
    #[serde(default)]
    pub http: HttpConfig,
    /// Re-keying of events by the entities the input topic is not keyed by.
    #[serde(default)]
    pub repartition: RepartitionConfig,
}

/// The Kafka input.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// The requests topic.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// The consumer group; replicas share it.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// librdkafka properties passed to every Kafka client (consumer, producers), e.g.
    /// `security.protocol: SASL_SSL`. Numbers and booleans are accepted as written.
    #[serde(default, deserialize_with = "properties")]
    pub properties: BTreeMap<String, String>,
    /// Messages larger than this go to the dead-letter topic as `too_large`.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Most messages in one micro-batch.
    #[serde(default = "default_max_batch_messages")]
    pub max_batch_messages: usize,
    /// Longest a micro-batch waits to fill.
    #[serde(default = "default_max_batch_wait", with = "duration")]
    pub max_batch_wait: Duration,
}

/// Alert output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkFormat {
    /// Alert schema v1.
    #[default]
    Native,
    /// OCSF Detection Finding (class 2004, OCSF 1.3.0).
    Ocsf,
}

/// The Kafka output for alerts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// The alerts topic.
    #[serde(default = "default_alerts_topic")]
    pub topic: String,
    /// `native` or `ocsf`.
    #[serde(default)]
    pub format: SinkFormat,
    /// librdkafka properties for the producer only, applied after `source.properties`.
    #[serde(default, deserialize_with = "properties")]
    pub properties: BTreeMap<String, String>,
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            topic: default_alerts_topic(),
            format: SinkFormat::Native,
            properties: BTreeMap::new(),
        }
    }
}

/// The dead-letter topic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// Topic name.
    #[serde(default = "default_dlq_topic")]
    pub topic: String,
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        Self {
            topic: default_dlq_topic(),
        }
    }
}

/// Rule files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    /// Files or directories of `*.yaml` rules.
    #[serde(default = "default_rule_paths")]
    pub paths: Vec<PathBuf>,
}

impl Default for RulesConfig {
    fn default() -> Self {
        Self {
            paths: default_rule_paths(),
        }
    }
}

/// Window state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Directory for checkpoints.
    #[serde(default = "default_state_dir")]
    pub dir: PathBuf,
    /// How often state is checkpointed.
    #[serde(default = "default_checkpoint_interval", with = "duration")]
    pub checkpoint_interval: Duration,
    /// Most keys held across all state tables.
    #[serde(default = "default_max_keys")]
    pub max_keys: u64,
    /// Object storage for checkpoints instead of `dir`, which every replica reads and writes,
    /// so that a partition's state moves with it between replicas: `s3://bucket/prefix`
    /// (credentials and region from the `AWS_*` environment), `file:///path` or `memory://`.
    #[serde(default)]
    pub object_store_url: Option<String>,
    /// Options of the object store, after the environment (S3: `aws_endpoint`,
    /// `aws_region`, `aws_allow_http`, ...: the keys of `object_store`'s `AmazonS3ConfigKey`).
    #[serde(default, deserialize_with = "properties")]
    pub object_store_options: BTreeMap<String, String>,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            dir: default_state_dir(),
            checkpoint_interval: default_checkpoint_interval(),
            max_keys: default_max_keys(),
            object_store_url: None,
            object_store_options: BTreeMap::new(),
        }
    }
}

/// What happens to an event stamped further than `time.max_future_skew` ahead of the clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FutureEvents {
    /// Dead-lettered as `future`.
    #[default]
    Reject,
    /// Counted at the wall clock plus `max_future_skew`.
    Clamp,
}

/// Event time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeConfig {
    /// Events older than the partition's watermark minus this go to the dead-letter topic.
    #[serde(default = "default_allowed_lateness", with = "duration")]
    pub allowed_lateness: Duration,
    /// Events stamped further than this ahead of the wall clock are rejected or clamped.
    #[serde(default = "default_max_future_skew", with = "duration")]
    pub max_future_skew: Duration,
    /// `reject` (dead-letter as `future`) or `clamp` (count at the limit).
    #[serde(default)]
    pub future_events: FutureEvents,
}

impl Default for TimeConfig {
    fn default() -> Self {
        Self {
            allowed_lateness: default_allowed_lateness(),
            max_future_skew: default_max_future_skew(),
            future_events: FutureEvents::Reject,
        }
    }
}

/// HTTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address of `/metrics`, `/healthz`, `/readyz`.
    #[serde(default = "default_listen")]
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
        }
    }
}

fn default_input_entity() -> String {
    "account_id".into()
}
/// librdkafka's default `message.max.bytes`, the largest message its producer sends.
const LIBRDKAFKA_MESSAGE_MAX_BYTES: usize = 1_000_000;

fn default_max_frame_bytes() -> usize {
    crate::frame::DEFAULT_MAX_FRAME_BYTES
}

/// The repartition stage. State is kept per input partition, so an entity the input topic is
/// not keyed by (an IP range, when the gateway keys by account) has its events counted apart
/// in every partition it reaches. With `topic` set, the engine runs two stages: the first
/// reads `source.topic`, keeps the rules whose entity is `input_entity`, and forwards each
/// event to `topic` once for every other entity, to the partition that entity's value picks,
/// packed in frames of a batch's events ([`crate::frame`]); the second reads `topic` in the
/// consumer group `<source.group_id>.repartition` and keeps the other rules, each entity's
/// events meeting in one partition. See the README's "Repartitioning".
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepartitionConfig {
    /// The internal topic events are re-keyed through (created beforehand, like the others;
    /// as many partitions as the input topic is a good start). Unset: one stage.
    #[serde(default)]
    pub topic: Option<String>,
    /// The entity the input topic's messages are keyed by, as the rules write it: rules with
    /// this entity stay in the first stage.
    #[serde(default = "default_input_entity")]
    pub input_entity: String,
    /// The largest message the input stage packs forwarded events into, in bytes (an event
    /// larger than that goes alone). At most the producer's `message.max.bytes`
    /// (librdkafka's default 1,000,000), and the brokers' limit for the topic.
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: usize,
}

impl Default for RepartitionConfig {
    fn default() -> Self {
        Self {
            topic: None,
            input_entity: default_input_entity(),
            max_frame_bytes: default_max_frame_bytes(),
        }
    }
}

impl Config {
    /// The largest message the producer sends (alerts, dead letters, frames): its
    /// `message.max.bytes`, from `sink.properties` or else `source.properties` (the producer
    /// takes both, the sink's over the source's), librdkafka's 1,000,000 by default.
    pub fn producer_message_max(&self) -> Result<usize, ConfigError> {
        let set = [
            ("sink", &self.sink.properties),
            ("source", &self.source.properties),
        ]
        .into_iter()
        .find_map(|(section, props)| props.get("message.max.bytes").map(|v| (section, v)));
        match set {
            Some((section, v)) => match v.trim().parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(ConfigError::Value {
                    key: format!("{section}.properties.message.max.bytes"),
                    message: format!("`{v}` is not a positive number of bytes"),
                }),
            },
            None => Ok(LIBRDKAFKA_MESSAGE_MAX_BYTES),
        }
    }

    /// The consumer group of the repartition stage.
    pub fn repartition_group(&self) -> String {
        format!("{}.repartition", self.source.group_id)
    }
}

/// Librdkafka properties Cordon manages itself; setting them would break its guarantees.
pub const MANAGED_PROPERTIES: &[(&str, &str)] = &[
    (
        "enable.auto.commit",
        "Cordon commits offsets itself, after alerts are written",
    ),
    ("enable.auto.offset.store", "Cordon stores offsets itself"),
    ("group.id", "set source.group_id instead"),
    ("bootstrap.servers", "set source.brokers instead"),
    (
        "enable.idempotence",
        "the alert producer is always idempotent",
    ),
];

impl Config {
    /// Reads a config file and applies `CORDON_*` environment overrides.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text, &path.display().to_string(), std::env::vars())
    }

    /// Parses config text; `vars` are the environment variables to apply. Errors name the key
    /// (`state.max_keys`), and the file position or the environment variable it came from.
    pub fn from_yaml(
        text: &str,
        origin: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let syntax = |e: serde_saphyr::Error| ConfigError::Invalid {
            origin: format!("{origin}{}", location(&e)),
            message: first_line(&e.to_string()),
        };
        let mut tree: serde_json::Value = serde_saphyr::from_str(text).map_err(syntax)?;
        if tree.is_null() {
            tree = serde_json::Value::Object(Default::default());
        }
        let overrides: Vec<(String, String)> = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with("CORDON_") && k.contains("__"))
            .collect();
        let mut from_env: Vec<(String, String)> = Vec::new();
        for (var, value) in &overrides {
            let mut path: Vec<String> = var["CORDON_".len()..]
                .split("__")
                .map(|s| s.to_ascii_lowercase())
                .collect();
            // librdkafka property names use dots, which environment names cannot hold:
            // CORDON_SOURCE__PROPERTIES__SASL_PASSWORD sets `sasl.password`.
            if path.len() == 3 && path[1] == "properties" {
                path[2] = path[2].replace('_', ".");
            }
            check_env_key(var, &path)?;
            // The value is read as a YAML scalar (numbers stay numbers), except where the key
            // takes text.
            let parsed: serde_json::Value = serde_saphyr::from_str(value)
                .unwrap_or_else(|_| serde_json::Value::String(value.clone()));
            let parsed = match parsed {
                serde_json::Value::Null => serde_json::Value::String(String::new()),
                serde_json::Value::Bool(_) | serde_json::Value::Number(_)
                    if path.len() == 3 || path.last().is_some_and(|k| k == "brokers") =>
                {
                    serde_json::Value::String(value.clone())
                }
                v => v,
            };
            set_path(&mut tree, &path, parsed).map_err(|message| ConfigError::Invalid {
                origin: format!("environment variable {var}"),
                message,
            })?;
            from_env.push((path.join("."), var.clone()));
        }
        let config: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
            let key = e.path().to_string();
            let message = e.inner().to_string();
            let message = if key.is_empty() || key == "." {
                message
            } else {
                format!("config key `{key}`: {message}")
            };
            // Name where the bad value came from: an environment variable, or the file (with
            // the position the YAML parser reports for the same error).
            let origin = match from_env
                .iter()
                .find(|(k, _)| k == &key || key.starts_with(&format!("{k}.")))
            {
                Some((_, var)) => format!("environment variable {var}"),
                None => match serde_saphyr::from_str::<Config>(text) {
                    Err(e) => format!("{origin}{}", location(&e)),
                    Ok(_) => origin.to_owned(),
                },
            };
            ConfigError::Invalid { origin, message }
        })?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let value = |key: &str, message: String| {
            Err(ConfigError::Value {
                key: key.into(),
                message,
            })
        };
        if self.source.brokers.trim().is_empty() {
            return value(
                "source.brokers",
                "must list at least one broker (host:port)".into(),
            );
        }
        for (key, topic) in [
            ("source.topic", &self.source.topic),
            ("sink.topic", &self.sink.topic),
            ("dead_letter.topic", &self.dead_letter.topic),
        ] {
            if topic.is_empty() {
                return value(key, "must not be empty".into());
            }
        }
        if self.sink.topic == self.source.topic || self.dead_letter.topic == self.source.topic {
            return value(
                "sink.topic",
                "alerts and dead letters cannot go to the input topic".into(),
            );
        }
        if self.source.group_id.is_empty() {
            return value("source.group_id", "must not be empty".into());
        }
        for (section, props) in [
            ("source.properties", &self.source.properties),
            ("sink.properties", &self.sink.properties),
        ] {
            for (k, why) in MANAGED_PROPERTIES {
                if props.contains_key(*k) {
                    return value(&format!("{section}.{k}"), format!("cannot be set: {why}"));
                }
            }
        }
        if self.source.max_message_bytes == 0 {
            return value("source.max_message_bytes", "must be positive".into());
        }
        if self.source.max_batch_messages == 0 {
            return value("source.max_batch_messages", "must be positive".into());
        }
        if self.rules.paths.is_empty() {
            return value(
                "rules.paths",
                "must name at least one file or directory".into(),
            );
        }
        if self.state.max_keys == 0 {
            return value("state.max_keys", "must be positive".into());
        }
        if self.state.checkpoint_interval.is_zero() {
            return value(
                "state.checkpoint_interval",
                "must be longer than zero".into(),
            );
        }
        if self.state.object_store_url.is_none() && !self.state.object_store_options.is_empty() {
            return value(
                "state.object_store_options",
                "needs state.object_store_url".into(),
            );
        }
        if let Some(topic) = &self.repartition.topic {
            if topic.is_empty() {
                return value("repartition.topic", "must not be empty when set".into());
            }
            for (key, other) in [
                ("source.topic", &self.source.topic),
                ("sink.topic", &self.sink.topic),
                ("dead_letter.topic", &self.dead_letter.topic),
            ] {
                if topic == other {
                    return value(
                        "repartition.topic",
                        format!("must differ from {key} (`{other}`)"),
                    );
                }
            }
        }
        if self.repartition.input_entity.trim().is_empty() {
            return value("repartition.input_entity", "must not be empty".into());
        }
        if self.repartition.max_frame_bytes == 0 {
            return value("repartition.max_frame_bytes", "must be positive".into());
        }
        let producer_max = self.producer_message_max()?;
        if self.repartition.topic.is_some() && self.repartition.max_frame_bytes > producer_max {
            return value(
                "repartition.max_frame_bytes",
                format!(
                    "must be at most the producer's message.max.bytes ({producer_max}; raise that in sink.properties first)"
                ),
            );
        }
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            return value(
                "http.listen",
                format!("`{}` is not an address like 0.0.0.0:9464", self.http.listen),
            );
        }
        Ok(())
    }
}

/// Every key of Config v1, by section (`properties` holds librdkafka properties,
/// `object_store_options` the object store's options).
pub const KEYS: &[(&str, &[&str])] = &[
    (
        "source",
        &[
            "brokers",
            "topic",
            "group_id",
            "properties",
            "max_message_bytes",
            "max_batch_messages",
            "max_batch_wait",
        ],
    ),
    ("sink", &["topic", "format", "properties"]),
    ("dead_letter", &["topic"]),
    ("rules", &["paths"]),
    (
        "state",
        &[
            "dir",
            "checkpoint_interval",
            "max_keys",
            "object_store_url",
            "object_store_options",
        ],
    ),
    (
        "time",
        &["allowed_lateness", "max_future_skew", "future_events"],
    ),
    ("http", &["listen"]),
    ("repartition", &["topic", "input_entity", "max_frame_bytes"]),
];

/// Checks that an override variable names a real key, suggesting the closest one if not.
fn check_env_key(var: &str, path: &[String]) -> Result<(), ConfigError> {
    let all: Vec<String> = KEYS
        .iter()
        .flat_map(|(s, keys)| keys.iter().map(move |k| format!("{s}.{k}")))
        .collect();
    let dotted = path.join(".");
    let ok = match path {
        [section, key] => KEYS
            .iter()
            .any(|(s, keys)| s == section && keys.contains(&key.as_str())),
        [section, props, _] => {
            (props == "properties" && (section == "source" || section == "sink"))
                || (section == "state" && props == "object_store_options")
        }
        _ => false,
    };
    if ok {
        return Ok(());
    }
    let close = all
        .iter()
        .map(|k| (strsim::levenshtein(k, &dotted), k))
        .filter(|(d, _)| *d <= 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| {
            format!(
                " (did you mean CORDON_{}?)",
                k.replace('.', "__").to_ascii_uppercase()
            )
        })
        .unwrap_or_default();
    Err(ConfigError::Invalid {
        origin: format!("environment variable {var}"),
        message: format!("unknown config key `{dotted}`{close}"),
    })
}

fn location(e: &serde_saphyr::Error) -> String {
    e.location()
        .map(|l| format!(":{}:{}", l.line(), l.column()))
        .unwrap_or_default()
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_owned()
}

fn set_path(
    tree: &mut serde_json::Value,
    path: &[String],
    value: serde_json::Value,
) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("empty key".into());
    };
    let mut node = tree;
    for p in parents {
        let serde_json::Value::Object(map) = node else {
            return Err(format!("`{p}` is not a section"));
        };
        node = map
            .entry(p.clone())
            .or_insert_with(|| serde_json::Value::Object(Default::default()));
    }
    let serde_json::Value::Object(map) = node else {
        return Err(format!("`{last}` is not in a section"));
    };
    map.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(text, "cordon.yaml", Vec::new())
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse("source:\n  brokers: 127.0.0.1:9092\n").expect("valid");
        assert_eq!(c.source.topic, "requests");
        assert_eq!(c.sink.topic, "cordon-alerts");
        assert_eq!(c.dead_letter.topic, "cordon-dlq");
        assert_eq!(c.state.checkpoint_interval, Duration::from_secs(30));
        assert_eq!(c.time.allowed_lateness, Duration::from_secs(300));
        assert_eq!(c.state.max_keys, 10_000_000);
        assert_eq!(c.http.listen, "0.0.0.0:9464");
    }

    #[test]
    fn object_storage_keys_and_their_overrides() {
        let text = "source: {brokers: b:1}\nstate:\n  object_store_url: s3://bucket/cordon\n  \
object_store_options: {aws_region: eu-west-1, aws_allow_http: true}\n";
        let vars = vec![(
            "CORDON_STATE__OBJECT_STORE_OPTIONS__AWS_ENDPOINT".to_string(),
            "http://127.0.0.1:9000".to_string(),
        )];
        let c = Config::from_yaml(text, "f", vars).expect("valid");
        assert_eq!(
            c.state.object_store_url.as_deref(),
            Some("s3://bucket/cordon")
        );
        assert_eq!(
            c.state.object_store_options,
            BTreeMap::from([
                ("aws_allow_http".to_owned(), "true".to_owned()),
                (
                    "aws_endpoint".to_owned(),
                    "http://127.0.0.1:9000".to_owned()
                ),
                ("aws_region".to_owned(), "eu-west-1".to_owned()),
            ]),
            "option names keep their underscores; values are text"
        );
        let msg =
            parse("source: {brokers: b:1}\nstate:\n  object_store_options: {aws_region: x}\n")
                .expect_err("options without a store")
                .to_string();
        assert!(msg.contains("state.object_store_options"), "{msg}");
    }

    #[test]
    fn the_repartition_stage_is_off_by_default_and_its_topic_must_be_its_own() {
        let c = parse("source: {brokers: b:1}\n").expect("valid");
        assert_eq!(c.repartition.topic, None);
        assert_eq!(c.repartition.input_entity, "account_id");
        let c = parse("source: {brokers: b:1, group_id: g}\nrepartition: {topic: r, input_entity: api_key_id}\n")
            .expect("valid");
        assert_eq!(c.repartition.topic.as_deref(), Some("r"));
        assert_eq!(c.repartition.input_entity, "api_key_id");
        assert_eq!(c.repartition_group(), "g.repartition");
        for (text, other) in [
            ("repartition: {topic: requests}", "source.topic"),
            ("repartition: {topic: cordon-alerts}", "sink.topic"),
            ("repartition: {topic: cordon-dlq}", "dead_letter.topic"),
        ] {
            let msg = parse(&format!("source: {{brokers: b:1}}\n{text}\n"))
                .expect_err("a topic of its own")
                .to_string();
            assert!(
                msg.contains("repartition.topic") && msg.contains(other),
                "{msg}"
            );
        }
        let msg = parse("source: {brokers: b:1}\nrepartition: {topic: r, input_entity: ' '}\n")
            .expect_err("an entity")
            .to_string();
        assert!(msg.contains("repartition.input_entity"), "{msg}");
    }

    #[test]
    fn a_frame_must_fit_the_producers_largest_message() {
        let c = parse("source: {brokers: b:1}\nrepartition: {topic: r}\n").expect("valid");
        assert_eq!(c.repartition.max_frame_bytes, 64 * 1024);
        for (text, key) in [
            (
                "repartition: {topic: r, max_frame_bytes: 0}",
                "repartition.max_frame_bytes",
            ),
            (
                "repartition: {topic: r, max_frame_bytes: 1000001}",
                "repartition.max_frame_bytes",
            ),
            (
                "repartition: {topic: r, max_frame_bytes: 3000000}\nsink: {properties: {message.max.bytes: '2000000'}}",
                "repartition.max_frame_bytes",
            ),
            (
                "repartition: {topic: r}\nsink: {properties: {message.max.bytes: lots}}",
                "sink.properties.message.max.bytes",
            ),
        ] {
            let msg = parse(&format!("source: {{brokers: b:1}}\n{text}\n"))
                .expect_err(text)
                .to_string();
            assert!(msg.contains(key), "{text}: {msg}");
        }
        // The sink's property, or the source's, which the producer also takes, raises it.
        let frame = "repartition: {topic: r, max_frame_bytes: 1500000}";
        for text in [
            format!(
                "source: {{brokers: b:1}}\nsink: {{properties: {{message.max.bytes: '2000000'}}}}\n{frame}\n"
            ),
            format!(
                "source: {{brokers: b:1, properties: {{message.max.bytes: '2000000'}}}}\n{frame}\n"
            ),
        ] {
            let c = parse(&text).expect(&text);
            assert_eq!(c.repartition.max_frame_bytes, 1_500_000);
        }
    }

    #[test]
    fn every_documented_key_is_accepted() {
        let text = "source:\n  brokers: b:9092\n  topic: t\n  group_id: g\n  properties: {security.protocol: SASL_SSL}\n\
sink:\n  topic: a\n  format: ocsf\ndead_letter:\n  topic: d\nrules:\n  paths: [x]\nstate:\n  dir: /tmp/s\n  \
checkpoint_interval: 10s\n  max_keys: 5\ntime:\n  allowed_lateness: 1m\n  max_future_skew: 30s\n  future_events: clamp\nhttp:\n  listen: 127.0.0.1:1\n";
        let c = parse(text).expect("valid");
        assert_eq!(c.sink.format, SinkFormat::Ocsf);
        assert_eq!(c.source.properties["security.protocol"], "SASL_SSL");
        assert_eq!(c.time.max_future_skew, Duration::from_secs(30));
        assert_eq!(c.time.future_events, FutureEvents::Clamp);
        let c = parse("source:\n  brokers: b:1\n  properties: {linger.ms: 5, enable.ssl.certificate.verification: false}\n")
            .expect("numbers and booleans");
        assert_eq!(c.source.properties["linger.ms"], "5");
        assert_eq!(
            c.source.properties["enable.ssl.certificate.verification"],
            "false"
        );
    }

    /// `KEYS` (used for environment overrides and by the chart's tests) restates the fields of
    /// the config structs; serde's own list of expected fields keeps the two in step.
    #[test]
    fn keys_list_every_field_of_every_section() {
        for (section, keys) in KEYS {
            let text = if *section == "source" {
                "source: {brokers: b:1, not_a_key: 1}\n".to_owned()
            } else {
                format!("source: {{brokers: b:1}}\n{section}:\n  not_a_key: 1\n")
            };
            let msg = parse(&text).expect_err("unknown key").to_string();
            // serde writes `a`, `a` or `b`, or one of `a`, `b`, `c`.
            let list = msg.split("expected ").nth(1).unwrap_or_default();
            let list = list.strip_prefix("one of ").unwrap_or(list);
            let expected: Vec<&str> = list
                .split(", ")
                .flat_map(|k| k.split(" or "))
                .map(|k| k.trim().trim_matches('`'))
                .collect();
            assert_eq!(&expected, keys, "section {section}: {msg}");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("source:\n  brokers: b:1\n  topik: x\n").expect_err("unknown key");
        let msg = err.to_string();
        assert!(
            msg.contains("config key `source.topik`: unknown field `topik`"),
            "{msg}"
        );
        assert!(msg.starts_with("cordon.yaml:3:"), "{msg}");
    }

    #[test]
    fn missing_brokers_is_named() {
        let msg = parse("sink:\n  topic: a\n")
            .expect_err("no source")
            .to_string();
        assert!(msg.contains("source"), "{msg}");
    }

    #[test]
    fn bad_duration_is_named() {
        let msg = parse("source: {brokers: b:1}\ntime:\n  allowed_lateness: soon\n")
            .expect_err("bad")
            .to_string();
        assert!(
            msg.contains("soon") && msg.contains("cordon.yaml:3"),
            "{msg}"
        );
    }

    #[test]
    fn managed_property_is_refused() {
        let msg = parse("source:\n  brokers: b:1\n  properties: {enable.auto.commit: 'true'}\n")
            .expect_err("managed")
            .to_string();
        assert!(
            msg.contains("source.properties.enable.auto.commit"),
            "{msg}"
        );
    }

    #[test]
    fn environment_overrides_apply_and_are_checked() {
        let vars = vec![("CORDON_SOURCE__BROKERS".to_string(), "k:9093".to_string())];
        let c = Config::from_yaml("source: {brokers: b:1}\n", "f", vars).expect("valid");
        assert_eq!(c.source.brokers, "k:9093");
        let vars = vec![("CORDON_STATE__MAX_KEYS".to_string(), "12".to_string())];
        let c = Config::from_yaml("source: {brokers: b:1}\n", "f", vars).expect("valid");
        assert_eq!(c.state.max_keys, 12);
        let vars = vec![("CORDON_SOURCE__BROKRS".to_string(), "x".to_string())];
        let msg = Config::from_yaml("source: {brokers: b:1}\n", "f", vars)
            .expect_err("bad")
            .to_string();
        assert!(
            msg.contains("environment variable CORDON_SOURCE__BROKRS"),
            "{msg}"
        );
        assert!(msg.contains("did you mean CORDON_SOURCE__BROKERS"), "{msg}");
        let vars = vec![("CORDON_STATE__MAX_KEYS".to_string(), "lots".to_string())];
        let msg = Config::from_yaml("source: {brokers: b:1}\n", "f", vars)
            .expect_err("bad")
            .to_string();
        assert!(
            msg.starts_with("environment variable CORDON_STATE__MAX_KEYS"),
            "{msg}"
        );
        let vars = vec![(
            "CORDON_SOURCE__PROPERTIES__SASL_PASSWORD".to_string(),
            "s3cret".to_string(),
        )];
        let c = Config::from_yaml("source: {brokers: b:1}\n", "f", vars).expect("valid");
        assert_eq!(c.source.properties["sasl.password"], "s3cret");
    }
}
