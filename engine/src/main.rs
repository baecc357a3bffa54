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
        text.push_str(&format!("not run (disabled): {}\n", set.disabled.join(", ")));
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
