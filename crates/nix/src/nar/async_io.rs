//! Async NAR reader and writer over tokio's I/O traits.
//!
//! The same grammar and encoder as the sync side; only the I/O differs.
//! Needs no runtime of its own: any executor that polls tokio I/O types works.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf,
};

use super::grammar::{Event, Grammar, Need};
use super::writer::{Encoder, NarWriteError};
use super::{padding_len, Malformed, NarError, MAX_TARGET_LEN};

/// Async twin of [`super::NarReader`]: the same events, the same errors.
pub struct AsyncNarReader<R> {
    inner: R,
    grammar: Grammar,
    offset: u64,
    contents_left: u64,
    padding_owed: usize,
    token: Vec<u8>,
    failed: bool,
}

impl<R: AsyncBufRead + Unpin> AsyncNarReader<R> {
    /// A reader positioned before the magic.
    pub fn new(inner: R) -> Self {
        AsyncNarReader {
            inner,
            grammar: Grammar::new(),
            offset: 0,
            contents_left: 0,
            padding_owed: 0,
            token: Vec::with_capacity(MAX_TARGET_LEN + 1),
            failed: false,
        }
    }

    /// Bytes of the NAR consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next event, or `None` at the (verified) end of the archive.
    pub async fn next(&mut self) -> Result<Option<Event>, NarError> {
        if self.failed {
            return Err(self.invalid(Malformed::AfterError));
        }
        let result = self.advance().await;
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// The current file's remaining contents (after [`Event::File`]).
    pub fn contents(&mut self) -> AsyncContents<'_, R> {
        AsyncContents { reader: self }
    }

    /// Hands up to `max` bytes of the current file's contents to `take`
    /// straight from the source's buffer, for sources that can give that
    /// buffer away without copying it (owned pieces). `take` gets the
    /// source, whose buffer (as `poll_fill_buf` returned it) starts with
    /// the contents, and the number of bytes it must consume from it: at
    /// least one while contents remain, none once they are all read.
    /// A NAR that ends inside the contents is an error, as from
    /// [`contents`](Self::contents).
    pub async fn take_contents<T>(
        &mut self,
        max: usize,
        take: impl FnOnce(&mut R, usize) -> T,
    ) -> Result<T, NarError> {
        let n = {
            let mut contents = self.contents();
            let buffered = contents.fill_buf().await?;
            buffered.len().min(max)
        };
        let taken = take(&mut self.inner, n);
        self.offset += n as u64;
        self.contents_left -= n as u64;
        Ok(taken)
    }

    /// Consumes the reader, returning the source.
    pub fn into_inner(self) -> R {
        self.inner
    }

    fn invalid(&self, kind: Malformed) -> NarError {
        NarError::Invalid {
            offset: self.offset,
            kind,
        }
    }

    async fn advance(&mut self) -> Result<Option<Event>, NarError> {
        self.finish_contents().await?;
        loop {
            match self.grammar.need() {
                Need::End => {
                    return if self
                        .inner
                        .fill_buf()
                        .await
                        .map_err(NarError::Io)?
                        .is_empty()
                    {
                        Ok(None)
                    } else {
                        Err(self.invalid(Malformed::TrailingData))
                    };
                }
                Need::Contents => {
                    let size = self.read_u64().await?;
                    self.contents_left = size;
                    self.padding_owed = padding_len(size);
                    return Ok(Some(self.grammar.contents(size, self.offset)));
                }
                Need::Token { max } => {
                    let start = self.offset;
                    let len = self.read_u64().await?;
                    if len > max as u64 {
                        return Err(NarError::Invalid {
                            offset: start,
                            kind: self.grammar.too_long(len),
                        });
                    }
                    let mut token = std::mem::take(&mut self.token);
                    token.resize(len as usize, 0);
                    let mut event = self.read_exact(&mut token).await;
                    if event.is_ok() {
                        event = self.read_padding(padding_len(len)).await;
                    }
                    let event = event.and_then(|()| {
                        self.grammar
                            .token(&token)
                            .map_err(|kind| NarError::Invalid {
                                offset: start,
                                kind,
                            })
                    });
                    self.token = token;
                    if let Some(event) = event? {
                        return Ok(Some(event));
                    }
                }
            }
        }
    }

    async fn finish_contents(&mut self) -> Result<(), NarError> {
        while self.contents_left > 0 {
            let available = self.inner.fill_buf().await.map_err(NarError::Io)?.len();
            if available == 0 {
                return Err(self.invalid(Malformed::Truncated));
            }
            let n = available.min(self.contents_left.try_into().unwrap_or(usize::MAX));
            self.inner.consume(n);
            self.offset += n as u64;
            self.contents_left -= n as u64;
        }
        let pad = std::mem::take(&mut self.padding_owed);
        self.read_padding(pad).await
    }

    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), NarError> {
        match self.inner.read_exact(buf).await {
            Ok(_) => {
                self.offset += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(self.invalid(Malformed::Truncated))
            }
            Err(e) => Err(NarError::Io(e)),
        }
    }

    async fn read_u64(&mut self) -> Result<u64, NarError> {
        let mut buf = [0u8; 8];
        self.read_exact(&mut buf).await?;
        Ok(u64::from_le_bytes(buf))
    }

    async fn read_padding(&mut self, len: usize) -> Result<(), NarError> {
        let mut buf = [0u8; 8];
        let start = self.offset;
        self.read_exact(&mut buf[..len]).await?;
        if buf.iter().any(|&b| b != 0) {
            return Err(NarError::Invalid {
                offset: start,
                kind: Malformed::NonZeroPadding,
            });
        }
        Ok(())
    }
}

/// The unread contents of the current file, as `AsyncRead` + `AsyncBufRead`.
pub struct AsyncContents<'a, R> {
    reader: &'a mut AsyncNarReader<R>,
}

impl<R> AsyncContents<'_, R> {
    /// Bytes not yet read.
    pub fn remaining(&self) -> u64 {
        self.reader.contents_left
    }
}

impl<R: AsyncBufRead + Unpin> AsyncBufRead for AsyncContents<'_, R> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let r = &mut *self.get_mut().reader;
        if r.contents_left == 0 {
            return Poll::Ready(Ok(&[]));
        }
        let offset = r.offset;
        let left = r.contents_left;
        let failed = &mut r.failed;
        match Pin::new(&mut r.inner).poll_fill_buf(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok([])) => {
                *failed = true;
                Poll::Ready(Err(NarError::Invalid {
                    offset,
                    kind: Malformed::Truncated,
                }
                .into_io()))
            }
            Poll::Ready(Ok(buf)) => {
                let n = buf.len().min(left.try_into().unwrap_or(usize::MAX));
                Poll::Ready(Ok(&buf[..n]))
            }
        }
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let r = &mut *self.get_mut().reader;
        let amt = amt.min(r.contents_left.try_into().unwrap_or(usize::MAX));
        Pin::new(&mut r.inner).consume(amt);
        r.offset += amt as u64;
        r.contents_left -= amt as u64;
    }
}

impl<R: AsyncBufRead + Unpin> AsyncRead for AsyncContents<'_, R> {
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

/// Async twin of [`super::NarWriter`].
pub struct AsyncNarWriter<W> {
    out: W,
    enc: Encoder,
}

impl<W: AsyncWrite + Unpin> AsyncNarWriter<W> {
    /// Starts a NAR.
    pub fn new(out: W) -> Self {
        AsyncNarWriter {
            out,
            enc: Encoder::new(),
        }
    }

    async fn flush_queued(&mut self) -> io::Result<()> {
        self.out.write_all(&self.enc.buf).await?;
        self.enc.buf.clear();
        Ok(())
    }

    /// A regular file of `size` bytes read from `contents`.
    pub async fn file(
        &mut self,
        executable: bool,
        size: u64,
        contents: &mut (impl AsyncRead + Unpin),
    ) -> Result<(), NarWriteError> {
        self.enc.file_header(executable, size)?;
        self.flush_queued().await?;
        let copied = tokio::io::copy(&mut contents.take(size), &mut self.out).await?;
        if copied != size {
            return Err(NarWriteError::SizeMismatch {
                expected: size,
                actual: copied,
            });
        }
        self.enc.file_trailer(size);
        self.maybe_flush().await
    }

    async fn maybe_flush(&mut self) -> Result<(), NarWriteError> {
        if self.enc.buf.len() >= super::writer::QUEUE_LIMIT {
            self.flush_queued().await?;
        }
        Ok(())
    }

    /// A symbolic link.
    pub async fn symlink(&mut self, target: &[u8]) -> Result<(), NarWriteError> {
        self.enc.symlink(target)?;
        self.maybe_flush().await
    }

    /// Opens a directory.
    pub async fn directory(&mut self) -> Result<(), NarWriteError> {
        self.enc.directory()?;
        self.maybe_flush().await
    }

    /// Names the next node inside the open directory.
    pub async fn entry(&mut self, name: &[u8]) -> Result<(), NarWriteError> {
        self.enc.entry(name)?;
        self.maybe_flush().await
    }

    /// Closes the innermost open directory.
    pub async fn end_directory(&mut self) -> Result<(), NarWriteError> {
        self.enc.end_directory()?;
        self.maybe_flush().await
    }

    /// Checks completeness, flushes and returns the destination.
    pub async fn finish(mut self) -> Result<W, NarWriteError> {
        self.enc.check_done()?;
        self.flush_queued().await?;
        self.out.flush().await?;
        Ok(self.out)
    }
}
