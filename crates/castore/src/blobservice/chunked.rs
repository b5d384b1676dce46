//! A seekable reader over a blob stored as a list of chunks, for any
//! backend that can load one chunk: the local pack files and a remote
//! daemon alike.
//!
//! While a caller reads sequentially, the next [`AHEAD`] chunks are
//! loaded in the background (sources start a load when asked), so a
//! sequential read waits for storage or the network only once, not once
//! per chunk. A read after a seek elsewhere loads just what it needs: a
//! random reader fetches no chunk it does not touch.
//!
//! Every chunk is checked to have the size its list says (its bytes are
//! the loader's to verify); a read from the start to the end also checks
//! the whole blob's digest before it reports the end, so a wrong list
//! cannot pass unnoticed.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncSeek, ReadBuf};

use super::ChunkMeta;
use crate::{B3Digest, Error};

/// Chunks loaded ahead of a sequential reader: at most 2 MiB held beyond
/// the current chunk (chunks are at most 1 MiB).
pub const AHEAD: usize = 2;

/// Chunks a sequential reader names to its source beyond those it loads
/// ([`ChunkSource::will_need`]), renewed when half of them are read.
pub const HINT_AHEAD: usize = 16;

/// Where a [`ChunkedReader`] gets its chunks.
pub trait ChunkSource: Send + Sync + 'static {
    /// Loads one chunk, verified against its digest. The work must start
    /// when this is called, not when the future is first polled: the
    /// reader calls it for the chunks ahead and polls them only when it
    /// gets there ([`start_now`] and [`start_blocking_now`] do that).
    fn load(&self, chunk: ChunkMeta) -> BoxFuture<'static, Result<Bytes, Error>>;
    /// A hint, never an obligation: a sequential reader will load these
    /// chunks soon, in this order. A source on local files can have the
    /// kernel start reading them in large requests now, rather than one
    /// chunk-sized read at a time when each is loaded. Must not block.
    fn will_need(&self, _upcoming: &[ChunkMeta]) {}
    /// The error for a list whose chunks hash, together, to `actual`
    /// instead of the blob's `digest` (naming where the list came from).
    fn wrong_list(&self, digest: B3Digest, actual: B3Digest) -> Error {
        Error::Integrity {
            digest,
            detail: format!("chunks concatenate to {actual}"),
        }
    }
}

/// Starts `fut` now on the current runtime and returns its result when
/// awaited; dropping the returned future cancels it. Outside a runtime,
/// `fut` runs when awaited, as any future.
pub fn start_now<T: Send + 'static>(
    fut: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> BoxFuture<'static, Result<T, Error>> {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            let task = AbortOnDrop(rt.spawn(fut));
            Box::pin(async move { task.join().await })
        }
        Err(_) => Box::pin(fut),
    }
}

/// Starts blocking work `f` now on the runtime's blocking pool and
/// returns its result when awaited. Outside a runtime, `f` runs at once
/// on this thread.
pub fn start_blocking_now<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> BoxFuture<'static, Result<T, Error>> {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            let task = rt.spawn_blocking(f);
            Box::pin(async move {
                task.await
                    .map_err(|e| Error::Storage(format!("loading a chunk failed: {e}")))?
            })
        }
        Err(_) => Box::pin(std::future::ready(f())),
    }
}

/// A spawned task, aborted if its handle is dropped before it is joined.
struct AbortOnDrop<T>(tokio::task::JoinHandle<Result<T, Error>>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) -> Result<T, Error> {
        (&mut self.0)
            .await
            .map_err(|e| Error::Storage(format!("loading a chunk failed: {e}")))?
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One chunk being loaded (the source started it when asked).
struct Load {
    idx: usize,
    fut: BoxFuture<'static, Result<Bytes, Error>>,
}

/// Reads a blob from its chunk list; see the module documentation.
pub struct ChunkedReader<S> {
    source: S,
    digest: B3Digest,
    chunks: Vec<ChunkMeta>,
    starts: Vec<u64>,
    size: u64,
    pos: u64,
    /// Where the last read ended: a read starting here is sequential.
    last_end: u64,
    current: Option<(usize, Bytes)>,
    loading: Option<Load>,
    ahead: VecDeque<Load>,
    /// Chunks before this index have been named to the source as needed.
    hinted_upto: usize,
    whole: Option<blake3::Hasher>,
    whole_upto: u64,
}

// Nothing is ever pinned in place: the source is only used by reference.
impl<S> Unpin for ChunkedReader<S> {}

impl<S: ChunkSource> ChunkedReader<S> {
    /// A reader of blob `digest`, made of `chunks` in order.
    pub fn new(source: S, digest: B3Digest, chunks: Vec<ChunkMeta>) -> Self {
        let mut starts = Vec::with_capacity(chunks.len());
        let mut size = 0u64;
        for c in &chunks {
            starts.push(size);
            size = size.saturating_add(c.size);
        }
        ChunkedReader {
            source,
            digest,
            chunks,
            starts,
            size,
            pos: 0,
            last_end: 0,
            current: None,
            loading: None,
            ahead: VecDeque::new(),
            hinted_upto: 0,
            whole: Some(blake3::Hasher::new()),
            whole_upto: 0,
        }
    }

    /// Chunk `idx`'s load: the one already running ahead, or a new one.
    fn take_or_start(&mut self, idx: usize) -> Load {
        match self.ahead.iter().position(|l| l.idx == idx) {
            Some(i) => self.ahead.remove(i).unwrap_or_else(|| self.start(idx)),
            None => self.start(idx),
        }
    }

    fn start(&self, idx: usize) -> Load {
        Load {
            idx,
            fut: self.source.load(self.chunks[idx]),
        }
    }

    /// Keeps chunks `idx+1 ..= idx+AHEAD` loading, and only those.
    fn read_ahead_of(&mut self, idx: usize) {
        let last = (idx + AHEAD).min(self.chunks.len().saturating_sub(1));
        if self.ahead.len() == last.saturating_sub(idx)
            && self.ahead.iter().zip(idx + 1..).all(|(l, j)| l.idx == j)
        {
            return;
        }
        let mut wanted = VecDeque::with_capacity(AHEAD);
        for j in idx + 1..=last {
            wanted.push_back(self.take_or_start(j));
        }
        // Loads outside the window are dropped (and so cancelled) here.
        self.ahead = wanted;
    }

    /// Names the chunks a sequential reader at chunk `idx` will want next
    /// (from it to [`HINT_AHEAD`] past the loads ahead), once half of the
    /// last batch named is used up.
    fn hint_from(&mut self, idx: usize) {
        if self.hinted_upto > idx + AHEAD + HINT_AHEAD / 2 {
            return;
        }
        let from = self.hinted_upto.max(idx);
        let to = (idx + 1 + AHEAD + HINT_AHEAD).min(self.chunks.len());
        if from < to {
            self.source.will_need(&self.chunks[from..to]);
            self.hinted_upto = to;
        }
    }

    fn chunk_index(&self, pos: u64) -> usize {
        self.starts.partition_point(|&s| s <= pos).saturating_sub(1)
    }
}

impl<S: ChunkSource> AsyncRead for ChunkedReader<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let sequential = this.pos == this.last_end;
        loop {
            if this.pos >= this.size || out.remaining() == 0 {
                if this.pos >= this.size && this.whole_upto == this.size {
                    if let Some(h) = this.whole.take() {
                        let actual = B3Digest::from(h.finalize());
                        if actual != this.digest {
                            let e = this.source.wrong_list(this.digest, actual);
                            return Poll::Ready(Err(e.into_io()));
                        }
                    }
                }
                return Poll::Ready(Ok(()));
            }
            let idx = this.chunk_index(this.pos);
            if sequential {
                this.hint_from(idx);
            }
            if let Some((i, data)) = &this.current {
                if *i == idx {
                    let off = (this.pos - this.starts[idx]) as usize;
                    let n = (data.len() - off).min(out.remaining());
                    let piece = &data[off..off + n];
                    out.put_slice(piece);
                    if this.whole_upto == this.pos {
                        if let Some(h) = this.whole.as_mut() {
                            h.update(piece);
                            this.whole_upto += n as u64;
                        }
                    }
                    this.pos += n as u64;
                    this.last_end = this.pos;
                    if sequential {
                        this.read_ahead_of(idx);
                    }
                    return Poll::Ready(Ok(()));
                }
            }
            if this.loading.as_ref().is_none_or(|l| l.idx != idx) {
                this.loading = Some(this.take_or_start(idx));
            }
            let Some(load) = this.loading.as_mut() else {
                continue;
            };
            let loaded = match load.fut.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => r,
            };
            // A finished future must never be polled again, failed or not:
            // the next read loads the chunk afresh.
            this.loading = None;
            let data = loaded.map_err(Error::into_io)?;
            let meta = this.chunks[idx];
            if data.len() as u64 != meta.size {
                return Poll::Ready(Err(Error::Integrity {
                    digest: this.digest,
                    detail: format!(
                        "chunk {} has {} bytes, the list says {}",
                        meta.digest,
                        data.len(),
                        meta.size
                    ),
                }
                .into_io()));
            }
            this.current = Some((idx, data));
        }
    }
}

impl<S: ChunkSource> AsyncSeek for ChunkedReader<S> {
    fn start_seek(mut self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        let target = match position {
            io::SeekFrom::Start(n) => Some(n),
            io::SeekFrom::End(off) => self.size.checked_add_signed(off),
            io::SeekFrom::Current(off) => self.pos.checked_add_signed(off),
        };
        self.pos = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the blob",
            )
        })?;
        Ok(())
    }

    fn poll_complete(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(Ok(self.pos))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncSeekExt};

    use super::*;

    /// Chunks from memory; the first `failures` loads fail.
    struct Flaky {
        chunks: Vec<Bytes>,
        failures: Arc<AtomicUsize>,
    }

    impl ChunkSource for Flaky {
        fn load(&self, chunk: ChunkMeta) -> BoxFuture<'static, Result<Bytes, Error>> {
            let failing = self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            let data = self
                .chunks
                .iter()
                .find(|c| B3Digest::from(blake3::hash(c)) == chunk.digest)
                .cloned();
            Box::pin(async move {
                if failing {
                    return Err(Error::Storage("flaky".into()));
                }
                data.ok_or(Error::NotFound {
                    what: "chunk",
                    digest: chunk.digest,
                })
            })
        }
    }

    /// The chunk list of `chunks`.
    fn metas_of(chunks: &[Bytes]) -> Vec<ChunkMeta> {
        chunks
            .iter()
            .map(|c| ChunkMeta {
                digest: B3Digest::from(blake3::hash(c)),
                size: c.len() as u64,
            })
            .collect()
    }

    #[tokio::test]
    async fn a_failed_load_is_retried_not_polled_again() {
        let chunks = vec![
            Bytes::from_static(b"first chunk "),
            Bytes::from_static(b"second"),
        ];
        let metas = metas_of(&chunks);
        let whole = B3Digest::from(blake3::hash(b"first chunk second"));
        let failures = Arc::new(AtomicUsize::new(1));
        let mut reader = ChunkedReader::new(
            Flaky {
                chunks,
                failures: failures.clone(),
            },
            whole,
            metas,
        );
        let mut buf = Vec::new();
        assert!(reader.read_to_end(&mut buf).await.is_err());
        // Reading on works: the failed load was dropped and made again.
        reader.seek(io::SeekFrom::Start(0)).await.unwrap();
        buf.clear();
        reader.read_to_end(&mut buf).await.unwrap();
        assert_eq!(buf, b"first chunk second");
    }

    /// Chunks from memory, recording which loads actually ran and which
    /// chunks were named as needed soon.
    struct Recording {
        chunks: Vec<Bytes>,
        ran: Arc<std::sync::Mutex<Vec<usize>>>,
        hinted: Arc<std::sync::Mutex<Vec<usize>>>,
        notify: Arc<tokio::sync::Notify>,
    }

    impl ChunkSource for Recording {
        fn load(&self, chunk: ChunkMeta) -> BoxFuture<'static, Result<Bytes, Error>> {
            let idx = self
                .chunks
                .iter()
                .position(|c| B3Digest::from(blake3::hash(c)) == chunk.digest);
            let data = idx.map(|i| self.chunks[i].clone());
            let (ran, notify) = (self.ran.clone(), self.notify.clone());
            start_now(async move {
                if let Some(i) = idx {
                    ran.lock().unwrap().push(i);
                }
                notify.notify_one();
                data.ok_or(Error::NotFound {
                    what: "chunk",
                    digest: chunk.digest,
                })
            })
        }

        fn will_need(&self, upcoming: &[ChunkMeta]) {
            let mut hinted = self.hinted.lock().unwrap();
            for c in upcoming {
                if let Some(i) = self
                    .chunks
                    .iter()
                    .position(|d| B3Digest::from(blake3::hash(d)) == c.digest)
                {
                    hinted.push(i);
                }
            }
        }
    }

    type Log = Arc<std::sync::Mutex<Vec<usize>>>;

    fn recording(n: usize) -> (ChunkedReader<Recording>, Log, Arc<tokio::sync::Notify>) {
        let (reader, ran, _, notify) = recording_hints(n);
        (reader, ran, notify)
    }

    fn recording_hints(n: usize) -> (ChunkedReader<Recording>, Log, Log, Arc<tokio::sync::Notify>) {
        let chunks: Vec<Bytes> = (0..n).map(|i| Bytes::from(vec![i as u8; 100])).collect();
        let metas = metas_of(&chunks);
        let whole = B3Digest::from(blake3::hash(&chunks.concat()));
        let ran = Arc::new(std::sync::Mutex::new(Vec::new()));
        let hinted = Arc::new(std::sync::Mutex::new(Vec::new()));
        let notify = Arc::new(tokio::sync::Notify::new());
        let source = Recording {
            chunks,
            ran: ran.clone(),
            hinted: hinted.clone(),
            notify: notify.clone(),
        };
        let reader = ChunkedReader::new(source, whole, metas);
        (reader, ran, hinted, notify)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sequential_reader_names_each_chunk_once_before_it_gets_there() {
        let (mut reader, _, hinted, _) = recording_hints(60);
        let mut buf = [0u8; 10];
        reader.read_exact(&mut buf).await.unwrap();
        // From its first read, the chunks past those it loads ahead.
        let first: Vec<usize> = (0..1 + AHEAD + HINT_AHEAD).collect();
        assert_eq!(*hinted.lock().unwrap(), first);
        // Half-way through that window, the next ones, and so on.
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest.len(), 60 * 100 - 10);
        assert_eq!(*hinted.lock().unwrap(), (0..60).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sequential_reader_loads_the_next_chunks_while_its_caller_works() {
        let (mut reader, ran, notify) = recording(6);
        let mut buf = [0u8; 10];
        reader.read_exact(&mut buf).await.unwrap();
        // The reader is not polled again, yet chunks 1 and 2 get loaded.
        let deadline = std::time::Duration::from_secs(10);
        tokio::time::timeout(deadline, async {
            while ran.lock().unwrap().len() < 1 + AHEAD {
                notify.notified().await;
            }
        })
        .await
        .expect("the chunks ahead were never loaded");
        let mut seen = ran.lock().unwrap().clone();
        seen.sort();
        assert_eq!(seen, vec![0, 1, 2]);
        // And the whole blob still reads back, each chunk loaded once.
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest.len(), 590);
        let mut seen = ran.lock().unwrap().clone();
        seen.sort();
        assert_eq!(seen, vec![0, 1, 2, 3, 4, 5]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_after_a_seek_loads_only_the_chunk_it_touches() {
        let (mut reader, ran, hinted, _) = recording_hints(6);
        reader.seek(io::SeekFrom::Start(350)).await.unwrap();
        let mut buf = [0u8; 10];
        reader.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, [3u8; 10]);
        // Give a wrongly started load ahead time to show up.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(*ran.lock().unwrap(), vec![3]);
        // Nor is anything named as needed: a random reader may never
        // come back.
        assert!(hinted.lock().unwrap().is_empty());
    }
}
