//! `cairn serve` as the real `nix` client meets it: a push target for
//! `nix copy --to`, a source for `nix copy --from` and a substituter for
//! `nix-store -r` with signature checking, all over a real listening
//! socket; `cairn copy --from` reading a cache Nix wrote; hostile uploads;
//! NAR failures that must never look like a complete NAR; load.
//!
//! Every Nix command runs in a chroot store of its own and with its own
//! narinfo cache directory (`XDG_CACHE_HOME`), because Nix remembers the
//! narinfos it uploaded or fetched: a "client" here is one such cache.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use cairn_testkit::{oracle, pseudo_random_bytes, run_ok, spawn_announcing};
use serde_json::Value;

fn cairn() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
    for var in [
        "CAIRN_DATA_DIR",
        "CAIRN_STORE_ADDR",
        "CAIRN_CACHE_DIR",
        "CAIRN_UPLOAD_TOKEN",
        "CAIRN_BLOB_SERVICE_ADDR",
        "CAIRN_DIRECTORY_SERVICE_ADDR",
        "CAIRN_PATH_INFO_SERVICE_ADDR",
    ] {
        c.env_remove(var);
    }
    c
}

/// A running `cairn serve`; killed if the test ends without stopping it.
struct Serve {
    child: Child,
    /// `http://127.0.0.1:PORT`
    url: String,
}

impl Serve {
    fn start(data: &Path, extra: &[&str]) -> Serve {
        let (child, url) = spawn_announcing(
            cairn()
                .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
                .arg(data)
                .args(extra),
            "cairn serve: listening on ",
        )
        .unwrap();
        Serve { child, url }
    }

    /// SIGTERM; it must exit cleanly.
    fn stop(mut self) {
        run_ok(Command::new("kill").args(["-TERM", &self.child.id().to_string()]));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "cairn serve exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "cairn serve ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Nix's tools, a source store holding a built (input-addressed) path
/// that refers to an added source path, and a signing key.
struct World {
    _tmp: tempfile::TempDir,
    work: PathBuf,
    nix: PathBuf,
    nix_store: PathBuf,
    curl: PathBuf,
    src: PathBuf,
    /// A source path (`nix-store --add`), content-addressed.
    tree: String,
    /// The same tree under another name: another path, the same NAR.
    twin: String,
    /// Built by a derivation; refers to `tree`; has a deriver and a log.
    built: String,
    drv: String,
    key_file: PathBuf,
    public_key: String,
}

fn world() -> Option<World> {
    let nix = oracle("nix")?;
    let nix_store = oracle("nix-store")?;
    let curl = oracle("curl")?;
    // A static shell for the builder: nothing else exists in the build's
    // chroot (Debian's busybox-static).
    let busybox = oracle("busybox")?;
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().to_owned();
    let src = work.join("src-store");

    let tree = work.join("tree");
    fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    fs::write(tree.join("hello.txt"), b"hello\n").unwrap();
    fs::write(tree.join("sub/deeper/n\u{e4}me with \"quotes\""), b"q").unwrap();
    fs::write(tree.join("big.bin"), pseudo_random_bytes(7, 3 << 20)).unwrap();
    let exe = tree.join("run.sh");
    fs::write(&exe, b"#!/bin/sh\necho run\n").unwrap();
    fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("hello.txt", tree.join("link")).unwrap();

    let bb = work.join("bb");
    fs::create_dir_all(bb.join("bin")).unwrap();
    fs::copy(&busybox, bb.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", bb.join("bin/sh")).unwrap();

    let mut w = World {
        _tmp: tmp,
        work: work.clone(),
        nix,
        nix_store,
        curl,
        src,
        tree: String::new(),
        twin: String::new(),
        built: String::new(),
        drv: String::new(),
        key_file: work.join("cache.sec"),
        public_key: String::new(),
    };
    w.tree = text(&run_ok(
        w.nix_store_cmd("build", &w.src).arg("--add").arg(&tree),
    ));
    let twin = work.join("twin");
    run_ok(Command::new("cp").arg("-a").arg(&tree).arg(&twin));
    w.twin = text(&run_ok(
        w.nix_store_cmd("build", &w.src).arg("--add").arg(&twin),
    ));
    let expr = format!(
        r#"let bb = {bb}; tree = builtins.storePath "{tree}"; in derivation {{
            name = "built"; system = builtins.currentSystem;
            builder = "${{bb}}/bin/sh";
            args = [ "-c" "${{bb}}/bin/busybox echo building now; ${{bb}}/bin/busybox mkdir $out; ${{bb}}/bin/busybox echo ${{tree}} > $out/uses; ${{bb}}/bin/busybox cp ${{tree}}/big.bin $out/" ];
        }}"#,
        bb = bb.display(),
        tree = w.tree,
    );
    let built: Value = serde_json::from_slice(&run_ok(
        w.nix_cmd("build", &w.src.display().to_string()).args([
            "build",
            "--impure",
            "--no-link",
            "--json",
            "--expr",
            &expr,
        ]),
    ))
    .unwrap();
    w.built = built[0]["outputs"]["out"].as_str().unwrap().to_owned();
    w.drv = built[0]["drvPath"].as_str().unwrap().to_owned();
    w.public_key = text(&run_ok(
        cairn()
            .args(["key", "generate", "cairn-test-cache-1", "--secret-key-file"])
            .arg(&w.key_file)
            .arg("--public-key-file")
            .arg(work.join("cache.pub")),
    ));
    Some(w)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap().trim().to_owned()
}

fn run_fail(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        !out.status.success(),
        "{cmd:?} succeeded but should have failed"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn hash_part(path: &str) -> &str {
    &path.trim_start_matches("/nix/store/")[..32]
}

impl World {
    /// `client` names the narinfo cache Nix uses (see the module doc).
    fn env(&self, cmd: &mut Command, client: &str) {
        cmd.env(
            "NIX_CONFIG",
            "experimental-features = nix-command\nsandbox = false\nsubstituters =\nbuild-users-group =\n",
        )
        .env("XDG_CACHE_HOME", self.work.join("clients").join(client));
    }

    fn nix_cmd(&self, client: &str, store: &str) -> Command {
        let mut c = Command::new(&self.nix);
        self.env(&mut c, client);
        c.args(["--store", store]);
        c
    }

    fn nix_store_cmd(&self, client: &str, store: &Path) -> Command {
        let mut c = Command::new(&self.nix_store);
        self.env(&mut c, client);
        c.arg("--store").arg(store);
        c
    }

    fn fresh_store(&self, name: &str) -> PathBuf {
        let p = self.work.join("stores").join(name);
        assert!(!p.exists(), "store {name} used twice");
        p
    }

    fn src(&self) -> String {
        self.src.display().to_string()
    }

    /// `nix path-info --json` of one path in `store`.
    fn path_info(&self, client: &str, store: &str, path: &str) -> Value {
        let v: Value = serde_json::from_slice(&run_ok(self.nix_cmd(client, store).args([
            "path-info",
            "--json",
            path,
        ])))
        .unwrap();
        v[0].clone()
    }

    /// The fields of `nix path-info --json` that describe the path itself
    /// (not where or when it is stored).
    fn identity(&self, client: &str, store: &str, path: &str) -> Vec<(String, Value)> {
        let info = self.path_info(client, store, path);
        assert_ne!(
            info["valid"],
            Value::Bool(false),
            "{path} is not in {store}"
        );
        ["path", "narHash", "narSize", "references", "deriver", "ca"]
            .iter()
            .map(|k| (k.to_string(), info[*k].clone()))
            .collect()
    }

    /// `path` (and its closure) in `store` as in the source store.
    fn assert_same_as_source(&self, client: &str, store: &str, path: &str) {
        for p in [path, self.tree.as_str()] {
            assert_eq!(
                self.identity(client, store, p),
                self.identity("source", &self.src(), p),
                "{p} in {store}"
            );
        }
    }

    /// `nix-store --dump` of a path of the source store (at its real
    /// place inside the chroot store).
    fn dump(&self, path: &str) -> Vec<u8> {
        run_ok(
            Command::new(&self.nix_store)
                .arg("--dump")
                .arg(self.src.join(path.trim_start_matches('/'))),
        )
    }

    fn curl(&self) -> Command {
        let mut c = Command::new(&self.curl);
        c.args(["-sS", "--max-time", "60"]);
        c
    }

    /// GET: (status, body).
    fn get(&self, url: &str) -> (u16, Vec<u8>) {
        self.request(&["-X", "GET"], url, None)
    }

    /// Any request: (status, body); `data` is sent as the body (PUT).
    fn request(&self, args: &[&str], url: &str, data: Option<&[u8]>) -> (u16, Vec<u8>) {
        let body = self.work.join("curl-body");
        let mut cmd = self.curl();
        cmd.args(args)
            .args(["-o"])
            .arg(&body)
            .args(["-w", "%{http_code}", url]);
        if let Some(data) = data {
            let file = self.work.join("curl-upload");
            fs::write(&file, data).unwrap();
            cmd.arg("-T").arg(&file);
        }
        let status = text(&run_ok(&mut cmd)).parse().unwrap();
        let got = fs::read(&body).unwrap_or_default();
        let _ = fs::remove_file(&body);
        (status, got)
    }
}

/// `cairn copy --from FROM --trusted-public-key KEY --to TO PATH`.
fn copy_trusting(from: &str, key: &str, to: &Path, path: &str) -> Command {
    let mut c = cairn();
    c.args(["copy", "--from", from, "--trusted-public-key", key, "--to"])
        .arg(to)
        .arg(path);
    c
}

fn copy_to(w: &World, client: &str, url: &str, path: &str) {
    run_ok(
        w.nix_cmd(client, &w.src())
            .args(["copy", "--no-check-sigs", "--to", url, path]),
    );
}

/// The upload token the signing caches of these tests require.
const TOKEN: &str = "s3cret-token";

impl World {
    /// A netrc file giving Nix [`TOKEN`] for 127.0.0.1.
    fn netrc(&self) -> String {
        let path = self.work.join("netrc");
        fs::write(
            &path,
            format!("machine 127.0.0.1 login nix password {TOKEN}\n"),
        )
        .unwrap();
        path.display().to_string()
    }
}

/// `copy_to` with the upload token (from a netrc file, as Nix sends it).
fn copy_to_with_token(w: &World, client: &str, url: &str, path: &str) {
    run_ok(w.nix_cmd(client, &w.src()).args([
        "copy",
        "--no-check-sigs",
        "--option",
        "netrc-file",
        &w.netrc(),
        "--to",
        url,
        path,
    ]));
}

fn copy_from(w: &World, client: &str, url: &str, to: &Path, path: &str) {
    run_ok(w.nix_cmd(client, &to.display().to_string()).args([
        "copy",
        "--no-check-sigs",
        "--from",
        url,
        path,
    ]));
}

#[test]
fn nix_copy_to_and_from_cairn_with_each_compression() {
    let Some(w) = world() else { return };
    for compression in ["none", "zstd", "xz"] {
        let data = w.work.join(format!("cache-{compression}"));
        let serve = Serve::start(&data, &[]);
        let up = format!("up-{compression}");
        let url = format!("{}?compression={compression}", serve.url);
        copy_to(&w, &up, &url, &w.built);
        // The same NAR under another path: Nix finds its NAR URL already
        // here and uploads only the narinfo.
        copy_to(&w, &up, &url, &w.twin);
        // A machine that never saw the upload gets Cairn's narinfos.
        let fresh = w.fresh_store(&format!("down-{compression}"));
        copy_from(
            &w,
            &format!("down-{compression}"),
            &serve.url,
            &fresh,
            &w.built,
        );
        w.assert_same_as_source("check", &fresh.display().to_string(), &w.built);
        copy_from(
            &w,
            &format!("down-{compression}"),
            &serve.url,
            &fresh,
            &w.twin,
        );
        assert_eq!(
            w.identity("check", &fresh.display().to_string(), &w.twin),
            w.identity("source", &w.src(), &w.twin)
        );

        // The uploading machine remembers the narinfos it uploaded and
        // asks for its own NAR URLs; Cairn remembers them too, across a
        // restart.
        let serve = if compression == "xz" {
            serve.stop();
            Serve::start(&data, &[])
        } else {
            serve
        };
        let again = w.fresh_store(&format!("again-{compression}"));
        copy_from(&w, &up, &serve.url, &again, &w.built);
        w.assert_same_as_source("check", &again.display().to_string(), &w.built);
        serve.stop();
    }
}

#[test]
fn substitution_checks_cairns_signatures_and_path_info_matches() {
    let Some(w) = world() else { return };
    let key = w.key_file.display().to_string();
    // A signing cache refuses to start with uploads open to anyone.
    let err = run_fail(
        cairn()
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--sign-key",
                &key,
                "--data-dir",
            ])
            .arg(w.work.join("unsafe")),
    );
    assert!(err.contains("--upload-token"), "{err}");
    let serve = Serve::start(
        &w.work.join("cache"),
        &["--sign-key", &key, "--upload-token", TOKEN],
    );
    copy_to_with_token(&w, "uploader", &serve.url, &w.built);

    // What Nix reads from Cairn is what the source store says.
    for p in [&w.built, &w.tree] {
        assert_eq!(
            w.identity("reader", &serve.url, p),
            w.identity("source", &w.src(), p)
        );
    }
    let sigs = w.path_info("reader", &serve.url, &w.built)["signatures"].clone();
    assert!(
        sigs.as_array()
            .unwrap()
            .iter()
            .any(|s| s.as_str().unwrap().starts_with("cairn-test-cache-1:")),
        "{sigs}"
    );

    // Substitution with signature checking on: the right key works…
    let good = w.fresh_store("good-key");
    run_ok(w.nix_store_cmd("good", &good).args([
        "-r",
        &w.built,
        "--option",
        "substituters",
        &serve.url,
        "--option",
        "trusted-public-keys",
        &w.public_key,
    ]));
    w.assert_same_as_source("check", &good.display().to_string(), &w.built);

    // …another key of the same name does not.
    let other = w.work.join("other.sec");
    let other_public = text(&run_ok(
        cairn()
            .args(["key", "generate", "cairn-test-cache-1", "--secret-key-file"])
            .arg(&other)
            .arg("--public-key-file")
            .arg(w.work.join("other.pub")),
    ));
    let bad = w.fresh_store("bad-key");
    let err = run_fail(w.nix_store_cmd("bad", &bad).args([
        "-r",
        &w.built,
        "--option",
        "substituters",
        &serve.url,
        "--option",
        "trusted-public-keys",
        &other_public,
    ]));
    assert!(err.contains("not signed by any of the keys"), "{err}");
    assert_eq!(
        w.path_info("check", &bad.display().to_string(), &w.built)["valid"],
        Value::Bool(false)
    );

    // Cairn reads Cairn too: `cairn copy --from` the cache over HTTP,
    // checking its signatures, then renders NARs Nix accepts.
    let wrong = run_fail(&mut copy_trusting(
        &serve.url,
        &other_public,
        &w.work.join("copy-wrong-key"),
        &w.built,
    ));
    assert!(
        wrong.contains("no valid signature by a trusted key"),
        "{wrong}"
    );
    let copied = w.work.join("copied");
    run_ok(&mut copy_trusting(
        &serve.url,
        &w.public_key,
        &copied,
        &w.built,
    ));
    let second = Serve::start(&copied, &[]);
    let from_copy = w.fresh_store("from-copy");
    copy_from(&w, "second", &second.url, &from_copy, &w.built);
    w.assert_same_as_source("check", &from_copy.display().to_string(), &w.built);
    second.stop();

    // Build logs: `nix store copy-log` uploads, GET gives them back.
    run_ok(w.nix_cmd("uploader", &w.src()).args([
        "store",
        "copy-log",
        "--option",
        "netrc-file",
        &w.netrc(),
        "--to",
        &serve.url,
        &w.drv,
    ]));
    let drv_base = w.drv.trim_start_matches("/nix/store/");
    let (status, log) = w.get(&format!("{}/log/{drv_base}", serve.url));
    assert_eq!(status, 200);
    let expected = run_ok(w.nix_cmd("source", &w.src()).args(["log", &w.drv]));
    assert_eq!(text(&log), text(&expected));
    assert!(text(&log).contains("building now"));

    // The small routes.
    let (status, info) = w.get(&format!("{}/nix-cache-info", serve.url));
    assert_eq!(status, 200);
    assert!(
        text(&info).starts_with("StoreDir: /nix/store\n"),
        "{}",
        text(&info)
    );
    assert_eq!(w.get(&format!("{}/health", serve.url)).0, 200);
    let (_, metrics) = w.get(&format!("{}/metrics", serve.url));
    let metrics = text(&metrics);
    assert!(
        metrics.contains(r#"cairn_http_requests_total{route="narinfo",method="GET",status="200"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("cairn_http_nar_bytes_sent_total "),
        "{metrics}"
    );
    let (status, _) = w.get(&format!(
        "{}/{}.narinfo",
        serve.url, "00000000000000000000000000000000"
    ));
    assert_eq!(status, 404);
    serve.stop();
}

#[test]
fn a_cache_nix_wrote_is_copied_in_and_served_back_identically() {
    let Some(w) = world() else { return };
    let dir = w.work.join("nix-cache");
    let file_url = format!("file://{}", dir.display());
    // Nix's defaults (xz), plus the listings Nix can write.
    copy_to(
        &w,
        "writer",
        &format!("{file_url}?write-nar-listing=true"),
        &w.built,
    );

    let data = w.work.join("cairn-data");
    let err = run_fail(
        cairn()
            .args(["copy", "--from", &format!("nix+{file_url}"), "--to"])
            .arg(&data)
            .arg(&w.built),
    );
    assert!(err.contains("--no-check-sigs"), "{err}");
    run_ok(
        cairn()
            .args([
                "copy",
                "--no-check-sigs",
                "--from",
                &format!("nix+{file_url}"),
                "--to",
            ])
            .arg(&data)
            .arg(&w.built),
    );

    let serve = Serve::start(&data, &[]);
    for p in [&w.built, &w.tree] {
        assert_eq!(
            w.identity("reader", &serve.url, p),
            w.identity("reader", &file_url, p),
            "{p}"
        );
        // The listing, byte for byte what Nix wrote.
        let (status, listing) = w.get(&format!("{}/{}.ls", serve.url, hash_part(p)));
        assert_eq!(status, 200);
        assert_eq!(
            listing,
            fs::read(dir.join(format!("{}.ls", hash_part(p)))).unwrap()
        );
    }
    let fresh = w.fresh_store("from-cairn");
    copy_from(&w, "reader", &serve.url, &fresh, &w.built);
    w.assert_same_as_source("check", &fresh.display().to_string(), &w.built);

    // The NAR itself, whole and in ranges.
    let (_, narinfo) = w.get(&format!("{}/{}.narinfo", serve.url, hash_part(&w.tree)));
    let narinfo = text(&narinfo);
    let url = narinfo
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap();
    let nar_url = format!("{}/{url}", serve.url);
    let dump = w.dump(&w.tree);
    let (status, nar) = w.get(&nar_url);
    assert_eq!((status, nar.len()), (200, dump.len()));
    assert!(nar == dump, "the NAR differs from nix-store --dump");
    for (range, slice) in [
        ("0-99", &dump[..100]),
        ("1000-1000", &dump[1000..1001]),
        ("2000000-", &dump[2_000_000..]),
        ("-4096", &dump[dump.len() - 4096..]),
    ] {
        let (status, got) = w.request(&["-r", range], &nar_url, None);
        assert_eq!(status, 206, "range {range}");
        assert!(got == slice, "range {range} differs");
    }
    let (status, _) = w.request(&["-r", &format!("{}-", dump.len())], &nar_url, None);
    assert_eq!(status, 416);
    serve.stop();

    // A proxy: an empty Cairn store in front of Nix's cache fills itself
    // on demand, then serves what it kept with the cache gone.
    let proxy = w.work.join("proxy");
    let layered = format!(
        "layered://?{}",
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair(
                "local",
                &format!("redb://{}/pathinfo.redb", proxy.display())
            )
            .append_pair("remote", &format!("nix+{file_url}?check-sigs=false"))
            .finish()
    );
    let serve = Serve::start(&proxy, &["--path-info-service-addr", &layered]);
    let via_proxy = w.fresh_store("via-proxy");
    copy_from(&w, "proxy-reader", &serve.url, &via_proxy, &w.built);
    w.assert_same_as_source("check", &via_proxy.display().to_string(), &w.built);
    serve.stop();
    fs::rename(&dir, w.work.join("cache-gone")).unwrap();
    let serve = Serve::start(&proxy, &["--path-info-service-addr", &layered]);
    let kept = w.fresh_store("kept-by-proxy");
    copy_from(&w, "proxy-reader-2", &serve.url, &kept, &w.built);
    serve.stop();
    fs::rename(w.work.join("cache-gone"), &dir).unwrap();

    // Every compression Nix writes is decoded while it streams in.
    for compression in ["bzip2", "zstd", "none"] {
        let other = w.work.join(format!("nix-cache-{compression}"));
        copy_to(
            &w,
            "writer",
            &format!("file://{}?compression={compression}", other.display()),
            &w.built,
        );
        let data = w.work.join(format!("cairn-{compression}"));
        run_ok(
            cairn()
                .args(["copy", "--no-check-sigs", "--from"])
                .arg(format!("file://{}", other.display()))
                .arg("--to")
                .arg(&data)
                .arg(&w.built),
        );
        let info: Value = serde_json::from_slice(&run_ok(
            cairn()
                .args(["path-info", "--json", "--data-dir"])
                .arg(&data)
                .arg(&w.built),
        ))
        .unwrap();
        let narinfo =
            fs::read_to_string(other.join(format!("{}.narinfo", hash_part(&w.built)))).unwrap();
        let nar_hash = narinfo
            .lines()
            .find_map(|l| l.strip_prefix("NarHash: "))
            .unwrap();
        assert_eq!(info[0]["narHash"], nar_hash, "{compression}: {info}");
    }

    // Signed by Nix: trusted by the right key only.
    let nix_key = w.work.join("nix.sec");
    run_ok(Command::new(&w.nix_store).args([
        "--generate-binary-cache-key",
        "nix-test-1",
        &nix_key.display().to_string(),
        &w.work.join("nix.pub").display().to_string(),
    ]));
    let nix_public = text(&fs::read(w.work.join("nix.pub")).unwrap());
    run_ok(w.nix_cmd("writer", &file_url).args([
        "store",
        "sign",
        "-r",
        "--key-file",
        &nix_key.display().to_string(),
        &w.built,
    ]));
    let wrong = run_fail(&mut copy_trusting(
        &file_url,
        &w.public_key,
        &w.work.join("wrong-key"),
        &w.built,
    ));
    assert!(
        wrong.contains("no valid signature by a trusted key"),
        "{wrong}"
    );
    run_ok(&mut copy_trusting(
        &file_url,
        &nix_public,
        &w.work.join("right-key"),
        &w.built,
    ));
}

/// The narinfos and NAR files of `path`'s closure as Nix uploads them
/// (written to a `file://` cache without compression): (narinfo, NAR URL, NAR).
fn upload_material(w: &World, path: &str) -> Vec<(String, String, Vec<u8>)> {
    let dir = w.work.join("material");
    copy_to(
        w,
        "material",
        &format!("file://{}?compression=none", dir.display()),
        path,
    );
    [path, w.tree.as_str()]
        .iter()
        .map(|p| {
            let narinfo =
                fs::read_to_string(dir.join(format!("{}.narinfo", hash_part(p)))).unwrap();
            let url = narinfo
                .lines()
                .find_map(|l| l.strip_prefix("URL: "))
                .unwrap()
                .to_owned();
            let nar = fs::read(dir.join(&url)).unwrap();
            (narinfo, url, nar)
        })
        .collect()
}

#[test]
fn hostile_uploads_are_refused_and_leave_nothing_visible() {
    let Some(w) = world() else { return };
    let key = w.key_file.display().to_string();
    let serve = Serve::start(
        &w.work.join("cache"),
        &["--sign-key", &key, "--upload-token", TOKEN],
    );
    let material = upload_material(&w, &w.built);
    let (built_info, built_url, built_nar) = &material[0];
    let (tree_info, tree_url, tree_nar) = &material[1];
    let auth = format!("Authorization: Bearer {TOKEN}");
    let put = |rel: &str, body: &[u8]| {
        w.request(&["-H", &auth], &format!("{}/{rel}", serve.url), Some(body))
    };
    let narinfo_of = |p: &str| format!("{}.narinfo", hash_part(p));
    let visible = |p: &str| w.get(&format!("{}/{}", serve.url, narinfo_of(p))).0;
    // `narinfo` for `path` is refused with a 400 saying `why`, and the
    // path stays invisible.
    let refused = |path: &str, narinfo: &str, why: &str| {
        let (status, body) = put(&narinfo_of(path), narinfo.as_bytes());
        assert_eq!(status, 400, "{}", text(&body));
        assert!(text(&body).contains(why), "{}", text(&body));
        assert_eq!(visible(path), 404);
    };

    // Not a NAR at all.
    let (status, body) = put("nar/garbage.nar", &pseudo_random_bytes(1, 5000));
    assert_eq!(status, 400, "{}", text(&body));

    // A valid NAR of other contents than the narinfo says.
    let mut altered = tree_nar.clone();
    let at = altered.len() / 2; // inside big.bin's contents
    altered[at] ^= 1;
    assert_eq!(put(tree_url, &altered).0, 200);
    refused(&w.tree, tree_info, "NAR hash mismatch");

    // A NAR cut short, then a connection closed mid-body.
    let (status, body) = put("nar/short.nar", &tree_nar[..tree_nar.len() / 3]);
    assert_eq!(status, 400);
    assert!(
        text(&body).contains("not a whole, valid NAR"),
        "{}",
        text(&body)
    );
    let addr = serve.url.trim_start_matches("http://");
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    write!(
        sock,
        "PUT /{tree_url} HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\nContent-Length: {}\r\n\r\n",
        tree_nar.len()
    )
    .unwrap();
    sock.write_all(&tree_nar[..tree_nar.len() / 2]).unwrap();
    drop(sock);
    std::thread::sleep(Duration::from_millis(300));
    refused(&w.tree, tree_info, "names no NAR uploaded here");

    // References that are not here.
    assert_eq!(put(built_url, built_nar).0, 200);
    refused(&w.built, built_info, "refers to paths not in the store");

    // A signature by the cache's own key name that does not verify.
    assert_eq!(put(tree_url, tree_nar).0, 200);
    let forged = format!(
        "{tree_info}Sig: cairn-test-cache-1:{}\n",
        data_encoding::BASE64.encode(&[7u8; 64])
    );
    refused(&w.tree, &forged, "does not verify");

    // A narinfo under another path's name.
    refused(&w.built, tree_info, "whose narinfo is");

    // The honest uploads still go through, in order.
    assert_eq!(put(&narinfo_of(&w.tree), tree_info.as_bytes()).0, 200);
    assert_eq!(put(built_url, built_nar).0, 200);
    assert_eq!(put(&narinfo_of(&w.built), built_info.as_bytes()).0, 200);
    assert_eq!(visible(&w.built), 200);

    // A path that is here may not be replaced by other contents.
    let built_hash = built_info
        .lines()
        .find(|l| l.starts_with("NarHash: "))
        .unwrap();
    let replacing: String = tree_info
        .lines()
        .map(|l| {
            if l.starts_with("NarHash: ") {
                built_hash
            } else {
                l
            }
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let (status, body) = put(&narinfo_of(&w.tree), replacing.as_bytes());
    assert_eq!(status, 409, "{}", text(&body));
    assert!(text(&body).contains("is here already"), "{}", text(&body));

    let fresh = w.fresh_store("after-hostility");
    copy_from(&w, "reader", &serve.url, &fresh, &w.built);
    w.assert_same_as_source("check", &fresh.display().to_string(), &w.built);
    serve.stop();
}

#[test]
fn uploads_need_the_token_and_a_read_only_cache_takes_none() {
    let Some(w) = world() else { return };
    let serve = Serve::start(&w.work.join("cache"), &["--upload-token", TOKEN]);
    let (status, _) = w.request(&[], &format!("{}/nar/x.nar", serve.url), Some(b"x"));
    assert_eq!(status, 401);
    let err = run_fail(w.nix_cmd("anonymous", &w.src()).args([
        "copy",
        "--no-check-sigs",
        "--to",
        &serve.url,
        &w.tree,
    ]));
    assert!(err.contains("401"), "{err}");
    // Nix sends basic auth from a netrc file.
    let netrc = w.work.join("netrc");
    fs::write(
        &netrc,
        "machine 127.0.0.1 login nix password s3cret-token\n",
    )
    .unwrap();
    run_ok(w.nix_cmd("with-netrc", &w.src()).args([
        "copy",
        "--no-check-sigs",
        "--option",
        "netrc-file",
        &netrc.display().to_string(),
        "--to",
        &serve.url,
        &w.built,
    ]));
    // A bearer token works too; reads need nothing.
    let drv_base = w.drv.trim_start_matches("/nix/store/");
    let (status, _) = w.request(
        &["-H", "Authorization: Bearer s3cret-token"],
        &format!("{}/log/{drv_base}", serve.url),
        Some(b"a log\n"),
    );
    assert_eq!(status, 200);
    let fresh = w.fresh_store("reader");
    copy_from(&w, "reader", &serve.url, &fresh, &w.built);
    serve.stop();

    let serve = Serve::start(&w.work.join("cache"), &["--read-only"]);
    let (status, body) = w.request(&[], &format!("{}/nar/x.nar", serve.url), Some(b"x"));
    assert_eq!(status, 403, "{}", text(&body));
    let new_dir = w.work.join("new-tree");
    fs::create_dir(&new_dir).unwrap();
    fs::write(new_dir.join("f"), b"not in the cache yet").unwrap();
    let new_path = text(&run_ok(
        w.nix_store_cmd("source", &w.src).arg("--add").arg(&new_dir),
    ));
    let err = run_fail(w.nix_cmd("read-only", &w.src()).args([
        "copy",
        "--no-check-sigs",
        "--to",
        &serve.url,
        &new_path,
    ]));
    assert!(err.contains("403"), "{err}");
    // What is there is still served.
    assert_eq!(
        w.get(&format!("{}/{}.narinfo", serve.url, hash_part(&w.built)))
            .0,
        200
    );
    serve.stop();
}

#[test]
fn a_nar_that_cannot_be_finished_is_never_served_as_complete() {
    let Some(w) = world() else { return };
    let data = w.work.join("cache");
    let serve = Serve::start(&data, &[]);
    copy_to(&w, "uploader", &serve.url, &w.built);
    let (_, narinfo) = w.get(&format!("{}/{}.narinfo", serve.url, hash_part(&w.tree)));
    let narinfo = text(&narinfo);
    let url = narinfo
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap()
        .to_owned();
    let nar_size: usize = narinfo
        .lines()
        .find_map(|l| l.strip_prefix("NarSize: "))
        .unwrap()
        .parse()
        .unwrap();
    serve.stop();

    // Blobs missing (the wrong blob store): refused before any byte.
    let empty = w.work.join("empty-objects");
    let serve = Serve::start(
        &data,
        &[
            "--blob-service-addr",
            &format!("objects://{}", empty.display()),
        ],
    );
    let (status, body) = w.get(&format!("{}/{url}", serve.url));
    assert_eq!(status, 500);
    assert!(text(&body).contains("lacks"), "{}", text(&body));
    serve.stop();

    // A blob corrupted on disk, found only mid-stream: the connection is
    // cut, so the client sees a broken transfer, not a short NAR.
    let packs = data.join("objects/packs");
    let pack = fs::read_dir(&packs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = fs::read(&pack).unwrap();
    let at = bytes.len() * 2 / 3;
    bytes[at] ^= 0x40;
    fs::write(&pack, &bytes).unwrap();
    let serve = Serve::start(&data, &[]);
    let out = w.work.join("partial.nar");
    let result: Output = w
        .curl()
        .args(["-o"])
        .arg(&out)
        .arg(format!("{}/{url}", serve.url))
        .output()
        .unwrap();
    assert!(
        !result.status.success(),
        "curl finished a NAR whose blob is corrupt"
    );
    assert!(fs::metadata(&out).map(|m| m.len() as usize).unwrap_or(0) < nar_size);
    let fresh = w.fresh_store("from-corrupt");
    run_fail(w.nix_cmd("reader", &fresh.display().to_string()).args([
        "copy",
        "--no-check-sigs",
        "--option",
        "download-attempts",
        "2",
        "--from",
        &serve.url,
        &w.built,
    ]));
    assert_eq!(
        w.path_info("check", &fresh.display().to_string(), &w.tree)["valid"],
        Value::Bool(false)
    );
    serve.stop();
}

#[test]
fn many_concurrent_readers_get_no_errors() {
    let Some(w) = world() else { return };
    let Some(wrk) = oracle("wrk") else { return };
    let serve = Serve::start(&w.work.join("cache"), &[]);
    copy_to(&w, "uploader", &serve.url, &w.built);
    let (_, narinfo) = w.get(&format!("{}/{}.narinfo", serve.url, hash_part(&w.tree)));
    let url = text(&narinfo)
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap()
        .to_owned();
    for (what, target, connections) in [
        (
            "narinfo",
            format!("{}/{}.narinfo", serve.url, hash_part(&w.tree)),
            "64",
        ),
        ("NAR", format!("{}/{url}", serve.url), "16"),
    ] {
        let out = text(&run_ok(Command::new(&wrk).args([
            "-t2",
            "-c",
            connections,
            "-d2s",
            "--latency",
            &target,
        ])));
        eprintln!("wrk, {what}:\n{out}");
        assert!(!out.contains("Non-2xx"), "{what}: {out}");
        assert!(!out.contains("Socket errors"), "{what}: {out}");
        let rate: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("Requests/sec:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(rate > 0.0, "{what}: {out}");
    }
    // Parallel whole downloads, each byte-identical.
    let dump = w.dump(&w.tree);
    let nar_url = format!("{}/{url}", serve.url);
    let downloads: Vec<_> = (0..8)
        .map(|i| {
            let out = w.work.join(format!("parallel-{i}.nar"));
            let child = w.curl().arg("-o").arg(&out).arg(&nar_url).spawn().unwrap();
            (out, child)
        })
        .collect();
    for (out, mut child) in downloads {
        assert!(child.wait().unwrap().success());
        assert!(fs::read(&out).unwrap() == dump, "{} differs", out.display());
    }
    serve.stop();
}
