//! Garbage collection and imports running at the same time: a directory
//! written within the grace period keeps everything it reaches, even
//! objects older than the grace period that its import found already
//! stored and so did not write again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use cairn_castore::blobservice::{put_bytes, read_to_vec};
use cairn_castore::gc::KeepYoung;
use cairn_castore::{Directory, Node, PathComponent};
use cairn_store::Store;

/// The embedded default in `dir`, as the CLI opens it.
fn disk_store(dir: &Path) -> Store {
    let d = dir.display();
    Store {
        blobs: cairn_castore::addr::blob_service_from_addr(&format!("objects://{d}/objects"))
            .unwrap(),
        dirs: cairn_castore::addr::directory_service_from_addr(&format!("redb://{d}/castore.redb"))
            .unwrap(),
        path_infos: cairn_store::addr::path_info_service_from_addr(&format!(
            "redb://{d}/pathinfo.redb"
        ))
        .unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_young_directory_keeps_the_old_blobs_it_reaches() {
    let tmp = tempfile::tempdir().unwrap();
    let store = disk_store(tmp.path());
    // Left behind by a path deleted long ago: unreachable, and older than
    // the grace period by the time the import below runs.
    let contents = b"stored long ago, reused today\n";
    let old = put_bytes(store.blobs.as_ref(), contents).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;

    // An import in progress: its directories are written (it found the
    // blob already stored), its PathInfo not yet.
    let mut inner = Directory::new();
    inner
        .add(
            PathComponent::try_from("file").unwrap(),
            Node::File {
                digest: old,
                size: contents.len() as u64,
                executable: false,
            },
        )
        .unwrap();
    let mut root = Directory::new();
    root.add(
        PathComponent::try_from("sub").unwrap(),
        Node::Directory {
            digest: inner.digest(),
            size: inner.size(store.dirs.size_rule()).unwrap(),
        },
    )
    .unwrap();
    let mut putter = store.dirs.put_multiple_start();
    putter.put(inner.clone()).await.unwrap();
    putter.put(root.clone()).await.unwrap();
    let root_digest = putter.close().await.unwrap();

    let grace = Duration::from_secs(3);
    let summary = store.collect_garbage(grace, false).await.unwrap();
    assert_eq!(summary.directories.young, 2, "{summary:?}");
    assert_eq!(summary.directories.deleted, 0, "{summary:?}");
    assert_eq!(summary.blobs.deleted, 0, "{summary:?}");
    assert!(store.dirs.get(&root_digest).await.unwrap().is_some());
    let read = read_to_vec(store.blobs.as_ref(), &old).await.unwrap();
    assert_eq!(read.as_deref(), Some(&contents[..]));

    // Without a grace period both are garbage: they were kept for their
    // age alone.
    let summary = store.collect_garbage(Duration::ZERO, false).await.unwrap();
    assert_eq!(summary.directories.deleted, 2, "{summary:?}");
    assert!(summary.blobs.deleted >= 1, "{summary:?}");
    assert!(!store.blobs.has(&old).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_dates_again_the_old_tree_it_finds_so_a_collection_spares_it() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/file"), b"copied onto old garbage\n").unwrap();
    let from = Store {
        blobs: cairn_castore::addr::blob_service_from_addr("memory://").unwrap(),
        dirs: cairn_castore::addr::directory_service_from_addr("memory://").unwrap(),
        path_infos: cairn_store::addr::path_info_service_from_addr("memory://").unwrap(),
    };
    let info = from
        .import_tree(&tree, "tree", &cairn_castore::import::NoProgress)
        .await
        .unwrap();
    let Node::Directory { digest: root, .. } = info.node else {
        panic!("a directory")
    };

    // The destination holds the same tree as garbage, written long ago
    // (by a path since deleted): its PathInfo went elsewhere.
    let to = disk_store(&tmp.path().join("to"));
    let orphan = Store {
        blobs: to.blobs.clone(),
        dirs: to.dirs.clone(),
        path_infos: cairn_store::addr::path_info_service_from_addr("memory://").unwrap(),
    };
    orphan
        .import_tree(&tree, "tree", &cairn_castore::import::NoProgress)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    // What a collection starting now with 3 s of grace keeps young.
    let young = || KeepYoung::within(Duration::from_secs(3), std::time::SystemTime::now());
    assert!(!to
        .dirs
        .written_within(young())
        .await
        .unwrap()
        .contains(&root));

    // The copy finds the whole tree there. A collection running before
    // its PathInfo lands must still spare the tree: the copy has dated
    // it again, as a collection sees.
    cairn_store::copy::copy_paths(
        &from,
        &to,
        std::slice::from_ref(&info.store_path),
        false,
        &cairn_store::copy::NoCopyProgress,
    )
    .await
    .unwrap();
    assert!(
        to.dirs
            .written_within(young())
            .await
            .unwrap()
            .contains(&root),
        "the copy relied on an old tree without dating it again"
    );
}
