//! The NAR archive format (SPEC §3 "NAR"): streaming readers and writers.
//!
//! The grammar lives once, as a state machine that sees whole tokens and
//! knows nothing of I/O ([`grammar`]). The sync ([`NarReader`]) and async
//! ([`AsyncNarReader`]) readers drive it over a buffered byte source and hand
//! out file contents as readers, so no file is ever buffered whole and no
//! allocation is ever sized by a length read from the input. The writers
//! share one encoder and refuse to emit anything the reader would reject.
//!
//! The reader is strict on purpose: anything Cairn accepts it must be able
//! to render back byte for byte, so it refuses the leniencies of
//! `nix-store --restore` (unsorted entries, trailing bytes, …).

mod grammar;
mod reader;
mod writer;

#[cfg(feature = "async")]
mod async_io;
pub mod fs;

use std::io;

use thiserror::Error;

pub use grammar::Event;
pub use reader::{Contents, NarReader};
pub use writer::{Encoder as NarEncoder, NarWriteError, NarWriter};

#[cfg(feature = "async")]
pub use async_io::{AsyncContents, AsyncNarReader, AsyncNarWriter};

/// Longest entry name accepted (the castore limit and Linux's NAME_MAX).
pub const MAX_NAME_LEN: usize = 255;
/// Longest symlink target accepted (the castore limit; Linux's PATH_MAX - 1).
pub const MAX_TARGET_LEN: usize = 4095;

/// The first token of every NAR.
pub const MAGIC: &[u8] = b"nix-archive-1";

/// What is wrong with a NAR, independent of where it was found.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Malformed {
    /// The first token is not `nix-archive-1`.
    #[error("not a NAR archive (missing \"nix-archive-1\" magic)")]
    BadMagic,
    /// A token other than the one the grammar allows here.
    #[error("expected {expected}, found {found}")]
    UnexpectedToken {
        /// What the grammar allows, e.g. `"type"`.
        expected: &'static str,
        /// What was there, escaped and shortened.
        found: String,
    },
    /// A name or target longer than its limit.
    #[error("{what} is {len} bytes long; the limit is {max}")]
    TooLong {
        /// `entry name` or `symlink target`.
        what: &'static str,
        /// The declared length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// Padding after a string is not all zero bytes.
    #[error("non-zero padding after a string")]
    NonZeroPadding,
    /// The input ended before the archive did.
    #[error("truncated: the input ends before the archive does")]
    Truncated,
    /// Bytes after the end of the root node.
    #[error("trailing data after the end of the archive")]
    TrailingData,
    /// An entry name that cannot be a file name.
    #[error("invalid entry name {name:?}: {reason}")]
    InvalidName {
        /// The name, escaped.
        name: String,
        /// Why it is invalid.
        reason: &'static str,
    },
    /// Entries not in strictly ascending byte order.
    #[error("entry {name:?} is not sorted after {previous:?}")]
    Unsorted {
        /// The entry before.
        previous: String,
        /// The offending entry.
        name: String,
    },
    /// The same name twice in one directory.
    #[error("duplicate entry {0:?}")]
    Duplicate(String),
    /// A symlink target that is empty or contains NUL.
    #[error("invalid symlink target {target:?}: {reason}")]
    InvalidTarget {
        /// The target, escaped.
        target: String,
        /// Why it is invalid.
        reason: &'static str,
    },
    /// `next()` was called again after an error.
    #[error("the reader already failed")]
    AfterError,
}

/// An error while reading a NAR: malformed input (with the byte offset at
/// which it was detected) or a failure of the underlying reader.
#[derive(Debug, Error)]
pub enum NarError {
    /// The bytes do not form a valid NAR.
    #[error("invalid NAR at byte {offset}: {kind}")]
    Invalid {
        /// Offset into the NAR where the problem was found.
        offset: u64,
        /// What is wrong.
        kind: Malformed,
    },
    /// The source failed.
    #[error("reading NAR: {0}")]
    Io(io::Error),
}

impl NarError {
    /// The malformation, if this is one.
    pub fn malformed(&self) -> Option<&Malformed> {
        match self {
            NarError::Invalid { kind, .. } => Some(kind),
            NarError::Io(_) => None,
        }
    }

    /// Wraps this error into an `io::Error` so it survives passing through
    /// `Read` implementations; [`From<io::Error>`] unwraps it again.
    pub(crate) fn into_io(self) -> io::Error {
        match self {
            NarError::Io(e) => e,
            invalid => io::Error::new(io::ErrorKind::InvalidData, invalid),
        }
    }
}

impl From<io::Error> for NarError {
    fn from(e: io::Error) -> Self {
        if e.get_ref().is_some_and(|inner| inner.is::<NarError>()) {
            if let Some(inner) = e.into_inner() {
                if let Ok(nar) = inner.downcast::<NarError>() {
                    return *nar;
                }
                // Unreachable in practice: `is` said it was a NarError.
                return NarError::Io(io::Error::other("lost NAR error"));
            }
            return NarError::Io(io::Error::other("lost NAR error"));
        }
        NarError::Io(e)
    }
}

/// Escapes bytes for an error message, shortened to a readable length.
pub(crate) fn escape(bytes: &[u8]) -> String {
    const SHOWN: usize = 64;
    let mut s: String = bytes[..bytes.len().min(SHOWN)].escape_ascii().to_string();
    if bytes.len() > SHOWN {
        s.push_str(&format!("…({} bytes)", bytes.len()));
    }
    s
}

/// Checks one entry name; the same rule as castore's path components.
pub fn validate_entry_name(name: &[u8]) -> Result<(), Malformed> {
    let reason = if name.is_empty() {
        "empty"
    } else if name == b"." || name == b".." {
        "a relative path component"
    } else if name.contains(&b'/') {
        "contains '/'"
    } else if name.contains(&0) {
        "contains a NUL byte"
    } else if name.len() > MAX_NAME_LEN {
        "longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(Malformed::InvalidName {
        name: escape(name),
        reason,
    })
}

/// Checks that `name` may follow `previous` in a directory.
pub(crate) fn check_order(previous: &[u8], name: &[u8]) -> Result<(), Malformed> {
    match previous.cmp(name) {
        std::cmp::Ordering::Less => Ok(()),
        std::cmp::Ordering::Equal => Err(Malformed::Duplicate(escape(name))),
        std::cmp::Ordering::Greater => Err(Malformed::Unsorted {
            previous: escape(previous),
            name: escape(name),
        }),
    }
}

/// Checks a symlink target.
pub fn validate_symlink_target(target: &[u8]) -> Result<(), Malformed> {
    let reason = if target.is_empty() {
        "empty"
    } else if target.contains(&0) {
        "contains a NUL byte"
    } else if target.len() > MAX_TARGET_LEN {
        "longer than 4095 bytes"
    } else {
        return Ok(());
    };
    Err(Malformed::InvalidTarget {
        target: escape(target),
        reason,
    })
}

/// Number of zero bytes that follow a string of `len` bytes.
pub(crate) const fn padding_len(len: u64) -> usize {
    ((8 - (len % 8)) % 8) as usize
}
