//! Store path computation against the real `nix-store` and `nix`: source
//! paths (`--add`), flat and recursive fixed outputs of every algorithm
//! (`--add-fixed`, `--print-fixed-path`) and text paths with references
//! (`builtins.toFile`). Each test runs in its own private chroot store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use cairn_nix::hash::{ContentAddress, FileIngestionMethod, HashAlgo, HashingWriter};
use cairn_nix::nar;
use cairn_nix::store_path::{compute_ca_path, compute_text_path, References};
use cairn_nix::StorePath;
use cairn_testkit::{generated_trees, nix_cmd, oracle, run_ok};

fn stdout_line(out: Vec<u8>) -> String {
    String::from_utf8(out).unwrap().trim().to_owned()
}

fn nar_sha256(path: &Path) -> cairn_nix::NixHash {
    let sink = nar::fs::dump_path(path, HashingWriter::new(HashAlgo::Sha256)).unwrap();
    sink.finish().0
}

#[test]
fn fixed_output_paths_match_nix_store_add_fixed() {
    let Some(nix_store) = oracle("nix-store") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let trees = generated_trees(&work.path().join("trees").tap_mkdir());
    let file = trees
        .iter()
        .find(|p| p.ends_with("lone-executable"))
        .unwrap();
    let dir = trees.iter().find(|p| p.ends_with("kitchen-sink")).unwrap();

    for algo in [
        HashAlgo::Md5,
        HashAlgo::Sha1,
        HashAlgo::Sha256,
        HashAlgo::Sha512,
    ] {
        // Flat: the hash of the file's bytes.
        let flat = ContentAddress::Fixed(
            FileIngestionMethod::Flat,
            algo.digest(&std::fs::read(file).unwrap()),
        );
        let ours = compute_ca_path(&flat, &References::default(), "lone-executable").unwrap();
        let theirs = run_ok(
            nix_cmd(&nix_store, &store)
                .args(["--add-fixed", algo.name()])
                .arg(file),
        );
        assert_eq!(ours.to_string(), stdout_line(theirs), "flat {algo}");

        // Recursive: the hash of the NAR (sha256 gives a `source` path).
        let mut hasher = HashingWriter::new(algo);
        nar::fs::dump_path(dir, &mut hasher).unwrap();
        let rec = ContentAddress::Fixed(FileIngestionMethod::Recursive, hasher.finish().0);
        let ours = compute_ca_path(&rec, &References::default(), "kitchen-sink").unwrap();
        let theirs = run_ok(
            nix_cmd(&nix_store, &store)
                .args(["--add-fixed", "--recursive", algo.name()])
                .arg(dir),
        );
        assert_eq!(ours.to_string(), stdout_line(theirs), "recursive {algo}");

        // The same through --print-fixed-path, which takes the hash as text.
        for (ca, recursive) in [(&flat, false), (&rec, true)] {
            let mut cmd = nix_cmd(&nix_store, &store);
            cmd.arg("--print-fixed-path");
            if recursive {
                cmd.arg("--recursive");
            }
            cmd.args([
                algo.name(),
                &ca.hash().to_nix_base32_string()[algo.name().len() + 1..],
                "some-name",
            ]);
            let ours = compute_ca_path(ca, &References::default(), "some-name").unwrap();
            assert_eq!(
                ours.to_string(),
                stdout_line(run_ok(&mut cmd)),
                "print-fixed-path {ca}"
            );
        }
    }
}

#[test]
fn source_paths_match_nix_store_add() {
    let Some(nix_store) = oracle("nix-store") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    for tree in generated_trees(&work.path().join("trees").tap_mkdir()) {
        let name = tree.file_name().unwrap().to_str().unwrap();
        let ca = ContentAddress::Fixed(FileIngestionMethod::Recursive, nar_sha256(&tree));
        let ours = compute_ca_path(&ca, &References::default(), name).unwrap();
        let theirs = stdout_line(run_ok(nix_cmd(&nix_store, &store).arg("--add").arg(&tree)));
        assert_eq!(ours.to_string(), theirs, "{}", tree.display());
    }
}

#[test]
fn text_paths_with_references_match_builtins_to_file() {
    let Some(nix) = oracle("nix") else { return };
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let eval = |expr: &str| {
        stdout_line(run_ok(
            nix_cmd(&nix, &store).args(["eval", "--raw", "--expr", expr]),
        ))
    };
    let a = eval(r#"builtins.toFile "a.txt" "plain text\n""#);
    let ours_a = compute_text_path(
        &HashAlgo::Sha256
            .digest(b"plain text\n")
            .sha256_bytes()
            .unwrap(),
        &[],
        "a.txt",
    )
    .unwrap();
    assert_eq!(ours_a.to_string(), a);

    // A text file that mentions two other store paths refers to both.
    let b_expr = r#"let a = builtins.toFile "a.txt" "plain text\n"; c = builtins.toFile "c" "c"; in builtins.toFile "b" "uses ${a} and ${c}""#;
    let b = eval(b_expr);
    let c = eval(r#"builtins.toFile "c" "c""#);
    let contents = format!("uses {a} and {c}");
    let refs = [
        StorePath::from_absolute_path(&c).unwrap(),
        StorePath::from_absolute_path(&a).unwrap(),
    ];
    let digest = HashAlgo::Sha256
        .digest(contents.as_bytes())
        .sha256_bytes()
        .unwrap();
    let ours_b = compute_text_path(&digest, &refs, "b").unwrap();
    assert_eq!(ours_b.to_string(), b);
    let text_ca = ContentAddress::Text(HashAlgo::Sha256.digest(contents.as_bytes()));
    let via_ca = compute_ca_path(
        &text_ca,
        &References {
            others: &refs,
            self_ref: false,
        },
        "b",
    )
    .unwrap();
    assert_eq!(via_ca, ours_b);
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for std::path::PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}
