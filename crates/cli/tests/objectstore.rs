//! The store in a bucket (`objectstore+file://`, the layout an S3 bucket
//! gets): every command works on it by address, separate processes see
//! the same paths, and an object corrupted in place is named on read and
//! never copied into a local cache.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_testkit::{generated_trees, nix_cmd, oracle, pseudo_random_bytes, real_trees, run_ok};

fn cairn() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
    c.env_remove("CAIRN_DATA_DIR")
        .env_remove("CAIRN_STORE_ADDR")
        .env_remove("CAIRN_CACHE_DIR");
    c
}

/// `cairn ARGS --store-addr ADDR`.
fn on(addr: &str, args: &[&str]) -> Command {
    let mut c = cairn();
    c.args(args).args(["--store-addr", addr]);
    c
}

fn bucket_addr(bucket: &Path) -> String {
    format!("objectstore+file://{}", bucket.display())
}

#[test]
fn a_bucket_holds_the_store_for_every_command() {
    let Some(nix_store) = oracle("nix-store") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let addr = bucket_addr(&tmp.path().join("bucket"));
    let gen = tmp.path().join("gen");
    fs::create_dir(&gen).unwrap();
    let mut trees = generated_trees(&gen);
    trees.extend(real_trees());
    let nix_root = tmp.path().join("nix");
    for tree in &trees {
        let imported = run_ok(on(&addr, &["import"]).arg(tree));
        let path = String::from_utf8(imported).unwrap().trim().to_owned();
        let nix_path = run_ok(nix_cmd(&nix_store, &nix_root).arg("--add").arg(tree));
        assert_eq!(
            path,
            String::from_utf8(nix_path).unwrap().trim(),
            "{}",
            tree.display()
        );
        // Another process reads it back: Nix's NAR, byte for byte.
        let exported = run_ok(&mut on(&addr, &["export", &path]));
        let dumped = run_ok(Command::new(&nix_store).arg("--dump").arg(tree));
        assert!(exported == dumped, "NAR of {}", tree.display());
    }
    let verified = cairn()
        .args(["castore", "verify", "--store-addr", &addr])
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
}

/// The largest chunk object of the bucket.
fn largest_chunk(bucket: &Path) -> PathBuf {
    let mut best: Option<(u64, PathBuf)> = None;
    for shard in fs::read_dir(bucket.join("chunks")).unwrap() {
        for f in fs::read_dir(shard.unwrap().path()).unwrap() {
            let f = f.unwrap();
            let len = f.metadata().unwrap().len();
            if best.as_ref().is_none_or(|(n, _)| len > *n) {
                best = Some((len, f.path()));
            }
        }
    }
    best.unwrap().1
}

#[test]
fn a_corrupt_object_is_named_on_read_and_never_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let bucket = tmp.path().join("bucket");
    let addr = bucket_addr(&bucket);
    let tree = tmp.path().join("tree");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("big.bin"), pseudo_random_bytes(5, 3 << 20)).unwrap();
    fs::write(tree.join("small.txt"), b"small\n").unwrap();
    let path = String::from_utf8(run_ok(on(&addr, &["import"]).arg(&tree)))
        .unwrap()
        .trim()
        .to_owned();
    let good_nar = run_ok(&mut on(&addr, &["export", &path]));

    // Flip one byte in the middle of a chunk object, in place.
    let victim = largest_chunk(&bucket);
    let original = fs::read(&victim).unwrap();
    let mut bad = original.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    fs::write(&victim, &bad).unwrap();
    let key = victim.strip_prefix(&bucket).unwrap().display().to_string();

    // Read through a local cache: an error naming the object, and the
    // cache keeps nothing corrupt.
    let cache = tmp.path().join("cache");
    let out = on(&addr, &["export", &path])
        .arg("--cache-dir")
        .arg(&cache)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a corrupt chunk was exported");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&key), "the error does not name {key}: {err}");
    assert!(err.contains("hash to"), "{err}");
    let verified = cairn()
        .args(["castore", "verify", "--store-addr", &addr])
        .output()
        .unwrap();
    assert_eq!(
        verified.status.code(),
        Some(1),
        "verify missed the corruption"
    );
    let report = String::from_utf8_lossy(&verified.stdout).to_string()
        + &String::from_utf8_lossy(&verified.stderr);
    let digest = victim.file_name().unwrap().to_string_lossy().to_string();
    assert!(report.contains(&digest), "{report}");
    let cached = cairn()
        .args(["castore", "verify", "--data-dir"])
        .arg(&cache)
        .output()
        .unwrap();
    assert!(
        cached.status.success(),
        "the cache holds a corrupt object: {}",
        String::from_utf8_lossy(&cached.stdout)
    );

    // Repaired in the bucket, the same cached read succeeds.
    fs::write(&victim, &original).unwrap();
    let nar = run_ok(on(&addr, &["export", &path]).arg("--cache-dir").arg(&cache));
    assert!(nar == good_nar);
}
