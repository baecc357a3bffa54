//! Functions Cordon adds to the SQL of rules.

use datafusion::arrow::array::{Array, ArrayRef, StringArray, StringBuilder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
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

/// Masks `ip` to a prefix and formats it as CIDR.
pub fn ip_prefix(ip: IpAddr, v4_bits: u8, v6_bits: u8) -> String {
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
            format!("{}/{v4_bits}", Ipv4Addr::from(bits & mask))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = if v6_bits == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(v6_bits))
            };
            format!("{}/{v6_bits}", Ipv6Addr::from(bits & mask))
        }
    }
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
        let mut out = StringBuilder::with_capacity(ips.len(), ips.len() * 16);
        for ip in ips {
            match ip.and_then(|s| s.parse::<IpAddr>().ok()) {
                Some(ip) => out.append_value(ip_prefix(ip, v4, v6)),
                None => out.append_null(),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish()) as ArrayRef))
    }
}

/// Every function Cordon adds.
pub fn cordon_functions() -> Vec<ScalarUDF> {
    vec![ScalarUDF::from(IpPrefix::default())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        let p = |s: &str, a, b| ip_prefix(s.parse().expect("ip"), a, b);
        assert_eq!(p("203.0.113.77", 24, 48), "203.0.113.0/24");
        assert_eq!(p("203.0.113.77", 32, 48), "203.0.113.77/32");
        assert_eq!(p("203.0.113.77", 0, 48), "0.0.0.0/0");
        assert_eq!(p("2001:db8:1:2:3::1", 24, 48), "2001:db8:1::/48");
        assert_eq!(p("::ffff:198.51.100.9", 16, 48), "198.51.0.0/16");
    }
}
