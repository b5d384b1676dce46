#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Guards the fuzzing findings: every input saved under
//! `crates/nix/fuzz/regressions/<target>/` (inputs that once broke a check,
//! and hand-picked interesting ones) is run through exactly the
//! checks its fuzz target applies (`crates/nix/fuzz/checks.rs`): the NAR
//! reader never panics and re-encodes whatever it accepts byte for byte;
//! the narinfo parser never panics and rendering what it accepts is a fixed
//! point. Inputs named `valid-*` must also be accepted and `invalid-*`
//! rejected. Runs on stable, without libFuzzer; an empty or missing
//! directory fails, so the suite cannot silently test nothing.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

#[path = "../fuzz/checks.rs"]
mod checks;

fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "{} holds no regression inputs",
        dir.display()
    );
    files
}

/// Runs `check` on every input of `target`, reporting all failures at once.
///
/// Besides the fuzz target's own checks, an input named `valid-*` must be
/// accepted and one named `invalid-*` rejected, so that the round-trip
/// checks keep being exercised (other names: crash regressions, either way).
fn run(target: &str, check: fn(&[u8]) -> bool) {
    let mut failed = Vec::new();
    for path in inputs(target) {
        let data = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        match catch_unwind(AssertUnwindSafe(|| check(&data))) {
            Err(_) => failed.push(format!("{name}: check panicked")),
            Ok(false) if name.starts_with("valid-") => {
                failed.push(format!("{name}: rejected, expected accepted"));
            }
            Ok(true) if name.starts_with("invalid-") => {
                failed.push(format!("{name}: accepted, expected rejected"));
            }
            Ok(_) => {}
        }
    }
    assert!(
        failed.is_empty(),
        "{target} regressions failed: {failed:#?}"
    );
}

#[test]
fn nar_reader_regressions() {
    run("nar_reader", checks::nar_reader);
}

#[test]
fn narinfo_parse_regressions() {
    run("narinfo_parse", checks::narinfo_parse);
}
