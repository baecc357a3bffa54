//! `cordon rules test`: every rule's `tests:` fixtures through the engine's own code path.
//!
//! Each case gets a fresh [`Processor`] holding its rule alone, so other rules cannot change
//! the outcome. The fixture's lines go in file order, 100 to a batch, as one input partition,
//! through decode, state, conditions and the alert gate exactly as `cordon run` does. The wall
//! clock is the latest event time read so far, so fixtures dated in the past are not refused
//! as `future`; `late` applies as configured by default (5 minutes), so a fixture must be in
//! event-time order within that. A line the decoder refuses fails the case: a fixture that
//! tests nothing would pass for the wrong reason.
//!
//! `expect.alerts` is the exact number of `new` alerts (later matches inside `suppress` are
//! `update`s and not counted); `expect.entity`, when given, must be the entity of every one.
//! A failing case reports the alerts it got with their features, and for an expected entity
//! that never alerted, the features of its busiest window: the point where it came closest.

use crate::decode::event_time;
use crate::gate::{Status, rfc3339};
use crate::processor::{CoreConfig, Input, Output, Processor};
use crate::window::WindowSnapshot;
use cordon_rules::rule::RuleTest;
use cordon_rules::{CompiledRule, RuleSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Lines per batch: small enough that the busiest window of an entity is seen closely.
const BATCH_LINES: usize = 100;

/// The outcome of one case.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseReport {
    /// Rule id.
    pub rule: String,
    /// Case name.
    pub name: String,
    /// The fixture file as resolved.
    pub input: PathBuf,
    /// Number of `new` alerts the rule raised.
    pub alerts: u64,
    /// Why the case failed; empty when it passed.
    pub failures: Vec<String>,
    /// The evidence behind the failures: alerts with their features, or the busiest window.
    pub details: Vec<String>,
}

impl CaseReport {
    /// Whether the case passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Runs every test case of every enabled rule in `set`, in rule order.
pub fn run_all(set: &RuleSet) -> Vec<CaseReport> {
    set.rules
        .iter()
        .flat_map(|rule| rule.rule.tests.iter().map(move |t| run_case(rule, t)))
        .collect()
}

/// Where a test's fixture is: relative to the rule file's directory.
pub fn fixture_path(rule_file: &str, input: &str) -> PathBuf {
    let input = Path::new(input);
    if input.is_absolute() {
        return input.to_path_buf();
    }
    Path::new(rule_file)
        .parent()
        .map_or_else(|| input.to_path_buf(), |dir| dir.join(input))
}

/// Runs one case.
pub fn run_case(rule: &Arc<CompiledRule>, test: &RuleTest) -> CaseReport {
    let input = fixture_path(&rule.rule.file, &test.input);
    let mut report = CaseReport {
        rule: rule.rule.id.clone(),
        name: test.name.clone(),
        input: input.clone(),
        alerts: 0,
        failures: Vec::new(),
        details: Vec::new(),
    };
    let text = match std::fs::read(&input) {
        Ok(t) => t,
        Err(e) => {
            report
                .failures
                .push(format!("cannot read {}: {e}", input.display()));
            return report;
        }
    };
    let lines: Vec<(usize, &[u8])> = text
        .split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.trim_ascii().is_empty())
        .map(|(i, l)| (i + 1, l))
        .collect();
    if lines.is_empty() {
        report
            .failures
            .push(format!("{} has no events", input.display()));
        return report;
    }

    let set = RuleSet {
        rules: vec![rule.clone()],
        disabled: Vec::new(),
    };
    let mut processor = Processor::new(&set, CoreConfig::default());
    let mut now = i64::MIN;
    let mut busiest: Option<WindowSnapshot> = None;
    let mut new_alerts = Vec::new();
    for chunk in lines.chunks(BATCH_LINES) {
        now = chunk
            .iter()
            .filter_map(|(_, l)| event_time(l))
            .fold(now, i64::max);
        let inputs: Vec<Input<'_>> = chunk
            .iter()
            .map(|(line, payload)| Input {
                partition: 0,
                offset: *line as i64,
                key: None,
                payload,
                forwarded: None,
            })
            .collect();
        let mut out = Output::default();
        if let Err(e) = processor.process(&inputs, now, &mut out) {
            report.failures.push(format!("the engine failed: {e}"));
            return report;
        }
        for d in &out.dead_letters {
            report.failures.push(format!(
                "{}:{}: event refused ({}): {}",
                input.display(),
                d.offset,
                d.reason.as_str(),
                d.detail
            ));
        }
        new_alerts.extend(
            out.alerts
                .into_iter()
                .filter(|a| a.alert.status == Status::New),
        );
        if let Some(entity) = &test.expect.entity
            && let Some(snap) = processor.peek(0, entity)
            && busiest.as_ref().is_none_or(|b| snap.events > b.events)
        {
            busiest = Some(snap);
        }
    }

    report.alerts = new_alerts.len() as u64;
    let expect = &test.expect;
    if report.alerts != expect.alerts {
        report.failures.push(format!(
            "expected {} new alert(s), got {}",
            expect.alerts, report.alerts
        ));
    }
    if let Some(entity) = &expect.entity {
        let others: Vec<&str> = new_alerts
            .iter()
            .map(|a| a.alert.entity.value.as_str())
            .filter(|v| v != entity)
            .collect();
        if !others.is_empty() {
            report.failures.push(format!(
                "expected every alert for `{entity}`, got alerts for {}",
                others.join(", ")
            ));
        }
    }
    if report.passed() {
        return report;
    }
    for (i, a) in new_alerts.iter().enumerate() {
        let mut line = format!(
            "alert {}: {} `{}`, window {} .. {}, {} events:",
            i + 1,
            a.alert.entity.kind,
            a.alert.entity.value,
            a.alert.window.start,
            a.alert.window.end,
            a.alert.event_count
        );
        for (name, v) in &a.alert.features {
            let _ = write!(line, " {name}={v}");
        }
        report.details.push(line);
    }
    if let Some(entity) = &expect.entity
        && !new_alerts.iter().any(|a| &a.alert.entity.value == entity)
    {
        report.details.push(match &busiest {
            Some(snap) => {
                let mut line = format!(
                    "`{entity}` at its busiest window {} .. {}, {} events:",
                    rfc3339(snap.start),
                    rfc3339(snap.end),
                    snap.events
                );
                for (f, v) in rule.features.iter().zip(&snap.features) {
                    match v {
                        Some(v) => {
                            let _ = write!(line, " {}={}", f.name, round(*v));
                        }
                        None => {
                            let _ = write!(line, " {}=NULL", f.name);
                        }
                    }
                }
                line
            }
            None => format!(
                "`{entity}` never reached the rule's state (no event passed `where` with that entity)"
            ),
        });
        report
            .details
            .push(format!("condition: {}", rule.rule.condition.text));
    }
    report
}

fn round(v: f64) -> f64 {
    (v * 10_000.0).round() / 10_000.0
}

/// Renders reports as the command prints them, with a summary line.
pub fn render(reports: &[CaseReport], untested: &[String]) -> String {
    let mut s = String::new();
    for r in reports {
        if r.passed() {
            let _ = writeln!(s, "PASS {}: {} ({} alert(s))", r.rule, r.name, r.alerts);
        } else {
            let _ = writeln!(s, "FAIL {}: {} ({})", r.rule, r.name, r.input.display());
            for f in r.failures.iter().chain(&r.details) {
                let _ = writeln!(s, "     {f}");
            }
        }
    }
    for id in untested {
        let _ = writeln!(s, "NONE {id}: the rule has no tests");
    }
    let failed = reports.iter().filter(|r| !r.passed()).count();
    let _ = writeln!(
        s,
        "{} case(s): {} passed, {} failed; {} rule(s) without tests",
        reports.len(),
        reports.len() - failed,
        failed,
        untested.len()
    );
    s
}
