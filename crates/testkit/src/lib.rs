//! Test support shared by Cairn's crates: finding the real tools that act as
//! oracles (nix-store, nix, b3sum…) and building the generated trees every
//! format test runs on. Test-only; nothing in a shipped crate depends on it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // panics are test failures here

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether CI demands that every oracle be present (`CAIRN_REQUIRE_ORACLES=1`).
pub fn oracles_required() -> bool {
    std::env::var("CAIRN_REQUIRE_ORACLES").is_ok_and(|v| v == "1")
}

/// Finds `tool` on `PATH`. When it is missing, a local run skips the calling
/// test with a message on stderr (return `None`), while CI fails loudly.
pub fn oracle(tool: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(tool))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            !oracles_required(),
            "oracle `{tool}` is not installed but CAIRN_REQUIRE_ORACLES=1 (install it, e.g. apt-get install nix-bin)"
        );
        eprintln!(
            "SKIP: `{tool}` not found on PATH; install it to run this test against the real tool"
        );
    }
    found
}

/// Runs a command, panicking with its stderr if it fails; returns stdout.
pub fn run_ok(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A `nix` / `nix-store` command that works inside a private store rooted
/// at `store_root` (a chroot store), so tests never touch `/nix` and never
/// need root.
pub fn nix_cmd(tool: &Path, store_root: &Path) -> Command {
    let mut cmd = Command::new(tool);
    cmd.arg("--store").arg(store_root);
    cmd.env(
        "NIX_CONFIG",
        "experimental-features = nix-command\nsandbox = false\n",
    );
    cmd
}

/// Deterministic bytes (xorshift), so generated trees are identical every run.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn write(path: &Path, data: &[u8], executable: bool) {
    fs::write(path, data).unwrap();
    let mode = if executable { 0o755 } else { 0o644 };
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Builds the generated trees under `dir` and returns their roots.
///
/// Together they cover every shape the NAR grammar has: a lone empty file,
/// a lone executable, a lone (dangling) symlink, an empty directory, and a
/// "kitchen sink" directory with empty and executable files, relative,
/// absolute and dangling symlinks, names with spaces, unicode, newlines and
/// non-UTF-8 bytes, every padding remainder, a multi-MiB file, many
/// siblings whose byte order differs from locale order, and deep nesting.
pub fn generated_trees(dir: &Path) -> Vec<PathBuf> {
    let mut roots = Vec::new();

    let p = dir.join("empty-file");
    write(&p, b"", false);
    roots.push(p);

    let p = dir.join("lone-executable");
    write(&p, b"#!/bin/sh\necho hi\n", true);
    roots.push(p);

    let p = dir.join("lone-symlink");
    symlink("/nonexistent/target", &p).unwrap();
    roots.push(p);

    let p = dir.join("empty-dir");
    fs::create_dir(&p).unwrap();
    roots.push(p);

    let root = dir.join("kitchen-sink");
    fs::create_dir(&root).unwrap();
    write(&root.join("empty"), b"", false);
    fs::create_dir(root.join("empty subdir")).unwrap();
    write(&root.join("run.sh"), b"#!/bin/sh\nexit 0\n", true);
    write(&root.join("empty-exec"), b"", true);
    symlink("run.sh", root.join("link-relative")).unwrap();
    symlink("/etc/hostname", root.join("link-absolute")).unwrap();
    symlink("does/not/exist", root.join("link-dangling")).unwrap();
    symlink("..", root.join("link-dotdot")).unwrap();
    write(&root.join("name with spaces"), b"spaces\n", false);
    write(&root.join("ünïcödé-名前"), "unicode ✓\n".as_bytes(), false);
    write(&root.join("new\nline"), b"newline in name\n", false);
    write(
        &root.join(std::ffi::OsStr::from_bytes(b"latin1-\xe9\xff")),
        b"not utf-8 name\n",
        false,
    );
    for len in 0..=17 {
        write(
            &root.join(format!("pad-{len:02}")),
            &pseudo_random_bytes(len as u64, len),
            false,
        );
    }
    // Byte order: 'A' < 'Z' < '_' < 'a' < 'a-' < 'a.b' < 'aa' < 0xc3…
    for name in [
        "A", "Z", "_", "a", "a-", "a.b", "aa", "-dash", ".hidden", "~tilde",
    ] {
        write(&root.join(name), name.as_bytes(), false);
    }
    write(
        &root.join("big.bin"),
        &pseudo_random_bytes(42, 3 * 1024 * 1024 + 5),
        false,
    );
    write(
        &root.join("big-exec"),
        &pseudo_random_bytes(43, 1024 * 1024 + 3),
        true,
    );
    let mut deep = root.join("deep");
    for i in 0..40 {
        deep.push(format!("level{i}"));
    }
    fs::create_dir_all(&deep).unwrap();
    write(&deep.join("bottom.txt"), b"the bottom\n", false);
    symlink("../../level0", deep.join("up")).unwrap();
    let many = root.join("many");
    fs::create_dir(&many).unwrap();
    for i in 0..300 {
        write(
            &many.join(format!("f{i}")),
            format!("{i}\n").as_bytes(),
            i % 7 == 0,
        );
    }
    roots.push(root);
    roots
}
