//! The error type of the castore services.

use std::io;

use thiserror::Error;

use crate::{B3Digest, DirectoryError};

/// What can go wrong in a blob or directory service.
#[derive(Debug, Error)]
pub enum Error {
    /// A directory that breaks a validation rule.
    #[error("invalid directory: {0}")]
    InvalidDirectory(#[from] DirectoryError),
    /// A closure put that is incomplete, disconnected or inconsistent.
    #[error("invalid directory closure: {0}")]
    InvalidClosure(String),
    /// Stored or received bytes that do not hash to the digest they claim.
    #[error("integrity failure for {digest}: {detail}")]
    Integrity {
        /// The digest that was asked for.
        digest: B3Digest,
        /// What did not match.
        detail: String,
    },
    /// A directory or blob that should exist does not.
    #[error("{what} {digest} not found")]
    NotFound {
        /// `blob` or `directory`.
        what: &'static str,
        /// Its digest.
        digest: B3Digest,
    },
    /// An address URL that names no known backend, or a bad option.
    #[error("invalid service address {addr:?}: {reason}")]
    Address {
        /// The address as given.
        addr: String,
        /// Why it was refused.
        reason: String,
    },
    /// The backend's storage failed (disk full, permissions, database).
    #[error("storage: {0}")]
    Storage(String),
    /// An I/O failure.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Error {
    /// Unwraps an `io::Error` made by [`Error::into_io`] back into the
    /// castore error it carries; other I/O errors become [`Error::Io`].
    pub fn from_io(e: io::Error) -> Self {
        if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            if let Some(inner) = e.into_inner() {
                if let Ok(err) = inner.downcast::<Error>() {
                    return *err;
                }
            }
            return Error::Storage("lost castore error".into());
        }
        Error::Io(e)
    }

    /// Wraps into an `io::Error` for `AsyncRead` implementations, keeping
    /// the integrity case recognisable as `InvalidData`.
    pub fn into_io(self) -> io::Error {
        match self {
            Error::Io(e) => e,
            e @ Error::Integrity { .. } => io::Error::new(io::ErrorKind::InvalidData, e),
            e @ Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, e),
            e => io::Error::other(e),
        }
    }
}
