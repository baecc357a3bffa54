//! The JSON Schema of rule format v1 (`cordon rules schema`), for editors.
//!
//! Editors that speak the YAML language server protocol check and complete rule files against
//! it when the file starts with `# yaml-language-server: $schema=<path or URL>`. It describes
//! the shape only (keys, types, enumerations, duration and call syntax); names inside
//! expressions are checked by `cordon rules validate`, which stays the authority.

use crate::rule::{AggKind, RULE_KEYS, Severity};
use crate::schema::field_names;
use serde_json::{Value, json};

/// Keys a rule must have.
pub const REQUIRED_KEYS: &[&str] = &[
    "id",
    "version",
    "title",
    "severity",
    "entity",
    "window",
    "every",
    "features",
    "condition",
];

/// A humantime duration such as `90s`, `5m`, `1h 30m` or `7d`.
const DURATION_PATTERN: &str = r"^\s*([0-9]+\s*(ns|us|ms|s|sec|secs|m|min|mins|h|hr|hrs|hour|hours|d|day|days|w|week|weeks)\s*)+$";

/// The JSON Schema (draft 2020-12) of one rule document.
pub fn rule_schema() -> Value {
    let fields = field_names().join(", ");
    let aggregates = AggKind::NAMES.join("|");
    let duration = |what: &str| {
        json!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": format!("{what}; a duration such as 90s, 5m, 1h or 7d"),
        })
    };
    let expr = |what: &str| {
        json!({
            "type": "string",
            "minLength": 1,
            "description": format!(
                "{what}: a SQL expression (DataFusion dialect) over the event fields: {fields}"
            ),
        })
    };
    let strings =
        |what: &str| json!({"type": "array", "items": {"type": "string"}, "description": what});
    let mut properties = serde_json::Map::new();
    for key in RULE_KEYS {
        let v = match *key {
            "id" => json!({
                "type": "string",
                "pattern": "^[A-Za-z0-9._-]+$",
                "description": "Stable, unique id, e.g. extraction.cot-harvest; part of every alert id",
            }),
            "version" => json!({
                "type": "integer",
                "minimum": 1,
                "maximum": u32::MAX,
                "description": "Bump on any change of meaning: a new version starts fresh state and new alert ids",
            }),
            "title" => {
                json!({"type": "string", "minLength": 1, "description": "One line for humans"})
            }
            "description" => json!({
                "type": "string",
                "description": "What the rule detects and what an analyst should do about it",
            }),
            "severity" => json!({"enum": Severity::NAMES, "description": "Alert severity"}),
            "tags" => strings("Tags, e.g. atlas.AML.T0024.002 (MITRE ATLAS technique ids)"),
            "enabled" => {
                json!({"type": "boolean", "default": true, "description": "Disabled rules are validated but not run"})
            }
            "entity" => expr("Group-by key, e.g. account_id or ip_prefix(ip, 24, 48)"),
            "where" => {
                expr("Per-event filter (boolean); events for which it is not true are ignored")
            }
            "window" => duration("Sliding window length"),
            "every" => duration("Pane (slide) length; must divide `window`, at most 1440 panes"),
            "features" => json!({
                "type": "object",
                "minProperties": 1,
                "description": "Named aggregates over the entity's window",
                "propertyNames": {"pattern": "^[a-z_][a-z0-9_]*$"},
                "additionalProperties": {
                    "type": "string",
                    "pattern": format!(r"^\s*({aggregates})\s*\(.*\)\s*$"),
                    "description": format!("One aggregate call: {}", AggKind::NAMES.join(", ")),
                },
            }),
            "condition" => json!({
                "type": "string",
                "minLength": 1,
                "description": "Boolean SQL expression over the feature names; true raises an alert",
            }),
            "suppress" => duration(
                "One new alert per entity per this period; later matches update it (default: the window)",
            ),
            "evidence" => strings("Features reported in the alert (default: all)"),
            "tests" => json!({
                "type": "array",
                "description": "Fixture tests run by `cordon rules test`",
                "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["name", "input", "expect"],
                    "properties": {
                        "name": {"type": "string"},
                        "input": {"type": "string", "description": "JSONL events, relative to this file"},
                        "expect": {
                            "type": "object",
                            "additionalProperties": false,
                            "required": ["alerts"],
                            "properties": {
                                "alerts": {"type": "integer", "minimum": 0, "description": "Exact number of new alerts"},
                                "entity": {"type": "string", "description": "The entity of every alert"},
                            },
                        },
                    },
                },
            }),
            "author" => json!({"type": "string", "description": "Who wrote the rule (Sigma)"}),
            "references" => strings("Links to reports behind the rule (Sigma)"),
            "falsepositives" => strings("Known legitimate look-alikes (Sigma)"),
            other => json!({"description": format!("`{other}`")}),
        };
        properties.insert((*key).to_owned(), v);
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://cordon.dev/schemas/rule-v1.json",
        "title": "Cordon rule (format v1)",
        "description": "One detection rule per YAML document; check with `cordon rules validate`",
        "type": "object",
        "additionalProperties": false,
        "required": REQUIRED_KEYS,
        "properties": properties,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_key_is_described_and_no_other() {
        let schema = rule_schema();
        let props = schema["properties"].as_object().expect("properties");
        let mut described: Vec<&str> = props.keys().map(String::as_str).collect();
        let mut keys = RULE_KEYS.to_vec();
        described.sort_unstable();
        keys.sort_unstable();
        assert_eq!(described, keys);
        for (k, v) in props {
            assert!(
                v.get("type").is_some() || v.get("enum").is_some(),
                "`{k}` has no type"
            );
        }
    }

    #[test]
    fn required_keys_are_what_validation_requires() {
        // A document with every required key but one is refused for that key, and one with
        // all of them is accepted (validate stage), so the schema cannot drift from it.
        let full = "id: a.b\nversion: 1\ntitle: t\nseverity: low\nentity: account_id\n\
                    window: 1h\nevery: 5m\nfeatures: {n: count()}\ncondition: n > 1\n";
        let mut rules = Vec::new();
        let mut diags = Vec::new();
        crate::load::validate_source("f.yaml", full, &mut rules, &mut Vec::new(), &mut diags);
        assert!(diags.is_empty(), "{diags:?}");
        for key in REQUIRED_KEYS {
            let text: String = full
                .lines()
                .filter(|l| !l.starts_with(&format!("{key}:")))
                .map(|l| format!("{l}\n"))
                .collect();
            let mut diags = Vec::new();
            crate::load::validate_source(
                "f.yaml",
                &text,
                &mut Vec::new(),
                &mut Vec::new(),
                &mut diags,
            );
            assert!(
                diags
                    .iter()
                    .any(|d| d.message == format!("missing required key `{key}`")),
                "{key}: {diags:?}"
            );
        }
    }

    #[test]
    fn duration_pattern_matches_what_the_validator_accepts() {
        let re = regex::Regex::new(DURATION_PATTERN).expect("pattern compiles");
        for d in ["90s", "5m", "1h", "7d", "1h 30m", "250ms", "2w", "12hours"] {
            assert!(humantime::parse_duration(d).is_ok(), "{d}");
            assert!(re.is_match(d), "{d}");
        }
        for d in ["5", "m", "five minutes", "1h-"] {
            assert!(humantime::parse_duration(d).is_err(), "{d}");
            assert!(!re.is_match(d), "{d}");
        }
    }

    #[test]
    fn feature_pattern_takes_every_aggregate_and_nothing_else() {
        let schema = rule_schema();
        let pattern = schema["properties"]["features"]["additionalProperties"]["pattern"]
            .as_str()
            .expect("pattern");
        let re = regex::Regex::new(pattern).expect("pattern compiles");
        for name in AggKind::NAMES {
            assert!(re.is_match(&format!("{name}(x)")), "{name}");
        }
        assert!(!re.is_match("median(x)"));
        assert!(!re.is_match("count"));
    }
}
