//! gRPC servers for the three services, over any backends.
//!
//! Each handler validates what it receives (digest lengths, directories,
//! closures, PathInfos) and answers with the status codes of SPEC.md:
//! `NOT_FOUND` for what is not there, `INVALID_ARGUMENT` for what is
//! malformed. Errors of the backend itself become `INTERNAL` (or
//! `DATA_LOSS` when stored bytes fail verification). A PathInfo is accepted
//! only when everything its root node reaches is already stored.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use cairn_castore::{proto as cproto, B3Digest, BlobService, Directory, DirectoryService, Node};
use cairn_store::nar_calc::NarCalculationService;
use cairn_store::{proto as sproto, PathInfo, PathInfoService};
use futures::{Stream, StreamExt};
use tokio::io::AsyncReadExt;
use tonic::{Request, Response, Status, Streaming};

use crate::generated::batch::batch_service_server::{self, BatchServiceServer};
use crate::generated::batch::{Digests, WholeBlob};
use crate::generated::castore::blob_service_server::{self, BlobServiceServer};
use crate::generated::castore::directory_service_server::{self, DirectoryServiceServer};
use crate::generated::store::path_info_service_server::{self, PathInfoServiceServer};
use crate::{BLOB_PIECE, MAX_MESSAGE};

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// A castore error as the status SPEC.md gives it.
pub fn status_of(e: cairn_castore::Error) -> Status {
    use cairn_castore::Error as E;
    match e {
        E::NotFound { .. } => Status::not_found(e.to_string()),
        E::InvalidDirectory(_) | E::InvalidClosure(_) | E::Address { .. } => {
            Status::invalid_argument(e.to_string())
        }
        E::Integrity { .. } => Status::data_loss(e.to_string()),
        E::Storage(_) | E::Io(_) => Status::internal(e.to_string()),
    }
}

fn path_info_status(e: cairn_store::pathinfoservice::Error) -> Status {
    use cairn_store::pathinfoservice::Error as E;
    match e {
        E::Invalid(e) => Status::invalid_argument(e.to_string()),
        E::Castore(e) => status_of(e),
        e @ E::Storage(_) => Status::internal(e.to_string()),
        e @ E::Remote(_) => Status::unavailable(e.to_string()),
        e @ E::ReadOnly(_) => Status::failed_precondition(e.to_string()),
    }
}

/// A 32-byte digest from a request, or `INVALID_ARGUMENT`.
fn digest_arg(bytes: &[u8], what: &str) -> Result<B3Digest, Status> {
    B3Digest::try_from(bytes).map_err(|_| {
        Status::invalid_argument(format!(
            "{what} digest must be 32 bytes, got {}",
            bytes.len()
        ))
    })
}

/// The three services and the batch extension, with message limits set.
pub struct Services {
    /// `tvix.castore.v1.BlobService`.
    pub blobs: BlobServiceServer<BlobHandler>,
    /// `tvix.castore.v1.DirectoryService`.
    pub directories: DirectoryServiceServer<DirectoryHandler>,
    /// `tvix.store.v1.PathInfoService`.
    pub path_infos: PathInfoServiceServer<PathInfoHandler>,
    /// `cairn.v1.BatchService`.
    pub batch: BatchServiceServer<BatchHandler>,
}

impl Services {
    /// Servers over these backends.
    pub fn new(
        blobs: Arc<dyn BlobService>,
        dirs: Arc<dyn DirectoryService>,
        path_infos: Arc<dyn PathInfoService>,
        nar_calc: Arc<dyn NarCalculationService>,
    ) -> Self {
        Services {
            blobs: BlobServiceServer::new(BlobHandler {
                blobs: blobs.clone(),
            })
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
            directories: DirectoryServiceServer::new(DirectoryHandler {
                dirs: dirs.clone(),
                blobs: blobs.clone(),
            })
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
            path_infos: PathInfoServiceServer::new(PathInfoHandler {
                path_infos,
                blobs: blobs.clone(),
                dirs: dirs.clone(),
                nar_calc,
            })
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
            batch: BatchServiceServer::new(BatchHandler { blobs, dirs })
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        }
    }
}

/// Serves a blob service.
pub struct BlobHandler {
    blobs: Arc<dyn BlobService>,
}

#[tonic::async_trait]
impl blob_service_server::BlobService for BlobHandler {
    async fn stat(
        &self,
        request: Request<cproto::StatBlobRequest>,
    ) -> Result<Response<cproto::StatBlobResponse>, Status> {
        let req = request.into_inner();
        let digest = digest_arg(&req.digest, "blob")?;
        let chunks = self
            .blobs
            .chunks(&digest)
            .await
            .map_err(status_of)?
            .ok_or_else(|| Status::not_found(format!("blob {digest} not found")))?;
        let chunks = if req.send_chunks { chunks } else { Vec::new() };
        Ok(Response::new(cproto::StatBlobResponse {
            chunks: chunks
                .into_iter()
                .map(|c| cproto::stat_blob_response::ChunkMeta {
                    digest: c.digest.into(),
                    size: c.size,
                })
                .collect(),
            // Cairn keeps no bao outboard; an empty one says so.
            bao: Bytes::new(),
        }))
    }

    type ReadStream = Streamed<cproto::BlobChunk>;

    async fn read(
        &self,
        request: Request<cproto::ReadBlobRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let digest = digest_arg(&request.into_inner().digest, "blob")?;
        let reader = self
            .blobs
            .open_read(&digest)
            .await
            .map_err(status_of)?
            .ok_or_else(|| Status::not_found(format!("blob {digest} not found")))?;
        let pieces = futures::stream::try_unfold(reader, |mut reader| async move {
            let mut buf = bytes::BytesMut::with_capacity(BLOB_PIECE);
            while buf.len() < BLOB_PIECE {
                let n = reader
                    .read_buf(&mut buf)
                    .await
                    .map_err(|e| status_of(cairn_castore::Error::from_io(e)))?;
                if n == 0 {
                    break;
                }
            }
            if buf.is_empty() {
                return Ok(None);
            }
            let chunk = cproto::BlobChunk { data: buf.freeze() };
            Ok(Some((chunk, reader)))
        });
        Ok(Response::new(Box::pin(pieces)))
    }

    async fn put(
        &self,
        request: Request<Streaming<cproto::BlobChunk>>,
    ) -> Result<Response<cproto::PutBlobResponse>, Status> {
        let mut pieces = request.into_inner();
        let mut writer = self.blobs.open_write().await;
        // A stream that ends in an error drops the writer unclosed: the
        // partial blob never becomes visible.
        while let Some(piece) = pieces.message().await? {
            writer.write_bytes(piece.data).await.map_err(status_of)?;
        }
        let digest = writer.close().await.map_err(status_of)?;
        Ok(Response::new(cproto::PutBlobResponse {
            digest: digest.into(),
        }))
    }
}

/// Serves a directory service.
pub struct DirectoryHandler {
    dirs: Arc<dyn DirectoryService>,
    /// Synced before a closure commits: directories never become durable
    /// before the blobs they reach (blob puts are acknowledged before
    /// they are durable; see `BlobService::sync`).
    blobs: Arc<dyn BlobService>,
}

#[tonic::async_trait]
impl directory_service_server::DirectoryService for DirectoryHandler {
    type GetStream = Streamed<cproto::Directory>;

    async fn get(
        &self,
        request: Request<cproto::GetDirectoryRequest>,
    ) -> Result<Response<Self::GetStream>, Status> {
        let req = request.into_inner();
        let Some(cproto::get_directory_request::ByWhat::Digest(raw)) = req.by_what else {
            return Err(Status::invalid_argument("no directory digest given"));
        };
        let digest = digest_arg(&raw, "directory")?;
        let root = self
            .dirs
            .get(&digest)
            .await
            .map_err(status_of)?
            .ok_or_else(|| Status::not_found(format!("directory {digest} not found")))?;
        if !req.recursive {
            let one = futures::stream::iter([Ok(root.to_proto())]);
            return Ok(Response::new(Box::pin(one)));
        }
        // The closure streams from the backend breadth-first; it borrows
        // the service, so the service is moved into the stream's state.
        let dirs = self.dirs.clone();
        let stream = async_stream_of(dirs, digest);
        Ok(Response::new(stream))
    }

    async fn put(
        &self,
        request: Request<Streaming<cproto::Directory>>,
    ) -> Result<Response<cproto::PutDirectoryResponse>, Status> {
        let mut incoming = request.into_inner();
        let mut putter = self.dirs.put_multiple_start();
        let mut any = false;
        while let Some(msg) = incoming.message().await? {
            let dir =
                Directory::try_from(msg).map_err(|e| Status::invalid_argument(e.to_string()))?;
            putter.put(dir).await.map_err(status_of)?;
            any = true;
        }
        if !any {
            return Err(Status::invalid_argument("no directories sent"));
        }
        self.blobs.sync().await.map_err(status_of)?;
        let root = putter.close().await.map_err(status_of)?;
        Ok(Response::new(cproto::PutDirectoryResponse {
            root_digest: root.into(),
        }))
    }
}

/// The breadth-first closure below `root` as an owned stream of messages.
fn async_stream_of(dirs: Arc<dyn DirectoryService>, root: B3Digest) -> Streamed<cproto::Directory> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<cproto::Directory, Status>>(16);
    tokio::spawn(async move {
        let mut closure = dirs.get_recursive(&root);
        while let Some(item) = closure.next().await {
            let msg = item.map(|d| d.to_proto()).map_err(status_of);
            let failed = msg.is_err();
            if tx.send(msg).await.is_err() || failed {
                return;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Serves a PathInfo service, checking puts against the castore services.
pub struct PathInfoHandler {
    path_infos: Arc<dyn PathInfoService>,
    blobs: Arc<dyn BlobService>,
    dirs: Arc<dyn DirectoryService>,
    nar_calc: Arc<dyn NarCalculationService>,
}

impl PathInfoHandler {
    /// Everything `node` reaches is stored, or `FAILED_PRECONDITION`
    /// naming the first thing that is not.
    async fn check_complete(&self, node: &Node) -> Result<(), Status> {
        let missing = |what: &str, d: &B3Digest| {
            Status::failed_precondition(format!(
                "the PathInfo refers to {what} {d}, which is not stored; upload it first"
            ))
        };
        match node {
            Node::Symlink { .. } => Ok(()),
            Node::File { digest, .. } => {
                if self.blobs.has(digest).await.map_err(status_of)? {
                    Ok(())
                } else {
                    Err(missing("blob", digest))
                }
            }
            Node::Directory { digest, .. } => {
                let mut closure = self.dirs.get_recursive(digest);
                let mut files: HashSet<B3Digest> = HashSet::new();
                while let Some(dir) = closure.next().await {
                    let dir = dir.map_err(|e| match e {
                        cairn_castore::Error::NotFound { what, digest } => missing(what, &digest),
                        e => status_of(e),
                    })?;
                    for (_, node) in dir.entries() {
                        if let Node::File { digest, .. } = node {
                            files.insert(*digest);
                        }
                    }
                }
                let files: Vec<B3Digest> = files.into_iter().collect();
                let absent = self.blobs.missing(&files).await.map_err(status_of)?;
                match absent.first() {
                    Some(d) => Err(missing("blob", d)),
                    None => Ok(()),
                }
            }
        }
    }
}

#[tonic::async_trait]
impl path_info_service_server::PathInfoService for PathInfoHandler {
    async fn get(
        &self,
        request: Request<sproto::GetPathInfoRequest>,
    ) -> Result<Response<sproto::PathInfo>, Status> {
        let Some(sproto::get_path_info_request::ByWhat::ByOutputHash(hash)) =
            request.into_inner().by_what
        else {
            return Err(Status::invalid_argument("no store path digest given"));
        };
        let digest: [u8; 20] = hash[..].try_into().map_err(|_| {
            Status::invalid_argument(format!(
                "store path digest must be 20 bytes, got {}",
                hash.len()
            ))
        })?;
        let info = self
            .path_infos
            .get(&digest)
            .await
            .map_err(path_info_status)?
            .ok_or_else(|| Status::not_found("no such store path"))?;
        Ok(Response::new(info.to_proto()))
    }

    async fn put(
        &self,
        request: Request<sproto::PathInfo>,
    ) -> Result<Response<sproto::PathInfo>, Status> {
        let info = PathInfo::try_from(request.into_inner())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.check_complete(&info.node).await?;
        // What the PathInfo reaches is durable before the PathInfo is.
        self.blobs.sync().await.map_err(status_of)?;
        let stored = self.path_infos.put(info).await.map_err(path_info_status)?;
        Ok(Response::new(stored.to_proto()))
    }

    async fn calculate_nar(
        &self,
        request: Request<cproto::Node>,
    ) -> Result<Response<sproto::CalculateNarResponse>, Status> {
        let (_, node) = Node::from_proto(request.into_inner())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (size, sha256) = self
            .nar_calc
            .calculate_nar(&node)
            .await
            .map_err(|e| match e {
                cairn_store::render::RenderError::Castore(e) => status_of(e),
                e => Status::internal(e.to_string()),
            })?;
        Ok(Response::new(sproto::CalculateNarResponse {
            nar_size: size,
            nar_sha256: Bytes::copy_from_slice(&sha256),
        }))
    }

    type ListStream = Streamed<sproto::PathInfo>;

    async fn list(
        &self,
        _request: Request<sproto::ListPathInfoRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<sproto::PathInfo, Status>>(16);
        let path_infos = self.path_infos.clone();
        tokio::spawn(async move {
            let mut all = path_infos.list();
            while let Some(item) = all.next().await {
                let msg = item.map(|i| i.to_proto()).map_err(path_info_status);
                let failed = msg.is_err();
                if tx.send(msg).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// The largest blob `ReadBlobs` sends (one message, with room to spare).
const MAX_BATCH_BLOB: u64 = (MAX_MESSAGE - 1024) as u64;

/// Blobs put per backend call by `PutBlobs`, at most (and bytes).
const PUT_BATCH_BLOBS: usize = 128;
const PUT_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Serves Cairn's batch extension.
pub struct BatchHandler {
    blobs: Arc<dyn BlobService>,
    dirs: Arc<dyn DirectoryService>,
}

/// Presence questions answered at once, at most: bounds one request's work.
const MAX_PRESENCE_QUESTIONS: usize = 100_000;

fn digest_list(req: Digests) -> Result<Vec<B3Digest>, Status> {
    if req.digests.len() > MAX_PRESENCE_QUESTIONS {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_PRESENCE_QUESTIONS} digests per request, got {}",
            req.digests.len()
        )));
    }
    req.digests.iter().map(|d| digest_arg(d, "a")).collect()
}

/// A batch being stored on a task of its own; aborted if the call ends
/// (an error, a client that went away) before it is waited for, as the
/// call's own work would be.
struct Storing(tokio::task::JoinHandle<Result<Vec<B3Digest>, Status>>);

impl Storing {
    /// The digests the batch was stored under.
    async fn digests(mut self) -> Result<Vec<B3Digest>, Status> {
        (&mut self.0)
            .await
            .map_err(|e| Status::internal(format!("storing a batch failed: {e}")))?
    }
}

impl Drop for Storing {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[tonic::async_trait]
impl batch_service_server::BatchService for BatchHandler {
    async fn put_blobs(
        &self,
        request: Request<Streaming<WholeBlob>>,
    ) -> Result<Response<Digests>, Status> {
        let mut incoming = request.into_inner();
        let mut digests = Vec::new();
        let mut batch: Vec<Bytes> = Vec::new();
        let mut batch_bytes = 0;
        // One batch is stored while the next one arrives. A call that
        // fails half-way leaves whole blobs stored, never partial ones.
        let mut storing: Option<Storing> = None;
        loop {
            let next = incoming.message().await?;
            let flush = match &next {
                None => !batch.is_empty(),
                Some(_) => batch.len() >= PUT_BATCH_BLOBS || batch_bytes >= PUT_BATCH_BYTES,
            };
            if flush {
                if let Some(previous) = storing.take() {
                    digests.extend(previous.digests().await?.into_iter().map(Bytes::from));
                }
                let blobs = self.blobs.clone();
                let full = std::mem::take(&mut batch);
                storing = Some(Storing(tokio::spawn(async move {
                    blobs.put_many(full).await.map_err(status_of)
                })));
                batch_bytes = 0;
            }
            if next.is_none() {
                if let Some(last) = storing.take() {
                    digests.extend(last.digests().await?.into_iter().map(Bytes::from));
                }
            }
            let Some(blob) = next else { break };
            if blob.absent {
                return Err(Status::invalid_argument("PutBlobs: a blob marked absent"));
            }
            batch_bytes += blob.data.len();
            batch.push(blob.data);
        }
        Ok(Response::new(Digests { digests }))
    }

    type ReadBlobsStream = Streamed<WholeBlob>;

    async fn read_blobs(
        &self,
        request: Request<Digests>,
    ) -> Result<Response<Self::ReadBlobsStream>, Status> {
        let wanted = digest_list(request.into_inner())?;
        let blobs = self.blobs.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<WholeBlob, Status>>(4);
        tokio::spawn(async move {
            // Backend batches: read_many holds each batch in memory. Sizes
            // are unknown here (0: only a hint to the backend).
            for group in wanted.chunks(PUT_BATCH_BLOBS) {
                // Refuse blobs too large for one message before reading
                // any: read_many holds what it reads in memory.
                for d in group {
                    let too_large = match blobs.chunks(d).await {
                        Ok(Some(list)) => list.iter().map(|c| c.size).sum::<u64>() > MAX_BATCH_BLOB,
                        Ok(None) => false,
                        Err(e) => {
                            let _ = tx.send(Err(status_of(e))).await;
                            return;
                        }
                    };
                    if too_large {
                        let msg = format!("blob {d} is too large for ReadBlobs; use Read");
                        let _ = tx.send(Err(Status::resource_exhausted(msg))).await;
                        return;
                    }
                }
                let asked: Vec<(B3Digest, u64)> = group.iter().map(|d| (*d, 0)).collect();
                let found = match blobs.read_many(&asked).await {
                    Ok(f) => f,
                    Err(e) => {
                        let _ = tx.send(Err(status_of(e))).await;
                        return;
                    }
                };
                for blob in found {
                    let msg = match blob {
                        Some(data) if data.len() as u64 > MAX_BATCH_BLOB => Err(
                            Status::resource_exhausted("a blob too large for ReadBlobs; use Read"),
                        ),
                        Some(data) => Ok(WholeBlob {
                            data,
                            absent: false,
                        }),
                        None => Ok(WholeBlob {
                            data: Bytes::new(),
                            absent: true,
                        }),
                    };
                    let failed = msg.is_err();
                    if tx.send(msg).await.is_err() || failed {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn missing_blobs(&self, request: Request<Digests>) -> Result<Response<Digests>, Status> {
        let wanted = digest_list(request.into_inner())?;
        let missing = self.blobs.missing(&wanted).await.map_err(status_of)?;
        Ok(Response::new(Digests {
            digests: missing.into_iter().map(Bytes::from).collect(),
        }))
    }

    async fn blobs_to_send(&self, request: Request<Digests>) -> Result<Response<Digests>, Status> {
        let wanted = digest_list(request.into_inner())?;
        let to_send = self.blobs.to_send(&wanted).await.map_err(status_of)?;
        Ok(Response::new(Digests {
            digests: to_send.into_iter().map(Bytes::from).collect(),
        }))
    }

    async fn missing_directories(
        &self,
        request: Request<Digests>,
    ) -> Result<Response<Digests>, Status> {
        let wanted = digest_list(request.into_inner())?;
        let mut missing = Vec::new();
        for d in wanted {
            if self.dirs.get(&d).await.map_err(status_of)?.is_none() {
                missing.push(Bytes::from(d));
            }
        }
        Ok(Response::new(Digests { digests: missing }))
    }
}
