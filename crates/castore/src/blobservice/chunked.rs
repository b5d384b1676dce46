//! A seekable reader over a blob stored as a list of chunks, for any
//! backend that can load one chunk: the local pack files and a remote
//! daemon alike.
//!
//! One chunk is held and the next one loaded ahead. Every chunk is checked
//! to have the size its list says (its bytes are the loader's to verify);
//! a read from the start to the end also checks the whole blob's digest
//! before it reports the end, so a wrong list cannot pass unnoticed.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncSeek, ReadBuf};

use super::ChunkMeta;
use crate::{B3Digest, Error};

/// Where a [`ChunkedReader`] gets its chunks.
pub trait ChunkSource: Send + Sync + 'static {
    /// Loads one chunk, verified against its digest.
    fn load(&self, chunk: ChunkMeta) -> BoxFuture<'static, Result<Bytes, Error>>;
    /// The error for a list whose chunks hash, together, to `actual`
    /// instead of the blob's `digest` (naming where the list came from).
    fn wrong_list(&self, digest: B3Digest, actual: B3Digest) -> Error {
        Error::Integrity {
            digest,
            detail: format!("chunks concatenate to {actual}"),
        }
    }
}

/// Reads a blob from its chunk list; see the module documentation.
pub struct ChunkedReader<S> {
    source: S,
    digest: B3Digest,
    chunks: Vec<ChunkMeta>,
    starts: Vec<u64>,
    size: u64,
    pos: u64,
    current: Option<(usize, Bytes)>,
    loading: Option<(usize, BoxFuture<'static, Result<Bytes, Error>>)>,
    ahead: Option<(usize, BoxFuture<'static, Result<Bytes, Error>>)>,
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
            current: None,
            loading: None,
            ahead: None,
            whole: Some(blake3::Hasher::new()),
            whole_upto: 0,
        }
    }

    fn load(&self, idx: usize) -> BoxFuture<'static, Result<Bytes, Error>> {
        self.source.load(self.chunks[idx])
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
                    if this.ahead.is_none() && idx + 1 < this.chunks.len() {
                        this.ahead = Some((idx + 1, this.load(idx + 1)));
                    }
                    return Poll::Ready(Ok(()));
                }
            }
            if this.loading.as_ref().is_none_or(|(i, _)| *i != idx) {
                this.loading = match this.ahead.take() {
                    Some((i, f)) if i == idx => Some((i, f)),
                    _ => Some((idx, this.load(idx))),
                };
            }
            let Some((_, fut)) = this.loading.as_mut() else {
                continue;
            };
            let loaded = match fut.as_mut().poll(cx) {
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

    #[tokio::test]
    async fn a_failed_load_is_retried_not_polled_again() {
        let chunks = vec![
            Bytes::from_static(b"first chunk "),
            Bytes::from_static(b"second"),
        ];
        let metas = chunks
            .iter()
            .map(|c| ChunkMeta {
                digest: B3Digest::from(blake3::hash(c)),
                size: c.len() as u64,
            })
            .collect();
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
}
