//! Objects stored long ago are sent again by a writer that is about to
//! refer to them: collection in a bucket goes by object age, so a blob a
//! copy finds but does not renew could be collected before the copy's
//! directories and PathInfo land.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, SystemTime};

use cairn_castore::blobservice::put_bytes;
use cairn_castore::import::NoProgress;
use cairn_store::copy::{copy_paths, NoCopyProgress};
use cairn_store::Store;

fn bucket_store(dir: &Path) -> Store {
    let addr = format!("objectstore+file://{}", dir.display());
    Store {
        blobs: cairn_objectstore::addr::blob_service_from_addr(&addr)
            .unwrap()
            .unwrap(),
        dirs: cairn_objectstore::addr::directory_service_from_addr(&addr)
            .unwrap()
            .unwrap(),
        path_infos: cairn_objectstore::addr::path_info_service_from_addr(&addr)
            .unwrap()
            .unwrap(),
    }
}

/// Makes every object in the bucket look `age` old, as the listing and
/// `HEAD` of a file bucket report it (its modification time).
fn age_everything(dir: &Path, age: Duration) {
    let then = SystemTime::now() - age;
    for entry in walk(dir) {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&entry)
            .unwrap();
        f.set_modified(then).unwrap();
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Bytes FastCDC cuts into several chunks.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_blobs_are_to_send_though_they_exist() {
    let tmp = tempfile::tempdir().unwrap();
    let store = bucket_store(tmp.path());
    let small = put_bytes(store.blobs.as_ref(), b"a small file\n")
        .await
        .unwrap();
    let large = put_bytes(store.blobs.as_ref(), &noise(9 << 20, 7))
        .await
        .unwrap();
    let both = [small, large];
    assert!(store.blobs.to_send(&both).await.unwrap().is_empty());

    age_everything(tmp.path(), Duration::from_secs(30 * 60));
    // Still there for readers and for the NAR server's completeness check,
    assert!(store.blobs.missing(&both).await.unwrap().is_empty());
    // but too old for a writer to rely on.
    assert_eq!(store.blobs.to_send(&both).await.unwrap(), both);

    // Writing them again renews them.
    put_bytes(store.blobs.as_ref(), b"a small file\n")
        .await
        .unwrap();
    put_bytes(store.blobs.as_ref(), &noise(9 << 20, 7))
        .await
        .unwrap();
    assert!(store.blobs.to_send(&both).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_onto_an_old_tree_in_a_bucket_renews_every_object() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/small"), b"copied onto old garbage\n").unwrap();
    std::fs::write(tree.join("large"), noise(5 << 20, 11)).unwrap();
    let from = Store {
        blobs: cairn_castore::addr::blob_service_from_addr("memory://").unwrap(),
        dirs: cairn_castore::addr::directory_service_from_addr("memory://").unwrap(),
        path_infos: cairn_store::addr::path_info_service_from_addr("memory://").unwrap(),
    };
    let info = from.import_tree(&tree, "tree", &NoProgress).await.unwrap();

    // The bucket has the tree's blobs and directories from long ago, but
    // no PathInfo for it: garbage a collection may take at any moment.
    let bucket = tmp.path().join("bucket");
    let to = bucket_store(&bucket);
    let orphan = Store {
        blobs: to.blobs.clone(),
        dirs: to.dirs.clone(),
        path_infos: cairn_store::addr::path_info_service_from_addr("memory://").unwrap(),
    };
    orphan
        .import_tree(&tree, "tree", &NoProgress)
        .await
        .unwrap();
    age_everything(&bucket, Duration::from_secs(30 * 60));

    let summary = copy_paths(
        &from,
        &to,
        std::slice::from_ref(&info.store_path),
        false,
        &NoCopyProgress,
    )
    .await
    .unwrap();
    assert_eq!((summary.copied, summary.blobs_sent), (1, 2), "{summary:?}");
    // Every object the path needs is young again: a collection with the
    // default grace period spares all of it even before the PathInfo
    // counts.
    let young = SystemTime::now() - Duration::from_secs(5 * 60);
    for object in walk(&bucket) {
        let modified = std::fs::metadata(&object).unwrap().modified().unwrap();
        let rel = object.strip_prefix(&bucket).unwrap().display().to_string();
        if rel.contains("pathinfo") || rel.ends_with("size-rule") {
            continue;
        }
        assert!(modified > young, "{rel} was left old");
    }
    let copied = to.path_info(&info.store_path).await.unwrap();
    assert_eq!(copied.nar_sha256, info.nar_sha256);
}
