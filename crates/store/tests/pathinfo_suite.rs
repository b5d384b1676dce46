//! The same expectations for every PathInfoService backend.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_castore::{B3Digest, Node};
use cairn_nix::StorePath;
use cairn_store::addr::path_info_service_from_addr;
use cairn_store::{PathInfo, PathInfoService};
use futures::TryStreamExt;

fn info(base: &str) -> PathInfo {
    PathInfo {
        store_path: StorePath::from_base_name(base).unwrap(),
        node: Node::Directory {
            digest: B3Digest::empty(),
            size: 0,
        },
        references: vec![StorePath::from_base_name(base).unwrap()],
        nar_size: 112,
        nar_sha256: [1; 32],
        signatures: vec![],
        deriver: None,
        ca: None,
    }
}

async fn put_get_list_and_replace(s: &dyn PathInfoService) {
    let a = info("8sfqrcf48xfcqw4gy961lab11cskjy38-a");
    let b = info("0sfqrcf48xfcqw4gy961lab11cskjy38-b");
    assert!(s.get(a.store_path.digest()).await.unwrap().is_none());
    assert_eq!(s.put(a.clone()).await.unwrap(), a);
    s.put(b.clone()).await.unwrap();
    assert_eq!(s.get(a.store_path.digest()).await.unwrap(), Some(a.clone()));
    let mut listed: Vec<PathInfo> = s.list().try_collect().await.unwrap();
    listed.sort_by_key(|i| i.store_path.base_name());
    assert_eq!(listed, vec![b, a.clone()]);
    // A second put of the same path replaces its metadata.
    let mut a2 = a.clone();
    a2.signatures
        .push(cairn_nix::Signature::from_parts("k-1", [3; 64]));
    s.put(a2.clone()).await.unwrap();
    assert_eq!(s.get(a.store_path.digest()).await.unwrap(), Some(a2));
    assert_eq!(s.list().try_collect::<Vec<_>>().await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory() {
    let s = path_info_service_from_addr("memory://").unwrap();
    put_get_list_and_replace(s.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("redb://{}/pathinfo.redb", dir.path().display());
    let s = path_info_service_from_addr(&addr).unwrap();
    put_get_list_and_replace(s.as_ref()).await;
    drop(s);
    // What was put survives reopening.
    let s = path_info_service_from_addr(&addr).unwrap();
    let a = info("8sfqrcf48xfcqw4gy961lab11cskjy38-a");
    let got = s.get(a.store_path.digest()).await.unwrap().unwrap();
    assert_eq!(got.signatures.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_stores() {
    let s = cairn_objectstore::addr::path_info_service_from_addr("objectstore+memory://")
        .unwrap()
        .unwrap();
    put_get_list_and_replace(s.as_ref()).await;

    let dir = tempfile::tempdir().unwrap();
    let addr = format!("objectstore+file://{}?prefix=team", dir.path().display());
    shared_by_two_front_ends(&addr).await;
    let open = || bucket(&addr);
    let a = info("8sfqrcf48xfcqw4gy961lab11cskjy38-a");
    // A PathInfo stored under another path's key is refused, naming it.
    let b = info("0sfqrcf48xfcqw4gy961lab11cskjy38-b");
    let key = |p: &PathInfo| {
        dir.path()
            .join("team/pathinfo")
            .join(p.store_path.hash_part())
    };
    std::fs::copy(key(&b), key(&a)).unwrap();
    let err = open()
        .get(a.store_path.digest())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("holds the PathInfo of"), "{err}");
    assert!(err.contains(&a.store_path.hash_part()), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_bucket() {
    let Some(bucket) = cairn_testkit::s3_bucket() else {
        return;
    };
    shared_by_two_front_ends(&cairn_testkit::with_fresh_prefix(&bucket)).await;
}

fn bucket(addr: &str) -> std::sync::Arc<dyn PathInfoService> {
    cairn_objectstore::addr::path_info_service_from_addr(addr)
        .unwrap()
        .unwrap()
}

/// The suite on one front end over the bucket at `addr`; a second front
/// end over the same bucket then sees what the first put.
async fn shared_by_two_front_ends(addr: &str) {
    put_get_list_and_replace(bucket(addr).as_ref()).await;
    let a = info("8sfqrcf48xfcqw4gy961lab11cskjy38-a");
    let got = bucket(addr)
        .get(a.store_path.digest())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.signatures.len(), 1);
}

#[test]
fn bad_addresses_are_refused_with_a_reason() {
    for (addr, why) in [
        ("nope://", "no path info service"),
        ("redb://host/x", "absolute path"),
        ("memory://?x=1", "unknown option"),
        ("not a url", "invalid service address"),
    ] {
        let err = path_info_service_from_addr(addr).err().unwrap().to_string();
        assert!(err.contains(why), "{addr}: {err}");
    }
}
