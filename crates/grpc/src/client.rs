//! Backends that are remote daemons: the three service traits over gRPC.
//!
//! Nothing a peer sends is trusted: a blob is returned only once its bytes
//! hash to the digest asked for (each chunk to its own, when the peer lists
//! chunks), a directory only once it decodes, validates and hashes to its
//! digest, a closure only in an order that could have come from the
//! directory asked for, a PathInfo only once it validates and names the
//! path asked for. A peer that fails this is named in the error.

use std::collections::HashSet;
use std::io;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use cairn_castore::blobservice::chunked::{start_now, ChunkSource, ChunkedReader};
use cairn_castore::blobservice::{BlobReader, BlobWriter, ChunkMeta};
use cairn_castore::directoryservice::{ClosureValidator, DirectoryPutter};
use cairn_castore::{
    proto as cproto, B3Digest, BlobService, Directory, DirectoryService, Error, SizeRule,
};
use cairn_store::{proto as sproto, PathInfo, PathInfoService};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use tonic::{Code, Status};

use crate::generated::batch::batch_service_client::BatchServiceClient;
use crate::generated::batch::{Digests, WholeBlob};
use crate::generated::castore::blob_service_client::BlobServiceClient;
use crate::generated::castore::directory_service_client::DirectoryServiceClient;
use crate::generated::store::path_info_service_client::PathInfoServiceClient;
use crate::transport::{ClientChannel, Connection};
use crate::{BLOB_PIECE, MAX_MESSAGE};

/// A remote failure as a castore error naming the peer.
fn remote(peer: &str, what: &str, s: &Status) -> Error {
    Error::Storage(format!("{peer}: {what}: {} ({:?})", s.message(), s.code()))
}

/// A peer's answer that does not hold up.
fn lied(peer: &str, digest: B3Digest, detail: String) -> Error {
    Error::Integrity {
        digest,
        detail: format!("from {peer}: {detail}"),
    }
}

/// The channel of a connection, or an error naming the peer.
fn channel_of(conn: &Connection) -> Result<ClientChannel, Error> {
    conn.channel()
        .map_err(|e| Error::Storage(format!("{}: {e}", conn.location())))
}

/// A blob service on a remote daemon.
#[derive(Clone)]
pub struct GrpcBlobService {
    peer: Arc<str>,
    conn: Arc<Connection>,
}

impl GrpcBlobService {
    /// A client of the daemon at `conn`.
    pub fn new(conn: Arc<Connection>) -> Self {
        GrpcBlobService {
            peer: conn.location().to_string().into(),
            conn,
        }
    }

    fn client(&self) -> Result<BlobServiceClient<ClientChannel>, Error> {
        Ok(BlobServiceClient::new(channel_of(&self.conn)?)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }

    fn batch(&self) -> Result<BatchServiceClient<ClientChannel>, Error> {
        Ok(BatchServiceClient::new(channel_of(&self.conn)?)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }

    /// `Stat`: `None` if the peer does not have the blob.
    async fn stat(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        let req = cproto::StatBlobRequest {
            digest: (*digest).into(),
            send_chunks: true,
            send_bao: false,
        };
        match self.client()?.stat(req).await {
            Ok(resp) => {
                let mut chunks = Vec::new();
                for c in resp.into_inner().chunks {
                    let d = B3Digest::try_from(&c.digest[..]).map_err(|_| {
                        lied(
                            &self.peer,
                            *digest,
                            "a chunk digest of the wrong length".into(),
                        )
                    })?;
                    chunks.push(ChunkMeta {
                        digest: d,
                        size: c.size,
                    });
                }
                Ok(Some(chunks))
            }
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(remote(&self.peer, "stat", &s)),
        }
    }

    /// `Read` of one blob, all of it, checked against `digest`; `None` if
    /// the peer does not have it. At most `limit` bytes are accepted.
    async fn read_verified(&self, digest: &B3Digest, limit: u64) -> Result<Option<Bytes>, Error> {
        let req = cproto::ReadBlobRequest {
            digest: (*digest).into(),
        };
        let mut stream = match self.client()?.read(req).await {
            Ok(resp) => resp.into_inner(),
            Err(s) if s.code() == Code::NotFound => return Ok(None),
            Err(s) => return Err(remote(&self.peer, "read", &s)),
        };
        let mut data = BytesMut::new();
        let mut hasher = blake3::Hasher::new();
        loop {
            match stream.message().await {
                Ok(Some(piece)) => {
                    if data.len() as u64 + piece.data.len() as u64 > limit {
                        return Err(lied(
                            &self.peer,
                            *digest,
                            format!("sent more than the {limit} bytes expected"),
                        ));
                    }
                    hasher.update(&piece.data);
                    data.extend_from_slice(&piece.data);
                }
                Ok(None) => break,
                Err(s) if s.code() == Code::NotFound => return Ok(None),
                Err(s) => return Err(remote(&self.peer, "read", &s)),
            }
        }
        let actual = B3Digest::from(hasher.finalize());
        if actual != *digest {
            return Err(lied(
                &self.peer,
                *digest,
                format!("sent bytes that hash to {actual}"),
            ));
        }
        Ok(Some(data.freeze()))
    }

    /// `Read` of a whole blob, verified before anything is returned: kept
    /// in memory up to [`SPILL_AFTER`] bytes, in an unnamed temporary file
    /// beyond, so memory stays bounded whatever the blob's size.
    async fn read_spilling(&self, digest: &B3Digest) -> Result<Option<Box<dyn BlobReader>>, Error> {
        use tokio::io::{AsyncSeekExt, AsyncWriteExt};
        let req = cproto::ReadBlobRequest {
            digest: (*digest).into(),
        };
        let mut stream = match self.client()?.read(req).await {
            Ok(resp) => resp.into_inner(),
            Err(s) if s.code() == Code::NotFound => return Ok(None),
            Err(s) => return Err(remote(&self.peer, "read", &s)),
        };
        let mut data = BytesMut::new();
        let mut spilled: Option<tokio::fs::File> = None;
        let mut hasher = blake3::Hasher::new();
        loop {
            let piece = match stream.message().await {
                Ok(Some(piece)) => piece.data,
                Ok(None) => break,
                Err(s) if s.code() == Code::NotFound => return Ok(None),
                Err(s) => return Err(remote(&self.peer, "read", &s)),
            };
            hasher.update(&piece);
            match spilled.as_mut() {
                Some(file) => file.write_all(&piece).await?,
                None if data.len() + piece.len() > SPILL_AFTER => {
                    let file = tokio::task::spawn_blocking(tempfile::tempfile)
                        .await
                        .map_err(|e| Error::Storage(format!("temporary file: {e}")))??;
                    let mut file = tokio::fs::File::from_std(file);
                    file.write_all(&data).await?;
                    file.write_all(&piece).await?;
                    data = BytesMut::new();
                    spilled = Some(file);
                }
                None => data.extend_from_slice(&piece),
            }
        }
        let actual = B3Digest::from(hasher.finalize());
        if actual != *digest {
            return Err(lied(
                &self.peer,
                *digest,
                format!("sent bytes that hash to {actual}"),
            ));
        }
        Ok(Some(match spilled {
            Some(mut file) => {
                file.flush().await?;
                file.seek(io::SeekFrom::Start(0)).await?;
                Box::new(file)
            }
            None => Box::new(io::Cursor::new(data.freeze())),
        }))
    }
}

impl GrpcBlobService {
    /// The digests of a batch answer, each checked for length.
    fn digests_of(&self, resp: Digests) -> Result<Vec<B3Digest>, Error> {
        resp.digests
            .iter()
            .map(|d| {
                B3Digest::try_from(&d[..]).map_err(|_| {
                    Error::Storage(format!(
                        "{}: a blob digest of the wrong length in a batch answer",
                        self.peer
                    ))
                })
            })
            .collect()
    }

    /// `BlobsToSend` where the peer has it; a peer from before it gets
    /// the `missing` question instead (it then renews nothing by age).
    async fn to_send_part(&self, digests: &[B3Digest]) -> Result<Vec<B3Digest>, Error> {
        let req = Digests {
            digests: digests.iter().map(|d| Bytes::from(*d)).collect(),
        };
        match self.batch()?.blobs_to_send(req).await {
            Ok(resp) => self.digests_of(resp.into_inner()),
            Err(s) if s.code() == Code::Unimplemented => self.missing_part(digests).await,
            Err(s) => Err(remote(&self.peer, "blobs to send", &s)),
        }
    }

    /// One round trip when the peer offers Cairn's batch extension,
    /// one `Stat` each otherwise.
    async fn missing_part(&self, digests: &[B3Digest]) -> Result<Vec<B3Digest>, Error> {
        let req = Digests {
            digests: digests.iter().map(|d| Bytes::from(*d)).collect(),
        };
        match self.batch()?.missing_blobs(req).await {
            Ok(resp) => self.digests_of(resp.into_inner()),
            Err(s) if s.code() == Code::Unimplemented => {
                let mut missing = Vec::new();
                for d in digests {
                    if self.stat(d).await?.is_none() {
                        missing.push(*d);
                    }
                }
                Ok(missing)
            }
            Err(s) => Err(remote(&self.peer, "missing blobs", &s)),
        }
    }
}

/// What `read_many` accepts for a blob asked for without a size.
const UNSIZED_LIMIT: u64 = 64 * 1024 * 1024;

/// Digests per `MissingBlobs` call (the daemon takes up to 100,000).
const MISSING_PER_CALL: usize = 50_000;

/// An unchunked remote blob above this size is verified in a temporary
/// file rather than in memory.
const SPILL_AFTER: usize = 16 * 1024 * 1024;

#[async_trait]
impl BlobService for GrpcBlobService {
    async fn has(&self, digest: &B3Digest) -> Result<bool, Error> {
        Ok(self.stat(digest).await?.is_some())
    }

    /// One round trip when the peer offers Cairn's batch extension,
    /// one `Stat` each otherwise.
    async fn missing(&self, digests: &[B3Digest]) -> Result<Vec<B3Digest>, Error> {
        let mut out = Vec::new();
        // The daemon answers at most 100,000 per question.
        for part in digests.chunks(MISSING_PER_CALL) {
            out.extend(self.missing_part(part).await?);
        }
        Ok(out)
    }

    async fn to_send(&self, digests: &[B3Digest]) -> Result<Vec<B3Digest>, Error> {
        let mut out = Vec::new();
        for part in digests.chunks(MISSING_PER_CALL) {
            out.extend(self.to_send_part(part).await?);
        }
        Ok(out)
    }

    async fn put_many(&self, blobs: Vec<Bytes>) -> Result<Vec<B3Digest>, Error> {
        // Upload only what the peer lacks: one question for the
        // batch instead of one upload per blob.
        let digests: Vec<B3Digest> = blobs.iter().map(|b| B3Digest::of(b)).collect();
        let missing: HashSet<B3Digest> = self.to_send(&digests).await?.into_iter().collect();
        let mut sent = HashSet::new();
        let (expected, uploads): (Vec<B3Digest>, Vec<Bytes>) = digests
            .iter()
            .copied()
            .zip(blobs)
            .filter(|(d, _)| missing.contains(d) && sent.insert(*d))
            .unzip();
        if uploads.is_empty() {
            return Ok(digests);
        }
        // One PutBlobs call for the batch, where the peer has it.
        let messages: Vec<WholeBlob> = uploads
            .iter()
            .map(|data| WholeBlob {
                data: data.clone(),
                absent: false,
            })
            .collect();
        match self
            .batch()?
            .put_blobs(futures::stream::iter(messages))
            .await
        {
            Ok(resp) => {
                let named = resp.into_inner().digests;
                if named.len() != expected.len()
                    || named
                        .iter()
                        .zip(&expected)
                        .any(|(n, e)| n[..] != e.as_bytes()[..])
                {
                    return Err(Error::Storage(format!(
                        "{}: PutBlobs named other digests than the blobs sent",
                        self.peer
                    )));
                }
                return Ok(digests);
            }
            Err(s) if s.code() == Code::Unimplemented => {}
            Err(s) => return Err(remote(&self.peer, "put blobs", &s)),
        }
        let this = self.clone();
        futures::stream::iter(uploads)
            .map(move |data| {
                let this = this.clone();
                async move {
                    let mut w = this.open_write().await;
                    w.write(&data).await?;
                    w.close().await
                }
            })
            .buffer_unordered(8)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(digests)
    }

    async fn open_read(&self, digest: &B3Digest) -> Result<Option<Box<dyn BlobReader>>, Error> {
        let Some(chunks) = self.stat(digest).await? else {
            return Ok(None);
        };
        if chunks.is_empty() {
            // No finer chunks (Cairn daemons chunk every blob over 1 MiB,
            // other stores may not): the only way to verify before
            // returning is to read it all, in memory while small, else in
            // an unnamed temporary file.
            return self.read_spilling(digest).await;
        }
        // Chunk by chunk, one ahead: memory is two chunks, not the blob.
        let source = RemoteChunks {
            service: self.clone(),
            blob: *digest,
        };
        Ok(Some(Box::new(ChunkedReader::new(source, *digest, chunks))))
    }

    async fn open_write(&self) -> Box<dyn BlobWriter> {
        let (tx, rx) = tokio::sync::mpsc::channel::<cproto::BlobChunk>(4);
        let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // The request ends only when `close` says so. A writer dropped
        // unclosed also closes the channel, but then the stream never
        // ends: the aborted call resets it instead, and the daemon
        // stores nothing (a clean end would store the part sent). A
        // tonic server reads that reset as a clean end unless told not
        // to: Cairn's daemon is (`transport::ResetIsNotEndLayer`).
        let ended = finished.clone();
        let mut rx = rx;
        let chunks = futures::stream::poll_fn(move |cx| match rx.poll_recv(cx) {
            std::task::Poll::Ready(None) if !ended.load(std::sync::atomic::Ordering::Acquire) => {
                // Dropped unclosed: wait for the abort (which wakes the
                // task to cancel it), never end the request.
                std::task::Poll::Pending
            }
            other => other,
        });
        let client = self.client();
        let call = tokio::spawn(async move {
            client
                .map_err(|e| Status::unavailable(e.to_string()))?
                .put(chunks)
                .await
        });
        Box::new(GrpcBlobWriter {
            peer: self.peer.clone(),
            tx: Some(tx),
            finished,
            call,
            hasher: blake3::Hasher::new(),
            pending: BytesMut::new(),
        })
    }

    async fn read_many(&self, wanted: &[(B3Digest, u64)]) -> Result<Vec<Option<Bytes>>, Error> {
        // Meant for small blobs (and chunks): all in one ReadBlobs call
        // where the peer has it, else one `Read` each, several at once;
        // every blob checked against its digest.
        let digests: Vec<B3Digest> = wanted.iter().map(|(d, _)| *d).collect();
        let req = Digests {
            digests: digests.iter().map(|d| Bytes::from(*d)).collect(),
        };
        match self.batch()?.read_blobs(req).await {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                let mut out = Vec::with_capacity(digests.len());
                for d in &digests {
                    let msg = stream
                        .message()
                        .await
                        .map_err(|s| remote(&self.peer, "read blobs", &s))?
                        .ok_or_else(|| lied(&self.peer, *d, "ended ReadBlobs early".into()))?;
                    if msg.absent {
                        out.push(None);
                        continue;
                    }
                    let actual = B3Digest::of(&msg.data);
                    if actual != *d {
                        return Err(lied(
                            &self.peer,
                            *d,
                            format!("sent bytes that hash to {actual}"),
                        ));
                    }
                    out.push(Some(msg.data));
                }
                return Ok(out);
            }
            Err(s) if s.code() == Code::Unimplemented => {}
            Err(s) => return Err(remote(&self.peer, "read blobs", &s)),
        }
        let this = self.clone();
        futures::stream::iter(wanted.to_vec())
            .map(move |(d, size)| {
                let this = this.clone();
                // The caller's size bounds what a peer may send (a size
                // of 0 is no hint: then a small blob's bound).
                let limit = if size > 0 { size } else { UNSIZED_LIMIT };
                async move { this.read_verified(&d, limit).await }
            })
            .buffered(8)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }

    async fn chunks(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        self.stat(digest).await
    }
}

/// Chunks of a remote blob, for [`ChunkedReader`]: each read with its own
/// `Read`, verified against its digest before it is returned.
struct RemoteChunks {
    service: GrpcBlobService,
    blob: B3Digest,
}

impl ChunkSource for RemoteChunks {
    fn load(&self, chunk: ChunkMeta) -> futures::future::BoxFuture<'static, Result<Bytes, Error>> {
        let service = self.service.clone();
        let blob = self.blob;
        start_now(async move {
            service
                .read_verified(&chunk.digest, chunk.size)
                .await?
                .ok_or_else(|| {
                    lied(
                        &service.peer,
                        blob,
                        format!("listed chunk {} it does not have", chunk.digest),
                    )
                })
        })
    }

    fn wrong_list(&self, digest: B3Digest, actual: B3Digest) -> Error {
        lied(
            &self.service.peer,
            digest,
            format!("listed chunks that concatenate to {actual}"),
        )
    }
}

/// Streams a blob to the peer's `Put`; `close` checks that the digest the
/// peer names is the one of the bytes sent.
struct GrpcBlobWriter {
    peer: Arc<str>,
    tx: Option<tokio::sync::mpsc::Sender<cproto::BlobChunk>>,
    /// Set by `close` before the channel closes: the request may end.
    finished: Arc<std::sync::atomic::AtomicBool>,
    call: tokio::task::JoinHandle<Result<tonic::Response<cproto::PutBlobResponse>, Status>>,
    hasher: blake3::Hasher,
    /// Bytes gathered into pieces of [`BLOB_PIECE`].
    pending: BytesMut,
}

impl Drop for GrpcBlobWriter {
    /// A writer dropped unclosed must not end the upload cleanly (the
    /// daemon would store the partial blob): the call is aborted, which
    /// resets the stream. After `close` the call has finished already.
    fn drop(&mut self) {
        self.call.abort();
    }
}

impl GrpcBlobWriter {
    async fn send(&mut self, data: Bytes) -> Result<(), Error> {
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| Error::Storage("blob writer used after close".into()))?;
        if tx.send(cproto::BlobChunk { data }).await.is_err() {
            return Err(Error::Storage(format!("{}: the upload stopped", self.peer)));
        }
        Ok(())
    }
}

#[async_trait]
impl BlobWriter for GrpcBlobWriter {
    async fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        self.hasher.update(data);
        self.pending.extend_from_slice(data);
        while self.pending.len() >= BLOB_PIECE {
            let piece = self.pending.split_to(BLOB_PIECE).freeze();
            self.send(piece).await?;
        }
        Ok(())
    }

    /// Pieces of [`BLOB_PIECE`] cut from `data` go out as they are; only
    /// what fills a partial piece is copied.
    async fn write_bytes(&mut self, mut data: Bytes) -> Result<(), Error> {
        self.hasher.update(&data);
        if !self.pending.is_empty() {
            let fill = (BLOB_PIECE - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data.split_to(fill));
            if self.pending.len() < BLOB_PIECE {
                return Ok(());
            }
            let piece = self.pending.split().freeze();
            self.send(piece).await?;
        }
        while data.len() >= BLOB_PIECE {
            let piece = data.split_to(BLOB_PIECE);
            self.send(piece).await?;
        }
        self.pending.extend_from_slice(&data);
        Ok(())
    }

    async fn close(mut self: Box<Self>) -> Result<B3Digest, Error> {
        if !self.pending.is_empty() {
            let piece = std::mem::take(&mut self.pending).freeze();
            self.send(piece).await?;
        }
        self.finished
            .store(true, std::sync::atomic::Ordering::Release);
        drop(self.tx.take());
        let expected = B3Digest::from(self.hasher.finalize());
        let resp = (&mut self.call)
            .await
            .map_err(|e| Error::Storage(format!("upload task: {e}")))?
            .map_err(|s| remote(&self.peer, "put", &s))?;
        let named = B3Digest::try_from(&resp.into_inner().digest[..]).map_err(|_| {
            lied(
                &self.peer,
                expected,
                "a blob digest of the wrong length".into(),
            )
        })?;
        if named != expected {
            return Err(lied(
                &self.peer,
                expected,
                format!("stored the upload as {named}"),
            ));
        }
        Ok(expected)
    }
}

/// A directory service on a remote daemon.
#[derive(Clone)]
pub struct GrpcDirectoryService {
    peer: Arc<str>,
    conn: Arc<Connection>,
    rule: SizeRule,
}

impl GrpcDirectoryService {
    /// A client of the daemon at `conn`, whose store uses size rule `rule`.
    pub fn new(conn: Arc<Connection>, rule: SizeRule) -> Self {
        GrpcDirectoryService {
            peer: conn.location().to_string().into(),
            conn,
            rule,
        }
    }

    fn client(&self) -> Result<DirectoryServiceClient<ClientChannel>, Error> {
        Ok(DirectoryServiceClient::new(channel_of(&self.conn)?)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }

    fn checked(&self, asked: &B3Digest, msg: cproto::Directory) -> Result<Directory, Error> {
        let dir = Directory::try_from(msg).map_err(|e| {
            lied(
                &self.peer,
                *asked,
                format!("sent an invalid directory: {e}"),
            )
        })?;
        Ok(dir)
    }
}

#[async_trait]
impl DirectoryService for GrpcDirectoryService {
    async fn get(&self, digest: &B3Digest) -> Result<Option<Directory>, Error> {
        let req = cproto::GetDirectoryRequest {
            by_what: Some(cproto::get_directory_request::ByWhat::Digest(
                (*digest).into(),
            )),
            recursive: false,
        };
        let mut stream = match self.client()?.get(req).await {
            Ok(resp) => resp.into_inner(),
            Err(s) if s.code() == Code::NotFound => return Ok(None),
            Err(s) => return Err(remote(&self.peer, "get directory", &s)),
        };
        let msg = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => {
                return Err(lied(
                    &self.peer,
                    *digest,
                    "answered with no directory".into(),
                ))
            }
            Err(s) if s.code() == Code::NotFound => return Ok(None),
            Err(s) => return Err(remote(&self.peer, "get directory", &s)),
        };
        let dir = self.checked(digest, msg)?;
        let actual = dir.digest();
        if actual != *digest {
            return Err(lied(
                &self.peer,
                *digest,
                format!("sent directory {actual} instead"),
            ));
        }
        Ok(Some(dir))
    }

    fn get_recursive(&self, root: &B3Digest) -> BoxStream<'_, Result<Directory, Error>> {
        let root = *root;
        let req = cproto::GetDirectoryRequest {
            by_what: Some(cproto::get_directory_request::ByWhat::Digest(root.into())),
            recursive: true,
        };
        let this = self.clone();
        // What may come next: the root first, then only directories a
        // received one refers to, each once.
        struct State {
            stream: Option<tonic::Streaming<cproto::Directory>>,
            expected: HashSet<B3Digest>,
            seen: HashSet<B3Digest>,
        }
        let state = State {
            stream: None,
            expected: HashSet::from([root]),
            seen: HashSet::new(),
        };
        futures::stream::try_unfold((this, req, state), move |(this, req, mut st)| async move {
            if st.stream.is_none() {
                match this.client()?.get(req.clone()).await {
                    Ok(resp) => st.stream = Some(resp.into_inner()),
                    Err(s) if s.code() == Code::NotFound => {
                        return Err(Error::NotFound {
                            what: "directory",
                            digest: root,
                        })
                    }
                    Err(s) => return Err(remote(&this.peer, "get directory closure", &s)),
                }
            }
            let Some(stream) = st.stream.as_mut() else {
                return Ok(None);
            };
            let msg = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => {
                    if st.seen.is_empty() {
                        return Err(lied(&this.peer, root, "answered with no directory".into()));
                    }
                    let unsent: Vec<_> = st.expected.difference(&st.seen).collect();
                    if let Some(d) = unsent.first() {
                        return Err(lied(
                            &this.peer,
                            root,
                            format!("ended the closure without directory {d}"),
                        ));
                    }
                    return Ok(None);
                }
                Err(s) if s.code() == Code::NotFound && st.seen.is_empty() => {
                    return Err(Error::NotFound {
                        what: "directory",
                        digest: root,
                    })
                }
                Err(s) => return Err(remote(&this.peer, "get directory closure", &s)),
            };
            let dir = this.checked(&root, msg)?;
            let d = dir.digest();
            if !st.expected.contains(&d) || !st.seen.insert(d) {
                return Err(lied(
                    &this.peer,
                    root,
                    format!("sent directory {d}, which nothing sent before refers to (or sent it twice)"),
                ));
            }
            for (_, child, _) in dir.subdirectories() {
                st.expected.insert(*child);
            }
            Ok(Some((dir, (this, req, st))))
        })
        .boxed()
    }

    fn put_multiple_start(&self) -> Box<dyn DirectoryPutter + '_> {
        Box::new(GrpcDirectoryPutter {
            service: self,
            validator: ClosureValidator::new(self.rule),
            sent: Vec::new(),
        })
    }

    fn size_rule(&self) -> SizeRule {
        self.rule
    }
}

/// Checks a closure locally as it is put (so mistakes are caught before
/// the network), then sends it in one `Put` stream on close.
struct GrpcDirectoryPutter<'a> {
    service: &'a GrpcDirectoryService,
    validator: ClosureValidator,
    sent: Vec<cproto::Directory>,
}

#[async_trait]
impl DirectoryPutter for GrpcDirectoryPutter<'_> {
    async fn put(&mut self, directory: Directory) -> Result<(), Error> {
        self.sent.push(directory.to_proto());
        self.validator.add(directory)
    }

    async fn close(self: Box<Self>) -> Result<B3Digest, Error> {
        let Self {
            service,
            validator,
            sent,
        } = *self;
        let expected = validator.finish()?.0;
        let peer = service.peer.clone();
        let resp = service
            .client()?
            .put(futures::stream::iter(sent))
            .await
            .map_err(|s| remote(&peer, "put directories", &s))?;
        let root = B3Digest::try_from(&resp.into_inner().root_digest[..])
            .map_err(|_| lied(&peer, expected, "a root digest of the wrong length".into()))?;
        if root != expected {
            return Err(lied(
                &peer,
                expected,
                format!("stored the closure as {root}"),
            ));
        }
        Ok(root)
    }
}

/// A PathInfo service on a remote daemon.
#[derive(Clone)]
pub struct GrpcPathInfoService {
    peer: Arc<str>,
    conn: Arc<Connection>,
}

impl GrpcPathInfoService {
    /// A client of the daemon at `conn`.
    pub fn new(conn: Arc<Connection>) -> Self {
        GrpcPathInfoService {
            peer: conn.location().to_string().into(),
            conn,
        }
    }

    fn client(
        &self,
    ) -> Result<PathInfoServiceClient<ClientChannel>, cairn_store::pathinfoservice::Error> {
        Ok(PathInfoServiceClient::new(channel_of(&self.conn)?)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }

    fn pi_err(&self, what: &str, s: &Status) -> cairn_store::pathinfoservice::Error {
        cairn_store::pathinfoservice::Error::Storage(format!(
            "{}: {what}: {} ({:?})",
            self.peer,
            s.message(),
            s.code()
        ))
    }

    fn checked(
        &self,
        msg: sproto::PathInfo,
    ) -> Result<PathInfo, cairn_store::pathinfoservice::Error> {
        PathInfo::try_from(msg).map_err(|e| {
            cairn_store::pathinfoservice::Error::Storage(format!(
                "{}: sent an invalid PathInfo: {e}",
                self.peer
            ))
        })
    }
}

#[async_trait]
impl PathInfoService for GrpcPathInfoService {
    async fn get(
        &self,
        digest: &[u8; 20],
    ) -> Result<Option<PathInfo>, cairn_store::pathinfoservice::Error> {
        let req = sproto::GetPathInfoRequest {
            by_what: Some(sproto::get_path_info_request::ByWhat::ByOutputHash(
                Bytes::copy_from_slice(digest),
            )),
        };
        let msg = match self.client()?.get(req).await {
            Ok(resp) => resp.into_inner(),
            Err(s) if s.code() == Code::NotFound => return Ok(None),
            Err(s) => return Err(self.pi_err("get", &s)),
        };
        let info = self.checked(msg)?;
        if info.store_path.digest() != digest {
            return Err(cairn_store::pathinfoservice::Error::Storage(format!(
                "{}: asked for one store path, sent {}",
                self.peer, info.store_path
            )));
        }
        Ok(Some(info))
    }

    async fn put(&self, info: PathInfo) -> Result<PathInfo, cairn_store::pathinfoservice::Error> {
        let resp = self
            .client()?
            .put(info.to_proto())
            .await
            .map_err(|s| self.pi_err("put", &s))?;
        let stored = self.checked(resp.into_inner())?;
        if stored.store_path != info.store_path || stored.node != info.node {
            return Err(cairn_store::pathinfoservice::Error::Storage(format!(
                "{}: stored {} as something else",
                self.peer, info.store_path
            )));
        }
        Ok(stored)
    }

    fn list(&self) -> BoxStream<'_, Result<PathInfo, cairn_store::pathinfoservice::Error>> {
        let this = self.clone();
        futures::stream::try_unfold((this, None), |(this, stream)| async move {
            let mut stream: tonic::Streaming<sproto::PathInfo> = match stream {
                Some(s) => s,
                None => this
                    .client()?
                    .list(sproto::ListPathInfoRequest {})
                    .await
                    .map_err(|s| this.pi_err("list", &s))?
                    .into_inner(),
            };
            match stream.message().await {
                Ok(Some(msg)) => {
                    let info = this.checked(msg)?;
                    Ok(Some((info, (this, Some(stream)))))
                }
                Ok(None) => Ok(None),
                Err(s) => Err(this.pi_err("list", &s)),
            }
        })
        .boxed()
    }
}
