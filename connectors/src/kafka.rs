//! Kafka source and sink on rdkafka.
//!
//! Both are synchronous (`BaseConsumer`, `BaseProducer`): the engine runs its loop on its own
//! thread, so no rdkafka call ever blocks an async runtime.
//!
//! The source never commits by itself (`enable.auto.commit=false`,
//! `enable.auto.offset.store=false`): the engine commits exactly the offsets whose results the
//! sink has delivered. The sink is idempotent (`enable.idempotence=true`, `acks=all`), and
//! [`KafkaSink::flush`] fails if any message since the previous flush was not delivered, so the
//! engine never commits past a lost alert.

use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A connector failure.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// A client could not be created from its configuration (a bad librdkafka property).
    #[error("invalid Kafka client configuration: {0}")]
    Config(#[source] KafkaError),
    /// A topic the engine needs does not exist.
    #[error(
        "topic `{topic}` does not exist on {brokers} (create it first; Cordon does not create topics)"
    )]
    MissingTopic {
        /// The topic.
        topic: String,
        /// The brokers asked.
        brokers: String,
    },
    /// The brokers did not answer in time.
    #[error("cannot reach Kafka at {brokers}: {source}")]
    Unreachable {
        /// The brokers.
        brokers: String,
        /// The error.
        #[source]
        source: KafkaError,
    },
    /// Messages were not delivered.
    #[error("{failed} message(s) to Kafka were not delivered; last error: {last}")]
    Delivery {
        /// How many.
        failed: u64,
        /// The last error.
        last: String,
    },
    /// Any other Kafka error.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
}

/// Settings shared by every client: brokers and librdkafka passthrough properties.
#[derive(Debug, Clone, Default)]
pub struct ClientSettings {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Extra librdkafka properties, applied last (after Cordon's defaults).
    pub properties: BTreeMap<String, String>,
}

impl ClientSettings {
    fn config(&self, defaults: &[(&str, &str)], forced: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        for (k, v) in forced {
            c.set(*k, *v);
        }
        c.set_log_level(RDKafkaLogLevel::Warning);
        c
    }
}

/// One consumed message, owned.
#[derive(Debug, Clone)]
pub struct SourceRecord {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value (empty for a tombstone).
    pub payload: Vec<u8>,
}

/// Records partition changes from rebalances, for the engine to act on between batches.
#[derive(Default)]
pub struct SourceContext {
    revoked: Mutex<Vec<i32>>,
    commit_failures: AtomicU64,
}

impl ClientContext for SourceContext {}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(partitions = ?parts, "partitions revoked");
            if let Ok(mut r) = self.revoked.lock() {
                r.extend(parts);
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(partitions = ?parts, "partitions assigned");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            self.commit_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "offset commit failed; it is retried with the next commit");
        }
    }
}

/// Logs a repeating error at most once per interval, with the number of repeats in between.
#[derive(Debug)]
struct RateLimitedLog {
    what: &'static str,
    interval: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimitedLog {
    fn new(what: &'static str, interval: Duration) -> Self {
        Self {
            what,
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    fn report(&self, e: &KafkaError) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let (last, repeats) = &mut *state;
        if last.is_some_and(|t| t.elapsed() < self.interval) {
            *repeats += 1;
            return;
        }
        tracing::warn!(error = %e, repeats_since_last_log = *repeats, "{}", self.what);
        *last = Some(Instant::now());
        *repeats = 0;
    }
}

/// The consumer-group source.
pub struct KafkaSource {
    consumer: BaseConsumer<SourceContext>,
    topic: String,
    brokers: String,
    errors: RateLimitedLog,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("topic", &self.topic)
            .finish()
    }
}

impl KafkaSource {
    /// Creates the consumer (it joins the group on the first poll after [`subscribe`](Self::subscribe)).
    pub fn new(
        settings: &ClientSettings,
        group_id: &str,
        topic: &str,
    ) -> Result<Self, ConnectorError> {
        let consumer: BaseConsumer<SourceContext> = settings
            .config(
                &[
                    ("auto.offset.reset", "earliest"),
                    ("session.timeout.ms", "30000"),
                ],
                &[
                    ("group.id", group_id),
                    ("enable.auto.commit", "false"),
                    ("enable.auto.offset.store", "false"),
                    ("enable.partition.eof", "false"),
                ],
            )
            .create_with_context(SourceContext::default())
            .map_err(ConnectorError::Config)?;
        Ok(Self {
            consumer,
            topic: topic.to_owned(),
            brokers: settings.brokers.clone(),
            errors: RateLimitedLog::new(
                "consumer error (librdkafka retries)",
                Duration::from_secs(10),
            ),
        })
    }

    /// Checks that `topics` exist, waiting up to `timeout` for the brokers.
    pub fn check_topics(&self, topics: &[&str], timeout: Duration) -> Result<(), ConnectorError> {
        check_topics(self.consumer.client(), &self.brokers, topics, timeout)
    }

    /// Subscribes to the source topic.
    pub fn subscribe(&self) -> Result<(), ConnectorError> {
        self.consumer.subscribe(&[&self.topic])?;
        Ok(())
    }

    /// Polls up to `max` messages, waiting at most `wait` in all. Transient consumer errors are
    /// logged and skipped; librdkafka retries them.
    pub fn poll_batch(&self, max: usize, wait: Duration, out: &mut Vec<SourceRecord>) {
        let deadline = Instant::now() + wait;
        while out.len() < max {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.consumer.poll(left) {
                Some(Ok(m)) => out.push(SourceRecord {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                }),
                Some(Err(e)) => {
                    self.errors.report(&e);
                    if left.is_zero() {
                        break;
                    }
                }
                None => break,
            }
        }
    }

    /// Partitions revoked since the last call.
    pub fn take_revoked(&self) -> Vec<i32> {
        self.consumer
            .context()
            .revoked
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default()
    }

    /// Commits `next offset` per partition (the offset of the next message to read).
    pub fn commit(&self, next: &BTreeMap<i32, i64>, sync: bool) -> Result<(), ConnectorError> {
        if next.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in next {
            tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*o))?;
        }
        let mode = if sync {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        self.consumer.commit(&tpl, mode)?;
        Ok(())
    }

    /// Offset commits that failed so far.
    pub fn commit_failures(&self) -> u64 {
        self.consumer
            .context()
            .commit_failures
            .load(Ordering::Relaxed)
    }
}

fn check_topics<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    brokers: &str,
    topics: &[&str],
    timeout: Duration,
) -> Result<(), ConnectorError> {
    for topic in topics {
        let md = client
            .fetch_metadata(Some(topic), timeout)
            .map_err(|source| ConnectorError::Unreachable {
                brokers: brokers.to_owned(),
                source,
            })?;
        let ok = md
            .topics()
            .iter()
            .any(|t| t.name() == *topic && t.error().is_none() && !t.partitions().is_empty());
        if !ok {
            return Err(ConnectorError::MissingTopic {
                topic: (*topic).to_owned(),
                brokers: brokers.to_owned(),
            });
        }
    }
    Ok(())
}

/// Counts delivery failures for [`KafkaSink::flush`].
#[derive(Default)]
pub struct SinkContext {
    failed: AtomicU64,
    last_error: Mutex<String>,
}

impl ClientContext for SinkContext {}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _opaque: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut last) = self.last_error.lock() {
                *last = e.to_string();
            }
        }
    }
}

/// The idempotent producer used for alerts and dead letters.
pub struct KafkaSink {
    producer: BaseProducer<SinkContext>,
    brokers: String,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("brokers", &self.brokers)
            .finish()
    }
}

impl KafkaSink {
    /// Creates the producer.
    pub fn new(settings: &ClientSettings) -> Result<Self, ConnectorError> {
        let producer: BaseProducer<SinkContext> = settings
            .config(
                &[
                    ("linger.ms", "5"),
                    ("compression.type", "lz4"),
                    ("message.timeout.ms", "300000"),
                ],
                &[("enable.idempotence", "true"), ("acks", "all")],
            )
            .create_with_context(SinkContext::default())
            .map_err(ConnectorError::Config)?;
        Ok(Self {
            producer,
            brokers: settings.brokers.clone(),
        })
    }

    /// Checks that `topics` exist.
    pub fn check_topics(&self, topics: &[&str], timeout: Duration) -> Result<(), ConnectorError> {
        check_topics(self.producer.client(), &self.brokers, topics, timeout)
    }

    /// Queues one message; waits while librdkafka's queue is full.
    pub fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Result<(), ConnectorError> {
        let mut h = OwnedHeaders::new_with_capacity(headers.len());
        for (k, v) in headers {
            h = h.insert(Header {
                key: k,
                value: Some(*v),
            });
        }
        let mut record: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(topic).payload(payload).headers(h);
        if let Some(k) = key {
            record = record.key(k);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }

    /// Waits until every queued message is delivered (or `timeout` passes); fails if any message
    /// since the previous flush was not delivered.
    pub fn flush(&self, timeout: Duration) -> Result<(), ConnectorError> {
        self.producer.flush(timeout)?;
        let failed = self.producer.context().failed.swap(0, Ordering::Relaxed);
        if failed > 0 {
            let last = self
                .producer
                .context()
                .last_error
                .lock()
                .map(|l| l.clone())
                .unwrap_or_default();
            return Err(ConnectorError::Delivery { failed, last });
        }
        Ok(())
    }
}

/// Reads the headers of a message into owned pairs (for tools and tests).
pub fn headers_of<M: Message>(m: &M) -> Vec<(String, Vec<u8>)> {
    m.headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}
