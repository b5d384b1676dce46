//! One test suite, run against every backend: the same expectations for
//! `memory://`, the on-disk default (`objects://` + `redb://`), the
//! on-disk default with zstd and with the tvix-compat size rule, and the
//! object-store backends (`objectstore+memory://`, `objectstore+file://`
//! plain, with zstd, with the tvix-compat rule, and `objectstore+s3://` on
//! the Garage cluster of `scripts/garage-cluster`, plain and with zstd).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use bytes::Bytes;
use cairn_castore::addr::{blob_service_from_addr, directory_service_from_addr};
use cairn_castore::blobservice::{put_bytes, read_to_vec, FileIngestError};
use cairn_castore::directoryservice::put_closure;
use cairn_castore::gc::KeepYoung;
use cairn_castore::{
    B3Digest, BlobService, Directory, DirectoryService, Error, Node, PathComponent, SymlinkTarget,
};
use cairn_testkit::pseudo_random_bytes;
use futures::TryStreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

struct Backend {
    blobs: Arc<dyn BlobService>,
    dirs: Arc<dyn DirectoryService>,
    chunked: bool,
    _dir: Option<tempfile::TempDir>,
}

/// The backend `kind` names; `None` skips the test (an S3 bucket that is
/// not there locally).
fn backend(kind: &str) -> Option<Backend> {
    if let Some(query) = kind.strip_prefix("memory") {
        return Some(Backend {
            blobs: blob_service_from_addr("memory://").unwrap(),
            dirs: directory_service_from_addr(&format!("memory://{query}")).unwrap(),
            chunked: false,
            _dir: None,
        });
    }
    if let Some(options) = kind.strip_prefix("objectstore-") {
        return object_store_backend(options);
    }
    let dir = tempfile::tempdir().unwrap();
    let (blob_q, dir_q) = match kind {
        "disk" => ("", ""),
        "disk-zstd" => ("?compression=zstd", ""),
        "disk-tvix" => ("", "?size-rule=tvix-compat"),
        other => panic!("unknown backend {other}"),
    };
    let root = dir.path().display().to_string();
    Some(Backend {
        blobs: blob_service_from_addr(&format!("objects://{root}/objects{blob_q}")).unwrap(),
        dirs: directory_service_from_addr(&format!("redb://{root}/castore.redb{dir_q}")).unwrap(),
        chunked: true,
        _dir: Some(dir),
    })
}

/// The object-store backends (crate cairn-objectstore), by the same
/// addresses a user gives: `objectstore+memory://` or a directory.
fn object_store_backend(options: &str) -> Option<Backend> {
    let (blob_q, dir_q) = match options {
        "memory" | "file" | "s3" => ("", ""),
        "file-zstd" => ("?compression=zstd", ""),
        "s3-zstd" => ("&compression=zstd", ""),
        "file-tvix" => ("", "?size-rule=tvix-compat"),
        other => panic!("unknown object-store backend {other}"),
    };
    let (base, dir) = if options == "memory" {
        ("objectstore+memory://".to_owned(), None)
    } else if options.starts_with("s3") {
        let bucket = cairn_testkit::s3_bucket()?;
        (cairn_testkit::with_fresh_prefix(&bucket), None)
    } else {
        let dir = tempfile::tempdir().unwrap();
        (
            format!("objectstore+file://{}", dir.path().display()),
            Some(dir),
        )
    };
    let blobs = cairn_objectstore::addr::blob_service_from_addr(&format!("{base}{blob_q}"))
        .unwrap()
        .unwrap();
    let dirs = cairn_objectstore::addr::directory_service_from_addr(&format!("{base}{dir_q}"))
        .unwrap()
        .unwrap();
    Some(Backend {
        blobs,
        dirs,
        chunked: true,
        _dir: dir,
    })
}

fn name(s: &str) -> PathComponent {
    PathComponent::try_from(s).unwrap()
}

fn file(data: &[u8]) -> Node {
    Node::File {
        digest: B3Digest::of(data),
        size: data.len() as u64,
        executable: false,
    }
}

/// leaf ← mid ← root, plus a symlink; returns them leaves first.
fn closure(rule: cairn_castore::SizeRule) -> Vec<Directory> {
    let mut leaf = Directory::new();
    leaf.add(name("data"), file(b"leaf data")).unwrap();
    let mut mid = Directory::new();
    mid.add(
        name("leaf"),
        Node::Directory {
            digest: leaf.digest(),
            size: leaf.size(rule).unwrap(),
        },
    )
    .unwrap();
    mid.add(
        name("link"),
        Node::Symlink {
            target: SymlinkTarget::new(Bytes::from_static(b"leaf/data"), b"link").unwrap(),
        },
    )
    .unwrap();
    let mut root = Directory::new();
    root.add(
        name("mid"),
        Node::Directory {
            digest: mid.digest(),
            size: mid.size(rule).unwrap(),
        },
    )
    .unwrap();
    root.add(
        name("also-leaf"),
        Node::Directory {
            digest: leaf.digest(),
            size: leaf.size(rule).unwrap(),
        },
    )
    .unwrap();
    vec![leaf, mid, root]
}

async fn blob_round_trips(b: Backend) {
    for len in [
        0usize,
        1,
        16 * 1024 - 1,
        64 * 1024,
        256 * 1024 + 1,
        3 * 1024 * 1024 + 7,
    ] {
        let data = pseudo_random_bytes(len as u64, len);
        let mut w = b.blobs.open_write().await;
        for piece in data.chunks(100_001) {
            w.write(piece).await.unwrap();
        }
        let digest = w.close().await.unwrap();
        assert_eq!(digest, B3Digest::of(&data), "len {len}");
        assert!(b.blobs.has(&digest).await.unwrap());
        assert_eq!(
            read_to_vec(b.blobs.as_ref(), &digest)
                .await
                .unwrap()
                .unwrap(),
            data,
            "len {len}"
        );
        // Writing the same bytes again is harmless and names the same blob.
        assert_eq!(put_bytes(b.blobs.as_ref(), &data).await.unwrap(), digest);
    }
}

/// Many writers at once, small blobs and chunked ones, each read back
/// whole: a backend that shares files between writers must not let one
/// writer's bytes land on another's.
async fn blob_concurrent_writers(b: Backend) {
    let mut tasks = Vec::new();
    for i in 0..64u64 {
        let blobs = b.blobs.clone();
        tasks.push(tokio::spawn(async move {
            // Several chunks at every backend's chunk sizes.
            let len = if i % 8 == 0 {
                9 * 1024 * 1024 + i as usize
            } else {
                5_000 + i as usize
            };
            let data = pseudo_random_bytes(1000 + i, len);
            let digest = if i % 2 == 0 {
                put_bytes(blobs.as_ref(), &data).await.unwrap()
            } else {
                blobs
                    .put_many(vec![bytes::Bytes::from(data.clone())])
                    .await
                    .unwrap()[0]
            };
            (digest, data)
        }));
    }
    let written: Vec<(B3Digest, Vec<u8>)> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for (digest, data) in &written {
        assert_eq!(*digest, B3Digest::of(data));
        let back = read_to_vec(b.blobs.as_ref(), digest)
            .await
            .unwrap()
            .unwrap();
        assert!(
            back == *data,
            "blob of {} bytes read back wrong",
            data.len()
        );
    }
    // And all at once, with one never written among them.
    let absent = B3Digest::of(b"never written");
    let mut wanted: Vec<(B3Digest, u64)> = written
        .iter()
        .map(|(d, data)| (*d, data.len() as u64))
        .collect();
    wanted.insert(3, (absent, 5));
    let mut got = b.blobs.read_many(&wanted).await.unwrap();
    assert_eq!(got.len(), wanted.len());
    assert!(got[3].is_none());
    got.remove(3);
    for (back, (_, data)) in got.iter().zip(&written) {
        assert!(
            back.as_deref() == Some(&data[..]),
            "read_many gave a blob of {} bytes back wrong",
            data.len()
        );
    }
}

async fn blob_missing(b: Backend) {
    let d = B3Digest::of(b"never written");
    assert!(!b.blobs.has(&d).await.unwrap());
    assert!(b.blobs.open_read(&d).await.unwrap().is_none());
    assert!(b.blobs.chunks(&d).await.unwrap().is_none());
}

async fn blob_chunks_are_blobs(b: Backend) {
    // Several chunks at every backend's chunk sizes (2 MiB on average
    // for buckets).
    let data = pseudo_random_bytes(9, 12 * 1024 * 1024 + 3);
    let digest = put_bytes(b.blobs.as_ref(), &data).await.unwrap();
    let chunks = b.blobs.chunks(&digest).await.unwrap().unwrap();
    if !b.chunked {
        assert!(chunks.is_empty());
        return;
    }
    assert!(chunks.len() > 2, "{} chunks", chunks.len());
    let mut joined = Vec::new();
    for c in &chunks {
        let piece = read_to_vec(b.blobs.as_ref(), &c.digest)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(piece.len() as u64, c.size);
        joined.extend(piece);
    }
    assert_eq!(joined, data);
    // A small blob has no finer chunks.
    let small = put_bytes(b.blobs.as_ref(), b"tiny").await.unwrap();
    assert_eq!(b.blobs.chunks(&small).await.unwrap(), Some(vec![]));
}

async fn blob_random_access(b: Backend) {
    let data = pseudo_random_bytes(11, 3 * 1024 * 1024);
    let digest = put_bytes(b.blobs.as_ref(), &data).await.unwrap();
    let mut r = b.blobs.open_read(&digest).await.unwrap().unwrap();
    let mut x = 12345u64;
    for _ in 0..64 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let at = (x >> 16) % data.len() as u64;
        r.seek(std::io::SeekFrom::Start(at)).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let want = &data[at as usize..(at as usize + 4096).min(data.len())];
        let mut got = 0;
        while got < want.len() {
            let n = r.read(&mut buf[got..want.len()]).await.unwrap();
            assert!(n > 0);
            got += n;
        }
        assert_eq!(&buf[..want.len()], want, "at {at}");
    }
    let end = r.seek(std::io::SeekFrom::End(0)).await.unwrap();
    assert_eq!(end, data.len() as u64);
    assert_eq!(r.read(&mut [0u8; 8]).await.unwrap(), 0);
}

async fn blob_unclosed_writer_leaves_nothing(b: Backend) {
    let data = pseudo_random_bytes(13, 600 * 1024);
    let mut w = b.blobs.open_write().await;
    w.write(&data).await.unwrap();
    drop(w);
    assert!(!b.blobs.has(&B3Digest::of(&data)).await.unwrap());
}

async fn blob_ingest_file(b: Backend) {
    let src = tempfile::tempdir().unwrap();
    for len in [0usize, 5, 1024 * 1024, 1024 * 1024 + 1, 5 * 1024 * 1024 + 3] {
        let data = pseudo_random_bytes(len as u64 + 77, len);
        let path = src.path().join(format!("f{len}"));
        std::fs::write(&path, &data).unwrap();
        let digest = b.blobs.ingest_file(&path, len as u64).await.unwrap();
        assert_eq!(digest, B3Digest::of(&data), "len {len}");
        assert_eq!(
            read_to_vec(b.blobs.as_ref(), &digest).await.unwrap(),
            Some(data),
            "len {len}"
        );
    }
    // A file whose length differs from the one it was listed with (it
    // changed in between) is refused, and no blob appears for it.
    for (len, listed) in [
        (100usize, 101u64),
        (100, 99),
        (3 * 1024 * 1024, 2 * 1024 * 1024),
    ] {
        let data = pseudo_random_bytes(len as u64 + 991, len);
        let path = src.path().join("changing");
        std::fs::write(&path, &data).unwrap();
        let err = b.blobs.ingest_file(&path, listed).await.unwrap_err();
        assert!(
            matches!(err, FileIngestError::Changed { expected, .. } if expected == listed),
            "{err}"
        );
        assert!(
            err.to_string().contains("changed while being imported"),
            "{err}"
        );
        assert!(!b.blobs.has(&B3Digest::of(&data)).await.unwrap());
        let prefix = &data[..(listed as usize).min(len)];
        assert!(!b.blobs.has(&B3Digest::of(prefix)).await.unwrap());
    }
    let err = b
        .blobs
        .ingest_file(&src.path().join("absent"), 3)
        .await
        .unwrap_err();
    assert!(matches!(err, FileIngestError::Read { .. }), "{err}");
    assert!(err.to_string().contains("absent"), "{err}");
}

async fn garbage_collection_keeps_live_blobs_and_their_chunks(b: Backend) {
    let live_small = put_bytes(b.blobs.as_ref(), b"live").await.unwrap();
    let dead_small = put_bytes(b.blobs.as_ref(), b"dead").await.unwrap();
    let big = pseudo_random_bytes(21, 3 * 1024 * 1024);
    let live_big = put_bytes(b.blobs.as_ref(), &big).await.unwrap();
    let dead_big = put_bytes(b.blobs.as_ref(), &pseudo_random_bytes(22, 3 * 1024 * 1024))
        .await
        .unwrap();
    let live: std::collections::HashSet<B3Digest> = [live_small, live_big].into();

    // A long grace period spares everything just written.
    let spared = b
        .blobs
        .collect_garbage(&live, hour_of_grace(), false)
        .await
        .unwrap();
    assert_eq!(spared.deleted, 0);
    assert!(spared.young >= 2, "{spared:?}");
    let dry = b
        .blobs
        .collect_garbage(&live, KeepYoung::NOTHING, true)
        .await
        .unwrap();
    assert!(dry.deleted >= 2, "{dry:?}");
    assert!(
        b.blobs.has(&dead_small).await.unwrap(),
        "a dry run deletes nothing"
    );

    let done = b
        .blobs
        .collect_garbage(&live, KeepYoung::NOTHING, false)
        .await
        .unwrap();
    assert_eq!(done.deleted, dry.deleted);
    assert!(!b.blobs.has(&dead_small).await.unwrap());
    assert!(!b.blobs.has(&dead_big).await.unwrap());
    assert_eq!(
        read_to_vec(b.blobs.as_ref(), &live_big)
            .await
            .unwrap()
            .unwrap(),
        big
    );
    assert!(b.blobs.has(&live_small).await.unwrap());
    if let Ok(report) = b.blobs.verify_all().await {
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }
}

/// What a collection starting now with an hour of grace keeps young.
fn hour_of_grace() -> KeepYoung {
    KeepYoung::within(
        std::time::Duration::from_secs(3600),
        std::time::SystemTime::now(),
    )
}

async fn directory_garbage_collection(b: Backend) {
    let rule = b.dirs.size_rule();
    let dirs = closure(rule);
    let root = put_closure(b.dirs.as_ref(), dirs.clone()).await.unwrap();
    let mut other = Directory::new();
    other.add(name("x"), file(b"x")).unwrap();
    let other_digest = put_closure(b.dirs.as_ref(), vec![other]).await.unwrap();
    let live: std::collections::HashSet<B3Digest> = dirs.iter().map(Directory::digest).collect();
    // Just put: unreachable, but it may be an import whose PathInfo has
    // not landed yet, so an hour's grace keeps it.
    let hour = hour_of_grace();
    // Everything was just put: all of it is young (the GC's roots to keep).
    let written: std::collections::HashSet<B3Digest> = b
        .dirs
        .written_within(hour)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert!(written.contains(&other_digest) && live.iter().all(|d| written.contains(d)));
    assert!(b
        .dirs
        .written_within(KeepYoung::NOTHING)
        .await
        .unwrap()
        .is_empty());
    let young = b.dirs.collect_garbage(&live, hour, false).await.unwrap();
    assert_eq!((young.live, young.young, young.deleted), (3, 1, 0));
    assert!(b.dirs.get(&other_digest).await.unwrap().is_some());
    let zero = KeepYoung::NOTHING;
    let dry = b.dirs.collect_garbage(&live, zero, true).await.unwrap();
    assert_eq!((dry.live, dry.deleted), (3, 1));
    assert!(b.dirs.get(&other_digest).await.unwrap().is_some());
    let done = b.dirs.collect_garbage(&live, zero, false).await.unwrap();
    assert_eq!((done.live, done.deleted), (3, 1));
    assert!(b.dirs.get(&other_digest).await.unwrap().is_none());
    let walked: Vec<Directory> = b.dirs.get_recursive(&root).try_collect().await.unwrap();
    assert_eq!(walked.len(), 3);
}

async fn directory_round_trips(b: Backend) {
    let rule = b.dirs.size_rule();
    let dirs = closure(rule);
    let root = put_closure(b.dirs.as_ref(), dirs.clone()).await.unwrap();
    assert_eq!(root, dirs[2].digest());
    for d in &dirs {
        assert_eq!(b.dirs.get(&d.digest()).await.unwrap().as_ref(), Some(d));
    }
    // Breadth-first in name order ("also-leaf" before "mid"), parents
    // first, each once although the leaf is reachable twice.
    let got: Vec<Directory> = b.dirs.get_recursive(&root).try_collect().await.unwrap();
    assert_eq!(got, vec![dirs[2].clone(), dirs[0].clone(), dirs[1].clone()]);
    let sub: Vec<Directory> = b
        .dirs
        .get_recursive(&dirs[1].digest())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(sub, vec![dirs[1].clone(), dirs[0].clone()]);
    // The empty directory is a valid closure of one.
    let empty = put_closure(b.dirs.as_ref(), [Directory::new()])
        .await
        .unwrap();
    assert_eq!(empty, B3Digest::empty());
}

async fn directory_missing(b: Backend) {
    let d = B3Digest::of(b"no such directory");
    assert!(b.dirs.get(&d).await.unwrap().is_none());
    let r: Result<Vec<Directory>, Error> = b.dirs.get_recursive(&d).try_collect().await;
    assert!(matches!(r, Err(Error::NotFound { .. })), "{r:?}");
}

async fn bad_closures_are_rejected_and_invisible(b: Backend) {
    let rule = b.dirs.size_rule();
    let dirs = closure(rule);
    let (leaf, mid, root) = (dirs[0].clone(), dirs[1].clone(), dirs[2].clone());

    // Dangling: mid without the leaf it refers to.
    let err = put_closure(b.dirs.as_ref(), [mid.clone(), root.clone()])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidClosure(_)), "{err}");
    assert!(err.to_string().contains("was not sent before it"), "{err}");
    // Unreachable: a directory nothing in the closure refers to.
    let mut stray = Directory::new();
    stray.add(name("x"), file(b"stray")).unwrap();
    let err = put_closure(
        b.dirs.as_ref(),
        [stray.clone(), leaf.clone(), mid.clone(), root.clone()],
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("not reachable"), "{err}");
    // Wrong declared size for a child.
    let mut liar = Directory::new();
    liar.add(
        name("leaf"),
        Node::Directory {
            digest: leaf.digest(),
            size: leaf.size(rule).unwrap() + 1,
        },
    )
    .unwrap();
    let err = put_closure(b.dirs.as_ref(), [leaf.clone(), liar])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("declares size"), "{err}");
    // Nothing sent: an error, not a silent success.
    assert!(put_closure(b.dirs.as_ref(), Vec::<Directory>::new())
        .await
        .is_err());

    // None of the rejected closures left anything behind.
    for d in [&leaf, &mid, &root, &stray] {
        assert!(
            b.dirs.get(&d.digest()).await.unwrap().is_none(),
            "{} is visible",
            d.digest()
        );
    }
}

macro_rules! suite {
    ($($backend:ident => $kind:literal),* $(,)?) => {
        $(mod $backend {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn blob_round_trips() { if let Some(b) = backend($kind) { super::blob_round_trips(b).await } }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn blob_concurrent_writers() { if let Some(b) = backend($kind) { super::blob_concurrent_writers(b).await } }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn blob_missing() { if let Some(b) = backend($kind) { super::blob_missing(b).await } }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn blob_chunks_are_blobs() { if let Some(b) = backend($kind) { super::blob_chunks_are_blobs(b).await } }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn blob_random_access() { if let Some(b) = backend($kind) { super::blob_random_access(b).await } }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn blob_unclosed_writer_leaves_nothing() { if let Some(b) = backend($kind) { super::blob_unclosed_writer_leaves_nothing(b).await } }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn blob_ingest_file() { if let Some(b) = backend($kind) { super::blob_ingest_file(b).await } }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn garbage_collection_keeps_live_blobs_and_their_chunks() { if let Some(b) = backend($kind) { super::garbage_collection_keeps_live_blobs_and_their_chunks(b).await } }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn directory_garbage_collection() { if let Some(b) = backend($kind) { super::directory_garbage_collection(b).await } }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn directory_round_trips() { if let Some(b) = backend($kind) { super::directory_round_trips(b).await } }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn directory_missing() { if let Some(b) = backend($kind) { super::directory_missing(b).await } }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn bad_closures_are_rejected_and_invisible() { if let Some(b) = backend($kind) { super::bad_closures_are_rejected_and_invisible(b).await } }
        })*
    };
}

suite! {
    memory => "memory",
    memory_tvix => "memory?size-rule=tvix-compat",
    disk => "disk",
    disk_zstd => "disk-zstd",
    disk_tvix => "disk-tvix",
    objectstore_memory => "objectstore-memory",
    objectstore_file => "objectstore-file",
    objectstore_file_zstd => "objectstore-file-zstd",
    objectstore_file_tvix => "objectstore-file-tvix",
    objectstore_s3 => "objectstore-s3",
    objectstore_s3_zstd => "objectstore-s3-zstd",
}
