//! Functions Cordon adds to the SQL of rules.

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, BooleanArray, BooleanBufferBuilder, ListArray,
    StringArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, TypeSignature, Volatility,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// Default IPv6 prefix length of `ip_prefix` when only the IPv4 one is given.
pub const DEFAULT_V6_BITS: u8 = 64;

/// `ip_prefix(ip, v4_bits[, v6_bits])`: the network of `ip` in CIDR notation, e.g.
/// `ip_prefix('203.0.113.77', 24, 48)` is `203.0.113.0/24`. IPv4-mapped IPv6 addresses count as
/// IPv4. Not an address: NULL.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct IpPrefix {
    signature: Signature,
}

impl Default for IpPrefix {
    fn default() -> Self {
        Self {
            signature: Signature::one_of(
                vec![
                    TypeSignature::Exact(vec![DataType::Utf8, DataType::Int64]),
                    TypeSignature::Exact(vec![DataType::Utf8, DataType::Int64, DataType::Int64]),
                ],
                Volatility::Immutable,
            ),
        }
    }
}

/// An IP address, as `str::parse::<IpAddr>` reads it (the same addresses, the same refusals),
/// with a fast path for the dotted-quad IPv4 form most events carry: the standard parser's
/// generic machinery cost about 2% of the engine's time (every event's address is parsed on
/// decode, and `ip_prefix` parses any address it is given that was not).
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    match parse_ipv4(s.as_bytes()) {
        Some(v4) => Some(IpAddr::V4(v4)),
        None => s.parse().ok(),
    }
}

/// Four decimal octets separated by dots, each 0-255 with no leading zero (as the standard
/// parser requires); `None` for anything else, which the standard parser then decides.
///
/// One pass over the bytes with no index arithmetic or bounds checks. `parse_ip` costs about
/// 153 instructions an address this way against 170 with indexed reads (callgrind, the
/// throughput mix).
fn parse_ipv4(b: &[u8]) -> Option<Ipv4Addr> {
    let mut bytes = b.iter();
    let mut addr = 0u32;
    for n in 0..4 {
        let mut v = u32::from(bytes.next()?.wrapping_sub(b'0'));
        if v > 9 {
            return None;
        }
        let mut digits = 1;
        loop {
            match bytes.next() {
                Some(c @ b'0'..=b'9') => {
                    // A leading zero, or a fourth digit.
                    if v == 0 || digits == 3 {
                        return None;
                    }
                    v = v * 10 + u32::from(c - b'0');
                    digits += 1;
                }
                Some(b'.') if n < 3 => break,
                None if n == 3 => break,
                _ => return None,
            }
        }
        if v > 255 {
            return None;
        }
        addr = addr << 8 | v;
    }
    Some(Ipv4Addr::from(addr))
}

/// Masks `ip` to a prefix and formats it as CIDR.
pub fn ip_prefix(ip: IpAddr, v4_bits: u8, v6_bits: u8) -> String {
    let mut s = Vec::with_capacity(18);
    // Writing to a vector cannot fail, and what is written is ASCII.
    let _ = write_prefix(&mut s, ip, v4_bits, v6_bits);
    String::from_utf8(s).unwrap_or_default()
}

/// [`ip_prefix`], written to `out` (the UDF writes into its column builder: no string per row).
/// Bytes, not text: the UDF checks its whole column's text once, where a check per value
/// (`str::from_utf8` of 11 bytes) cost about 100 instructions an event.
fn write_prefix(
    out: &mut impl std::io::Write,
    ip: IpAddr,
    v4_bits: u8,
    v6_bits: u8,
) -> std::io::Result<()> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let mask = if v4_bits == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(v4_bits))
            };
            write_v4_cidr(out, Ipv4Addr::from(bits & mask), v4_bits)
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = if v6_bits == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(v6_bits))
            };
            write!(out, "{}/{v6_bits}", Ipv6Addr::from(bits & mask))
        }
    }
}

/// Each byte's decimal digits, padded to three, and how many there are.
const DIGITS: [[u8; 4]; 256] = {
    let mut out = [[0; 4]; 256];
    let mut v = 0;
    while v < 256 {
        let d = [(v / 100) as u8, (v / 10 % 10) as u8, (v % 10) as u8];
        let len = if v >= 100 {
            3
        } else if v >= 10 {
            2
        } else {
            1
        };
        let mut i = 0;
        while i < len {
            out[v][i] = b'0' + d[3 - len + i];
            i += 1;
        }
        out[v][3] = len as u8;
        v += 1;
    }
    out
};

/// `a.b.c.d/bits` without the formatting machinery: the hydra rules put every event's address
/// through `ip_prefix`, and `Display` for the address was most of its cost. The digits come
/// from a table: working them out with divisions and branches cost 35 instructions an event
/// more (callgrind, the 40,000-account throughput mix).
fn write_v4_cidr(out: &mut impl std::io::Write, ip: Ipv4Addr, bits: u8) -> std::io::Result<()> {
    // At most four octets with their separators (16 bytes), then three digits and a
    // trailing separator: 20 bytes. Every octet writes three and keeps its digits' count.
    let mut buf = [0u8; 20];
    let mut n = 0;
    let mut push = |v: u8, sep: u8| {
        let [a, b, c, len] = DIGITS[usize::from(v)];
        buf[n..n + 3].copy_from_slice(&[a, b, c]);
        n += usize::from(len);
        buf[n] = sep;
        n += 1;
    };
    let [a, b, c, d] = ip.octets();
    push(a, b'.');
    push(b, b'.');
    push(c, b'.');
    push(d, b'/');
    push(bits, b' ');
    // The trailing separator is dropped.
    out.write_all(&buf[..n - 1])
}

fn bits_arg(arg: &ColumnarValue, max: i64, which: &str) -> Result<u8> {
    match arg {
        ColumnarValue::Scalar(ScalarValue::Int64(Some(n))) if (0..=max).contains(n) => Ok(*n as u8),
        _ => exec_err!("ip_prefix: {which} must be a constant between 0 and {max}"),
    }
}

impl ScalarUDFImpl for IpPrefix {
    fn name(&self) -> &str {
        "ip_prefix"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let v4 = bits_arg(&args.args[1], 32, "v4_bits")?;
        let v6 = match args.args.get(2) {
            Some(a) => bits_arg(a, 128, "v6_bits")?,
            None => DEFAULT_V6_BITS,
        };
        let ips = args.args[0].to_array(args.number_rows)?;
        let ips = cast(&ips, &DataType::Utf8)?;
        let Some(ips) = ips.as_any().downcast_ref::<StringArray>() else {
            return exec_err!("ip_prefix: the address must be a string");
        };
        let out = prefixes(ips.iter().map(|ip| ip.and_then(parse_ip)), v4, v6)?;
        Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
    }
}

/// `ip_prefix` of each address (NULL for `None`), as a column: the function's values, for the
/// function and for an engine that has the addresses parsed already (the decoder checks every
/// event's `ip`, so `ip_prefix(ip, ..)` need not parse the column again).
pub fn prefixes(
    ips: impl ExactSizeIterator<Item = Option<IpAddr>>,
    v4_bits: u8,
    v6_bits: u8,
) -> Result<StringArray> {
    let mut out = BinaryBuilder::with_capacity(ips.len(), ips.len() * 16);
    for ip in ips {
        match ip {
            Some(ip) => {
                // The builder takes the formatted text, then closes the value.
                if write_prefix(&mut out, ip, v4_bits, v6_bits).is_err() {
                    return exec_err!("ip_prefix: formatting failed");
                }
                out.append_value(b"");
            }
            None => out.append_null(),
        }
    }
    // Digits, dots, colons and slashes: always text.
    Ok(StringArray::try_from_binary(out.finish())?)
}

/// DataFusion's `array_has` (and its aliases), with a path of its own for the form rules
/// write, a list of strings against a constant string (`array_has(labels, 'coding')`); every
/// other form goes to DataFusion's. Its values are DataFusion's: NULL for a NULL list, false
/// for a list without the string (NULL items never match), and a NULL string goes to
/// DataFusion's, which answers NULL.
///
/// Why a path of its own: DataFusion 55 collects the list's offsets into a vector through a
/// boxed iterator, compares the items, and walks every row with a peekable iterator of
/// matches: about 50 instructions a row on the throughput mix, where most lists are empty,
/// against 17 here (callgrind; 99 instructions an event for the pack's three calls), and 2.5
/// times the time on a batch of simulator events (`cargo bench -p cordon-benches --bench
/// processor -- ArrayHas`).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ArrayHas {
    inner: Arc<ScalarUDF>,
}

impl Default for ArrayHas {
    fn default() -> Self {
        Self {
            inner: datafusion::functions_nested::array_has::array_has_udf(),
        }
    }
}

impl ScalarUDFImpl for ArrayHas {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        self.inner.return_type(args)
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs<'_>) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }
    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(args)
    }
    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.inner.simplify(args, info)
    }
    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if let [
            ColumnarValue::Array(list),
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(needle))),
        ] = args.args.as_slice()
            && let Some(list) = list.as_list_opt::<i32>()
            && let Some(values) = list.values().as_string_opt::<i32>()
        {
            return Ok(ColumnarValue::Array(Arc::new(list_has(
                list, values, needle,
            ))));
        }
        self.inner.invoke_with_args(args)
    }
}

/// Whether each list of `list` (whose items are `values`) holds `needle`. The items are read
/// once, in one run, and a match sets its row's bit: most rows' lists are empty or short, so
/// the cost follows the items, not the rows.
fn list_has(list: &ListArray, values: &StringArray, needle: &str) -> BooleanArray {
    let offsets = list.value_offsets();
    let needle = needle.as_bytes();
    let mut bits = BooleanBufferBuilder::new(list.len());
    bits.append_n(list.len(), false);
    let (Some(first), Some(last)) = (offsets.first(), offsets.last()) else {
        return BooleanArray::new(bits.finish(), list.nulls().cloned());
    };
    for v in *first as usize..*last as usize {
        if values.is_valid(v) && values.value(v).as_bytes() == needle {
            // The row holding item `v`: the last whose list starts at or before it (empty
            // lists before it start where it does).
            let row = offsets
                .partition_point(|o| *o as usize <= v)
                .saturating_sub(1);
            if list.is_valid(row) {
                bits.set_bit(row, true);
            }
        }
    }
    BooleanArray::new(bits.finish(), list.nulls().cloned())
}

/// Every function Cordon adds or replaces.
pub fn cordon_functions() -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::from(IpPrefix::default()),
        ScalarUDF::from(ArrayHas::default()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_ip_reads_and_refuses_what_the_standard_parser_does() {
        let std_parse = |s: &str| s.parse::<IpAddr>().ok();
        for s in [
            "10.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "256.0.0.1",
            "01.2.3.4",
            "1.2.3.04",
            "1.2.3",
            "1.2.3.4.",
            ".1.2.3.4",
            "1..2.3",
            "1.2.3.4 ",
            " 1.2.3.4",
            "1.2.3.1000",
            "+1.2.3.4",
            "::1",
            "2001:db8::1",
            "::ffff:1.2.3.4",
            "",
            "1.2.3.4x",
            "1.2.3.٣",
        ] {
            assert_eq!(parse_ip(s), std_parse(s), "{s:?}");
        }
        // Random strings over the characters addresses are made of, and random addresses
        // with one character changed.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let alphabet = b"0123456789....:a";
        let mut accepted = 0;
        for _ in 0..200_000 {
            let len = (next() % 17) as usize;
            let s: String = (0..len)
                .map(|_| char::from(alphabet[(next() % alphabet.len() as u64) as usize]))
                .collect();
            assert_eq!(parse_ip(&s), std_parse(&s), "{s:?}");
            let r = next();
            let mut v4 = Ipv4Addr::from((r >> 32) as u32).to_string().into_bytes();
            let at = (r % v4.len() as u64) as usize;
            v4[at] = alphabet[((r >> 8) % alphabet.len() as u64) as usize];
            let s = String::from_utf8(v4).expect("ascii");
            assert_eq!(parse_ip(&s), std_parse(&s), "{s:?}");
            accepted += usize::from(std_parse(&s).is_some());
        }
        // The changed addresses reach both outcomes.
        assert!(accepted > 10_000 && accepted < 190_000, "{accepted}");
    }

    #[test]
    fn prefixes() {
        let p = |s: &str, a, b| ip_prefix(s.parse().expect("ip"), a, b);
        assert_eq!(p("203.0.113.77", 24, 48), "203.0.113.0/24");
        assert_eq!(p("203.0.113.77", 32, 48), "203.0.113.77/32");
        assert_eq!(p("203.0.113.77", 0, 48), "0.0.0.0/0");
        assert_eq!(p("2001:db8:1:2:3::1", 24, 48), "2001:db8:1::/48");
        assert_eq!(p("::ffff:198.51.100.9", 16, 48), "198.51.0.0/16");
        assert_eq!(p("255.255.255.255", 32, 48), "255.255.255.255/32");
        assert_eq!(p("10.1.100.9", 8, 48), "10.0.0.0/8");
        // The hand-written IPv4 formatting against `Display`, over many addresses.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let cases = (0..20_000).map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x as u32, (x >> 40) as u8 % 33)
        });
        for (a, bits) in [(0u32, 0u8), (u32::MAX, 32), (0x6400_0a63, 20)]
            .into_iter()
            .chain(cases)
        {
            let ip = Ipv4Addr::from(a);
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(bits))
            };
            assert_eq!(
                ip_prefix(IpAddr::V4(ip), bits, 48),
                format!("{}/{bits}", Ipv4Addr::from(a & mask))
            );
        }
    }

    #[test]
    fn array_has_answers_what_datafusions_answers() {
        use datafusion::arrow::array::{ListBuilder, StringBuilder};
        use datafusion::arrow::datatypes::Field;
        use datafusion::config::ConfigOptions;
        let ours = ArrayHas::default();
        let theirs = datafusion::functions_nested::array_has::array_has_udf();
        let call = |f: &dyn Fn(ScalarFunctionArgs) -> Result<ColumnarValue>,
                    list: &ArrayRef,
                    needle: Option<&str>| {
            let needle = ScalarValue::Utf8(needle.map(str::to_owned));
            let args = ScalarFunctionArgs {
                args: vec![
                    ColumnarValue::Array(list.clone()),
                    ColumnarValue::Scalar(needle.clone()),
                ],
                arg_fields: vec![
                    Arc::new(Field::new("labels", list.data_type().clone(), true)),
                    Arc::new(Field::new("needle", DataType::Utf8, true)),
                ],
                number_rows: list.len(),
                return_field: Arc::new(Field::new("has", DataType::Boolean, true)),
                config_options: Arc::new(ConfigOptions::default()),
            };
            f(args)
                .and_then(|v| v.into_array(list.len()))
                .expect("array_has evaluates")
        };
        let words = [
            "coding",
            "tool_use",
            "cot_elicitation",
            "",
            "codin",
            "coding2",
        ];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let (mut hits, mut nulls, mut fast) = (0, 0, 0);
        for _ in 0..300 {
            let mut b = ListBuilder::new(StringBuilder::new());
            let rows = next(40) as usize;
            for _ in 0..rows {
                match next(8) {
                    // A NULL list.
                    0 => b.append(false),
                    k => {
                        for _ in 0..next(k) {
                            match next(10) {
                                0 => b.values().append_null(),
                                i => b.values().append_value(words[i as usize % words.len()]),
                            }
                        }
                        b.append(true);
                    }
                }
            }
            let whole: ArrayRef = Arc::new(b.finish());
            // Sliced as well, so that the offsets do not start at 0.
            let from = next(rows as u64 + 1) as usize;
            let len = next((rows - from) as u64 + 1) as usize;
            for list in [whole.slice(0, rows), whole.slice(from, len)] {
                for needle in [Some("coding"), Some(""), Some("absent"), None] {
                    let want = call(&|a| theirs.invoke_with_args(a), &list, needle);
                    let got = call(&|a| ours.invoke_with_args(a), &list, needle);
                    assert_eq!(got.as_boolean(), want.as_boolean(), "{list:?} {needle:?}");
                    hits += got.as_boolean().true_count();
                    nulls += got.null_count();
                    fast += usize::from(needle.is_some());
                }
            }
        }
        // Both answers occur, NULL lists among them, and the own path ran.
        assert!(
            hits > 500 && nulls > 500 && fast == 1_800,
            "{hits} {nulls} {fast}"
        );
    }

    #[test]
    fn rules_call_cordons_array_has_under_every_name() {
        let ctx = datafusion::prelude::SessionContext::new();
        for f in cordon_functions() {
            ctx.register_udf(f);
        }
        let state = ctx.state();
        for name in ["array_has", "list_has", "array_contains", "list_contains"] {
            let f = state.scalar_functions().get(name).expect(name);
            assert_eq!(**f, ScalarUDF::from(ArrayHas::default()), "{name}");
        }
    }
}
