//! The `objects://` backend's pack files: what reaches the disk, what
//! survives a reopen, and what garbage collection gives back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use cairn_castore::blobservice::{
    put_bytes, read_to_vec, BlobService, Compression, ObjectsBlobService,
};
use cairn_castore::gc::KeepYoung;
use cairn_castore::B3Digest;
use cairn_testkit::pseudo_random_bytes;

fn packs_bytes(root: &Path) -> u64 {
    fs::read_dir(root.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

async fn read(blobs: &ObjectsBlobService, d: &B3Digest) -> Option<Vec<u8>> {
    read_to_vec(blobs, d).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_survive_a_reopen_with_or_without_sync() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    let small = pseudo_random_bytes(1, 10_000);
    let big = pseudo_random_bytes(2, 3 * 1024 * 1024);
    let (d_small, d_big) = {
        let blobs = ObjectsBlobService::open(&root, Compression::None).unwrap();
        let d_small = blobs
            .put_many(vec![Bytes::from(small.clone())])
            .await
            .unwrap()[0];
        blobs.sync().await.unwrap();
        // Written after the last sync: closing the service commits it.
        let d_big = blobs
            .put_many(vec![Bytes::from(big.clone())])
            .await
            .unwrap()[0];
        (d_small, d_big)
    };
    let blobs = ObjectsBlobService::open(&root, Compression::None).unwrap();
    assert_eq!(read(&blobs, &d_small).await.unwrap(), small);
    assert_eq!(read(&blobs, &d_big).await.unwrap(), big);
    assert!(blobs.chunks(&d_big).await.unwrap().unwrap().len() > 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_a_killed_writer_left_in_a_pack_are_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    let first = pseudo_random_bytes(3, 50_000);
    let d_first = {
        let blobs = ObjectsBlobService::open(&root, Compression::None).unwrap();
        let d = blobs
            .put_many(vec![Bytes::from(first.clone())])
            .await
            .unwrap()[0];
        blobs.sync().await.unwrap();
        d
    };
    // A writer killed after appending but before its index commit leaves
    // bytes no index entry points at.
    let pack = fs::read_dir(root.join("packs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    fs::OpenOptions::new()
        .append(true)
        .open(&pack)
        .unwrap()
        .write_all(&pseudo_random_bytes(4, 70_000))
        .unwrap();

    let blobs = ObjectsBlobService::open(&root, Compression::None).unwrap();
    let second = pseudo_random_bytes(5, 60_000);
    let d_second = blobs
        .put_many(vec![Bytes::from(second.clone())])
        .await
        .unwrap()[0];
    blobs.sync().await.unwrap();
    assert_eq!(read(&blobs, &d_first).await.unwrap(), first);
    assert_eq!(read(&blobs, &d_second).await.unwrap(), second);
    let report = blobs.verify_all().await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.checked, 2);

    // Collection reclaims the stray bytes: the pack holding them is
    // mostly not live, so its live record moves and the pack goes.
    let live: HashSet<B3Digest> = [d_first, d_second].into();
    let before = packs_bytes(&root);
    blobs
        .collect_garbage(&live, KeepYoung::NOTHING, false)
        .await
        .unwrap();
    let after = packs_bytes(&root);
    assert!(after < before - 60_000, "packs {before} -> {after} bytes");
    assert_eq!(read(&blobs, &d_first).await.unwrap(), first);
    assert_eq!(read(&blobs, &d_second).await.unwrap(), second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_shrinks_packs_and_keeps_what_is_live() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    let data: Vec<Vec<u8>> = (0..20)
        .map(|i| pseudo_random_bytes(100 + i, 100_000))
        .collect();
    let big = pseudo_random_bytes(7, 3 * 1024 * 1024);
    {
        let blobs = ObjectsBlobService::open(&root, Compression::None).unwrap();
        blobs
            .put_many(data.iter().cloned().map(Bytes::from).collect())
            .await
            .unwrap();
    }
    // A later session writes the big blob: its pack is not the first one.
    let blobs = ObjectsBlobService::open(&root, Compression::None).unwrap();
    let d_big = blobs
        .put_many(vec![Bytes::from(big.clone())])
        .await
        .unwrap()[0];
    blobs.sync().await.unwrap();
    let digests: Vec<B3Digest> = data.iter().map(|d| B3Digest::of(d)).collect();
    let live: HashSet<B3Digest> = [digests[0], d_big].into();
    let before = packs_bytes(&root);

    let dry = blobs
        .collect_garbage(&live, KeepYoung::NOTHING, true)
        .await
        .unwrap();
    assert_eq!(dry.deleted, 19, "{dry:?}");
    assert_eq!(packs_bytes(&root), before, "a dry run changed the packs");
    let young = blobs
        .collect_garbage(
            &live,
            KeepYoung::within(Duration::from_secs(3600), SystemTime::now()),
            false,
        )
        .await
        .unwrap();
    assert_eq!((young.deleted, young.young), (0, 19), "{young:?}");

    let report = blobs
        .collect_garbage(&live, KeepYoung::NOTHING, false)
        .await
        .unwrap();
    assert_eq!(report.deleted, 19, "{report:?}");
    assert!(report.deleted_bytes >= 19 * 100_000);
    let after = packs_bytes(&root);
    assert!(
        after <= before - 19 * 100_000,
        "packs {before} -> {after} bytes"
    );
    assert_eq!(read(&blobs, &digests[0]).await.unwrap(), data[0]);
    assert_eq!(read(&blobs, &d_big).await.unwrap(), big);
    for d in &digests[1..] {
        assert!(!blobs.has(d).await.unwrap());
    }
    drop(blobs);
    let blobs = ObjectsBlobService::open(&root, Compression::None).unwrap();
    assert_eq!(read(&blobs, &d_big).await.unwrap(), big);
    let report = blobs.verify_all().await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn a_second_opener_waits_then_gives_up_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    let _first = ObjectsBlobService::open(&root, Compression::None).unwrap();
    std::env::set_var("CAIRN_LOCK_TIMEOUT", "0");
    let second = ObjectsBlobService::open(&root, Compression::None);
    let err = second.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("locked by another cairn process"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_packs_store_compressible_blobs_smaller() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    let blobs = ObjectsBlobService::open(&root, Compression::Zstd).unwrap();
    let text: Vec<u8> = (0..200_000u32)
        .flat_map(|i| format!("line {} of a compressible file\n", i % 977).into_bytes())
        .collect();
    assert!(text.len() > 2 * 1024 * 1024, "chunked, not stored whole");
    let small = text[..20_000].to_vec();
    let d_text = put_bytes(&blobs, &text).await.unwrap();
    let d_small = blobs
        .put_many(vec![Bytes::from(small.clone())])
        .await
        .unwrap()[0];
    blobs.sync().await.unwrap();
    assert_eq!(read(&blobs, &d_text).await.unwrap(), text);
    assert_eq!(read(&blobs, &d_small).await.unwrap(), small);
    let stored = packs_bytes(&root);
    assert!(
        stored * 4 < (text.len() + small.len()) as u64,
        "{stored} bytes stored for {} of text",
        text.len() + small.len()
    );
    let report = blobs.verify_all().await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_list_under_the_wrong_blob_is_refused() {
    use redb::{ReadableDatabase, TableDefinition};
    // The index's own schema, spelled out here on purpose: this test
    // damages the index the way a bad disk or a bad hand could.
    const LISTS: TableDefinition<&[u8; 32], (u64, &[u8])> = TableDefinition::new("lists");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    let a = pseudo_random_bytes(21, 3 * 1024 * 1024);
    let b = pseudo_random_bytes(22, 3 * 1024 * 1024);
    let (d_a, d_b) = {
        let blobs = ObjectsBlobService::open(&root, Compression::None).unwrap();
        let d = blobs
            .put_many(vec![Bytes::from(a.clone()), Bytes::from(b.clone())])
            .await
            .unwrap();
        (d[0], d[1])
    };
    {
        let db = redb::Database::open(root.join("index.redb")).unwrap();
        let list_a = {
            let txn = db.begin_read().unwrap();
            let table = txn.open_table(LISTS).unwrap();
            let row = table.get(d_a.as_bytes()).unwrap().unwrap();
            let (t, list) = row.value();
            (t, list.to_vec())
        };
        let txn = db.begin_write().unwrap();
        txn.open_table(LISTS)
            .unwrap()
            .insert(d_b.as_bytes(), (list_a.0, list_a.1.as_slice()))
            .unwrap();
        txn.commit().unwrap();
    }
    let blobs = ObjectsBlobService::open(&root, Compression::None).unwrap();
    assert_eq!(read(&blobs, &d_a).await.unwrap(), a);
    let err = read_to_vec(&blobs, &d_b).await.unwrap_err().to_string();
    assert!(err.contains("checksum mismatch"), "{err}");
    let report = blobs.verify_all().await.unwrap();
    assert!(
        report.problems.iter().any(|p| p.contains("checksum")),
        "{:?}",
        report.problems
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_of_more_blobs_than_one_write_call_takes() {
    // Two pieces per blob (header, body): 1,500 blobs need three pwritev
    // calls of at most 1,024 pieces each.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    let blobs = ObjectsBlobService::open(&root, Compression::None).unwrap();
    let data: Vec<Vec<u8>> = (0..1500u64)
        .map(|i| pseudo_random_bytes(i, 10 + (i as usize % 50)))
        .collect();
    let digests = blobs
        .put_many(data.iter().cloned().map(Bytes::from).collect())
        .await
        .unwrap();
    blobs.sync().await.unwrap();
    for (d, want) in digests.iter().zip(&data) {
        assert_eq!(&read(&blobs, d).await.unwrap(), want);
    }
    let report = blobs.verify_all().await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.checked, 1500);
}
