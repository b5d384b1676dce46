//! The narinfo text format of Nix binary caches (SPEC §3 "narinfo").
//!
//! Parsing accepts what Nix writes and tolerates keys it does not know;
//! rendering writes the fields in the order Nix does, so a narinfo Cairn
//! renders is byte-identical to one Nix would write for the same data.

use std::fmt::{self, Write as _};

use thiserror::Error;

use crate::hash::{ContentAddress, HashAlgo, HashError, NixHash};
use crate::signing::{KeyError, Signature, SigningKey, VerifyingKey};
use crate::store_path::{StorePath, StorePathError};

/// Why a narinfo could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NarInfoError {
    /// A line without `: `.
    #[error("line {line}: expected \"Key: value\", got {text:?}")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// The line, shortened.
        text: String,
    },
    /// A required field is absent.
    #[error("missing required field {0}")]
    Missing(&'static str),
    /// A single-valued field appears twice.
    #[error("line {line}: field {key} appears more than once")]
    Duplicate {
        /// 1-based line number.
        line: usize,
        /// The field.
        key: &'static str,
    },
    /// A number that does not parse or is zero where that is invalid.
    #[error("line {line}: invalid {key} {value:?}")]
    Number {
        /// 1-based line number.
        line: usize,
        /// The field.
        key: &'static str,
        /// The text.
        value: String,
    },
    /// A malformed store path in StorePath, References or Deriver.
    #[error("line {line}: {source}")]
    StorePath {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        source: StorePathError,
    },
    /// A malformed hash or CA.
    #[error("line {line}: {source}")]
    Hash {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        source: HashError,
    },
    /// A malformed signature.
    #[error("line {line}: signature: {source}")]
    Signature {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        source: KeyError,
    },
}

/// One narinfo: where a NAR is, what it hashes to, and what it refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    /// The store path described.
    pub store_path: StorePath,
    /// Where the (possibly compressed) NAR file is, relative to the cache.
    pub url: String,
    /// `none`, `xz`, `zstd`, `bzip2`…; Nix assumes `bzip2` when absent.
    pub compression: Option<String>,
    /// Hash of the NAR file as stored (after compression).
    pub file_hash: Option<NixHash>,
    /// Size of the NAR file as stored.
    pub file_size: Option<u64>,
    /// sha256 of the uncompressed NAR.
    pub nar_hash: NixHash,
    /// Size of the uncompressed NAR.
    pub nar_size: u64,
    /// Store paths this one refers to.
    pub references: Vec<StorePath>,
    /// The derivation that built it, if known.
    pub deriver: Option<StorePath>,
    /// Signatures over [`NarInfo::fingerprint`].
    pub signatures: Vec<Signature>,
    /// Content address, for content-addressed paths.
    pub ca: Option<ContentAddress>,
}

/// The string Nix signs for a path: `1;<path>;<narhash>;<narsize>;<refs>`.
///
/// References are sorted and comma-joined as full store paths, and the NAR
/// hash is always written as `sha256:<nixbase32>`, whatever form the narinfo
/// used, because that is what Nix signs.
pub fn fingerprint(
    path: &StorePath,
    nar_hash: &NixHash,
    nar_size: u64,
    references: &[StorePath],
) -> String {
    let refs: Vec<String> = sorted_paths(references)
        .iter()
        .map(|p| p.to_absolute_path())
        .collect();
    format!(
        "1;{};{};{};{}",
        path.to_absolute_path(),
        nar_hash.to_nix_base32_string(),
        nar_size,
        refs.join(",")
    )
}

/// Store paths in Nix's order: by their printed form.
fn sorted_paths(paths: &[StorePath]) -> Vec<&StorePath> {
    let mut v: Vec<(String, &StorePath)> = paths.iter().map(|p| (p.base_name(), p)).collect();
    v.sort();
    v.dedup_by(|a, b| a.0 == b.0);
    v.into_iter().map(|(_, p)| p).collect()
}

impl NarInfo {
    /// Parses narinfo text.
    pub fn parse(text: &str) -> Result<Self, NarInfoError> {
        let mut store_path = None;
        let mut url = None;
        let mut compression = None;
        let mut file_hash = None;
        let mut file_size = None;
        let mut nar_hash = None;
        let mut nar_size = None;
        let mut references = Vec::new();
        let mut deriver = None;
        let mut signatures = Vec::new();
        let mut ca = None;

        fn set<T>(
            slot: &mut Option<T>,
            v: T,
            line: usize,
            key: &'static str,
        ) -> Result<(), NarInfoError> {
            if slot.replace(v).is_some() {
                return Err(NarInfoError::Duplicate { line, key });
            }
            Ok(())
        }

        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            // `lines` drops the CR of a CRLF ending but not a stray one (before
            // it, or at the very end): drop those too, or a value ending in CR
            // would render as a CRLF line and read back without it.
            let raw = raw.trim_end_matches('\r');
            if raw.trim().is_empty() {
                continue;
            }
            let (key, value) = raw
                .split_once(": ")
                .or_else(|| raw.strip_suffix(':').map(|k| (k, "")))
                .ok_or_else(|| NarInfoError::Syntax {
                    line,
                    text: raw.chars().take(80).collect(),
                })?;
            let path_err = |source| NarInfoError::StorePath { line, source };
            let hash_err = |source| NarInfoError::Hash { line, source };
            let number = |key: &'static str| {
                value.parse::<u64>().map_err(|_| NarInfoError::Number {
                    line,
                    key,
                    value: value.to_owned(),
                })
            };
            match key {
                "StorePath" => set(
                    &mut store_path,
                    StorePath::from_absolute_path(value).map_err(path_err)?,
                    line,
                    "StorePath",
                )?,
                "URL" => set(&mut url, value.to_owned(), line, "URL")?,
                "Compression" => set(&mut compression, value.to_owned(), line, "Compression")?,
                "FileHash" => set(
                    &mut file_hash,
                    NixHash::parse(value).map_err(hash_err)?,
                    line,
                    "FileHash",
                )?,
                "FileSize" => set(&mut file_size, number("FileSize")?, line, "FileSize")?,
                "NarHash" => {
                    let h = NixHash::parse(value).map_err(hash_err)?;
                    h.expect_algo(HashAlgo::Sha256).map_err(hash_err)?;
                    set(&mut nar_hash, h, line, "NarHash")?
                }
                "NarSize" => {
                    let n = number("NarSize")?;
                    if n == 0 {
                        return Err(NarInfoError::Number {
                            line,
                            key: "NarSize",
                            value: value.to_owned(),
                        });
                    }
                    set(&mut nar_size, n, line, "NarSize")?
                }
                "References" => {
                    // Repeated References lines add up, as in Nix's parser.
                    for r in value.split_ascii_whitespace() {
                        references.push(StorePath::from_base_name(r).map_err(path_err)?);
                    }
                }
                "Deriver" if value == "unknown-deriver" => {}
                "Deriver" => set(
                    &mut deriver,
                    StorePath::from_base_name(value).map_err(path_err)?,
                    line,
                    "Deriver",
                )?,
                "Sig" => signatures.push(
                    Signature::parse(value)
                        .map_err(|source| NarInfoError::Signature { line, source })?,
                ),
                "CA" => set(
                    &mut ca,
                    ContentAddress::parse(value).map_err(hash_err)?,
                    line,
                    "CA",
                )?,
                _ => {} // System, and whatever newer writers add.
            }
        }

        Ok(NarInfo {
            store_path: store_path.ok_or(NarInfoError::Missing("StorePath"))?,
            url: url
                .filter(|u| !u.is_empty())
                .ok_or(NarInfoError::Missing("URL"))?,
            compression,
            file_hash,
            file_size,
            nar_hash: nar_hash.ok_or(NarInfoError::Missing("NarHash"))?,
            nar_size: nar_size.ok_or(NarInfoError::Missing("NarSize"))?,
            references,
            deriver,
            signatures,
            ca,
        })
    }

    /// The signed fingerprint of this path.
    pub fn fingerprint(&self) -> String {
        fingerprint(
            &self.store_path,
            &self.nar_hash,
            self.nar_size,
            &self.references,
        )
    }

    /// Adds (or replaces) this key's signature.
    pub fn sign(&mut self, key: &SigningKey) {
        key.sign_into(self.fingerprint().as_bytes(), &mut self.signatures);
    }

    /// The signatures that verify under any of `trusted` keys.
    pub fn valid_signatures<'a>(
        &'a self,
        trusted: &'a [VerifyingKey],
    ) -> impl Iterator<Item = &'a Signature> + 'a {
        let fp = self.fingerprint();
        self.signatures
            .iter()
            .filter(move |sig| trusted.iter().any(|k| k.verify(fp.as_bytes(), sig)))
    }
}

impl fmt::Display for NarInfo {
    /// Renders in Nix's field order, one `Key: value` per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(512);
        let _ = writeln!(s, "StorePath: {}", self.store_path);
        let _ = writeln!(s, "URL: {}", self.url);
        if let Some(c) = &self.compression {
            let _ = writeln!(s, "Compression: {c}");
        }
        if let Some(h) = &self.file_hash {
            let _ = writeln!(s, "FileHash: {}", h.to_nix_base32_string());
        }
        if let Some(n) = self.file_size {
            let _ = writeln!(s, "FileSize: {n}");
        }
        let _ = writeln!(s, "NarHash: {}", self.nar_hash.to_nix_base32_string());
        let _ = writeln!(s, "NarSize: {}", self.nar_size);
        let refs: Vec<String> = sorted_paths(&self.references)
            .iter()
            .map(|p| p.base_name())
            .collect();
        let _ = writeln!(s, "References: {}", refs.join(" "));
        if let Some(d) = &self.deriver {
            let _ = writeln!(s, "Deriver: {}", d.base_name());
        }
        for sig in &self.signatures {
            let _ = writeln!(s, "Sig: {sig}");
        }
        if let Some(ca) = &self.ca {
            let _ = writeln!(s, "CA: {ca}");
        }
        f.write_str(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "StorePath: /nix/store/8sfqrcf48xfcqw4gy961lab11cskjy38-t1
URL: nar/1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3.nar.xz
Compression: xz
FileHash: sha256:1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3
FileSize: 312
NarHash: sha256:05h58w8k09ywwqq14biql39lxwzyhsjbnyn0jkz06cyz7xsm9z0d
NarSize: 648
References: 
Deriver: 5gjcjs4f6wbsdn1bc8ihmf1dz5qdfhvd-t1.drv
CA: fixed:r:sha256:05h58w8k09ywwqq14biql39lxwzyhsjbnyn0jkz06cyz7xsm9z0d
";

    #[test]
    fn parse_render_roundtrip() {
        let info = NarInfo::parse(SAMPLE).unwrap();
        assert_eq!(info.nar_size, 648);
        assert_eq!(info.compression.as_deref(), Some("xz"));
        assert!(info.references.is_empty());
        assert_eq!(info.to_string(), SAMPLE);
    }

    #[test]
    fn unknown_keys_are_tolerated_and_required_ones_checked() {
        let with_extra = format!("{SAMPLE}System: x86_64-linux\nFutureKey: whatever\n");
        assert_eq!(NarInfo::parse(&with_extra).unwrap().to_string(), SAMPLE);
        let without_hash: String = SAMPLE
            .lines()
            .filter(|l| !l.starts_with("NarHash"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            NarInfo::parse(&without_hash),
            Err(NarInfoError::Missing("NarHash"))
        );
        let zero = SAMPLE.replace("NarSize: 648", "NarSize: 0");
        assert!(matches!(
            NarInfo::parse(&zero),
            Err(NarInfoError::Number { key: "NarSize", .. })
        ));
        let dup = format!("{SAMPLE}URL: again\n");
        assert!(matches!(
            NarInfo::parse(&dup),
            Err(NarInfoError::Duplicate { key: "URL", .. })
        ));
        assert!(matches!(
            NarInfo::parse("garbage\n"),
            Err(NarInfoError::Syntax { line: 1, .. })
        ));
    }

    #[test]
    fn fingerprint_sorts_references_and_signing_verifies() {
        let a = StorePath::from_base_name("8sfqrcf48xfcqw4gy961lab11cskjy38-a").unwrap();
        let b = StorePath::from_base_name("0sfqrcf48xfcqw4gy961lab11cskjy38-b").unwrap();
        let mut info = NarInfo::parse(SAMPLE).unwrap();
        info.references = vec![a.clone(), b.clone()];
        assert!(info.fingerprint().ends_with(&format!(";648;{b},{a}")));
        let key = SigningKey::generate("k-1").unwrap();
        info.sign(&key);
        let trusted = [key.verifying_key()];
        assert_eq!(info.valid_signatures(&trusted).count(), 1);
        info.nar_size += 1;
        assert_eq!(info.valid_signatures(&trusted).count(), 0);
    }
}
