//! Bytes between blocking threads and async code: a NAR dumped by sync
//! code on a blocking thread, or a file or stdin read there, reaches the
//! ingest as owned pieces through a bounded channel; and a rendered NAR
//! goes the other way, to a thread writing it out.
//!
//! Why not `tokio::fs::File` / `tokio::io::stdin`: they hop to the
//! blocking pool for every read; one thread reading large pieces costs a
//! fraction of that.

use std::io::{self, Read};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use crate::render::{NarSink, RenderError};

/// Size of the pieces sent.
const PIECE: usize = 256 * 1024;
/// Pieces in flight between the thread and the reader.
const QUEUE: usize = 8;

type Piece = io::Result<Bytes>;

/// A `std::io::Write` that sends what it is given down a channel, in
/// pieces of about [`PIECE`] bytes. A write that would overflow the piece
/// being filled starts the next one instead of growing this one: growing
/// a `Vec` reallocates and copies what it holds (most of a piece, every
/// piece), and a write kept whole keeps a small file's contents within
/// one piece, where the ingest takes them without a copy. Writing fails
/// with `BrokenPipe` once the receiving side is gone.
pub(crate) struct ChannelWriter {
    tx: mpsc::Sender<Piece>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    pub(crate) fn new(tx: mpsc::Sender<Piece>) -> Self {
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(PIECE),
        }
    }
}

impl io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if !self.buf.is_empty() && self.buf.len() + data.len() > self.buf.capacity() {
            self.flush()?;
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PIECE {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE)));
        self.tx
            .blocking_send(Ok(piece))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "ingest stopped"))
    }
}

/// The pieces a [`ChannelWriter`] (or a reading thread) sends, as a stream.
pub(crate) fn channel_pieces(
    rx: mpsc::Receiver<Piece>,
) -> impl futures::Stream<Item = Piece> + Unpin + Send {
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// Reads `source` to its end on a blocking thread, as a stream of owned
/// pieces of up to [`PIECE`] bytes (only the last one shorter), which
/// [`crate::ingest::ingest_nar_pieces`] parses where they lie. Each piece
/// is read straight into fresh, unzeroed memory: the only copy is the
/// kernel's. The thread stops when the stream is dropped.
pub fn read_pieces_on_thread<R: Read + Send + 'static>(
    mut source: R,
) -> impl futures::Stream<Item = io::Result<Bytes>> + Unpin + Send {
    let (tx, rx) = mpsc::channel::<Piece>(QUEUE);
    tokio::task::spawn_blocking(move || loop {
        let mut buf = Vec::with_capacity(PIECE);
        // `read_to_end` reads into the spare capacity without zeroing it
        // first (where the source can: files, pipes, stdin).
        let item = match (&mut source).take(PIECE as u64).read_to_end(&mut buf) {
            Ok(0) => return,
            Ok(_) => Ok(Bytes::from(buf)),
            Err(e) => Err(e),
        };
        let failed = item.is_err();
        if tx.blocking_send(item).is_err() || failed {
            return;
        }
    });
    channel_pieces(rx)
}

/// Pieces smaller than this are gathered before being written.
const GATHER: usize = 256 * 1024;

/// A [`NarSink`] that hands pieces to a thread writing them to a
/// `std::io::Write` (stdout, a file). Small pieces (a NAR has several per
/// file: framing, contents, padding) are gathered here, before the
/// channel, so the thread wakes once per [`GATHER`] bytes rather than
/// once per piece; large pieces cross as they are, without a copy.
pub struct ThreadWriterSink {
    tx: Option<mpsc::Sender<Bytes>>,
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
    gathered: BytesMut,
}

impl ThreadWriterSink {
    /// Starts the writing thread.
    pub fn new<W: io::Write + Send + 'static>(mut out: W) -> io::Result<Self> {
        let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE * 2);
        let thread = std::thread::Builder::new()
            .name("nar-writer".into())
            .spawn(move || {
                while let Some(piece) = rx.blocking_recv() {
                    out.write_all(&piece)?;
                }
                out.flush()
            })?;
        Ok(ThreadWriterSink {
            tx: Some(tx),
            thread: Some(thread),
            gathered: BytesMut::new(),
        })
    }

    /// Waits for everything to be written; the writer's error, if any.
    pub async fn finish(mut self) -> io::Result<()> {
        if !self.gathered.is_empty() {
            let rest = self.gathered.split().freeze();
            self.send(rest).await?;
        }
        self.tx = None;
        self.join().await
    }

    async fn join(&mut self) -> io::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(io::Error::other)?
            .map_err(|_| io::Error::other("NAR writer thread panicked"))?
    }

    async fn send(&mut self, piece: Bytes) -> io::Result<()> {
        let sent = match &self.tx {
            Some(tx) => tx.send(piece).await.is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The writer stopped: its error says why.
        self.tx = None;
        Err(match self.join().await {
            Err(e) => e,
            Ok(()) => io::Error::other("NAR writer stopped"),
        })
    }
}

#[async_trait::async_trait]
impl NarSink for ThreadWriterSink {
    async fn piece(&mut self, piece: Bytes) -> Result<(), RenderError> {
        if piece.len() >= GATHER {
            if !self.gathered.is_empty() {
                let before = self.gathered.split().freeze();
                self.send(before).await.map_err(RenderError::Output)?;
            }
            return self.send(piece).await.map_err(RenderError::Output);
        }
        if self.gathered.is_empty() {
            // The last buffer went to the thread: a fresh one, with room
            // for the piece that takes it past GATHER (pieces here are
            // smaller than GATHER), so it never grows by copying.
            self.gathered.reserve(2 * GATHER);
        }
        self.gathered.extend_from_slice(&piece);
        if self.gathered.len() >= GATHER {
            let full = self.gathered.split().freeze();
            self.send(full).await.map_err(RenderError::Output)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// Writes of a NAR dump's sizes (framing, small files, 64 KiB copies,
    /// and one larger than a piece) arrive in order and whole: each lies
    /// within one piece, and only a write larger than a piece makes one.
    #[test]
    fn writes_arrive_whole_and_in_order() {
        let sizes = [
            100,
            40_000,
            65_536,
            65_536,
            7,
            90_000,
            65_536,
            PIECE + 3,
            1,
            200_000,
            65_536,
        ];
        let (tx, mut rx) = mpsc::channel::<Piece>(64);
        let mut writer = ChannelWriter::new(tx);
        let mut expected = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let data: Vec<u8> = (0..n).map(|j| (i * 31 + j) as u8).collect();
            writer.write_all(&data).unwrap();
            expected.extend_from_slice(&data);
        }
        writer.flush().unwrap();
        drop(writer);
        let mut pieces = Vec::new();
        while let Ok(piece) = rx.try_recv() {
            pieces.push(piece.unwrap());
        }
        assert_eq!(pieces.concat(), expected);
        // Each write within one piece: its start and end fall in the same.
        let ends: Vec<usize> = pieces
            .iter()
            .scan(0, |at, p| {
                *at += p.len();
                Some(*at)
            })
            .collect();
        let mut at = 0;
        for &n in &sizes {
            let piece_of = |offset: usize| ends.iter().position(|&e| offset < e);
            assert_eq!(
                piece_of(at),
                piece_of(at + n - 1),
                "a write of {n} was split"
            );
            at += n;
        }
        for p in &pieces {
            assert!(p.len() <= PIECE + 3, "a piece of {} bytes", p.len());
        }
    }
}
