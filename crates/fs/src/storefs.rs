//! [`StoreFs`]: the store as a read-only filesystem, independent of the
//! transport (FUSE here; the same trait serves virtio-fs).
//!
//! Requests arrive on plain threads and call the async services through
//! a runtime handle (`block_on`): each request blocks only its own
//! thread, and several threads serve the mount at once.
//!
//! Everything below a store path is immutable, so the kernel may cache
//! names, attributes and file pages for long (`TTL`, `KEEP_CACHE`).

use std::collections::{HashMap, VecDeque};
use std::ffi::CStr;
use std::io::{self, SeekFrom};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use cairn_castore::blobservice::BlobReader;
use cairn_castore::{B3Digest, Directory, Node};
use cairn_nix::store_path::StorePath;
use cairn_store::Store;
use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, FsOptions, OpenOptions, ZeroCopyWriter,
};
use futures::TryStreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::runtime::Handle;

use crate::inodes::{Inodes, Kind, ROOT};

/// How long the kernel may cache names and attributes: what a store path
/// holds never changes.
const TTL: Duration = Duration::from_secs(3600);
/// Nix's timestamp for everything in the store.
const STORE_MTIME: i64 = 1;

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// An EIO whose reason is logged (the kernel passes on only the number).
fn eio(what: &str, e: impl std::fmt::Display) -> io::Error {
    tracing::error!(%what, error = %e, "I/O error");
    errno(libc::EIO)
}

/// Idle blob readers kept for the whole mount. The kernel reads a file
/// ahead with several requests at once, and each needs a reader of its
/// own to run in parallel rather than queue behind one; a reader left
/// where the last read ended serves the next sequential read without
/// reopening the blob. Bounded because each may hold up to
/// `1 + AHEAD` chunks (at most 3 MiB).
const IDLE_READERS: usize = 16;

/// A blob reader of inode `ino` and where it is.
struct Cursor {
    ino: u64,
    reader: Box<dyn BlobReader>,
    position: u64,
}

enum OpenHandle {
    /// The root's listing (with `--list-root`), taken at `opendir`.
    RootListing(Vec<(Vec<u8>, Node)>),
}

/// The store as a filesystem.
pub struct StoreFs {
    store: Store,
    rt: Handle,
    list_root: bool,
    inodes: RwLock<Inodes>,
    handles: RwLock<HashMap<u64, Arc<OpenHandle>>>,
    next_handle: AtomicU64,
    /// Oldest first; see [`IDLE_READERS`].
    idle: Mutex<VecDeque<Cursor>>,
    /// The kernel takes `ENOSYS` from `open` to mean "opens need no
    /// message": see `open`.
    zero_message_open: AtomicBool,
    /// The same for `opendir`: see `opendir`.
    zero_message_opendir: AtomicBool,
    uid: u32,
    gid: u32,
}

/// All-zero `stat64`/`statvfs64`: libc's structs have private padding,
/// so no literal can build them.
#[allow(unsafe_code)]
fn zeroed<T: Copy>() -> T {
    // SAFETY: only called for libc's plain-data structs (integers and
    // arrays of integers), for which all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

impl StoreFs {
    /// A filesystem over `store`, calling it through `rt`. With
    /// `list_root`, listing the root enumerates every store path (one
    /// `PathInfoService::list`); without, the root lists nothing and
    /// paths are found by name.
    pub fn new(store: Store, rt: Handle, list_root: bool) -> Self {
        StoreFs {
            store,
            rt,
            list_root,
            inodes: RwLock::new(Inodes::new()),
            handles: RwLock::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            idle: Mutex::new(VecDeque::new()),
            zero_message_open: AtomicBool::new(false),
            zero_message_opendir: AtomicBool::new(false),
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        }
    }

    /// Makes a future with `make` and runs it to completion on this (FUSE)
    /// thread, inside the runtime (some services spawn as soon as they are
    /// called). A panic becomes EIO: an unanswered request would hang its
    /// caller forever.
    fn block<F: std::future::Future>(&self, make: impl FnOnce() -> F) -> io::Result<F::Output> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _inside = self.rt.enter();
            self.rt.block_on(make())
        }))
        .map_err(|_| eio("request", "a bug panicked while serving it"))
    }

    fn kind(&self, ino: u64) -> io::Result<Kind> {
        let inodes = self.inodes.read().map_err(|e| eio("inode table", e))?;
        inodes
            .get(ino)
            .map(|i| i.kind.clone())
            .ok_or_else(|| errno(libc::ENOENT))
    }

    fn attr(&self, ino: u64, kind: &Kind) -> stat64 {
        let mut st: stat64 = zeroed();
        st.st_ino = ino;
        st.st_uid = self.uid;
        st.st_gid = self.gid;
        st.st_blksize = 4096;
        st.st_mtime = STORE_MTIME;
        st.st_ctime = STORE_MTIME;
        st.st_atime = STORE_MTIME;
        let (mode, nlink, size) = match kind {
            Kind::Root => (libc::S_IFDIR | 0o555, 2, 0),
            Kind::Node(Node::Directory { .. }) => (libc::S_IFDIR | 0o555, 2, 0),
            Kind::Node(Node::File {
                size, executable, ..
            }) => (
                libc::S_IFREG | if *executable { 0o555 } else { 0o444 },
                1,
                *size,
            ),
            Kind::Node(Node::Symlink { target }) => {
                (libc::S_IFLNK | 0o777, 1, target.as_bytes().len() as u64)
            }
        };
        st.st_mode = mode;
        st.st_nlink = nlink;
        st.st_size = size as i64;
        st.st_blocks = size.div_ceil(512) as i64;
        st
    }

    fn entry(&self, ino: u64, kind: &Kind) -> Entry {
        Entry {
            inode: ino,
            generation: 0,
            attr: self.attr(ino, kind),
            attr_flags: 0,
            attr_timeout: TTL,
            entry_timeout: TTL,
        }
    }

    /// A directory inode's contents, fetched on first use.
    fn listing(&self, ino: u64) -> io::Result<Arc<Directory>> {
        let digest = {
            let inodes = self.inodes.read().map_err(|e| eio("inode table", e))?;
            let inode = inodes.get(ino).ok_or_else(|| errno(libc::ENOENT))?;
            if let Some(d) = &inode.listing {
                return Ok(d.clone());
            }
            match &inode.kind {
                Kind::Node(Node::Directory { digest, .. }) => *digest,
                _ => return Err(errno(libc::ENOTDIR)),
            }
        };
        let dir = self
            .block(|| self.store.dirs.get(&digest))?
            .map_err(|e| eio(&format!("directory {digest}"), e))?
            .ok_or_else(|| eio(&format!("directory {digest}"), "not in the store"))?;
        let dir = Arc::new(dir);
        let mut inodes = self.inodes.write().map_err(|e| eio("inode table", e))?;
        if let Some(inode) = inodes.get_mut(ino) {
            inode.listing = Some(dir.clone());
        }
        Ok(dir)
    }

    /// A store path by base name, as the root's child.
    fn lookup_store_path(&self, name: &[u8]) -> io::Result<Entry> {
        let path = std::str::from_utf8(name)
            .ok()
            .and_then(|n| StorePath::from_base_name(n).ok())
            .ok_or_else(|| errno(libc::ENOENT))?;
        let info = self
            .block(|| self.store.path_infos.get(path.digest()))?
            .map_err(|e| eio(&path.to_absolute_path(), e))?
            .filter(|info| info.store_path == path)
            .ok_or_else(|| errno(libc::ENOENT))?;
        let mut inodes = self.inodes.write().map_err(|e| eio("inode table", e))?;
        let ino = inodes.looked_up(ROOT, name, &info.node);
        Ok(self.entry(ino, &Kind::Node(info.node)))
    }

    fn handle(&self, handle: u64) -> io::Result<Arc<OpenHandle>> {
        self.handles
            .read()
            .map_err(|e| eio("handle table", e))?
            .get(&handle)
            .cloned()
            .ok_or_else(|| errno(libc::EBADF))
    }

    fn new_handle(&self, h: OpenHandle) -> io::Result<u64> {
        let id = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.handles
            .write()
            .map_err(|e| eio("handle table", e))?
            .insert(id, Arc::new(h));
        Ok(id)
    }

    fn drop_handle(&self, handle: u64) {
        if let Ok(mut handles) = self.handles.write() {
            handles.remove(&handle);
        }
    }

    /// Reads up to `size` bytes at `offset` of file `ino`, whose contents
    /// are blob `digest` of `size` bytes.
    fn read_at(
        &self,
        ino: u64,
        digest: &B3Digest,
        file_size: u64,
        offset: u64,
        size: u32,
    ) -> io::Result<Vec<u8>> {
        if offset >= file_size {
            return Ok(Vec::new());
        }
        let want = (file_size - offset).min(u64::from(size)) as usize;
        let taken = {
            let mut idle = self.idle.lock().map_err(|e| eio("reader pool", e))?;
            let at = idle
                .iter()
                .position(|c| c.ino == ino && c.position == offset)
                .or_else(|| idle.iter().position(|c| c.ino == ino));
            at.and_then(|i| idle.remove(i))
        };
        let mut buf = vec![0u8; want];
        let store = &self.store;
        let cursor = self.block(|| async {
            let mut cursor = match taken {
                Some(c) => c,
                None => Cursor {
                    ino,
                    reader: store
                        .blobs
                        .open_read(digest)
                        .await
                        .map_err(io::Error::other)?
                        .ok_or_else(|| {
                            io::Error::other(format!("blob {digest} is not in the store"))
                        })?,
                    position: 0,
                },
            };
            if cursor.position != offset {
                cursor.reader.seek(SeekFrom::Start(offset)).await?;
                cursor.position = offset;
            }
            let mut got = 0;
            while got < want {
                let n = cursor.reader.read(&mut buf[got..]).await?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "blob ended at {} of {file_size} bytes",
                            offset as usize + got
                        ),
                    ));
                }
                got += n;
                cursor.position += n as u64;
            }
            Ok(cursor)
        })??;
        // A reader that failed is dropped (above), and so is one at the
        // end: the kernel keeps the pages, it will not read there again.
        if cursor.position < file_size {
            let mut idle = self.idle.lock().map_err(|e| eio("reader pool", e))?;
            idle.push_back(cursor);
            if idle.len() > IDLE_READERS {
                idle.pop_front();
            }
        }
        Ok(buf)
    }
}

/// Free inodes `statfs` reports: the table has no limit.
const INODES_FREE: u64 = 1 << 32;

fn dirent_type(node: &Node) -> u32 {
    u32::from(match node {
        Node::Directory { .. } => libc::DT_DIR,
        Node::File { .. } => libc::DT_REG,
        Node::Symlink { .. } => libc::DT_LNK,
    })
}

impl FileSystem for StoreFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        self.zero_message_open.store(
            capable.contains(FsOptions::ZERO_MESSAGE_OPEN),
            Ordering::Relaxed,
        );
        self.zero_message_opendir.store(
            capable.contains(FsOptions::ZERO_MESSAGE_OPENDIR) && !self.list_root,
            Ordering::Relaxed,
        );
        // Reads of up to 1 MiB per request (not 128 KiB), several in
        // flight at once, and directory operations in parallel.
        Ok(capable & (FsOptions::MAX_PAGES | FsOptions::ASYNC_READ | FsOptions::PARALLEL_DIROPS))
    }

    fn lookup(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        let name = name.to_bytes();
        if parent == ROOT {
            return self.lookup_store_path(name);
        }
        let dir = self.listing(parent)?;
        let node = dir
            .entries()
            .find(|(n, _)| n.as_bytes() == name)
            .map(|(_, node)| node.clone())
            .ok_or_else(|| errno(libc::ENOENT))?;
        let ino = self
            .inodes
            .write()
            .map_err(|e| eio("inode table", e))?
            .looked_up(parent, name, &node);
        Ok(self.entry(ino, &Kind::Node(node)))
    }

    fn forget(&self, _ctx: &Context, ino: u64, count: u64) {
        if let Ok(mut inodes) = self.inodes.write() {
            inodes.forget(ino, count);
        }
    }

    fn batch_forget(&self, _ctx: &Context, requests: Vec<(u64, u64)>) {
        if let Ok(mut inodes) = self.inodes.write() {
            for (ino, count) in requests {
                inodes.forget(ino, count);
            }
        }
    }

    fn getattr(
        &self,
        _ctx: &Context,
        ino: u64,
        _handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        let kind = self.kind(ino)?;
        Ok((self.attr(ino, &kind), TTL))
    }

    fn readlink(&self, _ctx: &Context, ino: u64) -> io::Result<Vec<u8>> {
        match self.kind(ino)? {
            Kind::Node(Node::Symlink { target }) => Ok(target.as_bytes().to_vec()),
            _ => Err(errno(libc::EINVAL)),
        }
    }

    fn open(
        &self,
        _ctx: &Context,
        ino: u64,
        flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        if flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32 {
            return Err(errno(libc::EROFS));
        }
        match self.kind(ino)? {
            Kind::Node(Node::File { .. }) => {}
            Kind::Node(Node::Symlink { .. }) => return Err(errno(libc::ELOOP)),
            _ => return Err(errno(libc::EISDIR)),
        }
        // An open needs nothing from the store (readers are opened by the
        // first read that reaches us), so where the kernel can do without
        // the message, this ENOSYS tells it to: later opens and closes
        // cost no round trip at all, and the kernel keeps the pages of
        // files opened that way (the mount itself is read-only, so write
        // opens still fail with EROFS).
        if self.zero_message_open.load(Ordering::Relaxed) {
            return Err(errno(libc::ENOSYS));
        }
        // Contents never change: the kernel may keep pages across opens.
        Ok((None, OpenOptions::KEEP_CACHE, None))
    }

    #[allow(clippy::too_many_arguments)] // the trait's shape
    fn read(
        &self,
        _ctx: &Context,
        ino: u64,
        _handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        let Kind::Node(Node::File {
            digest,
            size: file_size,
            ..
        }) = self.kind(ino)?
        else {
            return Err(errno(libc::EISDIR));
        };
        let data = self
            .read_at(ino, &digest, file_size, offset, size)
            .map_err(|e| eio(&format!("inode {ino} at offset {offset}"), e))?;
        w.write_all(&data)?;
        Ok(data.len())
    }

    fn statfs(&self, _ctx: &Context, _ino: u64) -> io::Result<statvfs64> {
        let mut st: statvfs64 = zeroed();
        st.f_bsize = 4096;
        st.f_frsize = 4096;
        st.f_namemax = 255;
        st.f_flag = libc::ST_RDONLY;
        // Inodes in use: the table's size (what the kernel holds and what
        // its cached listings name; `df -i` shows it). There is no limit:
        // plenty are free, so monitoring does not see a full filesystem.
        let used = self.inodes.read().map_err(|e| eio("inode table", e))?.len() as u64;
        st.f_ffree = INODES_FREE;
        st.f_favail = INODES_FREE;
        st.f_files = used + INODES_FREE;
        Ok(st)
    }

    fn opendir(
        &self,
        _ctx: &Context,
        ino: u64,
        _flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        match self.kind(ino)? {
            // With `--list-root` the root's listing changes as paths are
            // added: taken afresh at each opendir, never cached.
            Kind::Root if self.list_root => {
                let infos: Vec<_> = self
                    .block(|| self.store.path_infos.list().try_collect::<Vec<_>>())?
                    .map_err(|e| eio("listing store paths", e))?;
                let mut entries: Vec<(Vec<u8>, Node)> = infos
                    .into_iter()
                    .map(|i| (i.store_path.base_name().into_bytes(), i.node))
                    .collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                let handle = self.new_handle(OpenHandle::RootListing(entries))?;
                Ok((Some(handle), OpenOptions::empty()))
            }
            // Every other listing is immutable. Where the kernel can do
            // without the message, this ENOSYS tells it to, and to cache
            // every listing it reads (opendir and releasedir then cost
            // no round trip, a second readdir none either); the root is
            // then static (empty), so that is only done without
            // `--list-root`.
            Kind::Root | Kind::Node(Node::Directory { .. })
                if self.zero_message_opendir.load(Ordering::Relaxed) =>
            {
                Err(errno(libc::ENOSYS))
            }
            Kind::Root | Kind::Node(Node::Directory { .. }) => {
                Ok((None, OpenOptions::CACHE_DIR | OpenOptions::KEEP_CACHE))
            }
            _ => Err(errno(libc::ENOTDIR)),
        }
    }

    fn readdir(
        &self,
        _ctx: &Context,
        ino: u64,
        handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let entries: Vec<(Vec<u8>, Node)> = if ino == ROOT {
            match self.handle(handle).ok().as_deref() {
                Some(OpenHandle::RootListing(entries)) => entries.clone(),
                _ => Vec::new(),
            }
        } else {
            self.listing(ino)?
                .entries()
                .map(|(n, node)| (n.as_bytes().to_vec(), node.clone()))
                .collect()
        };
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (name, node)) in entries.iter().enumerate().skip(skip) {
            let child = self
                .inodes
                .write()
                .map_err(|e| eio("inode table", e))?
                .child(ino, name, node);
            let added = add_entry(DirEntry {
                ino: child,
                offset: i as u64 + 1,
                type_: dirent_type(node),
                name,
            })?;
            if added == 0 {
                break;
            }
        }
        Ok(())
    }

    fn releasedir(&self, _ctx: &Context, _ino: u64, _flags: u32, handle: u64) -> io::Result<()> {
        self.drop_handle(handle);
        Ok(())
    }

    fn access(&self, _ctx: &Context, ino: u64, mask: u32) -> io::Result<()> {
        self.kind(ino)?;
        if mask & libc::W_OK as u32 != 0 {
            return Err(errno(libc::EROFS));
        }
        Ok(())
    }
}
