//! Event schema v1 as the columns rules are written against.
//!
//! The decoder in the engine builds Arrow record batches with exactly this schema, and the
//! compiler types every rule expression against it, so a rule that compiles can always run.

use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use std::sync::{Arc, LazyLock};

/// Time zone of timestamp columns.
pub const TZ: &str = "UTC";

/// Names of the string columns, in schema order after `account_id` and `ip`.
pub const STRING_FIELDS: &[&str] = &[
    "request_id",
    "org_id",
    "api_key_id",
    "user_agent",
    "client_fp",
    "model",
    "endpoint",
    "prompt_fp",
    "template_fp",
    "prompt_simhash",
    "payment_fp",
    "country",
];

/// Names of the integer columns.
pub const INT_FIELDS: &[&str] = &[
    "status",
    "input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "max_tokens",
    "latency_ms",
    "asn",
];

/// The Arrow type of a timestamp column.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some(TZ.into()))
}

/// The item field of `labels`.
pub fn labels_item() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Utf8, true))
}

/// The entries field of `attrs` (a map of string to string).
pub fn attrs_entries() -> Arc<Field> {
    Arc::new(Field::new(
        "entries",
        DataType::Struct(Fields::from(vec![
            Field::new("keys", DataType::Utf8, false),
            Field::new("values", DataType::Utf8, true),
        ])),
        false,
    ))
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = vec![
        Field::new("ts", timestamp_type(), false),
        Field::new("account_id", DataType::Utf8, false),
        Field::new("ip", DataType::Utf8, false),
    ];
    fields.extend(
        STRING_FIELDS
            .iter()
            .map(|n| Field::new(*n, DataType::Utf8, true)),
    );
    fields.extend(
        INT_FIELDS
            .iter()
            .map(|n| Field::new(*n, DataType::Int64, true)),
    );
    fields.push(Field::new("labels", DataType::List(labels_item()), true));
    fields.push(Field::new("account_created", timestamp_type(), true));
    fields.push(Field::new(
        "attrs",
        DataType::Map(attrs_entries(), false),
        true,
    ));
    Arc::new(Schema::new(fields))
});

/// The event schema v1.
pub fn event_schema() -> SchemaRef {
    SCHEMA.clone()
}

/// Names of every column of the event schema.
pub fn field_names() -> Vec<&'static str> {
    let mut names = vec!["ts", "account_id", "ip"];
    names.extend_from_slice(STRING_FIELDS);
    names.extend_from_slice(INT_FIELDS);
    names.extend_from_slice(&["labels", "account_created", "attrs"]);
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_schema() {
        let schema = event_schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, field_names());
    }
}
