//! `cordon demo`: the whole path on one machine with nothing installed.
//!
//! Starts librdkafka's in-process mock cluster, a traffic generator (benign users, an office
//! behind one range, and an extraction campaign: one reasoning-trace harvester and a hydra
//! cluster of accounts behind one /24 sharing a prompt template), the engine with the shipped
//! extraction pack, and a consumer of the alerts topic that prints each alert as it fires.

use crate::config::Config;
use crate::runtime;
use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The shipped extraction pack, embedded so the demo needs no files: (path, text) of every
/// rule file under rules/packs/extraction, listed by build.rs.
pub const EMBEDDED_PACK: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/pack.rs"));

const TOPIC: &str = "requests";
const ALERTS: &str = "cordon-alerts";
const DLQ: &str = "cordon-dlq";

/// Options of the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Stop after this long (None: run until Ctrl-C).
    pub duration: Option<Duration>,
    /// Seed of the traffic generator.
    pub seed: u64,
}

/// Runs the demo until Ctrl-C or the duration passes. Returns the number of alerts printed.
pub fn run(opts: &DemoOptions, shutdown: Arc<AtomicBool>) -> anyhow::Result<u64> {
    let cluster = MockCluster::new(1).context("starting the in-process Kafka cluster")?;
    // One input partition: state is per input partition, and entities the gateway does not key by
    // (IP ranges) need the repartition stage of DESIGN.md (Scale-out) to meet across partitions.
    for (topic, partitions) in [(TOPIC, 1), (ALERTS, 1), (DLQ, 1)] {
        cluster
            .create_topic(topic, partitions, 1)
            .with_context(|| format!("creating topic {topic}"))?;
    }
    let brokers = cluster.bootstrap_servers();
    let state_dir = tempfile_dir()?;
    let config_text = format!(
        "source:\n  brokers: {brokers}\n  topic: {TOPIC}\n  group_id: cordon-demo\n  max_batch_wait: 50ms\n\
sink:\n  topic: {ALERTS}\ndead_letter:\n  topic: {DLQ}\nstate:\n  dir: {}\nhttp:\n  listen: 127.0.0.1:0\n",
        state_dir.display()
    );
    let config = Config::from_yaml(&config_text, "demo", Vec::new())?;
    let sources: Vec<(String, String)> = EMBEDDED_PACK
        .iter()
        .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
        .collect();
    let rules = cordon_rules::load_sources(&sources).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "cordon demo: in-process Kafka at {brokers}; rules: {}",
        rule_names(&rules)
    );
    println!(
        "traffic: 300 benign users, an office of 40 users behind 192.0.2.0/24, one reasoning-trace \
harvester (acct-harvest-1) and a hydra cluster of 30 accounts behind 198.51.100.0/24"
    );
    println!("alerts print below as they fire; Ctrl-C to stop\n");

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let generator = {
        let (brokers, stop, sent, seed) = (brokers.clone(), stop.clone(), sent.clone(), opts.seed);
        std::thread::Builder::new()
            .name("demo-traffic".into())
            .spawn(move || generate(&brokers, seed, &stop, &sent))?
    };
    let engine = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("cordon-engine".into())
            .spawn(move || runtime::run(&config, &rules, &stop))?
    };
    let printed = print_alerts(&brokers, &stop, &shutdown, opts.duration);
    stop.store(true, Ordering::Relaxed);
    let gen_result = generator
        .join()
        .map_err(|_| anyhow::anyhow!("traffic generator panicked"))?;
    let engine_result = engine
        .join()
        .map_err(|_| anyhow::anyhow!("engine panicked"))?;
    gen_result?;
    let totals = engine_result?;
    println!(
        "\ndemo stopped: {} requests sent, {} events processed, {} alerts",
        sent.load(Ordering::Relaxed),
        totals.events,
        totals.alerts
    );
    let _ = std::fs::remove_dir_all(&state_dir);
    printed
}

fn rule_names(rules: &cordon_rules::RuleSet) -> String {
    rules
        .rules
        .iter()
        .map(|r| r.rule.id.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("cordon-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

const TOPICS_OF_INTEREST: &[&str] = &[
    "how do I center a div",
    "summarize this meeting transcript",
    "write a haiku about autumn",
    "explain this rust borrow checker error",
    "draft a polite reply to my landlord",
    "translate this paragraph to spanish",
    "what is the capital of mongolia",
    "suggest a name for my cat",
];

/// Produces demo traffic stamped with the wall clock until `stop`.
fn generate(brokers: &str, seed: u64, stop: &AtomicBool, sent: &AtomicU64) -> anyhow::Result<()> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()
        .context("creating the demo producer")?;
    let mut rng = StdRng::seed_from_u64(seed);
    let tick = Duration::from_millis(100);
    let mut n: u64 = 0;
    let mut ticks: u32 = 0;
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let ts = chrono::Utc::now().timestamp_millis();
        let mut events: Vec<(String, serde_json::Value)> = Vec::new();
        // Benign users: 300 accounts, each about one request a minute, on their own addresses.
        for _ in 0..rng.random_range(0..3) {
            let u = rng.random_range(0..300);
            let topic = TOPICS_OF_INTEREST[rng.random_range(0..TOPICS_OF_INTEREST.len())];
            events.push(event(
                &mut n,
                ts,
                &format!("acct-user-{u}"),
                &format!("10.{}.{}.{}", u % 7, u / 7, 10 + u % 200),
                &format!("{topic} ({})", rng.random::<u32>()),
                &[],
                rng.random_range(50..600),
            ));
        }
        // An office: 40 people behind one /24, varied prompts.
        if rng.random_bool(0.4) {
            let u = rng.random_range(0..40);
            let topic = TOPICS_OF_INTEREST[rng.random_range(0..TOPICS_OF_INTEREST.len())];
            events.push(event(
                &mut n,
                ts,
                &format!("acct-office-{u}"),
                &format!("192.0.2.{}", 10 + u),
                &format!("{topic}, version {}", rng.random::<u32>()),
                &[],
                rng.random_range(50..600),
            ));
        }
        // The harvester: three requests a tick, every prompt distinct, asking for reasoning.
        for _ in 0..3 {
            let q = rng.random::<u32>();
            events.push(event(&mut n, ts, "acct-harvest-1", "203.0.113.45", &format!("Solve problem {q} and think step by step, showing every intermediate reasoning step before the final answer."), &["cot_elicitation"], rng.random_range(1500..4000)));
        }
        // The hydra: 30 accounts behind one /24, all filling one template.
        for _ in 0..3 {
            let a = rng.random_range(0..30);
            let q = rng.random::<u32>();
            events.push(event(
                &mut n,
                ts,
                &format!("acct-hydra-{a}"),
                &format!("198.51.100.{}", 20 + a),
                &format!(
                    "You are an expert. Answer question {q} in full detail: \"{}\"",
                    rng.random::<u64>()
                ),
                &[],
                rng.random_range(800..2000),
            ));
        }
        for (key, ev) in &events {
            let payload = serde_json::to_vec(ev)?;
            let mut record = BaseRecord::to(TOPIC).key(key.as_str()).payload(&payload);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        record = r;
                        producer.poll(Duration::from_millis(10));
                    }
                }
            }
            sent.fetch_add(1, Ordering::Relaxed);
        }
        producer.poll(Duration::ZERO);
        // One tick of traffic per 100 ms of wall clock.
        ticks += 1;
        let due = tick * ticks;
        std::thread::sleep(due.saturating_sub(started.elapsed()));
    }
    producer.flush(Duration::from_secs(5))?;
    Ok(())
}

fn event(
    n: &mut u64,
    ts: i64,
    account: &str,
    ip: &str,
    prompt: &str,
    labels: &[&str],
    out_tokens: u32,
) -> (String, serde_json::Value) {
    *n += 1;
    let v = serde_json::json!({
        "ts": ts,
        "account_id": account,
        "ip": ip,
        "request_id": format!("req-{n}"),
        "model": "frontier-1",
        "endpoint": "/v1/messages",
        "status": 200,
        "input_tokens": prompt.len() / 4,
        "output_tokens": out_tokens,
        "prompt": prompt,
        "labels": labels,
    });
    (account.to_owned(), v)
}

/// Prints alerts from the alerts topic until Ctrl-C or the duration passes.
fn print_alerts(
    brokers: &str,
    stop: &AtomicBool,
    shutdown: &AtomicBool,
    duration: Option<Duration>,
) -> anyhow::Result<u64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "cordon-demo-printer")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .context("creating the alert printer")?;
    consumer.subscribe(&[ALERTS])?;
    let started = Instant::now();
    let mut printed = 0;
    while !shutdown.load(Ordering::Relaxed)
        && !stop.load(Ordering::Relaxed)
        && duration.is_none_or(|d| started.elapsed() < d)
    {
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "alert printer");
                continue;
            }
        };
        let Some(payload) = msg.payload() else {
            continue;
        };
        let alert: serde_json::Value = serde_json::from_slice(payload)?;
        let features = alert["features"]
            .as_object()
            .map(|f| {
                f.iter()
                    .map(|(k, v)| match v.as_f64() {
                        Some(x) if v.is_f64() => format!("{k}={x:.2}"),
                        _ => format!("{k}={v}"),
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        println!(
            "[{:>6.1}s] ALERT {} {:<8} {} {}={}  {}  (alert_id {})",
            started.elapsed().as_secs_f64(),
            alert["status"].as_str().unwrap_or("?"),
            alert["rule"]["severity"].as_str().unwrap_or("?"),
            alert["rule"]["id"].as_str().unwrap_or("?"),
            alert["entity"]["kind"].as_str().unwrap_or("?"),
            alert["entity"]["value"].as_str().unwrap_or("?"),
            features,
            alert["alert_id"].as_str().unwrap_or("?"),
        );
        printed += 1;
    }
    Ok(printed)
}
