//! Rendering the NAR of a castore node, streaming and seekable.
//!
//! A [`NarLayout`] is computed from directories alone (file sizes are in
//! the nodes): the NAR's structural bytes, and where each file's contents
//! go. From it any byte range can be served without producing what comes
//! before it, and the whole NAR is just the range from 0 to the end.
//! File contents come straight from blob readers, which verify what they
//! return; a few blobs are opened ahead so small files do not wait on one
//! another. Byte-identical to `nix-store --dump` of the imported tree.
//!
//! It holds the structural bytes (names, targets, a few tokens per entry)
//! in memory, never file contents beyond the blobs opened ahead.

use std::collections::HashMap;
use std::ops::Range;

use bytes::Bytes;
use cairn_castore::blobservice::ChunkMeta;
use cairn_castore::{B3Digest, BlobService, Directory, DirectoryService, Node, PathComponent};
use cairn_nix::nar::{NarEncoder, NarWriteError};
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt, BufWriter};

/// Fetch units (batches of small blobs, large blobs' chunk lists or
/// readers) resolved ahead of the one being copied.
const OPEN_AHEAD: usize = 4;
/// Fetched pieces (batches, groups of chunks) ahead of the one being
/// copied, across blobs: with chunks fetched in groups of about
/// [`GROUP_BYTES`], some 8 MiB of a large file is on its way at once.
const PIECES_AHEAD: usize = 16;
/// A group of chunks fetched in one backend call holds about this many
/// bytes (at least one chunk).
const GROUP_BYTES: u64 = 1024 * 1024;
/// Output is written in pieces of at least this size.
const OUTPUT_BUFFER: usize = 1024 * 1024;

/// Why a NAR could not be rendered.
#[derive(Debug, Error)]
pub enum RenderError {
    /// A blob or directory is missing or failed verification.
    #[error(transparent)]
    Castore(#[from] cairn_castore::Error),
    /// A stored name or target that no NAR may hold.
    #[error(transparent)]
    Encode(#[from] NarWriteError),
    /// A blob shorter than the node that refers to it says.
    #[error("blob {digest} ended after {got} of {expected} bytes")]
    ShortBlob {
        /// The blob.
        digest: B3Digest,
        /// Bytes its node announces.
        expected: u64,
        /// Bytes it had.
        got: u64,
    },
    /// The output failed.
    #[error("writing NAR: {0}")]
    Output(#[source] std::io::Error),
    /// A range that does not lie within the NAR.
    #[error("range {start}..{end} is outside the NAR's {size} bytes")]
    BadRange {
        /// Asked start.
        start: u64,
        /// Asked end.
        end: u64,
        /// The NAR's size.
        size: u64,
    },
}

#[derive(Debug, Clone)]
enum Part {
    /// Structural bytes (tokens, names, padding).
    Literal(Bytes),
    /// A file's contents: `size` bytes of a blob.
    Blob { digest: B3Digest, size: u64 },
}

impl Part {
    fn len(&self) -> u64 {
        match self {
            Part::Literal(b) => b.len() as u64,
            Part::Blob { size, .. } => *size,
        }
    }
}

/// A regular file's place in the NAR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInNar {
    /// Path below the root, components joined by `/` (empty: the root).
    pub path: Vec<u8>,
    /// Where its contents start (Nix's `narOffset`).
    pub offset: u64,
    /// Its size.
    pub size: u64,
    /// Whether it is executable.
    pub executable: bool,
    /// Its blob.
    pub digest: B3Digest,
}

/// Where every byte of a node's NAR comes from.
#[derive(Debug, Clone)]
pub struct NarLayout {
    /// Start offset of each part.
    starts: Vec<u64>,
    parts: Vec<Part>,
    size: u64,
    files: Vec<FileInNar>,
}

impl NarLayout {
    /// The layout of `root`'s NAR, fetching its directory closure.
    pub async fn of(root: &Node, dirs: &dyn DirectoryService) -> Result<Self, RenderError> {
        let mut closure = HashMap::new();
        if let Node::Directory { digest, .. } = root {
            let mut stream = dirs.get_recursive(digest);
            while let Some(d) = stream.try_next().await? {
                closure.insert(d.digest(), d);
            }
        }
        Self::from_closure(root, &closure)
    }

    /// The layout of `root`'s NAR from its (complete) directory closure.
    pub fn from_closure(
        root: &Node,
        closure: &HashMap<B3Digest, Directory>,
    ) -> Result<Self, RenderError> {
        let mut b = Builder {
            enc: NarEncoder::new(),
            layout: NarLayout {
                starts: Vec::new(),
                parts: Vec::new(),
                size: 0,
                files: Vec::new(),
            },
            path: Vec::new(),
        };
        b.node(closure, root)?;
        b.enc.check_done()?;
        b.flush_literal();
        Ok(b.layout)
    }

    /// The NAR's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Every regular file with its offset, in NAR order.
    pub fn files(&self) -> &[FileInNar] {
        &self.files
    }

    /// Writes bytes `range` of the NAR to `out` and returns it.
    pub async fn write_range<W: AsyncWrite + Unpin + Send>(
        &self,
        blobs: &dyn BlobService,
        out: W,
        range: Range<u64>,
    ) -> Result<W, RenderError> {
        let mut sink = WriterSink(BufWriter::with_capacity(OUTPUT_BUFFER, out));
        self.render_range(blobs, range, &mut sink).await?;
        sink.0.flush().await.map_err(RenderError::Output)?;
        Ok(sink.0.into_inner())
    }

    /// Hands bytes `range` of the NAR to `sink` in order, as pieces that
    /// share memory with what was read (no copies of file contents on the
    /// way, except out of large blobs' readers).
    pub async fn render_range(
        &self,
        blobs: &dyn BlobService,
        range: Range<u64>,
        sink: &mut dyn NarSink,
    ) -> Result<(), RenderError> {
        if range.start > range.end || range.end > self.size {
            return Err(RenderError::BadRange {
                start: range.start,
                end: range.end,
                size: self.size,
            });
        }
        // The parts that overlap the range, each with the slice of it wanted.
        // Plain loops and owned items: iterator adaptors over borrowed parts
        // would make this future not `Send`.
        let first = self
            .starts
            .partition_point(|&s| s <= range.start)
            .saturating_sub(1);
        let mut wanted: Vec<(usize, Range<u64>)> = Vec::new();
        let mut blob_reads: Vec<(B3Digest, u64, Range<u64>)> = Vec::new();
        for i in first..self.parts.len() {
            let start = self.starts[i];
            if start >= range.end {
                break;
            }
            let part = &self.parts[i];
            let from = range.start.max(start) - start;
            let to = range.end.min(start + part.len()) - start;
            if from < to {
                if let Part::Blob { digest, size } = part {
                    blob_reads.push((*digest, *size, from..to));
                }
                wanted.push((i, from..to));
            }
        }
        // Two stages, so that fetching runs ahead across file boundaries:
        // the first resolves units a few ahead (a batch of small blobs
        // fetched, a large blob's chunk list looked up, or a reader
        // opened); the second fetches what those name, pieces of every
        // upcoming blob at once, and hands them on in order.
        let mut pieces = futures::stream::iter(fetch_units(blob_reads))
            .map(move |unit| resolve(blobs, unit))
            .buffered(OPEN_AHEAD)
            .map_ok(move |resolved| expand(blobs, resolved))
            .try_flatten()
            .try_buffered(PIECES_AHEAD);
        let mut batch: Option<std::vec::IntoIter<FetchedBlob>> = None;
        for (i, within) in wanted {
            match &self.parts[i] {
                Part::Literal(bytes) => {
                    sink.piece(bytes.slice(within.start as usize..within.end as usize))
                        .await?;
                }
                Part::Blob { .. } => {
                    let item = loop {
                        if let Some(item) = batch.as_mut().and_then(Iterator::next) {
                            break Piece::Blob(item);
                        }
                        match next_piece(&mut pieces).await? {
                            Piece::Batch(items) => batch = Some(items),
                            other => break other,
                        }
                    };
                    match item {
                        Piece::Blob(FetchedBlob::Whole(data, digest, size, within)) => {
                            if data.len() as u64 != size {
                                return Err(RenderError::ShortBlob {
                                    digest,
                                    expected: size,
                                    got: data.len() as u64,
                                });
                            }
                            sink.piece(data.slice(within.start as usize..within.end as usize))
                                .await?;
                        }
                        Piece::Blob(FetchedBlob::Reader((reader, digest, size, within))) => {
                            let want = within.end - within.start;
                            let copied = copy_pieces(reader.take(want), sink).await?;
                            if copied != want {
                                return Err(RenderError::ShortBlob {
                                    digest,
                                    expected: size,
                                    got: within.start + copied,
                                });
                            }
                        }
                        Piece::Chunked(head) => {
                            let mut blob = ChunkedRender::new(&head, blobs.chunk_lists_verified());
                            for _ in 0..head.groups {
                                match next_piece(&mut pieces).await? {
                                    Piece::Chunks(group) => blob.group(group, sink).await?,
                                    _ => return Err(lost_piece()),
                                }
                            }
                            blob.finish(sink).await?;
                        }
                        Piece::Batch(_) | Piece::Chunks(_) => return Err(lost_piece()),
                    }
                }
            }
        }
        Ok(())
    }
}

/// Receives a rendered NAR, piece by piece, in order.
#[async_trait::async_trait]
pub trait NarSink: Send {
    /// The next piece.
    async fn piece(&mut self, piece: Bytes) -> Result<(), RenderError>;
}

struct WriterSink<W>(BufWriter<W>);

#[async_trait::async_trait]
impl<W: AsyncWrite + Unpin + Send> NarSink for WriterSink<W> {
    async fn piece(&mut self, piece: Bytes) -> Result<(), RenderError> {
        self.0.write_all(&piece).await.map_err(RenderError::Output)
    }
}

/// An unchunked blob up to this size is read whole rather than streamed.
const WHOLE_READ_MAX: u64 = 1024 * 1024;

/// Blobs up to this size are read whole, in batches.
const SMALL_BLOB: u64 = 256 * 1024;
/// A batch of small blobs holds at most this many bytes, or blobs.
const BATCH_BYTES: u64 = 4 * 1024 * 1024;
const BATCH_BLOBS: usize = 128;

type Wanted = (B3Digest, u64, Range<u64>);

/// What one fetch brings in: a batch of small blobs, or one large one.
enum FetchUnit {
    Small(Vec<Wanted>),
    Large(Wanted),
}

fn fetch_units(reads: Vec<Wanted>) -> Vec<FetchUnit> {
    let mut units = Vec::new();
    let mut batch: Vec<Wanted> = Vec::new();
    let mut batch_bytes = 0;
    for read in reads {
        if read.1 <= SMALL_BLOB {
            batch_bytes += read.1;
            batch.push(read);
            if batch_bytes >= BATCH_BYTES || batch.len() >= BATCH_BLOBS {
                units.push(FetchUnit::Small(std::mem::take(&mut batch)));
                batch_bytes = 0;
            }
        } else {
            if !batch.is_empty() {
                units.push(FetchUnit::Small(std::mem::take(&mut batch)));
                batch_bytes = 0;
            }
            units.push(FetchUnit::Large(read));
        }
    }
    if !batch.is_empty() {
        units.push(FetchUnit::Small(batch));
    }
    units
}

enum FetchedBlob {
    Whole(Bytes, B3Digest, u64, Range<u64>),
    Reader(OpenBlob),
}

/// A fetch unit resolved by the first stage.
enum Resolved {
    Small(Vec<FetchedBlob>),
    Large(FetchedBlob),
    Chunked(ChunkedBlob),
}

/// A large blob the backend keeps in chunks: rendered by fetching the
/// chunks themselves, several at a time and each verified by the backend,
/// with no copy between backend and sink.
struct ChunkedBlob {
    digest: B3Digest,
    size: u64,
    within: Range<u64>,
    chunks: Vec<ChunkMeta>,
}

/// What the second stage hands on, in NAR order.
enum Piece {
    /// Small blobs, fetched.
    Batch(std::vec::IntoIter<FetchedBlob>),
    /// One large blob, whole or as a reader.
    Blob(FetchedBlob),
    /// A chunked blob begins; `groups` [`Piece::Chunks`] follow.
    Chunked(ChunkedHead),
    /// Chunks of the current chunked blob, each with its offset in the
    /// blob, fetched.
    Chunks(Vec<(u64, ChunkMeta, Option<Bytes>)>),
}

struct ChunkedHead {
    digest: B3Digest,
    size: u64,
    within: Range<u64>,
    groups: usize,
}

type PieceFuture<'a> = BoxFuture<'a, Result<Piece, RenderError>>;

async fn next_piece<S>(pieces: &mut S) -> Result<Piece, RenderError>
where
    S: futures::Stream<Item = Result<Piece, RenderError>> + Unpin,
{
    pieces.next().await.ok_or_else(lost_piece)?
}

fn lost_piece() -> RenderError {
    cairn_castore::Error::Storage("a blob fetch was lost".into()).into()
}

/// First stage: fetches a batch of small blobs, or finds out how a large
/// blob is stored.
async fn resolve(blobs: &dyn BlobService, unit: FetchUnit) -> Result<Resolved, RenderError> {
    match unit {
        FetchUnit::Large((digest, size, within)) => {
            let chunks = blobs.chunks(&digest).await?.unwrap_or_default();
            if chunks.is_empty() && size <= WHOLE_READ_MAX {
                // Stored whole and small enough to hold: one read, not a
                // second lookup through a reader.
                let data = blobs
                    .read_many(&[(digest, size)])
                    .await?
                    .pop()
                    .flatten()
                    .ok_or(cairn_castore::Error::NotFound {
                        what: "blob",
                        digest,
                    })?;
                Ok(Resolved::Large(FetchedBlob::Whole(
                    data, digest, size, within,
                )))
            } else if chunks.is_empty() {
                // Stored whole and large (a backend that does not chunk).
                Ok(Resolved::Large(FetchedBlob::Reader(
                    open_at(blobs, digest, size, within).await?,
                )))
            } else {
                Ok(Resolved::Chunked(ChunkedBlob {
                    digest,
                    size,
                    within,
                    chunks,
                }))
            }
        }
        FetchUnit::Small(batch) => {
            let wanted: Vec<(B3Digest, u64)> = batch.iter().map(|w| (w.0, w.1)).collect();
            let found = blobs.read_many(&wanted).await?;
            let mut items = Vec::with_capacity(batch.len());
            for ((digest, size, within), data) in batch.into_iter().zip(found) {
                let data = data.ok_or(cairn_castore::Error::NotFound {
                    what: "blob",
                    digest,
                })?;
                items.push(FetchedBlob::Whole(data, digest, size, within));
            }
            Ok(Resolved::Small(items))
        }
    }
}

/// Second stage: what a resolved unit still needs fetched, as futures
/// that the stage runs several at a time.
fn expand(
    blobs: &dyn BlobService,
    resolved: Resolved,
) -> futures::stream::BoxStream<'_, Result<PieceFuture<'_>, RenderError>> {
    let ready = |piece: Piece| -> PieceFuture<'_> { Box::pin(async move { Ok(piece) }) };
    let futures: Vec<PieceFuture<'_>> = match resolved {
        Resolved::Small(items) => vec![ready(Piece::Batch(items.into_iter()))],
        Resolved::Large(blob) => vec![ready(Piece::Blob(blob))],
        Resolved::Chunked(blob) => match chunk_groups(blob) {
            Err(e) => vec![Box::pin(async move { Err(e) })],
            Ok((head, groups)) => std::iter::once(ready(Piece::Chunked(head)))
                .chain(groups.into_iter().map(|group| -> PieceFuture<'_> {
                    Box::pin(async move {
                        let asked: Vec<(B3Digest, u64)> =
                            group.iter().map(|(_, c)| (c.digest, c.size)).collect();
                        let found = blobs.read_many(&asked).await?;
                        Ok(Piece::Chunks(
                            group
                                .into_iter()
                                .zip(found)
                                .map(|((start, meta), data)| (start, meta, data))
                                .collect(),
                        ))
                    })
                }))
                .collect(),
        },
    };
    futures::stream::iter(futures.into_iter().map(Ok)).boxed()
}

/// Chunks fetched in one backend call, each with its offset in the blob.
type ChunkGroup = Vec<(u64, ChunkMeta)>;

/// The groups of chunks to fetch for the wanted slice of a chunked blob.
fn chunk_groups(blob: ChunkedBlob) -> Result<(ChunkedHead, Vec<ChunkGroup>), RenderError> {
    let ChunkedBlob {
        digest,
        size,
        within,
        chunks,
    } = blob;
    let listed: u64 = chunks.iter().map(|c| c.size).sum();
    if listed != size {
        return Err(RenderError::ShortBlob {
            digest,
            expected: size,
            got: listed,
        });
    }
    let mut groups: Vec<ChunkGroup> = Vec::new();
    let mut group_bytes = 0;
    let mut offset = 0u64;
    for c in chunks {
        let end = offset + c.size;
        if end > within.start && offset < within.end {
            if groups.is_empty() || group_bytes >= GROUP_BYTES {
                groups.push(Vec::new());
                group_bytes = 0;
            }
            group_bytes += c.size;
            if let Some(g) = groups.last_mut() {
                g.push((offset, c));
            }
        }
        offset = end;
    }
    let head = ChunkedHead {
        digest,
        size,
        within,
        groups: groups.len(),
    };
    Ok((head, groups))
}

/// Hands the wanted slice of a chunked blob to the sink as its chunks
/// arrive. The backend verifies every chunk against its digest. When the
/// whole blob is rendered from a chunk list the backend does not vouch
/// for, the blob's own digest is checked too (a list could be wrong where
/// every chunk is right), before the blob's last piece is handed on.
struct ChunkedRender {
    digest: B3Digest,
    size: u64,
    within: Range<u64>,
    hasher: Option<blake3::Hasher>,
    /// One piece is held back, so that the last one goes out only after
    /// the whole blob has been checked.
    held: Option<Bytes>,
}

impl ChunkedRender {
    fn new(head: &ChunkedHead, lists_verified: bool) -> Self {
        let whole = head.within.start == 0 && head.within.end == head.size;
        ChunkedRender {
            digest: head.digest,
            size: head.size,
            within: head.within.clone(),
            hasher: (whole && !lists_verified).then(blake3::Hasher::new),
            held: None,
        }
    }

    async fn group(
        &mut self,
        group: Vec<(u64, ChunkMeta, Option<Bytes>)>,
        sink: &mut dyn NarSink,
    ) -> Result<(), RenderError> {
        for (start, meta, data) in group {
            let data = data.ok_or(cairn_castore::Error::NotFound {
                what: "chunk",
                digest: meta.digest,
            })?;
            if data.len() as u64 != meta.size {
                return Err(RenderError::ShortBlob {
                    digest: self.digest,
                    expected: self.size,
                    got: start + data.len() as u64,
                });
            }
            if let Some(h) = self.hasher.as_mut() {
                h.update(&data);
            }
            let from = self.within.start.saturating_sub(start) as usize;
            let to = (self.within.end - start).min(meta.size) as usize;
            if let Some(prev) = self.held.replace(data.slice(from..to)) {
                sink.piece(prev).await?;
            }
        }
        Ok(())
    }

    async fn finish(self, sink: &mut dyn NarSink) -> Result<(), RenderError> {
        if let Some(h) = self.hasher {
            let actual = B3Digest::from(h.finalize());
            if actual != self.digest {
                return Err(cairn_castore::Error::Integrity {
                    digest: self.digest,
                    detail: format!("chunks concatenate to {actual}"),
                }
                .into());
            }
        }
        if let Some(last) = self.held {
            sink.piece(last).await?;
        }
        Ok(())
    }
}

type OpenBlob = (
    Box<dyn cairn_castore::BlobReader>,
    B3Digest,
    u64,
    Range<u64>,
);

/// Opens a blob positioned at the start of the slice wanted.
async fn open_at(
    blobs: &dyn BlobService,
    digest: B3Digest,
    size: u64,
    within: Range<u64>,
) -> Result<OpenBlob, RenderError> {
    let mut reader = blobs
        .open_read(&digest)
        .await?
        .ok_or(cairn_castore::Error::NotFound {
            what: "blob",
            digest,
        })?;
    if within.start > 0 {
        reader
            .seek(std::io::SeekFrom::Start(within.start))
            .await
            .map_err(cairn_castore::Error::from_io)?;
    }
    Ok((reader, digest, size, within))
}

/// Reads a large blob in pieces of up to [`OUTPUT_BUFFER`] bytes into
/// `sink`, telling a failed read (verification) from a failed write.
async fn copy_pieces<R>(mut reader: R, sink: &mut dyn NarSink) -> Result<u64, RenderError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut total = 0u64;
    loop {
        let mut buf = bytes::BytesMut::with_capacity(OUTPUT_BUFFER);
        while buf.len() < OUTPUT_BUFFER {
            let n = reader
                .read_buf(&mut buf)
                .await
                .map_err(cairn_castore::Error::from_io)?;
            if n == 0 {
                break;
            }
        }
        if buf.is_empty() {
            return Ok(total);
        }
        total += buf.len() as u64;
        sink.piece(buf.freeze()).await?;
    }
}

struct Builder {
    enc: NarEncoder,
    layout: NarLayout,
    path: Vec<u8>,
}

impl Builder {
    fn push(&mut self, part: Part) {
        let len = part.len();
        if len == 0 {
            return;
        }
        self.layout.starts.push(self.layout.size);
        self.layout.parts.push(part);
        self.layout.size += len;
    }

    fn flush_literal(&mut self) {
        let bytes = self.enc.take_output();
        self.push(Part::Literal(Bytes::from(bytes)));
    }

    fn file(&mut self, digest: &B3Digest, size: u64, executable: bool) -> Result<(), RenderError> {
        self.enc.file_header(executable, size)?;
        self.flush_literal();
        self.layout.files.push(FileInNar {
            path: self.path.clone(),
            offset: self.layout.size,
            size,
            executable,
            digest: *digest,
        });
        self.push(Part::Blob {
            digest: *digest,
            size,
        });
        self.enc.file_trailer(size);
        Ok(())
    }

    /// Walks depth-first with an explicit stack: a deep directory chain
    /// must not overflow the thread's stack.
    fn node(
        &mut self,
        closure: &HashMap<B3Digest, Directory>,
        root: &Node,
    ) -> Result<(), RenderError> {
        type Entries<'a> = Box<dyn Iterator<Item = (&'a PathComponent, &'a Node)> + 'a>;
        // Open directories: their remaining entries, and the path length
        // to return to when each is done.
        let mut open: Vec<(Entries<'_>, usize)> = Vec::new();
        let mut next: Option<&Node> = Some(root);
        loop {
            if let Some(node) = next.take() {
                match node {
                    Node::Symlink { target } => self.enc.symlink(target.as_bytes())?,
                    Node::File {
                        digest,
                        size,
                        executable,
                    } => self.file(digest, *size, *executable)?,
                    Node::Directory { digest, .. } => {
                        let dir = closure.get(digest).ok_or(cairn_castore::Error::NotFound {
                            what: "directory",
                            digest: *digest,
                        })?;
                        self.enc.directory()?;
                        open.push((Box::new(dir.entries()), self.path.len()));
                    }
                }
            }
            let Some((entries, base)) = open.last_mut() else {
                return Ok(());
            };
            let base = *base;
            self.path.truncate(base);
            match entries.next() {
                Some((name, child)) => {
                    self.enc.entry(name.as_bytes())?;
                    if base > 0 {
                        self.path.push(b'/');
                    }
                    self.path.extend_from_slice(name.as_bytes());
                    next = Some(child);
                }
                None => {
                    self.enc.end_directory()?;
                    open.pop();
                }
            }
        }
    }
}

/// Writes the NAR of `root` to `out` and returns `out`.
pub async fn write_nar<W: AsyncWrite + Unpin + Send>(
    out: W,
    blobs: &dyn BlobService,
    dirs: &dyn DirectoryService,
    root: &Node,
) -> Result<W, RenderError> {
    let layout = NarLayout::of(root, dirs).await?;
    layout.write_range(blobs, out, 0..layout.size()).await
}
