//! The BlobService trait and its backends.
//!
//! A blob is a byte string named by its BLAKE3 digest. Backends may store a
//! blob as content-defined chunks (each itself a blob, named by its own
//! digest); chunk boundaries never change a blob's digest. Every byte a
//! reader returns has been verified against the digest it was stored under.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncSeek};

use crate::{B3Digest, Error};

pub mod chunked;
pub mod chunker;
mod ingest;
mod memory;
mod objects;

pub use ingest::FileIngestError;
pub use memory::MemoryBlobService;
pub use objects::{Compression, ObjectsBlobService};

/// One piece of a chunked blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkMeta {
    /// The chunk's own digest; readable as a blob.
    pub digest: B3Digest,
    /// Its length in bytes.
    pub size: u64,
}

impl ChunkMeta {
    /// Bytes per chunk in [`ChunkMeta::encode_list`]'s format.
    pub const ENCODED_LEN: usize = 40;

    /// A chunk list as stored by the backends: per chunk its 32 digest
    /// bytes, then its size as 8 little-endian bytes.
    pub fn encode_list(chunks: &[ChunkMeta]) -> Vec<u8> {
        let mut out = Vec::with_capacity(chunks.len() * Self::ENCODED_LEN);
        for c in chunks {
            out.extend_from_slice(c.digest.as_bytes());
            out.extend_from_slice(&c.size.to_le_bytes());
        }
        out
    }

    /// The list [`ChunkMeta::encode_list`] wrote, or `None` if `raw` is
    /// not a whole number of entries.
    pub fn decode_list(raw: &[u8]) -> Option<Vec<ChunkMeta>> {
        if !raw.len().is_multiple_of(Self::ENCODED_LEN) {
            return None;
        }
        Some(
            raw.chunks_exact(Self::ENCODED_LEN)
                .map(|e| {
                    let mut d = [0u8; 32];
                    d.copy_from_slice(&e[..32]);
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&e[32..]);
                    ChunkMeta {
                        digest: B3Digest::from(d),
                        size: u64::from_le_bytes(n),
                    }
                })
                .collect(),
        )
    }
}

/// A seekable reader of one blob's verified bytes.
pub trait BlobReader: AsyncRead + AsyncSeek + Send + Unpin {}
impl<T: AsyncRead + AsyncSeek + Send + Unpin> BlobReader for T {}

/// Receives a blob's bytes; `close` makes it visible and names it.
///
/// Dropping a writer without closing it discards what was written: nothing
/// becomes visible as the blob.
#[async_trait]
pub trait BlobWriter: Send {
    /// Appends bytes.
    async fn write(&mut self, data: &[u8]) -> Result<(), Error>;
    /// Appends bytes the caller gives up. A writer that passes them on as
    /// they are (an upload over the network) takes them without a copy;
    /// the default copies, as [`write`](Self::write) does.
    async fn write_bytes(&mut self, data: Bytes) -> Result<(), Error> {
        self.write(&data).await
    }
    /// Finishes the blob and returns its digest. Only after this returns is
    /// the blob visible to `has` and `open_read`.
    async fn close(self: Box<Self>) -> Result<B3Digest, Error>;
}

/// Where blobs live.
#[async_trait]
pub trait BlobService: Send + Sync {
    /// Whether the blob exists.
    async fn has(&self, digest: &B3Digest) -> Result<bool, Error>;
    /// Of `digests`, those not stored, in the order given. Remote backends
    /// answer in one round trip where the peer allows it; the default asks
    /// [`has`](Self::has) for each.
    async fn missing(&self, digests: &[B3Digest]) -> Result<Vec<B3Digest>, Error> {
        let mut out = Vec::new();
        for d in digests {
            if !self.has(d).await? {
                out.push(*d);
            }
        }
        Ok(out)
    }
    /// Of `digests`, those a writer about to refer to them should send:
    /// the ones not stored, and, on backends whose garbage collection goes
    /// by object age, the ones stored too long ago to be relied on (a
    /// collection on another front end could take them before the writer's
    /// directories land; sending them again renews their age). For
    /// existence alone ask [`missing`](Self::missing). The default is
    /// `missing`: a backend that dates reuse when it happens needs no more.
    async fn to_send(&self, digests: &[B3Digest]) -> Result<Vec<B3Digest>, Error> {
        self.missing(digests).await
    }
    /// A reader for the blob, or `None` if it does not exist.
    async fn open_read(&self, digest: &B3Digest) -> Result<Option<Box<dyn BlobReader>>, Error>;
    /// A writer for a new blob.
    async fn open_write(&self) -> Box<dyn BlobWriter>;
    /// Stores several small blobs held in memory; returns their digests in
    /// order. For many small files at once (NAR ingest): backends on
    /// local disk do the whole batch in one step rather than one per blob.
    async fn put_many(&self, blobs: Vec<Bytes>) -> Result<Vec<B3Digest>, Error> {
        let mut out = Vec::with_capacity(blobs.len());
        for b in &blobs {
            out.push(put_bytes(self, b).await?);
        }
        Ok(out)
    }
    /// The whole, verified contents of several blobs (each `None` if
    /// absent), given with the sizes the caller expects (a hint for
    /// reading in one step; what is returned is verified by digest, not
    /// by size). Meant for small blobs: everything is returned in memory.
    async fn read_many(&self, wanted: &[(B3Digest, u64)]) -> Result<Vec<Option<Bytes>>, Error> {
        let mut out = Vec::with_capacity(wanted.len());
        for (d, _) in wanted {
            out.push(read_to_vec(self, d).await?.map(Bytes::from));
        }
        Ok(out)
    }
    /// The blob's chunks: `None` if the blob does not exist, an empty list
    /// if it has no finer chunks.
    async fn chunks(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error>;
    /// Stores the contents of a local file of `expected` bytes and returns
    /// the blob's digest. The default streams it through
    /// [`open_write`](Self::open_write); backends on local disk override it
    /// to do the whole job in one step, which is what makes importing many
    /// small files cheap.
    async fn ingest_file(&self, path: &Path, expected: u64) -> Result<B3Digest, FileIngestError> {
        ingest::ingest_through_writer(self, path, expected).await
    }
    /// Bytes one open writer may hold before it has stored them (such as
    /// a chunker's look-ahead window), so that a caller keeping many
    /// writers open can budget for them. Zero (the default) for writers
    /// that pass every write on.
    fn writer_buffer(&self) -> usize {
        0
    }
    /// Whether the lists `chunks` returns are known to concatenate to the
    /// blob: the backend computed them itself and checks their integrity
    /// when reading them back. A reader that verifies each chunk it gets
    /// then need not re-hash the whole blob. `false` (the default) for
    /// lists that come from elsewhere, such as a remote peer.
    fn chunk_lists_verified(&self) -> bool {
        false
    }
    /// Makes everything written so far durable (before metadata that refers
    /// to it is committed). A no-op for backends that are durable per write.
    async fn sync(&self) -> Result<(), Error> {
        Ok(())
    }
    /// Deletes stored blobs that are not in `live`, and chunks that no
    /// live blob uses, unless `keep` keeps them for their age (written or
    /// reused since its instant), so that a concurrent writer's new
    /// objects survive. With `dry_run`,
    /// only reports what it would delete. Backends that cannot enumerate
    /// their objects say so with an error.
    async fn collect_garbage(
        &self,
        _live: &std::collections::HashSet<B3Digest>,
        _keep: crate::gc::KeepYoung,
        _dry_run: bool,
    ) -> Result<crate::gc::GcReport, Error> {
        Err(Error::Storage(
            "this blob service cannot collect garbage".into(),
        ))
    }
    /// Checks every stored object against its name (an fsck). Backends
    /// that cannot enumerate their objects say so with an error.
    async fn verify_all(&self) -> Result<VerifyReport, Error> {
        Err(Error::Storage(
            "this blob service cannot enumerate its objects".into(),
        ))
    }
}

/// What a full verification found.
#[derive(Debug, Default, Clone)]
pub struct VerifyReport {
    /// Objects examined.
    pub checked: u64,
    /// One line per object that failed, naming it and the reason.
    pub problems: Vec<String>,
}

/// Writes `data` as one blob and returns its digest.
pub async fn put_bytes(
    service: &(impl BlobService + ?Sized),
    data: &[u8],
) -> Result<B3Digest, Error> {
    let mut w = service.open_write().await;
    w.write(data).await?;
    w.close().await
}

/// Reads a whole blob into memory (for small blobs and tests).
pub async fn read_to_vec(
    service: &(impl BlobService + ?Sized),
    digest: &B3Digest,
) -> Result<Option<Vec<u8>>, Error> {
    use tokio::io::AsyncReadExt;
    let Some(mut r) = service.open_read(digest).await? else {
        return Ok(None);
    };
    let mut out = Vec::new();
    r.read_to_end(&mut out).await.map_err(Error::from_io)?;
    Ok(Some(out))
}

/// Copies blob `digest` from `from` into `to`, streaming, and returns its
/// size; `None` if `from` does not have it. `sent` is told of every piece.
/// The writer is closed only after the whole read succeeded (a reader that
/// fails verification drops it unclosed, so nothing becomes visible), and
/// the digest `to` names must be `digest`.
pub async fn copy_blob(
    from: &(impl BlobService + ?Sized),
    to: &(impl BlobService + ?Sized),
    digest: &B3Digest,
    mut sent: impl FnMut(u64) + Send,
) -> Result<Option<u64>, Error> {
    use tokio::io::AsyncReadExt;
    let Some(mut reader) = from.open_read(digest).await? else {
        return Ok(None);
    };
    let mut writer = to.open_write().await;
    let mut buf = vec![0u8; 1024 * 1024];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).await.map_err(Error::from_io)?;
        if n == 0 {
            break;
        }
        writer.write(&buf[..n]).await?;
        total += n as u64;
        sent(n as u64);
    }
    let stored = writer.close().await?;
    if stored != *digest {
        return Err(Error::Integrity {
            digest: *digest,
            detail: format!("copied bytes that hash to {stored}"),
        });
    }
    Ok(Some(total))
}

/// Blob services are shared between tasks.
pub type SharedBlobService = Arc<dyn BlobService>;
