//! Event decoding: Kafka message bytes to Arrow record batches of event schema v1.
//!
//! Each message is parsed once into a borrowed struct (by a fast path, `decode/scan.rs`, when
//! it takes the message, else by serde_json, which also decides every error), checked, and
//! appended to column builders; a message that fails any check becomes a
//! [`DeadLetter`](crate::processor::DeadLetter) with a reason from a bounded set and never stops
//! the batch. Raw prompt text is turned into fingerprints here and goes no further: it is not
//! stored, logged or emitted, and it is redacted from dead letters.

use crate::fingerprint::{Fingerprints, fingerprints};
use cordon_rules::schema::{INT_FIELDS, STRING_FIELDS, event_schema};
use datafusion::arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, AsArray, Int64Builder, ListBuilder, MapBuilder,
    MapFieldNames, PrimitiveBuilder, RecordBatch, StringBuilder, TimestampMillisecondBuilder,
    new_null_array,
};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock};

mod scan;

/// Why an event was refused. The set is bounded: it labels metrics and dead-letter headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Not valid JSON.
    InvalidJson,
    /// Valid JSON but not an object.
    NotObject,
    /// A required field is absent or null.
    MissingField,
    /// A field has the wrong JSON type.
    WrongType,
    /// `ts` or `account_created` is not a usable timestamp.
    BadTimestamp,
    /// `ip` is not an IPv4 or IPv6 address.
    BadIp,
    /// A field has the right type but an invalid value.
    BadValue,
    /// Larger than `source.max_message_bytes`.
    TooLarge,
    /// Older than the partition's watermark minus `time.allowed_lateness`.
    Late,
    /// Stamped further than `time.max_future_skew` ahead of the wall clock.
    Future,
    /// On the repartition topic, not a frame of forwarded events this build reads.
    NotForwarded,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Reason; 11] = [
        Reason::InvalidJson,
        Reason::NotObject,
        Reason::MissingField,
        Reason::WrongType,
        Reason::BadTimestamp,
        Reason::BadIp,
        Reason::BadValue,
        Reason::TooLarge,
        Reason::Late,
        Reason::Future,
        Reason::NotForwarded,
    ];

    /// The code used in headers and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidJson => "invalid_json",
            Reason::NotObject => "not_object",
            Reason::MissingField => "missing_field",
            Reason::WrongType => "wrong_type",
            Reason::BadTimestamp => "bad_timestamp",
            Reason::BadIp => "bad_ip",
            Reason::BadValue => "bad_value",
            Reason::TooLarge => "too_large",
            Reason::Late => "late",
            Reason::Future => "future",
            Reason::NotForwarded => "not_forwarded",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused event: its reason, a human detail, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Why.
    pub reason: Reason,
    /// What exactly (never prompt text).
    pub detail: String,
}

impl Rejection {
    fn new(reason: Reason, detail: impl Into<String>) -> Self {
        let mut detail: String = detail.into();
        if detail.len() > 300 {
            let mut cut = 300;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
            detail.push('…');
        }
        Self { reason, detail }
    }
}

/// A timestamp as JSON carries it: RFC 3339 text or epoch milliseconds.
#[derive(Debug, PartialEq)]
enum Ts<'a> {
    Millis(i64),
    Text(Cow<'a, str>),
    Float(f64),
}

impl<'de: 'a, 'a> Deserialize<'de> for Ts<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ts<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 string or integer epoch milliseconds")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Ts<'de>, E> {
                Ok(Ts::Millis(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Ts<'de>, E> {
                Ok(i64::try_from(v).map_or(Ts::Float(v as f64), Ts::Millis))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Ts<'de>, E> {
                Ok(Ts::Float(v))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Ts<'de>, E> {
                Ok(Ts::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Ts<'de>, E> {
                Ok(Ts::Text(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_any(V)
    }
}

/// An `attrs` value: string, number or bool, kept as text.
struct AttrValue(Option<String>);

impl<'de> Deserialize<'de> for AttrValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AttrValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<AttrValue, E> {
                Ok(AttrValue(Some(v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<AttrValue, E> {
                Ok(AttrValue(Some(v.to_string())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<AttrValue, E> {
                Ok(AttrValue(Some(v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<AttrValue, E> {
                Ok(AttrValue(Some(v.to_string())))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<AttrValue, E> {
                Ok(AttrValue(Some(v.to_owned())))
            }
            fn visit_unit<E: de::Error>(self) -> Result<AttrValue, E> {
                Ok(AttrValue(None))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, PartialEq)]
struct Attrs<'a>(Vec<(Cow<'a, str>, String)>);

impl<'de: 'a, 'a> Deserialize<'de> for Attrs<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Attrs<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of string, number or boolean values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Attrs<'de>, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = map.next_key::<Cow<'de, str>>()? {
                    let AttrValue(v) = map.next_value()?;
                    if let Some(v) = v {
                        out.push((k, v));
                    }
                }
                Ok(Attrs(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The wire form of an event. Every field is optional here so that a missing required field is
/// reported as `missing_field`, not as a serde error. Unknown fields are ignored. Most
/// messages are read by [`scan`], which fills the same struct; serde_json reads the rest.
#[derive(Deserialize, Default, Debug, PartialEq)]
struct Wire<'a> {
    #[serde(borrow)]
    ts: Option<Ts<'a>>,
    #[serde(borrow)]
    account_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    ip: Option<Cow<'a, str>>,
    #[serde(borrow)]
    request_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    org_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    api_key_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    user_agent: Option<Cow<'a, str>>,
    #[serde(borrow)]
    client_fp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow)]
    endpoint: Option<Cow<'a, str>>,
    #[serde(borrow)]
    prompt_fp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    template_fp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    prompt_simhash: Option<Cow<'a, str>>,
    #[serde(borrow)]
    payment_fp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    country: Option<Cow<'a, str>>,
    status: Option<i64>,
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    reasoning_tokens: Option<i64>,
    max_tokens: Option<i64>,
    latency_ms: Option<i64>,
    asn: Option<i64>,
    #[serde(borrow)]
    labels: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow)]
    account_created: Option<Ts<'a>>,
    #[serde(borrow)]
    attrs: Option<Attrs<'a>>,
    #[serde(borrow)]
    prompt: Option<Cow<'a, str>>,
}

/// Earliest accepted event time: 2001-09-09 (epoch ms 1e12). Smaller values are almost always
/// epoch seconds sent by mistake.
pub const MIN_TS_MS: i64 = 1_000_000_000_000;
/// Latest representable event time we accept: 2100-01-01.
pub const MAX_TS_MS: i64 = 4_102_444_800_000;

fn parse_ts(field: &str, ts: &Ts<'_>) -> Result<i64, Rejection> {
    let ms = match ts {
        Ts::Millis(ms) => *ms,
        Ts::Float(f) if f.fract() == 0.0 && f.is_finite() && f.abs() < 9.0e15 => *f as i64,
        Ts::Float(f) => {
            return Err(Rejection::new(
                Reason::BadTimestamp,
                format!("`{field}` {f} is not whole epoch milliseconds"),
            ));
        }
        Ts::Text(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map_err(|e| {
                Rejection::new(
                    Reason::BadTimestamp,
                    format!("`{field}` `{s}` is not RFC 3339: {e}"),
                )
            })?
            .timestamp_millis(),
    };
    if ms < MIN_TS_MS {
        let hint = if ms > 1_000_000_000 {
            " (epoch seconds? ts is in milliseconds)"
        } else {
            ""
        };
        return Err(Rejection::new(
            Reason::BadTimestamp,
            format!("`{field}` {ms} is before 2001{hint}"),
        ));
    }
    if ms > MAX_TS_MS {
        return Err(Rejection::new(
            Reason::BadTimestamp,
            format!("`{field}` {ms} is after 2100"),
        ));
    }
    Ok(ms)
}

/// The event time of a message, or `None` when it has no valid `ts`. Reads only `ts`; for
/// callers that need a clock from the data itself (rule tests, backtests).
pub fn event_time(payload: &[u8]) -> Option<i64> {
    #[derive(Deserialize)]
    struct OnlyTs<'a> {
        #[serde(borrow)]
        ts: Ts<'a>,
    }
    let v: OnlyTs<'_> = serde_json::from_slice(payload).ok()?;
    parse_ts("ts", &v.ts).ok()
}

/// What the decoder checks event times against; one per input partition.
#[derive(Debug, Clone, Copy)]
pub struct TimeCheck {
    /// Highest event time accepted so far on the partition (`i64::MIN` before any).
    pub watermark: i64,
    /// `time.allowed_lateness` in ms.
    pub allowed_lateness_ms: i64,
    /// Events stamped after this (wall clock plus `time.max_future_skew`) are refused.
    pub max_ts: i64,
    /// Clamp such events to `max_ts` instead (`time.future_events: clamp`).
    pub clamp_future: bool,
}

impl TimeCheck {
    /// A check that refuses no event for its time, for rows that are not a partition's
    /// stream: the simulator's own events written as Parquet, tests and benches.
    pub fn accept_all() -> Self {
        Self {
            watermark: i64::MIN,
            allowed_lateness_ms: i64::MAX,
            max_ts: i64::MAX,
            clamp_future: false,
        }
    }
}

/// Builds one record batch of event schema v1 from messages.
pub struct EventBatchBuilder {
    ts: TimestampMillisecondBuilder,
    account_id: StringBuilder,
    ip: StringBuilder,
    strings: [StringBuilder; STRING_FIELDS.len()],
    ints: [Int64Builder; INT_FIELDS.len()],
    labels: ListBuilder<StringBuilder>,
    account_created: TimestampMillisecondBuilder,
    attrs: MapBuilder<StringBuilder, StringBuilder>,
    /// Event time of each row, in ms.
    pub times: Vec<i64>,
    /// Each row's address, as parsed when `ip` was checked.
    addrs: Vec<IpAddr>,
    /// The rows that carried a raw prompt, with the fingerprints derived from it.
    prompts: Vec<(usize, Fingerprints)>,
    max_message_bytes: usize,
    /// Per column of the event schema, whether rows fill it ([`EventBatchBuilder::project`]).
    keep: [bool; ATTRS_AT + 1],
    /// Per column, an all-null column of the longest batch so far, which the columns left out
    /// are sliced from: making them anew cost about 60 instructions an event.
    nulls: Vec<Option<ArrayRef>>,
}

/// Where the optional columns start in the event schema: `ts`, `account_id` and `ip` come first.
const STRINGS_AT: usize = 3;
const INTS_AT: usize = STRINGS_AT + STRING_FIELDS.len();
const LABELS_AT: usize = INTS_AT + INT_FIELDS.len();
const CREATED_AT: usize = LABELS_AT + 1;
const ATTRS_AT: usize = CREATED_AT + 1;

impl fmt::Debug for EventBatchBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventBatchBuilder")
            .field("rows", &self.times.len())
            .finish()
    }
}

impl EventBatchBuilder {
    /// A builder refusing messages over `max_message_bytes`.
    pub fn new(max_message_bytes: usize) -> Self {
        let tz = cordon_rules::schema::TZ;
        Self {
            ts: TimestampMillisecondBuilder::new().with_timezone(tz),
            account_id: StringBuilder::new(),
            ip: StringBuilder::new(),
            strings: std::array::from_fn(|_| StringBuilder::new()),
            ints: std::array::from_fn(|_| Int64Builder::new()),
            labels: ListBuilder::new(StringBuilder::new()),
            account_created: TimestampMillisecondBuilder::new().with_timezone(tz),
            attrs: MapBuilder::new(
                Some(MapFieldNames {
                    entry: "entries".into(),
                    key: "keys".into(),
                    value: "values".into(),
                }),
                StringBuilder::new(),
                StringBuilder::new(),
            ),
            times: Vec::new(),
            addrs: Vec::new(),
            prompts: Vec::new(),
            max_message_bytes,
            keep: [true; ATTRS_AT + 1],
            nulls: vec![None; ATTRS_AT + 1],
        }
    }

    /// Fills only the columns marked in `keep` (one flag per column of the event schema, as
    /// [`crate::plan::Plan::columns_read`] gives them); the others come out of
    /// [`finish`](Self::finish) as all-null columns of the same type. Every field is still
    /// decoded and checked, so what is refused does not change. `ts`, `account_id` and `ip`
    /// are always filled. Takes effect from the next row; call it between batches.
    pub fn project(&mut self, keep: &[bool]) {
        for (i, k) in self.keep.iter_mut().enumerate() {
            *k = i < STRINGS_AT || keep.get(i).copied().unwrap_or(true);
        }
    }

    /// Rows appended since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        self.times.len()
    }

    /// Whether no row is pending.
    pub fn is_empty(&self) -> bool {
        self.times.is_empty()
    }

    /// The event time of the row appended last, if a row is pending.
    pub fn last_time(&self) -> Option<i64> {
        self.times.last().copied()
    }

    /// Decodes one message and appends it as a row, or says why it was refused. On success the
    /// partition's watermark moves forward.
    pub fn push(&mut self, payload: &[u8], time: &mut TimeCheck) -> Result<(), Rejection> {
        if payload.len() > self.max_message_bytes {
            return Err(Rejection::new(
                Reason::TooLarge,
                format!(
                    "{} bytes, more than source.max_message_bytes = {}",
                    payload.len(),
                    self.max_message_bytes
                ),
            ));
        }
        let mut wire = Wire::default();
        if scan::wire_into(payload, &mut wire).is_none() {
            wire = match serde_json::from_slice(payload) {
                Ok(w) => w,
                Err(e) => return Err(classify(payload, &e)),
            };
        }
        self.append(&wire, time)
    }

    /// Checks a decoded message and appends it as a row, or says why it was refused. Kept
    /// apart from [`push`](Self::push), which parses: as one function the two took about 90
    /// instructions an event more (callgrind, the throughput mix).
    fn append(&mut self, wire: &Wire<'_>, time: &mut TimeCheck) -> Result<(), Rejection> {
        let ts = match &wire.ts {
            Some(ts) => parse_ts("ts", ts)?,
            None => {
                return Err(Rejection::new(
                    Reason::MissingField,
                    "missing required field `ts`",
                ));
            }
        };
        let account_id = match wire.account_id.as_deref() {
            Some(a) if !a.is_empty() => a,
            Some(_) => return Err(Rejection::new(Reason::BadValue, "`account_id` is empty")),
            None => {
                return Err(Rejection::new(
                    Reason::MissingField,
                    "missing required field `account_id`",
                ));
            }
        };
        let ip_text = wire.ip.as_deref().map(str::trim);
        let ip = match ip_text {
            Some(ip) => cordon_rules::udf::parse_ip(ip).ok_or_else(|| {
                Rejection::new(
                    Reason::BadIp,
                    format!("`ip` `{ip}` is not an IPv4 or IPv6 address"),
                )
            })?,
            None => {
                return Err(Rejection::new(
                    Reason::MissingField,
                    "missing required field `ip`",
                ));
            }
        };
        if let Some(h) = wire.prompt_simhash.as_deref()
            && (h.len() != 16 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(Rejection::new(
                Reason::BadValue,
                "`prompt_simhash` must be 16 hex digits",
            ));
        }
        let account_created = match &wire.account_created {
            Some(t) => Some(parse_ts("account_created", t)?),
            None => None,
        };
        let ts = if ts > time.max_ts && time.clamp_future {
            time.max_ts
        } else {
            ts
        };
        if ts > time.max_ts {
            return Err(Rejection::new(
                Reason::Future,
                format!(
                    "`ts` is {} ms ahead of the wall clock plus time.max_future_skew",
                    ts - time.max_ts
                ),
            ));
        }
        if time.watermark != i64::MIN
            && ts < time.watermark.saturating_sub(time.allowed_lateness_ms)
        {
            return Err(Rejection::new(
                Reason::Late,
                format!(
                    "`ts` is {} ms behind the partition's watermark; time.allowed_lateness is {} ms",
                    time.watermark - ts,
                    time.allowed_lateness_ms
                ),
            ));
        }
        time.watermark = time.watermark.max(ts);

        // Every check passed: append the row.
        let fps = wire.prompt.as_deref().map(fingerprints);
        self.ts.append_value(ts);
        self.account_id.append_value(account_id);
        match (ip, ip_text) {
            // A parsed IPv4 address's text is already canonical (the parser refuses leading
            // zeros and other forms), so it is kept as sent rather than formatted again.
            (IpAddr::V4(_), Some(text)) => self.ip.append_value(text),
            _ => self.ip.append_value(ip.to_string()),
        }
        let strings = [
            wire.request_id.as_deref(),
            wire.org_id.as_deref(),
            wire.api_key_id.as_deref(),
            wire.user_agent.as_deref(),
            wire.client_fp.as_deref(),
            wire.model.as_deref(),
            wire.endpoint.as_deref(),
            wire.prompt_fp
                .as_deref()
                .or(fps.as_ref().map(|f| f.prompt_fp.as_str())),
            wire.template_fp
                .as_deref()
                .or(fps.as_ref().map(|f| f.template_fp.as_str())),
            wire.prompt_simhash
                .as_deref()
                .or(fps.as_ref().map(|f| f.prompt_simhash.as_str())),
            wire.payment_fp.as_deref(),
            wire.country.as_deref(),
        ];
        // Indexed over arrays of fixed length, these loops unroll without bounds checks.
        for (i, v) in strings.iter().enumerate() {
            if self.keep[STRINGS_AT + i] {
                self.strings[i].append_option(*v);
            }
        }
        let ints = [
            wire.status,
            wire.input_tokens,
            wire.output_tokens,
            wire.reasoning_tokens,
            wire.max_tokens,
            wire.latency_ms,
            wire.asn,
        ];
        for (i, v) in ints.iter().enumerate() {
            if self.keep[INTS_AT + i] {
                self.ints[i].append_option(*v);
            }
        }
        match &wire.labels {
            _ if !self.keep[LABELS_AT] => {}
            Some(labels) => {
                for l in labels {
                    self.labels.values().append_value(l);
                }
                self.labels.append(true);
            }
            None => self.labels.append(false),
        }
        if self.keep[CREATED_AT] {
            self.account_created.append_option(account_created);
        }
        match &wire.attrs {
            _ if !self.keep[ATTRS_AT] => {}
            Some(Attrs(attrs)) => {
                for (k, v) in attrs {
                    self.attrs.keys().append_value(k);
                    self.attrs.values().append_value(v);
                }
                self.attrs
                    .append(true)
                    .map_err(|e| Rejection::new(Reason::BadValue, e.to_string()))?;
            }
            None => self
                .attrs
                .append(false)
                .map_err(|e| Rejection::new(Reason::BadValue, e.to_string()))?,
        }
        if let Some(f) = fps {
            self.prompts.push((self.times.len(), f));
        }
        self.times.push(ts);
        self.addrs.push(ip);
        Ok(())
    }

    /// Hands back what [`finish`](Self::finish) returned, so that the next batch fills the
    /// same vectors.
    pub fn recycle(&mut self, decoded: Decoded) {
        let Decoded {
            mut times,
            mut addrs,
            mut prompts,
            ..
        } = decoded;
        if self.prompts.is_empty() && prompts.capacity() > self.prompts.capacity() {
            prompts.clear();
            self.prompts = prompts;
        }
        if self.times.is_empty() && times.capacity() > self.times.capacity() {
            times.clear();
            self.times = times;
        }
        if self.addrs.is_empty() && addrs.capacity() > self.addrs.capacity() {
            addrs.clear();
            self.addrs = addrs;
        }
    }

    /// The rows appended so far as a record batch; the builder is empty afterwards, with room
    /// for a batch of the same size: the next batch fills its buffers without growing them
    /// (growing from empty cost about 330 instructions an event in reallocations and copies).
    pub fn finish(&mut self) -> Decoded {
        let mut columns: Vec<ArrayRef> = vec![
            finish_primitive(&mut self.ts),
            finish_strings(&mut self.account_id),
            finish_strings(&mut self.ip),
        ];
        columns.extend(self.strings.iter_mut().map(finish_strings));
        columns.extend(self.ints.iter_mut().map(finish_primitive));
        let labels = self.labels.finish();
        let values = labels.values().as_string::<i32>();
        self.labels = ListBuilder::with_capacity(
            StringBuilder::with_capacity(values.len(), values.value_data().len()),
            labels.len(),
        );
        columns.push(Arc::new(labels));
        columns.push(finish_primitive(&mut self.account_created));
        columns.push(Arc::new(self.attrs.finish()));
        let times = std::mem::take(&mut self.times);
        let schema = event_schema();
        // Columns left out by the projection are empty: all nulls, as many as the rows.
        let rows = times.len();
        for (((c, keep), nulls), field) in columns
            .iter_mut()
            .zip(&self.keep)
            .zip(&mut self.nulls)
            .zip(schema.fields())
        {
            if !keep {
                let nulls = match nulls {
                    Some(n) if n.len() >= rows => n,
                    _ => nulls.insert(new_null_array(field.data_type(), rows)),
                };
                *c = nulls.slice(0, rows);
            }
        }
        // The builders produce exactly the schema's types; a mismatch is a bug caught by tests.
        #[allow(clippy::expect_used)]
        let batch = RecordBatch::try_new(schema, columns).expect("decoder builds event schema v1");
        Decoded {
            batch,
            times,
            addrs: std::mem::take(&mut self.addrs),
            prompts: std::mem::take(&mut self.prompts),
        }
    }
}

/// A finished batch, with what the decoder worked out beside its columns.
#[derive(Debug)]
pub struct Decoded {
    /// The rows, in event schema v1.
    pub batch: RecordBatch,
    /// Each row's event time in ms (`ts` as checked: clamped when the config says so).
    pub times: Vec<i64>,
    /// Each row's address, as parsed when `ip` was checked (the `ip` column holds its text).
    pub addrs: Vec<IpAddr>,
    /// The rows that carried a raw prompt, in row order, with the fingerprints derived from it
    /// (what [`forward_payload`] writes in its place).
    pub prompts: Vec<(usize, Fingerprints)>,
}

/// Finishes a string column and leaves its builder with room for as many rows and bytes.
fn finish_strings(b: &mut StringBuilder) -> ArrayRef {
    let a = b.finish();
    *b = StringBuilder::with_capacity(a.len(), a.value_data().len());
    Arc::new(a)
}

/// Finishes a column of numbers or timestamps and leaves its builder with room for as many
/// rows, of the same type (a timestamp column keeps its time zone).
fn finish_primitive<T: ArrowPrimitiveType>(b: &mut PrimitiveBuilder<T>) -> ArrayRef {
    let a = b.finish();
    *b = PrimitiveBuilder::with_capacity(a.len()).with_data_type(a.data_type().clone());
    Arc::new(a)
}

/// Sorts a serde error into a reason.
fn classify(payload: &[u8], e: &serde_json::Error) -> Rejection {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            Rejection::new(Reason::InvalidJson, format!("invalid JSON: {e}"))
        }
        Category::Data => {
            let first = payload.iter().find(|b| !b.is_ascii_whitespace());
            if first != Some(&b'{') {
                Rejection::new(Reason::NotObject, "an event must be a JSON object")
            } else if e.to_string().contains("expected an RFC 3339") {
                Rejection::new(Reason::BadTimestamp, format!("{e}"))
            } else {
                Rejection::new(Reason::WrongType, format!("{e}"))
            }
        }
    }
}

/// Whether the bytes may hold a raw prompt: `"prompt"` (its key, or a value that says so), or
/// any `\u` escape, with which a key can spell `prompt` (`"pr\u006fmpt"`), which the decoder
/// reads as the prompt like any other. For bytes the decoder did not accept
/// ([`dead_letter_payload`]); a forwarded event's prompt is known from its decoding
/// ([`Decoded::prompts`]). The searcher is built once: `memmem::find` builds one per call.
fn mentions_prompt(payload: &[u8]) -> bool {
    static PROMPT: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"\"prompt\""));
    PROMPT.find(payload).is_some()
        || memchr::memchr_iter(b'\\', payload).any(|i| payload.get(i + 1) == Some(&b'u'))
}

/// The payload to put on the dead-letter topic: the original bytes, except that a raw prompt
/// is never emitted. A JSON object's `prompt` value is replaced by a marker; bytes that mention
/// `"prompt"` but cannot be parsed are withheld entirely. Returns the payload and whether it was
/// redacted.
pub fn dead_letter_payload(payload: &[u8]) -> (Cow<'_, [u8]>, bool) {
    if !mentions_prompt(payload) {
        return (Cow::Borrowed(payload), false);
    }
    match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(serde_json::Value::Object(mut map)) => {
            if let Some(p) = map.get_mut("prompt") {
                let len = p.as_str().map_or(0, str::len);
                *p = serde_json::Value::String(format!("[redacted: {len} bytes]"));
            }
            let bytes = serde_json::to_vec(&map).unwrap_or_default();
            (Cow::Owned(bytes), true)
        }
        Ok(_) => (Cow::Borrowed(payload), false),
        Err(_) => (Cow::Owned(Vec::new()), true),
    }
}

/// The payload to forward to the repartition topic: the original bytes, except that the raw
/// prompt of an event that carried one (`derived`: the fingerprints the decoder derived from
/// it, [`Decoded::prompts`]) is replaced by those fingerprints (the ones the event does not
/// carry itself). The second stage then reads what the first did, the prompt text never
/// reaches Kafka again, and neither the search nor the fingerprints are done twice. `None`
/// when such an event's bytes do not parse as a JSON object here, so that its prompt cannot be
/// removed: it is not forwarded.
pub fn forward_payload<'p>(
    payload: &'p [u8],
    derived: Option<&Fingerprints>,
) -> Option<Cow<'p, [u8]>> {
    let Some(fps) = derived else {
        return Some(Cow::Borrowed(payload));
    };
    let Ok(serde_json::Value::Object(mut map)) =
        serde_json::from_slice::<serde_json::Value>(payload)
    else {
        return None;
    };
    map.remove("prompt");
    for (field, value) in [
        ("prompt_fp", &fps.prompt_fp),
        ("template_fp", &fps.template_fp),
        ("prompt_simhash", &fps.prompt_simhash),
    ] {
        let slot = map.entry(field).or_insert(serde_json::Value::Null);
        if slot.is_null() {
            *slot = serde_json::Value::String(value.clone());
        }
    }
    serde_json::to_vec(&map).ok().map(Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{Int64Type, TimestampMillisecondType};

    const T0: i64 = 1_772_359_200_000; // 2026-03-01T10:00:00Z

    fn open_time() -> TimeCheck {
        TimeCheck {
            watermark: i64::MIN,
            allowed_lateness_ms: 300_000,
            max_ts: MAX_TS_MS,
            clamp_future: false,
        }
    }

    fn reject(payload: &str) -> Rejection {
        let mut b = EventBatchBuilder::new(1024);
        b.push(payload.as_bytes(), &mut open_time())
            .expect_err("should be refused")
    }

    #[test]
    fn full_event_decodes_every_field() {
        let mut b = EventBatchBuilder::new(1 << 20);
        let ev = r#"{"ts":"2026-03-01T10:00:00Z","account_id":"a1","ip":"203.0.113.7","request_id":"r1",
            "org_id":"o","api_key_id":"k","user_agent":"ua","client_fp":"cf","model":"m","endpoint":"/v1",
            "status":200,"input_tokens":10,"output_tokens":20,"reasoning_tokens":5,"max_tokens":100,
            "latency_ms":42,"prompt_fp":"p","template_fp":"t","prompt_simhash":"00ff00ff00ff00ff",
            "labels":["cot_elicitation","coding"],"payment_fp":"pay","country":"NZ","asn":64500,
            "account_created":1772000000000,"attrs":{"tier":"pro","n":3,"b":true,"skip":null},"extra":{"x":1}}"#;
        b.push(ev.as_bytes(), &mut open_time()).expect("valid");
        b.push(
            format!(
                r#"{{"ts":{},"account_id":"a2","ip":"2001:db8::1"}}"#,
                T0 + 1
            )
            .as_bytes(),
            &mut open_time(),
        )
        .expect("valid");
        let Decoded { batch, times, .. } = b.finish();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(times, vec![T0, T0 + 1]);
        let col = |n: &str| batch.column_by_name(n).expect(n).clone();
        assert_eq!(
            col("ts")
                .as_primitive::<TimestampMillisecondType>()
                .value(0),
            T0
        );
        assert_eq!(col("account_id").as_string::<i32>().value(1), "a2");
        assert_eq!(col("ip").as_string::<i32>().value(1), "2001:db8::1");
        assert_eq!(col("payment_fp").as_string::<i32>().value(0), "pay");
        assert!(col("payment_fp").is_null(1));
        assert_eq!(col("asn").as_primitive::<Int64Type>().value(0), 64500);
        assert_eq!(col("latency_ms").as_primitive::<Int64Type>().value(0), 42);
        let labels = col("labels");
        let labels = labels.as_list::<i32>();
        assert_eq!(labels.value(0).as_string::<i32>().value(1), "coding");
        assert!(labels.is_null(1));
        let attrs = col("attrs");
        let attrs = attrs.as_map();
        assert_eq!(attrs.value(0).len(), 3, "null attrs are dropped");
        assert_eq!(attrs.values().as_string::<i32>().value(1), "3");
        assert_eq!(
            col("account_created")
                .as_primitive::<TimestampMillisecondType>()
                .value(0),
            1_772_000_000_000
        );
    }

    #[test]
    fn a_projection_leaves_unread_columns_null_and_still_checks_them() {
        let schema = event_schema();
        let names = ["request_id", "latency_ms", "labels", "attrs"];
        let keep: Vec<bool> = schema
            .fields()
            .iter()
            .map(|f| names.contains(&f.name().as_str()))
            .collect();
        let mut b = EventBatchBuilder::new(1 << 20);
        b.project(&keep);
        let ev = |extra: &str| {
            format!(
                r#"{{"ts":{T0},"account_id":"a1","ip":"203.0.113.7","request_id":"r1","user_agent":"ua","latency_ms":42,"asn":7,"labels":["x"],"account_created":{T0},"attrs":{{"k":"v"}}{extra}}}"#
            )
        };
        b.push(ev("").as_bytes(), &mut open_time()).expect("valid");
        // A field nothing reads is still checked: a wrong type is refused as before.
        let wrong = b
            .push(ev(r#","country":7"#).as_bytes(), &mut open_time())
            .expect_err("wrong type");
        assert_eq!(wrong.reason, Reason::WrongType);
        let batch = b.finish().batch;
        assert_eq!(batch.schema(), schema);
        assert_eq!(batch.num_rows(), 1);
        for f in schema.fields() {
            let c = batch.column_by_name(f.name()).expect("column");
            assert_eq!(c.len(), 1, "{}", f.name());
            let filled = names.contains(&f.name().as_str())
                || ["ts", "account_id", "ip"].contains(&f.name().as_str());
            assert_eq!(c.is_valid(0), filled, "{}", f.name());
        }
        let latency = batch.column_by_name("latency_ms").expect("latency_ms");
        assert_eq!(latency.as_primitive::<Int64Type>().value(0), 42);
    }

    /// The builders keep their room from one batch to the next, and the columns left out are
    /// sliced from one kept all-null column: neither may leak rows across batches.
    #[test]
    fn batches_of_any_size_follow_one_another() {
        let schema = event_schema();
        let keep: Vec<bool> = schema
            .fields()
            .iter()
            .map(|f| ["request_id", "labels"].contains(&f.name().as_str()))
            .collect();
        let mut b = EventBatchBuilder::new(1 << 20);
        b.project(&keep);
        for (batch_no, rows) in [3usize, 1, 5, 2].into_iter().enumerate() {
            for r in 0..rows {
                let ev = format!(
                    r#"{{"ts":{},"account_id":"a{batch_no}-{r}","ip":"10.0.{batch_no}.{r}","request_id":"r{r}","model":"m","labels":["l{r}"]}}"#,
                    T0 + r as i64
                );
                b.push(ev.as_bytes(), &mut open_time()).expect("valid");
            }
            let Decoded { batch, times, .. } = b.finish();
            assert_eq!((batch.num_rows(), times.len()), (rows, rows));
            for (f, keep) in schema.fields().iter().zip(&keep) {
                let c = batch.column_by_name(f.name()).expect("column");
                assert_eq!(c.len(), rows, "{} in batch {batch_no}", f.name());
                let filled = *keep || ["ts", "account_id", "ip"].contains(&f.name().as_str());
                let nulls = if filled { 0 } else { rows };
                assert_eq!(c.null_count(), nulls, "{} in batch {batch_no}", f.name());
            }
            let accounts = batch.column_by_name("account_id").expect("account_id");
            let accounts: Vec<&str> = accounts.as_string::<i32>().iter().flatten().collect();
            let want: Vec<String> = (0..rows).map(|r| format!("a{batch_no}-{r}")).collect();
            assert_eq!(accounts, want);
            let labels = batch
                .column_by_name("labels")
                .expect("labels")
                .as_list::<i32>();
            assert_eq!(
                labels.value(rows - 1).as_string::<i32>().value(0),
                format!("l{}", rows - 1)
            );
        }
    }

    #[test]
    fn prompt_becomes_fingerprints() {
        let mut b = EventBatchBuilder::new(1 << 20);
        let ev = r#"{"ts":1772359200000,"account_id":"a","ip":"10.0.0.1","prompt":"Think step by step: what is 2+2?"}"#;
        b.push(ev.as_bytes(), &mut open_time()).expect("valid");
        let batch = b.finish().batch;
        let fp = batch.column_by_name("prompt_fp").expect("col");
        let expect = fingerprints("Think step by step: what is 2+2?");
        assert_eq!(fp.as_string::<i32>().value(0), expect.prompt_fp);
        let sim = batch.column_by_name("prompt_simhash").expect("col");
        assert_eq!(sim.as_string::<i32>().value(0), expect.prompt_simhash);
        assert!(
            batch.schema().field_with_name("prompt").is_err(),
            "no prompt column exists"
        );
    }

    #[test]
    fn every_malformed_kind_has_its_reason() {
        let cases = [
            ("{not json", Reason::InvalidJson),
            ("", Reason::InvalidJson),
            (
                r#"{"ts":1772359200000,"account_id":"a","ip":"10.0.0.1""#,
                Reason::InvalidJson,
            ),
            ("[1,2,3]", Reason::NotObject),
            ("\"just a string\"", Reason::NotObject),
            ("42", Reason::NotObject),
            (
                r#"{"account_id":"a","ip":"10.0.0.1"}"#,
                Reason::MissingField,
            ),
            (
                r#"{"ts":1772359200000,"ip":"10.0.0.1"}"#,
                Reason::MissingField,
            ),
            (
                r#"{"ts":1772359200000,"account_id":null,"ip":"10.0.0.1"}"#,
                Reason::MissingField,
            ),
            (
                r#"{"ts":1772359200000,"account_id":"a"}"#,
                Reason::MissingField,
            ),
            (
                r#"{"ts":1772359200000,"account_id":7,"ip":"10.0.0.1"}"#,
                Reason::WrongType,
            ),
            (
                r#"{"ts":1772359200000,"account_id":"a","ip":"10.0.0.1","status":"ok"}"#,
                Reason::WrongType,
            ),
            (
                r#"{"ts":1772359200000,"account_id":"a","ip":"10.0.0.1","labels":"x"}"#,
                Reason::WrongType,
            ),
            (
                r#"{"ts":1772359200000,"account_id":"a","ip":"10.0.0.1","attrs":{"x":{"y":1}}}"#,
                Reason::WrongType,
            ),
            (
                r#"{"ts":true,"account_id":"a","ip":"10.0.0.1"}"#,
                Reason::BadTimestamp,
            ),
            (
                r#"{"ts":"yesterday","account_id":"a","ip":"10.0.0.1"}"#,
                Reason::BadTimestamp,
            ),
            (
                r#"{"ts":1772359200,"account_id":"a","ip":"10.0.0.1"}"#,
                Reason::BadTimestamp,
            ),
            (
                r#"{"ts":1.5,"account_id":"a","ip":"10.0.0.1"}"#,
                Reason::BadTimestamp,
            ),
            (
                r#"{"ts":1772359200000,"account_id":"a","ip":"10.0.0.1","account_created":"x"}"#,
                Reason::BadTimestamp,
            ),
            (
                r#"{"ts":1772359200000,"account_id":"a","ip":"10.0.0.300"}"#,
                Reason::BadIp,
            ),
            (
                r#"{"ts":1772359200000,"account_id":"a","ip":"example.com"}"#,
                Reason::BadIp,
            ),
            // Leading zeros are ambiguous (octal in some parsers) and refused, which is also
            // what lets an IPv4 address's text be kept as sent.
            (
                r#"{"ts":1772359200000,"account_id":"a","ip":"010.0.0.1"}"#,
                Reason::BadIp,
            ),
            (
                r#"{"ts":1772359200000,"account_id":"","ip":"10.0.0.1"}"#,
                Reason::BadValue,
            ),
            (
                r#"{"ts":1772359200000,"account_id":"a","ip":"10.0.0.1","prompt_simhash":"xyz"}"#,
                Reason::BadValue,
            ),
        ];
        for (payload, want) in cases {
            assert_eq!(reject(payload).reason, want, "{payload}");
        }
    }

    #[test]
    fn addresses_are_stored_in_canonical_text() {
        let mut b = EventBatchBuilder::new(1024);
        for (i, ip) in [" 203.0.113.7 ", "2001:DB8:0:0::1", "::ffff:192.0.2.1"]
            .iter()
            .enumerate()
        {
            let ev = format!(r#"{{"ts":{},"account_id":"a","ip":"{ip}"}}"#, T0 + i as i64);
            b.push(ev.as_bytes(), &mut open_time()).expect("valid");
        }
        let batch = b.finish().batch;
        let ips = batch
            .column_by_name("ip")
            .expect("ip")
            .as_string::<i32>()
            .clone();
        let ips: Vec<&str> = ips.iter().flatten().collect();
        assert_eq!(ips, ["203.0.113.7", "2001:db8::1", "::ffff:192.0.2.1"]);
    }

    #[test]
    fn too_large_is_refused_before_parsing() {
        let mut b = EventBatchBuilder::new(64);
        let big = format!(
            r#"{{"ts":1772359200000,"account_id":"{}","ip":"10.0.0.1"}}"#,
            "a".repeat(100)
        );
        let r = b
            .push(big.as_bytes(), &mut open_time())
            .expect_err("too big");
        assert_eq!(r.reason, Reason::TooLarge);
    }

    #[test]
    fn late_and_future_events_are_refused() {
        let mut b = EventBatchBuilder::new(1024);
        let mut time = TimeCheck {
            watermark: i64::MIN,
            allowed_lateness_ms: 60_000,
            max_ts: T0 + 10_000,
            clamp_future: false,
        };
        let ev = |ts: i64| format!(r#"{{"ts":{ts},"account_id":"a","ip":"10.0.0.1"}}"#);
        b.push(ev(T0).as_bytes(), &mut time).expect("first");
        assert_eq!(time.watermark, T0);
        b.push(ev(T0 - 60_000).as_bytes(), &mut time)
            .expect("within lateness");
        assert_eq!(
            b.push(ev(T0 - 60_001).as_bytes(), &mut time)
                .expect_err("late")
                .reason,
            Reason::Late
        );
        assert_eq!(
            b.push(ev(T0 + 10_001).as_bytes(), &mut time)
                .expect_err("future")
                .reason,
            Reason::Future
        );
        assert_eq!(
            time.watermark, T0,
            "refused events do not move the watermark"
        );
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn future_events_are_clamped_when_configured() {
        let mut b = EventBatchBuilder::new(1024);
        let mut time = TimeCheck {
            watermark: i64::MIN,
            allowed_lateness_ms: 60_000,
            max_ts: T0 + 10_000,
            clamp_future: true,
        };
        let ev = |ts: i64| format!(r#"{{"ts":{ts},"account_id":"a","ip":"10.0.0.1"}}"#);
        b.push(ev(T0 + 86_400_000).as_bytes(), &mut time)
            .expect("clamped, not refused");
        assert_eq!(
            time.watermark,
            T0 + 10_000,
            "the watermark moves to the limit only"
        );
        let times = b.finish().times;
        assert_eq!(times, vec![T0 + 10_000]);
    }

    #[test]
    fn a_failed_row_leaves_the_batch_consistent() {
        let mut b = EventBatchBuilder::new(1024);
        let mut time = open_time();
        b.push(
            br#"{"ts":1772359200000,"account_id":"a","ip":"10.0.0.1"}"#,
            &mut time,
        )
        .expect("ok");
        let _ = b.push(
            br#"{"ts":1772359200000,"account_id":"a","ip":"bad"}"#,
            &mut time,
        );
        b.push(
            br#"{"ts":1772359200001,"account_id":"b","ip":"10.0.0.2","labels":[]}"#,
            &mut time,
        )
        .expect("ok");
        let batch = b.finish().batch;
        assert_eq!(batch.num_rows(), 2);
    }

    /// The fingerprints the decoder derives from `raw`'s prompt, as the input stage hands
    /// them to [`forward_payload`]; `None` when it carries none.
    fn derived(raw: &[u8]) -> Option<Fingerprints> {
        let mut b = EventBatchBuilder::new(1 << 20);
        b.push(raw, &mut open_time()).expect("decodes");
        let mut prompts = b.finish().prompts;
        assert!(prompts.len() <= 1 && prompts.iter().all(|(row, _)| *row == 0));
        prompts.pop().map(|(_, f)| f)
    }

    #[test]
    fn forwarded_events_carry_the_prompts_fingerprints_and_never_its_text() {
        let prompt = "Think step by step: what is 2+2?";
        let raw = format!(
            r#"{{"ts":1772359200000,"account_id":"a","ip":"10.0.0.1","prompt":"{prompt}","template_fp":"mine"}}"#
        );
        let fps = derived(raw.as_bytes());
        assert!(fps.is_some(), "the decoder saw the prompt");
        let forwarded = forward_payload(raw.as_bytes(), fps.as_ref())
            .expect("rewritten")
            .into_owned();
        let text = String::from_utf8(forwarded.clone()).expect("utf8");
        assert!(
            !text.contains("step by step") && !text.contains("\"prompt\""),
            "{text}"
        );
        // The second stage decodes what the first did: derived fingerprints, and the
        // gateway's own where it sent one.
        let mut b = EventBatchBuilder::new(1024);
        b.push(&forwarded, &mut open_time()).expect("decodes");
        let batch = b.finish().batch;
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .expect("col")
                .as_string::<i32>()
                .value(0)
                .to_owned()
        };
        let expect = fingerprints(prompt);
        assert_eq!(col("prompt_fp"), expect.prompt_fp);
        assert_eq!(col("prompt_simhash"), expect.prompt_simhash);
        assert_eq!(col("template_fp"), "mine");
        // Events without a prompt go as they are, without a copy.
        let plain = br#"{"ts":1772359200000,"account_id":"a","ip":"10.0.0.1"}"#;
        let none = derived(plain);
        assert!(none.is_none());
        assert!(
            matches!(forward_payload(plain, none.as_ref()), Some(Cow::Borrowed(p)) if p == plain)
        );
        // A prompt whose bytes do not parse here is not forwarded at all.
        assert_eq!(forward_payload(b"{\"prompt\": oops", fps.as_ref()), None);
    }

    /// Regression: a prompt key written with escapes was decoded as the prompt, but the byte
    /// search for `"prompt"` missed it, and the raw text went to the repartition topic (and
    /// would have gone to the dead-letter topic) as it came.
    #[test]
    fn a_prompt_key_spelled_with_escapes_never_leaves_either() {
        let secret = "secret words here";
        let raw = format!(
            r#"{{"ts":1772359200000,"account_id":"a","ip":"10.0.0.1","pr\u006fmpt":"{secret}"}}"#
        );
        let mut b = EventBatchBuilder::new(1024);
        b.push(raw.as_bytes(), &mut open_time()).expect("decodes");
        let batch = b.finish().batch;
        let fp = batch.column_by_name("prompt_fp").expect("prompt_fp");
        assert!(!fp.is_null(0), "the decoder reads it as the prompt");
        let fps = derived(raw.as_bytes());
        let forwarded = forward_payload(raw.as_bytes(), fps.as_ref())
            .expect("rewritten")
            .into_owned();
        let text = String::from_utf8_lossy(&forwarded);
        assert!(
            !text.contains(secret) && text.contains("prompt_fp"),
            "{text}"
        );
        let (dead, redacted) = dead_letter_payload(raw.as_bytes());
        assert!(redacted);
        assert!(!String::from_utf8_lossy(&dead).contains(secret));
        // Unparseable with an escape: withheld, as for a literal "prompt".
        let broken = format!(r#"{{"pr\u006fmpt":"{secret}", oops"#);
        assert_eq!(
            dead_letter_payload(broken.as_bytes()),
            (Cow::Owned(Vec::new()), true)
        );
        // Other escapes carry no prompt: such an event goes as it came.
        let plain = br#"{"ts":1772359200000,"account_id":"a","ip":"10.0.0.1","user_agent":"a\\b"}"#;
        let none = derived(plain);
        assert!(
            matches!(forward_payload(plain, none.as_ref()), Some(Cow::Borrowed(p)) if p == plain)
        );
    }

    #[test]
    fn dead_letters_never_carry_prompt_text() {
        let (p, redacted) =
            dead_letter_payload(br#"{"ts":"bad","prompt":"secret plan","account_id":"a"}"#);
        assert!(redacted);
        let text = String::from_utf8(p.into_owned()).expect("utf8");
        assert!(!text.contains("secret plan"), "{text}");
        assert!(text.contains("redacted: 11 bytes"), "{text}");
        let (p, redacted) = dead_letter_payload(br#"{"prompt":"secret plan", oops"#);
        assert!(redacted && p.is_empty());
        let raw = br#"{"ts":"bad","account_id":"a"}"#;
        let (p, redacted) = dead_letter_payload(raw);
        assert!(!redacted);
        assert_eq!(&*p, raw);
    }
}
