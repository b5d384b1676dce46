//! NAR ingest: one streaming pass from any `AsyncRead` NAR into castore
//! blobs and directories, computing the NAR's sha256 and size on the way.
//!
//! Parsing runs on the calling task, sha256 on a thread of its own fed
//! the same pieces of input, and file contents are stored by tasks: small files
//! in batches (one `put_many` per batch), large ones streamed to a blob
//! writer each. Hashing, parsing and storing overlap. Memory is bounded by [`IN_FLIGHT_BYTES`] of file
//! contents plus the tree's names, whatever the NAR's size.
//!
//! A NAR that turns out malformed (or truncated, or followed by junk) at
//! any point leaves no directory and no PathInfo behind: blobs stored
//! before the failure are unreferenced, and `cairn gc` removes them. This
//! module does not create PathInfos; callers do, once they have checked
//! the hash and size against what they expected.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use cairn_castore::import::{EntryId, ImportError, Progress, TreeBuilder};
use cairn_castore::{B3Digest, BlobService, DirectoryService, Node};
use cairn_nix::hash::{HashAlgo, Hasher};
use cairn_nix::nar::{AsyncNarReader, Event, NarError};
use futures::Stream;
use thiserror::Error;
use tokio::io::{AsyncBufRead, AsyncRead, ReadBuf};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::PollSender;

/// File contents read from the NAR but not yet stored, at most. Together
/// with the blob writers' own buffers this bounds an ingest's memory.
pub const IN_FLIGHT_BYTES: usize = 64 * 1024 * 1024;
/// Contents up to this size are read whole and stored in one call; larger
/// files stream to a blob writer in pieces of this size.
const PIECE: usize = 1024 * 1024;
/// The unit of the in-flight budget.
const PERMIT_BYTES: usize = 64 * 1024;
/// What a streaming blob writer may buffer on its own (chunking buffer),
/// unless its service says more ([`BlobService::writer_buffer`]).
const WRITER_RESERVE: usize = 2 * PIECE;
/// How much of the source is read at a time.
const READ_BUFFER: usize = 256 * 1024;

/// What an ingest produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestedNar {
    /// The root node (its name is the caller's to give).
    pub node: Node,
    /// The NAR's length in bytes.
    pub nar_size: u64,
    /// The NAR's sha256.
    pub nar_sha256: [u8; 32],
}

/// Why a NAR could not be ingested.
#[derive(Debug, Error)]
pub enum IngestError {
    /// The NAR is malformed or truncated, or reading it failed.
    #[error(transparent)]
    Nar(#[from] NarError),
    /// Building or storing the tree failed.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// The blob or directory service failed.
    #[error(transparent)]
    Castore(#[from] cairn_castore::Error),
}

/// The NAR as a buffered reader over the owned pieces it arrives in, each
/// piece passed to a hashing thread as it is taken (a reference, not a
/// copy), so that sha256 (the slowest hash in the job) runs beside the
/// parsing rather than in series with it. Taking a piece waits while the
/// hasher is [`HASH_QUEUE`] pieces behind. Parsing reads straight from the
/// piece: nothing is copied into a read buffer first.
struct PieceReader<S> {
    pieces: S,
    /// What is left of the piece being parsed.
    current: Bytes,
    to_hasher: PollSender<Bytes>,
    ended: bool,
}

/// Pieces of input the hasher may lag behind by.
const HASH_QUEUE: usize = 16;

impl<S> PieceReader<S>
where
    S: Stream<Item = io::Result<Bytes>> + Unpin,
{
    fn hasher_stopped() -> io::Error {
        io::Error::other("NAR hasher stopped")
    }

    /// The next `n` buffered bytes, consumed, without a copy.
    fn split(&mut self, n: usize) -> Bytes {
        self.current.split_to(n.min(self.current.len()))
    }
}

type NarPieces<S> = AsyncNarReader<PieceReader<S>>;

/// Up to `max` bytes of the current file's contents, shared with the
/// piece they arrived in (at least one byte while contents remain).
async fn next_slice<S>(nar: &mut NarPieces<S>, max: usize) -> Result<Bytes, IngestError>
where
    S: Stream<Item = io::Result<Bytes>> + Unpin,
{
    let slice = nar.take_contents(max, PieceReader::split).await?;
    if slice.is_empty() && max > 0 {
        // The reader reports a truncated NAR itself; this is a backstop.
        return Err(NarError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "NAR ended inside a file",
        ))
        .into());
    }
    Ok(slice)
}

impl<S> AsyncBufRead for PieceReader<S>
where
    S: Stream<Item = io::Result<Bytes>> + Unpin,
{
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        while this.current.is_empty() && !this.ended {
            match this.to_hasher.poll_reserve(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(Err(Self::hasher_stopped())),
            }
            match Pin::new(&mut this.pieces).poll_next(cx) {
                Poll::Ready(Some(Ok(piece))) if !piece.is_empty() => {
                    if this.to_hasher.send_item(piece.clone()).is_err() {
                        return Poll::Ready(Err(Self::hasher_stopped()));
                    }
                    this.current = piece;
                }
                Poll::Ready(Some(Ok(_))) => {
                    this.to_hasher.abort_send();
                }
                Poll::Ready(Some(Err(e))) => {
                    this.to_hasher.abort_send();
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(None) => {
                    this.to_hasher.abort_send();
                    this.ended = true;
                }
                Poll::Pending => {
                    this.to_hasher.abort_send();
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(&this.current[..]))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        this.current.advance(amt.min(this.current.len()));
    }
}

impl<S> AsyncRead for PieceReader<S>
where
    S: Stream<Item = io::Result<Bytes>> + Unpin,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let available = match self.as_mut().poll_fill_buf(cx) {
            Poll::Ready(Ok(buf)) => buf,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        let n = available.len().min(out.remaining());
        out.put_slice(&available[..n]);
        self.consume(n);
        Poll::Ready(Ok(()))
    }
}

/// Starts the hashing thread: it hashes every piece it receives until the
/// sender is dropped, then returns the sha256.
type HashTask = tokio::task::JoinHandle<Result<[u8; 32], cairn_nix::hash::HashError>>;

fn spawn_hasher() -> (PollSender<Bytes>, HashTask) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(HASH_QUEUE);
    let task = tokio::task::spawn_blocking(move || {
        let mut hasher = Hasher::new(HashAlgo::Sha256);
        while let Some(piece) = rx.blocking_recv() {
            hasher.update(&piece);
        }
        hasher.finish().sha256_bytes()
    });
    (PollSender::new(tx), task)
}

type Stored = Result<Vec<(EntryId, B3Digest)>, cairn_castore::Error>;

/// A batch of small files waiting to be stored by one `put_many` call.
#[derive(Default)]
struct SmallBatch {
    files: Vec<(EntryId, Bytes)>,
    bytes: usize,
    permits: Vec<OwnedSemaphorePermit>,
}

/// A batch is sent off at this many bytes or files.
const BATCH_BYTES: usize = 4 * 1024 * 1024;
const BATCH_FILES: usize = 128;

impl SmallBatch {
    /// Sends the batch off if the budget cannot cover `bytes` more: its
    /// permits come back only once it is stored, so waiting for budget
    /// while holding it back could wait forever.
    fn make_room(
        &mut self,
        budget: &Semaphore,
        bytes: usize,
        blobs: &Arc<dyn BlobService>,
        stores: &mut JoinSet<Stored>,
    ) {
        if budget.available_permits() < permits_for(bytes) as usize {
            self.send(blobs, stores);
        }
    }

    fn send(&mut self, blobs: &Arc<dyn BlobService>, stores: &mut JoinSet<Stored>) {
        if self.files.is_empty() {
            return;
        }
        let batch = std::mem::take(self);
        let blobs = blobs.clone();
        stores.spawn(async move {
            let (ids, data): (Vec<EntryId>, Vec<Bytes>) = batch.files.into_iter().unzip();
            let digests = blobs.put_many(data).await?;
            drop(batch.permits);
            Ok(ids.into_iter().zip(digests).collect())
        });
    }
}

/// Ingests the NAR read from `source`.
pub async fn ingest_nar<R: AsyncRead + Unpin + Send>(
    source: R,
    blobs: Arc<dyn BlobService>,
    dirs: &dyn DirectoryService,
    progress: &dyn Progress,
) -> Result<IngestedNar, IngestError> {
    ingest_nar_pieces(pieces_of(source), blobs, dirs, progress).await
}

/// Any `AsyncRead` cut into owned pieces for [`ingest_nar_pieces`] (one
/// copy, into each piece).
pub(crate) fn pieces_of<R: AsyncRead + Unpin + Send>(
    source: R,
) -> impl Stream<Item = io::Result<Bytes>> + Unpin + Send {
    tokio_util::io::ReaderStream::with_capacity(source, READ_BUFFER)
}

/// [`ingest_nar`] for a NAR that arrives as owned pieces (a tree dumped on
/// a thread, a file read on one): the pieces are hashed and parsed where
/// they are, with no copy into a read buffer.
pub async fn ingest_nar_pieces<S>(
    pieces: S,
    blobs: Arc<dyn BlobService>,
    dirs: &dyn DirectoryService,
    progress: &dyn Progress,
) -> Result<IngestedNar, IngestError>
where
    S: Stream<Item = io::Result<Bytes>> + Unpin + Send,
{
    ingest_within(pieces, blobs, dirs, progress, IN_FLIGHT_BYTES).await
}

/// [`ingest_nar_pieces`] holding at most `in_flight_bytes` of file
/// contents (at least a blob writer's reserve and a piece more).
async fn ingest_within<S>(
    pieces: S,
    blobs: Arc<dyn BlobService>,
    dirs: &dyn DirectoryService,
    progress: &dyn Progress,
    in_flight_bytes: usize,
) -> Result<IngestedNar, IngestError>
where
    S: Stream<Item = io::Result<Bytes>> + Unpin + Send,
{
    let (to_hasher, hasher) = spawn_hasher();
    let reader = PieceReader {
        pieces,
        current: Bytes::new(),
        to_hasher,
        ended: false,
    };
    let mut nar = AsyncNarReader::new(reader);
    let budget = Arc::new(Semaphore::new(in_flight_bytes / PERMIT_BYTES));
    let mut tree = TreeBuilder::new("NAR");
    let mut stores: JoinSet<Stored> = JoinSet::new();
    let mut batch = SmallBatch::default();
    // The name the next node gets; the root's is empty.
    let mut name: Vec<u8> = Vec::new();

    while let Some(event) = nar.next().await? {
        match event {
            Event::Entry { name: n } => name = n,
            Event::Directory => {
                tree.directory(&name);
            }
            Event::EndDirectory => tree.end_directory(),
            Event::Symlink { target } => {
                tree.symlink(&name, &target);
            }
            Event::File {
                executable, size, ..
            } => {
                let id = tree.file(&name, size, executable);
                if size <= PIECE as u64 {
                    let len = size as usize;
                    batch.make_room(&budget, len, &blobs, &mut stores);
                    batch.permits.push(take_budget(&budget, len).await?);
                    batch.files.push((id, read_piece(&mut nar, len).await?));
                    batch.bytes += len;
                    if batch.bytes >= BATCH_BYTES || batch.files.len() >= BATCH_FILES {
                        batch.send(&blobs, &mut stores);
                    }
                } else {
                    let first_piece = writer_reserve(blobs.as_ref()) + PIECE;
                    batch.make_room(&budget, first_piece, &blobs, &mut stores);
                    store_large(&mut nar, id, size, &blobs, &budget, &mut stores).await?;
                }
                progress.file_done(size);
            }
        }
        // Record what has finished, and stop early if a store failed.
        while let Some(done) = stores.try_join_next() {
            for (id, digest) in joined(done)? {
                tree.set_digest(id, digest);
            }
        }
    }
    batch.send(&blobs, &mut stores);
    // The reader has checked that nothing follows the NAR, so everything
    // hashed is the NAR.
    let nar_size = nar.offset();
    // Dropping the reader closes the hasher's queue; it then finishes.
    drop(nar);
    let nar_sha256 = hasher
        .await
        .map_err(|e| cairn_castore::Error::Storage(format!("NAR hasher: {e}")))?
        .map_err(|e| cairn_castore::Error::Storage(format!("NAR hash: {e}")))?;

    while let Some(done) = stores.join_next().await {
        for (id, digest) in joined(done)? {
            tree.set_digest(id, digest);
        }
    }
    // Directory records must not become durable before the blobs they reach.
    blobs.sync().await?;
    let node = tree.finish(dirs).await?;
    Ok(IngestedNar {
        node,
        nar_size,
        nar_sha256,
    })
}

fn joined(
    done: Result<Stored, tokio::task::JoinError>,
) -> Result<Vec<(EntryId, B3Digest)>, IngestError> {
    let stored = done.map_err(|e| cairn_castore::Error::Storage(format!("blob task: {e}")))?;
    Ok(stored?)
}

/// What a large file's writer holds of the budget for its whole life.
fn writer_reserve(blobs: &dyn BlobService) -> usize {
    WRITER_RESERVE.max(blobs.writer_buffer())
}

fn permits_for(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(PERMIT_BYTES).max(1)).unwrap_or(u32::MAX)
}

async fn take_budget(
    budget: &Arc<Semaphore>,
    bytes: usize,
) -> Result<OwnedSemaphorePermit, IngestError> {
    budget
        .clone()
        .acquire_many_owned(permits_for(bytes))
        .await
        .map_err(|_| cairn_castore::Error::Storage("ingest budget closed".into()).into())
}

/// The next `len` bytes of the current file's contents. Contents that lie
/// within one piece of input (most small files) are shared with it, not
/// copied.
async fn read_piece<S>(nar: &mut NarPieces<S>, len: usize) -> Result<Bytes, IngestError>
where
    S: Stream<Item = io::Result<Bytes>> + Unpin,
{
    let first = next_slice(nar, len).await?;
    if first.len() == len {
        return Ok(first);
    }
    let mut buf = BytesMut::with_capacity(len);
    buf.extend_from_slice(&first);
    while buf.len() < len {
        buf.extend_from_slice(&next_slice(nar, len - buf.len()).await?);
    }
    Ok(buf.freeze())
}

/// Streams a large file's contents to a blob writer task, piece by piece;
/// the task's result carries the file's entry and digest.
async fn store_large<S>(
    nar: &mut NarPieces<S>,
    id: EntryId,
    size: u64,
    blobs: &Arc<dyn BlobService>,
    budget: &Arc<Semaphore>,
    stores: &mut JoinSet<Stored>,
) -> Result<(), IngestError>
where
    S: Stream<Item = io::Result<Bytes>> + Unpin,
{
    // A large file: a writer task fed piece by piece, each piece holding
    // its share of the budget until the writer has taken it.
    let reserve = take_budget(budget, writer_reserve(blobs.as_ref())).await?;
    let (tx, mut rx) = mpsc::channel::<(Bytes, OwnedSemaphorePermit)>(4);
    let task_blobs = blobs.clone();
    stores.spawn(async move {
        let mut writer = task_blobs.open_write().await;
        let mut received = 0u64;
        while let Some((piece, permit)) = rx.recv().await {
            received += piece.len() as u64;
            writer.write_bytes(piece).await?;
            drop(permit);
        }
        if received != size {
            // The ingest gave up mid-file: drop the writer unclosed, so
            // no blob of a partial file appears.
            return Err(cairn_castore::Error::Storage(
                "ingest stopped in the middle of a file".into(),
            ));
        }
        let digest = writer.close().await?;
        drop(reserve);
        Ok(vec![(id, digest)])
    });
    // Gathered into pieces of `PIECE` bytes: a remote writer sends each
    // as one message without copying it, where smaller ones it would
    // have to join.
    let mut left = size;
    while left > 0 {
        let len = left.min(PIECE as u64) as usize;
        let permit = take_budget(budget, len).await?;
        let piece = read_piece(nar, len).await?;
        left -= len as u64;
        if tx.send((piece, permit)).await.is_err() {
            // The writer failed: report its error, not a later symptom.
            while let Some(done) = stores.join_next().await {
                joined(done)?;
            }
            return Err(cairn_castore::Error::Storage("blob writer stopped".into()).into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use cairn_castore::addr::{blob_service_from_addr, directory_service_from_addr};
    use cairn_castore::import::NoProgress;
    use cairn_nix::nar::fs::dump_path;

    use super::*;

    /// A budget smaller than what one batch of small files holds: the
    /// batch must be sent to free its share, or the ingest waits forever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_budget_sends_batches_early_instead_of_stalling() {
        let work = tempfile::tempdir().unwrap();
        let tree = work.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        // Each small file holds one permit (64 KiB) of the budget until its
        // batch is stored: a batch of 128 of them outnumbers this budget's
        // 112 permits (a writer's reserve, a piece, and 64 more).
        for i in 0..300 {
            std::fs::write(tree.join(format!("small-{i:03}")), format!("file {i}\n")).unwrap();
            if i % 100 == 50 {
                let large = vec![i as u8; 3 * PIECE + 7];
                std::fs::write(tree.join(format!("large-{i:03}")), large).unwrap();
            }
        }
        let nar = dump_path(&tree, Vec::new()).unwrap();
        let blobs = blob_service_from_addr("memory://").unwrap();
        let dirs = directory_service_from_addr("memory://").unwrap();
        let budget = WRITER_RESERVE + PIECE + 64 * PERMIT_BYTES;
        let ingest = ingest_within(
            pieces_of(&nar[..]),
            blobs.clone(),
            dirs.as_ref(),
            &NoProgress,
            budget,
        );
        let ingested = tokio::time::timeout(Duration::from_secs(20), ingest)
            .await
            .expect("the ingest stalled on its own budget")
            .unwrap();
        assert_eq!(ingested.nar_size, nar.len() as u64);
        let rendered =
            crate::render::write_nar(Vec::new(), blobs.as_ref(), dirs.as_ref(), &ingested.node)
                .await
                .unwrap();
        assert!(rendered == nar, "the tree did not render back to its NAR");
    }
}
