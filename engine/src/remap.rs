//! Carrying state from one plan to another: a rule reload
//! ([`Processor::replace_rules`](crate::processor::Processor::replace_rules)) and a checkpoint
//! taken under another rule set ([`Processor::restore`](crate::processor::Processor::restore))
//! go through the same mapping.
//!
//! The old side is described by a [`Layout`]: each table's identity (entity expression and
//! window geometry) with its slots' signatures (storage kind, argument, filters), and each
//! rule's meaning (id, version and definition). A live plan gives its layout directly; a
//! checkpoint stores it.
//!
//! A rule is unchanged when its meaning is the same; it keeps its windows and its alert gate.
//! A new or changed rule starts with fresh state: aggregates that only changed rules read start
//! empty, even where the old set had the same aggregate, so a changed rule never alerts on
//! history it did not define. Tables no rule uses any more are dropped, and so are keys of
//! tables none of whose aggregates carry over.

use crate::agg::SlotKind;
use crate::gate::Gate;
use crate::keys::KeyTable;
use crate::plan::Plan;
use cordon_rules::Rule;
use serde::{Deserialize, Serialize};

/// The identity of a state table and its slots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableId {
    /// Entity expression text.
    pub entity: String,
    /// Pane length in ms.
    pub pane_ms: i64,
    /// Panes per window.
    pub panes: i64,
    /// Slot signatures in slot order ([`Plan::slot_signature`]).
    pub slots: Vec<String>,
}

/// What state a plan holds, as far as carrying it to another plan needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Tables in plan order.
    pub tables: Vec<TableId>,
    /// Each rule's meaning ([`rule_meaning`]) in plan order: gate `i` belongs to rule `i`.
    pub rules: Vec<String>,
}

/// A rule's id, version and definition (entity, filter, window, features, condition,
/// suppression, evidence) as one text: two rules mean the same exactly when these are equal.
/// Titles, descriptions, tags, tests and positions do not count.
pub fn rule_meaning(r: &Rule) -> String {
    let features: Vec<(&str, &str)> = r
        .features
        .iter()
        .map(|f| (f.name.as_str(), f.text.trim()))
        .collect();
    serde_json::json!({
        "id": r.id,
        "version": r.version,
        "entity": r.entity.text.trim(),
        "where": r.filter.as_ref().map(|f| f.text.trim()),
        "window_ms": r.window.as_millis() as u64,
        "every_ms": r.every.as_millis() as u64,
        "features": features,
        "condition": r.condition.text.trim(),
        "suppress_ms": r.suppress.as_millis() as u64,
        "evidence": r.evidence,
    })
    .to_string()
}

impl Layout {
    /// The layout of a live plan.
    pub fn of(plan: &Plan) -> Self {
        Self {
            tables: (0..plan.tables.len())
                .map(|t| {
                    let spec = &plan.tables[t];
                    TableId {
                        entity: spec.entity_text.clone(),
                        pane_ms: spec.window.pane_ms,
                        panes: spec.window.panes,
                        slots: (0..spec.slots.len())
                            .map(|s| plan.slot_signature(t, s))
                            .collect(),
                    }
                })
                .collect(),
            rules: plan
                .rules
                .iter()
                .map(|r| rule_meaning(&r.compiled.rule))
                .collect(),
        }
    }
}

/// Where one new table's state comes from: the old table, its slot count, and for each new
/// slot the old slot it carries.
#[derive(Debug, Clone)]
struct TableMap {
    old: usize,
    old_slots: usize,
    slots: Vec<Option<usize>>,
}

/// How state moves from an old [`Layout`] to a new plan.
#[derive(Debug, Clone)]
pub struct Remap {
    /// Per new table, where its state comes from (`None`: it starts empty).
    tables: Vec<Option<TableMap>>,
    /// Per new rule: the old rule with the same meaning (whose gate it keeps).
    pub unchanged: Vec<Option<usize>>,
    kinds: Vec<Vec<SlotKind>>,
}

impl Remap {
    /// Computes the mapping from `old` to `new`.
    pub fn new(old: &Layout, new: &Plan) -> Self {
        let unchanged: Vec<Option<usize>> = new
            .rules
            .iter()
            .map(|nr| {
                let meaning = rule_meaning(&nr.compiled.rule);
                old.rules.iter().position(|o| *o == meaning)
            })
            .collect();
        let tables = (0..new.tables.len())
            .map(|t| {
                let spec = &new.tables[t];
                let ot = old.tables.iter().position(|o| {
                    o.entity == spec.entity_text
                        && o.pane_ms == spec.window.pane_ms
                        && o.panes == spec.window.panes
                })?;
                let carried: Vec<usize> = spec
                    .rules
                    .iter()
                    .filter(|r| unchanged[**r].is_some())
                    .flat_map(|r| new.rule_slots(*r))
                    .collect();
                let map: Vec<Option<usize>> = (0..spec.slots.len())
                    .map(|s| {
                        if !carried.contains(&s) {
                            return None;
                        }
                        let sig = new.slot_signature(t, s);
                        old.tables[ot].slots.iter().position(|o| *o == sig)
                    })
                    .collect();
                map.iter().any(Option::is_some).then(|| TableMap {
                    old: ot,
                    old_slots: old.tables[ot].slots.len(),
                    slots: map,
                })
            })
            .collect();
        let kinds = new
            .tables
            .iter()
            .map(|t| t.slots.iter().map(|s| s.kind).collect())
            .collect();
        Self {
            tables,
            unchanged,
            kinds,
        }
    }

    /// The old table each new table takes its keys from.
    pub fn old_table(&self, t: usize) -> Option<usize> {
        self.tables[t].as_ref().map(|m| m.old)
    }

    /// Aggregates whose state carries over.
    pub fn kept_slots(&self) -> usize {
        self.tables
            .iter()
            .flatten()
            .map(|m| m.slots.iter().flatten().count())
            .sum()
    }

    /// Moves one partition's tables and gates (in old order) to the new plan's order.
    pub fn apply(
        &self,
        mut tables: Vec<KeyTable>,
        mut gates: Vec<Gate>,
    ) -> (Vec<KeyTable>, Vec<Gate>) {
        let tables = self
            .tables
            .iter()
            .zip(&self.kinds)
            .map(|(m, kinds)| match m {
                Some(m) => {
                    let mut keys = tables
                        .get_mut(m.old)
                        .map(std::mem::take)
                        .unwrap_or_default();
                    let identity = m.old_slots == m.slots.len()
                        && m.slots.iter().enumerate().all(|(i, s)| *s == Some(i));
                    if !identity {
                        keys.for_each_mut(|k| k.remap_slots(&m.slots, kinds));
                    }
                    keys
                }
                None => KeyTable::default(),
            })
            .collect();
        let gates = self
            .unchanged
            .iter()
            .map(|u| {
                u.and_then(|o| gates.get_mut(o).map(std::mem::take))
                    .unwrap_or_default()
            })
            .collect();
        (tables, gates)
    }
}
