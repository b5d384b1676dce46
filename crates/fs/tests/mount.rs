//! Real FUSE mounts of a store (in this process, through `/dev/fuse` and
//! `fusermount3`): trees read back through the mount are the trees that
//! were imported — `diff -r`, `find`, modes, sizes, symlink targets,
//! random reads of a large file — lookups of absent paths fail fast,
//! parallel readers see no errors, a read touches only the blobs it
//! needs, and a corrupt blob reads as EIO. Each mount is unmounted when
//! its test ends, passing or not.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use cairn_castore::blobservice::{BlobReader, BlobWriter, ChunkMeta};
use cairn_castore::import::NoProgress;
use cairn_castore::{B3Digest, BlobService, Error};
use cairn_fs::{mount, MountOptions, Mounted};
use cairn_store::{PathInfo, Store};
use cairn_testkit::{generated_trees, oracle, pseudo_random_bytes, real_trees, run_ok};
use tokio::runtime::Runtime;

/// A store on disk in `dir`.
fn disk_store(dir: &Path) -> Store {
    let objects = format!("objects://{}/objects", dir.display());
    let dirs = format!("redb://{}/castore.redb", dir.display());
    let infos = format!("redb://{}/pathinfo.redb", dir.display());
    Store {
        blobs: cairn_castore::addr::blob_service_from_addr(&objects).unwrap(),
        dirs: cairn_castore::addr::directory_service_from_addr(&dirs).unwrap(),
        path_infos: cairn_store::addr::path_info_service_from_addr(&infos).unwrap(),
    }
}

fn import(rt: &Runtime, store: &Store, tree: &Path) -> PathInfo {
    let name = tree
        .file_name()
        .unwrap()
        .to_string_lossy()
        .replace(['\n', ' '], "_");
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+-._?=".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    rt.block_on(store.import_tree(tree, &name, &NoProgress))
        .unwrap()
}

/// A temporary directory with a mount point and a store, and a runtime;
/// `None` (the test skips locally, fails in CI) without FUSE.
struct Fixture {
    rt: Runtime,
    _tmp: tempfile::TempDir,
    mountpoint: PathBuf,
}

impl Fixture {
    fn new() -> Option<Fixture> {
        oracle("fusermount3")?;
        let tmp = tempfile::tempdir().unwrap();
        let mountpoint = tmp.path().join("mnt");
        fs::create_dir(&mountpoint).unwrap();
        Some(Fixture {
            rt: Runtime::new().unwrap(),
            _tmp: tmp,
            mountpoint,
        })
    }

    /// The store on disk in this fixture (the same one each time).
    fn store(&self) -> Store {
        disk_store(&self.dir("store"))
    }

    fn dir(&self, name: &str) -> PathBuf {
        self._tmp.path().join(name)
    }

    fn mount(&self, store: Store, list_root: bool) -> Mounted {
        let options = MountOptions {
            list_root,
            ..MountOptions::default()
        };
        mount(store, self.rt.handle().clone(), &self.mountpoint, &options).unwrap()
    }

    fn at(&self, info: &PathInfo) -> PathBuf {
        self.mountpoint.join(info.store_path.base_name())
    }
}

/// `root/rel`, or `root` itself for the empty `rel` (`join("")` would
/// add a trailing slash, which a file root refuses).
fn below(root: &Path, rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() {
        root.to_owned()
    } else {
        root.join(rel)
    }
}

/// Every path below `root` (itself included), sorted, relative.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![PathBuf::new()];
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = below(root, &rel);
        if fs::symlink_metadata(&full).unwrap().is_dir() {
            for e in fs::read_dir(&full).unwrap() {
                let child = rel.join(e.unwrap().file_name());
                out.push(child.clone());
                stack.push(child);
            }
        }
    }
    out.sort();
    out
}

/// Type, executable bit, size and symlink target of every entry agree.
fn assert_same_tree(original: &Path, mounted: &Path) {
    let ours = walk(mounted);
    assert_eq!(ours, walk(original), "entries of {}", original.display());
    for rel in ours {
        let (o, m) = (below(original, &rel), below(mounted, &rel));
        let (om, mm) = (
            fs::symlink_metadata(&o).unwrap(),
            fs::symlink_metadata(&m).unwrap(),
        );
        assert_eq!(om.file_type(), mm.file_type(), "{}", rel.display());
        if om.is_file() {
            assert_eq!(om.len(), mm.len(), "{}", rel.display());
            assert_eq!(om.mode() & 0o100, mm.mode() & 0o100, "{}", rel.display());
            assert_eq!(mm.mode() & 0o222, 0, "{} is writable", rel.display());
        }
        if om.file_type().is_symlink() {
            assert_eq!(fs::read_link(&o).unwrap(), fs::read_link(&m).unwrap());
        }
    }
}

/// Entries `find` lists (NUL-separated, so odd names count once).
fn find_count(root: &Path) -> usize {
    let out = run_ok(Command::new("find").arg(root).arg("-print0"));
    out.iter().filter(|&&b| b == 0).count()
}

#[test]
fn mounted_trees_are_the_imported_trees() {
    let Some(f) = Fixture::new() else { return };
    let store = f.store();
    let generated = f.dir("generated");
    fs::create_dir(&generated).unwrap();
    let mut trees = generated_trees(&generated);
    trees.extend(real_trees());
    let infos: Vec<(PathBuf, PathInfo)> = trees
        .iter()
        .map(|t| (t.clone(), import(&f.rt, &store, t)))
        .collect();
    let _mounted = f.mount(store, false);
    for (tree, info) in &infos {
        let mounted = f.at(info);
        let diff = Command::new("diff")
            .args(["-r", "--no-dereference"])
            .arg(tree)
            .arg(&mounted)
            .output()
            .unwrap();
        assert!(
            diff.status.success(),
            "diff -r {} {}:\n{}{}",
            tree.display(),
            mounted.display(),
            String::from_utf8_lossy(&diff.stdout),
            String::from_utf8_lossy(&diff.stderr)
        );
        assert_eq!(find_count(&mounted), find_count(tree), "{}", tree.display());
        assert_same_tree(tree, &mounted);
    }
}

#[test]
fn random_reads_of_a_large_file_match_and_absent_paths_fail_fast() {
    let Some(f) = Fixture::new() else { return };
    let store = f.store();
    let tree = f.dir("big");
    fs::create_dir(&tree).unwrap();
    let data = pseudo_random_bytes(11, 24 << 20);
    fs::write(tree.join("blob.bin"), &data).unwrap();
    let info = import(&f.rt, &store, &tree);
    let mounted = f.mount(store.clone(), true);

    let file = fs::File::open(f.at(&info).join("blob.bin")).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..200 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let offset = state % (data.len() as u64 - 4096);
        let mut buf = [0u8; 4096];
        file.read_exact_at(&mut buf, offset).unwrap();
        assert!(
            buf[..] == data[offset as usize..offset as usize + 4096],
            "at {offset}"
        );
    }
    // The last bytes, and a read past the end.
    let mut tail = Vec::new();
    let mut f2 = fs::File::open(f.at(&info).join("blob.bin")).unwrap();
    f2.read_to_end(&mut tail).unwrap();
    assert!(tail == data);

    // With --list-root the root lists the store path.
    let listed: Vec<_> = fs::read_dir(&f.mountpoint)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        listed,
        [std::ffi::OsString::from(info.store_path.base_name())]
    );
    // A path added while mounted shows up in the next listing: the root's
    // listing is never cached.
    let later = f.dir("later");
    fs::create_dir(&later).unwrap();
    fs::write(later.join("new.txt"), b"added while mounted\n").unwrap();
    let later = import(&f.rt, &store, &later);
    let mut listed: Vec<_> = fs::read_dir(&f.mountpoint)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    listed.sort();
    let mut expected = vec![
        std::ffi::OsString::from(info.store_path.base_name()),
        std::ffi::OsString::from(later.store_path.base_name()),
    ];
    expected.sort();
    assert_eq!(listed, expected);

    // As root, the mount's kernel read-ahead is the one asked for.
    if rustix::process::geteuid().is_root() {
        let dev = fs::metadata(&f.mountpoint).unwrap().dev();
        let knob = format!(
            "/sys/class/bdi/{}:{}/read_ahead_kb",
            rustix::fs::major(dev),
            rustix::fs::minor(dev)
        );
        let set = fs::read_to_string(&knob).unwrap();
        assert_eq!(
            set.trim(),
            MountOptions::default().read_ahead_kib.to_string(),
            "{knob}"
        );
    }

    let started = Instant::now();
    for name in [
        "00000000000000000000000000000000-absent",
        "not-a-store-path",
        "blob.bin",
    ] {
        let err = fs::metadata(f.mountpoint.join(name)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{name}");
    }
    let err = fs::metadata(f.at(&info).join("nope")).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert!(started.elapsed() < Duration::from_secs(2));

    // Read-only: no writes, no new files.
    for name in ["blob.bin", "new"] {
        let err = fs::write(f.at(&info).join(name), b"x").unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EROFS),
            "writing {name}: {err}"
        );
    }
    assert!(mounted_read_only(&f.mountpoint));
    mounted.unmount().unwrap();
    assert!(!is_mounted(&f.mountpoint));
}

/// Whether /proc/mounts lists `path` with the `ro` option.
fn mounted_read_only(path: &Path) -> bool {
    fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .any(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            fields.get(1) == Some(&&*path.to_string_lossy())
                && fields
                    .get(3)
                    .is_some_and(|o| o.split(',').any(|x| x == "ro"))
        })
}

fn is_mounted(path: &Path) -> bool {
    fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(&*path.to_string_lossy()))
}

/// The inodes the mount says are in use (`stat -f`: total minus free,
/// what `df -i` shows as used).
fn inodes_held(mountpoint: &Path) -> u64 {
    let out = run_ok(
        Command::new("stat")
            .args(["-f", "-c", "%c %d"])
            .arg(mountpoint),
    );
    let out = String::from_utf8(out).unwrap();
    let (total, free) = out.trim().split_once(' ').unwrap();
    total.parse::<u64>().unwrap() - free.parse::<u64>().unwrap()
}

#[test]
fn the_mount_lets_go_of_inodes_the_kernel_forgets() {
    let Some(f) = Fixture::new() else { return };
    let store = f.store();
    let tree = f.dir("wide");
    for d in 0..20 {
        let sub = tree.join(format!("d{d}"));
        fs::create_dir_all(&sub).unwrap();
        for i in 0..25 {
            fs::write(sub.join(format!("f{i}")), format!("{d}/{i}")).unwrap();
        }
    }
    let info = import(&f.rt, &store, &tree);
    let _mounted = f.mount(store, false);
    let mounted = f.at(&info);
    assert_eq!(find_count(&mounted), 521);
    let walked = inodes_held(&f.mountpoint);
    assert!(walked > 521, "after find the mount holds {walked} inodes");

    // Make the kernel drop every unused dentry and inode: it forgets them.
    if fs::write("/proc/sys/vm/drop_caches", "2").is_err() {
        assert!(
            !cairn_testkit::oracles_required(),
            "cannot write /proc/sys/vm/drop_caches (needs root) but CAIRN_REQUIRE_ORACLES=1"
        );
        eprintln!("SKIP (rest): cannot drop the kernel's caches without root");
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut held = inodes_held(&f.mountpoint);
    while held > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        held = inodes_held(&f.mountpoint);
    }
    assert_eq!(
        held, 1,
        "only the root is left after the kernel forgot the rest"
    );
    // Forgotten paths are found again, with the same contents.
    let diff = Command::new("diff")
        .arg("-r")
        .arg(&tree)
        .arg(&mounted)
        .output()
        .unwrap();
    assert!(
        diff.status.success(),
        "{}",
        String::from_utf8_lossy(&diff.stdout)
    );
}

#[test]
fn parallel_readers_see_no_errors() {
    let Some(f) = Fixture::new() else { return };
    let store = f.store();
    let generated = f.dir("generated");
    fs::create_dir(&generated).unwrap();
    let sink = generated_trees(&generated)
        .into_iter()
        .find(|t| t.ends_with("kitchen-sink"))
        .unwrap();
    let info = import(&f.rt, &store, &sink);
    let _mounted = f.mount(store, false);
    let readers: Vec<_> = (0..8)
        .map(|_| {
            Command::new("sh")
                .arg("-c")
                .arg("find \"$1\" -type f -exec cat {} + > /dev/null")
                .arg("sh")
                .arg(f.at(&info))
                .spawn()
                .unwrap()
        })
        .collect();
    for mut r in readers {
        assert!(r.wait().unwrap().success());
    }
}

/// A blob service that records which blobs were opened and how many
/// bytes were read through them.
struct Counting {
    inner: Arc<dyn BlobService>,
    opened: Mutex<Vec<B3Digest>>,
    bytes: Arc<AtomicU64>,
}

struct CountingReader {
    inner: Box<dyn BlobReader>,
    bytes: Arc<AtomicU64>,
}

impl tokio::io::AsyncRead for CountingReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        self.bytes
            .fetch_add((buf.filled().len() - before) as u64, Ordering::Relaxed);
        r
    }
}

impl tokio::io::AsyncSeek for CountingReader {
    fn start_seek(
        mut self: std::pin::Pin<&mut Self>,
        pos: std::io::SeekFrom,
    ) -> std::io::Result<()> {
        std::pin::Pin::new(&mut self.inner).start_seek(pos)
    }
    fn poll_complete(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<u64>> {
        std::pin::Pin::new(&mut self.inner).poll_complete(cx)
    }
}

#[async_trait]
impl BlobService for Counting {
    async fn has(&self, digest: &B3Digest) -> Result<bool, Error> {
        self.inner.has(digest).await
    }
    async fn open_read(&self, digest: &B3Digest) -> Result<Option<Box<dyn BlobReader>>, Error> {
        self.opened.lock().unwrap().push(*digest);
        Ok(self.inner.open_read(digest).await?.map(|r| {
            Box::new(CountingReader {
                inner: r,
                bytes: self.bytes.clone(),
            }) as Box<dyn BlobReader>
        }))
    }
    async fn open_write(&self) -> Box<dyn BlobWriter> {
        self.inner.open_write().await
    }
    async fn read_many(&self, wanted: &[(B3Digest, u64)]) -> Result<Vec<Option<Bytes>>, Error> {
        self.opened
            .lock()
            .unwrap()
            .extend(wanted.iter().map(|(d, _)| *d));
        self.inner.read_many(wanted).await
    }
    async fn chunks(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        self.inner.chunks(digest).await
    }
}

#[test]
fn a_read_fetches_only_what_it_reads() {
    let Some(f) = Fixture::new() else { return };
    let store = f.store();
    let tree = f.dir("tree");
    fs::create_dir_all(tree.join("sub")).unwrap();
    let big = pseudo_random_bytes(5, 32 << 20);
    fs::write(tree.join("large.bin"), &big).unwrap();
    for i in 0..50 {
        fs::write(
            tree.join("sub").join(format!("f{i}")),
            format!("small {i}\n"),
        )
        .unwrap();
    }
    let info = import(&f.rt, &store, &tree);
    let counting = Arc::new(Counting {
        inner: store.blobs.clone(),
        opened: Mutex::new(Vec::new()),
        bytes: Arc::new(AtomicU64::new(0)),
    });
    let _mounted = f.mount(
        Store {
            blobs: counting.clone(),
            ..store
        },
        false,
    );
    // Listing and stat fetch no blob at all.
    let names: HashSet<_> = fs::read_dir(f.at(&info).join("sub"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 50);
    assert_eq!(
        fs::metadata(f.at(&info).join("large.bin")).unwrap().len(),
        big.len() as u64
    );
    assert!(counting.opened.lock().unwrap().is_empty());

    // One small file: its blob only.
    let text = fs::read_to_string(f.at(&info).join("sub/f7")).unwrap();
    assert_eq!(text, "small 7\n");
    let expected = blake3::hash(b"small 7\n");
    let opened = counting.opened.lock().unwrap().clone();
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert_eq!(opened[0].as_bytes(), expected.as_bytes());

    // 4 KiB in the middle of 32 MiB: a little more than that is read
    // (kernel readahead), nowhere near the whole blob.
    let before = counting.bytes.load(Ordering::Relaxed);
    let mut buf = [0u8; 4096];
    fs::File::open(f.at(&info).join("large.bin"))
        .unwrap()
        .read_exact_at(&mut buf, 20 << 20)
        .unwrap();
    assert!(buf[..] == big[20 << 20..(20 << 20) + 4096]);
    let read = counting.bytes.load(Ordering::Relaxed) - before;
    assert!(read < 2 << 20, "{read} bytes read through the blob reader");
}

#[test]
fn a_corrupt_blob_reads_as_eio() {
    let Some(f) = Fixture::new() else { return };
    let tree = f.dir("tree");
    fs::create_dir(&tree).unwrap();
    let data = pseudo_random_bytes(9, 4 << 20);
    fs::write(tree.join("data.bin"), &data).unwrap();
    fs::write(tree.join("ok.txt"), b"fine\n").unwrap();
    let info = {
        let store = f.store();
        import(&f.rt, &store, &tree)
    };
    // Flip a byte in the middle of the pack: inside the large file.
    let packs = f.dir("store").join("objects/packs");
    let pack = fs::read_dir(&packs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = fs::read(&pack).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    fs::write(&pack, &bytes).unwrap();

    let _mounted = f.mount(f.store(), false);
    let err = fs::read(f.at(&info).join("data.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // The rest of the path still reads.
    assert_eq!(fs::read(f.at(&info).join("ok.txt")).unwrap(), b"fine\n");
}
