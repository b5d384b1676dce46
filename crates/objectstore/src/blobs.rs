//! [`ObjectBlobService`]: blobs as content-defined chunks, one object
//! each, and one chunk-list object per blob of several chunks (see
//! [`crate::layout`]).
//!
//! Chunks are cut with [`ChunkSizes::OBJECTS`] (2 MiB on average): an
//! object costs a request and the store's own metadata on every replica.
//!
//! Writes upload each chunk as soon as it is cut, skipping chunks the
//! bucket already has (recently); the uploads in flight are bounded for
//! the whole service, not per blob, so memory stays bounded however many
//! files are imported at once. The chunk list goes last, so a blob is
//! visible only once every chunk is. Reads ask first for the blob as one
//! chunk (what small files are), then for its list; every chunk is
//! re-hashed before any of it is returned, a sequential reader loads
//! ahead, and batches of small blobs are fetched concurrently.

use std::collections::HashSet;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use cairn_castore::blobservice::chunked::{start_now, ChunkSource, ChunkedReader};
use cairn_castore::blobservice::chunker::{self, ChunkSizes};
use cairn_castore::blobservice::VerifyReport;
use cairn_castore::gc::{GcReport, KeepYoung};
use cairn_castore::{B3Digest, BlobReader, BlobService, BlobWriter, ChunkMeta, Error};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::layout::{Layout, CHUNKS, LISTS};

/// How chunks are cut.
const SIZES: ChunkSizes = ChunkSizes::OBJECTS;
/// What a writer is typically handed at once, on top of its window.
const READ_PIECE_HINT: usize = 1024 * 1024;
/// Chunk uploads in flight over the whole service are bounded by their
/// bytes, counted in units of this size (a smaller chunk takes one unit)...
const UPLOAD_UNIT: usize = 256 * 1024;
/// ...of which there are this many: 16 MiB held for uploading at most,
/// which is also up to 64 small objects in flight, enough to keep a
/// bucket busy with small files.
const UPLOAD_UNITS: usize = 64;
/// Object requests in flight for one batch read or existence check.
const READS_IN_FLIGHT: usize = 32;
/// Deletes one garbage collection keeps in flight.
const DELETES_IN_FLIGHT: usize = 32;
/// The largest chunk any version of this layout has written (a bound for
/// decompression, so a hostile object cannot inflate without limit).
const LARGEST_CHUNK: usize = if SIZES.max > chunker::MAX_CHUNK {
    SIZES.max
} else {
    chunker::MAX_CHUNK
};
/// A chunk already in the bucket is uploaded again (refreshing its age)
/// when it is older than this, so that garbage collection, which spares
/// objects younger than its grace period (60 minutes by default), cannot
/// delete a chunk an import is about to refer to.
const REFRESH_AFTER: Duration = Duration::from_secs(10 * 60);
/// Format byte of a chunk object: the bytes as they are.
const RAW: u8 = 0;
/// Format byte of a chunk object: zstd-compressed.
const ZSTD: u8 = 1;

/// Storage errors of the bucket, naming the key.
pub(crate) fn storage(key: &Path, e: impl std::fmt::Display) -> Error {
    Error::Storage(format!("object {key}: {e}"))
}

/// Whether an error means "no such object".
pub(crate) fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

/// The object at `key`, or `None` if there is none.
pub(crate) async fn get_opt(store: &dyn ObjectStore, key: &Path) -> Result<Option<Bytes>, Error> {
    match store.get(key).await {
        Ok(got) => got.bytes().await.map(Some).map_err(|e| storage(key, e)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(storage(key, e)),
    }
}

/// Deletes the object at `key`; one already gone is no error.
pub(crate) async fn delete(store: &dyn ObjectStore, key: &Path) -> Result<(), Error> {
    match store.delete(key).await {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(storage(key, e)),
    }
}

/// What [`delete_unless_refreshed`] kept after all.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Spared {
    pub objects: u64,
    pub bytes: u64,
}

/// Deletes the objects at `doomed` (key and size), `window` requests at a
/// time, except those written again since they were judged garbage.
///
/// A collection judges by a listing that may be minutes old by the time
/// it deletes, and meanwhile another front end may have rewritten an old
/// object to refer to it (uploads refresh objects older than
/// [`REFRESH_AFTER`]). So each object's age is asked again right before
/// its delete, and one `keep` now keeps for its age (the same fixed
/// instant the listing was judged by, so a long collection does not
/// shrink the protection) is spared. What is left is the moment between
/// that question and the delete, not the whole run.
pub(crate) async fn delete_unless_refreshed(
    store: &Arc<dyn ObjectStore>,
    doomed: Vec<(Path, u64)>,
    keep: KeepYoung,
    window: usize,
) -> Result<Spared, Error> {
    futures::stream::iter(doomed)
        .map(|(key, size)| {
            let store = store.clone();
            async move {
                match store.head(&key).await {
                    Ok(meta) if keep.keeps(meta.last_modified.into()) => Ok(Some(size)),
                    Ok(_) => delete(store.as_ref(), &key).await.map(|()| None),
                    // Gone already (another collection): nothing to do.
                    Err(e) if is_not_found(&e) => Ok(None),
                    Err(e) => Err(storage(&key, e)),
                }
            }
        })
        .buffer_unordered(window)
        .try_fold(Spared::default(), |mut spared, kept| async move {
            if let Some(size) = kept {
                spared.objects += 1;
                spared.bytes += size;
            }
            Ok(spared)
        })
        .await
}

/// Moves what a collection spared at the last moment from `deleted` to
/// `young` in its report.
pub(crate) fn account_spared(report: &mut GcReport, spared: Spared) {
    if spared.objects > 0 {
        tracing::info!(
            objects = spared.objects,
            "kept objects written again while the collection ran"
        );
    }
    report.deleted -= spared.objects;
    report.deleted_bytes -= spared.bytes;
    report.young += spared.objects;
}

/// Whether an object exists at `key`.
pub(crate) async fn exists(store: &dyn ObjectStore, key: &Path) -> Result<bool, Error> {
    match store.head(key).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(storage(key, e)),
    }
}

/// Of `digests`, in order, those `test` answers false for; up to
/// [`READS_IN_FLIGHT`] asked at once.
async fn not_passing<F, Fut>(digests: &[B3Digest], test: F) -> Result<Vec<B3Digest>, Error>
where
    F: Fn(B3Digest) -> Fut,
    Fut: std::future::Future<Output = Result<bool, Error>>,
{
    let answers: Vec<(B3Digest, bool)> = futures::stream::iter(digests.iter().copied())
        .map(|d| {
            let answer = test(d);
            async move { Ok::<_, Error>((d, answer.await?)) }
        })
        .buffered(READS_IN_FLIGHT)
        .try_collect()
        .await?;
    Ok(answers
        .into_iter()
        .filter(|(_, passed)| !passed)
        .map(|(d, _)| d)
        .collect())
}

/// Blobs in an object store.
#[derive(Clone)]
pub struct ObjectBlobService {
    store: Arc<dyn ObjectStore>,
    layout: Layout,
    zstd: bool,
    /// Permits for chunk uploads ([`UPLOAD_UNIT`]s), shared by every
    /// writer of the service.
    uploads: Arc<Semaphore>,
}

impl ObjectBlobService {
    /// Blobs in `store` under `layout`; with `zstd`, chunks are stored
    /// compressed (readers accept both either way).
    pub fn new(store: Arc<dyn ObjectStore>, layout: Layout, zstd: bool) -> Self {
        ObjectBlobService {
            store,
            layout,
            zstd,
            uploads: Arc::new(Semaphore::new(UPLOAD_UNITS)),
        }
    }

    /// A blob's whole contents, verified, or `None` if the bucket lacks it.
    async fn read_whole(&self, digest: &B3Digest) -> Result<Option<Bytes>, Error> {
        if let Some(data) = self.chunk(digest).await? {
            return Ok(Some(data));
        }
        let Some(list) = self.list(digest).await? else {
            return Ok(None);
        };
        let size: u64 = list.iter().map(|c| c.size).sum();
        let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        let source = BucketChunks {
            service: self.clone(),
        };
        let mut reader = ChunkedReader::new(source, *digest, list);
        tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut data)
            .await
            .map_err(Error::from_io)?;
        Ok(Some(Bytes::from(data)))
    }

    /// A chunk's bytes, verified, or `None` if the bucket lacks it.
    async fn chunk(&self, digest: &B3Digest) -> Result<Option<Bytes>, Error> {
        let key = self.layout.chunk(digest);
        match get_opt(self.store.as_ref(), &key).await? {
            Some(raw) => decode_chunk(&key, digest, raw).map(Some),
            None => Ok(None),
        }
    }

    /// A chunked blob's list, or `None` if it has none.
    async fn list(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        let key = self.layout.list(digest);
        match get_opt(self.store.as_ref(), &key).await? {
            Some(raw) => decode_list(&key, digest, &raw).map(Some),
            None => Ok(None),
        }
    }

    /// Units of the upload budget a chunk of `len` bytes takes.
    fn upload_units(len: usize) -> u32 {
        u32::try_from(len.div_ceil(UPLOAD_UNIT).clamp(1, UPLOAD_UNITS)).unwrap_or(1)
    }

    /// Stores a blob held in memory: its chunks, then (for several) its
    /// list, each chunk upload holding its share of the upload budget.
    async fn put_bytes(&self, data: Bytes) -> Result<B3Digest, Error> {
        let digest = B3Digest::of(&data);
        let mut chunks = Vec::new();
        let mut start = 0;
        for len in SIZES.cut(&data, true) {
            chunks.push((B3Digest::of(&data[start..start + len]), start..start + len));
            start += len;
        }
        if chunks.len() <= 1 {
            // One chunk (or the empty blob): the chunk is the blob.
            let _permit = self.upload_permit(data.len()).await?;
            self.put_chunk(digest, data).await?;
            return Ok(digest);
        }
        futures::stream::iter(chunks.iter().cloned())
            .map(|(d, range)| {
                let piece = data.slice(range);
                async move {
                    let _permit = self.upload_permit(piece.len()).await?;
                    self.put_chunk(d, piece).await
                }
            })
            .buffer_unordered(UPLOAD_UNITS)
            .try_collect::<()>()
            .await?;
        let list: Vec<ChunkMeta> = chunks
            .into_iter()
            .map(|(digest, range)| ChunkMeta {
                digest,
                size: (range.end - range.start) as u64,
            })
            .collect();
        let key = self.layout.list(&digest);
        self.store
            .put(&key, PutPayload::from(ChunkMeta::encode_list(&list)))
            .await
            .map_err(|e| storage(&key, e))?;
        Ok(digest)
    }

    /// Waits for room in the upload budget for a chunk of `len` bytes.
    async fn upload_permit(&self, len: usize) -> Result<OwnedSemaphorePermit, Error> {
        Arc::clone(&self.uploads)
            .acquire_many_owned(Self::upload_units(len))
            .await
            .map_err(|_| Error::Storage("the upload limiter was closed".into()))
    }

    /// Whether the object at `key` exists and is younger than
    /// [`REFRESH_AFTER`]: safe to refer to without uploading it again.
    async fn fresh(&self, key: &Path) -> Result<bool, Error> {
        match self.store.head(key).await {
            Ok(meta) => Ok(chrono_age(meta.last_modified) < REFRESH_AFTER),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(storage(key, e)),
        }
    }

    /// Uploads one chunk unless the bucket has it (and recently).
    async fn put_chunk(&self, digest: B3Digest, data: Bytes) -> Result<(), Error> {
        let key = self.layout.chunk(&digest);
        if self.fresh(&key).await? {
            return Ok(());
        }
        let encoded = encode_chunk(data, self.zstd).map_err(|e| storage(&key, e))?;
        self.store
            .put(&key, encoded)
            .await
            .map_err(|e| storage(&key, e))?;
        Ok(())
    }

    /// Every object of `kind` with its digest, size and age.
    async fn objects(&self, kind: &str) -> Result<Vec<(Path, B3Digest, u64, Written)>, Error> {
        let prefix = self.layout.kind(kind);
        self.store
            .list(Some(&prefix))
            .map_err(|e| storage(&prefix, e))
            .try_filter_map(|meta| async move {
                Ok(Layout::digest_of(&meta.location)
                    .map(|d| (meta.location, d, meta.size, meta.last_modified)))
            })
            .try_collect()
            .await
    }
}

/// When an object was last written, by the bucket's clock.
pub(crate) type Written = chrono::DateTime<chrono::Utc>;

/// How long ago `t` was (zero if in the future: clocks differ).
pub(crate) fn chrono_age(t: chrono::DateTime<chrono::Utc>) -> Duration {
    (chrono::Utc::now() - t).to_std().unwrap_or_default()
}

/// A chunk object's body: the format byte, then the bytes (raw ones not
/// copied).
fn encode_chunk(data: Bytes, zstd: bool) -> std::io::Result<PutPayload> {
    let (tag, body) = if zstd {
        (ZSTD, Bytes::from(zstd::bulk::compress(&data, 3)?))
    } else {
        (RAW, data)
    };
    Ok(PutPayload::from_iter([
        Bytes::copy_from_slice(&[tag]),
        body,
    ]))
}

/// A chunk object's bytes, checked against the digest it is stored under.
fn decode_chunk(key: &Path, digest: &B3Digest, raw: Bytes) -> Result<Bytes, Error> {
    let corrupt = |detail: String| Error::Integrity {
        digest: *digest,
        detail: format!("object {key}: {detail}"),
    };
    let data = match raw.first() {
        Some(&RAW) => raw.slice(1..),
        Some(&ZSTD) => Bytes::from(
            zstd::bulk::decompress(&raw[1..], LARGEST_CHUNK)
                .map_err(|e| corrupt(format!("zstd: {e}")))?,
        ),
        Some(tag) => return Err(corrupt(format!("unknown format byte {tag}"))),
        None => return Err(corrupt("empty object".into())),
    };
    let actual = B3Digest::of(&data);
    if actual != *digest {
        return Err(corrupt(format!("contents hash to {actual}")));
    }
    Ok(data)
}

/// A chunk list object. Its entries are checked when the blob is read
/// (each chunk's hash, and the whole blob's at the end).
fn decode_list(key: &Path, digest: &B3Digest, raw: &[u8]) -> Result<Vec<ChunkMeta>, Error> {
    ChunkMeta::decode_list(raw)
        .filter(|list| !list.is_empty())
        .ok_or_else(|| Error::Integrity {
            digest: *digest,
            detail: format!("object {key}: a chunk list of {} bytes", raw.len()),
        })
}

/// Chunks of one blob, for [`ChunkedReader`].
struct BucketChunks {
    service: ObjectBlobService,
}

impl ChunkSource for BucketChunks {
    fn load(&self, chunk: ChunkMeta) -> futures::future::BoxFuture<'static, Result<Bytes, Error>> {
        let service = self.service.clone();
        start_now(async move {
            service.chunk(&chunk.digest).await?.ok_or(Error::NotFound {
                what: "chunk",
                digest: chunk.digest,
            })
        })
    }
}

#[async_trait]
impl BlobService for ObjectBlobService {
    async fn has(&self, digest: &B3Digest) -> Result<bool, Error> {
        Ok(
            exists(self.store.as_ref(), &self.layout.chunk(digest)).await?
                || exists(self.store.as_ref(), &self.layout.list(digest)).await?,
        )
    }

    async fn missing(&self, digests: &[B3Digest]) -> Result<Vec<B3Digest>, Error> {
        not_passing(digests, |d| async move { self.has(&d).await }).await
    }

    async fn to_send(&self, digests: &[B3Digest]) -> Result<Vec<B3Digest>, Error> {
        // As `put_chunk` does for a chunk: an object older than
        // `REFRESH_AFTER` is sent again, so a young directory never names
        // a blob a collection may be about to take. A fresh chunk list
        // will do: its writer refreshed every chunk just before it.
        not_passing(digests, |d| async move {
            Ok(self.fresh(&self.layout.chunk(&d)).await?
                || self.fresh(&self.layout.list(&d)).await?)
        })
        .await
    }

    async fn open_read(&self, digest: &B3Digest) -> Result<Option<Box<dyn BlobReader>>, Error> {
        // Most blobs are small files, one chunk each: one request.
        if let Some(data) = self.chunk(digest).await? {
            return Ok(Some(Box::new(Cursor::new(data))));
        }
        Ok(self.list(digest).await?.map(|list| {
            let source = BucketChunks {
                service: self.clone(),
            };
            Box::new(ChunkedReader::new(source, *digest, list)) as Box<dyn BlobReader>
        }))
    }

    async fn put_many(&self, blobs: Vec<Bytes>) -> Result<Vec<B3Digest>, Error> {
        // Each blob's uploads wait for the shared budget, so the whole
        // batch can be started at once.
        futures::stream::iter(blobs)
            .map(|data| self.put_bytes(data))
            .buffered(UPLOAD_UNITS)
            .try_collect()
            .await
    }

    async fn read_many(&self, wanted: &[(B3Digest, u64)]) -> Result<Vec<Option<Bytes>>, Error> {
        // One round trip each, many at once: a batch costs about what its
        // slowest object does, not the sum.
        let digests: Vec<B3Digest> = wanted.iter().map(|(d, _)| *d).collect();
        futures::stream::iter(digests)
            .map(|d| async move { self.read_whole(&d).await })
            .buffered(READS_IN_FLIGHT)
            .try_collect()
            .await
    }

    async fn open_write(&self) -> Box<dyn BlobWriter> {
        Box::new(ObjectBlobWriter {
            service: self.clone(),
            pending: BytesMut::new(),
            hasher: blake3::Hasher::new(),
            chunks: Vec::new(),
            uploads: JoinSet::new(),
        })
    }

    fn writer_buffer(&self) -> usize {
        // `pending` reaches a chunk's maximum before anything is cut.
        SIZES.max + READ_PIECE_HINT
    }

    async fn chunks(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        // Asked about large blobs, which may be either: both at once.
        let chunk_key = self.layout.chunk(digest);
        let (list, single) =
            futures::try_join!(self.list(digest), exists(self.store.as_ref(), &chunk_key))?;
        Ok(list.or_else(|| single.then(Vec::new)))
    }

    async fn collect_garbage(
        &self,
        live: &HashSet<B3Digest>,
        keep: KeepYoung,
        dry_run: bool,
    ) -> Result<GcReport, Error> {
        let lists = self.objects(LISTS).await?;
        let chunks = self.objects(CHUNKS).await?;
        // Live chunks: live blobs of one chunk, and the chunks of live
        // lists (fetched as reads are: many at once, not one by one).
        let mut live_chunks: HashSet<B3Digest> = live.clone();
        let wanted: Vec<B3Digest> = lists
            .iter()
            .filter(|(_, d, _, _)| live.contains(d))
            .map(|(_, d, _, _)| *d)
            .collect();
        let mut live_lists = futures::stream::iter(wanted)
            .map(|d| {
                let this = self.clone();
                async move { this.list(&d).await }
            })
            .buffer_unordered(READS_IN_FLIGHT);
        while let Some(list) = live_lists.try_next().await? {
            live_chunks.extend(list.iter().flatten().map(|c| c.digest));
        }
        drop(live_lists);
        let mut report = GcReport::default();
        let mut judge = |objects: Vec<(Path, B3Digest, u64, Written)>,
                         is_live: &dyn Fn(&B3Digest) -> bool| {
            let mut doomed = Vec::new();
            for (key, digest, size, written) in objects {
                if is_live(&digest) {
                    report.live += 1;
                } else if keep.keeps(written.into()) {
                    report.young += 1;
                } else {
                    report.deleted += 1;
                    report.deleted_bytes += size;
                    doomed.push((key, size));
                }
            }
            doomed
        };
        let doomed_lists = judge(lists, &|d| live.contains(d));
        let doomed_chunks = judge(chunks, &|d| live_chunks.contains(d));
        if !dry_run {
            // Lists first, all of them: a blob disappears before any of
            // its chunks. Within each kind, many deletes at once.
            let lists =
                delete_unless_refreshed(&self.store, doomed_lists, keep, DELETES_IN_FLIGHT).await?;
            account_spared(&mut report, lists);
            let chunks =
                delete_unless_refreshed(&self.store, doomed_chunks, keep, DELETES_IN_FLIGHT)
                    .await?;
            account_spared(&mut report, chunks);
        }
        Ok(report)
    }

    async fn verify_all(&self) -> Result<VerifyReport, Error> {
        let mut report = VerifyReport::default();
        for (_, digest, _, _) in self.objects(CHUNKS).await? {
            report.checked += 1;
            if let Err(e) = self.chunk(&digest).await {
                report.problems.push(format!("chunk {digest}: {e}"));
            }
        }
        for (_, digest, _, _) in self.objects(LISTS).await? {
            report.checked += 1;
            let whole = async {
                let mut r = self.open_read(&digest).await?.ok_or(Error::NotFound {
                    what: "blob",
                    digest,
                })?;
                tokio::io::copy(&mut r, &mut tokio::io::sink()).await?;
                Ok::<(), Error>(())
            };
            if let Err(e) = whole.await {
                report.problems.push(format!("blob {digest}: {e}"));
            }
        }
        Ok(report)
    }
}

/// A blob being written: chunks are cut and uploaded as data arrives.
struct ObjectBlobWriter {
    service: ObjectBlobService,
    /// Bytes not yet cut into a final chunk.
    pending: BytesMut,
    hasher: blake3::Hasher,
    chunks: Vec<ChunkMeta>,
    /// Uploads in flight, each holding its share of the service's upload
    /// budget; a writer dropped unclosed aborts them, and no list object
    /// is written, so no blob appears.
    uploads: JoinSet<Result<(), Error>>,
}

impl ObjectBlobWriter {
    /// Cuts what is final in `pending` and starts uploading it.
    async fn cut(&mut self, eof: bool) -> Result<(), Error> {
        for len in SIZES.cut(&self.pending, eof) {
            // Copied out whole: a slice of `pending` would keep its entire
            // allocation alive until the upload is done.
            let data = Bytes::copy_from_slice(&self.pending[..len]);
            bytes::Buf::advance(&mut self.pending, len);
            let digest = B3Digest::of(&data);
            self.chunks.push(ChunkMeta {
                digest,
                size: len as u64,
            });
            let permit = self.permit(len).await?;
            let service = self.service.clone();
            self.uploads.spawn(async move {
                let _permit = permit;
                service.put_chunk(digest, data).await
            });
        }
        Ok(())
    }

    /// Room in the service's upload budget for one more chunk of `len`
    /// bytes; failures of this writer's finished uploads surface here.
    async fn permit(&mut self, len: usize) -> Result<OwnedSemaphorePermit, Error> {
        loop {
            while let Some(done) = self.uploads.try_join_next() {
                joined(done)?;
            }
            if self.uploads.is_empty() {
                // Others hold the budget: wait for theirs to finish.
                return self.service.upload_permit(len).await;
            }
            // Wait for our own uploads too, so that an error is not left
            // waiting behind the budget.
            tokio::select! {
                permit = self.service.upload_permit(len) => return permit,
                Some(done) = self.uploads.join_next() => joined(done)?,
            }
        }
    }
}

/// The outcome of one joined upload task.
fn joined(done: Result<Result<(), Error>, tokio::task::JoinError>) -> Result<(), Error> {
    done.map_err(|e| Error::Storage(format!("a chunk upload failed: {e}")))?
}

#[async_trait]
impl BlobWriter for ObjectBlobWriter {
    async fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        self.hasher.update(data);
        let needed = self.pending.len() + data.len();
        if needed > self.pending.capacity() {
            // Grown to what is needed, not doubled: many writers are open
            // at once, and each holds up to `max` bytes. A blob written in
            // one piece gets just its size.
            let capacity = if self.pending.is_empty() {
                needed
            } else {
                needed.max(SIZES.max + READ_PIECE_HINT)
            };
            let mut grown = BytesMut::with_capacity(capacity);
            grown.extend_from_slice(&self.pending);
            self.pending = grown;
        }
        self.pending.extend_from_slice(data);
        if self.pending.len() >= SIZES.max {
            self.cut(false).await?;
        }
        Ok(())
    }

    async fn close(mut self: Box<Self>) -> Result<B3Digest, Error> {
        self.cut(true).await?;
        if self.chunks.is_empty() {
            // The empty blob is one empty chunk.
            let empty = B3Digest::of(b"");
            self.chunks.push(ChunkMeta {
                digest: empty,
                size: 0,
            });
            let _permit = self.service.upload_permit(0).await?;
            self.service.put_chunk(empty, Bytes::new()).await?;
        }
        while let Some(done) = self.uploads.join_next().await {
            joined(done)?;
        }
        let digest = B3Digest::from(self.hasher.finalize());
        if self.chunks.len() > 1 {
            let key = self.service.layout.list(&digest);
            self.service
                .store
                .put(&key, PutPayload::from(ChunkMeta::encode_list(&self.chunks)))
                .await
                .map_err(|e| storage(&key, e))?;
        }
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::SystemTime;

    use object_store::local::LocalFileSystem;

    use super::*;

    /// A collection's listing goes stale while it runs: an object another
    /// front end wrote again after the listing judged it garbage must
    /// survive the delete; the ones nobody touched go.
    #[tokio::test]
    async fn objects_written_again_since_the_listing_are_spared() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let keys: Vec<Path> = ["a/old", "b/old", "c/rewritten"]
            .iter()
            .map(|k| Path::from(*k))
            .collect();
        for key in &keys {
            store
                .put(key, PutPayload::from_static(b"bytes"))
                .await
                .unwrap();
            // As the listing saw them: two hours old.
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(dir.path().join(key.as_ref()))
                .unwrap();
            file.set_modified(SystemTime::now() - Duration::from_secs(7200))
                .unwrap();
        }
        // Meanwhile, an upload refreshes one of them.
        store
            .put(&keys[2], PutPayload::from_static(b"bytes"))
            .await
            .unwrap();

        let doomed = keys.iter().map(|k| (k.clone(), 5)).collect();
        let keep = KeepYoung::within(Duration::from_secs(3600), SystemTime::now());
        let spared = delete_unless_refreshed(&store, doomed, keep, 4)
            .await
            .unwrap();

        assert_eq!(
            spared,
            Spared {
                objects: 1,
                bytes: 5
            }
        );
        assert!(!exists(store.as_ref(), &keys[0]).await.unwrap());
        assert!(!exists(store.as_ref(), &keys[1]).await.unwrap());
        assert!(exists(store.as_ref(), &keys[2]).await.unwrap());

        // With no grace at all, even an object written a moment ago goes.
        let spared =
            delete_unless_refreshed(&store, vec![(keys[2].clone(), 5)], KeepYoung::NOTHING, 4)
                .await
                .unwrap();
        assert_eq!(spared, Spared::default());
        assert!(!exists(store.as_ref(), &keys[2]).await.unwrap());

        // A key some other collection deleted first is no error.
        let again = vec![(keys[0].clone(), 5)];
        let spared = delete_unless_refreshed(&store, again, keep, 4)
            .await
            .unwrap();
        assert_eq!(spared, Spared::default());

        let mut report = GcReport {
            live: 0,
            young: 0,
            deleted: 3,
            deleted_bytes: 15,
        };
        account_spared(
            &mut report,
            Spared {
                objects: 1,
                bytes: 5,
            },
        );
        assert_eq!(
            (report.young, report.deleted, report.deleted_bytes),
            (1, 2, 10)
        );
    }
}
