//! `sink.format: ocsf`: an alert as an OCSF Detection Finding.
//!
//! The finding carries the same content as alert schema v1: class Detection Finding (2004) in
//! category Findings (2); activity Create (1) for a new alert and Update (2) for a later match
//! of a suppressed one; `finding_info.uid` is the `alert_id`; the analytic is the rule; ATLAS
//! tags (`atlas.AML.T0024.002`) become MITRE ATLAS techniques in `finding_info.attacks`; the
//! entity, window, features and sample request ids are the evidence. Fields OCSF has no place
//! for (the native schema name and status, the engine) go under `unmapped.cordon`.

use crate::gate::Status;
use crate::processor::AlertRecord;
use serde_json::{Value, json};

/// The released OCSF schema version the findings follow.
pub const OCSF_VERSION: &str = "1.3.0";
/// Detection Finding.
pub const CLASS_UID: u32 = 2004;
/// Findings.
pub const CATEGORY_UID: u32 = 2;

/// OCSF `severity_id` and its caption for a Cordon severity name.
pub fn severity(name: &str) -> (u8, &'static str) {
    match name {
        "info" => (1, "Informational"),
        "low" => (2, "Low"),
        "medium" => (3, "Medium"),
        "high" => (4, "High"),
        "critical" => (5, "Critical"),
        _ => (0, "Unknown"),
    }
}

/// The Detection Finding of an alert.
pub fn detection_finding(record: &AlertRecord) -> Value {
    let a = &record.alert;
    let (activity_id, activity) = match a.status {
        Status::New => (1u32, "Create"),
        Status::Update => (2u32, "Update"),
    };
    let (severity_id, severity_name) = severity(a.rule.severity);
    let attacks: Vec<Value> = a
        .rule
        .tags
        .iter()
        .filter_map(|t| t.strip_prefix("atlas."))
        .map(|technique| {
            json!({
                "technique": {"uid": technique, "name": technique},
                "version": "ATLAS",
            })
        })
        .collect();
    let mut finding_info = json!({
        "uid": a.alert_id,
        "title": a.rule.title,
        "desc": record.description,
        "first_seen_time": record.times.first_seen,
        "last_seen_time": record.times.last_seen,
        "created_time": record.times.detected,
        "analytic": {
            "uid": a.rule.id,
            "name": a.rule.id,
            "type_id": 1,
            "type": "Rule",
            "version": a.rule.version.to_string(),
        },
        "types": a.rule.tags,
    });
    if !attacks.is_empty() {
        finding_info["attacks"] = Value::Array(attacks);
    }
    json!({
        "class_uid": CLASS_UID,
        "class_name": "Detection Finding",
        "category_uid": CATEGORY_UID,
        "category_name": "Findings",
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": CLASS_UID * 100 + activity_id,
        "type_name": format!("Detection Finding: {activity}"),
        "severity_id": severity_id,
        "severity": severity_name,
        "status_id": 1,
        "status": "New",
        "time": record.times.detected,
        "message": format!("{}: {}={}", a.rule.title, a.entity.kind, a.entity.value),
        "metadata": {
            "version": OCSF_VERSION,
            "uid": a.alert_id,
            "product": {"name": "Cordon", "vendor_name": "Cordon", "version": a.engine.version},
        },
        "finding_info": finding_info,
        "evidences": [{
            "data": {
                "entity": a.entity,
                "window": a.window,
                "features": a.features,
                "event_count": a.event_count,
                "sample_request_ids": a.sample_request_ids,
            }
        }],
        "unmapped": {
            "cordon": {
                "schema": a.schema,
                "status": a.status,
                "engine": a.engine,
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::{ALERT_SCHEMA, Alert, AlertEngine, AlertEntity, AlertRule, AlertWindow};
    use crate::processor::AlertTimes;

    fn record(status: Status) -> AlertRecord {
        let mut features = serde_json::Map::new();
        features.insert("requests".into(), json!(512));
        AlertRecord {
            key: "acct-7".into(),
            alert: Alert {
                schema: ALERT_SCHEMA,
                alert_id: "ceb1b3bdf2290f3eb5f8fb3dabd6f972".into(),
                status,
                rule: AlertRule {
                    id: "extraction.cot-harvest".into(),
                    version: 3,
                    title: "Reasoning-trace harvesting".into(),
                    severity: "high",
                    tags: vec!["atlas.AML.T0024.002".into(), "extraction".into()],
                },
                entity: AlertEntity {
                    kind: "account_id".into(),
                    value: "acct-7".into(),
                },
                window: AlertWindow {
                    start: "s".into(),
                    end: "e".into(),
                },
                features,
                first_seen: "f".into(),
                last_seen: "l".into(),
                event_count: 512,
                sample_request_ids: vec!["r1".into()],
                detected_at: "d".into(),
                engine: AlertEngine {
                    version: "0.1.0",
                    instance: "cordon-0".into(),
                },
            },
            times: AlertTimes {
                first_seen: 1,
                last_seen: 2,
                detected: 3,
                window_end: 4,
            },
            partition: 0,
            description: "what to do".into(),
        }
    }

    #[test]
    fn new_alerts_are_created_findings_and_updates_update_them() {
        let f = detection_finding(&record(Status::New));
        assert_eq!(
            (f["class_uid"].as_u64(), f["category_uid"].as_u64()),
            (Some(2004), Some(2))
        );
        assert_eq!(
            (f["activity_id"].as_u64(), f["type_uid"].as_u64()),
            (Some(1), Some(200401))
        );
        assert_eq!(
            (f["severity_id"].as_u64(), f["severity"].as_str()),
            (Some(4), Some("High"))
        );
        assert_eq!(f["finding_info"]["uid"], "ceb1b3bdf2290f3eb5f8fb3dabd6f972");
        assert_eq!(
            f["finding_info"]["analytic"]["name"],
            "extraction.cot-harvest"
        );
        assert_eq!(
            f["finding_info"]["attacks"][0]["technique"]["uid"],
            "AML.T0024.002"
        );
        assert_eq!(
            f["finding_info"]["attacks"].as_array().map(Vec::len),
            Some(1),
            "only ATLAS tags are attacks"
        );
        assert_eq!(
            (
                f["finding_info"]["first_seen_time"].as_i64(),
                f["finding_info"]["last_seen_time"].as_i64()
            ),
            (Some(1), Some(2))
        );
        assert_eq!(f["evidences"][0]["data"]["features"]["requests"], 512);
        assert_eq!(f["metadata"]["version"], OCSF_VERSION);
        let u = detection_finding(&record(Status::Update));
        assert_eq!(
            (u["activity_id"].as_u64(), u["type_uid"].as_u64()),
            (Some(2), Some(200402))
        );
        assert_eq!(
            u["finding_info"]["uid"], f["finding_info"]["uid"],
            "an update names the same finding"
        );
    }
}
