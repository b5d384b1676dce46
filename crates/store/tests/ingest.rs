//! NAR ingest: what goes in as a NAR comes out as the same NAR, the hash
//! and size are the NAR's, and bad NARs fail without leaving a tree.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use cairn_castore::addr::{blob_service_from_addr, directory_service_from_addr};
use cairn_castore::import::{fs::import_path, NoProgress};
use cairn_castore::{BlobService, DirectoryService};
use cairn_nix::hash::{HashAlgo, Hasher};
use cairn_nix::nar::fs::dump_path;
use cairn_store::ingest::{ingest_nar, ingest_nar_pieces, IngestError};
use cairn_store::nar_calc::{CastoreNarCalculator, NarCalculationService};
use cairn_store::render::write_nar;
use cairn_testkit::{generated_trees, nar_corpus, pseudo_random_bytes, real_trees};

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut h = Hasher::new(HashAlgo::Sha256);
    h.update(data);
    h.finish().sha256_bytes().unwrap()
}

struct Store {
    blobs: Arc<dyn BlobService>,
    dirs: Arc<dyn DirectoryService>,
    _dir: tempfile::TempDir,
}

fn disk_store() -> Store {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display().to_string();
    Store {
        blobs: blob_service_from_addr(&format!("objects://{root}/objects")).unwrap(),
        dirs: directory_service_from_addr(&format!("redb://{root}/castore.redb")).unwrap(),
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_matches_tree_import_and_renders_back_identically() {
    let work = tempfile::tempdir().unwrap();
    let mut trees = generated_trees(work.path());
    trees.extend(real_trees());
    // A large file streams through a writer in pieces.
    let big = work.path().join("big");
    std::fs::create_dir(&big).unwrap();
    std::fs::write(
        big.join("blob"),
        pseudo_random_bytes(5, 5 * 1024 * 1024 + 11),
    )
    .unwrap();
    trees.push(big);
    let s = disk_store();
    let calc = CastoreNarCalculator::new(s.blobs.clone(), s.dirs.clone());
    for tree in trees {
        let nar = dump_path(&tree, Vec::new()).unwrap();
        let ingested = ingest_nar(&nar[..], s.blobs.clone(), s.dirs.as_ref(), &NoProgress)
            .await
            .unwrap();
        assert_eq!(ingested.nar_size, nar.len() as u64, "{}", tree.display());
        assert_eq!(ingested.nar_sha256, sha256(&nar), "{}", tree.display());
        let imported = import_path(s.blobs.clone(), s.dirs.as_ref(), &tree, &NoProgress)
            .await
            .unwrap();
        assert_eq!(ingested.node, imported, "{}", tree.display());
        let rendered = write_nar(
            Vec::new(),
            s.blobs.as_ref(),
            s.dirs.as_ref(),
            &ingested.node,
        )
        .await
        .unwrap();
        assert!(rendered == nar, "{}: rendered NAR differs", tree.display());
        // CalculateNAR agrees, computed and then from its cache.
        for _ in 0..2 {
            let (size, sha) = calc.calculate_nar(&ingested.node).await.unwrap();
            assert_eq!((size, sha), (ingested.nar_size, ingested.nar_sha256));
        }
    }
    let report = s.dirs.verify_all().await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_truncated_nars_fail_and_store_no_tree() {
    let s = disk_store();
    let mut bad: Vec<(String, Vec<u8>)> = nar_corpus::malformed()
        .into_iter()
        .map(|(n, b)| (n.to_owned(), b))
        .collect();
    let valid = nar_corpus::valid();
    for (i, t) in nar_corpus::truncations(&valid).into_iter().enumerate() {
        bad.push((format!("truncation {i} ({} bytes)", t.len()), t));
    }
    // Truncated in the middle of a large file's contents.
    let work = tempfile::tempdir().unwrap();
    std::fs::write(
        work.path().join("f"),
        pseudo_random_bytes(3, 3 * 1024 * 1024),
    )
    .unwrap();
    let big = dump_path(work.path(), Vec::new()).unwrap();
    bad.push((
        "large file cut short".into(),
        big[..2 * 1024 * 1024].to_vec(),
    ));
    let mut trailing = valid.clone();
    trailing.extend_from_slice(b"junk");
    bad.push(("trailing data".into(), trailing));

    for (name, nar) in bad {
        let err = ingest_nar(&nar[..], s.blobs.clone(), s.dirs.as_ref(), &NoProgress)
            .await
            .expect_err(&name);
        assert!(matches!(err, IngestError::Nar(_)), "{name}: {err}");
        assert!(
            err.to_string().contains("NAR"),
            "{name}: message should say what failed: {err}"
        );
    }
    // No directory of any of them was stored, and what blobs were stored
    // are whole and valid.
    let dirs = s.dirs.verify_all().await.unwrap();
    assert_eq!(dirs.checked, 0, "directories stored by failed ingests");
    let blobs = s.blobs.verify_all().await.unwrap();
    assert!(blobs.problems.is_empty(), "{:?}", blobs.problems);
    // The large file's partial contents never became a blob.
    let partial = &pseudo_random_bytes(3, 3 * 1024 * 1024);
    for cut in [1024 * 1024, 2 * 1024 * 1024 - 200] {
        assert!(!s
            .blobs
            .has(&cairn_castore::B3Digest::of(&partial[..cut]))
            .await
            .unwrap());
    }
}

/// The NAR cut into pieces of `sizes`, cycled: contents and headers
/// straddle piece boundaries everywhere.
fn cut(nar: &[u8], sizes: &[usize]) -> Vec<std::io::Result<bytes::Bytes>> {
    let mut out = Vec::new();
    let mut at = 0;
    for &n in sizes.iter().cycle() {
        if at >= nar.len() {
            break;
        }
        let end = (at + n).min(nar.len());
        out.push(Ok(bytes::Bytes::copy_from_slice(&nar[at..end])));
        at = end;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pieces_of_any_size_ingest_as_the_whole_nar_does() {
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("t");
    std::fs::create_dir_all(tree.join("d")).unwrap();
    std::fs::write(tree.join("d/small"), b"a small file\n").unwrap();
    std::fs::write(tree.join("d/empty"), b"").unwrap();
    std::fs::write(tree.join("mid"), pseudo_random_bytes(3, 300 * 1024 + 5)).unwrap();
    std::fs::write(
        tree.join("large"),
        pseudo_random_bytes(4, 3 * 1024 * 1024 + 7),
    )
    .unwrap();
    std::os::unix::fs::symlink("d/small", tree.join("link")).unwrap();
    let nar = dump_path(&tree, Vec::new()).unwrap();
    let s = disk_store();
    let whole = ingest_nar(&nar[..], s.blobs.clone(), s.dirs.as_ref(), &NoProgress)
        .await
        .unwrap();
    // Empty pieces too: a source may send them. Byte-sized pieces only
    // for the tree without its large file (they are slow in a debug build).
    let large = std::fs::read(tree.join("large")).unwrap();
    std::fs::remove_file(tree.join("large")).unwrap();
    let small_nar = dump_path(&tree, Vec::new()).unwrap();
    std::fs::write(tree.join("large"), large).unwrap();
    let small_whole = ingest_nar(
        &small_nar[..],
        s.blobs.clone(),
        s.dirs.as_ref(),
        &NoProgress,
    )
    .await
    .unwrap();
    for (nar, whole, sizes) in [
        (&small_nar, &small_whole, &[1usize][..]),
        (&nar, &whole, &[7, 0, 13, 4096]),
        (&nar, &whole, &[65_536 + 3, 1]),
        (&nar, &whole, &[1 << 20]),
    ] {
        let pieces = futures::stream::iter(cut(nar, sizes));
        let ingested = ingest_nar_pieces(pieces, s.blobs.clone(), s.dirs.as_ref(), &NoProgress)
            .await
            .unwrap();
        assert_eq!(&ingested, whole, "pieces of {sizes:?}");
    }
    // A source failing half-way is reported as its own error.
    let mut broken = cut(&nar, &[4096]);
    broken.truncate(broken.len() / 2);
    broken.push(Err(std::io::Error::other("the source broke")));
    let err = ingest_nar_pieces(
        futures::stream::iter(broken),
        s.blobs.clone(),
        s.dirs.as_ref(),
        &NoProgress,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("the source broke"), "{err}");
}
