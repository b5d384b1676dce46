//! NAR writers: a shared encoder that validates call order and names, and
//! the sync writer over `std::io::Write`.

use std::io::{self, Read, Write};

use thiserror::Error;

use super::{
    check_order, padding_len, validate_entry_name, validate_symlink_target, Malformed, MAGIC,
};

/// Why a NAR could not be written.
#[derive(Debug, Error)]
pub enum NarWriteError {
    /// The destination or a content source failed.
    #[error("writing NAR: {0}")]
    Io(#[from] io::Error),
    /// A name or target that no valid NAR may contain, or entries out of order.
    #[error("cannot write NAR: {0}")]
    Invalid(#[from] Malformed),
    /// A file's source yielded a different number of bytes than announced
    /// (typically: the file changed while being archived).
    #[error("file contents changed while writing: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// Announced size.
        expected: u64,
        /// Bytes the source produced.
        actual: u64,
    },
    /// Calls out of grammar order (a bug in the caller).
    #[error("NAR writer misuse: {0}")]
    Misuse(&'static str),
}

/// Files up to this size are copied into the output queue, not streamed.
const SMALL_FILE: u64 = 32 * 1024;
/// Buffer for streaming large file contents.
const COPY_BUFFER: usize = 64 * 1024;
/// Queued output is written once it reaches this size.
pub(crate) const QUEUE_LIMIT: usize = 64 * 1024;

/// Appends a length-prefixed, zero-padded string.
pub(crate) fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
    out.extend_from_slice(&[0u8; 8][..padding_len(s.len() as u64)]);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Node,
    EntryOrEnd,
    Done,
}

/// The grammar side of writing, with no I/O: what may come next, and the
/// bytes of each structural piece. Sync and async writers add the I/O;
/// other users (a seekable renderer that must know every offset without
/// reading file contents) take the bytes with [`Encoder::take_output`] and
/// place the contents themselves between a file's header and trailer.
#[derive(Debug)]
pub struct Encoder {
    expect: Expect,
    /// Last entry name of each open directory (empty: none yet).
    open_dirs: Vec<Vec<u8>>,
    /// Bytes queued for output.
    pub(crate) buf: Vec<u8>,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    /// An encoder whose output starts with the NAR magic.
    pub fn new() -> Self {
        let mut buf = Vec::with_capacity(256);
        put_str(&mut buf, MAGIC);
        Encoder {
            expect: Expect::Node,
            open_dirs: Vec::new(),
            buf,
        }
    }

    fn want(&self, e: Expect, what: &'static str) -> Result<(), NarWriteError> {
        if self.expect == e {
            Ok(())
        } else {
            Err(NarWriteError::Misuse(what))
        }
    }

    fn node_done(&mut self) {
        if self.open_dirs.is_empty() {
            self.expect = Expect::Done;
        } else {
            put_str(&mut self.buf, b")");
            self.expect = Expect::EntryOrEnd;
        }
    }

    /// Bytes produced since the last call.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Everything up to a regular file's contents, which must follow.
    pub fn file_header(&mut self, executable: bool, size: u64) -> Result<(), NarWriteError> {
        self.want(Expect::Node, "a file where no node may start")?;
        for t in [&b"("[..], b"type", b"regular"] {
            put_str(&mut self.buf, t);
        }
        if executable {
            put_str(&mut self.buf, b"executable");
            put_str(&mut self.buf, b"");
        }
        put_str(&mut self.buf, b"contents");
        self.buf.extend_from_slice(&size.to_le_bytes());
        Ok(())
    }

    /// Everything after the contents of a file of `size` bytes.
    pub fn file_trailer(&mut self, size: u64) {
        self.buf.extend_from_slice(&[0u8; 8][..padding_len(size)]);
        put_str(&mut self.buf, b")");
        self.node_done();
    }

    /// A symlink node.
    pub fn symlink(&mut self, target: &[u8]) -> Result<(), NarWriteError> {
        self.want(Expect::Node, "a symlink where no node may start")?;
        validate_symlink_target(target)?;
        for t in [&b"("[..], b"type", b"symlink", b"target", target, b")"] {
            put_str(&mut self.buf, t);
        }
        self.node_done();
        Ok(())
    }

    /// The start of a directory node.
    pub fn directory(&mut self) -> Result<(), NarWriteError> {
        self.want(Expect::Node, "a directory where no node may start")?;
        for t in [&b"("[..], b"type", b"directory"] {
            put_str(&mut self.buf, t);
        }
        self.open_dirs.push(Vec::new());
        self.expect = Expect::EntryOrEnd;
        Ok(())
    }

    /// The start of a directory entry; its node follows.
    pub fn entry(&mut self, name: &[u8]) -> Result<(), NarWriteError> {
        self.want(Expect::EntryOrEnd, "an entry outside a directory")?;
        validate_entry_name(name)?;
        let last = self
            .open_dirs
            .last_mut()
            .ok_or(NarWriteError::Misuse("an entry outside a directory"))?;
        if !last.is_empty() {
            check_order(last, name)?;
        }
        last.clear();
        last.extend_from_slice(name);
        for t in [&b"entry"[..], b"(", b"name", name, b"node"] {
            put_str(&mut self.buf, t);
        }
        self.expect = Expect::Node;
        Ok(())
    }

    /// The end of the innermost open directory.
    pub fn end_directory(&mut self) -> Result<(), NarWriteError> {
        self.want(Expect::EntryOrEnd, "end of a directory that is not open")?;
        self.open_dirs.pop();
        put_str(&mut self.buf, b")");
        self.node_done();
        Ok(())
    }

    /// Checks that the root node is complete.
    pub fn check_done(&self) -> Result<(), NarWriteError> {
        self.want(Expect::Done, "finish before the root node is complete")
    }
}

/// Writes a NAR to any `Write`, node by node, in archive order.
///
/// Entries must be added in strictly ascending byte order; names and
/// targets are validated, so the output is always a NAR that Cairn's own
/// reader accepts. Structural tokens and small files are batched into one
/// queue; large file contents stream through a reused 128 KiB buffer.
pub struct NarWriter<W: Write> {
    out: W,
    enc: Encoder,
    /// Reused for large file contents, allocated on first use.
    copy_buf: Vec<u8>,
    /// Set by any error: the output may hold half a node, so nothing more
    /// may be appended to it.
    failed: bool,
    /// The output's file descriptor, when the caller offered it: file
    /// contents can then move in the kernel (sendfile), without a copy.
    out_fd: Option<std::os::fd::OwnedFd>,
}

impl<W: Write> NarWriter<W> {
    /// Starts a NAR (the magic is written with the first node).
    pub fn new(out: W) -> Self {
        NarWriter {
            out,
            enc: Encoder::new(),
            copy_buf: Vec::new(),
            failed: false,
            out_fd: None,
        }
    }

    /// Lets [`NarWriter::file_from`] hand file contents to the kernel:
    /// `fd` must refer to the same file or pipe that `out` writes to.
    pub fn with_output_fd(mut self, fd: std::os::fd::OwnedFd) -> Self {
        self.out_fd = Some(fd);
        self
    }

    /// A regular file read from an open file. With an output fd (see
    /// [`NarWriter::with_output_fd`]) large contents go file → output inside
    /// the kernel; otherwise this is [`NarWriter::file`].
    pub fn file_from(
        &mut self,
        executable: bool,
        size: u64,
        file: &mut std::fs::File,
    ) -> Result<(), NarWriteError> {
        if self.out_fd.is_none() || size <= SMALL_FILE {
            return self.file(executable, size, file);
        }
        self.guard(|w| {
            w.enc.file_header(executable, size)?;
            w.flush_queued()?;
            w.out.flush()?;
            let copied = w.send_file(file, size)?;
            if copied != size {
                return Err(NarWriteError::SizeMismatch {
                    expected: size,
                    actual: copied,
                });
            }
            w.enc.file_trailer(size);
            w.maybe_flush()
        })
    }

    fn send_file(&mut self, file: &mut std::fs::File, size: u64) -> io::Result<u64> {
        let mut copied = 0u64;
        while copied < size {
            let Some(out) = &self.out_fd else { break };
            let want = (size - copied).min(1 << 30) as usize;
            match rustix::fs::sendfile(out, &*file, None, want) {
                Ok(0) => break,
                Ok(n) => copied += n as u64,
                Err(rustix::io::Errno::INTR) | Err(rustix::io::Errno::AGAIN) => {}
                // Not possible between these two (e.g. a socket type the
                // kernel refuses): carry on in user space from here.
                Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOSYS) if copied == 0 => {
                    self.out_fd = None;
                    return self.copy_large(&mut Read::take(&mut *file, size));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(copied)
    }

    fn flush_queued(&mut self) -> io::Result<()> {
        self.out.write_all(&self.enc.buf)?;
        self.enc.buf.clear();
        Ok(())
    }

    /// A regular file of `size` bytes read from `contents`, which must yield
    /// exactly that many bytes.
    pub fn file(
        &mut self,
        executable: bool,
        size: u64,
        contents: &mut impl Read,
    ) -> Result<(), NarWriteError> {
        self.guard(|w| w.file_inner(executable, size, contents))
    }

    /// Runs one step; any error poisons the writer.
    fn guard<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, NarWriteError>,
    ) -> Result<T, NarWriteError> {
        if self.failed {
            return Err(NarWriteError::Misuse(
                "the writer failed earlier; its output is incomplete",
            ));
        }
        let r = f(self);
        // Refused names and misuse are caught before any byte is queued;
        // I/O errors and short sources may leave half a node behind.
        self.failed = matches!(
            r,
            Err(NarWriteError::Io(_) | NarWriteError::SizeMismatch { .. })
        );
        r
    }

    fn file_inner(
        &mut self,
        executable: bool,
        size: u64,
        contents: &mut impl Read,
    ) -> Result<(), NarWriteError> {
        self.enc.file_header(executable, size)?;
        let mut source = (&mut *contents).take(size);
        let copied = if size <= SMALL_FILE {
            // Small files join the queued structure: one write for many
            // files, and (for a regular file) one read each.
            let start = self.enc.buf.len();
            self.enc.buf.resize(start + size as usize, 0);
            let mut filled = 0;
            while filled < size as usize {
                match source.read(&mut self.enc.buf[start + filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
            self.enc.buf.truncate(start + filled);
            filled as u64
        } else {
            self.flush_queued()?;
            self.copy_large(&mut source)?
        };
        if copied != size {
            return Err(NarWriteError::SizeMismatch {
                expected: size,
                actual: copied,
            });
        }
        self.enc.file_trailer(size);
        self.maybe_flush()
    }

    /// Streams contents through one reused buffer straight into the output:
    /// large enough for few syscalls, small enough to stay in cache.
    fn copy_large(&mut self, source: &mut impl Read) -> io::Result<u64> {
        if self.copy_buf.is_empty() {
            self.copy_buf = vec![0; COPY_BUFFER];
        }
        let mut copied = 0u64;
        loop {
            let n = match source.read(&mut self.copy_buf) {
                Ok(0) => return Ok(copied),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.out.write_all(&self.copy_buf[..n])?;
            copied += n as u64;
        }
    }

    /// A regular file whose contents are in memory.
    pub fn file_bytes(&mut self, executable: bool, contents: &[u8]) -> Result<(), NarWriteError> {
        let mut src = contents;
        self.file(executable, contents.len() as u64, &mut src)
    }

    /// A symbolic link.
    pub fn symlink(&mut self, target: &[u8]) -> Result<(), NarWriteError> {
        self.guard(|w| {
            w.enc.symlink(target)?;
            w.maybe_flush()
        })
    }

    /// Opens a directory; follow with `entry` + node pairs, then `end_directory`.
    pub fn directory(&mut self) -> Result<(), NarWriteError> {
        self.guard(|w| {
            w.enc.directory()?;
            w.maybe_flush()
        })
    }

    /// Names the next node inside the open directory.
    pub fn entry(&mut self, name: &[u8]) -> Result<(), NarWriteError> {
        self.guard(|w| {
            w.enc.entry(name)?;
            w.maybe_flush()
        })
    }

    /// Closes the innermost open directory.
    pub fn end_directory(&mut self) -> Result<(), NarWriteError> {
        self.guard(|w| {
            w.enc.end_directory()?;
            w.maybe_flush()
        })
    }

    /// Checks the archive is complete, flushes, and returns the destination.
    pub fn finish(mut self) -> Result<W, NarWriteError> {
        if self.failed {
            return Err(NarWriteError::Misuse(
                "the writer failed earlier; its output is incomplete",
            ));
        }
        self.enc.check_done()?;
        self.flush_queued()?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// Structural bytes are queued so that a tree of small files costs few
    /// writes even on an unbuffered destination.
    fn maybe_flush(&mut self) -> Result<(), NarWriteError> {
        if self.enc.buf.len() >= QUEUE_LIMIT {
            self.flush_queued()?;
        }
        Ok(())
    }
}
