//! The main store jobs from the command line, checked against the real Nix
//! client: `cairn import` gives the paths and NAR hashes `nix-store --add`
//! gives, `cairn export` the NAR `nix-store --dump` writes, `cairn sign` the
//! signature `nix store sign` makes; NARs and narinfos from a real
//! `nix copy --to file://` cache import, and bad ones fail without a trace.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cairn_nix::hash::NixHash;
use cairn_testkit::{generated_trees, nix_cmd, oracle, real_trees, run_ok};
use serde_json::Value;

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    /// `cairn import-nar --name NAME -`, its stdin and stdout piped.
    fn import_nar_from_stdin(&self, name: &str) -> std::process::Child {
        self.cairn()
            .args(["import-nar", "--name", name, "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn new() -> Self {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn cairn(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
        c.env("CAIRN_DATA_DIR", self.path("data"));
        c
    }

    fn stdout(&self, args: &[&str]) -> String {
        String::from_utf8(run_ok(self.cairn().args(args))).unwrap()
    }

    fn import(&self, tree: &Path) -> String {
        let out = run_ok(self.cairn().arg("import").arg(tree));
        String::from_utf8(out).unwrap().trim().to_owned()
    }

    fn path_info(&self, path: &str) -> Value {
        let v: Value = serde_json::from_str(&self.stdout(&["path-info", "--json", path])).unwrap();
        v[0].clone()
    }

    fn fails(&self, args: &[&str]) -> String {
        let out: Output = self.cairn().args(args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?} should fail with status 1"
        );
        String::from_utf8(out.stderr).unwrap()
    }
}

fn nix_path_info(nix: &Path, store: &Path, path: &str) -> Value {
    let out = run_ok(nix_cmd(nix, store).args(["path-info", "--json", path]));
    let v: Value = serde_json::from_slice(&out).unwrap();
    v[0].clone()
}

fn same_hash(a: &Value, b: &Value) -> bool {
    let parse = |v: &Value| NixHash::parse(v.as_str().unwrap()).unwrap();
    parse(a) == parse(b)
}

#[test]
fn import_and_export_agree_with_nix() {
    let (Some(nix_store), Some(nix)) = (oracle("nix-store"), oracle("nix")) else {
        return;
    };
    let env = Env::new();
    std::fs::create_dir(env.path("gen")).unwrap();
    let mut trees = generated_trees(&env.path("gen"));
    trees.extend(real_trees());
    let nix_root = env.path("nix");
    for (i, tree) in trees.iter().enumerate() {
        let ours = env.import(tree);
        let theirs = String::from_utf8(run_ok(
            nix_cmd(&nix_store, &nix_root).arg("--add").arg(tree),
        ))
        .unwrap()
        .trim()
        .to_owned();
        assert_eq!(ours, theirs, "store path of {}", tree.display());

        let mine = env.path_info(&ours);
        let nixs = nix_path_info(&nix, &nix_root, &theirs);
        assert_eq!(mine["path"], nixs["path"]);
        assert!(
            same_hash(&mine["narHash"], &nixs["narHash"]),
            "{}: {} vs {}",
            tree.display(),
            mine["narHash"],
            nixs["narHash"]
        );
        assert_eq!(mine["narSize"], nixs["narSize"], "{}", tree.display());
        assert_eq!(mine["references"], nixs["references"]);
        assert_eq!(mine["ca"], nixs["ca"], "{}", tree.display());
        assert!(mine["narHash"].as_str().unwrap().starts_with("sha256:"));

        // The NAR out is Nix's NAR of the original tree, byte for byte.
        let exported = run_ok(env.cairn().args(["export", &ours]));
        let dumped = run_ok(Command::new(&nix_store).arg("--dump").arg(tree));
        assert!(exported == dumped, "export of {} differs", tree.display());

        // And the tree out is the tree in.
        let dest = env.path(&format!("out-{i}"));
        run_ok(env.cairn().args(["export", &ours, "--to"]).arg(&dest));
        let diff = Command::new("diff")
            .arg("-r")
            .arg("--no-dereference")
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
    }
}

#[test]
fn ls_and_cat_read_inside_a_path() {
    let env = Env::new();
    let tree = env.path("tree");
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::write(tree.join("bin/tool"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(
        tree.join("bin/tool"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(tree.join("README"), b"read me\n").unwrap();
    std::os::unix::fs::symlink("bin/tool", tree.join("link")).unwrap();
    let p = env.import(&tree);

    let top = env.stdout(&["ls", &p]);
    let lines: Vec<&str> = top.lines().collect();
    assert_eq!(lines.len(), 3, "{top}");
    assert!(
        lines[0].starts_with("-r--r--r--") && lines[0].ends_with(" 8 README"),
        "{top}"
    );
    assert!(
        lines[1].starts_with("dr-xr-xr-x") && lines[1].ends_with(" bin"),
        "{top}"
    );
    assert!(lines[2].ends_with(" link -> bin/tool"), "{top}");
    let all = env.stdout(&["ls", "-R", &p]);
    assert!(
        all.contains("-r-xr-xr-x                   18 bin/tool"),
        "{all}"
    );
    let json: Value = serde_json::from_str(&env.stdout(&["ls", "--json", "-R", &p])).unwrap();
    assert_eq!(
        json["entries"]["bin"]["entries"]["tool"]["executable"],
        true
    );
    assert_eq!(json["entries"]["link"]["target"], "bin/tool");

    assert_eq!(
        env.stdout(&["cat", &format!("{p}/bin/tool")]),
        "#!/bin/sh\necho hi\n"
    );
    // A base name works as well as an absolute path.
    let base = p.strip_prefix("/nix/store/").unwrap();
    assert_eq!(env.stdout(&["cat", &format!("{base}/README")]), "read me\n");

    let err = env.fails(&["cat", &format!("{p}/bin")]);
    assert!(err.contains("is a directory"), "{err}");
    let err = env.fails(&["cat", &format!("{p}/link")]);
    assert!(err.contains("is a symlink to bin/tool"), "{err}");
    let err = env.fails(&["cat", &format!("{p}/nope")]);
    assert!(err.contains("no such file or directory"), "{err}");
    let err = env.fails(&["ls", "/nix/store/00000000000000000000000000000000-x"]);
    assert!(err.contains("is not in the store"), "{err}");
}

#[test]
fn sign_makes_the_signature_nix_makes() {
    let (Some(nix_store), Some(nix)) = (oracle("nix-store"), oracle("nix")) else {
        return;
    };
    let env = Env::new();
    let tree = env.path("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("f"), b"signed contents").unwrap();
    let secret = env.path("k.secret");
    let public = env.path("k.public");
    run_ok(
        Command::new(&nix_store)
            .args(["--generate-binary-cache-key", "test-1"])
            .arg(&secret)
            .arg(&public),
    );
    let p = env.import(&tree);
    run_ok(env.cairn().arg("sign").arg("--key").arg(&secret).arg(&p));
    // Signing twice with one key keeps one signature.
    run_ok(env.cairn().arg("sign").arg("--key").arg(&secret).arg(&p));
    let mine = env.path_info(&p);

    let nix_root = env.path("nix");
    run_ok(nix_cmd(&nix_store, &nix_root).arg("--add").arg(&tree));
    run_ok(
        nix_cmd(&nix, &nix_root)
            .args(["store", "sign", "--key-file"])
            .arg(&secret)
            .arg(&p),
    );
    let theirs = nix_path_info(&nix, &nix_root, &p);
    assert_eq!(mine["signatures"], theirs["signatures"]);
    assert_eq!(mine["signatures"].as_array().unwrap().len(), 1);
}

/// A `file://` binary cache made by the real `nix copy`, holding `a` and
/// `b`, where `b` refers to `a`. Returns (cache dir, a, b).
fn nix_cache(env: &Env, compression: &str) -> Option<(PathBuf, String, String)> {
    let nix = oracle("nix")?;
    let instantiate = oracle("nix-instantiate")?;
    let root = env.path("nix-src");
    let out = run_ok(nix_cmd(&instantiate, &root).args([
        "--read-write-mode",
        "--eval",
        "-E",
        r#"builtins.toFile "b" "refers to ${builtins.toFile "a" "hello"}""#,
    ]));
    let b = String::from_utf8(out)
        .unwrap()
        .trim()
        .trim_matches('"')
        .to_owned();
    let info = nix_path_info(&nix, &root, &b);
    let a = info["references"][0].as_str().unwrap().to_owned();
    let cache = env.path(&format!("cache-{compression}"));
    run_ok(nix_cmd(&nix, &root).args([
        "copy",
        "--to",
        &format!("file://{}?compression={compression}", cache.display()),
        &b,
    ]));
    Some((cache, a, b))
}

fn narinfo_of(cache: &Path, path: &str) -> PathBuf {
    let base = path.strip_prefix("/nix/store/").unwrap();
    cache.join(format!("{}.narinfo", &base[..32]))
}

#[test]
fn narinfo_imports_check_hash_size_and_references() {
    let env = Env::new();
    let Some((cache, a, b)) = nix_cache(&env, "xz") else {
        return;
    };
    let not_there = |p: &str| {
        let err = env.fails(&["path-info", p]);
        assert!(err.contains("not in the store"), "{err}");
    };

    // b's reference a is not in the store yet: refused, nothing added.
    let b_info = narinfo_of(&cache, &b);
    let err = env.fails(&["import-nar", "--narinfo", b_info.to_str().unwrap()]);
    assert!(
        err.contains("refers to paths not in the store") && err.contains(&a),
        "{err}"
    );
    not_there(&b);

    // A narinfo whose NarHash is wrong: the NAR is read, then refused.
    let a_info = narinfo_of(&cache, &a);
    let text = std::fs::read_to_string(&a_info).unwrap();
    // Next to the real one, so its URL still finds the NAR.
    let wrong = cache.join("wrong.narinfo");
    let bad_hash = "sha256:0000000000000000000000000000000000000000000000000000";
    let edited: String = text
        .lines()
        .map(|l| match l.starts_with("NarHash:") {
            true => format!("NarHash: {bad_hash}\n"),
            false => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&wrong, edited).unwrap();
    let err = env.fails(&["import-nar", "--narinfo", wrong.to_str().unwrap()]);
    assert!(
        err.contains("NAR hash mismatch") && err.contains(bad_hash),
        "{err}"
    );
    not_there(&a);

    // A truncated NAR: refused with the offset where it ends.
    let url = text.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap();
    let xz = oracle("xz").expect("xz comes with nix-bin");
    let full = run_ok(Command::new(xz).arg("-dc").arg(cache.join(url)));
    let cut = env.path("cut.nar");
    std::fs::write(&cut, &full[..full.len() - 16]).unwrap();
    let err = env.fails(&[
        "import-nar",
        "--narinfo",
        a_info.to_str().unwrap(),
        cut.to_str().unwrap(),
    ]);
    assert!(err.contains("truncated"), "{err}");
    not_there(&a);

    // In dependency order, from the cache as nix wrote it, both go in,
    // with the metadata nix recorded.
    assert_eq!(
        env.stdout(&["import-nar", "--narinfo", a_info.to_str().unwrap()])
            .trim(),
        a
    );
    assert_eq!(
        env.stdout(&["import-nar", "--narinfo", b_info.to_str().unwrap()])
            .trim(),
        b
    );
    let info = env.path_info(&b);
    assert_eq!(info["references"][0], a.as_str());
    assert!(info["ca"].as_str().unwrap().starts_with("text:sha256:"));
    assert_eq!(
        env.stdout(&["cat", &b]),
        format!("refers to {a}"),
        "contents of b"
    );
}

#[test]
fn compressed_nars_import_whatever_the_compression() {
    let env = Env::new();
    for compression in ["zstd", "bzip2", "none"] {
        let Some((cache, a, _)) = nix_cache(&env, compression) else {
            return;
        };
        let data = env.path("data");
        let _ = std::fs::remove_dir_all(&data);
        let info = narinfo_of(&cache, &a);
        assert_eq!(
            env.stdout(&["import-nar", "--narinfo", info.to_str().unwrap()])
                .trim(),
            a,
            "{compression}"
        );
        let _ = std::fs::remove_dir_all(env.path("nix-src"));
    }
}

#[test]
fn import_nar_by_name_reads_files_and_stdin_alike() {
    let env = Env::new();
    let tree = env.path("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("f"), b"x").unwrap();
    let nar = run_ok(env.cairn().args(["nar", "dump"]).arg(&tree));
    let nar_file = env.path("t.nar");
    std::fs::write(&nar_file, &nar).unwrap();
    let from_tree = env.import(&tree);
    // `tree` is the name `cairn import` gave it.
    let from_file = env.stdout(&["import-nar", "--name", "tree", nar_file.to_str().unwrap()]);
    assert_eq!(from_file.trim(), from_tree);
    let mut child = env.import_nar_from_stdin("tree");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &nar).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), from_tree);

    let err = env.fails(&[
        "import-nar",
        "--name",
        "bad name!",
        nar_file.to_str().unwrap(),
    ]);
    assert!(err.contains("store path name"), "{err}");
}

/// The NAR file a narinfo in a `file://` cache points at.
fn nar_file_of(cache: &Path, path: &str) -> PathBuf {
    let text = std::fs::read_to_string(narinfo_of(cache, path)).unwrap();
    let url = text
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .expect("a narinfo has a URL");
    cache.join(url)
}

#[test]
fn import_nar_by_name_finds_the_compression_from_the_first_bytes() {
    let env = Env::new();
    let mut added = Vec::new();
    for compression in ["none", "zstd", "xz"] {
        let Some((cache, a, _)) = nix_cache(&env, compression) else {
            return;
        };
        let nar = nar_file_of(&cache, &a);
        added.push(env.stdout(&["import-nar", "--name", "a", nar.to_str().unwrap()]));
        // The same through a pipe.
        let child = env
            .cairn()
            .args(["import-nar", "--name", "a"])
            .stdin(std::fs::File::open(&nar).unwrap())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{compression} from stdin");
        added.push(String::from_utf8(out.stdout).unwrap());
        let _ = std::fs::remove_dir_all(env.path("nix-src"));
    }
    assert_eq!(added.len(), 6);
    assert!(added.iter().all(|p| *p == added[0]), "{added:?}");
}

#[test]
fn import_nar_reads_nars_of_many_pieces_and_refuses_empty_input() {
    let env = Env::new();
    let tree = env.path("tree");
    std::fs::create_dir(&tree).unwrap();
    // Larger than a few of the reader's 256 KiB pieces, and not aligned
    // to them, with small files on both sides.
    let big: Vec<u8> = (0..700_001u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(tree.join("a-small"), b"first").unwrap();
    std::fs::write(tree.join("big"), &big).unwrap();
    std::fs::write(tree.join("z-small"), b"last").unwrap();
    let nar = run_ok(env.cairn().args(["nar", "dump"]).arg(&tree));
    let from_tree = env.import(&tree);

    let mut child = env.import_nar_from_stdin("tree");
    let mut stdin = child.stdin.take().unwrap();
    // In uneven writes, as a network stream would arrive.
    for part in nar.chunks(100_003) {
        std::io::Write::write_all(&mut stdin, part).unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), from_tree);
    let read_back = run_ok(env.cairn().args(["cat", &format!("{from_tree}/big")]));
    assert!(read_back == big, "the big file reads back changed");

    let out = env
        .cairn()
        .args(["import-nar", "--name", "empty", "-"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot add the NAR -"), "{err}");
}

#[test]
fn data_persists_and_concurrent_imports_both_land() {
    let env = Env::new();
    std::fs::create_dir(env.path("gen")).unwrap();
    let trees = generated_trees(&env.path("gen"));
    assert!(trees.len() >= 2);
    // Two processes import at once into one data directory: the second
    // waits for the first's database lock, then both paths are there.
    let spawn = |tree: &Path| {
        env.cairn()
            .arg("import")
            .arg(tree)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = spawn(&trees[0]);
    let second = spawn(&trees[1]);
    let paths: Vec<String> = [first, second]
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        })
        .collect();
    // A later process sees both, and everything stored verifies.
    for p in &paths {
        assert_eq!(env.path_info(p)["path"], p.as_str());
    }
    let verify = env.cairn().args(["castore", "verify"]).output().unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

fn gc_counts(out: &str, line: &str, what: &str) -> u64 {
    let l = out.lines().find(|l| l.starts_with(line)).unwrap();
    let at = l
        .find(what)
        .unwrap_or_else(|| panic!("{what:?} not in {l:?}"));
    let before: String = l[..at]
        .trim_end()
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect();
    let after: String = l[at + what.len()..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let digits = if after.is_empty() {
        before.chars().rev().collect()
    } else {
        after
    };
    digits.parse().unwrap()
}

#[test]
fn gc_deletes_only_what_no_path_reaches() {
    let env = Env::new();
    std::fs::create_dir(env.path("gen")).unwrap();
    let trees = generated_trees(&env.path("gen"));
    let kept: Vec<(String, Vec<u8>)> = trees[..2]
        .iter()
        .map(|t| {
            let nar = run_ok(env.cairn().args(["nar", "dump"]).arg(t));
            (env.import(t), nar)
        })
        .collect();
    // Garbage: a tree in castore with no store path, and the blobs of an
    // import-nar that failed half-way.
    let garbage = env.path("garbage");
    std::fs::create_dir(&garbage).unwrap();
    std::fs::write(garbage.join("only-here"), b"unreferenced contents").unwrap();
    let node: Value = serde_json::from_slice(&run_ok(
        env.cairn()
            .args(["castore", "import", "--json"])
            .arg(&garbage),
    ))
    .unwrap();
    let big = env.path("big");
    std::fs::create_dir(&big).unwrap();
    std::fs::write(
        big.join("f"),
        cairn_testkit::pseudo_random_bytes(8, 3 << 20),
    )
    .unwrap();
    // A lone blob, as an upload that died before its directories leaves.
    let lone = env.path("lone");
    std::fs::write(&lone, b"a blob no directory names").unwrap();
    run_ok(env.cairn().args(["castore", "import"]).arg(&lone));
    let nar = run_ok(env.cairn().args(["nar", "dump"]).arg(&big));
    let cut = env.path("cut.nar");
    std::fs::write(&cut, &nar[..nar.len() - 100]).unwrap();
    env.fails(&["import-nar", "--name", "big", cut.to_str().unwrap()]);

    // Default grace: the young blobs and the young unreachable directory
    // stay (an import still running elsewhere may be about to use them).
    let dry = env.stdout(&["gc", "--dry-run"]);
    assert!(dry.starts_with("store paths: 2"), "{dry}");
    assert_eq!(gc_counts(&dry, "directories", "would delete"), 0, "{dry}");
    assert_eq!(
        gc_counts(&dry, "directories", "unreachable but younger"),
        1,
        "{dry}"
    );
    assert!(
        gc_counts(&dry, "blob objects", "unreachable but younger") > 0,
        "{dry}"
    );
    assert_eq!(gc_counts(&dry, "blob objects", "would delete"), 0, "{dry}");
    // A dry run changed nothing.
    let digest = node["digest"].as_str().unwrap();
    run_ok(env.cairn().args(["castore", "stat", digest]));

    let out = env.stdout(&["gc", "--yes", "--grace-minutes", "0"]);
    assert_eq!(gc_counts(&out, "directories", "deleted"), 1, "{out}");
    // At least the garbage file and the lone blob; also whatever chunks
    // the broken NAR's large file had stored before the ingest stopped
    // (timing decides how many).
    assert!(gc_counts(&out, "blob objects", "deleted") >= 2, "{out}");
    for gone in [
        digest.to_owned(),
        cairn_castore::B3Digest::of(b"unreferenced contents").to_string(),
        cairn_castore::B3Digest::of(b"a blob no directory names").to_string(),
    ] {
        let err = env.fails(&["castore", "stat", &gone]);
        assert!(err.contains("neither a blob nor a directory"), "{err}");
    }

    // What store paths reach is whole: same NARs, and an fsck passes.
    for (path, nar) in &kept {
        assert!(run_ok(env.cairn().args(["export", path])) == *nar, "{path}");
    }
    let verify = env.cairn().args(["castore", "verify"]).output().unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    // Nothing left to collect.
    let again = env.stdout(&["gc", "--yes", "--grace-minutes", "0"]);
    assert_eq!(gc_counts(&again, "directories", "deleted"), 0, "{again}");
    assert_eq!(gc_counts(&again, "blob objects", "deleted"), 0, "{again}");
    // gc without --dry-run or --yes is a usage error.
    let usage = env.cairn().arg("gc").output().unwrap();
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn export_to_a_reader_that_stops_early_exits_quietly() {
    let env = Env::new();
    let tree = env.path("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(
        tree.join("big"),
        cairn_testkit::pseudo_random_bytes(4, 4 << 20),
    )
    .unwrap();
    let p = env.import(&tree);
    // Like `cairn export P | head -c 100`.
    let mut child = env
        .cairn()
        .args(["export", &p])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 100];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(141),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(&first[8..21], b"nix-archive-1");
}

#[test]
fn a_store_path_that_cannot_be_printed_is_an_error_not_a_panic() {
    let env = Env::new();
    let tree = env.path("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("f"), b"printed nowhere\n").unwrap();
    // Standard output on a full disk: the import itself succeeds, the
    // line naming its path cannot be written, and a script must see that.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = env
        .cairn()
        .arg("import")
        .arg(&tree)
        .stdout(full)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot write to standard output") && !stderr.contains("panicked"),
        "{stderr}"
    );
    // The path is stored all the same: printing it again works.
    let again = env.import(&tree);
    assert!(again.starts_with("/nix/store/"), "{again}");
}

#[test]
fn killed_store_imports_leave_no_path_and_a_sound_store() {
    let env = Env::new();
    let tree = real_trees()
        .into_iter()
        .next()
        .unwrap_or_else(|| PathBuf::from("/usr/share/doc"));
    let nar = run_ok(env.cairn().args(["nar", "dump"]).arg(&tree));
    let path = String::from_utf8(run_ok(env.cairn().arg("store-path").arg(&tree)))
        .unwrap()
        .trim()
        .to_owned();
    for delay_ms in [20u64, 60, 120, 200, 300, 450] {
        let mut child = env
            .cairn()
            .arg("import")
            .arg(&tree)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        // Either the import finished before the kill, and the path is whole,
        // or it did not, and there is no path at all.
        let info = env.cairn().args(["path-info", &path]).output().unwrap();
        if info.status.success() {
            assert!(
                run_ok(env.cairn().args(["export", &path])) == nar,
                "after {delay_ms} ms"
            );
        } else {
            // Killed before anything was stored, the data directory
            // may not hold a store yet: that is said too.
            let err = String::from_utf8_lossy(&info.stderr);
            assert!(
                err.contains("not in the store") || err.contains("no Cairn store in"),
                "after {delay_ms} ms: {err}"
            );
        }
        let verify = env.cairn().args(["castore", "verify"]).output().unwrap();
        let verify_err = String::from_utf8_lossy(&verify.stderr);
        // A kill before the store's first file was made leaves no store,
        // which verify reports; anything else must verify.
        assert!(
            verify.status.success() || verify_err.contains("no Cairn store in"),
            "after a kill at {delay_ms} ms the store does not verify: {}{verify_err}",
            String::from_utf8_lossy(&verify.stdout)
        );
    }
    // The store still works, and what the killed runs left is garbage.
    assert_eq!(env.import(&tree), path);
    assert!(run_ok(env.cairn().args(["export", &path])) == nar);
    run_ok(env.cairn().args(["gc", "--yes", "--grace-minutes", "0"]));
    assert!(run_ok(env.cairn().args(["export", &path])) == nar);
}

#[test]
fn service_flags_work_before_the_subcommand_too() {
    let env = Env::new();
    let data = env.path("leading");
    let tree = env.path("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("f"), b"leading flags\n").unwrap();
    let bare = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
        c.env_remove("CAIRN_DATA_DIR");
        c
    };
    let path = String::from_utf8(run_ok(
        bare().arg("--data-dir").arg(&data).arg("import").arg(&tree),
    ))
    .unwrap()
    .trim()
    .to_owned();
    // The same store, named after the subcommand this time.
    let info = run_ok(
        bare()
            .args(["path-info", "--data-dir"])
            .arg(&data)
            .arg(&path),
    );
    assert!(String::from_utf8(info).unwrap().contains(&path));
    // A flag after the subcommand wins over one before it.
    let other = env.path("other");
    let out = bare()
        .arg("--data-dir")
        .arg(&data)
        .args(["path-info", "--data-dir"])
        .arg(&other)
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "the other store is empty");
}

#[test]
fn reading_commands_never_create_a_store() {
    // A mistyped --data-dir must say so, not answer from a new empty
    // store it just created there.
    let env = Env::new();
    let p = "/nix/store/00000000000000000000000000000000-x";
    for args in [
        vec!["path-info", p],
        vec!["export", p],
        vec!["ls", p],
        vec!["cat", &format!("{p}/f")],
        vec!["gc", "--dry-run"],
        vec![
            "castore",
            "stat",
            "b3:rxNJufX5oaagQE3qNtzJSZvLJcmtwRK3zJqTyuQfMmI=",
        ],
    ] {
        let err = env.fails(&args);
        assert!(err.contains("no Cairn store in"), "{args:?}: {err}");
        assert!(
            err.contains("data"),
            "{args:?} should name the directory: {err}"
        );
        assert!(
            !env.path("data").exists(),
            "{args:?} created the data directory"
        );
    }
    // Once something is imported, the same question gets its answer.
    let tree = env.path("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("f"), b"x").unwrap();
    env.import(&tree);
    assert!(env.fails(&["path-info", p]).contains("not in the store"));
}
