//! Nix store paths: `/nix/store/<32 nixbase32 chars>-<name>` (SPEC §3).
//!
//! Parsing validates the hash part and the name rules; the `compute_*`
//! functions derive the path `nix-store --add`, `builtins.toFile` and
//! fixed-output derivations would produce. Nothing here touches a store.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::hash::{ContentAddress, FileIngestionMethod, HashAlgo};
use crate::nixbase32;

/// The only store directory Cairn serves.
pub const STORE_DIR: &str = "/nix/store";

/// Length of the hash part in characters.
pub const HASH_PART_LEN: usize = 32;

/// Longest name Nix accepts.
pub const MAX_NAME_LEN: usize = 211;

/// Why a string is not a store path or name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StorePathError {
    /// Not below `/nix/store/`.
    #[error("{0:?} is not in the Nix store ({STORE_DIR})")]
    NotInStore(String),
    /// The base name is not `<hash>-<name>`.
    #[error("store path base name {0:?} is not <32-char hash>-<name>")]
    Shape(String),
    /// The hash part does not decode.
    #[error("store path hash {0:?} is not valid nixbase32")]
    Hash(String),
    /// The name is empty.
    #[error("store path name is empty")]
    EmptyName,
    /// The name is longer than 211 characters.
    #[error("store path name is {0} characters long; the limit is {MAX_NAME_LEN}")]
    NameTooLong(usize),
    /// The name starts with a period.
    #[error("store path name {0:?} starts with a period")]
    LeadingPeriod(String),
    /// A character outside `A-Za-z0-9+-._?=`.
    #[error("store path name {name:?} contains the invalid character {ch:?}")]
    InvalidChar {
        /// The whole name.
        name: String,
        /// The first offending character.
        ch: char,
    },
    /// Only sha256 references and self-references are allowed for this kind.
    #[error("a {0} path cannot have references")]
    ReferencesNotAllowed(&'static str),
    /// Text paths are always hashed with sha256.
    #[error("a text content address must use sha256")]
    TextNotSha256,
}

/// Checks a store path name against Nix's rules.
pub fn validate_name(name: &str) -> Result<(), StorePathError> {
    if name.is_empty() {
        return Err(StorePathError::EmptyName);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(StorePathError::NameTooLong(name.len()));
    }
    if name.starts_with('.') {
        return Err(StorePathError::LeadingPeriod(name.to_owned()));
    }
    if let Some(ch) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "+-._?=".contains(*c)))
    {
        return Err(StorePathError::InvalidChar {
            name: name.to_owned(),
            ch,
        });
    }
    Ok(())
}

/// A valid store path, held as its 20-byte digest and its name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePath {
    digest: [u8; 20],
    name: String,
}

impl StorePath {
    /// Builds a path from its parts, validating the name.
    pub fn from_parts(digest: [u8; 20], name: &str) -> Result<Self, StorePathError> {
        validate_name(name)?;
        Ok(StorePath {
            digest,
            name: name.to_owned(),
        })
    }

    /// Parses `<hash>-<name>`.
    pub fn from_base_name(base: &str) -> Result<Self, StorePathError> {
        let shape = || StorePathError::Shape(base.to_owned());
        if base.len() < HASH_PART_LEN + 2 || base.as_bytes()[HASH_PART_LEN] != b'-' {
            return Err(shape());
        }
        let (hash, name) = (&base[..HASH_PART_LEN], &base[HASH_PART_LEN + 1..]);
        let digest = nixbase32::decode_array::<20>(hash.as_bytes())
            .map_err(|_| StorePathError::Hash(hash.to_owned()))?;
        Self::from_parts(digest, name)
    }

    /// Parses an absolute store path `/nix/store/<hash>-<name>`.
    pub fn from_absolute_path(path: &str) -> Result<Self, StorePathError> {
        let base = path
            .strip_prefix(STORE_DIR)
            .and_then(|p| p.strip_prefix('/'))
            .ok_or_else(|| StorePathError::NotInStore(path.to_owned()))?;
        Self::from_base_name(base)
    }

    /// Splits `/nix/store/<hash>-<name>/sub/path` into the store path and
    /// the (possibly empty) relative path below it.
    pub fn split_absolute_path(path: &str) -> Result<(Self, &str), StorePathError> {
        let rest = path
            .strip_prefix(STORE_DIR)
            .and_then(|p| p.strip_prefix('/'))
            .ok_or_else(|| StorePathError::NotInStore(path.to_owned()))?;
        let (base, sub) = rest.split_once('/').unwrap_or((rest, ""));
        Ok((Self::from_base_name(base)?, sub.trim_matches('/')))
    }

    /// The 20-byte digest (the key of the tvix PathInfoService).
    pub fn digest(&self) -> &[u8; 20] {
        &self.digest
    }

    /// The name after the dash.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 32-character hash part.
    pub fn hash_part(&self) -> String {
        nixbase32::encode(&self.digest)
    }

    /// `<hash>-<name>`.
    pub fn base_name(&self) -> String {
        format!("{}-{}", self.hash_part(), self.name)
    }

    /// `/nix/store/<hash>-<name>`.
    pub fn to_absolute_path(&self) -> String {
        format!("{STORE_DIR}/{}", self.base_name())
    }
}

impl fmt::Display for StorePath {
    /// The absolute path.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{STORE_DIR}/{}-{}", self.hash_part(), self.name)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({self})")
    }
}

impl FromStr for StorePath {
    type Err = StorePathError;
    /// Accepts an absolute path or a bare base name.
    fn from_str(s: &str) -> Result<Self, StorePathError> {
        if s.starts_with('/') {
            Self::from_absolute_path(s)
        } else {
            Self::from_base_name(s)
        }
    }
}

impl serde::Serialize for StorePath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_absolute_path())
    }
}

/// The references a path description lists: other store paths, and whether
/// the path refers to itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct References<'a> {
    /// Other paths, in any order (they are sorted before hashing).
    pub others: &'a [StorePath],
    /// Whether the path contains its own hash.
    pub self_ref: bool,
}

/// The core of every store path computation: hash the description string
/// `<kind>:sha256:<hex>:/nix/store:<name>` and fold sha256 to 20 bytes.
pub fn make_store_path(
    kind: &str,
    inner_sha256: &[u8; 32],
    name: &str,
) -> Result<StorePath, StorePathError> {
    validate_name(name)?;
    let description = format!(
        "{kind}:sha256:{}:{STORE_DIR}:{name}",
        data_encoding::HEXLOWER.encode(inner_sha256)
    );
    let full = Sha256::digest(description.as_bytes());
    let mut digest = [0u8; 20];
    for (i, b) in full.iter().enumerate() {
        digest[i % 20] ^= b;
    }
    StorePath::from_parts(digest, name)
}

fn kind_with_references(kind: &str, refs: &References<'_>) -> String {
    let mut sorted: Vec<String> = refs.others.iter().map(|p| p.to_absolute_path()).collect();
    sorted.sort();
    let mut out = kind.to_owned();
    for r in sorted {
        out.push(':');
        out.push_str(&r);
    }
    if refs.self_ref {
        out.push_str(":self");
    }
    out
}

/// The path `nix-store --add` gives a tree whose NAR has this sha256.
pub fn compute_source_path(
    nar_sha256: &[u8; 32],
    refs: &References<'_>,
    name: &str,
) -> Result<StorePath, StorePathError> {
    make_store_path(&kind_with_references("source", refs), nar_sha256, name)
}

/// The path of a text file (`builtins.toFile`, `.drv`), hashed by its contents.
pub fn compute_text_path(
    contents_sha256: &[u8; 32],
    refs: &[StorePath],
    name: &str,
) -> Result<StorePath, StorePathError> {
    let refs = References {
        others: refs,
        self_ref: false,
    };
    make_store_path(&kind_with_references("text", &refs), contents_sha256, name)
}

/// The path of a content-addressed store object, dispatching on its `CA`.
///
/// Recursive sha256 is a `source` path (references allowed); text is a
/// `text` path; every other fixed output is `output:out` over the string
/// `fixed:out:[r:]<algo>:<hex>:` and may have no references.
pub fn compute_ca_path(
    ca: &ContentAddress,
    refs: &References<'_>,
    name: &str,
) -> Result<StorePath, StorePathError> {
    match ca {
        ContentAddress::Text(h) => {
            if refs.self_ref {
                return Err(StorePathError::ReferencesNotAllowed(
                    "text (self-referencing)",
                ));
            }
            let digest = h
                .sha256_bytes()
                .map_err(|_| StorePathError::TextNotSha256)?;
            compute_text_path(&digest, refs.others, name)
        }
        ContentAddress::Fixed(FileIngestionMethod::Recursive, h)
            if h.algo() == HashAlgo::Sha256 =>
        {
            let mut nar_sha256 = [0; 32];
            nar_sha256.copy_from_slice(h.digest());
            compute_source_path(&nar_sha256, refs, name)
        }
        ContentAddress::Fixed(method, h) => {
            if !refs.others.is_empty() || refs.self_ref {
                return Err(StorePathError::ReferencesNotAllowed("fixed-output"));
            }
            let r = if *method == FileIngestionMethod::Recursive {
                "r:"
            } else {
                ""
            };
            let inner = format!("fixed:out:{r}{}:{}:", h.algo(), h.to_hex());
            let inner_hash: [u8; 32] = Sha256::digest(inner.as_bytes()).into();
            make_store_path("output:out", &inner_hash, name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::NixHash;

    #[test]
    fn parse_and_print() {
        let p: StorePath = "/nix/store/8sfqrcf48xfcqw4gy961lab11cskjy38-t1"
            .parse()
            .unwrap();
        assert_eq!(p.name(), "t1");
        assert_eq!(p.hash_part(), "8sfqrcf48xfcqw4gy961lab11cskjy38");
        assert_eq!(
            p.to_string(),
            "/nix/store/8sfqrcf48xfcqw4gy961lab11cskjy38-t1"
        );
        assert_eq!(StorePath::from_base_name(&p.base_name()).unwrap(), p);
        let (q, sub) =
            StorePath::split_absolute_path("/nix/store/8sfqrcf48xfcqw4gy961lab11cskjy38-t1/a/b")
                .unwrap();
        assert_eq!((q, sub), (p, "a/b"));
    }

    #[test]
    fn name_rules() {
        let h = "8sfqrcf48xfcqw4gy961lab11cskjy38";
        assert!(StorePath::from_base_name(&format!("{h}-a+b-c._?=Z9")).is_ok());
        for (name, want) in [
            ("", StorePathError::EmptyName),
            (".hidden", StorePathError::LeadingPeriod(".hidden".into())),
            (
                "a b",
                StorePathError::InvalidChar {
                    name: "a b".into(),
                    ch: ' ',
                },
            ),
            (
                "ä",
                StorePathError::InvalidChar {
                    name: "ä".into(),
                    ch: 'ä',
                },
            ),
        ] {
            assert_eq!(validate_name(name), Err(want));
        }
        assert_eq!(validate_name(&"x".repeat(211)), Ok(()));
        assert_eq!(
            validate_name(&"x".repeat(212)),
            Err(StorePathError::NameTooLong(212))
        );
        assert!(matches!(
            StorePath::from_base_name("8sfqrcf48xfcqw4gy961lab11cskjy3e-x"),
            Err(StorePathError::Hash(_))
        ));
        assert!(matches!(
            "/nix/store/short-x".parse::<StorePath>(),
            Err(StorePathError::Shape(_))
        ));
        assert!(matches!(
            "/usr/store/8sfqrcf48xfcqw4gy961lab11cskjy38-t1".parse::<StorePath>(),
            Err(StorePathError::NotInStore(_))
        ));
    }

    #[test]
    fn source_path_matches_nix_store_add() {
        // `nix-store --add t1` for a dir {a: "hi\n", l -> a, sub/} printed
        // this path, with narHash sha256-DfxUdT/fMwP+lMB6u6SG/vNO06A4LhIw5twnMBFHBRY=.
        let nar = NixHash::parse("sha256-DfxUdT/fMwP+lMB6u6SG/vNO06A4LhIw5twnMBFHBRY=").unwrap();
        let p = compute_source_path(&nar.sha256_bytes().unwrap(), &References::default(), "t1")
            .unwrap();
        assert_eq!(
            p.to_string(),
            "/nix/store/8sfqrcf48xfcqw4gy961lab11cskjy38-t1"
        );
    }
}
