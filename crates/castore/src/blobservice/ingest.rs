//! Storing a local file as a blob: the error type, and the generic way of
//! doing it (read in pieces, stream through a [`BlobWriter`]) that backends
//! without a faster path use.
//!
//! It must not read more than one piece into memory at a time, nor trust
//! the size it was told: a file that shrinks or grows while it is read is
//! an error, not a silently different blob.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::BlobService;
use crate::{B3Digest, Error};

/// Files are read in pieces of this size; with several files in flight,
/// this (not file size) bounds an import's memory.
pub(crate) const READ_PIECE: usize = 1024 * 1024;

/// Why a local file could not be stored as a blob.
#[derive(Debug, Error)]
pub enum FileIngestError {
    /// Opening or reading the file failed.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file's length differs from the one it had when it was listed.
    #[error("{path}: changed while being imported ({expected} bytes expected, {actual} read)")]
    Changed {
        /// The file.
        path: PathBuf,
        /// Size when listed.
        expected: u64,
        /// Bytes found.
        actual: u64,
    },
    /// The blob service failed.
    #[error(transparent)]
    Store(#[from] Error),
}

impl FileIngestError {
    pub(crate) fn read(path: &Path) -> impl FnOnce(io::Error) -> Self + '_ {
        move |source| FileIngestError::Read {
            path: path.to_owned(),
            source,
        }
    }
}

/// Fills `buf` from `file`, in as many reads as that takes (one, for a
/// regular file); returns fewer bytes only at end of file.
pub(crate) fn fill(file: &mut std::fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Reads up to `want` bytes; fewer only at end of file.
fn read_up_to(file: &mut std::fs::File, want: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; want];
    let filled = fill(file, &mut buf)?;
    buf.truncate(filled);
    Ok(buf)
}

/// Whether `file` has more bytes: a file that grew after it was listed.
pub(crate) fn has_more(file: &mut std::fs::File) -> io::Result<bool> {
    let mut probe = [0u8; 1];
    loop {
        match file.read(&mut probe) {
            Ok(n) => return Ok(n > 0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

async fn on_blocking_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, FileIngestError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Storage(format!("blocking task failed: {e}")).into())
}

/// The generic [`BlobService::ingest_file`]: the file streams through a
/// blob writer a piece at a time.
pub(crate) async fn ingest_through_writer(
    service: &(impl BlobService + ?Sized),
    path: &Path,
    expected: u64,
) -> Result<B3Digest, FileIngestError> {
    let p = path.to_owned();
    let mut file = on_blocking_thread(move || std::fs::File::open(p))
        .await?
        .map_err(FileIngestError::read(path))?;
    let mut writer = service.open_write().await;
    let mut total = 0u64;
    loop {
        let want = (expected - total).min(READ_PIECE as u64) as usize;
        let (f, piece) = on_blocking_thread(move || {
            let r = if want == 0 {
                has_more(&mut file).map(|more| if more { vec![0] } else { Vec::new() })
            } else {
                read_up_to(&mut file, want)
            };
            (file, r)
        })
        .await?;
        file = f;
        let piece = piece.map_err(FileIngestError::read(path))?;
        if piece.is_empty() {
            break;
        }
        total += piece.len() as u64;
        if total > expected {
            break;
        }
        writer.write(&piece).await?;
    }
    if total != expected {
        return Err(FileIngestError::Changed {
            path: path.to_owned(),
            expected,
            actual: total,
        });
    }
    Ok(writer.close().await?)
}
