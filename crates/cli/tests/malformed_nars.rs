//! `cairn nar restore` on malformed NARs: each one fails with exit status 1
//! and a one-line reason, and leaves no output tree, partial or hidden.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use cairn_testkit::nar_corpus;

fn restore(nar: &[u8], dest: &Path) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["nar", "restore"])
        .arg(dest)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader may stop early and close its stdin; that is fine.
    let _ = child.stdin.take().unwrap().write_all(nar);
    child.wait_with_output().unwrap()
}

fn assert_refused(name: &str, nar: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out");
    let out = restore(nar, &dest);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{name}: status {:?}, stderr {stderr}",
        out.status
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "{name}: reason is not one line: {stderr}"
    );
    assert!(
        stderr.starts_with("error: ") && stderr.contains("invalid NAR"),
        "{name}: {stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{name}: restore left {left:?} behind");
}

#[test]
fn malformed_nars_are_refused_without_output() {
    for (name, nar) in nar_corpus::malformed() {
        assert_refused(name, &nar);
    }
}

#[test]
fn truncated_nars_are_refused_without_output() {
    for cut in nar_corpus::truncations(&nar_corpus::valid()) {
        assert_refused(&format!("cut at {}", cut.len()), &cut);
    }
}

#[test]
fn the_valid_base_case_restores() {
    // The corpus above is only meaningful if its unbroken form is accepted.
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out");
    let out = restore(&nar_corpus::valid(), &dest);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_link(dest.join("c")).unwrap(), Path::new("a"));
}

#[test]
fn restore_refuses_an_existing_destination() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keep"), b"precious").unwrap();
    let out = restore(&nar_corpus::valid(), &dir.path().join("keep"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert_eq!(std::fs::read(dir.path().join("keep")).unwrap(), b"precious");
}
