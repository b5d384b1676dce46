//! Ed25519 signing keys and signatures in Nix's textual formats.
//!
//! Secret keys are `<name>:<base64 of 64 bytes>` (seed then public key, as
//! `nix-store --generate-binary-cache-key` writes them), public keys
//! `<name>:<base64 of 32 bytes>`, signatures `<name>:<base64 of 64 bytes>`.
//! Nothing here reads files; callers load and store the strings.

use std::fmt;
use std::str::FromStr;

use data_encoding::BASE64;
use ed25519_dalek::{Signer, SECRET_KEY_LENGTH};
use thiserror::Error;

/// Why a key or signature string is unusable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    /// Not `<name>:<base64>`, or an empty name.
    #[error("expected <name>:<base64>, got {0:?}")]
    Format(String),
    /// The part after the colon is not base64.
    #[error("the {0} is not valid base64")]
    Base64(&'static str),
    /// The decoded bytes have the wrong length.
    #[error("the {what} is {len} bytes long, expected {expected}")]
    Length {
        /// Which kind of value.
        what: &'static str,
        /// Decoded length.
        len: usize,
        /// Required length.
        expected: usize,
    },
    /// The public half of a secret key does not belong to its private half,
    /// or the public key is not a valid curve point.
    #[error("the {0} is not a valid ed25519 key")]
    Invalid(&'static str),
    /// The operating system's random source failed during key generation.
    #[error("no randomness available for key generation: {0}")]
    Random(String),
}

fn split_named<'a>(
    s: &'a str,
    what: &'static str,
    len: usize,
) -> Result<(&'a str, Vec<u8>), KeyError> {
    let s = s.trim();
    let (name, b64) = s
        .split_once(':')
        .ok_or_else(|| KeyError::Format(s.to_owned()))?;
    if name.is_empty() {
        return Err(KeyError::Format(s.to_owned()));
    }
    let bytes = BASE64
        .decode(b64.as_bytes())
        .map_err(|_| KeyError::Base64(what))?;
    if bytes.len() != len {
        return Err(KeyError::Length {
            what,
            len: bytes.len(),
            expected: len,
        });
    }
    Ok((name, bytes))
}

/// A named secret key that signs narinfo fingerprints.
#[derive(Clone)]
pub struct SigningKey {
    name: String,
    key: ed25519_dalek::SigningKey,
}

impl SigningKey {
    /// A fresh key from the operating system's random source.
    pub fn generate(name: &str) -> Result<Self, KeyError> {
        if name.is_empty() || name.contains(':') {
            return Err(KeyError::Format(name.to_owned()));
        }
        let mut seed = [0u8; SECRET_KEY_LENGTH];
        getrandom::getrandom(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(SigningKey {
            name: name.to_owned(),
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        })
    }

    /// Parses the secret key file format.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split_named(s, "secret key", 64)?;
        let mut pair = [0u8; 64];
        pair.copy_from_slice(&bytes);
        let key = ed25519_dalek::SigningKey::from_keypair_bytes(&pair)
            .map_err(|_| KeyError::Invalid("secret key"))?;
        Ok(SigningKey {
            name: name.to_owned(),
            key,
        })
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The matching public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// Signs a fingerprint (see [`crate::narinfo::fingerprint`]).
    pub fn sign(&self, fingerprint: &[u8]) -> Signature {
        Signature {
            name: self.name.clone(),
            bytes: self.key.sign(fingerprint).to_bytes(),
        }
    }

    /// Signs `fingerprint` into `signatures`, replacing this key's
    /// earlier signature if there is one (one signature per key name).
    pub fn sign_into(&self, fingerprint: &[u8], signatures: &mut Vec<Signature>) {
        let sig = self.sign(fingerprint);
        signatures.retain(|s| s.name() != self.name);
        signatures.push(sig);
    }

    /// The secret key file contents (without newline). Handle with care.
    pub fn to_secret_string(&self) -> String {
        format!(
            "{}:{}",
            self.name,
            BASE64.encode(&self.key.to_keypair_bytes())
        )
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret half.
        write!(f, "SigningKey({}:…)", self.name)
    }
}

/// A named public key that checks narinfo signatures.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    name: String,
    key: ed25519_dalek::VerifyingKey,
}

impl VerifyingKey {
    /// Parses the public key format (`nix.conf`'s `trusted-public-keys`).
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split_named(s, "public key", 32)?;
        let mut raw = [0u8; 32];
        raw.copy_from_slice(&bytes);
        let key = ed25519_dalek::VerifyingKey::from_bytes(&raw)
            .map_err(|_| KeyError::Invalid("public key"))?;
        Ok(VerifyingKey {
            name: name.to_owned(),
            key,
        })
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `sig` is this key's signature of `fingerprint`. A signature
    /// under another key name never verifies.
    pub fn verify(&self, fingerprint: &[u8], sig: &Signature) -> bool {
        if sig.name != self.name {
            return false;
        }
        let sig = ed25519_dalek::Signature::from_bytes(&sig.bytes);
        self.key.verify_strict(fingerprint, &sig).is_ok()
    }
}

impl fmt::Display for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.key.as_bytes()))
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey({self})")
    }
}

impl FromStr for VerifyingKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Self::parse(s)
    }
}

/// A signature as it appears on a narinfo `Sig:` line.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Signature {
    name: String,
    bytes: [u8; 64],
}

impl Signature {
    /// Parses `<key name>:<base64>`.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split_named(s, "signature", 64)?;
        let mut raw = [0u8; 64];
        raw.copy_from_slice(&bytes);
        Ok(Signature {
            name: name.to_owned(),
            bytes: raw,
        })
    }

    /// Builds a signature from its parts (e.g. from a protobuf message).
    pub fn from_parts(name: &str, bytes: [u8; 64]) -> Self {
        Signature {
            name: name.to_owned(),
            bytes,
        }
    }

    /// The name of the key that made it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 64 raw signature bytes.
    pub fn bytes(&self) -> &[u8; 64] {
        &self.bytes
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(&self.bytes))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({self})")
    }
}

impl FromStr for Signature {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_sign_verify_roundtrip() {
        let sk = SigningKey::generate("cache.example.org-1").unwrap();
        let sk2 = SigningKey::parse(&sk.to_secret_string()).unwrap();
        let pk = VerifyingKey::parse(&sk.verifying_key().to_string()).unwrap();
        let sig = sk2.sign(b"1;/nix/store/x;sha256:y;1;");
        assert!(pk.verify(b"1;/nix/store/x;sha256:y;1;", &sig));
        assert!(!pk.verify(b"1;/nix/store/x;sha256:y;2;", &sig));
        let renamed = Signature::from_parts("other", *sig.bytes());
        assert!(!pk.verify(b"1;/nix/store/x;sha256:y;1;", &renamed));
        assert_eq!(Signature::parse(&sig.to_string()).unwrap(), sig);
    }

    #[test]
    fn parses_nix_generated_key() {
        // Written by `nix-store --generate-binary-cache-key test sk pk`.
        let pk = VerifyingKey::parse("test:Y1wQ1HGii466uYrYlBtZ1fertP/xOnkHrjrvfcr4NdM=").unwrap();
        assert_eq!(pk.name(), "test");
    }

    #[test]
    fn rejects_bad_keys() {
        assert!(matches!(
            VerifyingKey::parse("nocolon"),
            Err(KeyError::Format(_))
        ));
        assert!(matches!(
            VerifyingKey::parse(":AAAA"),
            Err(KeyError::Format(_))
        ));
        assert!(matches!(
            VerifyingKey::parse("k:!!"),
            Err(KeyError::Base64(_))
        ));
        assert!(matches!(
            VerifyingKey::parse("k:AAAA"),
            Err(KeyError::Length { .. })
        ));
        // A secret key whose public half belongs to another key.
        let a = SigningKey::generate("k").unwrap();
        let b = SigningKey::generate("k").unwrap();
        let mut pair = BASE64
            .decode(&a.to_secret_string().as_bytes()[2..])
            .unwrap();
        let other = BASE64
            .decode(&b.to_secret_string().as_bytes()[2..])
            .unwrap();
        pair[32..].copy_from_slice(&other[32..]);
        let forged = format!("k:{}", BASE64.encode(&pair));
        assert_eq!(
            SigningKey::parse(&forged).unwrap_err(),
            KeyError::Invalid("secret key")
        );
    }
}
