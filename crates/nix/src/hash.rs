//! Hashes as Nix prints and parses them, and content-address descriptors.
//!
//! `NixHash` covers md5, sha1, sha256 and sha512 in every textual form Nix
//! accepts (`algo:nixbase32`, `algo:hex`, `algo:base64`, SRI `algo-base64`).
//! `ContentAddress` is the `CA` field of a narinfo (`fixed:r:sha256:…`,
//! `fixed:sha1:…`, `text:sha256:…`). This module only computes and formats;
//! it never reads files.

use std::fmt;
use std::str::FromStr;

use data_encoding::{BASE64, HEXLOWER_PERMISSIVE};
use sha2::Digest;
use thiserror::Error;

use crate::nixbase32;

/// A hash algorithm Nix knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HashAlgo {
    /// MD5 (16 bytes), for legacy fixed outputs only.
    Md5,
    /// SHA-1 (20 bytes), for legacy fixed outputs only.
    Sha1,
    /// SHA-256 (32 bytes): NAR hashes, store path hashing.
    Sha256,
    /// SHA-512 (64 bytes).
    Sha512,
}

impl HashAlgo {
    /// Digest length in bytes.
    pub const fn digest_len(self) -> usize {
        match self {
            HashAlgo::Md5 => 16,
            HashAlgo::Sha1 => 20,
            HashAlgo::Sha256 => 32,
            HashAlgo::Sha512 => 64,
        }
    }

    /// The name Nix uses (`sha256`, …).
    pub const fn name(self) -> &'static str {
        match self {
            HashAlgo::Md5 => "md5",
            HashAlgo::Sha1 => "sha1",
            HashAlgo::Sha256 => "sha256",
            HashAlgo::Sha512 => "sha512",
        }
    }

    /// Hashes `data` in one go.
    pub fn digest(self, data: &[u8]) -> NixHash {
        let mut h = Hasher::new(self);
        h.update(data);
        h.finish()
    }
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HashAlgo {
    type Err = HashError;
    fn from_str(s: &str) -> Result<Self, HashError> {
        match s {
            "md5" => Ok(HashAlgo::Md5),
            "sha1" => Ok(HashAlgo::Sha1),
            "sha256" => Ok(HashAlgo::Sha256),
            "sha512" => Ok(HashAlgo::Sha512),
            other => Err(HashError::UnknownAlgo(other.to_owned())),
        }
    }
}

/// Why a hash string could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HashError {
    /// Not one of md5, sha1, sha256, sha512.
    #[error("unknown hash algorithm {0:?}")]
    UnknownAlgo(String),
    /// Neither `algo:…` nor `algo-…`.
    #[error("hash {0:?} has no algorithm prefix")]
    MissingAlgo(String),
    /// The digest part has a length that fits no encoding of this algorithm.
    #[error("{algo} hash {text:?} has a length that is not nixbase32, hex or base64 of {} bytes", algo.digest_len())]
    BadLength {
        /// The algorithm named by the prefix.
        algo: HashAlgo,
        /// The digest text.
        text: String,
    },
    /// The digest text does not decode.
    #[error("{algo} hash {text:?} is not valid {encoding}")]
    BadEncoding {
        /// The algorithm named by the prefix.
        algo: HashAlgo,
        /// The digest text.
        text: String,
        /// The encoding chosen by its length.
        encoding: &'static str,
    },
    /// A hash of another algorithm where one was required.
    #[error("expected a {expected} hash, found {found}")]
    WrongAlgo {
        /// The algorithm required.
        expected: HashAlgo,
        /// The algorithm given.
        found: HashAlgo,
    },
    /// A content address that is not `fixed:[r:]algo:hash` or `text:sha256:hash`.
    #[error("invalid content address {0:?}")]
    BadContentAddress(String),
}

/// A digest together with its algorithm.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NixHash {
    algo: HashAlgo,
    bytes: [u8; 64],
}

impl NixHash {
    /// Wraps raw digest bytes; `None` if the length does not match `algo`.
    pub fn from_bytes(algo: HashAlgo, digest: &[u8]) -> Option<Self> {
        if digest.len() != algo.digest_len() {
            return None;
        }
        let mut bytes = [0; 64];
        bytes[..digest.len()].copy_from_slice(digest);
        Some(NixHash { algo, bytes })
    }

    /// A sha256 hash from its 32 bytes.
    pub fn sha256(digest: [u8; 32]) -> Self {
        let mut bytes = [0; 64];
        bytes[..32].copy_from_slice(&digest);
        NixHash {
            algo: HashAlgo::Sha256,
            bytes,
        }
    }

    /// The algorithm.
    pub fn algo(&self) -> HashAlgo {
        self.algo
    }

    /// The raw digest.
    pub fn digest(&self) -> &[u8] {
        &self.bytes[..self.algo.digest_len()]
    }

    /// The digest as 32 bytes, when this is a sha256.
    pub fn sha256_bytes(&self) -> Result<[u8; 32], HashError> {
        self.expect_algo(HashAlgo::Sha256)?;
        let mut out = [0; 32];
        out.copy_from_slice(self.digest());
        Ok(out)
    }

    /// Errors unless this hash uses `algo`.
    pub fn expect_algo(&self, algo: HashAlgo) -> Result<(), HashError> {
        if self.algo == algo {
            Ok(())
        } else {
            Err(HashError::WrongAlgo {
                expected: algo,
                found: self.algo,
            })
        }
    }

    /// `sha256:<nixbase32>`, the form narinfo files and `nix-store -q --hash` use.
    pub fn to_nix_base32_string(&self) -> String {
        format!("{}:{}", self.algo, nixbase32::encode(self.digest()))
    }

    /// Lower-case hex of the digest, without prefix.
    pub fn to_hex(&self) -> String {
        data_encoding::HEXLOWER.encode(self.digest())
    }

    /// The SRI form `sha256-<base64>`.
    pub fn to_sri(&self) -> String {
        format!("{}-{}", self.algo, BASE64.encode(self.digest()))
    }

    /// Parses `algo:digest` (nixbase32, hex or base64 by length) or SRI `algo-base64`.
    pub fn parse(s: &str) -> Result<Self, HashError> {
        if let Some((algo, rest)) = s.split_once(':') {
            let algo: HashAlgo = algo.parse()?;
            return Self::parse_digest(algo, rest);
        }
        if let Some((algo, rest)) = s.split_once('-') {
            if let Ok(algo) = algo.parse::<HashAlgo>() {
                return Self::decode_base64(algo, rest);
            }
        }
        Err(HashError::MissingAlgo(s.to_owned()))
    }

    /// Parses a bare digest of a known algorithm, choosing the encoding by length.
    pub fn parse_digest(algo: HashAlgo, text: &str) -> Result<Self, HashError> {
        let n = algo.digest_len();
        let bad = |encoding| HashError::BadEncoding {
            algo,
            text: text.to_owned(),
            encoding,
        };
        let mut bytes = [0; 64];
        if text.len() == n * 2 {
            HEXLOWER_PERMISSIVE
                .decode_mut(text.as_bytes(), &mut bytes[..n])
                .map_err(|_| bad("hex"))?;
        } else if text.len() == nixbase32::encoded_len(n) {
            nixbase32::decode_into(text.as_bytes(), &mut bytes[..n])
                .map_err(|_| bad("nixbase32"))?;
        } else if text.len() == BASE64.encode_len(n) {
            return Self::decode_base64(algo, text);
        } else {
            return Err(HashError::BadLength {
                algo,
                text: text.to_owned(),
            });
        }
        Ok(NixHash { algo, bytes })
    }

    fn decode_base64(algo: HashAlgo, text: &str) -> Result<Self, HashError> {
        let decoded = BASE64
            .decode(text.as_bytes())
            .map_err(|_| HashError::BadEncoding {
                algo,
                text: text.to_owned(),
                encoding: "base64",
            })?;
        Self::from_bytes(algo, &decoded).ok_or_else(|| HashError::BadLength {
            algo,
            text: text.to_owned(),
        })
    }
}

impl fmt::Display for NixHash {
    /// The nixbase32 form with prefix, as Nix prints hashes in narinfo files.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_nix_base32_string())
    }
}

impl fmt::Debug for NixHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NixHash({})", self.to_nix_base32_string())
    }
}

impl FromStr for NixHash {
    type Err = HashError;
    fn from_str(s: &str) -> Result<Self, HashError> {
        Self::parse(s)
    }
}

/// Incremental hashing for any [`HashAlgo`].
#[derive(Clone)]
pub enum Hasher {
    /// MD5 state.
    Md5(md5::Md5),
    /// SHA-1 state.
    Sha1(sha1::Sha1),
    /// SHA-256 state (uses the CPU's SHA extensions when present).
    Sha256(sha2::Sha256),
    /// SHA-512 state.
    Sha512(sha2::Sha512),
}

impl Hasher {
    /// A fresh state for `algo`.
    pub fn new(algo: HashAlgo) -> Self {
        match algo {
            HashAlgo::Md5 => Hasher::Md5(md5::Md5::new()),
            HashAlgo::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            HashAlgo::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            HashAlgo::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(data),
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// The final hash.
    pub fn finish(self) -> NixHash {
        let (algo, digest): (HashAlgo, Vec<u8>) = match self {
            Hasher::Md5(h) => (HashAlgo::Md5, h.finalize().to_vec()),
            Hasher::Sha1(h) => (HashAlgo::Sha1, h.finalize().to_vec()),
            Hasher::Sha256(h) => (HashAlgo::Sha256, h.finalize().to_vec()),
            Hasher::Sha512(h) => (HashAlgo::Sha512, h.finalize().to_vec()),
        };
        let mut bytes = [0; 64];
        bytes[..digest.len()].copy_from_slice(&digest);
        NixHash { algo, bytes }
    }
}

/// A `std::io::Write` sink that hashes and counts what passes through it.
#[derive(Clone)]
pub struct HashingWriter {
    hasher: Hasher,
    written: u64,
}

impl HashingWriter {
    /// A sink for `algo`.
    pub fn new(algo: HashAlgo) -> Self {
        HashingWriter {
            hasher: Hasher::new(algo),
            written: 0,
        }
    }

    /// The hash and the number of bytes written.
    pub fn finish(self) -> (NixHash, u64) {
        (self.hasher.finish(), self.written)
    }
}

impl std::io::Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.hasher.update(buf);
        self.written += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How the content of a fixed-output path was hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileIngestionMethod {
    /// The file's bytes (`fixed:algo:…`); only for a single regular file.
    Flat,
    /// The NAR serialisation (`fixed:r:algo:…`).
    Recursive,
}

/// A narinfo `CA` field: how a content-addressed path's hash was made.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ContentAddress {
    /// `text:sha256:…`: `builtins.toFile` outputs and `.drv` files.
    Text(NixHash),
    /// `fixed:[r:]algo:…`: fixed-output derivations and `nix-store --add[-fixed]`.
    Fixed(FileIngestionMethod, NixHash),
}

impl ContentAddress {
    /// The hash inside.
    pub fn hash(&self) -> &NixHash {
        match self {
            ContentAddress::Text(h) | ContentAddress::Fixed(_, h) => h,
        }
    }

    /// Parses the text form Nix writes in narinfo `CA:` lines.
    pub fn parse(s: &str) -> Result<Self, HashError> {
        let bad = || HashError::BadContentAddress(s.to_owned());
        if let Some(rest) = s.strip_prefix("text:") {
            let hash = NixHash::parse(rest)?;
            hash.expect_algo(HashAlgo::Sha256).map_err(|_| bad())?;
            return Ok(ContentAddress::Text(hash));
        }
        if let Some(rest) = s.strip_prefix("fixed:") {
            let (method, rest) = match rest.strip_prefix("r:") {
                Some(rest) => (FileIngestionMethod::Recursive, rest),
                None => (FileIngestionMethod::Flat, rest),
            };
            if !rest.contains(':') {
                return Err(bad());
            }
            return Ok(ContentAddress::Fixed(method, NixHash::parse(rest)?));
        }
        Err(bad())
    }
}

impl fmt::Display for ContentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContentAddress::Text(h) => write!(f, "text:{h}"),
            ContentAddress::Fixed(FileIngestionMethod::Flat, h) => write!(f, "fixed:{h}"),
            ContentAddress::Fixed(FileIngestionMethod::Recursive, h) => write!(f, "fixed:r:{h}"),
        }
    }
}

impl FromStr for ContentAddress {
    type Err = HashError;
    fn from_str(s: &str) -> Result<Self, HashError> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256_NIX32: &str = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";

    #[test]
    fn all_forms_of_one_hash_agree() {
        let h = HashAlgo::Sha256.digest(b"");
        let forms = [
            format!("sha256:{EMPTY_SHA256_NIX32}"),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
            "sha256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=".into(),
            "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=".into(),
        ];
        for f in forms {
            assert_eq!(NixHash::parse(&f).unwrap(), h, "{f}");
        }
        assert_eq!(h.to_string(), format!("sha256:{EMPTY_SHA256_NIX32}"));
        assert_eq!(
            h.to_sri(),
            "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
    }

    #[test]
    fn every_algorithm_round_trips() {
        for algo in [
            HashAlgo::Md5,
            HashAlgo::Sha1,
            HashAlgo::Sha256,
            HashAlgo::Sha512,
        ] {
            let h = algo.digest(b"cairn");
            for text in [h.to_string(), h.to_sri(), format!("{algo}:{}", h.to_hex())] {
                assert_eq!(NixHash::parse(&text).unwrap(), h, "{text}");
            }
        }
        // md5("") is well known.
        assert_eq!(
            HashAlgo::Md5.digest(b"").to_hex(),
            "d41d8cd98f00b204e9800998ecf8427e"
        );
    }

    #[test]
    fn rejects_malformed() {
        assert!(matches!(
            NixHash::parse("sha256"),
            Err(HashError::MissingAlgo(_))
        ));
        assert!(matches!(
            NixHash::parse("sha3:00"),
            Err(HashError::UnknownAlgo(_))
        ));
        assert!(matches!(
            NixHash::parse("sha256:abc"),
            Err(HashError::BadLength { .. })
        ));
        let bad32 = format!("sha256:{}", "e".repeat(52));
        assert!(matches!(
            NixHash::parse(&bad32),
            Err(HashError::BadEncoding { .. })
        ));
    }

    #[test]
    fn content_addresses() {
        for s in [
            format!("fixed:r:sha256:{EMPTY_SHA256_NIX32}"),
            format!("fixed:sha256:{EMPTY_SHA256_NIX32}"),
            format!("text:sha256:{EMPTY_SHA256_NIX32}"),
            format!("fixed:sha1:{}", nixbase32::encode(&[7; 20])),
        ] {
            assert_eq!(ContentAddress::parse(&s).unwrap().to_string(), s);
        }
        assert!(
            ContentAddress::parse("text:sha1:0000000000000000000000000000000000000000").is_err()
        );
        assert!(ContentAddress::parse("fixed:r:").is_err());
        assert!(ContentAddress::parse("source:sha256:00").is_err());
    }
}
