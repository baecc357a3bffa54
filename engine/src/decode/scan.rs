//! The decoder's fast path: one forward pass over a flat event object, straight into
//! [`Wire`], without serde's per-field machinery.
//!
//! It takes only what it can read without doubt: an object of known and unknown fields whose
//! keys and strings carry no escape or control character, whose numbers are integers of at
//! most 18 digits, and whose only nested values are the `labels` array and a flat `attrs`
//! object. Anything else (an escape, a float, a duplicate field, a nested unknown value, a
//! wrong type, bytes that are not UTF-8, malformed JSON) makes it give up, and the message goes through serde_json as
//! before, which decodes it or says exactly what is wrong. So the fast path never decides an
//! error, and where it decides a success, serde_json decides the same (a property test
//! checks that property on generated and damaged messages, below).
//!
//! Why hand-written: serde_json spends 1.1-1.2 µs on a 492-byte simulator event (the decode
//! bench), more than the engine's whole per-event budget of 1 µs; sonic-rs was slower without
//! host CPU flags (README, Performance).

use super::{Attrs, Ts, Wire};
use std::borrow::Cow;
use wide::u8x16;

/// `payload` as a [`Wire`], or `None` when the fast path does not take it (see the module
/// doc): the caller then parses it with serde_json.
#[cfg(test)]
pub(super) fn wire(payload: &[u8]) -> Option<Wire<'_>> {
    let mut w = Wire::default();
    wire_into(payload, &mut w).map(|()| w)
}

/// Reads `payload` into `w`, which starts empty; `None` when the fast path does not take it,
/// and `w` then holds part of the message and the caller parses it with serde_json. Filling
/// the caller's `Wire` rather than returning one saves copying it (about 600 bytes) per event.
///
/// Never inlined: inlined into `EventBatchBuilder::push` it took about 95 instructions an
/// event more (callgrind), and whether the compiler inlined it changed with unrelated edits.
#[inline(never)]
pub(super) fn wire_into<'a>(payload: &'a [u8], w: &mut Wire<'a>) -> Option<()> {
    // Checked once for the whole message: every string is then a slice of valid text.
    let text = std::str::from_utf8(payload).ok()?;
    let mut s = Scanner {
        text,
        b: payload,
        i: 0,
    };
    let mut seen = 0u32;
    s.ws();
    // The object's members are read into `w` as they come; `seq` collects nothing.
    let members = s.seq(b'{', b'}', |s| {
        let field = s.key_field()?;
        // Compact JSON, as gateways write it: the colon follows the key at once.
        if !s.eat_if(b':') {
            s.ws();
            s.eat(b':')?;
        }
        s.ws();
        match field {
            Some(f) => {
                // serde's derive refuses a field given twice.
                let bit = 1u32 << f;
                if seen & bit != 0 {
                    return None;
                }
                seen |= bit;
                s.field(f, w)?;
            }
            None => s.skip_scalar()?,
        }
        Some(None::<()>)
    });
    // `null` is not an event.
    members??;
    s.ws();
    (s.i == s.b.len()).then_some(())
}

/// The field names, in the order [`Scanner::field`] dispatches on.
const FIELDS: [&[u8]; 26] = [
    b"ts",
    b"account_id",
    b"ip",
    b"request_id",
    b"org_id",
    b"api_key_id",
    b"user_agent",
    b"client_fp",
    b"model",
    b"endpoint",
    b"prompt_fp",
    b"template_fp",
    b"prompt_simhash",
    b"payment_fp",
    b"country",
    b"status",
    b"input_tokens",
    b"output_tokens",
    b"reasoning_tokens",
    b"max_tokens",
    b"latency_ms",
    b"asn",
    b"labels",
    b"account_created",
    b"attrs",
    b"prompt",
];

/// The longest field name, in bytes: a key is matched as two little-endian words.
const NAME_MAX: usize = 16;

/// A key of at most [`NAME_MAX`] bytes as two little-endian words, zero past its end. Keys
/// hold no NUL byte (a control character ends the fast path), so the words name the key.
const fn name_words(key: &[u8]) -> (u64, u64) {
    let mut w = [0u64; 2];
    let mut i = 0;
    while i < key.len() && i < NAME_MAX {
        w[i / 8] |= (key[i] as u64) << (8 * (i % 8));
        i += 1;
    }
    (w[0], w[1])
}

/// A mask of the low `n` bytes of a word.
const fn low_bytes(n: usize) -> u64 {
    if n >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * n)) - 1
    }
}

/// Per key length up to [`NAME_MAX`], the masks that keep a key's bytes of its two words.
const KEY_MASKS: [(u64, u64); NAME_MAX + 1] = {
    let mut out = [(0, 0); NAME_MAX + 1];
    let mut n = 0;
    while n <= NAME_MAX {
        out[n] = (low_bytes(n), low_bytes(n.saturating_sub(8)));
        n += 1;
    }
    out
};

/// Every field name's [`name_words`], in [`FIELDS`] order.
const FIELD_WORDS: [(u64, u64); 26] = {
    let mut out = [(0, 0); 26];
    let mut f = 0;
    while f < FIELDS.len() {
        out[f] = name_words(FIELDS[f]);
        f += 1;
    }
    out
};

/// The field that shares its first word with another: `account_created` ("account_" as
/// `account_id`, [`SHARED_WITH`]). [`field_of`] finds it from `account_id`'s slot.
const SHARED: usize = 23;
/// `account_id`, whose slot [`SHARED`] is found from.
const SHARED_WITH: usize = 1;

/// Bits of [`FIELD_HASH`] a first word hashes to: 64 slots for 25 distinct first words.
const HASH_BITS: u32 = 6;

/// A multiplier that sends every field name's first word to a slot of its own (`account_id`
/// and `account_created` share theirs), found at compile time: the first odd step of the
/// golden-ratio sequence that has no collision. About one in 250 multipliers has none.
const FIELD_HASH: u64 = {
    assert!(
        FIELD_WORDS[SHARED].0 == FIELD_WORDS[SHARED_WITH].0,
        "field_of finds the shared field from account_id's slot"
    );
    let mut m: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut tries = 0;
    loop {
        let mut used = 0u64;
        let mut f = 0;
        while f < FIELDS.len() {
            if f != SHARED {
                let bit = 1u64 << (FIELD_WORDS[f].0.wrapping_mul(m) >> (64 - HASH_BITS));
                if used & bit != 0 {
                    break;
                }
                used |= bit;
            }
            f += 1;
        }
        if f == FIELDS.len() {
            break m;
        }
        tries += 1;
        assert!(tries < 100_000, "no perfect multiplier for the field names");
        m = m.wrapping_add(0x9e37_79b9_7f4a_7c15 << 1) | 1;
    }
};

/// The slot of a first word in [`SLOT_FIELD`].
const fn slot_of(w0: u64) -> usize {
    (w0.wrapping_mul(FIELD_HASH) >> (64 - HASH_BITS)) as usize
}

/// Per slot, the field whose first word lands there, or `u8::MAX`.
const SLOT_FIELD: [u8; 1 << HASH_BITS] = {
    let mut out = [u8::MAX; 1 << HASH_BITS];
    let mut f = 0;
    while f < FIELDS.len() {
        if f != SHARED {
            out[slot_of(FIELD_WORDS[f].0)] = f as u8;
        }
        f += 1;
    }
    out
};

/// The index of the field whose name is `words` ([`name_words`]), if any: the first word's
/// slot names the one candidate, a compare of both words confirms it. With the key masks'
/// table, 23 instructions a key fewer than the `match` on the first word this replaced
/// (callgrind, the throughput mix).
fn field_of(words: (u64, u64)) -> Option<usize> {
    let f = usize::from(SLOT_FIELD[slot_of(words.0)]);
    match FIELD_WORDS.get(f) {
        Some(w) if *w == words => Some(f),
        _ if f == SHARED_WITH && FIELD_WORDS[SHARED] == words => Some(SHARED),
        _ => None,
    }
}

/// The index of a [`Wire`] field, in the order [`Scanner::field`] dispatches on.
fn field_index(key: &[u8]) -> Option<usize> {
    if key.len() > NAME_MAX {
        return None;
    }
    field_of(name_words(key))
}

/// A bit for each byte of `chunk` that is a quote, a backslash or a control character:
/// sixteen bytes in a few vector instructions (SSE2 on x86-64, NEON on aarch64), where the
/// word-at-a-time test it replaced took about fifteen for eight.
fn special16(chunk: &[u8; 16]) -> u32 {
    let v = u8x16::from(*chunk);
    let control = u8x16::splat(0x1f);
    // A byte is at most 0x1f when the larger of it and 0x1f is 0x1f.
    (v.simd_eq(u8x16::splat(b'"'))
        | v.simd_eq(u8x16::splat(b'\\'))
        | v.max(control).simd_eq(control))
    .to_bitmask()
}

struct Scanner<'a> {
    /// The message, valid UTF-8.
    text: &'a str,
    /// The same, as bytes.
    b: &'a [u8],
    i: usize,
}

/// A JSON value the fast path reads in a field's place.
enum Scalar<'a> {
    Str(&'a str),
    Int(i64),
    Bool(bool),
    Null,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// Skips JSON whitespace.
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        self.eat_if(c).then_some(())
    }

    fn eat_if(&mut self, c: u8) -> bool {
        let hit = self.peek() == Some(c);
        self.i += usize::from(hit);
        hit
    }

    fn lit(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i + word.len();
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// A string's text, without the quotes; gives up at an escape or a control character
    /// (serde_json refuses a raw control character in a string).
    fn str(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        // Sixteen bytes at a time to the first quote, backslash or control character.
        let mut end = start;
        while let Some(chunk) = self.b.get(end..).and_then(<[u8]>::first_chunk::<16>) {
            let hits = special16(chunk);
            if hits != 0 {
                end += hits.trailing_zeros() as usize;
                break;
            }
            end += 16;
        }
        if self.b.get(end..end + 16).is_none() {
            end += self
                .b
                .get(end..)?
                .iter()
                .position(|c| matches!(c, b'"' | b'\\' | 0..=0x1f))?;
        }
        if self.b[end] != b'"' {
            return None;
        }
        self.i = end + 1;
        self.text.get(start..end)
    }

    /// A member's key as the field it names: `Some(Some(f))` for field `f`, `Some(None)` for a
    /// key that names none (its value is skipped), `None` where [`Scanner::str`] gives up.
    ///
    /// Most keys are field names of at most [`NAME_MAX`] bytes: their sixteen bytes are read
    /// at once, one vector compare finds the closing quote ([`special16`]) and the same bytes
    /// as two words name the field: about 40 instructions a key where a string scan followed
    /// by a match of the text against every name took 124 (callgrind, the throughput mix). A
    /// longer key, or one near the end of the message, takes the string scan.
    fn key_field(&mut self) -> Option<Option<usize>> {
        const CHUNK: usize = NAME_MAX + 2;
        let Some(chunk) = self.b.get(self.i..).and_then(<[u8]>::first_chunk::<CHUNK>) else {
            return self.str().map(|k| field_index(k.as_bytes()));
        };
        if chunk[0] != b'"' {
            return None;
        }
        let name = chunk[1..].first_chunk::<NAME_MAX>()?;
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&name[at..at + 8]);
            u64::from_le_bytes(w)
        };
        let (w0, w1) = (word(0), word(8));
        // Where the first quote, backslash or control character is, as a key length.
        let len = match special16(name) {
            0 => NAME_MAX,
            m => m.trailing_zeros() as usize,
        };
        // An escape or a control character: give up, as the string scan would. No quote in
        // reach: a key longer than any name, which the string scan reads and skips.
        match chunk[len + 1] {
            b'"' => {}
            b'\\' | 0..=0x1f => return None,
            _ => return self.str().map(|k| field_index(k.as_bytes())),
        }
        self.i += len + 2;
        let (m0, m1) = KEY_MASKS[len];
        Some(field_of((w0 & m0, w1 & m1)))
    }

    /// An integer as JSON writes it (`-?(0|[1-9][0-9]*)`, at most 18 digits, so it fits an
    /// `i64`); gives up at a fraction or an exponent, and at `-0`, which serde_json reads as
    /// the float -0.0.
    fn int(&mut self) -> Option<i64> {
        let neg = self.eat_if(b'-');
        let start = self.i;
        let mut v: i64 = 0;
        while let Some(d @ b'0'..=b'9') = self.peek() {
            if self.i - start == 18 {
                return None;
            }
            v = v * 10 + i64::from(d - b'0');
            self.i += 1;
        }
        let digits = self.i - start;
        if digits == 0 || (digits > 1 && self.b[start] == b'0') || (neg && v == 0) {
            return None;
        }
        if let Some(b'.' | b'e' | b'E') = self.peek() {
            return None;
        }
        Some(if neg { -v } else { v })
    }

    fn scalar(&mut self) -> Option<Scalar<'a>> {
        Some(match self.peek()? {
            b'"' => Scalar::Str(self.str()?),
            b'-' | b'0'..=b'9' => Scalar::Int(self.int()?),
            b't' => {
                self.lit(b"true")?;
                Scalar::Bool(true)
            }
            b'f' => {
                self.lit(b"false")?;
                Scalar::Bool(false)
            }
            b'n' => {
                self.lit(b"null")?;
                Scalar::Null
            }
            _ => return None,
        })
    }

    /// An unknown field's value: any scalar (nested values go to serde).
    fn skip_scalar(&mut self) -> Option<()> {
        self.scalar().map(|_| ())
    }

    // A field's value is read by the kind the field takes (any other kind gives up), not as a
    // scalar first: one dispatch a value rather than two.

    fn opt_str(&mut self) -> Option<Option<Cow<'a, str>>> {
        match self.peek()? {
            b'"' => self.str().map(|s| Some(Cow::Borrowed(s))),
            b'n' => self.lit(b"null").map(|()| None),
            _ => None,
        }
    }

    fn opt_int(&mut self) -> Option<Option<i64>> {
        match self.peek()? {
            b'-' | b'0'..=b'9' => self.int().map(Some),
            b'n' => self.lit(b"null").map(|()| None),
            _ => None,
        }
    }

    fn opt_ts(&mut self) -> Option<Option<Ts<'a>>> {
        match self.peek()? {
            b'"' => self.str().map(|s| Some(Ts::Text(Cow::Borrowed(s)))),
            b'-' | b'0'..=b'9' => self.int().map(|v| Some(Ts::Millis(v))),
            b'n' => self.lit(b"null").map(|()| None),
            _ => None,
        }
    }

    /// Null, or a run of items between `open` and `close` separated by commas: `item` reads
    /// one (`Some(None)` reads one and drops it).
    fn seq<T>(
        &mut self,
        open: u8,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Option<Option<T>>,
    ) -> Option<Option<Vec<T>>> {
        if self.peek()? == b'n' {
            self.lit(b"null")?;
            return Some(None);
        }
        self.eat(open)?;
        let mut out = Vec::new();
        self.ws();
        if self.eat_if(close) {
            return Some(Some(out));
        }
        loop {
            self.ws();
            out.extend(item(self)?);
            // Compact JSON: the comma follows the value at once.
            if !self.eat_if(b',') {
                self.ws();
                if !self.eat_if(b',') {
                    self.eat(close)?;
                    return Some(Some(out));
                }
            }
        }
    }

    /// `labels`: null or an array of strings.
    fn labels(&mut self) -> Option<Option<Vec<Cow<'a, str>>>> {
        self.seq(b'[', b']', |s| s.str().map(|l| Some(Cow::Borrowed(l))))
    }

    /// `attrs`: null or an object of string, integer, boolean or null values (null ones
    /// dropped, as [`super::AttrValue`] does).
    fn attrs(&mut self) -> Option<Option<Attrs<'a>>> {
        let pairs = self.seq(b'{', b'}', |s| {
            let key = s.str()?;
            s.ws();
            s.eat(b':')?;
            s.ws();
            let value = match s.scalar()? {
                Scalar::Str(v) => Some(v.to_owned()),
                Scalar::Int(v) => Some(v.to_string()),
                Scalar::Bool(v) => Some(v.to_string()),
                Scalar::Null => None,
            };
            Some(value.map(|v| (Cow::Borrowed(key), v)))
        })?;
        Some(pairs.map(Attrs))
    }

    /// Reads field `f` (an index into [`FIELDS`]) into `w`.
    fn field(&mut self, f: usize, w: &mut Wire<'a>) -> Option<()> {
        match f {
            0 => w.ts = self.opt_ts()?,
            1 => w.account_id = self.opt_str()?,
            2 => w.ip = self.opt_str()?,
            3 => w.request_id = self.opt_str()?,
            4 => w.org_id = self.opt_str()?,
            5 => w.api_key_id = self.opt_str()?,
            6 => w.user_agent = self.opt_str()?,
            7 => w.client_fp = self.opt_str()?,
            8 => w.model = self.opt_str()?,
            9 => w.endpoint = self.opt_str()?,
            10 => w.prompt_fp = self.opt_str()?,
            11 => w.template_fp = self.opt_str()?,
            12 => w.prompt_simhash = self.opt_str()?,
            13 => w.payment_fp = self.opt_str()?,
            14 => w.country = self.opt_str()?,
            15 => w.status = self.opt_int()?,
            16 => w.input_tokens = self.opt_int()?,
            17 => w.output_tokens = self.opt_int()?,
            18 => w.reasoning_tokens = self.opt_int()?,
            19 => w.max_tokens = self.opt_int()?,
            20 => w.latency_ms = self.opt_int()?,
            21 => w.asn = self.opt_int()?,
            22 => w.labels = self.labels()?,
            23 => w.account_created = self.opt_ts()?,
            24 => w.attrs = self.attrs()?,
            25 => w.prompt = self.opt_str()?,
            _ => return None,
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What serde_json makes of `payload` (the slow path).
    fn serde(payload: &[u8]) -> Option<Wire<'_>> {
        serde_json::from_slice(payload).ok()
    }

    /// The property the decoder relies on: what the fast path takes, serde_json takes, with the
    /// same values.
    fn agrees(payload: &[u8]) -> Result<(), TestCaseError> {
        if let Some(fast) = wire(payload) {
            let slow = serde(payload);
            prop_assert_eq!(
                Some(fast),
                slow,
                "payload {:?}",
                String::from_utf8_lossy(payload)
            );
        }
        Ok(())
    }

    #[test]
    fn takes_the_simulators_events() {
        use crate::simulate::{SimOptions, Simulation};
        let mut sim = Simulation::new(SimOptions {
            seed: 5,
            benign_accounts: 2_000,
            ..SimOptions::default()
        });
        let events = sim.hour(0);
        assert!(events.len() > 1_000, "{} events", events.len());
        for event in &events {
            let payload = serde_json::to_vec(event).expect("serializes");
            let fast = wire(&payload);
            assert!(fast.is_some(), "{}", String::from_utf8_lossy(&payload));
            assert_eq!(fast, serde(&payload));
        }
    }

    #[test]
    fn the_marks_are_the_special_bytes() {
        let is_special = |c: u8| c == b'"' || c == b'\\' || c < 0x20;
        for at in 0..16 {
            for c in 0..=255u8 {
                for after in [b'a', b'"', 0x01, 0xff] {
                    let mut chunk = [b'a'; 16];
                    chunk[at] = c;
                    if at + 1 < 16 {
                        chunk[at + 1] = after;
                    }
                    let want = (0..16)
                        .filter(|&i| is_special(chunk[i]))
                        .fold(0u32, |m, i| m | 1 << i);
                    assert_eq!(special16(&chunk), want, "{chunk:?}");
                }
            }
        }
    }

    #[test]
    fn gives_up_where_serde_must_decide() {
        for payload in [
            // Escapes, in a value and in a key.
            r#"{"ts":1,"account_id":"a\"b","ip":"1.2.3.4"}"#,
            r#"{"t\u0073":1}"#,
            // Numbers serde_json reads as floats, or refuses.
            r#"{"ts":1.5}"#,
            r#"{"ts":1e3}"#,
            r#"{"status":-0}"#,
            r#"{"status":01}"#,
            r#"{"status":1234567890123456789}"#,
            // A field twice, nested unknown values, wrong types.
            r#"{"ts":1,"ts":2}"#,
            r#"{"extra":{"x":1}}"#,
            r#"{"extra":[1]}"#,
            r#"{"status":"200"}"#,
            r#"{"account_id":7}"#,
            r#"{"labels":["a",1]}"#,
            r#"{"attrs":{"f":1.5}}"#,
            // Malformed.
            r#"{"ts":1,}"#,
            r#"{"ts":1} x"#,
            r#"["ts"]"#,
            "{\"ip\":\"1.2.3.4\u{1}\"}",
            "",
        ] {
            assert!(wire(payload.as_bytes()).is_none(), "{payload}");
        }
        // Invalid UTF-8 in an unknown field's value or key.
        assert!(wire(b"{\"x\":\"\xff\"}").is_none());
        assert!(wire(b"{\"\xff\":1}").is_none());
    }

    #[test]
    fn reads_what_it_takes_like_serde() {
        for payload in [
            "{}",
            " { } \n",
            r#"{"ts":"2026-03-01T10:00:00Z","account_id":"a","ip":"::1","status":null}"#,
            r#"{ "ts" : -5 , "labels" : [ ] , "attrs" : { } , "x" : true , "y" : null }"#,
            r#"{"labels":null,"attrs":null,"account_created":1772000000000}"#,
            r#"{"attrs":{"tier":"pro","n":-3,"b":false,"skip":null,"tier":"x"}}"#,
            r#"{"account_id":"日本語","country":"é","status":123456789012345678}"#,
            // Whitespace at every place the compact path skips its look for it.
            "{\n\t\"labels\" :\r[ \"a\" ,\"b\"\t, \"c\"\n] ,\"attrs\": {\"k\" : 1 ,\"j\":\"v\" }\n}",
            r#"{"labels":["a","b"],"attrs":{"k":1,"j":"v"},"status":200}"#,
        ] {
            let fast = wire(payload.as_bytes());
            assert!(fast.is_some(), "{payload}");
            assert_eq!(fast, serde(payload.as_bytes()), "{payload}");
        }
    }

    const KEYS: &[&str] = &[
        "ts",
        "account_id",
        "ip",
        "status",
        "labels",
        "attrs",
        "account_created",
        "prompt_simhash",
        "asn",
        "extra",
        // Names that share a first word, the longest name, and longer keys that start with one.
        "prompt",
        "prompt_fp",
        "reasoning_tokens",
        "reasoning_tokens_",
        "account_createdx",
        "t\\u0073",
        "\u{e9}t\u{e9}",
    ];

    fn value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            "[a-zA-Z0-9 ._:-]{0,12}".prop_map(|s| format!("\"{s}\"")),
            prop::sample::select(vec![
                "\"caf\u{e9}\"",
                "\"a\\\"b\"",
                "\"\\u00e9\"",
                "\"tab\\tx\"",
                "\"raw\u{1}ctl\"",
                "\"2026-03-01T10:00:00Z\"",
            ])
            .prop_map(str::to_owned),
            any::<i64>().prop_map(|v| v.to_string()),
            (-1000i64..1000).prop_map(|v| v.to_string()),
            prop::sample::select(vec![
                "-0",
                "01",
                "1.5",
                "-0.0",
                "1e3",
                "123456789012345678",
                "1234567890123456789",
                "0",
                "00",
                "-01",
                "12345678",
                "123456789",
                "99999999999999999",
                "-999999999999999999",
                "1E3",
                "18446744073709551616",
                "true",
                "false",
                "null",
                "-",
            ])
            .prop_map(str::to_owned),
        ];
        leaf.prop_recursive(2, 8, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec((prop::sample::select(KEYS), inner), 0..4).prop_map(|v| {
                    let fields: Vec<String> =
                        v.iter().map(|(k, x)| format!("\"{k}\":{x}")).collect();
                    format!("{{{}}}", fields.join(","))
                }),
            ]
        })
    }

    /// A string with, now and then, an escape, a non-ASCII character or a control character.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[a-zA-Z0-9 ._:-]{0,12}".prop_map(|s| format!("\"{s}\"")),
            1 => prop::sample::select(vec![
                "\"caf\u{e9}\"",
                "\"a\\\"b\"",
                "\"\\u00e9\"",
                "\"raw\u{1}ctl\"",
            ])
            .prop_map(str::to_owned),
        ]
    }

    /// A value of the type the field `key` takes, mostly, or anything.
    fn field_value(key: &'static str) -> BoxedStrategy<String> {
        let int = prop_oneof![
            4 => (-1_000_000i64..1_000_000).prop_map(|v| v.to_string()),
            1 => prop::sample::select(vec!["-0", "1.0", "1234567890123456789", "null"])
                .prop_map(str::to_owned),
        ];
        let typed = match key {
            "ts" | "account_created" => prop_oneof![
                (1_000_000_000_000i64..2_000_000_000_000).prop_map(|v| v.to_string()),
                Just("\"2026-03-01T10:00:00Z\"".to_owned()),
            ]
            .boxed(),
            "status" | "asn" => int.boxed(),
            "labels" => prop::collection::vec(text(), 0..3)
                .prop_map(|v| format!("[{}]", v.join(",")))
                .boxed(),
            "attrs" => prop::collection::vec((text(), prop_oneof![text(), int.clone()]), 0..3)
                .prop_map(|v| {
                    let kv: Vec<String> = v.iter().map(|(k, x)| format!("{k}:{x}")).collect();
                    format!("{{{}}}", kv.join(","))
                })
                .boxed(),
            _ => text().boxed(),
        };
        prop_oneof![4 => typed, 1 => value()].boxed()
    }

    fn object() -> impl Strategy<Value = String> {
        let ws = prop::sample::select(vec!["", "", " ", "\n\t "]);
        let field = prop::sample::select(KEYS).prop_flat_map(|k| (Just(k), field_value(k)));
        prop::collection::vec((field, ws), 0..8).prop_map(|fields| {
            let body: Vec<String> = fields
                .iter()
                .map(|((k, v), w)| format!("{w}\"{k}\"{w}:{w}{v}{w}"))
                .collect();
            format!("{{{}}}", body.join(","))
        })
    }

    /// A scanner over `text` from its start.
    fn scanner(text: &str) -> Scanner<'_> {
        Scanner {
            text,
            b: text.as_bytes(),
            i: 0,
        }
    }

    /// Integers against `str::parse`: digit runs of 0 to 20, followed by the end of the
    /// message or anything else, with what JSON forbids (leading zeros, `-0`, fractions,
    /// exponents) and what does not fit the fast path (19 digits and more) refused.
    #[test]
    fn integers_are_read_as_json_writes_them() {
        let int = |text: &str| {
            let mut s = Scanner {
                text,
                b: text.as_bytes(),
                i: 0,
            };
            s.int().map(|v| (v, s.i))
        };
        let mut x = 0x853c_49e6_748f_ea9bu64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut read = 0;
        for _ in 0..20_000 {
            let len = (next() % 21) as usize;
            let mut digits: String = (0..len)
                .map(|_| char::from(b'0' + (next() % 10) as u8))
                .collect();
            if next() % 4 == 0 {
                // Mostly no leading zero, as real numbers have.
                digits = digits.trim_start_matches('0').to_owned();
            }
            let sign = if next() % 5 == 0 { "-" } else { "" };
            let tail = ["", ",", "}", " ", ".5", "e3", "E", "x", ",\"ab\":12345678}"]
                [(next() % 9) as usize];
            let text = format!("{sign}{digits}{tail}");
            let want = {
                let leading_zero = digits.len() > 1 && digits.starts_with('0');
                let frac = tail.starts_with(['.', 'e', 'E']);
                let v = format!("{sign}{digits}").parse::<i64>().ok();
                match v {
                    Some(v)
                        if !digits.is_empty()
                            && digits.len() <= 18
                            && !leading_zero
                            && !frac
                            && (sign.is_empty() || v != 0) =>
                    {
                        Some((v, sign.len() + digits.len()))
                    }
                    _ => None,
                }
            };
            assert_eq!(int(&text), want, "{text:?}");
            read += usize::from(want.is_some());
        }
        assert!(read > 5_000, "{read}");
        assert_eq!(int("1772359200000,"), Some((1_772_359_200_000, 13)));
        assert_eq!(
            int("999999999999999999"),
            Some((999_999_999_999_999_999, 18))
        );
        assert_eq!(
            int("-123456789012345678}"),
            Some((-123_456_789_012_345_678, 19))
        );
        assert_eq!(int("1234567890123456789"), None);
        assert_eq!(int("0"), Some((0, 1)));
        assert_eq!(int("00"), None);
        assert_eq!(int("-0,"), None);
        assert_eq!(int("12345678"), Some((12_345_678, 8)));
        assert_eq!(int("12345678/"), Some((12_345_678, 8)));
        assert_eq!(int("1234567:"), Some((1_234_567, 7)));
    }

    #[test]
    fn every_field_name_and_only_they_name_a_field() {
        // Read as a member's key, with the rest of a message after it (the two-word path) and
        // at the very end (the string scan).
        let read = |key: &str, rest: &str| {
            let text = format!("\"{key}\"{rest}");
            let mut s = scanner(&text);
            let field = s.key_field();
            (field, s.i == key.len() + 2)
        };
        for (i, name) in FIELDS.iter().enumerate() {
            let name = std::str::from_utf8(name).expect("ASCII");
            assert_eq!(field_index(name.as_bytes()), Some(i), "{name}");
            for rest in [":1,\"some_other_key\":2}", ""] {
                assert_eq!(read(name, rest), (Some(Some(i)), true), "{name} + {rest:?}");
            }
        }
        for other in [
            "",
            "t",
            "tss",
            "account_",
            "account_i",
            "account_idx",
            "account_created_",
            "prompt_",
            "promptx",
            "reasoning_tokens_",
            "PROMPT",
            "caf\u{e9}",
        ] {
            assert_eq!(field_index(other.as_bytes()), None, "{other}");
            for rest in [":1,\"some_other_key\":2}", ""] {
                assert_eq!(read(other, rest), (Some(None), true), "{other} + {rest:?}");
            }
        }
        // An escape or a control character in a key ends the fast path, near or far.
        for key in ["t\\u0073", "a\u{1}b", "reasoning_token\\u0073"] {
            assert_eq!(read(key, ":1}").0, None, "{key:?}");
        }
    }

    #[test]
    fn the_generated_messages_reach_both_paths() {
        // Guards the properties below against passing vacuously: among the generated
        // messages, the fast path takes many and gives many to serde, and serde refuses some.
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (mut fast, mut slow, mut refused) = (0, 0, 0);
        for _ in 0..1_000 {
            let payload = object().new_tree(&mut runner).expect("generates").current();
            match (wire(payload.as_bytes()), serde(payload.as_bytes())) {
                (Some(_), _) => fast += 1,
                (None, Some(_)) => slow += 1,
                (None, None) => refused += 1,
            }
        }
        assert!(
            fast >= 100 && slow >= 100 && refused >= 100,
            "{fast} {slow} {refused}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn what_the_fast_path_takes_serde_takes_alike(payload in object()) {
            agrees(payload.as_bytes())?;
        }

        #[test]
        fn damaged_messages_are_never_taken_unlike_serde(
            payload in object(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<bool>(),
        ) {
            let mut bytes = payload.into_bytes();
            let i = at.index(bytes.len() + 1);
            if cut {
                bytes.truncate(i);
            } else {
                bytes.insert(i, byte);
            }
            agrees(&bytes)?;
        }
    }
}
