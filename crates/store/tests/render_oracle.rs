//! The NAR rendered from castore equals `nix-store --dump` of the tree the
//! node was imported from, for the generated trees and real ones.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use cairn_castore::addr::{blob_service_from_addr, directory_service_from_addr};
use cairn_castore::import::{fs::import_path, NoProgress};
use cairn_store::render::write_nar;
use cairn_testkit::{generated_trees, oracle, real_trees, run_ok};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_nar_equals_nix_store_dump() {
    let Some(nix_store) = oracle("nix-store") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let mut trees = generated_trees(work.path());
    trees.extend(real_trees());
    let blobs =
        blob_service_from_addr(&format!("objects://{}/objects", work.path().display())).unwrap();
    let dirs = directory_service_from_addr("memory://").unwrap();
    for tree in trees {
        let node = import_path(blobs.clone(), dirs.as_ref(), &tree, &NoProgress)
            .await
            .unwrap();
        let ours = write_nar(Vec::new(), blobs.as_ref(), dirs.as_ref(), &node)
            .await
            .unwrap();
        let theirs = run_ok(Command::new(&nix_store).arg("--dump").arg(&tree));
        assert!(
            ours == theirs,
            "NAR rendered for {} differs from nix-store --dump",
            tree.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_content_is_an_error_not_a_short_nar() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("f"), b"contents").unwrap();
    let source_blobs = blob_service_from_addr("memory://").unwrap();
    let dirs = directory_service_from_addr("memory://").unwrap();
    let node = import_path(source_blobs, dirs.as_ref(), work.path(), &NoProgress)
        .await
        .unwrap();
    // Render against a blob service that lacks the file's blob.
    let empty = blob_service_from_addr("memory://").unwrap();
    let err = write_nar(Vec::new(), empty.as_ref(), dirs.as_ref(), &node)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
}
