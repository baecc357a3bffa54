//! The execution plan of a rule set: shared expressions, shared state tables, shared slots.
//!
//! Rules with the same entity and window geometry share one state table, so an account's
//! events are keyed once however many account rules there are. Within a table, aggregates are
//! kept once per (storage kind, argument, filter): `sum(output_tokens)` in one rule and
//! `avg(output_tokens)` in another read the same moments; every rule's `count()` under the same
//! `where` reads one counter. Expressions with the same text are evaluated once per batch.

use crate::agg::{InputKind, SlotKind};
use crate::window::{EVENTS_SLOT, WindowSpec};
use cordon_rules::{AggKind, Bound, BoundOp, CompiledRule, RuleSet};
use datafusion::physical_expr::PhysicalExpr;
use std::sync::Arc;

/// How an evaluated expression is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Conv {
    /// A predicate: true counts, false and NULL do not.
    Bool,
    /// A number (cast to Float64).
    Number,
    /// The value as text, with a 64-bit hash of each value: entity keys use both, `distinct`
    /// and frequencies the hash. One column serves both, so `account_id` as an entity and as
    /// `distinct(account_id)` is cast and hashed once per batch.
    Text,
}

/// One expression evaluated per batch.
#[derive(Debug, Clone)]
pub struct ExprCol {
    /// The compiled expression.
    pub expr: Arc<dyn PhysicalExpr>,
    /// How its values are used.
    pub conv: Conv,
    /// Its SQL text (the identity used for sharing).
    pub text: String,
    /// `Some((v4_bits, v6_bits))` when the expression is `ip_prefix(ip, v4_bits[, v6_bits])`
    /// of the event's own address: the processor then formats the prefixes from the addresses
    /// the decoder parsed ([`crate::decode::Decoded::addrs`]) rather than have the function
    /// parse the `ip` column again (about 170 instructions an event, callgrind, the throughput
    /// mix). The values are the function's: both go through [`cordon_rules::udf::prefixes`].
    pub addr_prefix: Option<(u8, u8)>,
}

/// The prefix lengths of `expr` if it is `ip_prefix(ip, v4_bits[, v6_bits])` with constant
/// lengths in range, on the event schema's `ip` column.
fn addr_prefix(expr: &Arc<dyn PhysicalExpr>) -> Option<(u8, u8)> {
    use datafusion::common::ScalarValue;
    use datafusion::physical_expr::ScalarFunctionExpr;
    use datafusion::physical_expr::expressions::{Column, Literal};
    let f = expr.downcast_ref::<ScalarFunctionExpr>()?;
    if f.name() != "ip_prefix" {
        return None;
    }
    let bits = |i: usize, max: i64| match f.args().get(i) {
        Some(a) => match *a.downcast_ref::<Literal>()?.value() {
            ScalarValue::Int64(Some(n)) if (0..=max).contains(&n) => u8::try_from(n).ok(),
            _ => None,
        },
        None => Some(cordon_rules::udf::DEFAULT_V6_BITS),
    };
    let ip = f.args().first()?.downcast_ref::<Column>()?;
    let at = cordon_rules::schema::event_schema().index_of("ip").ok()?;
    if ip.name() != "ip" || ip.index() != at || !(2..=3).contains(&f.args().len()) {
        return None;
    }
    Some((bits(1, 32)?, bits(2, 128)?))
}

/// One aggregate's storage in a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotSpec {
    /// Storage kind.
    pub kind: SlotKind,
    /// The argument column, if the kind takes one.
    pub arg: Option<usize>,
    /// Predicate columns that must all hold for an event to count (sorted).
    pub preds: Vec<usize>,
}

/// A state table: one key per entity value, one window geometry, the slots of its rules.
#[derive(Debug, Clone)]
pub struct TableSpec {
    /// Bounded, human-readable name for metrics: `entity/window/every`.
    pub name: String,
    /// The entity column (text).
    pub entity: usize,
    /// The entity expression as written in the rules.
    pub entity_text: String,
    /// Window geometry.
    pub window: WindowSpec,
    /// Slots.
    pub slots: Vec<SlotSpec>,
    /// Rules reading this table.
    pub rules: Vec<usize>,
    /// The smallest of its rules' [`RulePlan::min_events`]: a key whose window holds fewer
    /// events ([`crate::window::may_reach`]) cannot match any of them.
    pub min_events: u64,
}

/// How a rule reads one feature.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeatureRead {
    /// The slot.
    pub slot: usize,
    /// The aggregate to read from it.
    pub agg: AggKind,
    /// `q` for quantiles.
    pub param: f64,
}

/// A rule in the plan.
#[derive(Debug, Clone)]
pub struct RulePlan {
    /// The compiled rule.
    pub compiled: Arc<CompiledRule>,
    /// Its table.
    pub table: usize,
    /// The count of the rule's events (under its `where`), for `event_count`.
    pub events: usize,
    /// Its features in rule order.
    pub reads: Vec<FeatureRead>,
    /// `suppress` in ms.
    pub suppress_ms: i64,
    /// Events the table's [`EVENTS_SLOT`] count must reach in a window for the rule's
    /// condition to hold: a bound like `requests >= 300` on a count or `count_if` that counts
    /// under at least the events slot's filter, so that it never exceeds that slot's count.
    /// 0 when the condition sets no such bound.
    pub min_events: u64,
}

/// The plan of a rule set.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Expressions evaluated per batch.
    pub exprs: Vec<ExprCol>,
    /// State tables.
    pub tables: Vec<TableSpec>,
    /// Rules, in rule-set order.
    pub rules: Vec<RulePlan>,
}

fn fmt_ms(ms: i64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms.max(0) as u64)).to_string()
}

/// A rule's [`RulePlan::min_events`]: the largest floor its bounds put on a count that counts
/// a subset of the table's [`EVENTS_SLOT`] events (its predicates include that slot's).
fn min_events(bounds: &[Bound], reads: &[FeatureRead], slots: &[SlotSpec]) -> u64 {
    let Some(events) = slots.get(EVENTS_SLOT) else {
        return 0;
    };
    bounds
        .iter()
        .filter_map(|b| {
            let read = reads.get(b.feature)?;
            let slot = slots.get(read.slot)?;
            let counts_a_subset = matches!(read.agg, AggKind::Count | AggKind::CountIf)
                && slot.kind == SlotKind::Count
                && events.preds.iter().all(|p| slot.preds.contains(p));
            if !counts_a_subset {
                return None;
            }
            // The least whole count that passes.
            let floor = match b.op {
                BoundOp::Ge => b.value.ceil(),
                BoundOp::Gt => b.value.floor() + 1.0,
                BoundOp::Lt | BoundOp::Le => return None,
            };
            // `as` saturates a float past u64's range; NaN fails the comparison.
            (floor > 0.0).then_some(floor as u64)
        })
        .max()
        .unwrap_or(0)
}

impl Plan {
    /// Plans a rule set.
    pub fn new(rules: &RuleSet) -> Self {
        let mut plan = Plan::default();
        for compiled in &rules.rules {
            let rule = &compiled.rule;
            let window = WindowSpec {
                pane_ms: rule.every.as_millis() as i64,
                panes: rule.panes() as i64,
            };
            let entity_text = rule.entity.text.trim().to_owned();
            let entity = plan.expr(&compiled.entity, &entity_text, Conv::Text);
            let table = match plan
                .tables
                .iter()
                .position(|t| t.entity_text == entity_text && t.window == window)
            {
                Some(t) => t,
                None => {
                    plan.tables.push(TableSpec {
                        name: format!(
                            "{entity_text}/{}/{}",
                            fmt_ms(window.pane_ms * window.panes),
                            fmt_ms(window.pane_ms)
                        ),
                        entity,
                        entity_text: entity_text.clone(),
                        window,
                        slots: Vec::new(),
                        rules: Vec::new(),
                        min_events: u64::MAX,
                    });
                    plan.tables.len() - 1
                }
            };
            let filter = match (&compiled.filter, &rule.filter) {
                (Some(e), Some(src)) => Some(plan.expr(e, src.text.trim(), Conv::Bool)),
                _ => None,
            };
            let events = plan.slot(table, SlotKind::Count, None, filter.into_iter().collect());
            let mut reads = Vec::with_capacity(compiled.features.len());
            for f in &compiled.features {
                let kind = SlotKind::of(f.agg);
                let mut preds: Vec<usize> = filter.into_iter().collect();
                let mut arg = None;
                if let (Some(e), Some(text)) = (&f.arg, &f.arg_text) {
                    if f.agg == AggKind::CountIf {
                        preds.push(plan.expr(e, text, Conv::Bool));
                    } else {
                        let conv = match kind.input() {
                            InputKind::Hash => Conv::Text,
                            _ => Conv::Number,
                        };
                        arg = Some(plan.expr(e, text, conv));
                    }
                }
                let slot = plan.slot(table, kind, arg, preds);
                reads.push(FeatureRead {
                    slot,
                    agg: f.agg,
                    param: f.param.unwrap_or(0.5),
                });
            }
            let min_events = min_events(&compiled.bounds, &reads, &plan.tables[table].slots);
            let t = &mut plan.tables[table];
            t.rules.push(plan.rules.len());
            t.min_events = t.min_events.min(min_events);
            plan.rules.push(RulePlan {
                compiled: compiled.clone(),
                table,
                events,
                reads,
                suppress_ms: rule.suppress.as_millis() as i64,
                min_events,
            });
        }
        plan
    }

    /// Per column of the event schema, whether anything reads it: an expression of the plan,
    /// or the alert's sample request ids (`request_id`). The decoder fills only these
    /// ([`crate::decode::EventBatchBuilder::project`]).
    pub fn columns_read(&self) -> Vec<bool> {
        let schema = cordon_rules::schema::event_schema();
        let mut read = vec![false; schema.fields().len()];
        if let Ok(i) = schema.index_of("request_id") {
            read[i] = true;
        }
        for e in &self.exprs {
            for c in datafusion::physical_expr::utils::collect_columns(&e.expr) {
                if let Some(r) = read.get_mut(c.index()) {
                    *r = true;
                }
            }
        }
        read
    }

    fn expr(&mut self, expr: &Arc<dyn PhysicalExpr>, text: &str, conv: Conv) -> usize {
        if let Some(i) = self
            .exprs
            .iter()
            .position(|e| e.text == text && e.conv == conv)
        {
            return i;
        }
        self.exprs.push(ExprCol {
            expr: expr.clone(),
            conv,
            text: text.to_owned(),
            addr_prefix: if conv == Conv::Text {
                addr_prefix(expr)
            } else {
                None
            },
        });
        self.exprs.len() - 1
    }

    fn slot(
        &mut self,
        table: usize,
        kind: SlotKind,
        arg: Option<usize>,
        mut preds: Vec<usize>,
    ) -> usize {
        preds.sort_unstable();
        preds.dedup();
        let spec = SlotSpec { kind, arg, preds };
        let slots = &mut self.tables[table].slots;
        if let Some(i) = slots.iter().position(|s| *s == spec) {
            return i;
        }
        slots.push(spec);
        slots.len() - 1
    }

    /// Where table `t` is in `other`: the table with the same entity expression and window
    /// geometry, which is a table's identity across rule sets (reloads, checkpoints).
    pub fn find_table(&self, other: &Plan, t: usize) -> Option<usize> {
        let spec = &self.tables[t];
        other
            .tables
            .iter()
            .position(|o| o.entity_text == spec.entity_text && o.window == spec.window)
    }

    /// Slot `s` of table `t` as text independent of column numbering: its storage kind,
    /// argument and filters. Equal signatures in two plans mean the same aggregate.
    pub fn slot_signature(&self, t: usize, s: usize) -> String {
        let slot = &self.tables[t].slots[s];
        let arg = slot.arg.map_or("", |a| self.exprs[a].text.as_str());
        let mut preds: Vec<&str> = slot
            .preds
            .iter()
            .map(|p| self.exprs[*p].text.as_str())
            .collect();
        preds.sort_unstable();
        format!("{:?}({arg}) where [{}]", slot.kind, preds.join("] AND ["))
    }

    /// The slots rule `r` reads: its event count and its features.
    pub fn rule_slots(&self, r: usize) -> impl Iterator<Item = usize> + '_ {
        let rp = &self.rules[r];
        std::iter::once(rp.events).chain(rp.reads.iter().map(|f| f.slot))
    }

    /// Total slots across tables (for tests and stats).
    pub fn slot_count(&self) -> usize {
        self.tables.iter().map(|t| t.slots.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = "
id: a
version: 1
title: a
severity: low
entity: account_id
where: coalesce(status, 200) < 400
window: 1h
every: 5m
features:
  requests: count()
  out: sum(output_tokens)
  prompts: distinct(prompt_fp)
condition: requests > 1
---
id: b
version: 1
title: b
severity: low
entity: account_id
where: coalesce(status, 200) < 400
window: 1h
every: 5m
features:
  requests: count()
  avg_out: avg(output_tokens)
  p99: quantile(latency_ms, 0.99)
  p50: quantile(latency_ms, 0.5)
  prompts: distinct(prompt_fp)
condition: requests > 1
---
id: c
version: 1
title: c
severity: low
entity: account_id
window: 1h
every: 10m
features:
  requests: count()
condition: requests > 1
---
id: d
version: 1
title: d
severity: low
entity: ip_prefix(ip, 24)
window: 1h
every: 5m
features:
  accounts: distinct(account_id)
condition: accounts > 1
";

    #[test]
    fn identical_state_is_kept_once() {
        let rules = cordon_rules::load_sources(&[("r.yaml".into(), RULES.into())]).expect("rules");
        let plan = Plan::new(&rules);
        // a and b share a table; c has another geometry; d another entity.
        assert_eq!(plan.tables.len(), 3);
        assert_eq!(plan.rules[0].table, plan.rules[1].table);
        assert_ne!(plan.rules[0].table, plan.rules[2].table);
        let shared = &plan.tables[plan.rules[0].table];
        // count (filtered), moments(output_tokens), distinct(prompt_fp), quantiles(latency_ms)
        assert_eq!(shared.slots.len(), 4, "{:?}", shared.slots);
        assert_eq!(
            plan.rules[0].reads[1].slot, plan.rules[1].reads[1].slot,
            "sum and avg share moments"
        );
        assert_eq!(
            plan.rules[1].reads[2].slot, plan.rules[1].reads[3].slot,
            "quantiles share one sketch"
        );
        assert_eq!(plan.rules[0].events, plan.rules[1].events);
        // the filter expression and the entity are evaluated once
        assert_eq!(
            plan.exprs
                .iter()
                .filter(|e| e.text == "coalesce(status, 200) < 400")
                .count(),
            1
        );
        assert_eq!(
            plan.exprs
                .iter()
                .filter(|e| e.text == "account_id" && e.conv == Conv::Text)
                .count(),
            1
        );
        assert_eq!(shared.name, "account_id/1h/5m");
        // Volume floors: each rule's count bound, when its count is a subset of the events
        // slot's (same `where`); the table's is the least of its rules'.
        let floors: Vec<(&str, u64)> = plan
            .rules
            .iter()
            .map(|r| (r.compiled.rule.id.as_str(), r.min_events))
            .collect();
        // `requests > 1` needs two events; `accounts > 1` bounds a distinct count, not a count.
        assert_eq!(floors, vec![("a", 2), ("b", 2), ("c", 2), ("d", 0)]);
        for t in &plan.tables {
            let least = t.rules.iter().map(|r| plan.rules[*r].min_events).min();
            assert_eq!(Some(t.min_events), least, "{}", t.name);
        }
        // The decoder fills what the expressions read, and the sample request ids.
        let schema = cordon_rules::schema::event_schema();
        let read: Vec<&str> = plan
            .columns_read()
            .iter()
            .zip(schema.fields())
            .filter(|(r, _)| **r)
            .map(|(_, f)| f.name().as_str())
            .collect();
        assert_eq!(
            read,
            [
                "account_id",
                "ip",
                "request_id",
                "prompt_fp",
                "status",
                "output_tokens",
                "latency_ms"
            ]
        );
        // window.rs reads a key's busyness from this slot.
        for t in &plan.tables {
            assert_eq!(t.slots[EVENTS_SLOT].kind, SlotKind::Count, "{}", t.name);
        }
    }
}
