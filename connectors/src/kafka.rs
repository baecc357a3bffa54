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
//!
//! Consumer lag comes from librdkafka's statistics (`statistics.interval.ms`, 5 s by default
//! here), not from watermark queries: the high watermark in the statistics is the one the
//! broker puts in every fetch response, which costs no extra request and never blocks the
//! poll loop (the statistics are delivered inside [`KafkaSource::poll_batch`]). It is also the
//! correct one on tansu 0.6, whose `ListOffsets` answer for the latest offset is wrong with
//! memory storage (the base offset of the newest batch plus one).

use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
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
    /// Reading a topic to its end took too long.
    #[error(
        "reading `{topic}` to its end did not finish within {waited:?} (is Kafka at {brokers} reachable?)"
    )]
    ReadTimeout {
        /// The topic.
        topic: String,
        /// The brokers.
        brokers: String,
        /// How long it tried.
        waited: Duration,
    },
    /// Any other Kafka error.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
}

/// Called when partitions are assigned, before the consumer fetches from them: returns the
/// offset to start each partition at (partitions it leaves out start at the group's committed
/// offset). The engine uses it to resume at its checkpoints.
pub type AssignHook = Box<dyn Fn(&[i32]) -> BTreeMap<i32, i64> + Send + Sync>;

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
        // librdkafka's own debug contexts (`debug: cgrp,...`) are logged when asked for.
        c.set_log_level(if self.properties.contains_key("debug") {
            RDKafkaLogLevel::Debug
        } else {
            RDKafkaLogLevel::Warning
        });
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
    /// Headers, when the source reads them ([`KafkaSource::read_headers`]); empty otherwise.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Records partition changes from rebalances, for the engine to act on between batches, and
/// the consumer lag from librdkafka's statistics.
pub struct SourceContext {
    topic: String,
    on_assign: Mutex<Option<AssignHook>>,
    newly_assigned: Mutex<Vec<i32>>,
    revoked: Mutex<Vec<i32>>,
    assigned: Mutex<BTreeSet<i32>>,
    lag: Mutex<BTreeMap<i32, i64>>,
    commit_failures: AtomicU64,
    stats_errors: RateLimitedLog,
    client_errors: RateLimitedLog,
}

impl SourceContext {
    fn new(topic: &str) -> Self {
        Self {
            topic: topic.to_owned(),
            on_assign: Mutex::default(),
            newly_assigned: Mutex::default(),
            revoked: Mutex::default(),
            assigned: Mutex::default(),
            lag: Mutex::default(),
            commit_failures: AtomicU64::new(0),
            stats_errors: RateLimitedLog::new(
                "cannot read librdkafka statistics; consumer lag is not updated",
                Duration::from_secs(300),
            ),
            client_errors: client_errors_log(),
        }
    }
}

/// The part of librdkafka's statistics JSON that lag needs (see `STATISTICS.md` in
/// librdkafka). Partition ids are object keys, as strings.
#[derive(Deserialize)]
struct Statistics {
    #[serde(default)]
    topics: HashMap<String, TopicStatistics>,
}

#[derive(Deserialize)]
struct TopicStatistics {
    #[serde(default)]
    partitions: HashMap<String, PartitionStatistics>,
}

#[derive(Deserialize)]
struct PartitionStatistics {
    partition: i32,
    /// High watermark from the latest fetch response; -1 before the first.
    #[serde(default = "unknown_offset")]
    hi_offset: i64,
    /// The group's committed offset as this client last committed or fetched it; negative
    /// (`-1001`, invalid) when there is none.
    #[serde(default = "unknown_offset")]
    committed_offset: i64,
    /// Offset after the last message handed to the application; negative before the first.
    #[serde(default = "unknown_offset")]
    app_offset: i64,
}

fn unknown_offset() -> i64 {
    -1
}

impl PartitionStatistics {
    /// Messages after the group's position: high watermark minus the committed offset (what
    /// a restart would read again), or minus the offset after the last message handed to the
    /// engine while nothing is committed yet. `None` while unknown (no fetch response yet, or
    /// neither a commit nor a message so far on a partition that is not empty).
    ///
    /// This is librdkafka's own `consumer_lag` except that it uses the high watermark where
    /// librdkafka uses the last stable offset under `isolation.level=read_committed` (its
    /// default, and Cordon does not read transactional input), and falls back to the
    /// application's position before the first commit.
    fn lag(&self) -> Option<i64> {
        if self.hi_offset < 0 {
            return None;
        }
        let position = if self.committed_offset >= 0 {
            self.committed_offset
        } else if self.app_offset >= 0 {
            self.app_offset
        } else if self.hi_offset == 0 {
            0
        } else {
            return None;
        };
        Some((self.hi_offset - position).max(0))
    }
}

impl ClientContext for SourceContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.client_errors
            .report(&format_args!("{error}; {reason}"));
    }

    /// Called from inside `poll` every `statistics.interval.ms`: keeps the lag of the
    /// assigned partitions of the source topic.
    fn stats_raw(&self, statistics: &[u8]) {
        let stats: Statistics = match serde_json::from_slice(statistics) {
            Ok(s) => s,
            Err(e) => {
                self.stats_errors.report(&e);
                return;
            }
        };
        let assigned = self.assigned.lock().map(|a| a.clone()).unwrap_or_default();
        let lag: BTreeMap<i32, i64> = stats
            .topics
            .get(&self.topic)
            .map(|t| {
                t.partitions
                    .values()
                    .filter(|p| assigned.contains(&p.partition))
                    .filter_map(|p| Some((p.partition, p.lag()?)))
                    .collect()
            })
            .unwrap_or_default();
        if let Ok(mut l) = self.lag.lock() {
            *l = lag;
        }
    }
}

impl ConsumerContext for SourceContext {
    /// As rdkafka's default, except that an assignment first asks the [`AssignHook`] where to
    /// start each partition and sets those offsets in the assignment itself, so the consumer
    /// never fetches from the committed offset first.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let parts: Vec<i32> = tpl
                    .elements_for_topic(&self.topic)
                    .iter()
                    .map(|e| e.partition())
                    .collect();
                if let Ok(hook) = self.on_assign.lock()
                    && let Some(hook) = hook.as_ref()
                {
                    for (p, o) in hook(&parts) {
                        if let Err(e) = tpl.set_partition_offset(&self.topic, p, Offset::Offset(o))
                        {
                            tracing::warn!(partition = p, error = %e, "cannot set the start offset");
                        }
                    }
                }
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = result {
                    tracing::error!(error = %e, "assigning partitions failed");
                }
                if let Ok(mut n) = self.newly_assigned.lock() {
                    n.extend(&parts);
                }
                self.post_rebalance(consumer, &Rebalance::Assign(tpl));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.pre_rebalance(consumer, &Rebalance::Revoke(tpl));
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = result {
                    tracing::error!(error = %e, "unassigning partitions failed");
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance error; unassigning");
                let _ = consumer.unassign();
            }
        }
    }

    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(partitions = ?parts, "partitions revoked");
            if let Ok(mut a) = self.assigned.lock() {
                for p in &parts {
                    a.remove(p);
                }
            }
            if let Ok(mut l) = self.lag.lock() {
                for p in &parts {
                    l.remove(p);
                }
            }
            if let Ok(mut r) = self.revoked.lock() {
                r.extend(parts);
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(partitions = ?parts, "partitions assigned");
            // Added to, not replaced: under the cooperative protocol an assignment lists only
            // the partitions it adds.
            if let Ok(mut a) = self.assigned.lock() {
                a.extend(parts);
            }
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

    fn report(&self, e: &dyn std::fmt::Display) {
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
    read_headers: bool,
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
                    // librdkafka's 500 ms lets a fetch wait that long for data: up to half a
                    // second of alert latency, and some brokers (tansu) serve a consumer far
                    // slower with it. 50 ms costs a few idle fetches a second.
                    ("fetch.wait.max.ms", "50"),
                    // When its queue is over `queued.min.messages`, librdkafka puts off the
                    // next fetch by this much, 1 s by default: a loop that reads slower than
                    // the broker serves then empties the queue and waits idle for the rest of
                    // the second (the e2e harness showed the loop, broker and fetcher all idle
                    // in those gaps). 10 ms keeps the queue topped up.
                    ("fetch.queue.backoff.ms", "10"),
                    // Consumer lag, see the module doc; `0` turns the lag metric off.
                    ("statistics.interval.ms", "5000"),
                ],
                &[
                    ("group.id", group_id),
                    ("enable.auto.commit", "false"),
                    ("enable.auto.offset.store", "false"),
                    ("enable.partition.eof", "false"),
                ],
            )
            .create_with_context(SourceContext::new(topic))
            .map_err(ConnectorError::Config)?;
        Ok(Self {
            consumer,
            topic: topic.to_owned(),
            brokers: settings.brokers.clone(),
            errors: RateLimitedLog::new(
                "consumer error (librdkafka retries)",
                Duration::from_secs(10),
            ),
            read_headers: false,
        })
    }

    /// Makes [`poll_batch`](Self::poll_batch) copy each message's headers into its record
    /// ([`SourceRecord::headers`]). Off by default: most sources need none, and the copy costs.
    pub fn read_headers(mut self, read: bool) -> Self {
        self.read_headers = read;
        self
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

    /// Polls up to `max` messages, or until their payloads reach `max_bytes`, waiting at most
    /// `wait` in all. Transient consumer errors are logged and skipped; librdkafka retries
    /// them.
    pub fn poll_batch(
        &self,
        max: usize,
        max_bytes: usize,
        wait: Duration,
        out: &mut Vec<SourceRecord>,
    ) {
        let deadline = Instant::now() + wait;
        let mut bytes = 0usize;
        while out.len() < max && bytes < max_bytes {
            // Messages already fetched are taken without a timeout, and so without reading the
            // clock: one clock read per message (here and in librdkafka's timed poll) was a
            // tenth of the input stage's time with the repartition stage (perf, model-167
            // host). The clock is read when the queue runs dry.
            let next = match self.consumer.poll(Duration::ZERO) {
                None => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    self.consumer.poll(left)
                }
                some => some,
            };
            match next {
                Some(Ok(m)) => {
                    let payload = m.payload().map(<[u8]>::to_vec).unwrap_or_default();
                    bytes = bytes.saturating_add(payload.len());
                    out.push(SourceRecord {
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        payload,
                        headers: if self.read_headers {
                            headers_of(&m)
                        } else {
                            Vec::new()
                        },
                    });
                }
                Some(Err(e)) => {
                    self.errors.report(&e);
                    if Instant::now() >= deadline {
                        break;
                    }
                }
                None => break,
            }
        }
    }

    /// Sets the hook that chooses where newly assigned partitions start (call before
    /// [`subscribe`](Self::subscribe)).
    pub fn on_assign(&self, hook: AssignHook) {
        if let Ok(mut h) = self.consumer.context().on_assign.lock() {
            *h = Some(hook);
        }
    }

    /// Partitions assigned since the last call (after the [`AssignHook`] ran for them).
    pub fn take_assigned(&self) -> Vec<i32> {
        self.consumer
            .context()
            .newly_assigned
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default()
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

    /// The partitions of the source topic assigned to this consumer now (sorted).
    pub fn assigned_partitions(&self) -> Vec<i32> {
        self.consumer
            .context()
            .assigned
            .lock()
            .map(|a| a.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Consumer lag in messages per assigned partition whose lag is known, as of the latest
    /// librdkafka statistics (every `statistics.interval.ms`, 5 s by default). See the module
    /// doc for where the numbers come from.
    pub fn consumer_lag(&self) -> BTreeMap<i32, i64> {
        self.consumer
            .context()
            .lag
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
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
pub struct SinkContext {
    /// Per topic and partition: the offset after the highest message delivered. By topic first,
    /// so that a delivery finds its entry without allocating the topic's name.
    delivered: Mutex<HashMap<String, HashMap<i32, i64>>>,
    failed: AtomicU64,
    last_error: Mutex<String>,
    client_errors: RateLimitedLog,
}

impl Default for SinkContext {
    fn default() -> Self {
        Self {
            delivered: Mutex::default(),
            failed: AtomicU64::new(0),
            last_error: Mutex::default(),
            client_errors: client_errors_log(),
        }
    }
}

/// librdkafka reports the same client error (e.g. all brokers down) many times a second while
/// it retries; one line per interval, with the number of repeats, is enough.
fn client_errors_log() -> RateLimitedLog {
    RateLimitedLog::new(
        "kafka client error (librdkafka retries)",
        Duration::from_secs(10),
    )
}

impl ClientContext for SinkContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.client_errors
            .report(&format_args!("{error}; {reason}"));
    }

    /// Statistics are for the source's consumer lag; if `statistics.interval.ms` reaches the
    /// producer through shared properties, its statistics are dropped rather than logged.
    fn stats_raw(&self, _statistics: &[u8]) {}
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _opaque: ()) {
        if let Ok(m) = result
            && let Ok(mut d) = self.delivered.lock()
        {
            let topic = m.topic();
            let partitions = match d.get_mut(topic) {
                Some(p) => p,
                None => d.entry(topic.to_owned()).or_default(),
            };
            let end = partitions.entry(m.partition()).or_insert(0);
            *end = (*end).max(m.offset() + 1);
        }
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

    /// The number of partitions of `topic`.
    pub fn partition_count(&self, topic: &str, timeout: Duration) -> Result<u32, ConnectorError> {
        let md = self
            .producer
            .client()
            .fetch_metadata(Some(topic), timeout)
            .map_err(|source| ConnectorError::Unreachable {
                brokers: self.brokers.clone(),
                source,
            })?;
        md.topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .and_then(|t| u32::try_from(t.partitions().len()).ok())
            .filter(|&n| n > 0)
            .ok_or_else(|| ConnectorError::MissingTopic {
                topic: topic.to_owned(),
                brokers: self.brokers.clone(),
            })
    }

    /// Queues one message, to the partition librdkafka's partitioner picks from the key;
    /// waits while librdkafka's queue is full.
    pub fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Result<(), ConnectorError> {
        self.send_record(topic, None, key, payload, headers)
    }

    /// Queues one message to `partition` of `topic`; waits while librdkafka's queue is full.
    pub fn send_to(
        &self,
        topic: &str,
        partition: i32,
        payload: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Result<(), ConnectorError> {
        self.send_record(topic, Some(partition), None, payload, headers)
    }

    fn send_record(
        &self,
        topic: &str,
        partition: Option<i32>,
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
        if let Some(p) = partition {
            record = record.partition(p);
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

    /// Per partition of `topic`, the offset after the highest message this sink delivered
    /// there (a lower bound of the partition's end).
    pub fn delivered_ends(&self, topic: &str) -> BTreeMap<i32, i64> {
        self.producer
            .context()
            .delivered
            .lock()
            .map(|d| {
                d.get(topic)
                    .map(|p| p.iter().map(|(p, o)| (*p, *o)).collect())
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    }

    /// Serves delivery reports that have arrived, without waiting.
    pub fn poll(&self) {
        self.producer.poll(Duration::ZERO);
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

/// The context of [`read_to_end`]'s consumer: the end of a partition is what it waits for, not
/// an error to log; other client errors are logged like the source's.
struct ReaderContext(RateLimitedLog);

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            self.0.report(&format_args!("{error}; {reason}"));
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// A message read back by [`read_to_end`].
#[derive(Debug, Clone)]
pub struct ReadRecord {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Reads every partition of `topic` from `starts[partition]` (from its current end where no
/// start is given) to its end, and returns the messages (without payloads) in (partition,
/// offset) order and each partition's end offset.
///
/// The end is where the consumer reports the end of the partition (`enable.partition.eof`),
/// that is the high watermark of a fetch response, not a ListOffsets answer: tansu 0.6 answers
/// ListOffsets(latest) with the newest batch's base offset plus one, short of the end.
pub fn read_to_end(
    settings: &ClientSettings,
    topic: &str,
    starts: &BTreeMap<i32, i64>,
    timeout: Duration,
) -> Result<(Vec<ReadRecord>, BTreeMap<i32, i64>), ConnectorError> {
    let group = format!("cordon-reader-{}", std::process::id());
    let consumer: BaseConsumer<ReaderContext> = settings
        .config(
            &[("fetch.wait.max.ms", "50")],
            &[
                ("group.id", &group),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("enable.partition.eof", "true"),
                ("auto.offset.reset", "earliest"),
            ],
        )
        .create_with_context(ReaderContext(client_errors_log()))
        .map_err(ConnectorError::Config)?;
    let deadline = Instant::now() + timeout;
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|source| ConnectorError::Unreachable {
            brokers: settings.brokers.clone(),
            source,
        })?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut tpl = TopicPartitionList::new();
    // Partition -> (next offset, if known; at the end).
    let mut progress: BTreeMap<i32, (Option<i64>, bool)> = BTreeMap::new();
    for p in &partitions {
        let start = starts.get(p).copied();
        let offset = start.map_or(Offset::End, Offset::Offset);
        tpl.add_partition_offset(topic, *p, offset)?;
        progress.insert(*p, (start, false));
    }
    consumer.assign(&tpl)?;
    let mut records = Vec::new();
    while !progress.values().all(|(_, eof)| *eof) {
        if Instant::now() >= deadline {
            return Err(ConnectorError::ReadTimeout {
                topic: topic.to_owned(),
                brokers: settings.brokers.clone(),
                waited: timeout,
            });
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                if let Some(entry) = progress.get_mut(&p) {
                    entry.1 = true;
                }
            }
            Some(Err(e)) => tracing::debug!(error = %e, topic, "reading to the end: retrying"),
            Some(Ok(m)) => {
                if let Some(entry) = progress.get_mut(&m.partition()) {
                    *entry = (Some(m.offset() + 1), false);
                }
                records.push(ReadRecord {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    headers: headers_of(&m),
                });
            }
        }
    }
    // Partitions read from their end without a message: the position is the end.
    let position = consumer.position()?;
    let mut ends = BTreeMap::new();
    for (p, (next, _)) in progress {
        let end = match next {
            Some(n) => n,
            None => match position.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => consumer.fetch_watermarks(topic, p, timeout)?.1,
            },
        };
        ends.insert(p, end);
    }
    let _ = consumer.unassign();
    records.sort_by_key(|r| (r.partition, r.offset));
    Ok((records, ends))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed from a real librdkafka 2.x statistics document.
    const STATS: &str = r#"{"name":"rdkafka#consumer-1","type":"consumer","ts":1,
      "brokers":{"127.0.0.1:9092/1":{"name":"127.0.0.1:9092/1","nodeid":1}},
      "topics":{"requests":{"topic":"requests","age":1,"partitions":{
        "0":{"partition":0,"hi_offset":120,"ls_offset":-1,"committed_offset":100,"app_offset":110,"consumer_lag":-1},
        "1":{"partition":1,"hi_offset":50,"committed_offset":-1001,"app_offset":20},
        "2":{"partition":2,"hi_offset":0,"committed_offset":-1001,"app_offset":-1001},
        "3":{"partition":3,"hi_offset":-1,"committed_offset":5,"app_offset":5},
        "4":{"partition":4,"hi_offset":9,"committed_offset":9,"app_offset":9},
        "-1":{"partition":-1,"hi_offset":-1001}}},
        "other":{"topic":"other","partitions":{"0":{"partition":0,"hi_offset":7,"committed_offset":0}}}}}"#;

    #[test]
    fn lag_comes_from_the_high_watermark_and_the_committed_offset() {
        let ctx = SourceContext::new("requests");
        ctx.assigned.lock().expect("lock").extend([0, 1, 2, 3, 5]);
        ctx.stats_raw(STATS.as_bytes());
        let lag = ctx.lag.lock().expect("lock").clone();
        // 0: committed; 1: no commit yet, the application's position; 2: empty partition;
        // 3: no fetch response yet (unknown); 4: not assigned; 5: assigned, not in the stats.
        assert_eq!(lag, BTreeMap::from([(0, 20), (1, 30), (2, 0)]));
    }

    #[test]
    fn unreadable_statistics_keep_the_last_lag() {
        let ctx = SourceContext::new("requests");
        ctx.assigned.lock().expect("lock").insert(0);
        ctx.stats_raw(STATS.as_bytes());
        ctx.stats_raw(b"{not json");
        assert_eq!(*ctx.lag.lock().expect("lock"), BTreeMap::from([(0, 20)]));
    }
}
