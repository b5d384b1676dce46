//! `cairn daemon` over real sockets: trees imported through one client
//! process read back through another, byte for byte what `nix-store --dump`
//! writes; SIGTERM stops the daemon without losing what it acknowledged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use cairn_testkit::{generated_trees, oracle, real_trees, run_ok, spawn_announcing};

mod common;
use common::cairn;

/// A running daemon; killed (SIGKILL) if the test ends without stopping it.
struct Daemon {
    child: Child,
    /// `grpc+http://127.0.0.1:PORT` or `grpc+unix:///PATH`.
    addr: String,
}

impl Daemon {
    /// Starts `cairn daemon --data-dir DATA --listen LISTEN` and waits for
    /// its "listening on" line.
    fn start(data: &Path, listen: &str) -> Daemon {
        let (child, bound) = spawn_announcing(
            cairn()
                .args(["daemon", "--listen", listen, "--data-dir"])
                .arg(data),
            "cairn daemon: listening on ",
        )
        .unwrap();
        let addr = match bound.strip_prefix("unix:") {
            Some(path) => format!("grpc+unix://{path}"),
            None => format!("grpc+http://{bound}"),
        };
        Daemon { child, addr }
    }

    fn client(&self) -> Command {
        let mut c = cairn();
        c.env("CAIRN_STORE_ADDR", &self.addr);
        c
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        run_ok(Command::new("kill").args(["-TERM", &self.child.id().to_string()]));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The NAR of `tree` as the oracle writes it (`cairn nar dump` when Nix is
/// absent and not required).
fn reference_nar(tree: &Path) -> Vec<u8> {
    match oracle("nix-store") {
        Some(nix) => run_ok(Command::new(nix).arg("--dump").arg(tree)),
        None => run_ok(cairn().args(["nar", "dump"]).arg(tree)),
    }
}

/// The generated trees, and a real one of modest size (the Python
/// standard library's `email` package: a debug build over gRPC makes one
/// round trip per blob, and the whole stdlib would take minutes).
fn trees(scratch: &Path) -> Vec<PathBuf> {
    let generated = scratch.join("generated");
    std::fs::create_dir_all(&generated).unwrap();
    let mut trees = generated_trees(&generated);
    trees.extend(
        real_trees()
            .into_iter()
            .map(|t| t.join("email"))
            .filter(|t| t.is_dir()),
    );
    trees
}

#[test]
fn trees_imported_through_a_daemon_read_back_identically() {
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let daemon = Daemon::start(&data, "127.0.0.1:0");
    let mut imported = Vec::new();
    for tree in trees(scratch.path()) {
        let printed = run_ok(daemon.client().arg("import").arg(&tree));
        let path = String::from_utf8(printed).unwrap().trim().to_owned();
        let expected = run_ok(cairn().arg("store-path").arg(&tree));
        assert_eq!(
            path,
            String::from_utf8(expected).unwrap().trim(),
            "{}",
            tree.display()
        );
        // Another client process reads it back.
        let nar = run_ok(daemon.client().arg("export").arg(&path));
        assert!(nar == reference_nar(&tree), "{} differs", tree.display());
        imported.push(path);
    }
    let status = daemon.stop();
    assert!(status.success(), "daemon exited with {status}");
    // Everything acknowledged is in the data directory, readable without
    // the daemon.
    for path in &imported {
        let out = run_ok(
            cairn()
                .args(["path-info", "--data-dir"])
                .arg(&data)
                .arg(path),
        );
        assert!(String::from_utf8(out).unwrap().contains(path.as_str()));
    }
}

#[test]
fn a_unix_socket_daemon_serves_every_command() {
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let socket = scratch.path().join("cairn.sock");
    let daemon = Daemon::start(&data, &format!("unix:{}", socket.display()));
    assert!(daemon.addr.starts_with("grpc+unix:///"), "{}", daemon.addr);
    let tree = trees(scratch.path()).into_iter().next().unwrap();
    let path = String::from_utf8(run_ok(daemon.client().arg("import").arg(&tree)))
        .unwrap()
        .trim()
        .to_owned();
    let listing = String::from_utf8(run_ok(daemon.client().arg("ls").arg(&path))).unwrap();
    assert!(!listing.is_empty());
    let info =
        String::from_utf8(run_ok(daemon.client().args(["path-info", "--json", &path]))).unwrap();
    assert!(info.contains("narHash"), "{info}");
    let dest = scratch.path().join("exported");
    run_ok(daemon.client().args(["export", &path, "--to"]).arg(&dest));
    assert!(reference_nar(&dest) == reference_nar(&tree));
    // A second daemon on the same socket is refused, not let to steal it.
    let second = cairn()
        .args(["daemon", "--listen"])
        .arg(format!("unix:{}", socket.display()))
        .arg("--data-dir")
        .arg(scratch.path().join("other"))
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("another daemon is listening"), "{err}");
    assert!(daemon.stop().success());
    assert!(!socket.exists(), "the socket outlived the daemon");
}

#[test]
fn an_unreachable_daemon_is_a_clear_error() {
    let scratch = tempfile::tempdir().unwrap();
    let out = cairn()
        .args(["path-info", "--store-addr"])
        .arg(format!(
            "grpc+unix://{}/nobody.sock",
            scratch.path().display()
        ))
        .arg("/nix/store/00000000000000000000000000000000-x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nobody.sock"), "{err}");
}

#[test]
fn a_cache_dir_serves_the_second_read_with_the_daemon_gone() {
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let cache = scratch.path().join("cache");
    let daemon = Daemon::start(&data, "127.0.0.1:0");
    let addr = daemon.addr.clone();
    let tree = trees(scratch.path()).into_iter().last().unwrap();
    let path = String::from_utf8(run_ok(daemon.client().arg("import").arg(&tree)))
        .unwrap()
        .trim()
        .to_owned();
    let cached_export = || {
        cairn()
            .args(["export", "--store-addr", &addr, "--cache-dir"])
            .arg(&cache)
            .arg(&path)
            .output()
            .unwrap()
    };
    // First read: through the cache, from the daemon.
    let first = cached_export();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(first.stdout == reference_nar(&tree));
    assert!(daemon.stop().success());
    // Second read: the daemon is gone, the cache answers.
    let second = cached_export();
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(second.stdout == first.stdout);
    // Without the cache, the same command now fails, naming the daemon.
    let direct = cairn()
        .args(["export", "--store-addr", &addr, &path])
        .output()
        .unwrap();
    assert_eq!(direct.status.code(), Some(1));
}

#[test]
fn copy_to_and_from_a_daemon_sends_only_what_is_missing() {
    let scratch = tempfile::tempdir().unwrap();
    let local = scratch.path().join("local");
    let back = scratch.path().join("back");
    let trees: Vec<PathBuf> = trees(scratch.path()).into_iter().take(2).collect();
    let paths: Vec<String> = trees
        .iter()
        .map(|t| {
            let out = run_ok(cairn().args(["import", "--data-dir"]).arg(&local).arg(t));
            String::from_utf8(out).unwrap().trim().to_owned()
        })
        .collect();
    let daemon = Daemon::start(&scratch.path().join("remote"), "127.0.0.1:0");
    let copy = |from: &str, to: &str, paths: &[String]| {
        let out = cairn()
            .args(["copy", "--from", from, "--to", to])
            .args(paths)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stderr).unwrap()
    };
    let local_s = local.display().to_string();
    let said = copy(&local_s, &daemon.addr, &paths);
    assert!(said.contains("copied 2 paths (0 already there)"), "{said}");
    for (p, t) in paths.iter().zip(&trees) {
        assert!(run_ok(daemon.client().arg("export").arg(p)) == reference_nar(t));
    }
    let said = copy(&local_s, &daemon.addr, &paths);
    assert!(
        said.contains("copied 0 paths (2 already there): 0 blobs, 0 bytes, 0 directories sent"),
        "{said}"
    );
    // And back, into a fresh data directory.
    let said = copy(&daemon.addr, &back.display().to_string(), &paths[..1]);
    assert!(said.contains("copied 1 path (0 already there)"), "{said}");
    let nar = run_ok(
        cairn()
            .args(["export", "--data-dir"])
            .arg(&back)
            .arg(&paths[0]),
    );
    assert!(nar == reference_nar(&trees[0]));
    assert!(daemon.stop().success());
}

/// A generic gRPC client from PyPI (`grpc-requests`, on grpcio), which
/// learns the services by reflection and knows nothing of Cairn: it finds
/// the tvix services, reads a blob, a directory closure and a PathInfo.
const FOREIGN_CLIENT: &str = r#"
import base64, json, sys
from grpc_requests import Client
addr, blob, root, path_digest = sys.argv[1:5]
c = Client.get_by_endpoint(addr)
names = sorted(c.service_names)
read = c.request("tvix.castore.v1.BlobService", "Read", {"digest": blob})
data = b"".join(base64.b64decode(m.get("data", "")) for m in read)
closure = list(c.request("tvix.castore.v1.DirectoryService", "Get",
                         {"digest": root, "recursive": True}))
info = c.request("tvix.store.v1.PathInfoService", "Get", {"byOutputHash": path_digest})
print(json.dumps({"services": names, "blob": base64.b64encode(data).decode(),
                  "directories": len(closure),
                  "root_name": base64.b64decode(info["node"]["directory"]["name"]).decode(),
                  "nar_size": int(info["narinfo"].get("narSize", info["narinfo"].get("nar_size")))}))
"#;

/// The Python that has `grpc_requests`: `CAIRN_GRPC_PYTHON` (CI makes a
/// venv for it), else `python3` if it happens to have it.
fn foreign_python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CAIRN_GRPC_PYTHON").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let system = Command::new("python3")
        .args(["-c", "import grpc_requests"])
        .output()
        .is_ok_and(|o| o.status.success());
    if system {
        return Some(PathBuf::from("python3"));
    }
    assert!(
        !cairn_testkit::oracles_required(),
        "no Python with grpc-requests: set CAIRN_GRPC_PYTHON (.ci/run makes a venv)"
    );
    eprintln!(
        "SKIP: no Python with grpc-requests (pip install grpc-requests, or set CAIRN_GRPC_PYTHON)"
    );
    None
}

#[test]
fn a_foreign_client_finds_and_uses_the_services_by_reflection() {
    let Some(python) = foreign_python() else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let tree = scratch.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("a"), b"hello\n").unwrap();
    std::fs::write(tree.join("sub/b"), b"world\n").unwrap();
    let daemon = Daemon::start(&scratch.path().join("data"), "127.0.0.1:0");
    let path = String::from_utf8(run_ok(daemon.client().arg("import").arg(&tree)))
        .unwrap()
        .trim()
        .to_owned();
    let info = String::from_utf8(run_ok(daemon.client().args(["path-info", &path]))).unwrap();
    let root = info
        .lines()
        .find_map(|l| l.strip_prefix("Root: directory b3:"))
        .unwrap()
        .to_owned();
    let b64 = |bytes: &[u8]| data_encoding::BASE64.encode(bytes);
    let blob = b64(cairn_castore::B3Digest::of(b"hello\n").as_bytes());
    let store_path: cairn_nix::StorePath = path.parse().unwrap();
    let out = Command::new(python)
        .args(["-c", FOREIGN_CLIENT])
        .arg(daemon.addr.strip_prefix("grpc+http://").unwrap())
        .args([&blob, &root, &b64(store_path.digest())])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "foreign client failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let services: Vec<&str> = got["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for s in [
        "tvix.castore.v1.BlobService",
        "tvix.castore.v1.DirectoryService",
        "tvix.store.v1.PathInfoService",
        "cairn.v1.BatchService",
    ] {
        assert!(
            services.contains(&s),
            "{s} not found by reflection: {services:?}"
        );
    }
    assert_eq!(got["blob"], b64(b"hello\n"));
    assert_eq!(got["directories"], 2);
    assert_eq!(
        got["root_name"],
        store_path.to_string().rsplit('/').next().unwrap()
    );
    assert!(got["nar_size"].as_u64().unwrap() > 0);
    assert!(daemon.stop().success());
}

/// The glibc tunables a process started with, read from its environment
/// as the kernel holds it. glibc before 2.39 parses `GLIBC_TUNABLES` in
/// place, overwriting each `:` with a NUL, so the tunables after the
/// first appear as entries of their own that begin with `glibc.`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn glibc_tunables_of(pid: u32) -> Vec<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let mut entries = environ
        .split(|&b| b == 0)
        .map(|entry| String::from_utf8_lossy(entry).into_owned())
        .skip_while(|entry| !entry.starts_with("GLIBC_TUNABLES="));
    let Some(first) = entries.next() else {
        return Vec::new();
    };
    std::iter::once(first["GLIBC_TUNABLES=".len()..].to_owned())
        .chain(entries.take_while(|entry| entry.starts_with("glibc.")))
        .flat_map(|part| part.split(':').map(str::to_owned).collect::<Vec<_>>())
        .filter(|tunable| !tunable.is_empty())
        .collect()
}

/// A daemon runs with huge-page heaps unless told otherwise, keeping any
/// other tunables it was given, and an explicit choice either way stands.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn the_daemon_asks_for_huge_page_heaps_unless_told_otherwise() {
    let cases: [(Option<&str>, &[&str]); 3] = [
        (None, &["glibc.malloc.hugetlb=1"]),
        (
            Some("glibc.malloc.arena_max=3"),
            &["glibc.malloc.arena_max=3", "glibc.malloc.hugetlb=1"],
        ),
        (Some("glibc.malloc.hugetlb=0"), &["glibc.malloc.hugetlb=0"]),
    ];
    for (given, expected) in cases {
        let scratch = tempfile::tempdir().unwrap();
        let mut command = cairn();
        command
            .args(["daemon", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(scratch.path().join("data"));
        match given {
            Some(tunables) => command.env("GLIBC_TUNABLES", tunables),
            None => command.env_remove("GLIBC_TUNABLES"),
        };
        let (child, bound) = spawn_announcing(&mut command, "cairn daemon: listening on ").unwrap();
        let daemon = Daemon {
            child,
            addr: format!("grpc+http://{bound}"),
        };
        // The pid we started is the one serving (the exec kept it), and it
        // started with the tunables glibc acts on.
        assert_eq!(
            glibc_tunables_of(daemon.child.id()),
            expected.to_vec(),
            "given {given:?}"
        );
        let tree = scratch.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        std::fs::write(tree.join("hello"), b"hello\n").unwrap();
        run_ok(daemon.client().arg("import").arg(&tree));
        assert!(daemon.stop().success());
    }
}
