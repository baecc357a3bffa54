//! Test harness for Cordon's end-to-end tests.
//!
//! The tests in `tests/` drive Cordon the way an operator does: a real Kafka-protocol broker
//! ([tansu](https://github.com/tansu-io/tansu) 0.6) runs as a child process on a free
//! `127.0.0.1` port, the `cordon` binary runs as another child process with a config file, and
//! the test talks to both only through Kafka and the process boundary (exit status, stderr).
//!
//! Everything here fails loudly: a missing `tansu` or `cordon` binary is a panic that says how
//! to get it, never a skipped test. Every wait is bounded ([`wait_until`]) and names what it
//! waited for. When a test panics, [`Broker`] and [`Engine`] print the tail of their logs as
//! they are dropped, so the failure report shows what the processes said.
//!
//! # Layout
//!
//! - [`Broker`]: starts and stops tansu, creates topics, produces records
//!   ([`Broker::produce`]), reads whole topics ([`Broker::read_topic`]) and probes a consumer
//!   group's committed offsets ([`Broker::offsets`], [`OffsetProbe`]).
//! - [`Engine`]: runs `cordon run --config FILE` as a child process, with its output captured
//!   to files; [`Engine::terminate`] sends SIGTERM and waits for the exit status,
//!   [`Engine::kill`] crashes it with SIGKILL. [`Broker::pause`] and [`Broker::resume`] freeze
//!   and thaw the broker (SIGSTOP, SIGCONT) for outage tests.
//! - [`S3Server`]: an S3 stand-in (moto's server, installed by `tests/s3/run-venv.sh`) with
//!   one bucket, for checkpoints in object storage.
//! - [`EngineConfig`]: the config v1 file the tests hand to the engine.
//! - [`Record`]: a record read back from a topic, with its headers.
//! - [`unique_topic`], [`unique_name`]: names that never collide between tests or runs.
//! - [`wait_until`], [`wait_for`]: the bounded polling loops; tests never sleep in place of a
//!   condition.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    fs::{self, File},
    io::{Read as _, Seek as _, SeekFrom},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use rdkafka::{
    ClientConfig, ClientContext, Message as _, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer as _},
    error::{KafkaError, RDKafkaErrorCode},
    message::{DeliveryResult, Headers as _},
    producer::{BaseRecord, Producer as _, ProducerContext, ThreadedProducer},
};
use tempfile::TempDir;

/// How long a broker gets to answer a metadata request after it was started.
pub const BROKER_START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`Engine::terminate`] waits for the engine to exit after SIGTERM.
pub const ENGINE_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How many log lines the failure reports print from each process.
const LOG_TAIL_LINES: usize = 60;

/// Timeout of one Kafka request made by the harness (metadata, watermarks, offsets).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The rules the end-to-end tests run: a reasoning-trace harvest per account (at least 50
/// requests, half with the `cot_elicitation` label, 80% distinct prompts) and a hydra cluster per
/// /24 (at least 20 accounts), both over 1 h windows in 5 min panes.
pub const TEST_RULES: &str = r#"id: test.cot-harvest
version: 1
title: Reasoning-trace harvesting
description: many chain-of-thought prompts, nearly all distinct
severity: high
tags: [atlas.AML.T0024.002]
entity: account_id
where: status < 400
window: 1h
every: 5m
features:
  requests: count()
  cot: count_if(array_has(labels, 'cot_elicitation'))
  prompts: distinct(prompt_fp)
  out_tokens: sum(output_tokens)
condition: requests >= 50 AND cot / requests >= 0.5 AND prompts / requests >= 0.8
suppress: 6h
evidence: [requests, cot, prompts]
---
id: test.hydra
version: 1
title: Many accounts behind one /24
description: a hydra cluster of accounts sharing one address range
severity: medium
tags: [atlas.AML.T0024.002]
entity: ip_prefix(ip, 24, 48)
window: 1h
every: 5m
features:
  accounts: distinct(account_id)
  requests: count()
condition: accounts >= 20
suppress: 6h
"#;

/// Polls `condition` until it returns true, for at most `timeout`.
///
/// Panics with `what` when the time is up. The interval starts at 20 ms and grows to 250 ms, so
/// fast conditions return fast and slow ones do not spin.
#[track_caller]
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    wait_for(timeout, what, || {
        if condition() {
            Ok(())
        } else {
            Err(String::from("condition still false"))
        }
    });
}

/// Polls `attempt` until it returns `Ok`, for at most `timeout`, and returns the value.
///
/// Like [`wait_until`], but the panic on timeout also shows the last `Err` (what the
/// condition saw last time it looked), e.g. the offsets when waiting for a commit.
#[track_caller]
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut attempt: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    let mut interval = Duration::from_millis(20);
    loop {
        let last = match attempt() {
            Ok(value) => return value,
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        thread::sleep(interval.min(deadline.saturating_duration_since(Instant::now())));
        interval = (interval * 2).min(Duration::from_millis(250));
    }
}

/// A name unique to this process, call and moment: `PREFIX-PID-COUNTER-MICROS`.
///
/// Safe as a Kafka topic or group name when `prefix` is (`[a-zA-Z0-9._-]`).
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    format!("{prefix}-{}-{n}-{micros}", std::process::id())
}

/// A topic name that no other test, process or earlier run uses; see [`unique_name`].
pub fn unique_topic(prefix: &str) -> String {
    unique_name(prefix)
}

/// Finds a free TCP port on 127.0.0.1 by binding port 0 and releasing it.
///
/// Another process could take the port before it is bound again; [`Broker::start`] retries
/// with a fresh port when the broker exits during start-up.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0 to find a free port: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("cannot read the address of a bound socket: {e}"))
        .port()
}

/// The last `lines` lines of a log file, or a note saying why there are none.
pub fn file_tail(path: &Path, lines: usize) -> String {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) => return format!("<cannot open {}: {e}>", path.display()),
    };
    // Logs can be large; the tail is in the last few hundred KiB.
    let len = file.metadata().map_or(0, |m| m.len());
    let start = len.saturating_sub(256 * 1024);
    let mut bytes = Vec::new();
    if let Err(e) = file
        .seek(SeekFrom::Start(start))
        .and_then(|_| file.read_to_end(&mut bytes))
    {
        return format!("<cannot read {}: {e}>", path.display());
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    let tail = &all[all.len().saturating_sub(lines)..];
    if tail.is_empty() {
        "<empty>".to_owned()
    } else {
        tail.join("\n")
    }
}

/// Finds an executable: the path in env `var` if set, else `name` on `PATH`, else `fallback`.
fn find_executable(var: &str, name: &str, fallback: Option<PathBuf>) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var) {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    on_path.or_else(|| fallback.filter(|p| p.is_file()))
}

/// The tansu executable: env `TANSU_BIN`, else `tansu` on `PATH`, else `~/.cargo/bin/tansu`.
///
/// Panics with install instructions when none exists.
pub fn tansu_bin() -> PathBuf {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")));
    let fallback = cargo_home.map(|home| home.join("bin").join("tansu"));
    let found = find_executable("TANSU_BIN", "tansu", fallback);
    match found {
        Some(path) if path.is_file() => path,
        other => panic!(
            "the end-to-end tests need the tansu broker (not found{}).\n\
             Install it with:\n    \
             cargo install tansu --version 0.6.0 --features dynostore --locked\n\
             or point TANSU_BIN at a tansu 0.6 executable.",
            other.map_or_else(String::new, |p| format!(" at {}", p.display()))
        ),
    }
}

/// The cordon executable: env `CORDON_BIN`, else `cordon` next to this test's target directory
/// (`target/<profile>/cordon`, since a test runs as `target/<profile>/deps/NAME-HASH`).
///
/// Panics with build instructions when it does not exist.
pub fn cordon_bin() -> PathBuf {
    let path = match std::env::var_os("CORDON_BIN") {
        Some(path) => PathBuf::from(path),
        None => {
            let exe = std::env::current_exe()
                .unwrap_or_else(|e| panic!("cannot find the test executable's path: {e}"));
            let profile_dir = exe
                .parent()
                .filter(|dir| dir.ends_with("deps"))
                .and_then(Path::parent)
                .or_else(|| exe.parent())
                .unwrap_or_else(|| panic!("test executable {} has no parent", exe.display()));
            profile_dir.join(format!("cordon{}", std::env::consts::EXE_SUFFIX))
        }
    };
    if !path.is_file() {
        panic!(
            "the cordon binary is missing at {}: build it first: cargo build --bin cordon \
             (with the same profile as the tests), or set CORDON_BIN",
            path.display()
        );
    }
    path
}

/// The release build of cordon, for the tests that push a day of traffic through it: env
/// `CORDON_RELEASE_BIN`, else `target/release/cordon` beside this test's target directory.
///
/// Panics with build instructions when it does not exist.
pub fn cordon_release_bin() -> PathBuf {
    let path = match std::env::var_os("CORDON_RELEASE_BIN") {
        Some(path) => PathBuf::from(path),
        None => {
            let debug = cordon_bin();
            let target = debug
                .parent()
                .and_then(Path::parent)
                .unwrap_or_else(|| panic!("{} has no target directory", debug.display()));
            target.join(format!("release/cordon{}", std::env::consts::EXE_SUFFIX))
        }
    };
    if !path.is_file() {
        panic!(
            "the release cordon binary is missing at {}: build it first: \
             cargo build --release --bin cordon, or set CORDON_RELEASE_BIN",
            path.display()
        );
    }
    path
}

/// Starts a server with `try_start` (which picks a free port) up to three times: a port found
/// free can be taken before the server binds it. Panics with every failure when none worked.
#[track_caller]
fn start_on_free_ports<T>(what: &str, bin: &Path, try_start: fn(&Path) -> Result<T, String>) -> T {
    let mut failures = Vec::new();
    for _attempt in 0..3 {
        match try_start(bin) {
            Ok(server) => return server,
            Err(failure) => failures.push(failure),
        }
    }
    panic!(
        "{what} did not start ({}):\n{}",
        bin.display(),
        failures.join("\n---\n")
    );
}

/// A temp dir (`prefix`) holding a child process's log file `name`: the dir, the log's path,
/// and the file opened twice, for the child's stdout and stderr.
fn log_files(prefix: &str, name: &str) -> Result<(TempDir, PathBuf, File, File), String> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|e| format!("cannot create a temp dir: {e}"))?;
    let log_path = dir.path().join(name);
    let log = File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("cannot clone a file handle: {e}"))?;
    Ok((dir, log_path, log, log_err))
}

/// A tansu broker running as a child process on `127.0.0.1:PORT`, with in-memory storage.
///
/// Dropping it kills the broker. If the thread is panicking at that moment (a failed test),
/// the tail of the broker's log is printed first.
#[derive(Debug)]
pub struct Broker {
    child: Child,
    port: u16,
    bin: PathBuf,
    log_path: PathBuf,
    // Holds the log file; deleted on drop.
    _dir: TempDir,
}

impl Broker {
    /// Starts tansu on a free port and waits (at most [`BROKER_START_TIMEOUT`]) until it answers
    /// a metadata request.
    ///
    /// Panics when tansu is not installed or never becomes ready.
    #[track_caller]
    pub fn start() -> Self {
        start_on_free_ports("tansu broker", &tansu_bin(), Self::try_start)
    }

    fn try_start(bin: &Path) -> Result<Self, String> {
        let (dir, log_path, log, log_err) = log_files("cordon-tansu-", "tansu.log")?;
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let mut command = Command::new(bin);
        command
            .arg("broker")
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .env_remove("CLUSTER_ID")
            .env_remove("SCHEMA_REGISTRY")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let child = command
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        let mut broker = Self {
            child,
            port,
            bin: bin.to_owned(),
            log_path,
            _dir: dir,
        };
        broker.wait_ready()?;
        Ok(broker)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let consumer: BaseConsumer = self
            .client_config()
            .create()
            .map_err(|e| format!("cannot create a Kafka client: {e}"))?;
        let deadline = Instant::now() + BROKER_START_TIMEOUT;
        let mut last_error = String::from("no attempt yet");
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "tansu exited during start-up with {status}; its log:\n{}",
                    file_tail(&self.log_path, LOG_TAIL_LINES)
                ));
            }
            match consumer.fetch_metadata(None, Duration::from_secs(1)) {
                // Still alive after answering: the answer came from our broker, not from some
                // other process that took the port.
                Ok(metadata) if !metadata.brokers().is_empty() => {
                    if matches!(self.child.try_wait(), Ok(None)) {
                        return Ok(());
                    }
                    last_error = "tansu exited after answering".to_owned();
                }
                Ok(_) => last_error = "metadata lists no brokers".to_owned(),
                Err(e) => last_error = e.to_string(),
            }
            thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "tansu on port {} did not answer metadata within {BROKER_START_TIMEOUT:?} \
             (last error: {last_error}); its log:\n{}",
            self.port,
            file_tail(&self.log_path, LOG_TAIL_LINES)
        ))
    }

    /// Freezes the broker with SIGSTOP: connections stay open and nothing answers, as in a
    /// network partition or a stalled node. [`Broker::resume`] thaws it.
    #[track_caller]
    pub fn pause(&self) {
        signal(self.child.id(), "STOP");
    }

    /// Thaws a broker frozen by [`Broker::pause`] (SIGCONT).
    #[track_caller]
    pub fn resume(&self) {
        signal(self.child.id(), "CONT");
    }

    /// The bootstrap address, `127.0.0.1:PORT`, as config `source.brokers` wants it.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker URL tansu's own commands take, `tcp://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// The last `lines` lines of the broker's combined stdout and stderr.
    pub fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.log_path, lines)
    }

    /// A client config for this broker with short timeouts, as the harness's clients use.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", self.bootstrap())
            .set("socket.timeout.ms", "10000")
            .set("message.timeout.ms", "30000")
            .set("broker.address.family", "v4");
        config
    }

    /// Creates `name` with `partitions` partitions (`tansu topic create`) and waits until the
    /// broker's metadata lists it with that many partitions.
    #[track_caller]
    pub fn create_topic(&self, name: &str, partitions: i32) {
        let output = Command::new(&self.bin)
            .args(["topic", "create", name, "--broker", &self.url()])
            .args(["--partitions", &partitions.to_string()])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} topic create: {e}", self.bin.display()));
        if !output.status.success() {
            panic!(
                "tansu topic create {name} --partitions {partitions} failed with {}\n\
                 stdout:\n{}\nstderr:\n{}\nbroker log:\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                self.log_tail(LOG_TAIL_LINES)
            );
        }
        let consumer = self.metadata_client();
        let expected = usize::try_from(partitions).unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let seen = match consumer.fetch_metadata(Some(name), REQUEST_TIMEOUT) {
                Ok(metadata) => match metadata.topics().iter().find(|t| t.name() == name) {
                    Some(topic)
                        if topic.error().is_none() && topic.partitions().len() == expected =>
                    {
                        return;
                    }
                    Some(topic) => format!(
                        "{} partitions, error {:?}",
                        topic.partitions().len(),
                        topic.error()
                    ),
                    None => "not listed".to_owned(),
                },
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                panic!(
                    "topic {name} was created but the metadata did not show it with \
                     {partitions} partitions within 30 s (last seen: {seen})\nbroker log:\n{}",
                    self.log_tail(LOG_TAIL_LINES)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The partition ids of `topic`, sorted. Panics if the topic is unknown.
    #[track_caller]
    pub fn partitions(&self, topic: &str) -> Vec<i32> {
        let consumer = self.metadata_client();
        partitions_of(&consumer, topic)
    }

    fn metadata_client(&self) -> BaseConsumer {
        self.client_config()
            .set("group.id", unique_name("cordon-tests-metadata"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap_or_else(|e| panic!("cannot create a Kafka client: {e}"))
    }

    /// Produces `records` (key, payload) to `topic`/`partition` in order, flushes, and returns
    /// the offset each record got.
    ///
    /// One request in flight at a time, so the order on the partition is the order given.
    /// Panics if any record is not acknowledged within 30 s.
    #[track_caller]
    pub fn produce<K: AsRef<[u8]>, P: AsRef<[u8]>>(
        &self,
        topic: &str,
        partition: i32,
        records: &[(K, P)],
    ) -> Vec<i64> {
        let context = DeliveryTracker {
            results: Mutex::new(vec![None; records.len()]),
        };
        let producer: ThreadedProducer<DeliveryTracker> = self
            .client_config()
            .set("max.in.flight.requests.per.connection", "1")
            .set("linger.ms", "5")
            .set("acks", "all")
            // Past the 1,000,000 of librdkafka's default, which the engine's producer keeps:
            // tests produce messages larger than the engine can write again.
            .set("message.max.bytes", "10000000")
            .create_with_context(context)
            .unwrap_or_else(|e| panic!("cannot create a Kafka producer: {e}"));
        for (index, (key, payload)) in records.iter().enumerate() {
            let mut record = BaseRecord::with_opaque_to(topic, index)
                .partition(partition)
                .key(key.as_ref())
                .payload(payload.as_ref());
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned))
                        if Instant::now() < deadline =>
                    {
                        // The local queue is full: let deliveries drain, then retry.
                        record = returned;
                        thread::sleep(Duration::from_millis(10));
                    }
                    Err((e, _)) => panic!("cannot produce to {topic}/{partition}: {e}"),
                }
            }
        }
        producer.flush(Duration::from_secs(30)).unwrap_or_else(|e| {
            panic!(
                "producing {} records to {topic}/{partition} did not complete: {e}\n\
                 broker log:\n{}",
                records.len(),
                self.log_tail(LOG_TAIL_LINES)
            )
        });
        let results = std::mem::take(
            &mut *producer
                .context()
                .results
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        results
            .into_iter()
            .enumerate()
            .map(|(index, result)| match result {
                Some(Ok(offset)) => offset,
                Some(Err(e)) => panic!("record {index} to {topic}/{partition} failed: {e}"),
                None => panic!("record {index} to {topic}/{partition} got no delivery report"),
            })
            .collect()
    }

    /// Reads `topic` from the beginning to its end, every partition, and returns the records
    /// in (partition, offset) order.
    ///
    /// The high watermarks are fetched first and the read goes at least that far, then on to
    /// the end of each partition as the broker's fetch responses report it (see
    /// [`OffsetProbe::high_watermarks`] for why both). Panics if that takes more than 30 s.
    #[track_caller]
    pub fn read_topic(&self, topic: &str) -> Vec<Record> {
        let consumer = self.reader();
        let mut ranges = BTreeMap::new();
        for partition in partitions_of(&consumer, topic) {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
                .unwrap_or_else(|e| panic!("cannot fetch watermarks of {topic}/{partition}: {e}"));
            ranges.insert(partition, (low, high));
        }
        match read_to_end(&consumer, topic, &ranges, Duration::from_secs(30)) {
            Ok((records, _)) => records,
            Err(e) => panic!("reading {topic}: {e}\nbroker log:\n{}", self.log_tail(20)),
        }
    }

    /// A consumer that only reads by assignment: a group id of its own, no commits, and an
    /// event at the end of each partition.
    fn reader(&self) -> BaseConsumer {
        self.client_config()
            .set("group.id", unique_name("cordon-tests-reader"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "true")
            // An empty fetch at the end waits at most this long, so the end shows sooner.
            .set("fetch.wait.max.ms", "50")
            .create()
            .unwrap_or_else(|e| panic!("cannot create a Kafka consumer: {e}"))
    }

    /// A probe of `group`'s committed offsets and the high watermarks on `topic`.
    pub fn offsets(&self, group: &str, topic: &str) -> OffsetProbe {
        let consumer: BaseConsumer = self
            .client_config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .create()
            .unwrap_or_else(|e| panic!("cannot create a Kafka client for group {group}: {e}"));
        let partitions = partitions_of(&consumer, topic);
        OffsetProbe {
            consumer,
            reader: self.reader(),
            topic: topic.to_owned(),
            partitions,
        }
    }
}

/// Reads each partition of `topic` from `ranges[partition].0` until the consumer reports the
/// end of the partition at an offset no lower than `ranges[partition].1`.
///
/// Returns the records in (partition, offset) order and the end offset of each partition
/// (the offset after the last record, as the broker's fetch responses put it).
fn read_to_end(
    consumer: &BaseConsumer,
    topic: &str,
    ranges: &BTreeMap<i32, (i64, i64)>,
    timeout: Duration,
) -> Result<(Vec<Record>, BTreeMap<i32, i64>), String> {
    let mut assignment = TopicPartitionList::new();
    for (&partition, &(start, _)) in ranges {
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(start))
            .map_err(|e| format!("cannot build an assignment: {e}"))?;
    }
    consumer
        .assign(&assignment)
        .map_err(|e| format!("cannot assign {topic}: {e}"))?;
    // Partition -> (next offset to read, reached the end).
    let mut progress: BTreeMap<i32, (i64, bool)> = ranges
        .iter()
        .map(|(&partition, &(start, _))| (partition, (start, false)))
        .collect();
    let done = |progress: &BTreeMap<i32, (i64, bool)>| {
        progress
            .iter()
            .all(|(p, &(next, eof))| eof && next >= ranges.get(p).map_or(0, |r| r.1))
    };
    let mut records = Vec::new();
    let deadline = Instant::now() + timeout;
    while !done(&progress) {
        if Instant::now() >= deadline {
            let _ = consumer.unassign();
            return Err(format!(
                "did not reach the end of every partition within {timeout:?}; \
                 (partition -> (start, at least up to)): {ranges:?}, \
                 (partition -> (next offset, at end)): {progress:?}; read {} records",
                records.len()
            ));
        }
        let message = match consumer.poll(Duration::from_millis(100)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                if let Some(entry) = progress.get_mut(&partition) {
                    entry.1 = true;
                }
                continue;
            }
            Some(Err(e)) => return Err(format!("error reading {topic}: {e}")),
            Some(Ok(message)) => message,
        };
        let partition = message.partition();
        let offset = message.offset();
        if let Some(entry) = progress.get_mut(&partition) {
            entry.0 = entry.0.max(offset + 1);
            entry.1 = false;
        }
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        records.push(Record {
            partition,
            offset,
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
        });
    }
    let _ = consumer.unassign();
    records.sort_by_key(|r| (r.partition, r.offset));
    let ends = progress
        .into_iter()
        .map(|(p, (next, _))| (p, next))
        .collect();
    Ok((records, ends))
}

/// Sends `SIG<name>` to `pid` with the `kill` command (the workspace denies unsafe code).
#[track_caller]
fn signal(pid: u32, name: &str) {
    let output = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("cannot run kill: {e}"));
    assert!(
        output.status.success(),
        "kill -{name} {pid} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Drop for Broker {
    fn drop(&mut self) {
        // A test that failed while the broker was paused leaves it stopped: thaw it so that it
        // flushes its log as it dies (SIGKILL alone would also end it).
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .output();
        if thread::panicking() {
            eprintln!(
                "---- tansu broker log (last {LOG_TAIL_LINES} lines, {}) ----\n{}\n---- end of broker log ----",
                self.log_path.display(),
                self.log_tail(LOG_TAIL_LINES)
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[track_caller]
fn partitions_of(consumer: &BaseConsumer, topic: &str) -> Vec<i32> {
    let metadata = consumer
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("cannot fetch metadata of {topic}: {e}"));
    let found = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .unwrap_or_else(|| panic!("topic {topic} is not in the broker's metadata"));
    let mut partitions: Vec<i32> = found.partitions().iter().map(|p| p.id()).collect();
    partitions.sort_unstable();
    partitions
}

/// Records the outcome of each produced record, indexed by its position in the batch.
struct DeliveryTracker {
    results: Mutex<Vec<Option<Result<i64, String>>>>,
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        let outcome = match result {
            Ok(message) => Ok(message.offset()),
            Err((e, _)) => Err(e.to_string()),
        };
        let mut results = self
            .results
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(slot) = results.get_mut(index) {
            *slot = Some(outcome);
        }
    }
}

/// Reads a consumer group's committed offsets and a topic's high watermarks.
///
/// Its client carries the group's id but never subscribes or commits, so it does not join the
/// group or disturb the engine's offsets.
pub struct OffsetProbe {
    consumer: BaseConsumer,
    reader: BaseConsumer,
    topic: String,
    partitions: Vec<i32>,
}

impl OffsetProbe {
    /// The committed offset of each partition; `None` where the group has committed nothing.
    pub fn committed(&self) -> Result<BTreeMap<i32, Option<i64>>, String> {
        let mut request = TopicPartitionList::new();
        for &partition in &self.partitions {
            request.add_partition(&self.topic, partition);
        }
        let answer = self
            .consumer
            .committed_offsets(request, REQUEST_TIMEOUT)
            .map_err(|e| format!("committed offsets of {}: {e}", self.topic))?;
        let mut offsets = BTreeMap::new();
        for element in answer.elements_for_topic(&self.topic) {
            element.error().map_err(|e| {
                format!("committed offset of partition {}: {e}", element.partition())
            })?;
            let offset = match element.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            };
            offsets.insert(element.partition(), offset);
        }
        Ok(offsets)
    }

    /// The high watermark (the offset after the last record) of each partition.
    ///
    /// Not simply a ListOffsets(latest) request: tansu 0.6's in-memory storage answers that
    /// with the base offset of the newest record batch plus one, which is short of the end
    /// whenever that batch holds several records. So this reads from one before that answer
    /// to the end of the partition, where the fetch responses carry the true high watermark.
    pub fn high_watermarks(&self) -> Result<BTreeMap<i32, i64>, String> {
        let mut ranges = BTreeMap::new();
        let mut ends = BTreeMap::new();
        for &partition in &self.partitions {
            let (low, listed) = self
                .reader
                .fetch_watermarks(&self.topic, partition, REQUEST_TIMEOUT)
                .map_err(|e| format!("watermarks of {}/{partition}: {e}", self.topic))?;
            if listed > low {
                ranges.insert(partition, ((listed - 1).max(low), listed));
            } else {
                ends.insert(partition, listed);
            }
        }
        if !ranges.is_empty() {
            let (_, read) = read_to_end(&self.reader, &self.topic, &ranges, REQUEST_TIMEOUT * 2)?;
            ends.extend(read);
        }
        Ok(ends)
    }

    /// `Ok` when every partition's committed offset equals its high watermark (an empty
    /// partition needs no commit); either way the text describes both (for [`wait_for`] and
    /// failure messages).
    pub fn caught_up(&self) -> Result<String, String> {
        let committed = self.committed()?;
        let high = self.high_watermarks()?;
        let state = format!("committed {committed:?}, high watermarks {high:?}");
        // An empty partition has nothing to commit: no offset counts as 0 there.
        let done = high.iter().all(|(partition, &high)| {
            committed.get(partition).copied().flatten().unwrap_or(0) == high
        });
        if done { Ok(state) } else { Err(state) }
    }
}

/// A record read back from a topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The partition it was read from.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
    /// Its key, if it has one.
    pub key: Option<Vec<u8>>,
    /// Its payload, if it has one.
    pub payload: Option<Vec<u8>>,
    /// Its headers in order; a null header value reads as empty.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// The first header named `name`, as UTF-8 (lossy).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
    }

    /// The key as UTF-8 (lossy), or `""` when there is none.
    pub fn key_str(&self) -> String {
        self.key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default()
    }

    /// The payload parsed as JSON. Panics (naming the record) if it is absent or not JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        let payload = self
            .payload
            .as_deref()
            .unwrap_or_else(|| panic!("record {}/{} has no payload", self.partition, self.offset));
        serde_json::from_slice(payload).unwrap_or_else(|e| {
            panic!(
                "record {}/{} is not JSON ({e}): {}",
                self.partition,
                self.offset,
                String::from_utf8_lossy(payload)
            )
        })
    }
}

/// An S3 stand-in running as a child process on `127.0.0.1:PORT`: moto's server
/// (`target/s3-venv/bin/moto_server`, which `tests/s3/run-venv.sh` installs), in memory, with
/// one bucket. It accepts any credentials. Dropping it kills it.
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    port: u16,
    bucket: String,
    log_path: PathBuf,
    _dir: TempDir,
}

impl S3Server {
    /// Starts the server on a free port, waits (at most [`BROKER_START_TIMEOUT`]) until it
    /// answers, and creates a bucket. Panics, saying how to install it, when it is missing.
    #[track_caller]
    pub fn start() -> Self {
        let bin =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/s3-venv/bin/moto_server");
        assert!(
            bin.is_file(),
            "{} is missing: run tests/s3/run-venv.sh (tests/run.sh does) to install the S3 stand-in",
            bin.display()
        );
        start_on_free_ports("the S3 stand-in", &bin, Self::try_start)
    }

    fn try_start(bin: &Path) -> Result<Self, String> {
        let (dir, log_path, log, log_err) = log_files("cordon-s3-", "moto.log")?;
        let port = free_port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        let mut server = Self {
            child,
            port,
            bucket: unique_name("cordon-test").to_ascii_lowercase(),
            log_path,
            _dir: dir,
        };
        let path = format!("/{}", server.bucket);
        let deadline = Instant::now() + BROKER_START_TIMEOUT;
        let mut last = String::from("no attempt yet");
        while Instant::now() < deadline {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "moto_server exited with {status}:\n{}",
                    file_tail(&server.log_path, LOG_TAIL_LINES)
                ));
            }
            match http_request(&server.endpoint_addr(), "PUT", &path) {
                // Still alive after answering: the answer came from this server, not from some
                // other process that took the port.
                Ok((200, _)) if matches!(server.child.try_wait(), Ok(None)) => return Ok(server),
                Ok((status, body)) => last = format!("creating the bucket: {status} {body}"),
                Err(e) => last = e,
            }
            thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "no answer on port {port} within {BROKER_START_TIMEOUT:?} (last: {last}); its log:\n{}",
            file_tail(&server.log_path, LOG_TAIL_LINES)
        ))
    }

    fn endpoint_addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The endpoint, for the option `aws_endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.endpoint_addr())
    }

    /// `s3://BUCKET/prefix`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// What `state.object_store_options` needs to reach it, as YAML lines under `state:`.
    pub fn state_yaml(&self, prefix: &str) -> String {
        format!(
            "  object_store_url: {url}\n  object_store_options:\n    aws_endpoint: {endpoint}\n    aws_allow_http: \"true\"\n    aws_region: us-east-1\n    aws_access_key_id: test\n    aws_secret_access_key: test\n",
            url = self.url(prefix),
            endpoint = self.endpoint()
        )
    }

    /// The keys of the objects under `prefix` in the bucket (a `ListObjectsV2`).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let path = format!("/{}?list-type=2&prefix={prefix}", self.bucket);
        let (status, body) = http_request(&self.endpoint_addr(), "GET", &path)
            .unwrap_or_else(|e| panic!("listing the bucket: {e}"));
        assert_eq!(status, 200, "listing the bucket: {body}");
        body.split("<Key>")
            .skip(1)
            .filter_map(|k| k.split_once("</Key>").map(|(k, _)| k.to_owned()))
            .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "---- moto_server log (last {LOG_TAIL_LINES} lines) ----\n{}\n---- end ----",
                file_tail(&self.log_path, LOG_TAIL_LINES)
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What most end-to-end tests start from: a broker with an input, an alerts and a dead-letter
/// topic (unique names), and a temp dir holding empty `rules/` and `state/` directories. The
/// [`Topics`] fields read through it (`setup.input`).
pub struct Setup {
    /// The broker.
    pub broker: Broker,
    /// The topics and directories on it.
    pub topics: Topics,
}

impl std::ops::Deref for Setup {
    type Target = Topics;
    fn deref(&self) -> &Topics {
        &self.topics
    }
}

impl Setup {
    /// Starts a broker and creates the topics, named after `prefix`, with `input_partitions`
    /// input partitions.
    #[track_caller]
    pub fn new(prefix: &str, input_partitions: i32) -> Self {
        let broker = Broker::start();
        let topics = Topics::create(&broker, prefix, input_partitions);
        Self { broker, topics }
    }

    /// A config for these topics and directories ([`EngineConfig::new`]).
    pub fn config(&self) -> EngineConfig {
        self.topics.config(&self.broker)
    }
}

/// The topics and directories of one engine run on a broker that several runs share
/// ([`Setup`] is these with a broker of their own).
#[derive(Debug)]
pub struct Topics {
    /// The input topic.
    pub input: String,
    /// The alerts topic (one partition).
    pub alerts: String,
    /// The dead-letter topic (one partition).
    pub dlq: String,
    /// For `rules.paths`.
    pub rules_dir: PathBuf,
    /// For `state.dir`.
    pub state_dir: PathBuf,
    /// Owns the directories.
    pub dir: TempDir,
}

impl Topics {
    /// Creates the topics on `broker`, named after `prefix` and unique, with
    /// `input_partitions` input partitions, and empty rules and state directories.
    #[track_caller]
    pub fn create(broker: &Broker, prefix: &str, input_partitions: i32) -> Self {
        let input = unique_topic(&format!("{prefix}-requests"));
        let alerts = unique_topic(&format!("{prefix}-alerts"));
        let dlq = unique_topic(&format!("{prefix}-dlq"));
        broker.create_topic(&input, input_partitions);
        broker.create_topic(&alerts, 1);
        broker.create_topic(&dlq, 1);
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
        let rules_dir = dir.path().join("rules");
        let state_dir = dir.path().join("state");
        for d in [&rules_dir, &state_dir] {
            fs::create_dir_all(d).unwrap_or_else(|e| panic!("cannot create {}: {e}", d.display()));
        }
        Self {
            input,
            alerts,
            dlq,
            rules_dir,
            state_dir,
            dir,
        }
    }

    /// A config for these topics and directories on `broker` ([`EngineConfig::new`]).
    pub fn config(&self, broker: &Broker) -> EngineConfig {
        EngineConfig::new(
            broker,
            &self.input,
            &self.alerts,
            &self.dlq,
            &self.rules_dir,
            &self.state_dir,
        )
    }
}

/// The config v1 file the tests give the engine. [`EngineConfig::to_yaml`] renders it.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// `source.brokers`.
    pub brokers: String,
    /// `source.topic`.
    pub input_topic: String,
    /// `source.group_id`.
    pub group_id: String,
    /// `source.properties` (librdkafka), e.g. a short `session.timeout.ms` for crash tests.
    pub source_properties: BTreeMap<String, String>,
    /// `source.max_message_bytes`.
    pub max_message_bytes: u64,
    /// Lines appended verbatim under `source:` (indented two spaces), e.g.
    /// `"  max_batch_wait: 10s\n"`.
    pub source_yaml: String,
    /// `sink.topic`.
    pub alerts_topic: String,
    /// `dead_letter.topic`.
    pub dlq_topic: String,
    /// `rules.paths`, a single directory.
    pub rules_dir: PathBuf,
    /// `state.dir`.
    pub state_dir: PathBuf,
    /// `state.checkpoint_interval`, a humantime duration such as `1s`.
    pub checkpoint_interval: String,
    /// `http.listen`; `127.0.0.1:0` unless a test wants to reach the HTTP server.
    pub http_listen: String,
    /// Lines appended verbatim under `state:` (indented two spaces), e.g.
    /// [`S3Server::state_yaml`].
    pub state_yaml: String,
    /// Lines appended verbatim at the end (e.g. an unknown key, for error tests).
    pub extra_yaml: String,
}

impl EngineConfig {
    /// A config for `broker` with the given topics and directories, a 2 KiB message limit,
    /// a 1 s checkpoint interval and a group id unique to this call.
    pub fn new(
        broker: &Broker,
        input_topic: &str,
        alerts_topic: &str,
        dlq_topic: &str,
        rules_dir: &Path,
        state_dir: &Path,
    ) -> Self {
        Self {
            brokers: broker.bootstrap(),
            input_topic: input_topic.to_owned(),
            group_id: unique_name("cordon-e2e"),
            source_properties: BTreeMap::new(),
            max_message_bytes: 2048,
            source_yaml: String::new(),
            alerts_topic: alerts_topic.to_owned(),
            dlq_topic: dlq_topic.to_owned(),
            rules_dir: rules_dir.to_owned(),
            state_dir: state_dir.to_owned(),
            checkpoint_interval: "1s".to_owned(),
            http_listen: "127.0.0.1:0".to_owned(),
            state_yaml: String::new(),
            extra_yaml: String::new(),
        }
    }

    /// Runs the engine with the repartition stage: creates a topic named after `prefix`
    /// (unique) with `partitions` partitions on `broker`, sets `repartition.topic` to it (after
    /// whatever [`extra_yaml`](Self::extra_yaml) holds), and returns its name.
    #[track_caller]
    pub fn repartition_through(
        &mut self,
        broker: &Broker,
        prefix: &str,
        partitions: i32,
    ) -> String {
        let topic = unique_topic(&format!("{prefix}-repartition"));
        broker.create_topic(&topic, partitions);
        self.extra_yaml.push_str(&format!(
            "repartition:\n  topic: {}\n",
            serde_json::Value::from(topic.as_str())
        ));
        topic
    }

    /// The config as YAML. Strings are written as JSON strings, which YAML reads unchanged.
    pub fn to_yaml(&self) -> String {
        let q = |s: &str| serde_json::Value::from(s).to_string();
        let p = |p: &Path| q(&p.to_string_lossy());
        format!(
            "source:\n  \
               brokers: {brokers}\n  \
               topic: {input}\n  \
               group_id: {group}\n  \
               properties: {props}\n  \
               max_message_bytes: {max}\n\
             {source_extra}\
             sink:\n  \
               topic: {alerts}\n  \
               format: native\n\
             dead_letter:\n  \
               topic: {dlq}\n\
             rules:\n  \
               paths: [{rules}]\n\
             state:\n  \
               dir: {state}\n  \
               checkpoint_interval: {interval}\n  \
               max_keys: 100000\n\
             {state_extra}\
             time:\n  \
               allowed_lateness: 5m\n  \
               max_future_skew: 1m\n\
             http:\n  \
               listen: {listen}\n\
             {extra}",
            brokers = q(&self.brokers),
            input = q(&self.input_topic),
            group = q(&self.group_id),
            props = serde_json::to_string(&self.source_properties).unwrap_or_default(),
            max = self.max_message_bytes,
            source_extra = self.source_yaml,
            alerts = q(&self.alerts_topic),
            dlq = q(&self.dlq_topic),
            rules = p(&self.rules_dir),
            state = p(&self.state_dir),
            interval = q(&self.checkpoint_interval),
            listen = q(&self.http_listen),
            state_extra = self.state_yaml,
            extra = self.extra_yaml,
        )
    }
}

/// Sends `GET path` over HTTP/1.1 to `addr` (`127.0.0.1:PORT`) and returns the status code and
/// the body. Errors are strings for [`wait_for`]; the whole exchange is bounded by 5 s.
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    http_request(addr, "GET", path)
}

/// [`http_get`] with another method (an empty body).
pub fn http_request(addr: &str, method: &str, path: &str) -> Result<(u16, String), String> {
    use std::io::Write as _;
    let socket_addr: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| format!("bad address {addr}: {e}"))?;
    let mut stream = std::net::TcpStream::connect_timeout(&socket_addr, REQUEST_TIMEOUT)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(REQUEST_TIMEOUT)))
        .map_err(|e| format!("socket options: {e}"))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP header end in the answer: {response:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no HTTP status in {head:?}"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

/// Joins the chunks of a chunked HTTP/1.1 body (best effort; for test assertions only).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size =
            usize::from_str_radix(size.split(';').next().unwrap_or("0").trim(), 16).unwrap_or(0);
        let (Some(chunk), Some(next)) = (after.get(..size), after.get(size..)) else {
            break;
        };
        if size == 0 {
            break;
        }
        out.push_str(chunk);
        rest = next.trim_start_matches("\r\n");
    }
    out
}

/// The `cordon` binary running as a child process (`cordon run --config FILE`).
///
/// Its stdout and stderr go to files in its own temp dir. Dropping it kills the process; if
/// the thread is panicking at that moment, the tail of both logs is printed first.
#[derive(Debug)]
pub struct Engine {
    child: Child,
    status: Option<ExitStatus>,
    config_path: PathBuf,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    dir: TempDir,
}

impl Engine {
    /// Writes `config_yaml` to a temp file and starts `cordon run --config FILE`.
    #[track_caller]
    pub fn start(config_yaml: &str) -> Self {
        Self::start_with_env(config_yaml, &[])
    }

    /// Like [`Engine::start`], with extra environment variables for the engine.
    ///
    /// `CORDON_*` variables of the test's own environment (such as `CORDON_BIN`) are removed,
    /// since the engine reads `CORDON_*` as config overrides; only those in `env` are passed.
    #[track_caller]
    pub fn start_with_env(config_yaml: &str, env: &[(&str, &str)]) -> Self {
        let bin = cordon_bin();
        let dir = tempfile::Builder::new()
            .prefix("cordon-engine-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
        let config_path = dir.path().join("cordon.yaml");
        fs::write(&config_path, config_yaml)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config_path.display()));
        let stdout_path = dir.path().join("stdout.log");
        let stderr_path = dir.path().join("stderr.log");
        let create = |path: &Path| {
            File::create(path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()))
        };
        let mut command = Command::new(&bin);
        command
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(create(&stdout_path))
            .stderr(create(&stderr_path));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("CORDON_") {
                command.env_remove(&name);
            }
        }
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        // Plain text in the captured logs: they are read by people and by assertions.
        command.env("NO_COLOR", "1");
        for (name, value) in env {
            command.env(OsString::from(name), OsString::from(value));
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        Self {
            child,
            status: None,
            config_path,
            stdout_path,
            stderr_path,
            dir,
        }
    }

    /// The process id of the engine.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The path of the config file the engine was started with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The engine's temp dir (config and logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The exit status, if the engine has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Panics, with the engine's log tails, if it has exited. Call it inside [`wait_until`]
    /// conditions so that a crash fails the test at once instead of at the timeout.
    #[track_caller]
    pub fn assert_running(&mut self) {
        if let Some(status) = self.try_status() {
            panic!(
                "cordon exited unexpectedly with {status}\n{}",
                self.logs(LOG_TAIL_LINES)
            );
        }
    }

    /// Waits at most `timeout` for the engine to exit by itself and returns its status.
    #[track_caller]
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        wait_until(timeout, "cordon to exit", || self.try_status().is_some());
        self.status
            .unwrap_or_else(|| panic!("cordon has no exit status after exiting"))
    }

    /// Sends SIGTERM and waits at most [`ENGINE_STOP_TIMEOUT`] for the exit status.
    ///
    /// The signal is sent with the `kill` command: the workspace forbids unsafe code, and a
    /// signal crate would be a dependency for one call.
    #[track_caller]
    pub fn terminate(&mut self) -> ExitStatus {
        if let Some(status) = self.try_status() {
            panic!(
                "cordon had already exited with {status} before SIGTERM\n{}",
                self.logs(LOG_TAIL_LINES)
            );
        }
        let output = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .output()
            .unwrap_or_else(|e| panic!("cannot run kill: {e}"));
        if !output.status.success() && self.try_status().is_none() {
            panic!(
                "kill -TERM {} failed: {}",
                self.pid(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        self.wait_exit(ENGINE_STOP_TIMEOUT)
    }

    /// Stops the engine with SIGTERM and asserts it exited 0 (with its log tail if not).
    #[track_caller]
    pub fn stop(&mut self) {
        let status = self.terminate();
        assert!(
            status.success(),
            "cordon did not exit 0 after SIGTERM: {status}\n{}",
            self.logs(LOG_TAIL_LINES)
        );
    }

    /// Kills the engine with SIGKILL (no shutdown of any kind: a crash) and waits for it.
    #[track_caller]
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.try_status() {
            panic!(
                "cordon had already exited with {status} before SIGKILL\n{}",
                self.logs(LOG_TAIL_LINES)
            );
        }
        self.child
            .kill()
            .unwrap_or_else(|e| panic!("cannot SIGKILL cordon: {e}"));
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("cannot wait for cordon: {e}"));
        self.status = Some(status);
        status
    }

    /// Everything the engine wrote to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.stderr_path).unwrap_or_default()).into_owned()
    }

    /// Everything the engine wrote to stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.stdout_path).unwrap_or_default()).into_owned()
    }

    /// The last `lines` lines of stderr and of stdout, labelled, for failure messages.
    pub fn logs(&self, lines: usize) -> String {
        format!(
            "---- cordon stderr (last {lines} lines, {}) ----\n{}\n\
             ---- cordon stdout (last {lines} lines, {}) ----\n{}\n---- end of cordon logs ----",
            self.stderr_path.display(),
            file_tail(&self.stderr_path, lines),
            self.stdout_path.display(),
            file_tail(&self.stdout_path, lines),
        )
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.logs(LOG_TAIL_LINES));
        }
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
