//! The one place persisted state is encoded: bincode 2 (pinned; upstream is unmaintained, so it
//! stays behind this module) with a magic and a format-version header.
//!
//! Persisted types use only serde features bincode round-trips (no `flatten`, `untagged` or
//! `skip_serializing_if`). Any change to a persisted type bumps [`FORMAT_VERSION`]; a reader
//! refuses versions it does not know with a clear error instead of misreading them.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Magic bytes at the start of every encoded state.
pub const MAGIC: &[u8; 4] = b"CRDN";
/// Version of the encoded state format.
pub const FORMAT_VERSION: u16 = 2;

/// A state blob that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Not a Cordon state blob.
    #[error("not a Cordon state file (bad magic)")]
    BadMagic,
    /// Written by another format version.
    #[error(
        "state format version {found} is not supported (this build reads version {FORMAT_VERSION})"
    )]
    UnknownVersion {
        /// The version found.
        found: u16,
    },
    /// Truncated or corrupt.
    #[error("corrupt state: {0}")]
    Corrupt(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
}

/// Encodes `value` with the header.
pub fn encode_state<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .map_err(|e| CodecError::Corrupt(e.to_string()))?;
    Ok(out)
}

/// Decodes a value written by [`encode_state`].
pub fn decode_state<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let Some(rest) = bytes.strip_prefix(MAGIC.as_slice()) else {
        return Err(CodecError::BadMagic);
    };
    let (version, body) = rest
        .split_at_checked(2)
        .ok_or_else(|| CodecError::Corrupt("no version".into()))?;
    let found = u16::from_le_bytes([version[0], version[1]]);
    if found != FORMAT_VERSION {
        return Err(CodecError::UnknownVersion { found });
    }
    let (value, used) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| CodecError::Corrupt(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Corrupt(format!(
            "{} trailing bytes",
            body.len() - used
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let v = (1u32, String::from("x"), vec![1.5f64]);
        let bytes = encode_state(&v).expect("encode");
        assert_eq!(
            decode_state::<(u32, String, Vec<f64>)>(&bytes).expect("decode"),
            v
        );
        let mut other = bytes.clone();
        other[4] = 9;
        assert!(matches!(
            decode_state::<(u32, String, Vec<f64>)>(&other),
            Err(CodecError::UnknownVersion { found: 9 })
        ));
        assert!(matches!(
            decode_state::<u32>(b"nope"),
            Err(CodecError::BadMagic)
        ));
        assert!(matches!(
            decode_state::<(u32, String, Vec<f64>)>(&bytes[..bytes.len() - 3]),
            Err(CodecError::Corrupt(_))
        ));
    }
}
