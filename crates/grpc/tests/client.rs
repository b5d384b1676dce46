//! The gRPC clients as backends, against a daemon on the on-disk default:
//! a chunked blob streams (and seeks) chunk by chunk, directories and
//! PathInfos round-trip.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::SeekFrom;
use std::sync::Arc;

use cairn_castore::blobservice::{put_bytes, read_to_vec};
use cairn_castore::B3Digest;
use cairn_grpc::server::Services;
use cairn_grpc::transport::{spawn, Location, Running};
use cairn_store::nar_calc::CastoreNarCalculator;
use cairn_testkit::pseudo_random_bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// A daemon on objects:// + redb:// in `root`.
async fn daemon(root: &std::path::Path) -> Running {
    let r = root.display();
    let blobs =
        cairn_castore::addr::blob_service_from_addr(&format!("objects://{r}/objects")).unwrap();
    let dirs =
        cairn_castore::addr::directory_service_from_addr(&format!("redb://{r}/castore.redb"))
            .unwrap();
    let path_infos =
        cairn_store::addr::path_info_service_from_addr(&format!("redb://{r}/pathinfo.redb"))
            .unwrap();
    let calc = Arc::new(CastoreNarCalculator::new(blobs.clone(), dirs.clone()));
    let services = Services::new(blobs, dirs, path_infos, calc);
    spawn(services, Location::Tcp("127.0.0.1:0".into()))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_blob_streams_and_seeks() {
    let dir = tempfile::tempdir().unwrap();
    let server = daemon(dir.path()).await;
    let blobs = cairn_grpc::addr::blob_service_from_addr(&server.addr()).unwrap();
    let data = pseudo_random_bytes(5, 5 * 1024 * 1024 + 17);
    let digest = put_bytes(blobs.as_ref(), &data).await.unwrap();
    assert_eq!(digest, B3Digest::of(&data));
    assert!(blobs.has(&digest).await.unwrap());
    let chunks = blobs.chunks(&digest).await.unwrap().unwrap();
    assert!(chunks.len() > 1, "the daemon chunks a 5 MiB blob");
    assert!(read_to_vec(blobs.as_ref(), &digest).await.unwrap().unwrap() == data);

    let mut r = blobs.open_read(&digest).await.unwrap().unwrap();
    for at in [3 * 1024 * 1024 + 5, 17, data.len() as u64 - 100] {
        r.seek(SeekFrom::Start(at)).await.unwrap();
        let mut buf = vec![0u8; 100];
        r.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf[..], &data[at as usize..at as usize + 100], "at {at}");
    }
    // Each chunk is a blob of its own.
    let first = read_to_vec(blobs.as_ref(), &chunks[0].digest)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], &data[..chunks[0].size as usize]);
    let absent = B3Digest::of(b"absent");
    assert!(blobs.open_read(&absent).await.unwrap().is_none());
    assert!(!blobs.has(&absent).await.unwrap());
    let many = blobs
        .read_many(&[(chunks[1].digest, chunks[1].size), (absent, 6)])
        .await
        .unwrap();
    assert!(many[0].is_some() && many[1].is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_and_borrowed_writes_mix_at_any_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let server = daemon(dir.path()).await;
    let blobs = cairn_grpc::addr::blob_service_from_addr(&server.addr()).unwrap();
    let data = bytes::Bytes::from(pseudo_random_bytes(9, 4 * 1024 * 1024 + 333));
    // Owned pieces that start mid-piece, cover several pieces at once, and
    // end mid-piece, between borrowed ones.
    let cuts = [0, 1000, 1_500_000, 1_500_001, 3_700_000, data.len()];
    let mut w = blobs.open_write().await;
    for (i, pair) in cuts.windows(2).enumerate() {
        let piece = data.slice(pair[0]..pair[1]);
        if i % 2 == 0 {
            w.write(&piece).await.unwrap();
        } else {
            w.write_bytes(piece).await.unwrap();
        }
    }
    let digest = w.close().await.unwrap();
    assert_eq!(digest, B3Digest::of(&data));
    assert!(read_to_vec(blobs.as_ref(), &digest).await.unwrap().unwrap() == data[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_unchunked_blob_is_verified_in_a_temporary_file() {
    // memory:// stores blobs whole: the daemon lists no chunks, so the
    // client must read all 20 MiB before returning any, without holding
    // them in memory.
    let blobs_backend = cairn_castore::addr::blob_service_from_addr("memory://").unwrap();
    let dirs = cairn_castore::addr::directory_service_from_addr("memory://").unwrap();
    let path_infos = cairn_store::addr::path_info_service_from_addr("memory://").unwrap();
    let calc = Arc::new(CastoreNarCalculator::new(
        blobs_backend.clone(),
        dirs.clone(),
    ));
    let server = spawn(
        Services::new(blobs_backend, dirs, path_infos, calc),
        Location::Tcp("127.0.0.1:0".into()),
    )
    .await
    .unwrap();
    let blobs = cairn_grpc::addr::blob_service_from_addr(&server.addr()).unwrap();
    let data = pseudo_random_bytes(20, 20 * 1024 * 1024 + 3);
    let digest = put_bytes(blobs.as_ref(), &data).await.unwrap();
    assert_eq!(blobs.chunks(&digest).await.unwrap(), Some(vec![]));
    let mut r = blobs.open_read(&digest).await.unwrap().unwrap();
    r.seek(SeekFrom::Start(19 * 1024 * 1024)).await.unwrap();
    let mut buf = vec![0u8; 4096];
    r.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf[..], &data[19 * 1024 * 1024..19 * 1024 * 1024 + 4096]);
    r.seek(SeekFrom::Start(0)).await.unwrap();
    let mut all = Vec::new();
    r.read_to_end(&mut all).await.unwrap();
    assert!(all == data);
}

/// An upload dropped before `close`, at once or once the daemon has read
/// what was sent, leaves no blob at the daemon: not the whole, and not any
/// prefix of it (pieces travel whole, so a prefix would end at a piece
/// boundary). The client resets the stream; tonic alone would hand the
/// handler a clean end and the part that arrived would be stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_dropped_unclosed_leaves_nothing_at_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let server = daemon(dir.path()).await;
    let blobs = cairn_grpc::addr::blob_service_from_addr(&server.addr()).unwrap();
    let data = pseudo_random_bytes(9, 3 * cairn_grpc::BLOB_PIECE);
    let sent = 2 * cairn_grpc::BLOB_PIECE;
    for wait_before_drop in [0, 300] {
        let mut w = blobs.open_write().await;
        w.write(&data[..sent]).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(wait_before_drop)).await;
        drop(w);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        for end in (0..=data.len()).step_by(cairn_grpc::BLOB_PIECE) {
            assert!(
                !blobs.has(&B3Digest::of(&data[..end])).await.unwrap(),
                "the daemon stored the first {end} bytes of an upload dropped unclosed \
                 (after waiting {wait_before_drop} ms)"
            );
        }
    }
}

/// Makes every file under `dir` look 30 minutes old (a file bucket's
/// objects are dated by their modification time).
fn age_files(dir: &std::path::Path) {
    let then = std::time::SystemTime::now() - std::time::Duration::from_secs(30 * 60);
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            age_files(&p);
        } else {
            let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            f.set_modified(then).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_on_a_bucket_asks_for_old_blobs_again() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = format!("objectstore+file://{}", dir.path().display());
    let blobs = cairn_objectstore::addr::blob_service_from_addr(&bucket)
        .unwrap()
        .unwrap();
    let dirs = cairn_objectstore::addr::directory_service_from_addr(&bucket)
        .unwrap()
        .unwrap();
    let path_infos = cairn_objectstore::addr::path_info_service_from_addr(&bucket)
        .unwrap()
        .unwrap();
    let calc = Arc::new(CastoreNarCalculator::new(blobs.clone(), dirs.clone()));
    let server = spawn(
        Services::new(blobs, dirs, path_infos, calc),
        Location::Tcp("127.0.0.1:0".into()),
    )
    .await
    .unwrap();
    let client = cairn_grpc::addr::blob_service_from_addr(&server.addr()).unwrap();
    let data = bytes::Bytes::from_static(b"uploaded long ago\n");
    let digest = client.put_many(vec![data.clone()]).await.unwrap()[0];
    assert!(client.to_send(&[digest]).await.unwrap().is_empty());

    age_files(dir.path());
    // There for readers, but a writer is asked to send it again,
    assert!(client.missing(&[digest]).await.unwrap().is_empty());
    assert_eq!(client.to_send(&[digest]).await.unwrap(), [digest]);
    // and an upload of it does, which renews it.
    assert_eq!(client.put_many(vec![data]).await.unwrap(), [digest]);
    assert!(client.to_send(&[digest]).await.unwrap().is_empty());
}
