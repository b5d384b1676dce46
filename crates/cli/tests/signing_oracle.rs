//! Keys and narinfo signatures both ways with the real Nix client: keys
//! from `cairn key generate` and `nix-store --generate-binary-cache-key`,
//! signatures made by `cairn narinfo sign` checked by `nix store verify`,
//! and signatures made by `nix store sign` checked by `cairn narinfo verify`.
//! Narinfos Nix writes also parse and render back byte for byte.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_nix::NarInfo;
use cairn_testkit::{nix_cmd, oracle, run_ok};

fn cairn() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
}

struct Cache {
    _work: tempfile::TempDir,
    nix: PathBuf,
    nix_store: PathBuf,
    dir: PathBuf,
    store: PathBuf,
    /// The path with references (its closure has two more paths).
    path: String,
}

impl Cache {
    fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }

    fn narinfo(&self, path: &str) -> PathBuf {
        let base = path.trim_start_matches("/nix/store/");
        self.dir.join(format!("{}.narinfo", &base[..32]))
    }

    fn nix(&self) -> Command {
        nix_cmd(&self.nix, &self.store)
    }
}

/// A `file://` binary cache holding a text path that refers to two others.
/// The `CA:` lines are removed so Nix does not trust the paths by content
/// and insists on signatures.
fn cache() -> Option<Cache> {
    let nix = oracle("nix")?;
    let nix_store = oracle("nix-store")?;
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let dir = work.path().join("cache");
    let expr = r#"let a = builtins.toFile "a" "A"; b = builtins.toFile "b" "B"; in builtins.toFile "top" "${a} ${b}""#;
    let path = String::from_utf8(run_ok(
        nix_cmd(&nix, &store).args(["eval", "--raw", "--expr", expr]),
    ))
    .unwrap();
    let url = format!("file://{}?compression=none", dir.display());
    run_ok(nix_cmd(&nix, &store).args(["copy", "--to", &url, &path]));
    let c = Cache {
        _work: work,
        nix,
        nix_store,
        dir,
        store,
        path,
    };
    for entry in fs::read_dir(&c.dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "narinfo") {
            let text = fs::read_to_string(&p).unwrap();
            let stripped: String = text
                .lines()
                .filter(|l| !l.starts_with("CA:"))
                .map(|l| format!("{l}\n"))
                .collect();
            fs::write(&p, stripped).unwrap();
        }
    }
    Some(c)
}

fn nix_verify(c: &Cache, public_key: &str) -> bool {
    c.nix()
        .args([
            "store",
            "verify",
            "--store",
            &c.url(),
            "--trusted-public-keys",
            public_key,
            &c.path,
        ])
        .output()
        .unwrap()
        .status
        .success()
}

fn cairn_verify(narinfo: &Path, public_key: &str) -> std::process::Output {
    cairn()
        .args(["narinfo", "verify", "--trusted-public-key", public_key])
        .arg(narinfo)
        .output()
        .unwrap()
}

fn cairn_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let secret = dir.join(format!("{name}.secret"));
    let public = dir.join(format!("{name}.public"));
    let printed = run_ok(
        cairn()
            .args(["key", "generate", name, "--secret-key-file"])
            .arg(&secret)
            .arg("--public-key-file")
            .arg(&public),
    );
    let public_text = fs::read_to_string(&public).unwrap();
    assert_eq!(String::from_utf8(printed).unwrap().trim(), public_text);
    (secret, public_text)
}

fn nix_key(c: &Cache, dir: &Path, name: &str) -> (PathBuf, String) {
    let secret = dir.join(format!("{name}.nix-secret"));
    let public = dir.join(format!("{name}.nix-public"));
    run_ok(
        Command::new(&c.nix_store)
            .args(["--generate-binary-cache-key", name])
            .arg(&secret)
            .arg(&public),
    );
    (secret, fs::read_to_string(&public).unwrap())
}

#[test]
fn signatures_interoperate_with_nix_both_ways() {
    let Some(c) = cache() else { return };
    let keys = tempfile::tempdir().unwrap();
    let narinfo = c.narinfo(&c.path);
    let original = fs::read_to_string(&narinfo).unwrap();
    assert!(original.contains("References: "), "{original}");

    // Unsigned: neither Nix nor Cairn trusts it.
    let (cairn_secret, cairn_public) = cairn_key(keys.path(), "cairn-test-1");
    assert!(!nix_verify(&c, &cairn_public));
    assert_eq!(cairn_verify(&narinfo, &cairn_public).status.code(), Some(1));

    // Signed by Cairn with a Cairn key: Nix accepts it, and only under that key.
    run_ok(
        cairn()
            .args(["narinfo", "sign", "--key-file"])
            .arg(&cairn_secret)
            .arg(&narinfo),
    );
    assert!(
        nix_verify(&c, &cairn_public),
        "nix rejects cairn's signature"
    );
    let (nix_secret, nix_public) = nix_key(&c, keys.path(), "nix-test-1");
    assert!(!nix_verify(&c, &nix_public));
    let cairn_signed = fs::read_to_string(&narinfo).unwrap();

    // Nix signing with the Cairn-generated key makes the same (deterministic) signature.
    fs::write(&narinfo, &original).unwrap();
    run_ok(
        c.nix()
            .args(["store", "sign", "--store", &c.url(), "--key-file"])
            .arg(&cairn_secret)
            .arg(&c.path),
    );
    assert_eq!(fs::read_to_string(&narinfo).unwrap(), cairn_signed);

    // Signed by Nix with a Nix key: Cairn accepts it, and only under that key.
    fs::write(&narinfo, &original).unwrap();
    run_ok(
        c.nix()
            .args(["store", "sign", "--store", &c.url(), "--key-file"])
            .arg(&nix_secret)
            .arg(&c.path),
    );
    let out = cairn_verify(&narinfo, &nix_public);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("signed by nix-test-1"));
    assert_eq!(cairn_verify(&narinfo, &cairn_public).status.code(), Some(1));

    // Cairn signing with the Nix-generated key: Nix accepts it.
    fs::write(&narinfo, &original).unwrap();
    run_ok(
        cairn()
            .args(["narinfo", "sign", "--key-file"])
            .arg(&nix_secret)
            .arg(&narinfo),
    );
    assert!(
        nix_verify(&c, &nix_public),
        "nix rejects cairn's signature with a nix key"
    );

    // A tampered narinfo no longer verifies.
    let tampered = fs::read_to_string(&narinfo)
        .unwrap()
        .replacen("NarSize: ", "NarSize: 1", 1);
    fs::write(&narinfo, tampered).unwrap();
    assert_eq!(cairn_verify(&narinfo, &nix_public).status.code(), Some(1));
}

#[test]
fn narinfos_written_by_nix_round_trip() {
    let Some(c) = cache() else { return };
    // Fresh, unmodified narinfos, compressed and not, with and without CA.
    for compression in ["none", "xz"] {
        let dir = c.dir.with_file_name(format!("cache-{compression}"));
        let url = format!("file://{}?compression={compression}", dir.display());
        run_ok(c.nix().args(["copy", "--to", &url, &c.path]));
        let mut seen = 0;
        for entry in fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "narinfo") {
                let text = fs::read_to_string(&p).unwrap();
                let info = NarInfo::parse(&text).unwrap();
                assert_eq!(info.to_string(), text, "{}", p.display());
                seen += 1;
            }
        }
        assert_eq!(seen, 3, "closure of three paths");
    }
}
