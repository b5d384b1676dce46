//! [`ObjectBlobService`]: blobs as content-defined chunks, one object
//! each, and one chunk-list object per blob of several chunks (see
//! [`crate::layout`]).
//!
//! Writes upload each chunk as soon as it is cut, a bounded window of
//! uploads at a time, skipping chunks the bucket already has (recently);
//! the chunk list goes last, so a blob is visible only once every chunk
//! is. Reads fetch chunk by chunk, each re-hashed before any of it is
//! returned, and a sequential reader loads ahead.

use std::collections::HashSet;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use cairn_castore::blobservice::chunked::{start_now, ChunkSource, ChunkedReader};
use cairn_castore::blobservice::{chunker, VerifyReport};
use cairn_castore::gc::GcReport;
use cairn_castore::{B3Digest, BlobReader, BlobService, BlobWriter, ChunkMeta, Error};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio::task::JoinSet;

use crate::layout::{Layout, CHUNKS, LISTS};

/// Chunk uploads one writer keeps in flight.
const UPLOAD_WINDOW: usize = 8;
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

/// Whether an object exists at `key`.
pub(crate) async fn exists(store: &dyn ObjectStore, key: &Path) -> Result<bool, Error> {
    match store.head(key).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(storage(key, e)),
    }
}

/// Blobs in an object store.
#[derive(Clone)]
pub struct ObjectBlobService {
    store: Arc<dyn ObjectStore>,
    layout: Layout,
    zstd: bool,
}

impl ObjectBlobService {
    /// Blobs in `store` under `layout`; with `zstd`, chunks are stored
    /// compressed (readers accept both either way).
    pub fn new(store: Arc<dyn ObjectStore>, layout: Layout, zstd: bool) -> Self {
        ObjectBlobService {
            store,
            layout,
            zstd,
        }
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

    /// Uploads one chunk unless the bucket has it (and recently).
    async fn put_chunk(&self, digest: B3Digest, data: Bytes) -> Result<(), Error> {
        let key = self.layout.chunk(&digest);
        match self.store.head(&key).await {
            Ok(meta) => {
                let age = chrono_age(meta.last_modified);
                if age < REFRESH_AFTER {
                    return Ok(());
                }
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(storage(&key, e)),
        }
        let encoded = encode_chunk(&data, self.zstd).map_err(|e| storage(&key, e))?;
        self.store
            .put(&key, PutPayload::from(encoded))
            .await
            .map_err(|e| storage(&key, e))?;
        Ok(())
    }

    /// Every object of `kind` with its digest, size and age.
    async fn objects(&self, kind: &str) -> Result<Vec<(Path, B3Digest, u64, Duration)>, Error> {
        let prefix = self.layout.kind(kind);
        self.store
            .list(Some(&prefix))
            .map_err(|e| storage(&prefix, e))
            .try_filter_map(|meta| async move {
                Ok(Layout::digest_of(&meta.location).map(|d| {
                    let age = chrono_age(meta.last_modified);
                    (meta.location, d, meta.size, age)
                }))
            })
            .try_collect()
            .await
    }
}

/// How long ago `t` was (zero if in the future: clocks differ).
fn chrono_age(t: chrono::DateTime<chrono::Utc>) -> Duration {
    (chrono::Utc::now() - t).to_std().unwrap_or_default()
}

fn encode_chunk(data: &[u8], zstd: bool) -> std::io::Result<Bytes> {
    let mut out = BytesMut::with_capacity(data.len() + 1);
    if zstd {
        out.extend_from_slice(&[ZSTD]);
        out.extend_from_slice(&zstd::bulk::compress(data, 3)?);
    } else {
        out.extend_from_slice(&[RAW]);
        out.extend_from_slice(data);
    }
    Ok(out.freeze())
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
            zstd::bulk::decompress(&raw[1..], chunker::MAX_CHUNK)
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
            exists(self.store.as_ref(), &self.layout.list(digest)).await?
                || exists(self.store.as_ref(), &self.layout.chunk(digest)).await?,
        )
    }

    async fn missing(&self, digests: &[B3Digest]) -> Result<Vec<B3Digest>, Error> {
        let found: Vec<(B3Digest, bool)> = futures::stream::iter(digests.iter().copied())
            .map(|d| async move { Ok::<_, Error>((d, self.has(&d).await?)) })
            .buffered(UPLOAD_WINDOW)
            .try_collect()
            .await?;
        Ok(found
            .into_iter()
            .filter(|(_, has)| !has)
            .map(|(d, _)| d)
            .collect())
    }

    async fn open_read(&self, digest: &B3Digest) -> Result<Option<Box<dyn BlobReader>>, Error> {
        if let Some(list) = self.list(digest).await? {
            let source = BucketChunks {
                service: self.clone(),
            };
            return Ok(Some(Box::new(ChunkedReader::new(source, *digest, list))));
        }
        Ok(self
            .chunk(digest)
            .await?
            .map(|data| Box::new(Cursor::new(data)) as Box<dyn BlobReader>))
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

    async fn chunks(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        if let Some(list) = self.list(digest).await? {
            return Ok(Some(list));
        }
        let single = exists(self.store.as_ref(), &self.layout.chunk(digest)).await?;
        Ok(single.then(Vec::new))
    }

    async fn collect_garbage(
        &self,
        live: &HashSet<B3Digest>,
        grace: Duration,
        dry_run: bool,
    ) -> Result<GcReport, Error> {
        let lists = self.objects(LISTS).await?;
        let chunks = self.objects(CHUNKS).await?;
        // Live chunks: live blobs of one chunk, and the chunks of live lists.
        let mut live_chunks: HashSet<B3Digest> = live.clone();
        for (_, digest, _, _) in lists.iter().filter(|(_, d, _, _)| live.contains(d)) {
            if let Some(list) = self.list(digest).await? {
                live_chunks.extend(list.iter().map(|c| c.digest));
            }
        }
        let mut report = GcReport::default();
        let mut doomed = Vec::new();
        let judged = lists
            .into_iter()
            .map(|(key, d, size, age)| (key, live.contains(&d), size, age))
            .chain(
                chunks
                    .into_iter()
                    .map(|(key, d, size, age)| (key, live_chunks.contains(&d), size, age)),
            );
        for (key, is_live, size, age) in judged {
            if is_live {
                report.live += 1;
            } else if age < grace {
                report.young += 1;
            } else {
                report.deleted += 1;
                report.deleted_bytes += size;
                doomed.push(key);
            }
        }
        if !dry_run {
            // Lists first: a blob disappears before any of its chunks.
            for key in doomed {
                delete(self.store.as_ref(), &key).await?;
            }
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
    /// Uploads in flight; a writer dropped unclosed aborts them, and no
    /// list object is written, so no blob appears.
    uploads: JoinSet<Result<(), Error>>,
}

impl ObjectBlobWriter {
    /// Cuts what is final in `pending` and starts uploading it.
    async fn cut(&mut self, eof: bool) -> Result<(), Error> {
        for len in chunker::cut(&self.pending, eof) {
            let data = self.pending.split_to(len).freeze();
            let digest = B3Digest::of(&data);
            self.chunks.push(ChunkMeta {
                digest,
                size: len as u64,
            });
            while self.uploads.len() >= UPLOAD_WINDOW {
                self.join_one().await?;
            }
            let service = self.service.clone();
            self.uploads
                .spawn(async move { service.put_chunk(digest, data).await });
        }
        Ok(())
    }

    async fn join_one(&mut self) -> Result<(), Error> {
        match self.uploads.join_next().await {
            Some(Ok(r)) => r,
            Some(Err(e)) => Err(Error::Storage(format!("a chunk upload failed: {e}"))),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl BlobWriter for ObjectBlobWriter {
    async fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        self.hasher.update(data);
        self.pending.extend_from_slice(data);
        if self.pending.len() >= 2 * chunker::MAX_CHUNK {
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
            self.service.put_chunk(empty, Bytes::new()).await?;
        }
        while !self.uploads.is_empty() {
            self.join_one().await?;
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
