//! The alert gate: turns condition matches into alerts, one new alert per entity per
//! `suppress` period, and gives each a deterministic id.
//!
//! `alert_id` depends only on the rule id and version, the entity, and the window in which the
//! alert was first raised, so a replay of the same input raises the same ids. While an alert is
//! suppressed, a match in a later window updates it: an alert with the same id and status
//! `update`, at most one per window end.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use xxhash_rust::xxh3::xxh3_128;

/// Alert schema identifier.
pub const ALERT_SCHEMA: &str = "cordon.alert.v1";

/// The deterministic id of an alert: 32 hex digits.
pub fn alert_id(
    rule_id: &str,
    rule_version: u32,
    entity_kind: &str,
    entity: &str,
    start_ms: i64,
    end_ms: i64,
) -> String {
    let mut buf = Vec::with_capacity(64 + rule_id.len() + entity_kind.len() + entity.len());
    for part in [
        ALERT_SCHEMA.as_bytes(),
        rule_id.as_bytes(),
        entity_kind.as_bytes(),
        entity.as_bytes(),
    ] {
        buf.extend_from_slice(&(part.len() as u64).to_le_bytes());
        buf.extend_from_slice(part);
    }
    buf.extend_from_slice(&rule_version.to_le_bytes());
    buf.extend_from_slice(&start_ms.to_le_bytes());
    buf.extend_from_slice(&end_ms.to_le_bytes());
    format!("{:032x}", xxh3_128(&buf))
}

/// Whether an alert is new or updates an earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// First match of the entity in this suppression period.
    New,
    /// A later match while suppressed.
    Update,
}

/// What the gate decided about a match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Emit an alert with this id and status.
    Emit {
        /// The alert id.
        alert_id: String,
        /// New or update.
        status: Status,
    },
    /// Suppressed: already alerted for this window.
    Suppressed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    alert_id: String,
    until: i64,
    last_end: i64,
}

/// Gate state of one rule on one partition. Persisted in checkpoints (see [`crate::codec`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gate {
    entries: HashMap<String, Entry>,
}

impl Gate {
    /// Decides on a match of `entity` in the window `[start, end)`.
    #[allow(clippy::too_many_arguments)]
    pub fn decide(
        &mut self,
        rule_id: &str,
        rule_version: u32,
        entity_kind: &str,
        entity: &str,
        start: i64,
        end: i64,
        suppress_ms: i64,
    ) -> Decision {
        if let Some(e) = self.entries.get_mut(entity)
            && end < e.until
        {
            if end > e.last_end {
                e.last_end = end;
                return Decision::Emit {
                    alert_id: e.alert_id.clone(),
                    status: Status::Update,
                };
            }
            return Decision::Suppressed;
        }
        let id = alert_id(rule_id, rule_version, entity_kind, entity, start, end);
        self.entries.insert(
            entity.to_owned(),
            Entry {
                alert_id: id.clone(),
                until: end.saturating_add(suppress_ms),
                last_end: end,
            },
        );
        Decision::Emit {
            alert_id: id,
            status: Status::New,
        }
    }

    /// Records an alert this rule already wrote (read back from the alerts topic after a
    /// restart), so that replaying the input that raised it decides `Suppressed` instead of
    /// writing it again. A `new` alert opens the entity's suppression as [`Gate::decide`] did
    /// when it raised it; an `update` moves the entity's last alerted window forward. Seeds
    /// must be given in the order the alerts were written.
    pub fn seed(&mut self, entity: &str, alert_id: &str, new: bool, end: i64, suppress_ms: i64) {
        match self.entries.get_mut(entity) {
            Some(e) if !new && e.alert_id == alert_id => e.last_end = e.last_end.max(end),
            Some(e) if new && e.alert_id == alert_id && e.last_end >= end => {}
            _ => {
                // A `new` alert, or an update whose `new` is older than the checkpoint and no
                // longer held: its suppression period is unknown, so it is taken to run from
                // this window (the entity's later matches stay updates of the same alert).
                self.entries.insert(
                    entity.to_owned(),
                    Entry {
                        alert_id: alert_id.to_owned(),
                        until: end.saturating_add(suppress_ms),
                        last_end: end,
                    },
                );
            }
        }
    }

    /// Forgets entries whose suppression ended before `watermark`.
    pub fn expire(&mut self, watermark: i64) {
        self.entries.retain(|_, e| e.until > watermark);
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// RFC 3339 text of epoch ms, UTC, millisecond precision.
pub fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Alert schema v1.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// Always [`ALERT_SCHEMA`].
    pub schema: &'static str,
    /// Deterministic id.
    pub alert_id: String,
    /// New or update.
    pub status: Status,
    /// The rule.
    pub rule: AlertRule,
    /// The entity.
    pub entity: AlertEntity,
    /// The window.
    pub window: AlertWindow,
    /// Evidence features.
    pub features: serde_json::Map<String, serde_json::Value>,
    /// Earliest event in the window.
    pub first_seen: String,
    /// Latest event in the window.
    pub last_seen: String,
    /// Events of the entity in the window (after the rule's filter).
    pub event_count: u64,
    /// Recent request ids of the entity.
    pub sample_request_ids: Vec<String>,
    /// Wall-clock time of detection.
    pub detected_at: String,
    /// Who detected it.
    pub engine: AlertEngine,
}

/// The rule part of an alert.
#[derive(Debug, Clone, Serialize)]
pub struct AlertRule {
    /// Rule id.
    pub id: String,
    /// Rule version.
    pub version: u32,
    /// Title.
    pub title: String,
    /// Severity name.
    pub severity: &'static str,
    /// Tags.
    pub tags: Vec<String>,
}

/// The entity part of an alert.
#[derive(Debug, Clone, Serialize)]
pub struct AlertEntity {
    /// The entity expression, e.g. `account_id`.
    pub kind: String,
    /// Its value.
    pub value: String,
}

/// The window part of an alert.
#[derive(Debug, Clone, Serialize)]
pub struct AlertWindow {
    /// Start, RFC 3339.
    pub start: String,
    /// End (exclusive), RFC 3339.
    pub end: String,
}

/// The engine part of an alert.
#[derive(Debug, Clone, Serialize)]
pub struct AlertEngine {
    /// Cordon version.
    pub version: &'static str,
    /// Instance name (pod name).
    pub instance: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    #[test]
    fn ids_are_deterministic_and_distinct() {
        let a = alert_id("r", 1, "account_id", "acct-7", 0, H);
        assert_eq!(a, alert_id("r", 1, "account_id", "acct-7", 0, H));
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        for other in [
            alert_id("r", 2, "account_id", "acct-7", 0, H),
            alert_id("r2", 1, "account_id", "acct-7", 0, H),
            alert_id("r", 1, "account_id", "acct-8", 0, H),
            alert_id("r", 1, "account_id", "acct-7", 1, H),
            alert_id("r", 1, "ip", "acct-7", 0, H),
        ] {
            assert_ne!(a, other);
        }
        // field boundaries are unambiguous
        assert_ne!(
            alert_id("ab", 1, "c", "d", 0, 1),
            alert_id("a", 1, "bc", "d", 0, 1)
        );
    }

    #[test]
    fn suppression_gives_one_new_then_updates_per_window() {
        let mut g = Gate::default();
        let d = |g: &mut Gate, end: i64| g.decide("r", 1, "account_id", "e", end - H, end, 6 * H);
        let Decision::Emit {
            alert_id: first,
            status: Status::New,
        } = d(&mut g, H)
        else {
            panic!("first match is new")
        };
        assert_eq!(d(&mut g, H), Decision::Suppressed, "same window again");
        assert_eq!(
            d(&mut g, 2 * H),
            Decision::Emit {
                alert_id: first.clone(),
                status: Status::Update
            }
        );
        assert_eq!(d(&mut g, 2 * H), Decision::Suppressed);
        // past the suppression period: a new alert with a new id
        match d(&mut g, 7 * H) {
            Decision::Emit {
                alert_id,
                status: Status::New,
            } => assert_ne!(alert_id, first),
            other => panic!("expected new, got {other:?}"),
        }
    }

    #[test]
    fn entities_are_gated_apart_and_entries_expire() {
        let mut g = Gate::default();
        assert!(matches!(
            g.decide("r", 1, "k", "a", 0, H, H),
            Decision::Emit {
                status: Status::New,
                ..
            }
        ));
        assert!(matches!(
            g.decide("r", 1, "k", "b", 0, H, H),
            Decision::Emit {
                status: Status::New,
                ..
            }
        ));
        assert_eq!(g.len(), 2);
        g.expire(2 * H);
        assert!(g.is_empty());
    }

    #[test]
    fn seeded_alerts_are_not_raised_again_on_replay() {
        let d = |g: &mut Gate, end: i64| g.decide("r", 1, "account_id", "e", end - H, end, 6 * H);
        // The original run: new at H, update at 2H.
        let mut original = Gate::default();
        let Decision::Emit { alert_id, .. } = d(&mut original, H) else {
            panic!("new")
        };
        assert!(matches!(d(&mut original, 2 * H), Decision::Emit { .. }));
        // A restart from a checkpoint taken before either: the alerts topic shows both.
        let mut replay = Gate::default();
        replay.seed("e", &alert_id, true, H, 6 * H);
        replay.seed("e", &alert_id, false, 2 * H, 6 * H);
        assert_eq!(d(&mut replay, H), Decision::Suppressed);
        assert_eq!(d(&mut replay, 2 * H), Decision::Suppressed);
        // Input after what was written still updates the same alert.
        assert_eq!(
            d(&mut replay, 3 * H),
            Decision::Emit {
                alert_id,
                status: Status::Update
            }
        );
    }

    #[test]
    fn gate_round_trips_through_the_codec() {
        let mut g = Gate::default();
        g.decide("r", 1, "k", "a", 0, H, H);
        let back: Gate =
            crate::codec::decode_state(&crate::codec::encode_state(&g).expect("encode"))
                .expect("decode");
        assert_eq!(back, g);
    }

    #[test]
    fn timestamps_render_as_rfc3339() {
        assert_eq!(rfc3339(1_772_359_200_000), "2026-03-01T10:00:00.000Z");
    }
}
