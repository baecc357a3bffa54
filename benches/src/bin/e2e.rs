//! End to end through a local broker: what a bare rdkafka consumer reads, what `cordon run`
//! processes from the same topic in the same run, and event-to-alert latency at half that rate.
//!
//! One run:
//! 1. starts tansu 0.6 (env `TANSU_BIN`, else `tansu` on `PATH`) on a free `127.0.0.1` port with
//!    memory storage, and creates uniquely named topics;
//! 2. produces `--events` simulator events (a day of benign populations and every campaign
//!    kind, JSON, keyed by account) into the input topic;
//! 3. (a) reads the whole topic with a bare rdkafka consumer (subscribe, earliest, no work per
//!    message, the engine's consumer properties): events/s from the first message to the last,
//!    the ceiling of this path; and, for scale, the same with `fetch.wait.max.ms=10`, with
//!    which tansu 0.6 serves many times more than with librdkafka's default of 500;
//! 4. (b) runs the `cordon` release binary (`cordon run --config FILE`, the shipped pack) on
//!    the same topic and samples `cordon_events_consumed_total` on its `/metrics` every 50 ms:
//!    events/s from the first sample above zero to the first sample at the topic's size;
//! 5. (c) starts a fresh engine on new topics and produces a paced stream at half of (b)'s
//!    rate for `--latency-secs`: simulator events re-stamped with `ts` = the wall clock at send,
//!    and 10% of the stream from reasoning-trace harvesters (`extraction.cot-harvest`: each
//!    harvester account sends 350 requests, so one crosses the rule's 300-request threshold
//!    every 3,500 events and alerts, and more follow for as long as the stream runs). A reader
//!    on the alerts topic notes each alert's arrival time. Latency = arrival − the alert's
//!    `last_seen`. `last_seen` is the newest event time of the alerting key's window, and since
//!    `ts` is the send time and rises, it is the send time of the key's newest event in the
//!    micro-batch that raised the alert: the event that crossed the threshold, or one sent after
//!    it in the same batch (so the figure can undercount by up to one batch's fill time,
//!    `source.max_batch_wait`, 20 ms). `detected_at − last_seen` (engine-side part: broker
//!    delivery, batching, processing) is shown beside it; `detected_at` is the wall clock when
//!    the engine processed the batch.
//!
//!    With `--state-accounts N`, the engine of (c) first takes N events of N accounts of its
//!    own (one event each, spread over /24 ranges), so that it holds millions of keys as a
//!    long-running engine does, and the stream's latency includes the checkpoints of that
//!    state (`--checkpoint-interval SECS` sets `state.checkpoint_interval`, 30 s by default,
//!    so that several fall within the measured stream).
//!
//! It prints one table; `--json FILE` writes it as JSON. Every wait is bounded; tansu and the
//! engines are killed at the end, also on error.
//!
//! Build and run: `cargo build --release -p cordon-engine --bin cordon && cargo run --release
//! -p cordon-benches --bin e2e -- [--events N] [--partitions N] [--latency-secs S]
//! [--state-accounts N] [--checkpoint-interval SECS] [--repartition] [--json FILE]
//! [--source-property KEY=VALUE]...` (`--repartition` runs the engines with the repartition
//! stage; the last sets librdkafka properties of the engine's
//! consumer, `source.properties`, and of the bare consumer alike, to see what a setting
//! changes; by default both run with librdkafka's defaults, as `cordon run` does).
//! The engine binary is taken from env `CORDON_BIN`, else `cordon` beside this executable.

use anyhow::{Context, Result, bail};
use cordon_engine::simulate::SimEvent;
use rdkafka::{
    ClientConfig, ClientContext, Message as _,
    consumer::{BaseConsumer, Consumer as _},
    error::{KafkaError, RDKafkaErrorCode},
    message::DeliveryResult,
    producer::{BaseRecord, Producer as _, ProducerContext, ThreadedProducer},
};
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Timeout of one Kafka request (metadata).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the engine's `/metrics` is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// Requests each harvester account sends in the latency stream (the rule fires at 300).
const HARVEST_REQUESTS: u64 = 350;
/// One event in this many of the latency stream is a harvester's.
const HARVEST_EVERY: u64 = 10;
/// With `--repartition`, one event in this many of the latency stream (none of the
/// harvesters') is a hydra cluster's, for `extraction.hydra-range`, a rule of the repartition
/// stage.
const HYDRA_EVERY: u64 = 20;
/// Requests of each hydra cluster in the latency stream: 25 accounts behind one /24 sharing
/// one template; the rule fires at its 200th.
const HYDRA_REQUESTS: u64 = 220;

/// Cordon end to end through a local tansu broker, beside a bare rdkafka consumer (see the
/// module docs); prints one table.
#[derive(clap::Parser)]
struct Args {
    /// Simulator events for the throughput runs, (a) and (b).
    #[arg(long, default_value_t = 500_000)]
    events: u64,
    /// Partitions of the input topics.
    #[arg(long, default_value_t = 1)]
    partitions: i32,
    /// Seconds of the paced latency stream, (c).
    #[arg(long, default_value_t = 30)]
    latency_secs: u64,
    /// One-event accounts the engine of (c) takes first, so that it holds their state.
    #[arg(long, default_value_t = 0)]
    state_accounts: u64,
    /// `state.checkpoint_interval` of the engine of (c), in seconds (default: the engine's).
    #[arg(long)]
    checkpoint_interval: Option<u64>,
    /// librdkafka settings of the engine's consumer (`source.properties`), given to the bare
    /// consumer too so that both read alike; repeatable.
    #[arg(long = "source-property", value_name = "KEY=VALUE", value_parser = key_value)]
    source_properties: Vec<(String, String)>,
    /// Run the engines of (b) and (c) with the repartition stage (`repartition.topic`, a topic
    /// of `--partitions` partitions each): (b) then also reports the rate through both stages,
    /// to the last forwarded event counted.
    #[arg(long)]
    repartition: bool,
    /// Also write the table to this file as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// A `KEY=VALUE` option.
fn key_value(kv: &str) -> std::result::Result<(String, String), String> {
    kv.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{kv}: not KEY=VALUE"))
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0 for a free port")?;
    Ok(l.local_addr()?.port())
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), wall_ms())
}

/// A child process killed when dropped, with its output in a log file.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> Result<Self> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        Ok(Self { name, child, log })
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited with {status}; the end of its log ({}):\n{}",
                self.name,
                self.log.display(),
                tail(&self.log)
            );
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Finds an executable: env `var`, else `name` on `PATH`, else `fallback`.
fn executable(var: &str, name: &str, fallback: Option<PathBuf>) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .or(fallback.filter(|p| p.is_file()))
}

fn client(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("socket.timeout.ms", "10000");
    c
}

struct Tansu {
    proc: Proc,
    bin: PathBuf,
    port: u16,
}

impl Tansu {
    fn start(bin: &Path, dir: &Path) -> Result<Self> {
        let mut last = String::new();
        // A port found free can be taken before tansu binds it: try a few.
        for attempt in 0..3 {
            let port = free_port()?;
            let url = format!("tcp://127.0.0.1:{port}");
            let mut cmd = Command::new(bin);
            cmd.arg("broker")
                .args(["--listener-url", &url, "--advertised-listener-url", &url])
                .args(["--storage-engine", "memory://tansu/"])
                .env_remove("CLUSTER_ID");
            let log = dir.join(format!("tansu-{attempt}.log"));
            let mut t = Self {
                proc: Proc::spawn("tansu", cmd, log)?,
                bin: bin.to_owned(),
                port,
            };
            match t.wait_ready() {
                Ok(()) => return Ok(t),
                Err(e) => last = format!("{e:#}"),
            }
        }
        bail!("tansu did not start: {last}")
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let c: BaseConsumer = client(&self.bootstrap()).create()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.proc.check_alive()?;
            match c.fetch_metadata(None, Duration::from_secs(1)) {
                Ok(m) if !m.brokers().is_empty() => return self.proc.check_alive(),
                Ok(_) => {}
                Err(e) if Instant::now() >= deadline => {
                    bail!("tansu on port {} did not answer in 30 s: {e}", self.port)
                }
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// An input topic with `partitions` partitions and one-partition alerts and dead-letter
    /// topics, unique names from `prefix`: `(input, alerts, dlq)`.
    fn create_topics(&self, prefix: &str, partitions: i32) -> Result<(String, String, String)> {
        let input = unique(&format!("{prefix}-requests"));
        let alerts = unique(&format!("{prefix}-alerts"));
        let dlq = unique(&format!("{prefix}-dlq"));
        self.create_topic(&input, partitions)?;
        self.create_topic(&alerts, 1)?;
        self.create_topic(&dlq, 1)?;
        Ok((input, alerts, dlq))
    }

    fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let out = Command::new(&self.bin)
            .args(["topic", "create", name, "--broker", &url])
            .args(["--partitions", &partitions.to_string()])
            .stdin(Stdio::null())
            .output()
            .context("running tansu topic create")?;
        if !out.status.success() {
            bail!(
                "tansu topic create {name} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let c: BaseConsumer = client(&self.bootstrap()).create()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(m) = c.fetch_metadata(Some(name), REQUEST_TIMEOUT)
                && m.topics().iter().any(|t| {
                    t.name() == name
                        && t.error().is_none()
                        && t.partitions().len() == partitions as usize
                })
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("topic {name} did not show in the metadata within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Counts failed deliveries.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
    last_error: std::sync::Mutex<String>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut last) = self.last_error.lock() {
                *last = e.to_string();
            }
        }
    }
}

fn producer(bootstrap: &str) -> Result<ThreadedProducer<Deliveries>> {
    Ok(client(bootstrap)
        .set("linger.ms", "5")
        .set("acks", "all")
        .set("message.timeout.ms", "120000")
        .set("queue.buffering.max.messages", "200000")
        .create_with_context(Deliveries::default())?)
}

/// Sends one record, waiting (bounded) while the local queue is full.
fn send(p: &ThreadedProducer<Deliveries>, topic: &str, key: &[u8], payload: &[u8]) -> Result<()> {
    let mut record = BaseRecord::to(topic).key(key).payload(payload);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match p.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                if Instant::now() < deadline =>
            {
                record = r;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => bail!("producing to {topic}: {e}"),
        }
    }
}

fn finish(p: &ThreadedProducer<Deliveries>, what: &str) -> Result<()> {
    p.flush(Duration::from_secs(120))
        .with_context(|| format!("flushing {what}"))?;
    let failed = p.context().failed.load(Ordering::Relaxed);
    if failed > 0 {
        let last = p
            .context()
            .last_error
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default();
        bail!("{failed} records of {what} were not delivered (last error: {last})");
    }
    Ok(())
}

/// Reads `expected` messages of `topic` as a group member from the earliest offset, doing
/// nothing with them; returns (seconds from first to last message, bytes).
fn bare_consumer(
    bootstrap: &str,
    topic: &str,
    expected: u64,
    properties: &[(String, String)],
) -> Result<(f64, u64)> {
    let mut config = client(bootstrap);
    config
        .set("group.id", unique("bench-bare"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false");
    for (k, v) in properties {
        config.set(k, v);
    }
    let c: BaseConsumer = config.create()?;
    c.subscribe(&[topic])?;
    let deadline = Instant::now() + Duration::from_secs(60) + Duration::from_micros(expected * 200);
    let (mut n, mut bytes) = (0u64, 0u64);
    let mut first = None;
    let mut last = Instant::now();
    while n < expected {
        if Instant::now() >= deadline {
            bail!("the bare consumer read {n} of {expected} messages before its deadline");
        }
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                n += 1;
                bytes += m.payload().map_or(0, <[u8]>::len) as u64;
                last = Instant::now();
                first.get_or_insert(last);
            }
            Some(Err(e)) => eprintln!("bare consumer: {e}"),
            None => {}
        }
    }
    let first = first.unwrap_or(last);
    Ok(((last - first).as_secs_f64(), bytes))
}

/// `GET path` over HTTP/1.0 (no chunked bodies); returns the status and body.
fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let sa: std::net::SocketAddr = addr.parse()?;
    let mut s = std::net::TcpStream::connect_timeout(&sa, REQUEST_TIMEOUT)?;
    s.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// A running engine and its `/metrics` address.
struct Engine {
    proc: Proc,
    http: String,
}

impl Engine {
    #[allow(clippy::too_many_arguments)]
    fn start(
        bin: &Path,
        dir: &Path,
        name: &str,
        bootstrap: &str,
        input: &str,
        alerts: &str,
        dlq: &str,
        checkpoint_interval: Option<u64>,
        source_properties: &[(String, String)],
        repartition: Option<&str>,
    ) -> Result<Self> {
        let http = format!("127.0.0.1:{}", free_port()?);
        let q = |s: &str| serde_json::Value::from(s).to_string();
        let properties: serde_json::Map<String, serde_json::Value> = source_properties
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
            .collect();
        let properties = serde_json::Value::Object(properties);
        let state = dir.join(format!("{name}-state"));
        std::fs::create_dir_all(&state)?;
        let yaml = format!(
            "source:\n  brokers: {}\n  topic: {}\n  group_id: {}\n  properties: {}\n\
             sink:\n  topic: {}\n  format: native\n\
             dead_letter:\n  topic: {}\n\
             rules:\n  paths: [{}]\n\
             state:\n  dir: {}\n{}\
             time:\n  allowed_lateness: 5m\n  max_future_skew: 1m\n\
             http:\n  listen: {}\n{}",
            q(bootstrap),
            q(input),
            q(&unique("bench-cordon")),
            properties,
            q(alerts),
            q(dlq),
            q(&cordon_benches::pack_dir().to_string_lossy()),
            q(&state.to_string_lossy()),
            checkpoint_interval
                .map(|secs| format!("  checkpoint_interval: {secs}s\n"))
                .unwrap_or_default(),
            q(&http),
            repartition
                .map(|topic| format!("repartition:\n  topic: {}\n", q(topic)))
                .unwrap_or_default(),
        );
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(&config, yaml)?;
        let mut cmd = Command::new(bin);
        cmd.arg("run").arg("--config").arg(&config);
        let proc = Proc::spawn("cordon", cmd, dir.join(format!("{name}.log")))?;
        Ok(Self { proc, http })
    }

    /// `cordon_events_consumed_total`, or `None` while the port does not answer.
    fn consumed(&mut self) -> Result<Option<u64>> {
        self.proc.check_alive()?;
        let Ok((200, body)) = http_get(&self.http, "/metrics") else {
            return Ok(None);
        };
        Ok(body
            .lines()
            .find_map(|l| l.strip_prefix("cordon_events_consumed_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64))
    }

    /// CPU time of the engine's main thread (the poll-process-write loop), in ns, from
    /// `/proc` (Linux); `None` elsewhere.
    fn loop_cpu_ns(&self) -> Option<u64> {
        let pid = self.proc.child.id();
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/schedstat"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// Sums every sample of a metric family (all label sets) on `/metrics`, or the one series
    /// `name` names with its labels (`name{label="value"}`).
    fn metric_sum(&mut self, name: &str) -> Result<f64> {
        let (_, body) = http_get(&self.http, "/metrics")?;
        Ok(sum_of(&body, name))
    }

    /// Polls `check` every [`SAMPLE_EVERY`] until it gives a value, for at most `timeout`;
    /// returns when it did and the value. `check` answers `Err(state)` while waiting, and the
    /// last state goes into the error (with the engine's log) when the time is up.
    fn wait_for<T>(
        &mut self,
        timeout: Duration,
        mut check: impl FnMut(&mut Self) -> Result<std::result::Result<T, String>>,
    ) -> Result<(Instant, T)> {
        let deadline = Instant::now() + timeout;
        loop {
            match check(self)? {
                Ok(v) => return Ok((Instant::now(), v)),
                Err(state) if Instant::now() >= deadline => bail!(
                    "{state} within {timeout:?}; the engine's log:\n{}",
                    tail(&self.proc.log)
                ),
                Err(_) => std::thread::sleep(SAMPLE_EVERY),
            }
        }
    }

    /// Waits (bounded) until the engine has consumed at least `n` events; returns when it saw
    /// them first and the count then.
    fn wait_consumed(&mut self, n: u64, timeout: Duration) -> Result<(Instant, u64)> {
        self.wait_for(timeout, |e| {
            let c = e.consumed()?.unwrap_or(0);
            Ok(if c >= n {
                Ok(c)
            } else {
                Err(format!("the engine consumed {c} of {n} events"))
            })
        })
    }
}

/// The input stage's batches and the time in them: its loop is the one whose CPU the table
/// reports (the process's main thread); with `--repartition` the repartition stage's batches
/// are a series of their own.
const INPUT_BATCH_SECONDS: &str = "cordon_batch_duration_seconds_sum{stage=\"input\"}";
const INPUT_BATCHES: &str = "cordon_batch_duration_seconds_count{stage=\"input\"}";

/// The sum of every sample of metric family `name` (all label sets, or the one `name` spells
/// out, `family{label="value"}`) in a `/metrics` scrape.
fn sum_of(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// An alert as read back: arrival wall clock, status, `last_seen` and `detected_at` in ms.
struct Arrival {
    received: i64,
    rule: String,
    status: String,
    last_seen: i64,
    detected: i64,
}

fn parse_ms(v: &serde_json::Value) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Reads `topic` from the start until `stop`, noting each alert's arrival.
fn alert_reader(
    bootstrap: String,
    topic: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<Vec<Arrival>>> {
    std::thread::spawn(move || {
        let c: BaseConsumer = client(&bootstrap)
            .set("group.id", unique("bench-alerts"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()?;
        c.subscribe(&[&topic])?;
        let mut out = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let Some(m) = c.poll(Duration::from_millis(20)) else {
                continue;
            };
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("alert reader: {e}");
                    continue;
                }
            };
            let received = wall_ms();
            let Some(Ok(v)) = m.payload().map(serde_json::from_slice::<serde_json::Value>) else {
                continue;
            };
            if let (Some(last_seen), Some(detected)) =
                (parse_ms(&v["last_seen"]), parse_ms(&v["detected_at"]))
            {
                out.push(Arrival {
                    received,
                    rule: v["rule"]["id"].as_str().unwrap_or("").to_owned(),
                    status: v["status"].as_str().unwrap_or("").to_owned(),
                    last_seen,
                    detected,
                });
            }
        }
        Ok(out)
    })
}

/// The `p` quantile (nearest rank) of sorted values.
fn pct(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// A reasoning-trace harvester's request (what `extraction.cot-harvest` looks for).
fn harvest_event(n: u64, ts: i64) -> (String, Vec<u8>) {
    let account = format!("bench-harvester-{:05}", n / HARVEST_REQUESTS);
    let v = serde_json::json!({
        "ts": ts,
        "account_id": account,
        "ip": format!("198.51.{}.{}", (n / HARVEST_REQUESTS / 250) % 250, 1 + (n / HARVEST_REQUESTS) % 250),
        "request_id": format!("bench-harvest-{n}"),
        "model": "frontier-1",
        "endpoint": "/v1/messages",
        "status": 200,
        "input_tokens": 400,
        "output_tokens": 900 + (n % 300),
        "reasoning_tokens": 2000,
        "prompt_fp": format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&n.to_le_bytes())),
        "labels": ["cot_elicitation", "math"],
    });
    (account, serde_json::to_vec(&v).unwrap_or_default())
}

/// Request `n` of the hydra clusters of the latency stream (`HYDRA_REQUESTS` each): what
/// `extraction.hydra-range` looks for, 25 accounts of one /24 sending prompts of one template.
fn hydra_event(n: u64, ts: i64) -> (String, Vec<u8>) {
    let cluster = n / HYDRA_REQUESTS;
    let account = format!("bench-hydra-{cluster:05}-{:02}", n % 25);
    let v = serde_json::json!({
        "ts": ts,
        "account_id": account,
        "ip": format!("100.{}.{}.{}", 64 + (cluster / 256) % 64, cluster % 256, 1 + n % 25),
        "request_id": format!("bench-hydra-{n}"),
        "model": "frontier-1",
        "endpoint": "/v1/messages",
        "status": 200,
        "input_tokens": 300,
        "output_tokens": 700,
        "template_fp": format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&cluster.to_le_bytes())),
        "prompt_fp": format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&(n ^ 1 << 63).to_le_bytes())),
    });
    (account, serde_json::to_vec(&v).unwrap_or_default())
}

/// Account `n` of the state a long-running engine holds (`--state-accounts`): one ordinary
/// request, the account on a /24 range of its own among 65,536.
fn state_event(n: u64, ts: i64) -> (String, Vec<u8>) {
    let account = format!("bench-state-{n:08}");
    let v = serde_json::json!({
        "ts": ts,
        "account_id": account,
        "ip": format!("10.{}.{}.{}", (n >> 8) & 0xff, n & 0xff, 1 + (n >> 16) % 250),
        "request_id": format!("bench-state-{n}"),
        "model": "frontier-1",
        "endpoint": "/v1/messages",
        "status": 200,
        "input_tokens": 300,
        "output_tokens": 400,
        "prompt_fp": format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&(n | 1 << 62).to_le_bytes())),
        "labels": ["chat"],
    });
    (account, serde_json::to_vec(&v).unwrap_or_default())
}

struct Table {
    rows: Vec<(String, String)>,
    numbers: serde_json::Map<String, serde_json::Value>,
}

impl Table {
    fn row(&mut self, k: &str, v: String) {
        println!("| {k} | {v} |");
        self.rows.push((k.to_owned(), v));
    }
    fn num(&mut self, k: &str, v: impl Into<serde_json::Value>) {
        self.numbers.insert(k.to_owned(), v.into());
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("e2e: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let Args {
        events,
        partitions,
        latency_secs,
        state_accounts,
        checkpoint_interval,
        source_properties: props,
        repartition,
        json,
    } = <Args as clap::Parser>::parse();
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let tansu_bin = executable("TANSU_BIN", "tansu", home.map(|h| h.join("bin/tansu"))).context(
        "tansu not found: cargo install tansu --version 0.6.0 --features dynostore --locked, \
             or set TANSU_BIN",
    )?;
    let cordon_bin = std::env::var_os("CORDON_BIN").map_or_else(
        || std::env::current_exe().map(|e| e.with_file_name("cordon")),
        |p| Ok(PathBuf::from(p)),
    )?;
    if !cordon_bin.is_file() {
        bail!(
            "{} not found: cargo build --release -p cordon-engine --bin cordon, or set CORDON_BIN",
            cordon_bin.display()
        );
    }
    let dir = tempfile::Builder::new().prefix("cordon-e2e-").tempdir()?;
    let tansu = Tansu::start(&tansu_bin, dir.path())?;
    let bootstrap = tansu.bootstrap();
    let (input, alerts, dlq) = tansu.create_topics("bench", partitions)?;

    let mut t = Table {
        rows: Vec::new(),
        numbers: serde_json::Map::new(),
    };
    eprintln!("generating {events} simulator events");
    let sim = cordon_benches::sim_events(events as usize, 7);
    let records: Vec<(String, Vec<u8>)> = sim
        .iter()
        .map(|e| {
            (
                e.account_id.clone(),
                serde_json::to_vec(e).unwrap_or_default(),
            )
        })
        .collect();
    let bytes: usize = records.iter().map(|r| r.1.len()).sum();
    println!("| measure | value |");
    println!("| --- | --- |");
    t.row("machine", cordon_benches::machine());
    t.row(
        "input",
        format!(
            "{events} simulator events, {:.0} bytes each on average, {partitions} partition(s), tansu 0.6 memory storage, 127.0.0.1",
            bytes as f64 / events as f64
        ),
    );
    t.row(
        "consumer properties (bare and engine)",
        if props.is_empty() {
            "librdkafka defaults".to_owned()
        } else {
            props
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        },
    );
    let started = Instant::now();
    let p = producer(&bootstrap)?;
    for (k, v) in &records {
        send(&p, &input, k.as_bytes(), v)?;
    }
    finish(&p, "the input")?;
    drop(p);
    let secs = started.elapsed().as_secs_f64();
    t.row(
        "produce (acks=all, linger 5 ms)",
        format!("{:.0} events/s", events as f64 / secs),
    );
    t.num("produce_events_per_s", events as f64 / secs);

    // (a) The ceiling: a bare consumer with the engine's consumer settings.
    let (secs, read_bytes) = bare_consumer(&bootstrap, &input, events, &props)?;
    let bare = events as f64 / secs.max(1e-9);
    t.row(
        "(a) bare rdkafka consumer",
        format!(
            "{bare:.0} events/s ({:.1} MB/s)",
            read_bytes as f64 / secs / 1e6
        ),
    );
    t.num("bare_events_per_s", bare);
    // For scale: what the broker serves when fetches do not wait. With librdkafka's default
    // `fetch.wait.max.ms` (500) tansu 0.6 serves a fraction of this.
    if !props.iter().any(|(k, _)| k == "fetch.wait.max.ms") {
        let mut quick = props.clone();
        quick.push(("fetch.wait.max.ms".to_owned(), "10".to_owned()));
        let (secs, _) = bare_consumer(&bootstrap, &input, events, &quick)?;
        let rate = events as f64 / secs.max(1e-9);
        t.row(
            "(a, for scale) bare consumer with fetch.wait.max.ms=10",
            format!("{rate:.0} events/s"),
        );
        t.num("bare_fetch_wait_10_events_per_s", rate);
    }

    // (b) The engine on the same topic.
    let repartition_topic = |prefix: &str| -> Result<Option<String>> {
        if !repartition {
            return Ok(None);
        }
        let topic = unique(prefix);
        tansu.create_topic(&topic, partitions)?;
        Ok(Some(topic))
    };
    let rp = repartition_topic("bench-repartition")?;
    let mut engine = Engine::start(
        &cordon_bin,
        dir.path(),
        "throughput",
        &bootstrap,
        &input,
        &alerts,
        &dlq,
        None,
        &props,
        rp.as_deref(),
    )?;
    let (t1, c1) = engine.wait_consumed(1, Duration::from_secs(60))?;
    let (cpu1, batch1) = (
        engine.loop_cpu_ns(),
        engine.metric_sum(INPUT_BATCH_SECONDS)?,
    );
    let timeout = Duration::from_secs(60) + Duration::from_micros(events * 200);
    let (t2, c2) = engine.wait_consumed(events, timeout)?;
    let (cpu2, batch2) = (
        engine.loop_cpu_ns(),
        engine.metric_sum(INPUT_BATCH_SECONDS)?,
    );
    // With the repartition stage: until it has counted every event forwarded.
    let through_both = if rp.is_some() {
        Some(engine.wait_for(timeout, |e| {
            let (_, scrape) = http_get(&e.http, "/metrics")?;
            let result = |r: &str| {
                sum_of(
                    &scrape,
                    &format!("cordon_repartition_messages_total{{result=\"{r}\"}}"),
                )
            };
            let (forwarded, counted) =
                (result("forwarded"), result("counted") + result("replayed"));
            Ok(if counted >= forwarded {
                Ok(forwarded)
            } else {
                Err(format!(
                    "the repartition stage counted {counted} of {forwarded} forwarded events"
                ))
            })
        })?)
    } else {
        None
    };
    let batches = engine.metric_sum(INPUT_BATCHES)?;
    let alerts_out = engine.metric_sum("cordon_alerts_total")?;
    let dead = engine.metric_sum("cordon_dead_letters_total")?;
    drop(engine);
    let wall = (t2 - t1).as_secs_f64().max(1e-9);
    let rate = (c2 - c1) as f64 / wall;
    t.row(
        "(b) cordon run, shipped pack",
        format!(
            "{rate:.0} events/s = {:.1}% of (a) (target >= 90%)",
            100.0 * rate / bare
        ),
    );
    t.num("engine_events_per_s", rate);
    t.num("engine_share_of_bare", rate / bare);
    if let (Some((t3, forwarded)), Some(topic)) = (through_both, &rp) {
        let both = (events - c1) as f64 / (t3 - t1).as_secs_f64().max(1e-9);
        // The repartition topic's messages: frames of forwarded events.
        let c: BaseConsumer = client(&bootstrap).create()?;
        let mut frames = 0i64;
        for p in 0..partitions {
            let (low, high) = c.fetch_watermarks(topic, p, REQUEST_TIMEOUT)?;
            frames += high - low;
        }
        t.row(
            "(b) through both stages, to the last forwarded event counted",
            format!(
                "{both:.0} events/s = {:.1}% of (a); {:.2} forwarded an event, in {frames} messages ({:.0} events each)",
                100.0 * both / bare,
                forwarded / events as f64,
                forwarded / frames.max(1) as f64
            ),
        );
        t.num("engine_both_stages_events_per_s", both);
        t.num("forwarded_per_event", forwarded / events as f64);
        t.num("repartition_messages", frames as f64);
    }
    // Where the engine's time went: its loop thread's CPU and the time inside batches
    // (processing and waiting for the broker to acknowledge alerts and dead letters).
    let cpu = match (cpu1, cpu2) {
        (Some(a), Some(b)) => format!("{:.0}%", 100.0 * (b - a) as f64 / 1e9 / wall),
        _ => "n/a".to_owned(),
    };
    t.row(
        "(b) engine loop (input stage): CPU / time in batches / batches / alerts / dead letters",
        format!(
            "{cpu} / {:.0}% / {batches:.0} ({:.0} events each) / {alerts_out:.0} / {dead:.0}",
            100.0 * (batch2 - batch1) / wall,
            events as f64 / batches.max(1.0)
        ),
    );

    // (c) Latency at half of (b)'s rate, on fresh topics and a fresh engine.
    let (lat_in, lat_alerts, lat_dlq) = tansu.create_topics("bench-lat", partitions)?;
    let mut engine = Engine::start(
        &cordon_bin,
        dir.path(),
        "latency",
        &bootstrap,
        &lat_in,
        &lat_alerts,
        &lat_dlq,
        checkpoint_interval,
        &props,
        repartition_topic("bench-lat-repartition")?.as_deref(),
    )?;
    let p = producer(&bootstrap)?;
    let restamp = |e: &SimEvent| {
        let mut e = e.clone();
        e.ts = wall_ms();
        (
            e.account_id.clone(),
            serde_json::to_vec(&e).unwrap_or_default(),
        )
    };
    // Warm-up: the engine has joined its group and consumes before the clock starts.
    const WARM: u64 = 1_000;
    for e in sim.iter().take(WARM as usize) {
        let (k, v) = restamp(e);
        send(&p, &lat_in, k.as_bytes(), &v)?;
    }
    // The state of a long-running engine: accounts of one event each.
    for i in 0..state_accounts {
        let (k, v) = state_event(i, wall_ms());
        send(&p, &lat_in, k.as_bytes(), &v)?;
    }
    p.flush(Duration::from_secs(60))?;
    engine.wait_consumed(
        WARM + state_accounts,
        Duration::from_secs(60 + state_accounts / 20_000),
    )?;
    // `cordon_state_keys` follows the engine's state walk, every few seconds.
    let mut state_keys = engine.metric_sum("cordon_state_keys")?;
    let asked = Instant::now();
    while state_accounts > 0
        && state_keys < state_accounts as f64
        && asked.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(200));
        state_keys = engine.metric_sum("cordon_state_keys")?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reader = alert_reader(bootstrap.clone(), lat_alerts.clone(), stop.clone());
    let target = rate / 2.0;
    let measured_from = wall_ms();
    let started = Instant::now();
    let (mut sent, mut harvest, mut hydra) = (0u64, 0u64, 0u64);
    let run_for = Duration::from_secs(latency_secs);
    let mut background = sim.iter().cycle().skip(WARM as usize);
    while started.elapsed() < run_for {
        let due = (started.elapsed().as_secs_f64() * target) as u64;
        while sent < due {
            let (k, v) = if sent % HARVEST_EVERY == 0 {
                harvest += 1;
                harvest_event(harvest - 1, wall_ms())
            } else if repartition && sent % HYDRA_EVERY == HARVEST_EVERY / 2 {
                hydra += 1;
                hydra_event(hydra - 1, wall_ms())
            } else {
                background
                    .next()
                    .map(restamp)
                    .context("the simulator gave no events")?
            };
            send(&p, &lat_in, k.as_bytes(), &v)?;
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let paced = sent as f64 / started.elapsed().as_secs_f64();
    finish(&p, "the latency stream")?;
    let drained = engine.wait_consumed(WARM + state_accounts + sent, Duration::from_secs(120));
    let checkpoints = engine.metric_sum("cordon_checkpoint_duration_seconds_count")?;
    // Alerts of the last batches are on their way: give them a moment, then stop reading.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let arrivals = match reader.join() {
        Ok(r) => r?,
        Err(_) => bail!("the alert reader panicked"),
    };
    drained?;
    drop(engine);
    let measured: Vec<&Arrival> = arrivals
        .iter()
        .filter(|a| a.last_seen >= measured_from)
        .collect();
    let mut latency: Vec<i64> = measured.iter().map(|a| a.received - a.last_seen).collect();
    let mut engine_side: Vec<i64> = measured.iter().map(|a| a.detected - a.last_seen).collect();
    latency.sort_unstable();
    engine_side.sort_unstable();
    let updates = measured.iter().filter(|a| a.status == "update").count();
    t.row(
        "(c) latency stream",
        format!(
            "{paced:.0} events/s paced (half of (b): {target:.0}) for {latency_secs} s, 10% from {} harvester accounts{}",
            harvest.div_ceil(HARVEST_REQUESTS),
            if repartition {
                format!(", 5% from {} hydra clusters", hydra.div_ceil(HYDRA_REQUESTS))
            } else {
                String::new()
            }
        ),
    );
    let every = checkpoint_interval.unwrap_or(30);
    if state_accounts > 0 {
        t.row(
            "(c) engine state during the stream",
            format!(
                "{state_keys:.0} keys after {state_accounts} one-event accounts; {checkpoints:.0} partition checkpoints written by the end, every {every} s"
            ),
        );
        t.num("latency_state_keys", state_keys);
    } else {
        t.row(
            "(c) checkpoints",
            format!("{checkpoints:.0} partition checkpoints written by the end, every {every} s"),
        );
    }
    t.row(
        "(c) alerts measured",
        format!(
            "{} ({} new, {updates} update)",
            measured.len(),
            measured.len() - updates
        ),
    );
    t.row(
        "(c) event-to-alert latency, arrival − last_seen, p50 / p90 / p99 / max",
        format!(
            "{} / {} / {} / {} ms (target p99 <= 1000 ms)",
            pct(&latency, 0.5),
            pct(&latency, 0.9),
            pct(&latency, 0.99),
            latency.last().copied().unwrap_or(0)
        ),
    );
    t.row(
        "(c) engine side, detected_at − last_seen, p50 / p90 / p99",
        format!(
            "{} / {} / {} ms",
            pct(&engine_side, 0.5),
            pct(&engine_side, 0.9),
            pct(&engine_side, 0.99)
        ),
    );
    // With the repartition stage, each stage's alerts apart: the hydra clusters' come through
    // the repartition topic.
    if repartition {
        for (what, rule) in [
            (
                "input stage, extraction.cot-harvest",
                "extraction.cot-harvest",
            ),
            (
                "repartition stage, extraction.hydra-range",
                "extraction.hydra-range",
            ),
        ] {
            let mut of_rule: Vec<i64> = measured
                .iter()
                .filter(|a| a.rule == rule)
                .map(|a| a.received - a.last_seen)
                .collect();
            of_rule.sort_unstable();
            t.row(
                &format!("(c) latency, {what}: alerts, p50 / p90 / p99 / max"),
                format!(
                    "{}, {} / {} / {} / {} ms",
                    of_rule.len(),
                    pct(&of_rule, 0.5),
                    pct(&of_rule, 0.9),
                    pct(&of_rule, 0.99),
                    of_rule.last().copied().unwrap_or(0)
                ),
            );
            t.num(&format!("latency_ms_p99_{rule}"), pct(&of_rule, 0.99));
        }
    }
    t.num("latency_events_per_s", paced);
    t.num("latency_alerts", measured.len());
    for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
        t.num(&format!("latency_ms_{name}"), pct(&latency, q));
        t.num(&format!("detect_ms_{name}"), pct(&engine_side, q));
    }
    drop(tansu);

    if let Some(path) = &json {
        let rows: serde_json::Map<String, serde_json::Value> = t
            .rows
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        let doc = serde_json::json!({ "table": rows, "numbers": t.numbers });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
