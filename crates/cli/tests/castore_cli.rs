//! `cairn castore …` on the embedded default data directory: round trips
//! of generated and real trees, dedup a user can see in bytes, crash safety
//! under SIGKILL, detection of damaged objects, and the size-rule lock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use cairn_testkit::{generated_trees, real_trees, run_ok};

struct Store {
    dir: tempfile::TempDir,
}

impl Store {
    fn new() -> Self {
        Store {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn cairn(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
        c.env("CAIRN_DATA_DIR", self.data());
        c
    }

    fn import(&self, path: &Path) -> serde_json::Value {
        let out = run_ok(self.cairn().args(["castore", "import", "--json"]).arg(path));
        serde_json::from_slice(&out).unwrap()
    }

    /// Bytes of blob data (pack files), and of the directory database and
    /// blob index together.
    fn bytes_on_disk(&self) -> (u64, u64) {
        fn walk(p: &Path) -> u64 {
            let Ok(m) = fs::symlink_metadata(p) else {
                return 0;
            };
            if m.is_dir() {
                fs::read_dir(p)
                    .unwrap()
                    .map(|e| walk(&e.unwrap().path()))
                    .sum()
            } else {
                m.len()
            }
        }
        let objects = walk(&self.data().join("objects/packs"));
        let databases =
            walk(&self.data().join("castore.redb")) + walk(&self.data().join("objects/index.redb"));
        (objects, databases)
    }

    fn verify(&self) -> Output {
        self.cairn().args(["castore", "verify"]).output().unwrap()
    }
}

fn nar(path: &Path) -> Vec<u8> {
    run_ok(
        Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["nar", "dump"])
            .arg(path),
    )
}

fn export(store: &Store, node: &serde_json::Value, dest: &Path) {
    let digest = node["digest"].as_str().unwrap();
    let mut cmd = store.cairn();
    cmd.args(["castore", "export", digest]).arg(dest);
    if node["type"] == "file" {
        cmd.arg("--file");
        if node["executable"] == true {
            cmd.arg("--executable");
        }
    }
    run_ok(&mut cmd);
}

#[test]
fn trees_round_trip_through_import_and_export() {
    let store = Store::new();
    let gen = store.dir.path().join("generated");
    fs::create_dir(&gen).unwrap();
    let mut trees = generated_trees(&gen);
    trees.extend(real_trees());
    for (i, tree) in trees.iter().enumerate() {
        let node = store.import(tree);
        if node["type"] == "symlink" {
            assert_eq!(
                node["target"].as_str().unwrap(),
                fs::read_link(tree).unwrap().to_str().unwrap()
            );
            continue;
        }
        let dest = store.dir.path().join(format!("out-{i}"));
        export(&store, &node, &dest);
        let diff = Command::new("diff")
            .args(["-r", "--no-dereference"])
            .arg(tree)
            .arg(&dest)
            .output()
            .unwrap();
        assert!(
            diff.status.success(),
            "{}: {}",
            tree.display(),
            String::from_utf8_lossy(&diff.stdout)
        );
        // Names, bytes, executable bits and symlink targets, all at once.
        assert!(
            nar(tree) == nar(&dest),
            "NAR of exported {} differs",
            tree.display()
        );
    }
    let v = store.verify();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

fn copy_tree(from: &Path, to: &Path) {
    assert!(Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success());
}

#[test]
fn dedup_is_visible_in_bytes_on_disk() {
    let store = Store::new();
    let gen = store.dir.path().join("generated");
    fs::create_dir(&gen).unwrap();
    let tree = generated_trees(&gen)
        .into_iter()
        .find(|p| p.ends_with("kitchen-sink"))
        .unwrap();

    let empty = store.bytes_on_disk();
    store.import(&tree);
    let first = store.bytes_on_disk();
    store.import(&tree);
    let again = store.bytes_on_disk();
    eprintln!(
        "objects/db bytes: empty {empty:?}, after import {first:?}, after re-import {again:?}"
    );
    assert!(
        first.0 > 4 * 1024 * 1024,
        "the tree's contents were stored: {first:?}"
    );
    assert_eq!(
        again.0, first.0,
        "re-importing the same tree stored new objects"
    );

    // A near-identical tree: one file changed, one added, the rest shared.
    let twin = store.dir.path().join("twin");
    copy_tree(&tree, &twin);
    let changed = cairn_testkit::pseudo_random_bytes(99, 100_000);
    let added = cairn_testkit::pseudo_random_bytes(100, 50_000);
    fs::write(
        twin.join("big.bin"),
        [
            &fs::read(twin.join("big.bin")).unwrap()[..3 * 1024 * 1024],
            &changed,
        ]
        .concat(),
    )
    .unwrap();
    fs::write(twin.join("new-file"), &added).unwrap();
    store.import(&twin);
    let after_twin = store.bytes_on_disk();
    let grew = after_twin.0 - again.0;
    eprintln!(
        "near-identical tree: objects grew by {grew} bytes for {} new bytes of content (db {} -> {})",
        changed.len() + added.len(),
        again.1,
        after_twin.1
    );
    // The changed tail re-chunks at most one chunk before it, plus the new
    // content and a chunk list.
    let max_chunk = cairn_castore::blobservice::chunker::MAX_CHUNK;
    assert!(
        grew <= (changed.len() + added.len() + max_chunk + 4096) as u64,
        "grew by {grew}"
    );
}

#[test]
fn killed_imports_leave_a_consistent_store() {
    let store = Store::new();
    let tree = real_trees()
        .into_iter()
        .next()
        .unwrap_or_else(|| PathBuf::from("/usr/share/doc"));
    for delay_ms in [30u64, 80, 150, 250, 400, 600, 900] {
        let mut child = store
            .cairn()
            .args(["castore", "import"])
            .arg(&tree)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let v = store.verify();
        // A kill before the store's first file was made leaves no store,
        // which verify reports; anything else must verify.
        assert!(
            v.status.success() || String::from_utf8_lossy(&v.stderr).contains("no Cairn store in"),
            "after a kill at {delay_ms} ms the store does not verify:\n{}{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );
    }
    // And the store still works: a full import round trips.
    let node = store.import(&tree);
    let dest = store.dir.path().join("out");
    export(&store, &node, &dest);
    assert!(nar(&tree) == nar(&dest));
}

#[test]
fn damaged_objects_are_detected_not_returned() {
    let store = Store::new();
    let work = store.dir.path().join("src");
    fs::create_dir_all(&work).unwrap();
    fs::write(work.join("a"), cairn_testkit::pseudo_random_bytes(1, 1000)).unwrap();
    let node = store.import(&work);
    // Flip the last byte of the one pack file: the last byte of the one
    // chunk's contents.
    let packs = store.data().join("objects/packs");
    let mut files: Vec<PathBuf> = fs::read_dir(&packs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "one import writes one pack");
    let file = files.pop().unwrap();
    let mut bytes = fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&file, bytes).unwrap();

    let v = store.verify();
    assert_eq!(v.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&v.stdout).contains(&file.display().to_string()));
    let dest = store.dir.path().join("out");
    let digest = node["digest"].as_str().unwrap();
    let out = store
        .cairn()
        .args(["castore", "export", digest])
        .arg(&dest)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("integrity"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dest.exists(), "a partial export is visible");
}

#[test]
fn a_store_never_mixes_size_rules() {
    let store = Store::new();
    let work = store.dir.path().join("src");
    fs::create_dir_all(work.join("sub")).unwrap();
    fs::write(work.join("sub/f"), b"x").unwrap();
    store.import(&work);
    let db = store.data().join("castore.redb");
    let out = store
        .cairn()
        .args(["castore", "import", "--directory-service-addr"])
        .arg(format!("redb://{}?size-rule=tvix-compat", db.display()))
        .arg(&work)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("documented") && err.contains("tvix-compat"),
        "{err}"
    );

    // A fresh store created in compat mode gives a different root digest
    // for a tree with a subdirectory.
    let compat = Store::new();
    let db2 = compat.data().join("castore.redb");
    let out = run_ok(
        compat
            .cairn()
            .args(["castore", "import", "--json", "--directory-service-addr"])
            .arg(format!("redb://{}?size-rule=tvix-compat", db2.display()))
            .arg(&work),
    );
    let compat_node: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_ne!(compat_node["digest"], store.import(&work)["digest"]);
}

#[test]
fn missing_digests_fail_clearly() {
    let store = Store::new();
    // A store with something in it, just not what is asked for.
    let tree = store.dir.path().join("tree");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("f"), b"x").unwrap();
    let out = store
        .cairn()
        .args(["castore", "import"])
        .arg(&tree)
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = store
        .cairn()
        .args([
            "castore",
            "export",
            "b3:rxNJufX5oaagQE3qNtzJSZvLJcmtwRK3zJqTyuQfMmI=",
        ])
        .arg(store.dir.path().join("x"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in the store"));
    let out = store
        .cairn()
        .args(["castore", "stat", "not-a-digest"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a malformed digest is a usage error"
    );
}
