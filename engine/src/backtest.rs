//! `cordon backtest`: rules over recorded traffic, through the same core as `cordon run`.
//!
//! Inputs are JSONL files (one event schema v1 object per line, as on the requests topic) and
//! Parquet files (read with DataFusion, rows rendered back to the same JSON the gateway writes),
//! named directly or by glob. Every message is read, put in event-time order (stable, so ties
//! keep file order), and fed to one [`Processor`] in batches, with the clock at the latest event
//! time seen: the alerts, and their ids, are the ones a live engine raises over the same events
//! on one input partition. A line that does not decode is counted by reason, never fatal.
//!
//! With a ground-truth file from `cordon simulate`, the report says per campaign whether and
//! when (event time) it was detected, and per rule how many `new` alerts fell on benign
//! entities, as false positives per 10,000 benign accounts per day.
//!
//! The whole input is held in memory while sorted: about the size of the files, so a day of a
//! large gateway wants a machine with that much memory, or the backtest run per hour of files.

use crate::decode::event_time;
use crate::gate::Status;
use crate::processor::{AlertRecord, CoreConfig, Input, Output, Processor};
use crate::simulate::Truth;
use anyhow::Context;
use cordon_rules::RuleSet;
use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Messages per batch given to the processor (the live engine's default batch size).
pub const BATCH: usize = 4096;

/// What to backtest.
#[derive(Debug, Clone, Default)]
pub struct BacktestOptions {
    /// Event files or globs (`*.jsonl`, `*.json`, `*.parquet`; other names are read as JSONL).
    pub events: Vec<String>,
    /// Where to write the alerts (alert schema v1, one per line).
    pub out: Option<PathBuf>,
    /// Ground truth from `cordon simulate --truth`.
    pub truth: Option<PathBuf>,
    /// Show a progress bar on stderr (when it is a terminal).
    pub progress: bool,
}

/// A campaign's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CampaignResult {
    /// Campaign id.
    pub id: String,
    /// Campaign kind.
    pub kind: String,
    /// Whether any `new` alert named one of its identifiers.
    pub detected: bool,
    /// Event time from the campaign's start to its first alert, seconds.
    pub time_to_detect_secs: Option<f64>,
    /// Rules that alerted on it.
    pub rules: Vec<String>,
}

/// Detection quality against ground truth.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    /// Per campaign.
    pub campaigns: Vec<CampaignResult>,
    /// Benign accounts in the truth.
    pub benign_accounts: u32,
    /// Days of traffic.
    pub days: f64,
    /// `new` alerts on benign entities, per rule (every rule listed).
    pub false_positives: BTreeMap<String, u64>,
    /// The same per 10,000 benign accounts per day.
    pub false_positives_per_10k_accounts_per_day: BTreeMap<String, f64>,
}

/// What a backtest did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Files read.
    pub files: usize,
    /// Messages read (lines or rows).
    pub messages: u64,
    /// Events processed.
    pub events: u64,
    /// Messages refused, by reason.
    pub malformed: BTreeMap<String, u64>,
    /// `new` alerts per rule (every rule listed).
    pub alerts: BTreeMap<String, u64>,
    /// `update` alerts per rule.
    pub updates: BTreeMap<String, u64>,
    /// Most keys held at once.
    pub peak_keys: u64,
    /// Seconds spent reading and sorting.
    pub read_secs: f64,
    /// Seconds spent in the engine.
    pub process_secs: f64,
    /// Events per second through the engine.
    pub events_per_sec: f64,
    /// Detection quality, with a truth file.
    pub detection: Option<Detection>,
}

/// One message with its event time (`None` when it has none it can be sorted by).
struct Message {
    ts: Option<i64>,
    payload: Vec<u8>,
}

/// Expands `patterns` into files, in order; a pattern matching nothing is an error.
pub fn expand(patterns: &[String]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in patterns {
        if p.contains(['*', '?', '[']) {
            let before = files.len();
            for entry in glob::glob(p).with_context(|| format!("bad glob `{p}`"))? {
                files.push(entry.with_context(|| format!("reading glob `{p}`"))?);
            }
            files[before..].sort();
            anyhow::ensure!(files.len() > before, "`{p}` matches no file");
        } else {
            let path = PathBuf::from(p);
            anyhow::ensure!(path.is_file(), "{p}: no such file");
            files.push(path);
        }
    }
    Ok(files)
}

fn is_parquet(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
}

/// Reads a JSONL file into messages.
fn read_jsonl(path: &Path, out: &mut Vec<Message>) -> anyhow::Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    for line in bytes.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.trim_ascii().is_empty() {
            continue;
        }
        out.push(Message {
            ts: event_time(line),
            payload: line.to_vec(),
        });
    }
    Ok(())
}

/// Reads a Parquet file with DataFusion and renders each row as the gateway's JSON.
fn read_parquet(path: &Path, out: &mut Vec<Message>) -> anyhow::Result<()> {
    use datafusion::prelude::{ParquetReadOptions, SessionContext};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .context("starting the Parquet reader")?;
    let path_text = path.to_string_lossy().into_owned();
    let batches = runtime
        .block_on(async {
            let ctx = SessionContext::new();
            ctx.read_parquet(path_text.as_str(), ParquetReadOptions::default())
                .await?
                .collect()
                .await
        })
        .with_context(|| format!("reading Parquet {}", path.display()))?;
    for batch in batches {
        let batch = timestamps_as_millis(&batch)?;
        let mut buf = Vec::new();
        {
            let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(&mut buf);
            writer.write(&batch)?;
            writer.finish()?;
        }
        read_lines(&buf, out);
    }
    Ok(())
}

fn read_lines(bytes: &[u8], out: &mut Vec<Message>) {
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        out.push(Message {
            ts: event_time(line),
            payload: line.to_vec(),
        });
    }
}

/// Timestamp columns as epoch milliseconds (integers), which event schema v1 takes as is;
/// Arrow's JSON writer would otherwise write them without a zone offset.
fn timestamps_as_millis(batch: &RecordBatch) -> anyhow::Result<RecordBatch> {
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        match field.data_type() {
            DataType::Timestamp(_, tz) => {
                let ms = cast(
                    column,
                    &DataType::Timestamp(TimeUnit::Millisecond, tz.clone()),
                )?;
                let ms = cast(&ms, &DataType::Int64)?;
                fields.push(Field::new(field.name(), DataType::Int64, true));
                columns.push(ms);
            }
            _ => {
                fields.push(field.as_ref().clone());
                columns.push(column.clone());
            }
        }
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// Runs `rules` over the events of `opts`; writes alerts to `opts.out` and returns the report.
pub fn run(rules: &RuleSet, opts: &BacktestOptions) -> anyhow::Result<Report> {
    let started = Instant::now();
    let files = expand(&opts.events)?;
    let mut messages = Vec::new();
    for f in &files {
        if is_parquet(f) {
            read_parquet(f, &mut messages)?;
        } else {
            read_jsonl(f, &mut messages)?;
        }
    }
    // Stable: ties keep file order. Messages without a usable `ts` go first, to be refused.
    messages.sort_by_key(|m| m.ts.unwrap_or(i64::MIN));
    let read_secs = started.elapsed().as_secs_f64();

    let truth: Option<Truth> = match &opts.truth {
        Some(p) => Some(
            serde_json::from_slice(
                &std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
            )
            .with_context(|| format!("{} is not a cordon.truth.v1 file", p.display()))?,
        ),
        None => None,
    };
    let mut out_file = match &opts.out {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };

    let bar = if opts.progress && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let bar = indicatif::ProgressBar::new(messages.len() as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {human_pos}/{human_len} events ({per_sec}, eta {eta})",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };

    let processing = Instant::now();
    let mut processor = Processor::new(rules, CoreConfig::default());
    let mut report = Report {
        files: files.len(),
        messages: messages.len() as u64,
        events: 0,
        malformed: BTreeMap::new(),
        alerts: rules.rules.iter().map(|r| (r.rule.id.clone(), 0)).collect(),
        updates: rules.rules.iter().map(|r| (r.rule.id.clone(), 0)).collect(),
        peak_keys: 0,
        read_secs,
        process_secs: 0.0,
        events_per_sec: 0.0,
        detection: None,
    };
    let mut new_alerts: Vec<AlertRecord> = Vec::new();
    let mut now = i64::MIN;
    // Messages without an event time are refused anyway; giving them their own batch keeps the
    // batches of the rest, and so every alert, the same with or without them.
    let unsorted = messages.iter().take_while(|m| m.ts.is_none()).count();
    let (head, tail) = messages.split_at(unsorted);
    let chunks = head.chunks(BATCH).chain(tail.chunks(BATCH));
    let mut offset = 0i64;
    // One output for every batch, as `cordon run` keeps it ([`Output::clear`]).
    let mut out = Output::default();
    for (i, chunk) in chunks.enumerate() {
        now = chunk.iter().filter_map(|m| m.ts).fold(now, i64::max);
        let inputs = Input::sequence(0, offset + 1, chunk.iter().map(|m| m.payload.as_slice()));
        offset += chunk.len() as i64;
        out.clear();
        processor.process(&inputs, now, &mut out)?;
        report.events += out.stats.events;
        for (reason, n) in &out.stats.rejected {
            *report
                .malformed
                .entry(reason.as_str().to_owned())
                .or_default() += n;
        }
        for a in out.alerts.drain(..) {
            if let Some(w) = out_file.as_mut() {
                serde_json::to_writer(&mut *w, &a.alert)?;
                w.write_all(b"\n")?;
            }
            let counts = if a.alert.status == Status::New {
                &mut report.alerts
            } else {
                &mut report.updates
            };
            *counts.entry(a.alert.rule.id.clone()).or_default() += 1;
            if a.alert.status == Status::New {
                new_alerts.push(a);
            }
        }
        if i % 64 == 63 {
            processor.expire_idle(now);
        }
        report.peak_keys = report.peak_keys.max(processor.live_keys());
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    if let Some(mut w) = out_file {
        w.flush()?;
    }
    report.process_secs = processing.elapsed().as_secs_f64();
    report.events_per_sec = report.events as f64 / report.process_secs.max(1e-9);
    report.detection = truth.map(|t| {
        let accounts = sample_accounts(&messages, &new_alerts);
        score(&t, rules, &new_alerts, &accounts)
    });
    Ok(report)
}

/// The account of every request id the alerts carry as samples.
fn sample_accounts(messages: &[Message], alerts: &[AlertRecord]) -> HashMap<String, String> {
    #[derive(serde::Deserialize)]
    struct Ids<'a> {
        #[serde(borrow)]
        request_id: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow)]
        account_id: Option<std::borrow::Cow<'a, str>>,
    }
    let wanted: std::collections::HashSet<&str> = alerts
        .iter()
        .flat_map(|a| a.alert.sample_request_ids.iter().map(String::as_str))
        .collect();
    let mut accounts = HashMap::new();
    if wanted.is_empty() {
        return accounts;
    }
    for m in messages {
        if let Ok(Ids {
            request_id: Some(r),
            account_id: Some(a),
        }) = serde_json::from_slice(&m.payload)
            && wanted.contains(r.as_ref())
        {
            accounts.insert(r.into_owned(), a.into_owned());
        }
    }
    accounts
}

/// Scores `new` alerts against the ground truth. An alert belongs to a campaign when its entity
/// is one of the campaign's identifiers, or when most of its sample requests come from the
/// campaign's accounts (an alert on a shared value, such as a common browser fingerprint,
/// raised by the campaign's traffic); `accounts` maps sample request ids to accounts.
pub fn score(
    truth: &Truth,
    rules: &RuleSet,
    alerts: &[AlertRecord],
    accounts: &HashMap<String, String>,
) -> Detection {
    let mut owner: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut account_owner: HashMap<&str, usize> = HashMap::new();
    for (i, c) in truth.campaigns.iter().enumerate() {
        for id in &c.identifiers {
            owner.entry(id.as_str()).or_default().push(i);
        }
        for a in &c.accounts {
            account_owner.insert(a.as_str(), i);
        }
    }
    let by_samples = |a: &AlertRecord| -> Option<Vec<usize>> {
        let ids = &a.alert.sample_request_ids;
        let mut votes: HashMap<usize, usize> = HashMap::new();
        for id in ids {
            if let Some(c) = accounts
                .get(id)
                .and_then(|acct| account_owner.get(acct.as_str()))
            {
                *votes.entry(*c).or_default() += 1;
            }
        }
        votes
            .into_iter()
            .find(|(_, n)| 2 * n > ids.len())
            .map(|(c, _)| vec![c])
    };
    let mut campaigns: Vec<CampaignResult> = truth
        .campaigns
        .iter()
        .map(|c| CampaignResult {
            id: c.id.clone(),
            kind: c.kind.clone(),
            detected: false,
            time_to_detect_secs: None,
            rules: Vec::new(),
        })
        .collect();
    let mut false_positives: BTreeMap<String, u64> =
        rules.rules.iter().map(|r| (r.rule.id.clone(), 0)).collect();
    for a in alerts {
        let rule = &a.alert.rule.id;
        match owner
            .get(a.alert.entity.value.as_str())
            .cloned()
            .or_else(|| by_samples(a))
        {
            Some(owners) => {
                for i in &owners {
                    let c = &mut campaigns[*i];
                    c.detected = true;
                    let ttd =
                        (a.times.detected - truth.campaigns[*i].start_ms).max(0) as f64 / 1000.0;
                    c.time_to_detect_secs =
                        Some(c.time_to_detect_secs.map_or(ttd, |t: f64| t.min(ttd)));
                    if !c.rules.contains(rule) {
                        c.rules.push(rule.clone());
                    }
                }
            }
            None => *false_positives.entry(rule.clone()).or_default() += 1,
        }
    }
    let days = f64::from(truth.hours) / 24.0;
    let per =
        |n: u64| n as f64 / (f64::from(truth.benign_accounts.max(1)) / 10_000.0) / days.max(1e-9);
    Detection {
        false_positives_per_10k_accounts_per_day: false_positives
            .iter()
            .map(|(r, n)| (r.clone(), per(*n)))
            .collect(),
        campaigns,
        benign_accounts: truth.benign_accounts,
        days,
        false_positives,
    }
}

fn human_secs(s: f64) -> String {
    humantime::format_duration(Duration::from_secs(s.round() as u64)).to_string()
}

/// The report as the command prints it.
pub fn render(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "read {} message(s) from {} file(s) in {:.1}s; {} event(s) through the engine in {:.1}s ({:.0} events/s); at most {} keys",
        r.messages, r.files, r.read_secs, r.events, r.process_secs, r.events_per_sec, r.peak_keys
    );
    if r.malformed.is_empty() {
        let _ = writeln!(s, "malformed: none");
    } else {
        let list: Vec<String> = r
            .malformed
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(s, "malformed: {}", list.join(", "));
    }
    let _ = writeln!(s, "\n{:<36} {:>8} {:>8}", "rule", "new", "update");
    for (rule, n) in &r.alerts {
        let _ = writeln!(
            s,
            "{rule:<36} {n:>8} {:>8}",
            r.updates.get(rule).unwrap_or(&0)
        );
    }
    if let Some(d) = &r.detection {
        let detected = d.campaigns.iter().filter(|c| c.detected).count();
        let _ = writeln!(
            s,
            "\ncampaigns detected: {detected} of {} ({} benign accounts, {:.2} day(s))",
            d.campaigns.len(),
            d.benign_accounts,
            d.days
        );
        let _ = writeln!(
            s,
            "{:<28} {:>9} {:>14}  rules",
            "campaign", "detected", "time to detect"
        );
        for c in &d.campaigns {
            let _ = writeln!(
                s,
                "{:<28} {:>9} {:>14}  {}",
                c.id,
                if c.detected { "yes" } else { "NO" },
                c.time_to_detect_secs.map_or("-".into(), human_secs),
                c.rules.join(", ")
            );
        }
        let _ = writeln!(
            s,
            "\n{:<36} {:>8} {:>22}",
            "rule", "false +", "per 10k accounts/day"
        );
        for (rule, n) in &d.false_positives {
            let _ = writeln!(
                s,
                "{rule:<36} {n:>8} {:>22.2}",
                d.false_positives_per_10k_accounts_per_day
                    .get(rule)
                    .unwrap_or(&0.0)
            );
        }
    }
    s
}
