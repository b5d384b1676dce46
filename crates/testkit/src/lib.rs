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

/// The S3 bucket the object-store tests use: `CAIRN_S3_ADDR` (an
/// `objectstore+s3://…` address) with credentials in the `AWS_*`
/// environment, as `eval "$(scripts/garage-cluster start DIR)"` sets them
/// for a real three-node Garage cluster. Without it a local run skips
/// (`None`); CI fails.
pub fn s3_bucket() -> Option<String> {
    let addr = std::env::var("CAIRN_S3_ADDR")
        .ok()
        .filter(|a| !a.is_empty());
    if addr.is_none() {
        assert!(
            !oracles_required(),
            "no S3 cluster: CAIRN_S3_ADDR is unset but CAIRN_REQUIRE_ORACLES=1 \
             (eval \"$(scripts/garage-cluster start target/garage)\")"
        );
        eprintln!(
            "SKIP: no S3 cluster; run eval \"$(scripts/garage-cluster start target/garage)\" to test against Garage"
        );
    }
    addr
}

/// `addr` (an object-store address) with a key prefix of its own, so
/// tests sharing one bucket never see each other's objects.
pub fn with_fresh_prefix(addr: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let prefix = format!(
        "test-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let sep = if addr.contains('?') { '&' } else { '?' };
    format!("{addr}{sep}prefix={prefix}")
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

/// Real trees from this machine: `/usr/share/doc` (many small files) and
/// the newest Python standard library under `/usr/lib`. In CI both must
/// exist; locally a missing one is skipped with a message.
pub fn real_trees() -> Vec<PathBuf> {
    let mut trees = vec![PathBuf::from("/usr/share/doc")];
    let mut pythons: Vec<PathBuf> = fs::read_dir("/usr/lib")
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    name.starts_with("python3.") && p.join("os.py").is_file()
                })
                .collect()
        })
        .unwrap_or_default();
    pythons.sort();
    match pythons.pop() {
        Some(p) => trees.push(p),
        None => {
            assert!(
                !oracles_required(),
                "no Python standard library under /usr/lib (apt-get install python3)"
            );
            eprintln!("SKIP: no /usr/lib/python3.*; the Python tree is not tested");
        }
    }
    trees.retain(|t| t.is_dir());
    trees
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

/// Hand-made NARs, valid and invalid, built token by token so that they can
/// contain exactly the mistakes a writer would refuse to make.
pub mod nar_corpus {
    /// Appends one NAR string: u64 length, bytes, zero padding to 8.
    pub fn token(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s);
        out.resize(out.len() + (8 - s.len() % 8) % 8, 0);
    }

    /// A NAR from a list of tokens.
    pub fn nar(tokens: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for t in tokens {
            token(&mut out, t);
        }
        out
    }

    /// Tokens of a directory holding the given `(name, node tokens)` entries.
    pub fn dir(entries: &[(&[u8], Vec<&'static [u8]>)]) -> Vec<Vec<u8>> {
        let mut t: Vec<Vec<u8>> = ["(", "type", "directory"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        for (name, node) in entries {
            t.extend(["entry", "(", "name"].iter().map(|s| s.as_bytes().to_vec()));
            t.push(name.to_vec());
            t.push(b"node".to_vec());
            t.extend(node.iter().map(|s| s.to_vec()));
            t.push(b")".to_vec());
        }
        t.push(b")".to_vec());
        t
    }

    fn file(contents: &'static [u8]) -> Vec<&'static [u8]> {
        vec![b"(", b"type", b"regular", b"contents", contents, b")"]
    }

    fn with_magic(tokens: Vec<Vec<u8>>) -> Vec<u8> {
        let mut all: Vec<&[u8]> = vec![b"nix-archive-1"];
        all.extend(tokens.iter().map(|t| t.as_slice()));
        nar(&all)
    }

    /// A small valid NAR: a directory with a file, an executable, a symlink
    /// and an empty subdirectory.
    pub fn valid() -> Vec<u8> {
        with_magic(dir(&[
            (b"a", file(b"hello")),
            (
                b"b",
                vec![
                    b"(",
                    b"type",
                    b"regular",
                    b"executable",
                    b"",
                    b"contents",
                    b"#!x",
                    b")",
                ],
            ),
            (b"c", vec![b"(", b"type", b"symlink", b"target", b"a", b")"]),
            (b"d", vec![b"(", b"type", b"directory", b")"]),
        ]))
    }

    /// Every malformation the reader must refuse, by name. None of them may
    /// be restored, even partially.
    pub fn malformed() -> Vec<(&'static str, Vec<u8>)> {
        let mut cases = vec![
            ("empty input", Vec::new()),
            (
                "bad magic",
                nar(&[
                    b"nix-archive-2",
                    b"(",
                    b"type",
                    b"regular",
                    b"contents",
                    b"",
                    b")",
                ]),
            ),
            (
                "wrong token",
                nar(&[
                    b"nix-archive-1",
                    b"(",
                    b"typ",
                    b"regular",
                    b"contents",
                    b"",
                    b")",
                ]),
            ),
            (
                "unknown node type",
                nar(&[b"nix-archive-1", b"(", b"type", b"fifo", b")"]),
            ),
            (
                "unsorted names",
                with_magic(dir(&[(b"b", file(b"1")), (b"a", file(b"2"))])),
            ),
            (
                "duplicate names",
                with_magic(dir(&[(b"a", file(b"1")), (b"a", file(b"2"))])),
            ),
            (
                "duplicate names across types",
                with_magic(dir(&[
                    (b"a", file(b"1")),
                    (b"a", vec![b"(", b"type", b"directory", b")"]),
                ])),
            ),
            ("name .", with_magic(dir(&[(b".", file(b"1"))]))),
            ("name ..", with_magic(dir(&[(b"..", file(b"1"))]))),
            ("name with slash", with_magic(dir(&[(b"a/b", file(b"1"))]))),
            (
                "path traversal name",
                with_magic(dir(&[(b"../../etc/passwd", file(b"1"))])),
            ),
            ("name with NUL", with_magic(dir(&[(b"a\0b", file(b"1"))]))),
            ("empty name", with_magic(dir(&[(b"", file(b"1"))]))),
            ("entry without node", {
                let mut t = dir(&[]);
                t.pop();
                t.extend([
                    b"entry".to_vec(),
                    b"(".to_vec(),
                    b"name".to_vec(),
                    b"x".to_vec(),
                    b")".to_vec(),
                    b")".to_vec(),
                ]);
                with_magic(t)
            }),
            (
                "symlink without target",
                nar(&[b"nix-archive-1", b"(", b"type", b"symlink", b")"]),
            ),
            (
                "empty symlink target",
                nar(&[
                    b"nix-archive-1",
                    b"(",
                    b"type",
                    b"symlink",
                    b"target",
                    b"",
                    b")",
                ]),
            ),
            (
                "symlink target with NUL",
                nar(&[
                    b"nix-archive-1",
                    b"(",
                    b"type",
                    b"symlink",
                    b"target",
                    b"a\0b",
                    b")",
                ]),
            ),
            (
                "executable flag without empty string",
                nar(&[
                    b"nix-archive-1",
                    b"(",
                    b"type",
                    b"regular",
                    b"executable",
                    b"contents",
                    b"x",
                    b")",
                ]),
            ),
            (
                "missing close paren",
                nar(&[
                    b"nix-archive-1",
                    b"(",
                    b"type",
                    b"regular",
                    b"contents",
                    b"x",
                ]),
            ),
        ];
        let mut long_name = with_magic(dir(&[]));
        long_name.truncate(long_name.len() - 16);
        let mut t = Vec::new();
        for s in [&b"entry"[..], b"(", b"name", &[b'n'; 256], b"node"] {
            token(&mut t, s);
        }
        long_name.extend(t);
        cases.push(("name longer than 255 bytes", long_name));

        let long_target = {
            let target = vec![b'x'; 4096];
            nar(&[
                b"nix-archive-1",
                b"(",
                b"type",
                b"symlink",
                b"target",
                &target,
                b")",
            ])
        };
        cases.push(("symlink target longer than 4095 bytes", long_target));

        let mut padding = nar(&[
            b"nix-archive-1",
            b"(",
            b"type",
            b"regular",
            b"contents",
            b"abc",
            b")",
        ]);
        // The last byte before the closing ")" token (16 bytes) is padding of "abc".
        let at = padding.len() - 17;
        padding[at] = 1;
        cases.push(("non-zero padding", padding));

        let mut trailing = valid();
        trailing.extend_from_slice(&[0; 8]);
        cases.push(("trailing bytes", trailing));
        let mut trailing_one = valid();
        trailing_one.push(b'x');
        cases.push(("one trailing byte", trailing_one));

        let absurd = |len: u64, prefix: &[&[u8]]| {
            let mut v = nar(prefix);
            v.extend_from_slice(&len.to_le_bytes());
            v.extend_from_slice(b"only a few bytes follow");
            v
        };
        cases.push((
            "absurd keyword length",
            absurd(u64::MAX, &[b"nix-archive-1", b"("]),
        ));
        cases.push(("absurd magic length", absurd(u64::MAX, &[])));
        cases.push((
            "absurd contents length",
            absurd(
                u64::MAX,
                &[b"nix-archive-1", b"(", b"type", b"regular", b"contents"],
            ),
        ));
        cases.push((
            "absurd target length",
            absurd(
                1 << 40,
                &[b"nix-archive-1", b"(", b"type", b"symlink", b"target"],
            ),
        ));
        cases.push(("absurd name length", {
            let mut v = with_magic(dir(&[]));
            v.truncate(v.len() - 16);
            for s in [&b"entry"[..], b"(", b"name"] {
                token(&mut v, s);
            }
            v.extend_from_slice(&u64::MAX.to_le_bytes());
            v
        }));
        cases
    }

    /// Every prefix of `nar` that ends on an 8-byte boundary (all token
    /// boundaries are among them), plus a few cut inside a token.
    pub fn truncations(nar: &[u8]) -> Vec<Vec<u8>> {
        let mut cuts: Vec<usize> = (0..nar.len()).step_by(8).collect();
        cuts.extend([1, 7, 9, 13, nar.len() - 1, nar.len() - 3]);
        cuts.sort_unstable();
        cuts.dedup();
        cuts.into_iter()
            .filter(|&c| c < nar.len())
            .map(|c| nar[..c].to_vec())
            .collect()
    }
}

/// Starts a server whose first stderr line is `PREFIX ADDRESS` (`cairn
/// daemon: listening on …`, `cairn serve: listening on …`) and returns it
/// with ADDRESS, or why it could not. The rest of its stderr is echoed to
/// this process's stderr (prefixed with `[NAME]`), so the server never
/// blocks on a full pipe and its log shows up under a failing test.
pub fn spawn_announcing(
    cmd: &mut Command,
    prefix: &str,
) -> Result<(std::process::Child, String), String> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let line = match lines.next() {
        Some(Ok(line)) => line,
        _ => return Err(format!("{cmd:?} exited before announcing itself")),
    };
    let Some(address) = line.strip_prefix(prefix).map(str::to_owned) else {
        let _ = child.kill();
        return Err(format!("{cmd:?}: unexpected first line {line:?}"));
    };
    let name = prefix.split(':').next().unwrap_or(prefix).to_owned();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            eprintln!("[{name}] {line}");
        }
    });
    Ok((child, address))
}
