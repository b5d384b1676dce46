//! `copy_paths` between stores: references first, only what is missing,
//! and every path whole or not at all.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use cairn_castore::import::NoProgress;
use cairn_castore::BlobService;
use cairn_nix::StorePath;
use cairn_store::copy::{closure_order, copy_paths, CopyProgress, NoCopyProgress};
use cairn_store::{PathInfo, Store};
use futures::StreamExt;

fn memory_store() -> Store {
    Store {
        blobs: cairn_castore::addr::blob_service_from_addr("memory://").unwrap(),
        dirs: cairn_castore::addr::directory_service_from_addr("memory://").unwrap(),
        path_infos: cairn_store::addr::path_info_service_from_addr("memory://").unwrap(),
    }
}

/// Imports a small tree and re-files its PathInfo under `base` with
/// `references`: a real tree, with a reference graph of our choosing.
async fn add(store: &Store, base: &str, contents: &[u8], references: &[&PathInfo]) -> PathInfo {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("t");
    std::fs::create_dir_all(tree.join("d")).unwrap();
    std::fs::write(tree.join("d/f"), contents).unwrap();
    std::fs::write(tree.join("shared"), b"in every path\n").unwrap();
    let mut info = store.import_tree(&tree, "t", &NoProgress).await.unwrap();
    info.store_path = StorePath::from_base_name(base).unwrap();
    info.references = references.iter().map(|r| r.store_path.clone()).collect();
    info.ca = None;
    store.path_infos.put(info.clone()).await.unwrap();
    info
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closure_copies_references_first_and_only_once() {
    let from = memory_store();
    let lib = add(&from, "00000000000000000000000000000lib-lib", b"lib", &[]).await;
    let dep = add(
        &from,
        "0000000000000000000000000000d0p0-dep",
        b"dep",
        &[&lib],
    )
    .await;
    let mut app = add(
        &from,
        "000000000000000000000000000app00-app",
        b"app",
        &[&dep, &lib],
    )
    .await;
    // A path referring to itself, as Nix paths often do.
    app.references.push(app.store_path.clone());
    from.path_infos.put(app.clone()).await.unwrap();

    let (order, _) = closure_order(&from, None, std::slice::from_ref(&app.store_path), true)
        .await
        .unwrap();
    let names: Vec<String> = order
        .iter()
        .map(|i| i.store_path.name().to_owned())
        .collect();
    assert_eq!(names, ["lib", "dep", "app"]);
    let (alone, _) = closure_order(&from, None, std::slice::from_ref(&app.store_path), false)
        .await
        .unwrap();
    assert_eq!(alone.len(), 1);

    let to = memory_store();
    let first = copy_paths(
        &from,
        &to,
        std::slice::from_ref(&app.store_path),
        true,
        &NoCopyProgress,
    )
    .await
    .unwrap();
    assert_eq!((first.copied, first.present), (3, 0));
    // The shared file and the per-path files: 4 distinct blobs in all.
    assert_eq!(first.blobs_sent, 4, "{first:?}");
    for info in [&lib, &dep, &app] {
        let got = to
            .path_infos
            .get(info.store_path.digest())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, info);
        let (_, layout) = to.nar_layout(&info.store_path).await.unwrap();
        let nar = layout
            .write_range(to.blobs.as_ref(), Vec::new(), 0..layout.size())
            .await
            .unwrap();
        assert_eq!(nar.len() as u64, info.nar_size);
    }

    // Again: nothing to send.
    let again = copy_paths(
        &from,
        &to,
        std::slice::from_ref(&app.store_path),
        true,
        &NoCopyProgress,
    )
    .await
    .unwrap();
    // The path asked for is there, so its references are not even looked at.
    assert_eq!((again.copied, again.present, again.blobs_sent), (0, 1, 0));

    // With only `lib` at the destination, `lib` is not fetched again.
    let partial = memory_store();
    copy_paths(
        &from,
        &partial,
        std::slice::from_ref(&lib.store_path),
        true,
        &NoCopyProgress,
    )
    .await
    .unwrap();
    let (order, present) = closure_order(
        &from,
        Some(&partial),
        std::slice::from_ref(&app.store_path),
        true,
    )
    .await
    .unwrap();
    let names: Vec<&str> = order.iter().map(|i| i.store_path.name()).collect();
    assert_eq!((names, present), (vec!["dep", "app"], 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_path_sends_only_its_new_blobs() {
    let from = memory_store();
    let a = add(&from, "0000000000000000000000000000000a-a", b"first", &[]).await;
    let b = add(&from, "0000000000000000000000000000000b-b", b"second", &[]).await;
    let to = memory_store();
    copy_paths(
        &from,
        &to,
        std::slice::from_ref(&a.store_path),
        true,
        &NoCopyProgress,
    )
    .await
    .unwrap();
    let s = copy_paths(
        &from,
        &to,
        std::slice::from_ref(&b.store_path),
        true,
        &NoCopyProgress,
    )
    .await
    .unwrap();
    // `shared` is there already: only `d/f` of b goes.
    assert_eq!((s.copied, s.blobs_sent, s.bytes_sent), (1, 1, 6), "{s:?}");
}

/// A destination whose blob uploads fail after a first one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_fails_midway_leaves_no_path_at_the_destination() {
    let from = memory_store();
    let a = add(&from, "0000000000000000000000000000000a-a", b"first", &[]).await;
    let to = memory_store();
    // Remove a blob from the source: the copy must fail on it.
    let broken = Store {
        blobs: Arc::new(cairn_castore::blobservice::MemoryBlobService::default())
            as Arc<dyn BlobService>,
        dirs: from.dirs.clone(),
        path_infos: from.path_infos.clone(),
    };
    struct Quiet;
    impl CopyProgress for Quiet {}
    let err = copy_paths(
        &broken,
        &to,
        std::slice::from_ref(&a.store_path),
        true,
        &Quiet,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("not found"), "{err}");
    assert!(to
        .path_infos
        .get(a.store_path.digest())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_already_there_do_not_stop_the_blobs() {
    let from = memory_store();
    let a = add(&from, "0000000000000000000000000000000a-a", b"first", &[]).await;
    let to = memory_store();
    // The destination has the directories (they are accepted without
    // their blobs) but not one blob.
    let cairn_castore::Node::Directory { digest, .. } = a.node else {
        panic!("a directory")
    };
    let closure: Vec<_> = from.dirs.get_recursive(&digest).collect().await;
    let mut putter = to.dirs.put_multiple_start();
    for d in closure.into_iter().rev() {
        putter.put(d.unwrap()).await.unwrap();
    }
    putter.close().await.unwrap();
    let s = copy_paths(
        &from,
        &to,
        std::slice::from_ref(&a.store_path),
        true,
        &NoCopyProgress,
    )
    .await
    .unwrap();
    // The directories are put again all the same: a put dates them, so a
    // collection spares them until the PathInfo lands (tests/gc.rs).
    assert_eq!(
        (s.copied, s.blobs_sent, s.directories_sent),
        (1, 2, 2),
        "{s:?}"
    );
}
