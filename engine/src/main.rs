//! The `cordon` command.

use anyhow::Context;
use clap::{Parser, Subcommand};
use cordon_engine::config::Config;
use cordon_engine::{demo, runtime};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Cordon: streaming detection of model-extraction and distillation campaigns.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine against Kafka.
    Run {
        /// Config v1 file (YAML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run an in-process demo: Kafka, traffic with an extraction campaign, the shipped rules.
    Demo {
        /// Stop after this long (e.g. 60s); default: until Ctrl-C.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Seed of the traffic generator.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Generate API traffic with extraction campaigns and its ground truth.
    Simulate(SimulateArgs),
    /// Run rules over recorded events (JSONL, Parquet) and report; with ground truth, score.
    Backtest {
        /// Rule files or directories.
        #[arg(long, required = true, num_args = 1..)]
        rules: Vec<PathBuf>,
        /// Event files or globs (*.jsonl, *.parquet).
        #[arg(long, required = true, num_args = 1..)]
        events: Vec<String>,
        /// Write alerts (alert schema v1, JSONL) here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Ground truth from `cordon simulate --truth`.
        #[arg(long)]
        truth: Option<PathBuf>,
        /// Print the report as JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Work with rule files.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Validate rule files and directories; prints every error, exits 1 on any.
    Validate {
        /// Files or directories of *.yaml rules.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Run every rule's `tests:` fixtures through the engine; exits 1 on any failed case.
    Test {
        /// Files or directories of *.yaml rules.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Print the JSON Schema of the rule format (for editors: `# yaml-language-server: $schema=`).
    Schema,
}

/// Log output format, from env `CORDON_LOG_FORMAT`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LogFormat {
    /// Human-readable lines (the default).
    Text,
    /// One JSON object per line, event fields at the top level.
    Json,
}

impl LogFormat {
    fn from_env() -> anyhow::Result<Self> {
        match std::env::var("CORDON_LOG_FORMAT") {
            Err(std::env::VarError::NotPresent) => Ok(Self::Text),
            Ok(v) if v.eq_ignore_ascii_case("text") => Ok(Self::Text),
            Ok(v) if v.eq_ignore_ascii_case("json") => Ok(Self::Json),
            Ok(v) => anyhow::bail!(
                "environment variable CORDON_LOG_FORMAT: `{v}` is not a log format; use `text` or `json`"
            ),
            Err(e) => anyhow::bail!("environment variable CORDON_LOG_FORMAT: {e}"),
        }
    }
}

/// Logs to stderr in `format`, at the level `RUST_LOG` sets (else `default`).
fn init_logging(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_ansi(false)
            .init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = match LogFormat::from_env() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Run { config } => {
            init_logging("info", log_format);
            run(&config)
        }
        Command::Demo { duration, seed } => {
            init_logging("warn", log_format);
            runtime::shutdown_flag()
                .and_then(|flag| demo::run(&demo::DemoOptions { duration, seed }, flag))
                .map(|_| ())
        }
        Command::Simulate(args) => {
            init_logging("warn", log_format);
            simulate(args)
        }
        Command::Backtest {
            rules,
            events,
            out,
            truth,
            json,
        } => {
            init_logging("warn", log_format);
            backtest(&rules, events, out, truth, json)
        }
        Command::Rules { command } => match command {
            RulesCommand::Validate { paths } => validate(&paths),
            RulesCommand::Test { paths } => test_rules(&paths),
            RulesCommand::Schema => {
                let schema = cordon_rules::jsonschema::rule_schema();
                serde_json::to_string_pretty(&schema)
                    .map_err(anyhow::Error::from)
                    .and_then(|s| print_out(&format!("{s}\n")))
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let rules = runtime::load_rules(&config).context("loading rules")?;
    let shutdown = runtime::shutdown_flag()?;
    runtime::run(&config, &rules, &shutdown)?;
    Ok(())
}

fn validate(paths: &[PathBuf]) -> anyhow::Result<()> {
    let set = cordon_rules::load_paths(paths).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "{} rule(s) valid ({} enabled, {} disabled)",
        set.len() + set.disabled.len(),
        set.len(),
        set.disabled.len()
    );
    Ok(())
}

fn test_rules(paths: &[PathBuf]) -> anyhow::Result<()> {
    let set = cordon_rules::load_paths(paths).map_err(|e| anyhow::anyhow!("{e}"))?;
    let reports = cordon_engine::ruletest::run_all(&set);
    let untested: Vec<String> = set
        .rules
        .iter()
        .filter(|r| r.rule.tests.is_empty())
        .map(|r| r.rule.id.clone())
        .collect();
    let mut text = cordon_engine::ruletest::render(&reports, &untested);
    if !set.disabled.is_empty() {
        text.push_str(&format!(
            "not run (disabled): {}\n",
            set.disabled.join(", ")
        ));
    }
    print_out(&text)?;
    let failed = reports.iter().filter(|r| !r.passed()).count();
    if failed > 0 {
        anyhow::bail!("{failed} rule test case(s) failed");
    }
    Ok(())
}

/// Writes to stdout; a closed pipe (`| head`) ends the output quietly instead of panicking.
fn print_out(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// `cordon simulate`'s arguments.
#[derive(clap::Args)]
struct SimulateArgs {
    /// Hours of traffic.
    #[arg(long, default_value_t = 24)]
    hours: u32,
    /// Seed: the same seed gives the same traffic.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Event time of the first hour (RFC 3339).
    #[arg(long, default_value = "2026-03-01T00:00:00Z")]
    start: String,
    /// Benign accounts.
    #[arg(long, default_value_t = 10_000)]
    accounts: u32,
    /// Campaign kinds to run, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    campaigns: Vec<String>,
    /// Multiply each campaign's number of accounts.
    #[arg(long, default_value_t = 1.0)]
    campaign_scale: f64,
    /// 0 (blatant) to 0.9: campaigns send proportionally fewer requests.
    #[arg(long, default_value_t = 0.0)]
    stealth: f64,
    /// Write events here: JSONL, or Parquet when the name ends in .parquet; `-` is stdout.
    #[arg(long, conflicts_with_all = ["brokers", "topic"], required_unless_present = "brokers")]
    out: Option<PathBuf>,
    /// Produce events to Kafka at these brokers (with --topic), keyed by account.
    #[arg(long, requires = "topic")]
    brokers: Option<String>,
    /// The Kafka topic.
    #[arg(long)]
    topic: Option<String>,
    /// Write the ground truth (JSON) here.
    #[arg(long)]
    truth: Option<PathBuf>,
}

fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    use cordon_engine::simulate::{self, CAMPAIGN_KINDS, JsonlSink, ParquetSink, SimOptions};
    let start_ms = chrono::DateTime::parse_from_rfc3339(&args.start)
        .with_context(|| format!("--start `{}` is not RFC 3339", args.start))?
        .timestamp_millis();
    for c in &args.campaigns {
        anyhow::ensure!(
            CAMPAIGN_KINDS.contains(&c.as_str()),
            "--campaigns: unknown kind `{c}`; kinds: {}",
            CAMPAIGN_KINDS.join(", ")
        );
    }
    anyhow::ensure!(args.hours >= 1, "--hours must be at least 1");
    anyhow::ensure!(
        (0.0..=0.9).contains(&args.stealth),
        "--stealth must be between 0 and 0.9, not {}",
        args.stealth
    );
    anyhow::ensure!(
        args.campaign_scale >= 0.0 && args.campaign_scale.is_finite(),
        "--campaign-scale must be 0 or more, not {}",
        args.campaign_scale
    );
    let opts = SimOptions {
        hours: args.hours,
        seed: args.seed,
        start_ms,
        benign_accounts: args.accounts,
        campaigns: if args.campaigns.is_empty() {
            CAMPAIGN_KINDS.iter().map(|k| (*k).to_owned()).collect()
        } else {
            args.campaigns
        },
        campaign_scale: args.campaign_scale,
        stealth: args.stealth,
    };
    let mut sim = simulate::Simulation::new(opts);
    if let Some(path) = &args.truth {
        let text = serde_json::to_string_pretty(sim.truth())?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    let n = match (&args.out, &args.brokers, &args.topic) {
        (Some(out), _, _) if out.as_os_str() == "-" => {
            let mut sink = JsonlSink(std::io::BufWriter::new(std::io::stdout().lock()));
            simulate::run(&mut sim, &mut sink)?
        }
        (Some(out), _, _) if out.extension().is_some_and(|e| e == "parquet") => {
            let mut sink =
                ParquetSink::create(out).with_context(|| format!("creating {}", out.display()))?;
            simulate::run(&mut sim, &mut sink)?
        }
        (Some(out), _, _) => {
            let file = std::fs::File::create(out)
                .with_context(|| format!("creating {}", out.display()))?;
            let mut sink = JsonlSink(std::io::BufWriter::new(file));
            simulate::run(&mut sim, &mut sink)?
        }
        (None, Some(brokers), Some(topic)) => {
            let mut sink = KafkaEvents::new(brokers, topic)?;
            simulate::run(&mut sim, &mut sink)?
        }
        _ => anyhow::bail!("give --out FILE, or --brokers and --topic"),
    };
    eprintln!(
        "simulated {n} events: {} hours, {} benign accounts, {} campaign(s)",
        sim.hours(),
        sim.truth().benign_accounts,
        sim.truth().campaigns.len()
    );
    Ok(())
}

/// Simulated events to a Kafka topic, keyed by account, through Cordon's idempotent sink.
struct KafkaEvents {
    sink: cordon_connectors::KafkaSink,
    topic: String,
}

impl KafkaEvents {
    fn new(brokers: &str, topic: &str) -> anyhow::Result<Self> {
        let settings = cordon_connectors::ClientSettings {
            brokers: brokers.to_owned(),
            properties: Default::default(),
        };
        let sink = cordon_connectors::KafkaSink::new(&settings)?;
        sink.check_topics(&[topic], runtime::STARTUP_TIMEOUT)?;
        Ok(Self {
            sink,
            topic: topic.to_owned(),
        })
    }
}

impl cordon_engine::simulate::EventSink for KafkaEvents {
    fn write(&mut self, events: &[cordon_engine::simulate::SimEvent]) -> anyhow::Result<()> {
        for e in events {
            let payload = serde_json::to_vec(e)?;
            self.sink
                .send(&self.topic, Some(e.account_id.as_bytes()), &payload, &[])?;
        }
        self.sink.flush(runtime::FLUSH_TIMEOUT)?;
        Ok(())
    }
    fn finish(&mut self) -> anyhow::Result<()> {
        self.sink.flush(runtime::FLUSH_TIMEOUT)?;
        Ok(())
    }
}

fn backtest(
    rules: &[PathBuf],
    events: Vec<String>,
    out: Option<PathBuf>,
    truth: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    use cordon_engine::backtest;
    let set = cordon_rules::load_paths(rules).map_err(|e| anyhow::anyhow!("{e}"))?;
    let report = backtest::run(
        &set,
        &backtest::BacktestOptions {
            events,
            out,
            truth,
            progress: !json,
        },
    )?;
    if json {
        print_out(&(serde_json::to_string_pretty(&report)? + "\n"))
    } else {
        print_out(&backtest::render(&report))
    }
}
