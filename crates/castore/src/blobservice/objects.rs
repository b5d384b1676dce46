//! `objects:///PATH`: blobs as content-addressed files on a local disk.
//!
//! Layout under PATH:
//! - `chunks/<2 hex>/<64 hex>`: one file per chunk, named by the BLAKE3 of
//!   its uncompressed bytes; a one-byte tag (0 raw, 1 zstd) then the data.
//! - `blobs/<2 hex>/<64 hex>`: the chunk list of a blob made of more than
//!   one chunk (a blob of one chunk is that chunk's file).
//! - `tmp/`: files being written. Everything is written there and renamed
//!   into place complete, so a killed writer leaves only temp files, never
//!   a partial object under its final name.
//!
//! Why files and not a database: chunks are large, immutable and never
//! updated; the filesystem stores them with no write amplification, `cp`
//! and `rsync` back them up, and any number of processes can read and
//! write concurrently because same name means same bytes.

use std::collections::HashSet;
use std::fs;
use std::future::Future;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncSeek, ReadBuf};
use tokio::task::JoinHandle;

use super::chunker;
use super::ingest::{fill, has_more, FileIngestError, READ_PIECE};
use super::{BlobReader, BlobService, BlobWriter, ChunkMeta};
use crate::gc::GcReport;
use crate::util::blocking;
use crate::{B3Digest, Error};

/// How chunk files are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// As they are.
    #[default]
    None,
    /// zstd, kept only where it saves space.
    Zstd,
}

enum UnnamedError {
    Unsupported,
    Io(io::Error),
}

const TAG_RAW: u8 = 0;
const TAG_ZSTD: u8 = 1;
const LIST_MAGIC: &[u8; 8] = b"cairnbl1";
/// Blobs up to this size are stored whole, as one chunk: small files only
/// ever dedup as whole files anyway, and one object per file keeps imports
/// of many small files cheap. Larger blobs are cut by content (FastCDC).
const WHOLE_BLOB_MAX: usize = 1024 * 1024;

struct Inner {
    root: PathBuf,
    compression: Compression,
    tmp_counter: AtomicU64,
    pid: u32,
}

/// Blobs and chunks as files below a directory.
#[derive(Clone)]
pub struct ObjectsBlobService {
    inner: Arc<Inner>,
}

impl ObjectsBlobService {
    /// Opens (creating if needed) an object directory.
    pub fn open(root: &Path, compression: Compression) -> Result<Self, Error> {
        // Shard directories are made on first use: a small store does not
        // pay for 512 mkdirs it may never need.
        for sub in ["chunks", "blobs", "tmp"] {
            fs::create_dir_all(root.join(sub))?;
        }
        clean_stale_temp_files(&root.join("tmp"));
        Ok(ObjectsBlobService {
            inner: Arc::new(Inner {
                root: root.to_owned(),
                compression,
                tmp_counter: AtomicU64::new(0),
                pid: std::process::id(),
            }),
        })
    }
}

/// Reads a file expected to be `len` bytes long: one `read` of `len + 1`
/// bytes, which for a regular file comes back short only at its end. A
/// file that turns out longer is read whole the ordinary way.
fn read_expecting(path: &Path, len: usize) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = fs::File::open(path)?;
    let mut buf = vec![0u8; len + 1];
    let n = loop {
        match file.read(&mut buf) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    };
    if n <= len {
        buf.truncate(n);
        return Ok(buf);
    }
    buf.truncate(n);
    file.read_to_end(&mut buf)?;
    Ok(buf)
}

/// Sets `path`'s modification time to now; `false` if it does not exist.
/// The time is what garbage collection's grace period is measured from, so
/// an object a writer reuses counts as new.
fn freshen(path: &Path) -> io::Result<bool> {
    use rustix::fs::{AtFlags, Timespec, Timestamps, UTIME_NOW};
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: UTIME_NOW,
    };
    let times = Timestamps {
        last_access: now,
        last_modification: now,
    };
    match rustix::fs::utimensat(rustix::fs::CWD, path, &times, AtFlags::empty()) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::NOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Temp files older than a day belong to writers that died; younger ones
/// may belong to a writer in another process.
fn clean_stale_temp_files(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    let day = std::time::Duration::from_secs(24 * 3600);
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > day);
        if old {
            let _ = fs::remove_file(e.path());
        }
    }
}

impl Inner {
    fn object_path(&self, kind: &str, digest: &B3Digest) -> PathBuf {
        let hex = digest.to_hex();
        self.root.join(kind).join(&hex[..2]).join(hex)
    }

    fn temp_path(&self) -> PathBuf {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        self.root.join("tmp").join(format!("{}-{n}", self.pid))
    }

    /// Writes `contents` under `kind/<digest>` so that the name appears only
    /// with the complete contents: an unnamed file (O_TMPFILE) in the shard
    /// directory linked into place, or where that is unsupported, a temp
    /// file renamed into place.
    fn write_object(&self, kind: &str, digest: &B3Digest, contents: &[&[u8]]) -> Result<(), Error> {
        let dest = self.object_path(kind, digest);
        let failed = |e: io::Error| Error::Storage(format!("writing {}: {e}", dest.display()));
        match self.write_unnamed(&dest, contents) {
            Ok(()) => return Ok(()),
            Err(UnnamedError::Unsupported) => {}
            Err(UnnamedError::Io(e)) => return Err(failed(e)),
        }
        let tmp = self.temp_path();
        let result = (|| -> io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            for part in contents {
                f.write_all(part)?;
            }
            drop(f);
            if let Some(shard) = dest.parent() {
                fs::create_dir_all(shard)?;
            }
            fs::rename(&tmp, &dest)?;
            freshen(&dest).map(|_| ())
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(failed(e));
        }
        Ok(())
    }

    fn write_unnamed(&self, dest: &Path, contents: &[&[u8]]) -> Result<(), UnnamedError> {
        use rustix::fs::{AtFlags, Mode, OFlags};
        let dir = dest.parent().ok_or(UnnamedError::Unsupported)?;
        let flags = OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC;
        let mode = Mode::from_raw_mode(0o644);
        let opened = match rustix::fs::open(dir, flags, mode) {
            Err(rustix::io::Errno::NOENT) => {
                fs::create_dir_all(dir).map_err(UnnamedError::Io)?;
                rustix::fs::open(dir, flags, mode)
            }
            other => other,
        };
        let fd = match opened {
            Ok(fd) => fd,
            Err(e)
                if e == rustix::io::Errno::OPNOTSUPP
                    || e == rustix::io::Errno::ISDIR
                    || e == rustix::io::Errno::INVAL =>
            {
                return Err(UnnamedError::Unsupported)
            }
            Err(e) => return Err(UnnamedError::Io(e.into())),
        };
        let mut f = fs::File::from(fd);
        // One write per object: the parts are small next to a syscall.
        let joined;
        let whole: &[u8] = match contents {
            [one] => one,
            parts => {
                joined = parts.concat();
                &joined
            }
        };
        f.write_all(whole).map_err(UnnamedError::Io)?;
        let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&f));
        match rustix::fs::linkat(
            rustix::fs::CWD,
            proc_path.as_str(),
            rustix::fs::CWD,
            dest,
            AtFlags::SYMLINK_FOLLOW,
        ) {
            Ok(()) => Ok(()),
            // Another writer stored the same bytes first (see freshen).
            Err(rustix::io::Errno::EXIST) => freshen(dest).map(|_| ()).map_err(UnnamedError::Io),
            Err(rustix::io::Errno::NOENT) if !Path::new("/proc/self/fd").exists() => {
                Err(UnnamedError::Unsupported)
            }
            Err(e) => Err(UnnamedError::Io(e.into())),
        }
    }

    fn write_chunk(&self, data: &[u8]) -> Result<ChunkMeta, Error> {
        self.write_chunk_as(data, B3Digest::of(data))
    }

    /// Writes a chunk whose digest the caller has already computed.
    fn write_chunk_as(&self, data: &[u8], digest: B3Digest) -> Result<ChunkMeta, Error> {
        let meta = ChunkMeta {
            digest,
            size: data.len() as u64,
        };
        // Already stored: reuse it, and mark it recently used so that a
        // garbage collection running now does not take it away.
        if freshen(&self.object_path("chunks", &digest)).map_err(Error::Io)? {
            return Ok(meta);
        }
        if self.compression == Compression::Zstd {
            let packed = zstd::bulk::compress(data, 3).map_err(Error::Io)?;
            if packed.len() < data.len() {
                self.write_object("chunks", &digest, &[&[TAG_ZSTD], &packed])?;
                return Ok(meta);
            }
        }
        self.write_object("chunks", &digest, &[&[TAG_RAW], data])?;
        Ok(meta)
    }

    /// Reads a chunk and checks it hashes to its name.
    fn read_chunk(&self, digest: &B3Digest) -> Result<Option<Bytes>, Error> {
        self.read_chunk_sized(digest, None)
    }

    /// Reads a chunk and checks it hashes to its name. With the expected
    /// (uncompressed) size, a raw chunk file is read in one `read` call
    /// with no `stat`: the cost per small file is what makes or breaks
    /// exporting trees of many.
    fn read_chunk_sized(
        &self,
        digest: &B3Digest,
        expected: Option<u64>,
    ) -> Result<Option<Bytes>, Error> {
        let path = self.object_path("chunks", digest);
        let read = match expected.and_then(|n| usize::try_from(n).ok()) {
            Some(n) => read_expecting(&path, n + 1),
            None => fs::read(&path),
        };
        let raw = match read {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::Io(e)),
        };
        let corrupt = |detail: String| Error::Integrity {
            digest: *digest,
            detail: format!("chunk file {}: {detail}", path.display()),
        };
        let data = match raw.first() {
            // Raw contents are the file after its tag: no copy.
            Some(&TAG_RAW) => Bytes::from(raw).slice(1..),
            Some(&TAG_ZSTD) => Bytes::from(
                zstd::stream::decode_all(&raw[1..]).map_err(|e| corrupt(format!("zstd: {e}")))?,
            ),
            Some(tag) => return Err(corrupt(format!("unknown format tag {tag}"))),
            None => return Err(corrupt("empty file".into())),
        };
        let actual = B3Digest::of(&data);
        if actual != *digest {
            return Err(corrupt(format!("contents hash to {actual}")));
        }
        Ok(Some(data))
    }

    /// A chunked blob's whole contents, each chunk and the whole verified.
    fn read_chunked(&self, digest: &B3Digest, list: &[ChunkMeta]) -> Result<Bytes, Error> {
        let mut out = Vec::with_capacity(list.iter().map(|c| c.size as usize).sum());
        for c in list {
            let data = self
                .read_chunk_sized(&c.digest, Some(c.size))?
                .ok_or(Error::NotFound {
                    what: "chunk",
                    digest: c.digest,
                })?;
            out.extend_from_slice(&data);
        }
        let actual = B3Digest::of(&out);
        if actual != *digest {
            return Err(Error::Integrity {
                digest: *digest,
                detail: format!("chunks concatenate to {actual}"),
            });
        }
        Ok(Bytes::from(out))
    }

    fn write_list(&self, digest: &B3Digest, chunks: &[ChunkMeta]) -> Result<(), Error> {
        let mut body = Vec::with_capacity(8 + chunks.len() * 40 + 32);
        body.extend_from_slice(LIST_MAGIC);
        for c in chunks {
            body.extend_from_slice(c.digest.as_bytes());
            body.extend_from_slice(&c.size.to_le_bytes());
        }
        // A checksum of the list itself: a damaged list is detected, not followed.
        let check = B3Digest::of(&body);
        self.write_object("blobs", digest, &[&body, check.as_bytes()])
    }

    fn read_list(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        let path = self.object_path("blobs", digest);
        let raw = match fs::read(&path) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::Io(e)),
        };
        let corrupt = |detail: &str| Error::Integrity {
            digest: *digest,
            detail: format!("chunk list {}: {detail}", path.display()),
        };
        if raw.len() < 8 + 32 || (raw.len() - 8 - 32) % 40 != 0 || &raw[..8] != LIST_MAGIC {
            return Err(corrupt("malformed"));
        }
        let (body, check) = raw.split_at(raw.len() - 32);
        if B3Digest::of(body).as_bytes() != check {
            return Err(corrupt("checksum mismatch"));
        }
        let chunks = body[8..]
            .chunks_exact(40)
            .map(|rec| {
                let mut d = [0u8; 32];
                d.copy_from_slice(&rec[..32]);
                let mut s = [0u8; 8];
                s.copy_from_slice(&rec[32..]);
                ChunkMeta {
                    digest: B3Digest::from(d),
                    size: u64::from_le_bytes(s),
                }
            })
            .collect();
        Ok(Some(chunks))
    }
}

impl Inner {
    /// Every chunk file hashes to its name; every chunk list is intact and
    /// its chunks exist with the sizes it records.
    fn verify_all(&self) -> Result<super::VerifyReport, Error> {
        let mut report = super::VerifyReport::default();
        for (kind, path, digest) in self.list_objects()? {
            report.checked += 1;
            let problem = match kind {
                "chunks" => match self.read_chunk(&digest) {
                    Ok(Some(_)) => None,
                    Ok(None) => Some("vanished".to_owned()),
                    Err(e) => Some(e.to_string()),
                },
                _ => match self.read_list(&digest) {
                    Ok(Some(list)) => list.iter().find_map(|c| match self.read_chunk(&c.digest) {
                        Ok(Some(data)) if data.len() as u64 == c.size => None,
                        Ok(Some(data)) => Some(format!(
                            "chunk {} has {} bytes, list says {}",
                            c.digest,
                            data.len(),
                            c.size
                        )),
                        Ok(None) => Some(format!("chunk {} is missing", c.digest)),
                        Err(e) => Some(e.to_string()),
                    }),
                    Ok(None) => Some("vanished".to_owned()),
                    Err(e) => Some(e.to_string()),
                },
            };
            if let Some(p) = problem {
                report.problems.push(format!("{}: {p}", path.display()));
            }
        }
        Ok(report)
    }

    /// Lists first, then chunks: a concurrent writer writes its chunks
    /// before its list, so a list this pass does not see has chunks young
    /// enough to be spared.
    fn collect_garbage(
        &self,
        live: &HashSet<B3Digest>,
        grace: Duration,
        dry_run: bool,
    ) -> Result<GcReport, Error> {
        let now = SystemTime::now();
        let mut report = GcReport::default();
        // An object no live blob needs: kept while young, else deleted.
        // One stat gives both its age and its size.
        let unreachable = |path: &Path, report: &mut GcReport| -> Result<(), Error> {
            let meta = match fs::symlink_metadata(path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            let age = now.duration_since(meta.modified()?).unwrap_or_default();
            if age < grace {
                report.young += 1;
                return Ok(());
            }
            if !dry_run {
                match fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
            }
            report.deleted += 1;
            report.deleted_bytes += meta.len();
            Ok(())
        };
        let mut live_chunks: HashSet<B3Digest> = HashSet::new();
        let objects = self.list_objects()?;
        for (_, path, digest) in objects.iter().filter(|o| o.0 == "blobs") {
            if live.contains(digest) {
                report.live += 1;
                // A live blob whose chunk list cannot be read would make
                // every chunk look unused: stop rather than guess.
                let list = self.read_list(digest)?.ok_or_else(|| {
                    Error::Storage(format!("{}: vanished during collection", path.display()))
                })?;
                live_chunks.extend(list.iter().map(|c| c.digest));
            } else {
                unreachable(path, &mut report)?;
            }
        }
        for (_, path, digest) in objects.iter().filter(|o| o.0 == "chunks") {
            if live.contains(digest) || live_chunks.contains(digest) {
                report.live += 1;
            } else {
                unreachable(path, &mut report)?;
            }
        }
        // Temp files of writers that died (those still writing are young).
        for entry in fs::read_dir(self.root.join("tmp"))? {
            unreachable(&entry?.path(), &mut report)?;
        }
        Ok(report)
    }

    fn list_objects(&self) -> Result<Vec<(&'static str, PathBuf, B3Digest)>, Error> {
        let mut out = Vec::new();
        for kind in ["chunks", "blobs"] {
            for shard in fs::read_dir(self.root.join(kind))? {
                let shard = shard?;
                for obj in fs::read_dir(shard.path())? {
                    let obj = obj?;
                    let name = obj.file_name();
                    match name.to_str().and_then(|n| n.parse::<B3Digest>().ok()) {
                        Some(d) => out.push((kind, obj.path(), d)),
                        None => out.push((kind, obj.path(), B3Digest::from([0; 32]))),
                    }
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl BlobService for ObjectsBlobService {
    async fn has(&self, digest: &B3Digest) -> Result<bool, Error> {
        let inner = self.inner.clone();
        let digest = *digest;
        blocking(move || {
            Ok(inner.object_path("blobs", &digest).exists()
                || inner.object_path("chunks", &digest).exists())
        })
        .await
    }

    async fn open_read(&self, digest: &B3Digest) -> Result<Option<Box<dyn BlobReader>>, Error> {
        let inner = self.inner.clone();
        let d = *digest;
        // Most blobs are stored whole (one chunk file): look there first.
        let found = blocking(move || match inner.read_chunk(&d)? {
            Some(whole) => Ok(Some(Ok(whole))),
            None => Ok(inner.read_list(&d)?.map(Err)),
        })
        .await?;
        Ok(match found {
            None => None,
            Some(Ok(whole)) => Some(Box::new(io::Cursor::new(whole))),
            Some(Err(list)) => Some(Box::new(ChunkedReader::new(
                self.inner.clone(),
                *digest,
                list,
            ))),
        })
    }

    async fn open_write(&self) -> Box<dyn BlobWriter> {
        Box::new(ObjectsBlobWriter {
            inner: self.inner.clone(),
            assembly: Some(Assembly::new()),
        })
    }

    async fn put_many(&self, blobs: Vec<Bytes>) -> Result<Vec<B3Digest>, Error> {
        let inner = self.inner.clone();
        blocking(move || {
            blobs
                .into_iter()
                .map(|data| {
                    // Small enough to be stored whole: hash and write it
                    // as it is, without copying it into an assembly.
                    if data.len() <= WHOLE_BLOB_MAX {
                        let digest = B3Digest::of(&data);
                        inner.write_chunk_as(&data, digest)?;
                        return Ok(digest);
                    }
                    let mut assembly = Assembly::new();
                    assembly.buf = Vec::from(data);
                    if assembly.should_cut() {
                        assembly.cut(&inner, false)?;
                    }
                    assembly.finish(&inner)
                })
                .collect()
        })
        .await
    }

    async fn read_many(&self, wanted: &[(B3Digest, u64)]) -> Result<Vec<Option<Bytes>>, Error> {
        let inner = self.inner.clone();
        let wanted = wanted.to_vec();
        blocking(move || {
            wanted
                .iter()
                .map(|(d, size)| match inner.read_chunk_sized(d, Some(*size))? {
                    Some(whole) => Ok(Some(whole)),
                    None => match inner.read_list(d)? {
                        Some(list) => inner.read_chunked(d, &list).map(Some),
                        None => Ok(None),
                    },
                })
                .collect()
        })
        .await
    }

    async fn ingest_file(&self, path: &Path, expected: u64) -> Result<B3Digest, FileIngestError> {
        let inner = self.inner.clone();
        let p = path.to_owned();
        tokio::task::spawn_blocking(move || inner.ingest_file(&p, expected))
            .await
            .map_err(|e| Error::Storage(format!("blocking task failed: {e}")))?
    }

    async fn chunks(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        let inner = self.inner.clone();
        let d = *digest;
        blocking(move || match inner.read_list(&d)? {
            Some(list) => Ok(Some(list)),
            None => Ok(inner.object_path("chunks", &d).exists().then(Vec::new)),
        })
        .await
    }

    async fn collect_garbage(
        &self,
        live: &HashSet<B3Digest>,
        grace: Duration,
        dry_run: bool,
    ) -> Result<GcReport, Error> {
        let inner = self.inner.clone();
        let live = live.clone();
        blocking(move || inner.collect_garbage(&live, grace, dry_run)).await
    }

    async fn verify_all(&self) -> Result<super::VerifyReport, Error> {
        let inner = self.inner.clone();
        blocking(move || inner.verify_all()).await
    }

    async fn sync(&self) -> Result<(), Error> {
        let root = self.inner.root.clone();
        blocking(move || {
            let dir = fs::File::open(&root)?;
            rustix::fs::syncfs(&dir).map_err(|e| Error::Io(e.into()))
        })
        .await
    }
}

/// A blob being assembled: bytes not yet cut, the running whole-blob
/// hash, and the chunks written so far. Synchronous, so that both the async
/// writer (a blocking hop per flush) and `ingest_file` (one hop for the
/// whole file) share it.
struct Assembly {
    /// Bytes not yet cut into chunks.
    buf: Vec<u8>,
    /// How much of `buf` the hasher has seen.
    hashed: usize,
    hasher: blake3::Hasher,
    chunks: Vec<ChunkMeta>,
}

impl Assembly {
    fn new() -> Self {
        Assembly {
            buf: Vec::new(),
            hashed: 0,
            hasher: blake3::Hasher::new(),
            chunks: Vec::new(),
        }
    }

    /// Cutting starts only once the blob is too big to be stored whole.
    fn should_cut(&self) -> bool {
        self.buf.len() > WHOLE_BLOB_MAX
    }

    /// Hashes and cuts what is buffered (all of it when `eof`), writing
    /// chunk files as it goes.
    fn cut(&mut self, inner: &Inner, eof: bool) -> Result<(), Error> {
        self.hasher.update(&self.buf[self.hashed..]);
        if eof && self.chunks.is_empty() && self.buf.len() <= WHOLE_BLOB_MAX {
            // Stored whole: the blob's digest is the chunk's, and the blob
            // hasher has just seen every byte, so hash only once.
            let digest = B3Digest::from(self.hasher.finalize());
            let chunk = inner.write_chunk_as(&self.buf, digest)?;
            self.chunks.push(chunk);
            self.buf = Vec::new();
            self.hashed = 0;
            return Ok(());
        }
        let mut start = 0;
        for len in chunker::cut(&self.buf, eof) {
            self.chunks
                .push(inner.write_chunk(&self.buf[start..start + len])?);
            start += len;
        }
        self.buf.drain(..start);
        self.hashed = self.buf.len();
        Ok(())
    }

    /// Cuts the rest and makes the blob visible under its digest.
    fn finish(mut self, inner: &Inner) -> Result<B3Digest, Error> {
        self.cut(inner, true)?;
        let digest = B3Digest::from(self.hasher.finalize());
        match self.chunks.len() {
            // Only the empty blob has no chunk written by `cut`.
            0 => {
                inner.write_chunk(&[])?;
            }
            // One chunk: the blob is that chunk, already written.
            1 => {}
            _ => inner.write_list(&digest, &self.chunks)?,
        }
        Ok(digest)
    }
}

impl Inner {
    /// `ingest_file` in one synchronous step: the file is read straight
    /// into the assembly buffer, a piece at a time.
    fn ingest_file(&self, path: &Path, expected: u64) -> Result<B3Digest, FileIngestError> {
        let read_err = FileIngestError::read(path);
        let mut file = fs::File::open(path).map_err(FileIngestError::read(path))?;
        let mut assembly = Assembly::new();
        let mut total = 0u64;
        let result = loop {
            let want = (expected - total).min(READ_PIECE as u64) as usize;
            if want == 0 {
                break has_more(&mut file).map(|more| total + u64::from(more));
            }
            let before = assembly.buf.len();
            assembly.buf.resize(before + want, 0);
            let got = fill(&mut file, &mut assembly.buf[before..]);
            assembly.buf.truncate(before + *got.as_ref().unwrap_or(&0));
            match got {
                Ok(0) => break Ok(total),
                Ok(n) => total += n as u64,
                Err(e) => break Err(e),
            }
            if assembly.should_cut() {
                assembly.cut(self, false)?;
            }
        };
        let actual = result.map_err(read_err)?;
        if actual != expected {
            return Err(FileIngestError::Changed {
                path: path.to_owned(),
                expected,
                actual,
            });
        }
        Ok(assembly.finish(self)?)
    }
}

struct ObjectsBlobWriter {
    inner: Arc<Inner>,
    /// `None` after a failed cut: the writer is then unusable.
    assembly: Option<Assembly>,
}

impl ObjectsBlobWriter {
    fn take_assembly(&mut self) -> Result<Assembly, Error> {
        self.assembly
            .take()
            .ok_or_else(|| Error::Storage("blob writer used after a failure".into()))
    }
}

#[async_trait]
impl BlobWriter for ObjectsBlobWriter {
    async fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        let assembly = self
            .assembly
            .as_mut()
            .ok_or_else(|| Error::Storage("blob writer used after a failure".into()))?;
        assembly.buf.extend_from_slice(data);
        if assembly.should_cut() {
            let mut assembly = self.take_assembly()?;
            let inner = self.inner.clone();
            self.assembly = Some(
                blocking(move || {
                    assembly.cut(&inner, false)?;
                    Ok(assembly)
                })
                .await?,
            );
        }
        Ok(())
    }

    async fn close(mut self: Box<Self>) -> Result<B3Digest, Error> {
        let assembly = self.take_assembly()?;
        let inner = self.inner.clone();
        blocking(move || assembly.finish(&inner)).await
    }
}

type ChunkLoad = JoinHandle<Result<Option<Bytes>, Error>>;

/// Reads a chunked blob, loading (and verifying) one chunk at a time, with
/// the next one prefetched. A read from start to end also checks the
/// whole blob's digest.
struct ChunkedReader {
    inner: Arc<Inner>,
    digest: B3Digest,
    chunks: Vec<ChunkMeta>,
    starts: Vec<u64>,
    size: u64,
    pos: u64,
    current: Option<(usize, Bytes)>,
    pending: Option<(usize, ChunkLoad)>,
    whole: Option<blake3::Hasher>,
    whole_upto: u64,
}

impl ChunkedReader {
    fn new(inner: Arc<Inner>, digest: B3Digest, chunks: Vec<ChunkMeta>) -> Self {
        let mut starts = Vec::with_capacity(chunks.len());
        let mut size = 0u64;
        for c in &chunks {
            starts.push(size);
            size = size.saturating_add(c.size);
        }
        ChunkedReader {
            inner,
            digest,
            chunks,
            starts,
            size,
            pos: 0,
            current: None,
            pending: None,
            whole: Some(blake3::Hasher::new()),
            whole_upto: 0,
        }
    }

    fn load(&self, idx: usize) -> ChunkLoad {
        let inner = self.inner.clone();
        let meta = self.chunks[idx];
        tokio::task::spawn_blocking(move || inner.read_chunk_sized(&meta.digest, Some(meta.size)))
    }

    fn chunk_index(&self, pos: u64) -> usize {
        self.starts.partition_point(|&s| s <= pos).saturating_sub(1)
    }
}

impl AsyncRead for ChunkedReader {
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
                            return Poll::Ready(Err(Error::Integrity {
                                digest: this.digest,
                                detail: format!("chunks concatenate to {actual}"),
                            }
                            .into_io()));
                        }
                    }
                }
                return Poll::Ready(Ok(()));
            }
            let idx = this.chunk_index(this.pos);
            if let Some((i, data)) = &this.current {
                if *i == idx {
                    let meta = this.chunks[idx];
                    if data.len() as u64 != meta.size {
                        return Poll::Ready(Err(Error::Integrity {
                            digest: this.digest,
                            detail: format!(
                                "chunk {} has {} bytes, list says {}",
                                meta.digest,
                                data.len(),
                                meta.size
                            ),
                        }
                        .into_io()));
                    }
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
                    if this.pending.is_none() && idx + 1 < this.chunks.len() {
                        this.pending = Some((idx + 1, this.load(idx + 1)));
                    }
                    return Poll::Ready(Ok(()));
                }
            }
            match &mut this.pending {
                Some((i, handle)) if *i == idx => {
                    let loaded = match Pin::new(handle).poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(r) => r,
                    };
                    this.pending = None;
                    let meta = this.chunks[idx];
                    let data = loaded
                        .map_err(|e| io::Error::other(format!("chunk loader failed: {e}")))?
                        .map_err(Error::into_io)?
                        .ok_or_else(|| {
                            Error::NotFound {
                                what: "chunk",
                                digest: meta.digest,
                            }
                            .into_io()
                        })?;
                    this.current = Some((idx, data));
                }
                _ => this.pending = Some((idx, this.load(idx))),
            }
        }
    }
}

impl AsyncSeek for ChunkedReader {
    fn start_seek(mut self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        let target = match position {
            io::SeekFrom::Start(n) => Some(n),
            io::SeekFrom::End(off) => self.size.checked_add_signed(off),
            io::SeekFrom::Current(off) => self.pos.checked_add_signed(off),
        };
        let target = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the blob",
            )
        })?;
        self.pos = target;
        Ok(())
    }

    fn poll_complete(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(Ok(self.pos))
    }
}
