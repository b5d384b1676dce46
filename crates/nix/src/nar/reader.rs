//! Pull-based NAR reader over any `BufRead`.

use std::io::{self, BufRead, Read};

use super::grammar::{Event, Grammar, Need};
use super::{padding_len, Malformed, NarError, MAX_TARGET_LEN};

/// Reads a NAR one [`Event`] at a time.
///
/// After an [`Event::File`], the file's bytes can be read through
/// [`NarReader::contents`]; whatever the caller leaves unread is skipped by
/// the next call to [`NarReader::next`]. `next` returns `Ok(None)` once the
/// archive is complete and the input is exhausted (trailing bytes are an
/// error). Memory use is constant: one token buffer of at most 4 KiB.
pub struct NarReader<R> {
    inner: R,
    grammar: Grammar,
    offset: u64,
    contents_left: u64,
    padding_owed: usize,
    token: Vec<u8>,
    failed: bool,
}

impl<R: BufRead> NarReader<R> {
    /// A reader positioned before the magic.
    pub fn new(inner: R) -> Self {
        NarReader {
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
    #[allow(clippy::should_implement_trait)] // fallible, borrows: not an Iterator
    pub fn next(&mut self) -> Result<Option<Event>, NarError> {
        if self.failed {
            return Err(self.invalid(Malformed::AfterError));
        }
        let result = self.advance();
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// Reads the current file's remaining contents. Only meaningful right
    /// after [`Event::File`]; reads nothing otherwise.
    pub fn contents(&mut self) -> Contents<'_, R> {
        Contents { reader: self }
    }

    /// Consumes the reader, returning the source (positioned after what was read).
    pub fn into_inner(self) -> R {
        self.inner
    }

    fn advance(&mut self) -> Result<Option<Event>, NarError> {
        self.finish_contents()?;
        loop {
            match self.grammar.need() {
                Need::End => {
                    return if self.inner.fill_buf().map_err(NarError::Io)?.is_empty() {
                        Ok(None)
                    } else {
                        Err(self.invalid(Malformed::TrailingData))
                    };
                }
                Need::Contents => {
                    let size = self.read_u64()?;
                    self.contents_left = size;
                    self.padding_owed = padding_len(size);
                    return Ok(Some(self.grammar.contents(size, self.offset)));
                }
                Need::Token { max } => {
                    let start = self.offset;
                    let len = self.read_u64()?;
                    if len > max as u64 {
                        return Err(NarError::Invalid {
                            offset: start,
                            kind: self.grammar.too_long(len),
                        });
                    }
                    let mut token = std::mem::take(&mut self.token);
                    token.resize(len as usize, 0);
                    let read = self.read_exact(&mut token);
                    let event = read.and_then(|()| {
                        self.read_padding(padding_len(len))?;
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

    fn invalid(&self, kind: Malformed) -> NarError {
        NarError::Invalid {
            offset: self.offset,
            kind,
        }
    }

    /// Skips unread contents of the current file and checks its padding.
    fn finish_contents(&mut self) -> Result<(), NarError> {
        while self.contents_left > 0 {
            let available = self.inner.fill_buf().map_err(NarError::Io)?.len();
            if available == 0 {
                return Err(self.invalid(Malformed::Truncated));
            }
            let n = available.min(self.contents_left.try_into().unwrap_or(usize::MAX));
            self.inner.consume(n);
            self.offset += n as u64;
            self.contents_left -= n as u64;
        }
        let pad = std::mem::take(&mut self.padding_owed);
        self.read_padding(pad)
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), NarError> {
        match self.inner.read_exact(buf) {
            Ok(()) => {
                self.offset += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(self.invalid(Malformed::Truncated))
            }
            Err(e) => Err(NarError::Io(e)),
        }
    }

    fn read_u64(&mut self) -> Result<u64, NarError> {
        let mut buf = [0u8; 8];
        self.read_exact(&mut buf)?;
        Ok(u64::from_le_bytes(buf))
    }

    fn read_padding(&mut self, len: usize) -> Result<(), NarError> {
        let mut buf = [0u8; 8];
        let start = self.offset;
        self.read_exact(&mut buf[..len])?;
        if buf.iter().any(|&b| b != 0) {
            return Err(NarError::Invalid {
                offset: start,
                kind: Malformed::NonZeroPadding,
            });
        }
        Ok(())
    }
}

/// The unread contents of the current file, as `Read` and `BufRead`.
///
/// Errors (a truncated NAR) surface as `io::Error`s that convert back into
/// the precise [`NarError`] with `NarError::from`.
pub struct Contents<'a, R> {
    reader: &'a mut NarReader<R>,
}

impl<R> Contents<'_, R> {
    /// Bytes not yet read.
    pub fn remaining(&self) -> u64 {
        self.reader.contents_left
    }
}

impl<R: BufRead> BufRead for Contents<'_, R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        let r = &mut *self.reader;
        if r.contents_left == 0 {
            return Ok(&[]);
        }
        let offset = r.offset;
        let left = r.contents_left;
        let buf = r.inner.fill_buf()?;
        if buf.is_empty() {
            r.failed = true;
            return Err(NarError::Invalid {
                offset,
                kind: Malformed::Truncated,
            }
            .into_io());
        }
        let n = buf.len().min(left.try_into().unwrap_or(usize::MAX));
        Ok(&buf[..n])
    }

    fn consume(&mut self, amt: usize) {
        let r = &mut *self.reader;
        let amt = amt.min(r.contents_left.try_into().unwrap_or(usize::MAX));
        r.inner.consume(amt);
        r.offset += amt as u64;
        r.contents_left -= amt as u64;
    }
}

impl<R: BufRead> Read for Contents<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}
