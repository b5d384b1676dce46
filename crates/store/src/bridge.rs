//! Bytes between blocking threads and async readers: a NAR dumped by sync
//! code on a blocking thread, or a file or stdin read there, becomes an
//! `AsyncRead` for the ingest, in pieces through a bounded channel.
//!
//! Why not `tokio::fs::File` / `tokio::io::stdin`: they hop to the
//! blocking pool for every read; one thread reading large pieces costs a
//! fraction of that.

use std::io::{self, Read};

use bytes::Bytes;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;

/// Size of the pieces sent.
const PIECE: usize = 256 * 1024;
/// Pieces in flight between the thread and the reader.
const QUEUE: usize = 8;

type Piece = io::Result<Bytes>;

/// A `std::io::Write` that sends what it is given down a channel, in
/// pieces of [`PIECE`] bytes. Writing fails with `BrokenPipe` once the
/// receiving side is gone.
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

/// The receiving end of a piece channel as an `AsyncRead`; an error piece
/// becomes a read error.
pub(crate) fn channel_reader(rx: mpsc::Receiver<Piece>) -> impl AsyncRead + Unpin + Send {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    tokio_util::io::StreamReader::new(Box::pin(stream))
}

/// Reads `source` to its end on a blocking thread, as an `AsyncRead`.
/// The thread stops when the reader is dropped.
pub fn read_on_thread<R: Read + Send + 'static>(mut source: R) -> impl AsyncRead + Unpin + Send {
    let (tx, rx) = mpsc::channel::<Piece>(QUEUE);
    tokio::task::spawn_blocking(move || loop {
        let mut buf = vec![0u8; PIECE];
        let item = match source.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                buf.truncate(n);
                Ok(Bytes::from(buf))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(e),
        };
        let failed = item.is_err();
        if tx.blocking_send(item).is_err() || failed {
            return;
        }
    });
    channel_reader(rx)
}
