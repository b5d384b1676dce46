//! Bringing trees into castore: from the filesystem and from tar archives.
//! Both return the root [`crate::Node`]; neither knows about Nix.

pub mod fs;
pub mod tar;
pub mod tree;

pub use tree::{EntryId, TreeBuilder};

use std::path::PathBuf;

use thiserror::Error;

use crate::{DirectoryError, Error};

/// Reports import progress (the CLI draws a bar with it).
pub trait Progress: Send + Sync {
    /// More work became known.
    fn add_total(&self, _files: u64, _bytes: u64) {}
    /// One file's contents were stored.
    fn file_done(&self, _bytes: u64) {}
}

/// Progress that goes nowhere.
pub struct NoProgress;
impl Progress for NoProgress {}

/// Why an import failed. Nothing it wrote is referenced by anything: at
/// worst some blobs exist that a garbage collection will remove.
#[derive(Debug, Error)]
pub enum ImportError {
    /// Reading the source failed.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file type castore cannot represent (socket, device, fifo).
    #[error(
        "{0}: unsupported file type (only regular files, directories and symlinks can be imported)"
    )]
    UnsupportedType(PathBuf),
    /// A file that shrank while it was read.
    #[error("{path}: changed while being imported ({expected} bytes expected, {actual} read)")]
    Changed {
        /// Where.
        path: PathBuf,
        /// Size at walk time.
        expected: u64,
        /// Bytes read.
        actual: u64,
    },
    /// A name or target castore refuses.
    #[error("{path}: {source}")]
    Invalid {
        /// Where.
        path: PathBuf,
        /// Why.
        source: DirectoryError,
    },
    /// An archive entry that would escape the root, or a malformed archive.
    #[error("archive entry {path:?}: {reason}")]
    Archive {
        /// The entry's path as written in the archive.
        path: String,
        /// Why it is refused.
        reason: String,
    },
    /// The services failed.
    #[error(transparent)]
    Castore(#[from] Error),
}

impl From<crate::blobservice::FileIngestError> for ImportError {
    fn from(e: crate::blobservice::FileIngestError) -> Self {
        use crate::blobservice::FileIngestError as F;
        match e {
            F::Read { path, source } => ImportError::Io { path, source },
            F::Changed {
                path,
                expected,
                actual,
            } => ImportError::Changed {
                path,
                expected,
                actual,
            },
            F::Store(e) => ImportError::Castore(e),
        }
    }
}
