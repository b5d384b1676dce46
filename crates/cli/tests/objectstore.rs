//! The store in a bucket (`objectstore+file://`, the layout an S3 bucket
//! gets): every command works on it by address, separate processes see
//! the same paths, and an object corrupted in place is named on read and
//! never copied into a local cache.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_testkit::{generated_trees, nix_cmd, oracle, pseudo_random_bytes, real_trees, run_ok};

mod common;
use common::cairn;

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

/// An export of `path` through a cache in `cache` fails with an error
/// naming `key` (a corrupt object) and leaves the cache holding nothing
/// that fails verification.
fn refused_and_not_cached(addr: &str, path: &str, cache: &Path, key: &str) {
    let out = on(addr, &["export", path])
        .arg("--cache-dir")
        .arg(cache)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a corrupt chunk was exported");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(key), "the error does not name {key}: {err}");
    assert!(err.contains("hash to"), "{err}");
    let cached = cairn()
        .args(["castore", "verify", "--data-dir"])
        .arg(cache)
        .output()
        .unwrap();
    assert!(
        cached.status.success(),
        "the cache holds a corrupt object: {}",
        String::from_utf8_lossy(&cached.stdout)
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
    refused_and_not_cached(&addr, &path, &cache, &key);
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

    // Repaired in the bucket, the same cached read succeeds.
    fs::write(&victim, &original).unwrap();
    let nar = run_ok(on(&addr, &["export", &path]).arg("--cache-dir").arg(&cache));
    assert!(nar == good_nar);
}

/// Runs `curl` against the bucket's S3 API with the test credentials.
fn s3_curl(method: &str, url: &str, body: Option<&Path>) -> std::process::Output {
    let key = std::env::var("AWS_ACCESS_KEY_ID").unwrap();
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap();
    let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "garage".into());
    let mut c = Command::new("curl");
    c.args(["-sS", "--fail", "-X", method])
        .arg("--aws-sigv4")
        .arg(format!("aws:amz:{region}:s3"))
        .arg("--user")
        .arg(format!("{key}:{secret}"))
        // curl signs the request but sends no payload hash; S3 wants one.
        .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"]);
    if let Some(file) = body {
        c.arg("--data-binary").arg(format!("@{}", file.display()));
    }
    c.arg(url).output().unwrap()
}

#[test]
fn in_a_real_s3_bucket_a_corrupt_object_is_named_and_never_cached() {
    let Some(bucket) = cairn_testkit::s3_bucket() else {
        return;
    };
    let addr = cairn_testkit::with_fresh_prefix(&bucket);
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("big.bin"), pseudo_random_bytes(6, 3 << 20)).unwrap();
    let path = String::from_utf8(run_ok(on(&addr, &["import"]).arg(&tree)))
        .unwrap()
        .trim()
        .to_owned();
    let good_nar = run_ok(&mut on(&addr, &["export", &path]));
    let nar_of_tree = run_ok(cairn().args(["nar", "dump"]).arg(&tree));
    assert!(good_nar == nar_of_tree);

    // One of the blob's chunks, by its digest from `castore stat`.
    let url = url::Url::parse(&addr).unwrap();
    let query = |k: &str| {
        url.query_pairs()
            .find(|(q, _)| q == k)
            .map(|(_, v)| v.into_owned())
            .unwrap()
    };
    let (endpoint, prefix) = (query("endpoint"), query("prefix"));
    let imported = String::from_utf8(run_ok(
        on(&addr, &["castore", "import"]).arg(tree.join("big.bin")),
    ))
    .unwrap();
    let blob = imported
        .split_whitespace()
        .find(|w| w.starts_with("b3:"))
        .unwrap()
        .to_owned();
    let stat: serde_json::Value = serde_json::from_slice(&run_ok(&mut on(
        &addr,
        &["castore", "stat", "--json", &blob],
    )))
    .unwrap();
    let b64 = stat["blob"]["chunks"][1]["digest"].as_str().unwrap();
    let raw = data_encoding::BASE64
        .decode(b64.trim_start_matches("b3:").as_bytes())
        .unwrap();
    let chunk = data_encoding::HEXLOWER.encode(&raw);
    let object = format!(
        "{endpoint}/{}/{prefix}/chunks/{}/{chunk}",
        url.host_str().unwrap(),
        &chunk[..2]
    );

    // Corrupt it in place through the S3 API.
    let got = s3_curl("GET", &object, None);
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    let mut bad = got.stdout.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    let bad_file = tmp.path().join("bad");
    fs::write(&bad_file, &bad).unwrap();
    let put = s3_curl("PUT", &object, Some(&bad_file));
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );

    let cache = tmp.path().join("cache");
    refused_and_not_cached(
        &addr,
        &path,
        &cache,
        &format!("chunks/{}/{chunk}", &chunk[..2]),
    );

    // Put back, the cached read works.
    let good_file = tmp.path().join("good");
    fs::write(&good_file, &got.stdout).unwrap();
    assert!(s3_curl("PUT", &object, Some(&good_file)).status.success());
    let nar = run_ok(on(&addr, &["export", &path]).arg("--cache-dir").arg(&cache));
    assert!(nar == good_nar);
}

/// A child process killed when the test ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_daemon_and_a_binary_cache_share_one_bucket_and_nix_substitutes_from_it() {
    let Some(bucket) = cairn_testkit::s3_bucket() else {
        return;
    };
    let (Some(nix), Some(nix_store)) = (oracle("nix"), oracle("nix-store")) else {
        return;
    };
    let addr = cairn_testkit::with_fresh_prefix(&bucket);
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    fs::create_dir_all(tree.join("sub")).unwrap();
    fs::write(tree.join("big.bin"), pseudo_random_bytes(8, (2 << 20) + 5)).unwrap();
    fs::write(tree.join("sub/small.txt"), b"small\n").unwrap();
    std::os::unix::fs::symlink("sub/small.txt", tree.join("link")).unwrap();

    // One process: a daemon whose backends are the bucket; the import goes
    // through it.
    let (daemon, bound) = cairn_testkit::spawn_announcing(
        cairn().args(["daemon", "--listen", "127.0.0.1:0", "--store-addr", &addr]),
        "cairn daemon: listening on ",
    )
    .unwrap();
    let _daemon = Running(daemon);
    let path = String::from_utf8(run_ok(
        cairn()
            .args(["import", "--store-addr", &format!("grpc+http://{bound}")])
            .arg(&tree),
    ))
    .unwrap()
    .trim()
    .to_owned();

    // Another: a binary cache over the same bucket, with its own cache.
    let (serve, url) = cairn_testkit::spawn_announcing(
        cairn()
            .args(["serve", "--listen", "127.0.0.1:0", "--store-addr", &addr])
            .arg("--cache-dir")
            .arg(tmp.path().join("serve-cache"))
            .arg("--state-dir")
            .arg(tmp.path().join("serve-state")),
        "cairn serve: listening on ",
    )
    .unwrap();
    let _serve = Running(serve);

    // The real Nix substitutes the path from it into a fresh store.
    let dest = tmp.path().join("nix-dest");
    run_ok(nix_cmd(&nix, &dest).args(["copy", "--no-check-sigs", "--from", &url, &path]));
    let copied = dest.join(path.trim_start_matches('/'));
    let theirs = run_ok(Command::new(&nix_store).arg("--dump").arg(&copied));
    let original = run_ok(Command::new(&nix_store).arg("--dump").arg(&tree));
    assert!(
        theirs == original,
        "the substituted NAR differs from the tree's"
    );
}
