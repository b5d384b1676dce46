//! Faults on the S3 store, on the real Garage cluster of
//! `scripts/garage-cluster` (skipped locally without one; CI runs one):
//! a storage node killed during an import, a Cairn process killed during
//! one, and two importers writing overlapping trees at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cairn_testkit::{pseudo_random_bytes, run_ok, s3_bucket, with_fresh_prefix};

mod common;
use common::cairn;

/// A tree of `files` files of `size` bytes each (plus a shared part when
/// `shared` is given), all pseudo-random from `seed`.
fn tree(at: &Path, seed: u64, files: u64, size: usize, shared: Option<&Path>) -> PathBuf {
    fs::create_dir_all(at.join("own")).unwrap();
    for i in 0..files {
        fs::write(
            at.join("own").join(format!("f{i}")),
            pseudo_random_bytes(seed * 1000 + i, size),
        )
        .unwrap();
    }
    if let Some(shared) = shared {
        let dest = at.join("shared");
        fs::create_dir_all(&dest).unwrap();
        for e in fs::read_dir(shared).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), dest.join(e.file_name())).unwrap();
        }
    }
    at.to_owned()
}

fn import(addr: &str, tree: &Path) -> String {
    String::from_utf8(run_ok(
        cairn().args(["import", "--store-addr", addr]).arg(tree),
    ))
    .unwrap()
    .trim()
    .to_owned()
}

/// The path exports from `addr` to the NAR of `tree`.
fn assert_reads_back(addr: &str, path: &str, tree: &Path) {
    let nar = run_ok(cairn().args(["export", "--store-addr", addr, path]));
    let expected = run_ok(cairn().args(["nar", "dump"]).arg(tree));
    assert!(
        nar == expected,
        "{path} does not read back as {}",
        tree.display()
    );
}

fn verify(addr: &str) {
    let out = cairn()
        .args(["castore", "verify", "--store-addr", addr])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn cluster(action: &str, node: &str) {
    let dir = std::env::var("CAIRN_GARAGE_DIR")
        .expect("CAIRN_GARAGE_DIR (set by scripts/garage-cluster start) is needed to kill a node");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/garage-cluster");
    run_ok(Command::new(script).args([action, &dir, node]));
}

#[test]
fn an_import_survives_a_storage_node_killed_midway() {
    let Some(bucket) = s3_bucket() else { return };
    let addr = with_fresh_prefix(&bucket);
    let tmp = tempfile::tempdir().unwrap();
    let big = tree(&tmp.path().join("big"), 1, 24, 1 << 20, None);

    let importer = cairn()
        .args(["import", "--store-addr", &addr])
        .arg(&big)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    cluster("kill", "3");
    let out = importer.wait_with_output().unwrap();
    let path = if out.status.success() {
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    } else {
        // A clear error is allowed; a rerun (node still down) completes.
        import(&addr, &big)
    };
    // Node 3 still down: every object reads back verified.
    assert_reads_back(&addr, &path, &big);
    verify(&addr);
    cluster("revive", "3");
    assert_reads_back(&addr, &path, &big);
    verify(&addr);
}

#[test]
fn a_cairn_process_killed_midway_leaves_no_half_visible_path() {
    let Some(bucket) = s3_bucket() else { return };
    let addr = with_fresh_prefix(&bucket);
    let tmp = tempfile::tempdir().unwrap();
    let big = tree(&tmp.path().join("big"), 2, 16, 1 << 20, None);
    // The path the tree gets, from a store nothing else touches.
    let expected = import("objectstore+memory://", &big);
    for delay_ms in [50u64, 150, 300, 600] {
        let mut importer = cairn()
            .args(["import", "--store-addr", &addr])
            .arg(&big)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = importer.kill();
        let _ = importer.wait();
        // Either the path is there, complete, or it is not there at all.
        let info = cairn()
            .args(["path-info", "--store-addr", &addr, &expected])
            .output()
            .unwrap();
        if info.status.success() {
            assert_reads_back(&addr, &expected, &big);
        }
        verify(&addr);
    }
    assert_eq!(import(&addr, &big), expected);
    assert_reads_back(&addr, &expected, &big);
}

#[test]
fn two_importers_of_overlapping_trees_both_succeed() {
    let Some(bucket) = s3_bucket() else { return };
    let addr = with_fresh_prefix(&bucket);
    let tmp = tempfile::tempdir().unwrap();
    let shared = tree(&tmp.path().join("shared-src"), 3, 12, 300_000, None).join("own");
    let a = tree(&tmp.path().join("a"), 4, 4, 200_000, Some(&shared));
    let b = tree(&tmp.path().join("b"), 5, 4, 200_000, Some(&shared));
    let spawn = |t: &Path| {
        cairn()
            .args(["import", "--store-addr", &addr])
            .arg(t)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (ia, ib) = (spawn(&a), spawn(&b));
    let (oa, ob) = (
        ia.wait_with_output().unwrap(),
        ib.wait_with_output().unwrap(),
    );
    assert!(oa.status.success() && ob.status.success());
    for (out, t) in [(oa, &a), (ob, &b)] {
        let path = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        assert_reads_back(&addr, &path, t);
    }
    verify(&addr);
}
