//! The one SHA-256 type of the executor. Stored and sent as lowercase hex (Postgres columns,
//! journal JSON, events, object metadata); the adapters turn it into base64 for S3 headers.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest([u8; 32]);

/// A string that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a SHA-256 in hex (64 hex digits)")]
pub struct BadDigest(pub String);

impl Sha256Digest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Sha256Digest(Sha256::digest(data).into())
    }

    /// Raw digest bytes (32), for example from a decoded checksum header.
    pub fn from_slice(raw: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(raw).ok().map(Sha256Digest)
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(s: &str) -> Result<Self, BadDigest> {
        let mut raw = [0u8; 32];
        hex::decode_to_slice(s, &mut raw).map_err(|_| BadDigest(s.chars().take(80).collect()))?;
        Ok(Sha256Digest(raw))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Finishes a running hasher.
    pub fn finish(h: Sha256) -> Self {
        Sha256Digest(h.finalize().into())
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_hex())
    }
}

impl std::str::FromStr for Sha256Digest {
    type Err = BadDigest;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Sha256Digest::from_hex(s)
    }
}

// Comparisons with hex text, so callers holding a hex string (tests, SQL rows) compare directly.
impl PartialEq<str> for Sha256Digest {
    fn eq(&self, other: &str) -> bool {
        other.len() == 64 && self.to_hex().eq_ignore_ascii_case(other)
    }
}
impl PartialEq<&str> for Sha256Digest {
    fn eq(&self, other: &&str) -> bool {
        self == *other
    }
}
impl PartialEq<String> for Sha256Digest {
    fn eq(&self, other: &String) -> bool {
        self == other.as_str()
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Sha256Digest::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_serde_as_text() {
        let d = Sha256Digest::of(b"abc");
        assert_eq!(
            d.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Sha256Digest::from_hex(&d.to_hex()).unwrap(), d);
        assert_eq!(serde_json::to_string(&d).unwrap(), format!("\"{d}\""));
        let back: Sha256Digest = serde_json::from_str(&format!("\"{d}\"")).unwrap();
        assert_eq!(back, d);
        assert!(Sha256Digest::from_hex("zz").is_err());
        assert!(serde_json::from_str::<Sha256Digest>("\"abc\"").is_err());
        assert_eq!(d, d.to_hex());
    }
}
