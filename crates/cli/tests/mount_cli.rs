//! `cairn mount` as a user runs it: mounted from the embedded store, read
//! through, and unmounted cleanly on SIGTERM; a mount point that cannot
//! be used is a one-line error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_testkit::{oracle, run_ok, spawn_announcing};

mod common;
use common::cairn;

fn is_mounted(path: &Path) -> bool {
    fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(&*path.to_string_lossy()))
}

/// A data directory under `tmp` holding one imported tree with `file`
/// (a relative path) of `contents`; its store path.
fn store_with_one_file(tmp: &Path, file: &str, contents: &[u8]) -> (std::path::PathBuf, String) {
    let data = tmp.join("data");
    let tree = tmp.join("tree");
    let file = tree.join(file);
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    fs::write(file, contents).unwrap();
    let path = String::from_utf8(run_ok(
        cairn()
            .arg("import")
            .arg("--data-dir")
            .arg(&data)
            .arg(&tree),
    ))
    .unwrap()
    .trim()
    .to_owned();
    (data, path)
}

#[test]
fn mount_reads_the_store_and_unmounts_on_sigterm() {
    if oracle("fusermount3").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (data, path) = store_with_one_file(tmp.path(), "bin/hello", b"#!/bin/sh\necho hello\n");
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let (mut child, at) = spawn_announcing(
        cairn().arg("mount").arg("--data-dir").arg(&data).arg(&mnt),
        "cairn mount: mounted at ",
    )
    .unwrap();
    assert_eq!(Path::new(&at), mnt);
    let base = path.trim_start_matches("/nix/store/");
    assert_eq!(
        fs::read(mnt.join(base).join("bin/hello")).unwrap(),
        b"#!/bin/sh\necho hello\n"
    );

    run_ok(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "cairn mount ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert!(!is_mounted(&mnt), "{} is still mounted", mnt.display());
}

#[test]
fn a_mount_point_that_cannot_be_used_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = cairn()
        .arg("mount")
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .arg(tmp.path().join("no-such-dir"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot mount at"), "{err}");
}

#[test]
fn a_mount_unmounted_from_outside_ends_quietly() {
    if oracle("fusermount3").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (data, _) = store_with_one_file(tmp.path(), "f", b"x");
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let log = tmp.path().join("stderr");
    let mut child = cairn()
        .arg("mount")
        .arg("--data-dir")
        .arg(&data)
        .arg(&mnt)
        .stdout(std::process::Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !is_mounted(&mnt) {
        assert!(Instant::now() < deadline, "cairn mount never mounted");
        std::thread::sleep(Duration::from_millis(20));
    }
    run_ok(Command::new("fusermount3").arg("-u").arg(&mnt));
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "cairn mount did not end after fusermount3 -u"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status}: {stderr}");
    // One line saying what happened, no warnings from every thread.
    assert!(stderr.contains("was unmounted"), "{stderr}");
    assert!(!stderr.contains("WARN"), "{stderr}");
}

#[test]
fn virtiofs_serves_one_vmm_and_ends_when_it_disconnects() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, _) = store_with_one_file(tmp.path(), "file", b"for a guest\n");
    let socket = tmp.path().join("fs.sock");
    let log = tmp.path().join("virtiofs.log");
    let mut child = cairn()
        .arg("virtiofs")
        .arg("--data-dir")
        .arg(&data)
        .arg(&socket)
        .stdout(std::process::Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "cairn virtiofs never made its socket"
        );
        assert!(child.try_wait().unwrap().is_none(), "cairn virtiofs ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A VMM that connects and goes away (a guest shut down). The socket
    // may exist a moment before it listens.
    let vmm = loop {
        match std::os::unix::net::UnixStream::connect(&socket) {
            Ok(s) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                assert!(Instant::now() < deadline, "cairn virtiofs never listened");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("cannot connect to {}: {e}", socket.display()),
        }
    };
    drop(vmm);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!(
                "cairn virtiofs still runs after its VMM disconnected: {}",
                fs::read_to_string(&log).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("the VMM disconnected"), "{stderr}");
    assert!(!socket.exists(), "the socket stays behind");
}
