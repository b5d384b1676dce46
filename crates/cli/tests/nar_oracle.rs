//! `cairn nar …` and `cairn store-path` against the real Nix client, on the
//! generated trees and on real trees from this machine (`/usr/share/doc`, a
//! Python standard library): dumps byte-identical to `nix-store --dump`,
//! restores that reproduce the tree, hashes and paths equal to Nix's, and
//! listings equal to `nix nar ls`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cairn_testkit::{generated_trees, nix_cmd, oracle, real_trees, run_ok};

fn cairn() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
}

fn all_trees(work: &Path) -> Vec<PathBuf> {
    let gen = work.join("generated");
    fs::create_dir_all(&gen).unwrap();
    let mut trees = generated_trees(&gen);
    trees.extend(real_trees());
    trees
}

#[test]
fn dump_is_byte_identical_to_nix_store_dump() {
    let Some(nix_store) = oracle("nix-store") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    for tree in all_trees(work.path()) {
        let theirs = run_ok(Command::new(&nix_store).arg("--dump").arg(&tree));
        let ours = run_ok(cairn().args(["nar", "dump"]).arg(&tree));
        assert!(
            ours == theirs,
            "NAR of {} differs ({} vs {} bytes)",
            tree.display(),
            ours.len(),
            theirs.len()
        );
    }
}

/// Mode bits that NAR preserves, per regular file, relative to the root.
fn modes(root: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            stack.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
        if !m.file_type().is_symlink() {
            out.push((
                p.strip_prefix(root).unwrap().to_path_buf(),
                m.permissions().mode() & 0o777,
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn restore_of_nix_nar_reproduces_the_tree() {
    let Some(nix_store) = oracle("nix-store") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    for (i, tree) in all_trees(work.path()).into_iter().enumerate() {
        let nar = run_ok(Command::new(&nix_store).arg("--dump").arg(&tree));
        let nar_file = work.path().join(format!("{i}.nar"));
        fs::write(&nar_file, &nar).unwrap();

        let ours = work.path().join(format!("ours-{i}"));
        let status = cairn()
            .args(["nar", "restore"])
            .arg(&ours)
            .stdin(fs::File::open(&nar_file).unwrap())
            .status()
            .unwrap();
        assert!(status.success(), "restore of {} failed", tree.display());
        let theirs = work.path().join(format!("theirs-{i}"));
        let status = Command::new(&nix_store)
            .arg("--restore")
            .arg(&theirs)
            .stdin(fs::File::open(&nar_file).unwrap())
            .status()
            .unwrap();
        assert!(status.success());

        // Same bytes, names, symlink targets and executable bits as the original…
        let diff = Command::new("diff")
            .args(["-r", "--no-dereference"])
            .arg(&tree)
            .arg(&ours)
            .output()
            .unwrap();
        assert!(
            diff.status.success(),
            "diff -r {}:\n{}",
            tree.display(),
            String::from_utf8_lossy(&diff.stdout)
        );
        let redump = run_ok(Command::new(&nix_store).arg("--dump").arg(&ours));
        assert!(
            redump == nar,
            "re-dump of restored {} differs",
            tree.display()
        );
        // …and the same permission bits nix-store --restore produces.
        assert_eq!(modes(&ours), modes(&theirs), "modes of {}", tree.display());
    }
}

#[test]
fn hash_and_store_path_match_nix() {
    let Some(nix_store) = oracle("nix-store") else {
        return;
    };
    let Some(nix) = oracle("nix") else { return };
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    for tree in all_trees(work.path()) {
        let added =
            String::from_utf8(run_ok(nix_cmd(&nix_store, &store).arg("--add").arg(&tree))).unwrap();
        let ours = String::from_utf8(run_ok(cairn().arg("store-path").arg(&tree))).unwrap();
        assert_eq!(ours, added, "store path of {}", tree.display());

        let hash = String::from_utf8(run_ok(nix_cmd(&nix_store, &store).args([
            "--query",
            "--hash",
            added.trim(),
        ])))
        .unwrap();
        let ours = String::from_utf8(run_ok(cairn().args(["nar", "hash"]).arg(&tree))).unwrap();
        assert_eq!(ours, hash, "NAR hash of {}", tree.display());

        let sri = String::from_utf8(run_ok(
            nix_cmd(&nix, &store).args(["hash", "path"]).arg(&tree),
        ))
        .unwrap();
        let ours =
            String::from_utf8(run_ok(cairn().args(["nar", "hash", "--sri"]).arg(&tree))).unwrap();
        assert_eq!(ours, sri, "SRI NAR hash of {}", tree.display());
    }
    // --name overrides the last path component, as `nix store add-path --name` does.
    let tree = work.path().join("generated/kitchen-sink");
    let named = String::from_utf8(run_ok(
        nix_cmd(&nix, &store)
            .args(["store", "add-path", "--name", "renamed-1.0"])
            .arg(&tree),
    ))
    .unwrap();
    let ours = String::from_utf8(run_ok(
        cairn()
            .args(["store-path", "--name", "renamed-1.0"])
            .arg(&tree),
    ))
    .unwrap();
    assert_eq!(ours.trim(), named.trim());
    // A name Nix would refuse is refused with a reason.
    let out = cairn()
        .args(["store-path", "--name", ".hidden"])
        .arg(&tree)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("starts with a period"));
}

#[test]
fn ls_matches_nix_nar_ls() {
    let Some(nix) = oracle("nix") else { return };
    let Some(nix_store) = oracle("nix-store") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let mut json_compared = 0;
    for (i, tree) in all_trees(work.path()).into_iter().enumerate() {
        let nar_file = work.path().join(format!("{i}.nar"));
        fs::write(
            &nar_file,
            run_ok(Command::new(&nix_store).arg("--dump").arg(&tree)),
        )
        .unwrap();
        let theirs = run_ok(
            nix_cmd(&nix, &store)
                .args(["nar", "ls", "-lR"])
                .arg(&nar_file)
                .arg("/"),
        );
        let ours = run_ok(cairn().args(["nar", "ls"]).arg(&nar_file));
        assert!(
            ours == theirs,
            "listing of {}:\n{}",
            tree.display(),
            String::from_utf8_lossy(&ours)
        );

        // Nix writes names into JSON unescaped; compare only trees with UTF-8 names.
        let theirs = run_ok(
            nix_cmd(&nix, &store)
                .args(["nar", "ls", "--json", "-R"])
                .arg(&nar_file)
                .arg("/"),
        );
        if let Ok(theirs) = serde_json::from_slice::<serde_json::Value>(&theirs) {
            let ours: serde_json::Value = serde_json::from_slice(&run_ok(
                cairn().args(["nar", "ls", "--json"]).arg(&nar_file),
            ))
            .unwrap();
            assert_eq!(ours, theirs, "JSON listing of {}", tree.display());
            json_compared += 1;
        }
    }
    assert!(
        json_compared >= 4,
        "only {json_compared} JSON listings were comparable"
    );
}

#[test]
fn dump_refuses_unsupported_file_types() {
    let work = tempfile::tempdir().unwrap();
    let fifo = work.path().join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let out = cairn()
        .args(["nar", "dump"])
        .arg(work.path())
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unsupported file type") && err.lines().count() == 1,
        "{err}"
    );
}
