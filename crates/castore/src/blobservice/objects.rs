//! `objects:///PATH`: blobs on a local disk, chunks appended to pack files
//! and found through an index.
//!
//! Layout under PATH:
//! - `packs/<16 hex>.pack`: append-only files of chunk records, each
//!   `digest (32) | tag (1: 0 raw, 1 zstd) | length (u32 LE) | bytes`,
//!   the digest being the BLAKE3 of the uncompressed bytes. A record names
//!   itself, so the index could be rebuilt from the packs alone.
//! - `index.redb`: where each chunk's record is (pack, offset, length,
//!   size, time written or last reused), and the chunk list of every blob
//!   made of more than one chunk (a blob of one chunk is that chunk).
//!
//! Why packs and not a file per chunk: creating an inode is the dearest
//! thing a store of small objects does. On ext4 each new inode costs a
//! search of the inode bitmap (slower still after many deletions), and a
//! tree of 5,000 small files or a NAR of 2,000 chunks spent more time
//! there than hashing. A pack costs one inode per 256 MiB.
//!
//! Atomicity: records are appended, then listed in an in-memory index that
//! this process reads at once. `sync` (and dropping the service, and
//! every 16,384 new entries) makes them durable in order: pack data
//! `fdatasync`ed first, then one durable redb commit of their index
//! entries. A process killed at any point leaves at most unreferenced
//! bytes at the end of a pack, never an index entry to bytes that are not
//! there; garbage collection reclaims those bytes.
//!
//! The index is a redb file, so one process at a time opens an object
//! directory (a second waits, see [`crate::embedded`]).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::chunked::{start_blocking_now, ChunkSource, ChunkedReader};
use super::chunker;
use super::ingest::{fill, has_more, FileIngestError, READ_PIECE};
use super::{BlobReader, BlobService, BlobWriter, ChunkMeta};
use crate::gc::{GcReport, KeepYoung};
use crate::util::blocking;
use crate::{B3Digest, Error};

/// How chunk records are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// As they are.
    #[default]
    None,
    /// zstd, kept only where it saves space.
    Zstd,
}

const TAG_RAW: u8 = 0;
const TAG_ZSTD: u8 = 1;
/// digest, tag, length.
const RECORD_HEADER: usize = 32 + 1 + 4;
/// Blobs up to this size are stored whole, as one chunk: small files only
/// ever dedup as whole files anyway. Larger blobs are cut by content
/// (FastCDC).
const WHOLE_BLOB_MAX: usize = 1024 * 1024;
/// A pack grows to about this size before a new one is started: big enough
/// that inodes stop mattering, small enough that compacting one is quick.
const PACK_TARGET: u64 = 256 * 1024 * 1024;
/// Writeback of a pack is started every this many bytes appended, so that
/// the disk writes while the import hashes and the final `fdatasync` has
/// little left to wait for.
const WRITEBACK_EVERY: u64 = 8 * 1024 * 1024;
/// New index entries held in memory before they are committed anyway.
const FLUSH_ENTRIES: usize = 16 * 1024;
/// A reused chunk whose recorded time is older than this gets a new one,
/// so that garbage collection's grace period counts from its reuse.
const FRESHEN_AFTER_SECS: u64 = 60;

/// chunk digest → (pack, offset, record length, uncompressed size, time).
const CHUNKS: TableDefinition<&[u8; 32], (u64, u64, u32, u32, u64)> =
    TableDefinition::new("chunks");
/// blob digest → (time, chunk list as 40-byte records: digest, size u64 LE).
const LISTS: TableDefinition<&[u8; 32], (u64, &[u8])> = TableDefinition::new("lists");

fn db_err(e: impl std::fmt::Display) -> Error {
    Error::Storage(format!("blob index: {e}"))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where a chunk's record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Location {
    pack: u64,
    offset: u64,
    len: u32,
    size: u32,
    /// Unix seconds when written or last reused.
    written: u64,
}

impl Location {
    fn to_row(self) -> (u64, u64, u32, u32, u64) {
        (self.pack, self.offset, self.len, self.size, self.written)
    }
    fn from_row(r: (u64, u64, u32, u32, u64)) -> Self {
        Location {
            pack: r.0,
            offset: r.1,
            len: r.2,
            size: r.3,
            written: r.4,
        }
    }
}

/// A chunk list's checksum, bound to the blob it lists: a damaged list,
/// or a list stored under another blob's digest, fails to check. With it,
/// readers verify each chunk but need not re-hash the whole blob (see
/// [`BlobService::chunk_lists_verified`]).
fn list_checksum(digest: &B3Digest, body: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("cairn objects:// chunk list v1");
    h.update(digest.as_bytes());
    h.update(body);
    *h.finalize().as_bytes()
}

fn encode_list(digest: &B3Digest, chunks: &[ChunkMeta]) -> Vec<u8> {
    let mut body = ChunkMeta::encode_list(chunks);
    let check = list_checksum(digest, &body);
    body.extend_from_slice(&check);
    body
}

fn decode_list(digest: &B3Digest, raw: &[u8]) -> Result<Vec<ChunkMeta>, Error> {
    let corrupt = |detail: &str| Error::Integrity {
        digest: *digest,
        detail: format!("chunk list in the blob index: {detail}"),
    };
    if raw.len() < 32 {
        return Err(corrupt("malformed"));
    }
    let (body, check) = raw.split_at(raw.len() - 32);
    let list = ChunkMeta::decode_list(body).ok_or_else(|| corrupt("malformed"))?;
    if list_checksum(digest, body) != check {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(list)
}

/// A pack file open for appending (and reading).
struct Pack {
    id: u64,
    file: fs::File,
    /// Bytes up to which writeback has been started.
    written_back: std::sync::atomic::AtomicU64,
}

impl Pack {
    /// Starts (does not wait for) writeback of what was appended since the
    /// last call, once that is `WRITEBACK_EVERY` or more. Not needed for
    /// correctness, which `fdatasync` at flush time gives; a failure only
    /// means that flush waits longer.
    fn start_writeback(&self, end: u64) {
        use std::sync::atomic::Ordering;
        let from = self.written_back.load(Ordering::Relaxed);
        if end < from + WRITEBACK_EVERY {
            return;
        }
        if self
            .written_back
            .compare_exchange(from, end, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            start_writeback(&self.file, from, end - from);
        }
    }
}

/// At most this many pieces per `pwritev` (Linux's `IOV_MAX`).
const MAX_IOVECS: usize = 1024;

/// Writes all of `parts`, back to back, at `offset`: `pwritev` until done.
fn write_all_at_vectored(file: &fs::File, parts: &[&[u8]], offset: u64) -> io::Result<()> {
    let mut parts: Vec<&[u8]> = parts.iter().copied().filter(|p| !p.is_empty()).collect();
    let mut offset = offset;
    let mut first = 0;
    while first < parts.len() {
        let slices: Vec<io::IoSlice<'_>> = parts[first..]
            .iter()
            .take(MAX_IOVECS)
            .map(|p| io::IoSlice::new(p))
            .collect();
        let n = match rustix::io::pwritev(file, &slices, offset) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        offset += n as u64;
        let mut written = n;
        while first < parts.len() && written >= parts[first].len() {
            written -= parts[first].len();
            first += 1;
        }
        if written > 0 {
            parts[first] = &parts[first][written..];
        }
    }
    Ok(())
}

/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`: queue dirty pages of a range
/// for writing, without waiting. Neither std nor rustix offers it.
#[allow(unsafe_code)]
fn start_writeback(file: &fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: a plain system call on a file descriptor `file` keeps open;
    // it reads and writes no memory of this process.
    let rc = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    if rc != 0 {
        tracing::debug!("sync_file_range: {}", io::Error::last_os_error());
    }
}

/// Index entries not yet committed, readable meanwhile.
#[derive(Default)]
struct Pending {
    chunks: HashMap<B3Digest, Location>,
    lists: HashMap<B3Digest, (u64, Vec<ChunkMeta>)>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.lists.is_empty()
    }
}

#[derive(Default)]
struct State {
    pending: Pending,
    /// What a flush in progress is committing: still readable from here
    /// until the commit is done.
    committing: Option<Arc<Pending>>,
    /// The pack being appended to, and its length so far.
    current: Option<(Arc<Pack>, u64)>,
    /// Packs appended to since the last flush (to `fdatasync`).
    dirty: HashMap<u64, Arc<Pack>>,
    /// Whether a pack was created since the last flush (its directory
    /// entry must be made durable too).
    new_pack: bool,
}

struct Inner {
    root: PathBuf,
    compression: Compression,
    db: Database,
    state: Mutex<State>,
    /// One flush at a time.
    flushing: Mutex<()>,
    /// Pack files open for reading.
    readers: Mutex<HashMap<u64, Arc<fs::File>>>,
    /// Writers hold it shared, garbage collection exclusively: collection
    /// must not see a pack half-written or a chunk reused mid-sweep.
    writing: std::sync::RwLock<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data behind,
    // still consistent: every update is a single insert or take.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Blobs in pack files below a directory.
#[derive(Clone)]
pub struct ObjectsBlobService {
    inner: Arc<Inner>,
}

impl ObjectsBlobService {
    /// Opens (creating if needed) an object directory.
    pub fn open(root: &Path, compression: Compression) -> Result<Self, Error> {
        if root.join("chunks").is_dir() {
            return Err(Error::Storage(format!(
                "{} holds one file per chunk, the layout of Cairn before pack files; \
                 import into a new data directory (export from this one with the older cairn first)",
                root.display()
            )));
        }
        fs::create_dir_all(root.join("packs"))?;
        let db = crate::embedded::open_redb(&root.join("index.redb"))?;
        if !crate::embedded::tables_exist(&db, |txn| {
            txn.open_table(CHUNKS)?;
            txn.open_table(LISTS).map(drop)
        }) {
            let txn = db.begin_write().map_err(db_err)?;
            txn.open_table(CHUNKS).map_err(db_err)?;
            txn.open_table(LISTS).map_err(db_err)?;
            txn.commit().map_err(db_err)?;
        }
        Ok(ObjectsBlobService {
            inner: Arc::new(Inner {
                root: root.to_owned(),
                compression,
                db,
                state: Mutex::new(State::default()),
                flushing: Mutex::new(()),
                readers: Mutex::new(HashMap::new()),
                writing: std::sync::RwLock::new(()),
            }),
        })
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::error!(
                "blob index of {}: last commit failed: {e}",
                self.root.display()
            );
        }
    }
}

impl Inner {
    fn pack_path(&self, id: u64) -> PathBuf {
        self.root.join("packs").join(format!("{id:016x}.pack"))
    }

    /// A new, empty pack file with an unused name.
    fn create_pack(&self) -> Result<Pack, Error> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut id = nanos ^ (u64::from(std::process::id()) << 40);
        loop {
            match fs::OpenOptions::new()
                .read(true)
                // Not `append`: records go at reserved offsets with
                // `pwrite`, which O_APPEND would ignore.
                .write(true)
                .create_new(true)
                .open(self.pack_path(id))
            {
                Ok(file) => {
                    return Ok(Pack {
                        id,
                        file,
                        written_back: 0.into(),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => id = id.wrapping_add(1),
                Err(e) => {
                    return Err(Error::Storage(format!(
                        "creating {}: {e}",
                        self.pack_path(id).display()
                    )))
                }
            }
        }
    }

    /// Appends `bytes` (whole records) to the current pack and returns the
    /// pack and the offset they start at.
    fn append(&self, bytes: &[u8]) -> Result<(u64, u64), Error> {
        self.append_parts(&[bytes])
    }

    /// Appends the concatenation of `parts`. The space is reserved under
    /// the lock and written outside it, so writers append in parallel.
    fn append_parts(&self, parts: &[&[u8]]) -> Result<(u64, u64), Error> {
        let n: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let (pack, offset) = {
            let mut s = lock(&self.state);
            let full = s
                .current
                .as_ref()
                .is_none_or(|(_, len)| *len >= PACK_TARGET);
            if full {
                let pack = Arc::new(self.create_pack()?);
                s.new_pack = true;
                s.current = Some((pack, 0));
            }
            let Some((pack, len)) = s.current.as_mut() else {
                return Err(Error::Storage("no pack to append to".into()));
            };
            let offset = *len;
            *len += n;
            (pack.clone(), offset)
        };
        write_all_at_vectored(&pack.file, parts, offset).map_err(|e| {
            Error::Storage(format!(
                "writing {}: {e}",
                self.pack_path(pack.id).display()
            ))
        })?;
        // Dirty only once written, and before the caller lists the record:
        // a flush that commits the entry then either syncs this pack or
        // synced it after these bytes were written.
        lock(&self.state).dirty.insert(pack.id, pack.clone());
        pack.start_writeback(offset + n);
        Ok((pack.id, offset))
    }

    fn header(digest: &B3Digest, tag: u8, body_len: usize) -> [u8; RECORD_HEADER] {
        let mut h = [0u8; RECORD_HEADER];
        h[..32].copy_from_slice(digest.as_bytes());
        h[32] = tag;
        h[33..].copy_from_slice(&(body_len as u32).to_le_bytes());
        h
    }

    /// A chunk's stored form: its tag and body, compressed if that is
    /// asked for and helps, else the bytes as they are (not copied).
    fn body<'a>(&self, data: &'a [u8]) -> Result<(u8, Cow<'a, [u8]>), Error> {
        if self.compression == Compression::Zstd {
            let packed = zstd::bulk::compress(data, 3).map_err(Error::Io)?;
            if packed.len() < data.len() {
                return Ok((TAG_ZSTD, Cow::Owned(packed)));
            }
        }
        Ok((TAG_RAW, Cow::Borrowed(data)))
    }

    fn locate(&self, digest: &B3Digest) -> Result<Option<Location>, Error> {
        Ok(self
            .locate_many(std::slice::from_ref(digest))?
            .pop()
            .flatten())
    }

    /// [`Inner::locate`] for several chunks, with one index transaction.
    fn locate_many(&self, digests: &[B3Digest]) -> Result<Vec<Option<Location>>, Error> {
        let mut found: Vec<Option<Location>> = {
            let s = lock(&self.state);
            digests
                .iter()
                .map(|d| {
                    s.pending
                        .chunks
                        .get(d)
                        .or_else(|| s.committing.as_ref().and_then(|c| c.chunks.get(d)))
                        .copied()
                })
                .collect()
        };
        if found.iter().all(Option::is_some) {
            return Ok(found);
        }
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(CHUNKS).map_err(db_err)?;
        for (d, place) in digests.iter().zip(&mut found) {
            if place.is_none() {
                *place = table
                    .get(d.as_bytes())
                    .map_err(db_err)?
                    .map(|v| Location::from_row(v.value()));
            }
        }
        Ok(found)
    }

    fn read_list(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        {
            let s = lock(&self.state);
            if let Some((_, l)) = s.pending.lists.get(digest) {
                return Ok(Some(l.clone()));
            }
            if let Some((_, l)) = s.committing.as_ref().and_then(|c| c.lists.get(digest)) {
                return Ok(Some(l.clone()));
            }
        }
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(LISTS).map_err(db_err)?;
        let Some(row) = table.get(digest.as_bytes()).map_err(db_err)? else {
            return Ok(None);
        };
        decode_list(digest, row.value().1).map(Some)
    }

    /// Records new index entries; commits them if enough have piled up.
    fn add_pending(
        &self,
        chunks: impl IntoIterator<Item = (B3Digest, Location)>,
        list: Option<(B3Digest, Vec<ChunkMeta>)>,
    ) -> Result<(), Error> {
        let many = {
            let mut s = lock(&self.state);
            s.pending.chunks.extend(chunks);
            if let Some((d, l)) = list {
                s.pending.lists.insert(d, (unix_now(), l));
            }
            s.pending.chunks.len() + s.pending.lists.len() >= FLUSH_ENTRIES
        };
        if many {
            self.flush()?;
        }
        Ok(())
    }

    /// Makes every record appended so far durable, then commits their
    /// index entries in one durable transaction: never an entry without
    /// its bytes on disk.
    fn flush(&self) -> Result<(), Error> {
        let _one_at_a_time = lock(&self.flushing);
        let (batch, dirty, new_pack) = {
            let mut s = lock(&self.state);
            if s.pending.is_empty() && s.dirty.is_empty() {
                return Ok(());
            }
            let batch = Arc::new(std::mem::take(&mut s.pending));
            s.committing = Some(batch.clone());
            let dirty: Vec<Arc<Pack>> = s.dirty.drain().map(|(_, p)| p).collect();
            (batch, dirty, std::mem::take(&mut s.new_pack))
        };
        // A failed fdatasync is reported once: the pages it could not write
        // may be gone, and a retry would "succeed" over the hole. The
        // records of this batch are then given up, never indexed, and new
        // records go to a new pack.
        let synced = self.sync_packs(&dirty, new_pack);
        let data_lost = synced.is_err();
        let result = synced.and_then(|()| self.commit(&batch));
        let mut s = lock(&self.state);
        s.committing = None;
        if data_lost {
            s.current = None;
            let lost = batch.chunks.len() + batch.lists.len();
            return result.map_err(|e| {
                Error::Storage(format!(
                    "{e}; the {lost} objects written since the last sync are lost and were not indexed"
                ))
            });
        }
        if result.is_err() {
            // Keep the entries (readable, and committed by a later flush)
            // and the packs still to sync.
            let failed = Arc::try_unwrap(batch).unwrap_or_else(|shared| Pending {
                chunks: shared.chunks.clone(),
                lists: shared.lists.clone(),
            });
            for (d, l) in failed.chunks {
                s.pending.chunks.entry(d).or_insert(l);
            }
            for (d, l) in failed.lists {
                s.pending.lists.entry(d).or_insert(l);
            }
            for p in dirty {
                s.dirty.insert(p.id, p);
            }
            s.new_pack |= new_pack;
        }
        result
    }

    fn sync_packs(&self, dirty: &[Arc<Pack>], new_pack: bool) -> Result<(), Error> {
        for pack in dirty {
            pack.file.sync_data().map_err(|e| {
                Error::Storage(format!(
                    "syncing {}: {e}",
                    self.pack_path(pack.id).display()
                ))
            })?;
        }
        if new_pack {
            fs::File::open(self.root.join("packs"))?.sync_all()?;
        }
        Ok(())
    }

    fn commit(&self, batch: &Pending) -> Result<(), Error> {
        if batch.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut chunks = txn.open_table(CHUNKS).map_err(db_err)?;
            for (d, l) in &batch.chunks {
                chunks.insert(d.as_bytes(), l.to_row()).map_err(db_err)?;
            }
            let mut lists = txn.open_table(LISTS).map_err(db_err)?;
            for (d, (t, l)) in &batch.lists {
                lists
                    .insert(d.as_bytes(), (*t, encode_list(d, l).as_slice()))
                    .map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }

    /// If the chunk is stored, marks it reused (see `FRESHEN_AFTER_SECS`)
    /// and returns true.
    fn reuse(&self, digest: &B3Digest) -> Result<bool, Error> {
        let Some(mut l) = self.locate(digest)? else {
            return Ok(false);
        };
        let now = unix_now();
        if now.saturating_sub(l.written) > FRESHEN_AFTER_SECS {
            l.written = now;
            self.add_pending([(*digest, l)], None)?;
        }
        Ok(true)
    }

    fn write_chunk(&self, data: &[u8]) -> Result<ChunkMeta, Error> {
        self.write_chunk_as(data, B3Digest::of(data))
    }

    /// Writes a chunk whose digest the caller has already computed.
    fn write_chunk_as(&self, data: &[u8], digest: B3Digest) -> Result<ChunkMeta, Error> {
        let _writing = self.writing.read().unwrap_or_else(|p| p.into_inner());
        let meta = ChunkMeta {
            digest,
            size: data.len() as u64,
        };
        if self.reuse(&digest)? {
            return Ok(meta);
        }
        // Header and body go down as two pieces of one `pwritev`: chunks
        // are large, and copying each behind its header cost a memcpy of
        // every byte imported.
        let (tag, body) = self.body(data)?;
        let header = Self::header(&digest, tag, body.len());
        let (pack, offset) = self.append_parts(&[&header, &body])?;
        let loc = Location {
            pack,
            offset,
            len: (RECORD_HEADER + body.len()) as u32,
            size: data.len() as u32,
            written: unix_now(),
        };
        self.add_pending([(digest, loc)], None)?;
        Ok(meta)
    }

    /// Stores whole small blobs with one append for all of them: one
    /// `pwritev` of headers and bodies, the bodies not copied.
    fn write_whole_many(&self, blobs: &[(B3Digest, &[u8])]) -> Result<(), Error> {
        let _writing = self.writing.read().unwrap_or_else(|p| p.into_inner());
        let mut records = Vec::new();
        let mut seen = HashSet::new();
        for (digest, data) in blobs {
            if !seen.insert(*digest) || self.reuse(digest)? {
                continue;
            }
            let (tag, body) = self.body(data)?;
            records.push((
                *digest,
                Self::header(digest, tag, body.len()),
                body,
                data.len(),
            ));
        }
        if records.is_empty() {
            return Ok(());
        }
        let parts: Vec<&[u8]> = records
            .iter()
            .flat_map(|(_, header, body, _)| [&header[..], &body[..]])
            .collect();
        let (pack, base) = self.append_parts(&parts)?;
        let now = unix_now();
        let mut offset = base;
        let entries: Vec<(B3Digest, Location)> = records
            .iter()
            .map(|(d, _, body, size)| {
                let len = (RECORD_HEADER + body.len()) as u32;
                let loc = Location {
                    pack,
                    offset,
                    len,
                    size: *size as u32,
                    written: now,
                };
                offset += u64::from(len);
                (*d, loc)
            })
            .collect();
        self.add_pending(entries, None)
    }

    fn pack_reader(&self, id: u64) -> Result<Arc<fs::File>, Error> {
        if let Some(f) = lock(&self.readers).get(&id) {
            return Ok(f.clone());
        }
        let f = Arc::new(fs::File::open(self.pack_path(id)).map_err(|e| {
            Error::Storage(format!("opening {}: {e}", self.pack_path(id).display()))
        })?);
        lock(&self.readers).insert(id, f.clone());
        Ok(f)
    }

    /// Asks the kernel to start reading the records of `digests` now, in
    /// as few requests as they allow: records written one after another
    /// (a file's chunks, as an import appends them) make one range. Reads
    /// from several threads at once, one chunk each, defeat the kernel's
    /// own read-ahead on a pack, and a cold read then waits on the disk
    /// chunk by chunk. Failures are ignored: the load reports its own.
    fn will_need(&self, digests: &[B3Digest]) {
        let Ok(places) = self.locate_many(digests) else {
            return;
        };
        let mut ranges: Vec<(u64, u64, u64)> = Vec::new();
        for l in places.into_iter().flatten() {
            let end = l.offset + u64::from(l.len);
            match ranges.last_mut() {
                Some((pack, _, last_end)) if *pack == l.pack && *last_end == l.offset => {
                    *last_end = end;
                }
                _ => ranges.push((l.pack, l.offset, end)),
            }
        }
        for (pack, start, end) in ranges {
            if let Ok(file) = self.pack_reader(pack) {
                let len = std::num::NonZeroU64::new(end - start);
                let _ = rustix::fs::fadvise(&*file, start, len, rustix::fs::Advice::WillNeed);
            }
        }
    }

    /// A record's bytes as stored (header included).
    fn read_record(&self, digest: &B3Digest, l: &Location) -> Result<Vec<u8>, Error> {
        let file = self.pack_reader(l.pack)?;
        let len = l.len as usize;
        let failed = |e: String| Error::Integrity {
            digest: *digest,
            detail: format!(
                "{} at offset {}: {e}",
                self.pack_path(l.pack).display(),
                l.offset
            ),
        };
        // Read into the vector's spare capacity: zero-filling a buffer the
        // read overwrites anyway cost 5 % of serving a large NAR.
        let mut raw = Vec::with_capacity(len);
        while raw.len() < len {
            let at = l.offset + raw.len() as u64;
            match rustix::io::pread(&*file, rustix::buffer::spare_capacity(&mut raw), at) {
                Ok(0) => return Err(failed(format!("pack ends after {} bytes", raw.len()))),
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(failed(e.to_string())),
            }
        }
        raw.truncate(len);
        Ok(raw)
    }

    /// Reads a chunk and checks it hashes to its name.
    fn read_chunk(&self, digest: &B3Digest) -> Result<Option<Bytes>, Error> {
        match self.locate(digest)? {
            Some(l) => self.read_located(digest, &l).map(Some),
            None => Ok(None),
        }
    }

    fn read_located(&self, digest: &B3Digest, l: &Location) -> Result<Bytes, Error> {
        let raw = self.read_record(digest, l)?;
        let corrupt = |detail: String| Error::Integrity {
            digest: *digest,
            detail: format!(
                "record in {} at offset {}: {detail}",
                self.pack_path(l.pack).display(),
                l.offset
            ),
        };
        if raw.len() < RECORD_HEADER || raw[..32] != digest.as_bytes()[..] {
            return Err(corrupt("header does not name this chunk".into()));
        }
        let mut n = [0u8; 4];
        n.copy_from_slice(&raw[33..37]);
        if u32::from_le_bytes(n) as usize != raw.len() - RECORD_HEADER {
            return Err(corrupt("length does not match the index".into()));
        }
        let data = match raw[32] {
            // Raw contents are the record after its header: no copy.
            TAG_RAW => Bytes::from(raw).slice(RECORD_HEADER..),
            TAG_ZSTD => Bytes::from(
                zstd::bulk::decompress(&raw[RECORD_HEADER..], l.size as usize)
                    .map_err(|e| corrupt(format!("zstd: {e}")))?,
            ),
            tag => return Err(corrupt(format!("unknown format tag {tag}"))),
        };
        let actual = B3Digest::of(&data);
        if actual != *digest {
            return Err(corrupt(format!("contents hash to {actual}")));
        }
        Ok(data)
    }

    /// A chunked blob's whole contents, each chunk and the whole verified.
    fn read_chunked(&self, digest: &B3Digest, list: &[ChunkMeta]) -> Result<Bytes, Error> {
        let mut out = Vec::with_capacity(list.iter().map(|c| c.size as usize).sum());
        for c in list {
            let data = self.read_chunk(&c.digest)?.ok_or(Error::NotFound {
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
        let _writing = self.writing.read().unwrap_or_else(|p| p.into_inner());
        self.add_pending([], Some((*digest, chunks.to_vec())))
    }

    /// Every index entry as (digest, location), committed ones only.
    fn all_chunks(&self) -> Result<Vec<(B3Digest, Location)>, Error> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(CHUNKS).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push((B3Digest::from(*k.value()), Location::from_row(v.value())));
        }
        Ok(out)
    }

    /// Every chunk list, each decoded and checked on its own: one damaged
    /// list must not hide the others from `verify_all`.
    #[allow(clippy::type_complexity)]
    fn all_lists(&self) -> Result<Vec<(B3Digest, u64, Result<Vec<ChunkMeta>, Error>)>, Error> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(LISTS).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let d = B3Digest::from(*k.value());
            let (t, raw) = v.value();
            out.push((d, t, decode_list(&d, raw)));
        }
        Ok(out)
    }
}

impl Inner {
    /// Every chunk record reads back and hashes to its name; every chunk
    /// list's chunks exist with the sizes it records.
    fn verify_all(&self) -> Result<super::VerifyReport, Error> {
        self.flush()?;
        let mut report = super::VerifyReport::default();
        let chunks = self.all_chunks()?;
        let sizes: HashMap<B3Digest, u32> = chunks.iter().map(|(d, l)| (*d, l.size)).collect();
        for (d, l) in &chunks {
            report.checked += 1;
            if let Err(e) = self.read_located(d, l) {
                report.problems.push(format!("chunk {d}: {e}"));
            }
        }
        for (d, _, list) in self.all_lists()? {
            report.checked += 1;
            let list = match list {
                Ok(list) => list,
                Err(e) => {
                    report.problems.push(format!("blob {d}: {e}"));
                    continue;
                }
            };
            let problem = list.iter().find_map(|c| match sizes.get(&c.digest) {
                None => Some(format!("chunk {} is missing", c.digest)),
                Some(&s) if u64::from(s) != c.size => Some(format!(
                    "chunk {} has {s} bytes, list says {}",
                    c.digest, c.size
                )),
                Some(_) => None,
            });
            if let Some(p) = problem {
                report.problems.push(format!("blob {d}: {p}"));
            }
        }
        Ok(report)
    }

    /// Marks, sweeps the index, then compacts packs: a pack with nothing
    /// live is deleted, one less than half live has its live records
    /// copied to the current pack first.
    fn collect_garbage(
        &self,
        live: &HashSet<B3Digest>,
        keep: KeepYoung,
        dry_run: bool,
    ) -> Result<GcReport, Error> {
        // No writer of this process runs until the sweep and compaction
        // are done (other processes are kept out by the index's lock).
        let _alone = self.writing.write().unwrap_or_else(|p| p.into_inner());
        self.flush()?;
        let young = |t: u64| keep.keeps_unix_secs(t);
        let mut report = GcReport::default();
        let mut needed: HashSet<B3Digest> = HashSet::new();
        let mut doomed_lists = Vec::new();
        for (d, t, list) in self.all_lists()? {
            // A list that cannot be read could make the chunks it needs
            // look unused: stop rather than guess.
            let list = list?;
            if live.contains(&d) {
                report.live += 1;
            } else if young(t) {
                report.young += 1;
            } else {
                report.deleted += 1;
                report.deleted_bytes += 40 * list.len() as u64;
                doomed_lists.push(d);
                continue;
            }
            // Kept lists keep their chunks, however old those are.
            needed.extend(list.iter().map(|c| c.digest));
        }
        let mut doomed_chunks = Vec::new();
        let mut kept: HashMap<u64, Vec<(B3Digest, Location)>> = HashMap::new();
        for (d, l) in self.all_chunks()? {
            if live.contains(&d) || needed.contains(&d) {
                report.live += 1;
            } else if young(l.written) {
                report.young += 1;
            } else {
                report.deleted += 1;
                report.deleted_bytes += u64::from(l.len);
                doomed_chunks.push(d);
                continue;
            }
            kept.entry(l.pack).or_default().push((d, l));
        }
        if dry_run {
            return Ok(report);
        }
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut chunks = txn.open_table(CHUNKS).map_err(db_err)?;
            for d in &doomed_chunks {
                chunks.remove(d.as_bytes()).map_err(db_err)?;
            }
            let mut lists = txn.open_table(LISTS).map_err(db_err)?;
            for d in &doomed_lists {
                lists.remove(d.as_bytes()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)?;
        self.compact(&kept)?;
        Ok(report)
    }

    fn compact(&self, kept: &HashMap<u64, Vec<(B3Digest, Location)>>) -> Result<(), Error> {
        let current = lock(&self.state).current.as_ref().map(|(p, _)| p.id);
        let mut moved = Vec::new();
        let mut emptied = Vec::new();
        // Listed before anything is moved: packs that moving records opens
        // are not candidates.
        let listing = fs::read_dir(self.root.join("packs"))?.collect::<Result<Vec<_>, _>>()?;
        for entry in listing {
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".pack"))
                .and_then(|h| u64::from_str_radix(h, 16).ok())
            else {
                continue;
            };
            if Some(id) == current {
                continue;
            }
            let size = entry.metadata()?.len();
            let records = kept.get(&id).map_or(&[][..], Vec::as_slice);
            let live_bytes: u64 = records.iter().map(|(_, l)| u64::from(l.len)).sum();
            if records.is_empty() {
                emptied.push(id);
            } else if live_bytes < size / 2 {
                for (d, l) in records {
                    let raw = self.read_record(d, l)?;
                    let (pack, offset) = self.append(&raw)?;
                    moved.push((*d, Location { pack, offset, ..*l }));
                }
                emptied.push(id);
            }
        }
        if !moved.is_empty() {
            self.add_pending(moved, None)?;
        }
        // The moved records' new places are durable before the old packs go.
        self.flush()?;
        for id in emptied {
            lock(&self.readers).remove(&id);
            match fs::remove_file(self.pack_path(id)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

#[async_trait]
impl BlobService for ObjectsBlobService {
    async fn has(&self, digest: &B3Digest) -> Result<bool, Error> {
        let inner = self.inner.clone();
        let digest = *digest;
        blocking(
            move || Ok(inner.locate(&digest)?.is_some() || inner.read_list(&digest)?.is_some()),
        )
        .await
    }

    async fn missing(&self, digests: &[B3Digest]) -> Result<Vec<B3Digest>, Error> {
        // One blocking hop for the lot: a hop per digest cost more than
        // the lookups (a daemon answering for 1,400 files made 29,000
        // futex calls).
        let inner = self.inner.clone();
        let digests = digests.to_vec();
        blocking(move || {
            let mut out = Vec::new();
            for d in digests {
                if inner.locate(&d)?.is_none() && inner.read_list(&d)?.is_none() {
                    out.push(d);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn open_read(&self, digest: &B3Digest) -> Result<Option<Box<dyn BlobReader>>, Error> {
        let inner = self.inner.clone();
        let d = *digest;
        // Most blobs are stored whole (one chunk): look there first.
        let found = blocking(move || match inner.read_chunk(&d)? {
            Some(whole) => Ok(Some(Ok(whole))),
            None => Ok(inner.read_list(&d)?.map(Err)),
        })
        .await?;
        Ok(match found {
            None => None,
            Some(Ok(whole)) => Some(Box::new(io::Cursor::new(whole))),
            Some(Err(list)) => Some(Box::new(ChunkedReader::new(
                PackChunks(self.inner.clone()),
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
            let digests: Vec<B3Digest> = blobs.iter().map(|b| B3Digest::of(b)).collect();
            // Small enough to be stored whole: all in one append.
            let whole: Vec<(B3Digest, &[u8])> = digests
                .iter()
                .zip(&blobs)
                .filter(|(_, b)| b.len() <= WHOLE_BLOB_MAX)
                .map(|(d, b)| (*d, &b[..]))
                .collect();
            inner.write_whole_many(&whole)?;
            for (d, data) in digests.iter().zip(blobs) {
                if data.len() > WHOLE_BLOB_MAX {
                    let mut assembly = Assembly::new();
                    assembly.buf = Vec::from(data);
                    assembly.cut(&inner, false)?;
                    let got = assembly.finish(&inner)?;
                    debug_assert_eq!(got, *d);
                }
            }
            Ok(digests)
        })
        .await
    }

    async fn read_many(&self, wanted: &[(B3Digest, u64)]) -> Result<Vec<Option<Bytes>>, Error> {
        let inner = self.inner.clone();
        let wanted = wanted.to_vec();
        blocking(move || {
            wanted
                .iter()
                .map(|(d, _)| match inner.read_chunk(d)? {
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
            None => Ok(inner.locate(&d)?.map(|_| Vec::new())),
        })
        .await
    }

    async fn collect_garbage(
        &self,
        live: &HashSet<B3Digest>,
        keep: KeepYoung,
        dry_run: bool,
    ) -> Result<GcReport, Error> {
        let inner = self.inner.clone();
        let live = live.clone();
        blocking(move || inner.collect_garbage(&live, keep, dry_run)).await
    }

    async fn verify_all(&self) -> Result<super::VerifyReport, Error> {
        let inner = self.inner.clone();
        blocking(move || inner.verify_all()).await
    }

    async fn sync(&self) -> Result<(), Error> {
        let inner = self.inner.clone();
        blocking(move || inner.flush()).await
    }

    fn chunk_lists_verified(&self) -> bool {
        true
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
    /// chunk records as it goes.
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

/// Chunks of this object directory, for [`ChunkedReader`].
struct PackChunks(Arc<Inner>);

impl ChunkSource for PackChunks {
    fn load(&self, chunk: ChunkMeta) -> futures::future::BoxFuture<'static, Result<Bytes, Error>> {
        let inner = self.0.clone();
        start_blocking_now(move || {
            inner.read_chunk(&chunk.digest)?.ok_or(Error::NotFound {
                what: "chunk",
                digest: chunk.digest,
            })
        })
    }

    fn will_need(&self, upcoming: &[ChunkMeta]) {
        // Finding the records may read the index: not on the reader's
        // task. Outside a runtime there is no one to do it; it is a hint.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = self.0.clone();
        let digests: Vec<B3Digest> = upcoming.iter().map(|c| c.digest).collect();
        drop(rt.spawn_blocking(move || inner.will_need(&digests)));
    }
}
