//! `B3Digest`: the 32-byte BLAKE3 digest that names every castore object.

use std::fmt;
use std::str::FromStr;

use data_encoding::{BASE64, HEXLOWER_PERMISSIVE};
use thiserror::Error;

/// A BLAKE3 digest. Printed as `b3:<base64>`, like the tvix tools do.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct B3Digest([u8; 32]);

/// A digest that could not be parsed or has the wrong length.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DigestError {
    /// Raw bytes of another length than 32.
    #[error("a BLAKE3 digest is 32 bytes, got {0}")]
    Length(usize),
    /// Text that is none of `b3:<base64>`, 64 hex digits or 52 nixbase32 characters.
    #[error("{0:?} is not a BLAKE3 digest (expected b3:<base64>, 64 hex digits or 52 nixbase32 characters)")]
    Text(String),
}

impl B3Digest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        B3Digest(*blake3::hash(data).as_bytes())
    }

    /// The digest of the empty blob (and of the empty directory).
    pub fn empty() -> Self {
        Self::of(b"")
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, used for object file names.
    pub fn to_hex(&self) -> String {
        data_encoding::HEXLOWER.encode(&self.0)
    }
}

impl From<[u8; 32]> for B3Digest {
    fn from(b: [u8; 32]) -> Self {
        B3Digest(b)
    }
}

impl From<blake3::Hash> for B3Digest {
    fn from(h: blake3::Hash) -> Self {
        B3Digest(*h.as_bytes())
    }
}

impl TryFrom<&[u8]> for B3Digest {
    type Error = DigestError;
    fn try_from(b: &[u8]) -> Result<Self, DigestError> {
        <[u8; 32]>::try_from(b)
            .map(B3Digest)
            .map_err(|_| DigestError::Length(b.len()))
    }
}

impl From<B3Digest> for bytes::Bytes {
    fn from(d: B3Digest) -> Self {
        bytes::Bytes::copy_from_slice(&d.0)
    }
}

impl fmt::Display for B3Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b3:{}", BASE64.encode(&self.0))
    }
}

impl fmt::Debug for B3Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl FromStr for B3Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, DigestError> {
        let bad = || DigestError::Text(s.to_owned());
        let mut out = [0u8; 32];
        if let Some(b64) = s.strip_prefix("b3:") {
            let v = BASE64.decode(b64.as_bytes()).map_err(|_| bad())?;
            return B3Digest::try_from(v.as_slice()).map_err(|_| bad());
        }
        match s.len() {
            64 => {
                HEXLOWER_PERMISSIVE
                    .decode_mut(s.as_bytes(), &mut out)
                    .map_err(|_| bad())?;
            }
            52 => {
                out = cairn_nix::nixbase32::decode_array(s.as_bytes()).map_err(|_| bad())?;
            }
            _ => return Err(bad()),
        }
        Ok(B3Digest(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_printed_form() {
        let d = B3Digest::empty();
        assert_eq!(
            d.to_hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!(
            d.to_string(),
            "b3:rxNJufX5oaagQE3qNtzJSZvLJcmtwRK3zJqTyuQfMmI="
        );
        for text in [
            d.to_string(),
            d.to_hex(),
            cairn_nix::nixbase32::encode(d.as_bytes()),
        ] {
            assert_eq!(text.parse::<B3Digest>().unwrap(), d, "{text}");
        }
        assert!("b3:AAAA".parse::<B3Digest>().is_err());
        assert!("xyz".parse::<B3Digest>().is_err());
        assert_eq!(
            B3Digest::try_from(&[0u8; 31][..]),
            Err(DigestError::Length(31))
        );
    }
}
