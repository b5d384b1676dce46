//! `import::tar::import_tar` against real archives.
//!
//! Guards two things. First, that an archive written by the real GNU `tar`
//! (plain, gzip, xz, zstd; GNU and POSIX formats) of a tree imports to
//! exactly the same root node as `import::fs::import_path` of that tree,
//! under both size rules. Second, that hostile or broken archives — `..`
//! and absolute paths (also smuggled in GNU long-name and PAX headers),
//! hard links out of the archive or to entries it does not hold, device
//! nodes and fifos, truncation, an entry where a directory already is — are
//! refused with `ImportError::Archive` naming the entry and the reason, and
//! leave nothing in the directory service.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{Cursor, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use cairn_castore::addr::{blob_service_from_addr, directory_service_from_addr};
use cairn_castore::blobservice::read_to_vec;
use cairn_castore::import::fs::import_path;
use cairn_castore::import::tar::import_tar;
use cairn_castore::import::{ImportError, NoProgress};
use cairn_castore::{B3Digest, BlobService, Directory, DirectoryService, Node};
use cairn_testkit::{oracle, pseudo_random_bytes, run_ok};
use futures::TryStreamExt;

// ---------------------------------------------------------------- helpers

struct Services {
    blobs: Arc<dyn BlobService>,
    dirs: Arc<dyn DirectoryService>,
}

fn services(query: &str) -> Services {
    Services {
        blobs: blob_service_from_addr("memory://").unwrap(),
        dirs: directory_service_from_addr(&format!("memory://{query}")).unwrap(),
    }
}

async fn import_bytes(s: &Services, archive: Vec<u8>) -> Result<Node, ImportError> {
    import_tar(
        s.blobs.clone(),
        s.dirs.as_ref(),
        Box::new(Cursor::new(archive)),
        Arc::new(NoProgress),
    )
    .await
}

/// Every directory digest in the closure below `node`.
async fn closure_digests(dirs: &dyn DirectoryService, node: &Node) -> Vec<B3Digest> {
    let Node::Directory { digest, .. } = node else {
        return Vec::new();
    };
    let all: Vec<Directory> = dirs.get_recursive(digest).try_collect().await.unwrap();
    all.iter().map(Directory::digest).collect()
}

fn write(path: &Path, data: &[u8], executable: bool) {
    fs::write(path, data).unwrap();
    let mode = if executable { 0o755 } else { 0o644 };
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Files, an executable, nested directories, relative and absolute
/// symlinks, an empty directory and an empty file, hard links (in the same
/// directory and across directories), a name too long for a ustar header
/// and a file big enough to span many tar blocks.
fn build_tree(root: &Path) {
    fs::create_dir_all(root.join("nested/deeper")).unwrap();
    fs::create_dir(root.join("empty")).unwrap();
    write(&root.join("hello.txt"), b"hello\n", false);
    write(&root.join("run.sh"), b"#!/bin/sh\necho run\n", true);
    write(&root.join("zero"), b"", false);
    write(
        &root.join("big.bin"),
        &pseudo_random_bytes(7, 300 * 1024 + 3),
        false,
    );
    write(&root.join("nested/file.txt"), b"nested file\n", false);
    write(&root.join("nested/deeper/deepest.txt"), b"deepest\n", false);
    symlink("../hello.txt", root.join("nested/link")).unwrap();
    symlink("/etc/hostname", root.join("nested/deeper/abs-link")).unwrap();
    symlink("does/not/exist", root.join("dangling")).unwrap();
    let long = format!("{}.txt", "l".repeat(150));
    write(&root.join("nested").join(long), b"long name\n", false);
    fs::hard_link(root.join("hello.txt"), root.join("hard-link")).unwrap();
    fs::hard_link(root.join("run.sh"), root.join("nested/deeper/hard-exec")).unwrap();
}

fn tar_supports_zstd(tar: &Path) -> bool {
    Command::new(tar)
        .args(["--zstd", "-cf", "/dev/null", "-T", "/dev/null"])
        .output()
        .is_ok_and(|o| o.status.success())
}

// ------------------------------------------------ real archives, round trip

/// `tar -C DIR .` of the tree, in every compression and format the real
/// `tar` offers here, imports to the same node as the tree itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_tar_archives_import_like_the_tree() {
    let Some(tar) = oracle("tar") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    fs::create_dir(&tree).unwrap();
    build_tree(&tree);

    let mut variants: Vec<(&str, Vec<&str>)> = vec![
        ("plain", vec![]),
        ("gnu", vec!["--format=gnu"]),
        ("posix", vec!["--format=posix"]),
        ("sorted", vec!["--sort=name"]),
    ];
    if oracle("gzip").is_some() {
        variants.push(("gzip", vec!["-z"]));
    }
    if oracle("xz").is_some() {
        variants.push(("xz", vec!["-J"]));
    }
    if oracle("zstd").is_some() && tar_supports_zstd(&tar) {
        variants.push(("zstd", vec!["--zstd"]));
    } else {
        eprintln!("SKIP: zstd variant (`zstd` missing or `tar --zstd` unsupported)");
    }

    for query in ["", "?size-rule=tvix-compat"] {
        let reference = services(query);
        let want = import_path(
            reference.blobs.clone(),
            reference.dirs.as_ref(),
            &tree,
            &NoProgress,
        )
        .await
        .unwrap();
        let want_closure = closure_digests(reference.dirs.as_ref(), &want).await;
        assert!(want_closure.len() >= 4, "{want_closure:?}");

        for (label, flags) in &variants {
            let out = tmp.path().join(format!("tree-{label}.tar"));
            run_ok(
                Command::new(&tar)
                    .args(flags)
                    .arg("-C")
                    .arg(&tree)
                    .arg("-cf")
                    .arg(&out)
                    .arg("."),
            );
            let s = services(query);
            let got = import_tar(
                s.blobs.clone(),
                s.dirs.as_ref(),
                Box::new(fs::File::open(&out).unwrap()),
                Arc::new(NoProgress),
            )
            .await
            .unwrap_or_else(|e| panic!("{label}{query}: {e}"));
            assert_eq!(got, want, "{label}{query}");
            // The whole closure is there, and blobs read back.
            assert_eq!(
                closure_digests(s.dirs.as_ref(), &got).await,
                want_closure,
                "{label}{query}"
            );
            let Node::Directory { digest, .. } = &got else {
                unreachable!()
            };
            let root = s.dirs.get(digest).await.unwrap().unwrap();
            let Some(Node::File { digest, .. }) = root.get(b"hard-link") else {
                panic!("{label}: hard-link is not a file: {root:?}");
            };
            assert_eq!(
                read_to_vec(s.blobs.as_ref(), digest).await.unwrap(),
                Some(b"hello\n".to_vec())
            );
        }
    }
}

/// An archive made without a `./` root entry (members named one by one)
/// imports the same: the root directory is implicit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_without_root_entry_imports_like_the_tree() {
    let Some(tar) = oracle("tar") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    fs::create_dir(&tree).unwrap();
    build_tree(&tree);
    let reference = services("");
    let want = import_path(
        reference.blobs.clone(),
        reference.dirs.as_ref(),
        &tree,
        &NoProgress,
    )
    .await
    .unwrap();

    let mut members: Vec<String> = fs::read_dir(&tree)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    members.sort();
    let out = tmp.path().join("members.tar");
    run_ok(
        Command::new(&tar)
            .arg("-C")
            .arg(&tree)
            .arg("-cf")
            .arg(&out)
            .args(&members),
    );
    let s = services("");
    let got = import_bytes(&s, fs::read(&out).unwrap()).await.unwrap();
    assert_eq!(got, want);
}

// ------------------------------------------------------- raw tar entries

/// One tar entry with the bytes exactly as given: no path checks, unlike
/// `tar::Builder`, so it can say what a hostile archive says.
fn entry(path: &[u8], kind: tar::EntryType, link: &[u8], data: &[u8]) -> Vec<u8> {
    assert!(path.len() <= 100 && link.len() <= 100);
    let mut h = tar::Header::new_gnu();
    {
        let old = h.as_old_mut();
        old.name[..path.len()].copy_from_slice(path);
        old.linkname[..link.len()].copy_from_slice(link);
    }
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
    }
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn file(path: &str, data: &[u8]) -> Vec<u8> {
    entry(path.as_bytes(), tar::EntryType::Regular, b"", data)
}

fn dir(path: &str) -> Vec<u8> {
    entry(path.as_bytes(), tar::EntryType::Directory, b"", b"")
}

fn hard(path: &str, target: &str) -> Vec<u8> {
    entry(
        path.as_bytes(),
        tar::EntryType::Link,
        target.as_bytes(),
        b"",
    )
}

fn soft(path: &str, target: &str) -> Vec<u8> {
    entry(
        path.as_bytes(),
        tar::EntryType::Symlink,
        target.as_bytes(),
        b"",
    )
}

/// Good entries every hostile archive starts with, so there is something
/// that could have been (wrongly) stored before the bad entry.
fn prefix() -> Vec<Vec<u8>> {
    vec![
        dir("./"),
        dir("./sub/"),
        file("./sub/inner.txt", b"inner\n"),
        file("./ok.txt", b"ok\n"),
        soft("./sub/up", "../ok.txt"),
    ]
}

fn archive(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out = entries.concat();
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// Imports `bytes`, expects `ImportError::Archive`, checks its entry and
/// reason, and checks that the directory service holds none of the
/// directories the good part of the archive would have produced.
async fn expect_refused(label: &str, bytes: Vec<u8>, path: &str, reasons: &[&str]) -> String {
    // What the good prefix alone imports to: these digests must not appear.
    let good = services("");
    let good_node = import_bytes(&good, archive(&prefix())).await.unwrap();
    let mut forbidden = closure_digests(good.dirs.as_ref(), &good_node).await;
    forbidden.push(B3Digest::empty());
    assert!(forbidden.len() >= 3);

    let s = services("");
    let err = match import_bytes(&s, bytes).await {
        Ok(node) => panic!("{label}: accepted as {node:?}"),
        Err(e) => e,
    };
    let text = err.to_string();
    match &err {
        ImportError::Archive { path: got, reason } => {
            assert_eq!(got, path, "{label}: {text}");
            for want in reasons {
                assert!(reason.contains(want), "{label}: {want:?} not in {text}");
            }
        }
        other => panic!("{label}: expected ImportError::Archive, got {other:?}"),
    }
    assert!(text.contains(&format!("{path:?}")), "{label}: {text}");
    for d in &forbidden {
        assert_eq!(
            s.dirs.get(d).await.unwrap(),
            None,
            "{label}: {d} was stored"
        );
    }
    text
}

fn with_prefix(bad: &[Vec<u8>]) -> Vec<u8> {
    let mut all = prefix();
    all.extend_from_slice(bad);
    archive(&all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_good_prefix_imports() {
    let s = services("");
    let node = import_bytes(&s, archive(&prefix())).await.unwrap();
    let Node::Directory { digest, size } = node else {
        panic!("{node:?}")
    };
    assert_eq!(size, 2 + 2); // ok.txt, sub + (inner.txt, up)
    let root = s.dirs.get(&digest).await.unwrap().unwrap();
    assert!(matches!(
        root.get(b"ok.txt"),
        Some(Node::File { size: 3, .. })
    ));
    // A symlink pointing outside is data, kept as written.
    let s2 = services("");
    let node = import_bytes(
        &s2,
        with_prefix(&[
            soft("./escape", "../../../etc/passwd"),
            soft("./abs", "/etc/passwd"),
        ]),
    )
    .await
    .unwrap();
    let Node::Directory { digest, .. } = node else {
        panic!()
    };
    let root = s2.dirs.get(&digest).await.unwrap().unwrap();
    let Some(Node::Symlink { target }) = root.get(b"escape") else {
        panic!("{root:?}")
    };
    assert_eq!(target.as_bytes(), b"../../../etc/passwd");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_paths_that_escape_the_root() {
    expect_refused(
        "../evil",
        with_prefix(&[file("../evil", b"pwned")]),
        "../evil",
        &["'..'", "escape"],
    )
    .await;
    expect_refused(
        "a/../../evil",
        with_prefix(&[file("a/../../evil", b"pwned")]),
        "a/../../evil",
        &["'..'", "escape"],
    )
    .await;
    expect_refused(
        "/etc/evil",
        with_prefix(&[file("/etc/evil", b"pwned")]),
        "/etc/evil",
        &["absolute"],
    )
    .await;
    expect_refused(
        "directory ../",
        with_prefix(&[dir("../up/")]),
        "../up/",
        &["'..'"],
    )
    .await;
    expect_refused(
        "symlink at ../",
        with_prefix(&[soft("./sub/../../ln", "x")]),
        "./sub/../../ln",
        &["'..'"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_hard_links_out_of_the_archive() {
    expect_refused(
        "hard link to ../outside",
        with_prefix(&[hard("./link", "../outside")]),
        "./link",
        &["../outside", "'..'"],
    )
    .await;
    expect_refused(
        "hard link to /etc/passwd",
        with_prefix(&[hard("./link", "/etc/passwd")]),
        "./link",
        &["/etc/passwd", "absolute"],
    )
    .await;
    expect_refused(
        "hard link to a missing path",
        with_prefix(&[hard("./link", "./missing.txt")]),
        "./link",
        &["missing.txt", "not a file earlier in the archive"],
    )
    .await;
    expect_refused(
        "hard link to a directory",
        with_prefix(&[hard("./link", "./sub")]),
        "./link",
        &["./sub", "not a file"],
    )
    .await;
    expect_refused(
        "hard link to a symlink",
        with_prefix(&[hard("./link", "./sub/up")]),
        "./link",
        &["./sub/up", "not a file"],
    )
    .await;
    expect_refused(
        "hard link to a later entry",
        with_prefix(&[hard("./link", "./later.txt"), file("./later.txt", b"later")]),
        "./link",
        &["later.txt", "earlier"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_devices_and_fifos() {
    for (label, kind) in [
        ("char device", tar::EntryType::Char),
        ("block device", tar::EntryType::Block),
        ("fifo", tar::EntryType::Fifo),
    ] {
        expect_refused(
            label,
            with_prefix(&[entry(b"./sub/node", kind, b"", b"")]),
            "./sub/node",
            &["unsupported entry type"],
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_an_entry_where_a_directory_is() {
    expect_refused(
        "file over a directory",
        with_prefix(&[file("./sub", b"not a dir")]),
        "./sub",
        &["both as a directory and as something else"],
    )
    .await;
    expect_refused(
        "symlink over a directory",
        with_prefix(&[soft("./sub", "elsewhere")]),
        "./sub",
        &["both as a directory and as something else"],
    )
    .await;
    expect_refused(
        "hard link over a directory",
        with_prefix(&[hard("./sub", "./ok.txt")]),
        "./sub",
        &["both as a directory and as something else"],
    )
    .await;
    expect_refused(
        "directory over a file",
        with_prefix(&[dir("./ok.txt/")]),
        "./ok.txt/",
        &["both as a directory and as something else"],
    )
    .await;
    expect_refused(
        "file below a file",
        with_prefix(&[file("./ok.txt/x", b"x")]),
        "./ok.txt/x",
        &["parent path is not a directory"],
    )
    .await;
    expect_refused(
        "file below a symlink",
        with_prefix(&[file("./sub/up/x", b"x")]),
        "./sub/up/x",
        &["parent path is not a directory"],
    )
    .await;
    expect_refused(
        "a non-directory archive root",
        with_prefix(&[file(".", b"x")]),
        ".",
        &["root must be a directory"],
    )
    .await;
}

fn big_archive() -> (Vec<u8>, usize) {
    let mut entries = prefix();
    let header_at = entries.iter().map(Vec::len).sum::<usize>();
    entries.push(file(
        "./sub/big.bin",
        &pseudo_random_bytes(9, 200 * 1024 + 1),
    ));
    (archive(&entries), header_at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_truncated_archives() {
    let (full, header_at) = big_archive();
    // Sanity: the whole archive imports.
    import_bytes(&services(""), full.clone()).await.unwrap();

    // Cut inside the file's data, at a block boundary and off one.
    for cut in [
        header_at + 512 + 1000,
        header_at + 512 + 100 * 1024,
        header_at + 512,
    ] {
        let text = expect_refused(
            &format!("plain cut at {cut}"),
            full[..cut].to_vec(),
            "./sub/big.bin",
            &["truncated"],
        )
        .await;
        assert!(text.contains("bytes") || text.contains("eof"), "{text}");
    }

    // The same cut inside compressed streams. The data is incompressible,
    // so half the compressed stream ends inside big.bin's contents.
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&full).unwrap();
        e.finish().unwrap()
    };
    let xz = {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
        e.write_all(&full).unwrap();
        e.finish().unwrap()
    };
    let zst = zstd::stream::encode_all(full.as_slice(), 3).unwrap();
    for (label, stream) in [("gzip", gz), ("xz", xz), ("zstd", zst)] {
        import_bytes(&services(""), stream.clone())
            .await
            .unwrap_or_else(|e| panic!("{label} whole: {e}"));
        // 20 000 bytes before the end: well inside big.bin's data (the
        // trailer of zero blocks is only ~1.5 KiB, and cutting just that
        // leaves big.bin whole), after the decoder has given out big.bin's
        // header, so the refusal names the entry.
        expect_refused(
            &format!("{label} cut near the end"),
            stream[..stream.len() - 20_000].to_vec(),
            "./sub/big.bin",
            &["truncated"],
        )
        .await;
        // In the middle: a decoder may hold back a whole block (zstd does,
        // 128 KiB), so the cut can surface before big.bin's header is read
        // and no entry can be named. It is refused all the same.
        let s = services("");
        match import_bytes(&s, stream[..stream.len() / 2].to_vec()).await {
            Err(ImportError::Archive { path, reason }) => assert!(
                (path == "./sub/big.bin" && reason.contains("truncated"))
                    || (path.is_empty() && reason.contains("malformed")),
                "{label} cut in half: {path:?}: {reason}"
            ),
            other => panic!("{label} cut in half: {other:?}"),
        }
        assert_eq!(s.dirs.get(&B3Digest::empty()).await.unwrap(), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_cut_header_and_garbage() {
    let (full, header_at) = big_archive();
    for (label, bytes) in [
        ("cut header", full[..header_at + 200].to_vec()),
        ("garbage", vec![b'x'; 4096]),
    ] {
        let s = services("");
        match import_bytes(&s, bytes).await {
            Err(ImportError::Archive { reason, .. }) => {
                assert!(
                    reason.contains("malformed") || reason.contains("not a tar"),
                    "{label}: {reason}"
                );
            }
            other => panic!("{label}: {other:?}"),
        }
        assert_eq!(s.dirs.get(&B3Digest::empty()).await.unwrap(), None);
    }
}

// --------------------------------------- long-name headers, via Python

/// Runs a Python `tarfile` script that writes an archive to `argv[1]`.
fn python_archive(dir: &Path, name: &str, script: &str) -> Option<Vec<u8>> {
    let python = oracle("python3")?;
    let out: PathBuf = dir.join(name);
    run_ok(Command::new(python).arg("-c").arg(script).arg(&out));
    Some(fs::read(&out).unwrap())
}

const PY_PREAMBLE: &str = r#"
import io, sys, tarfile
def add(t, name, data=b"", kind=tarfile.REGTYPE, link=""):
    i = tarfile.TarInfo(name)
    i.type = kind
    i.linkname = link
    i.size = len(data) if kind == tarfile.REGTYPE else 0
    i.mode = 0o644
    t.addfile(i, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
"#;

/// The same good entries as [`prefix`], so [`expect_refused`] knows which
/// directories must not have been stored.
const PY_PREFIX: &str = "    add(t, 'sub', kind=tarfile.DIRTYPE)
    add(t, 'sub/inner.txt', b'inner\\n')
    add(t, 'ok.txt', b'ok\\n')
    add(t, 'sub/up', kind=tarfile.SYMTYPE, link='../ok.txt')
";

/// `..` and absolute paths hidden where the 100-byte ustar name field
/// cannot hold them: GNU `././@LongLink` records and PAX `path`/`linkpath`
/// records. The importer sees the real name and refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_escapes_smuggled_in_long_name_headers() {
    let tmp = tempfile::tempdir().unwrap();
    // The Python prefix imports to the same tree as the raw one.
    let script = format!(
        "{PY_PREAMBLE}\nwith tarfile.open(sys.argv[1], 'w', format=tarfile.GNU_FORMAT) as t:\n{PY_PREFIX}"
    );
    let Some(good) = python_archive(tmp.path(), "good.tar", &script) else {
        return;
    };
    assert_eq!(
        import_bytes(&services(""), good).await.unwrap(),
        import_bytes(&services(""), archive(&prefix()))
            .await
            .unwrap()
    );
    let long = "e".repeat(150);
    let cases = [
        (
            "GNU_FORMAT",
            format!("add(t, '../{long}', b'x')"),
            format!("../{long}"),
            "'..'",
        ),
        (
            "PAX_FORMAT",
            format!("add(t, '../{long}', b'x')"),
            format!("../{long}"),
            "'..'",
        ),
        (
            "PAX_FORMAT",
            format!("add(t, '/{long}', b'x')"),
            format!("/{long}"),
            "absolute",
        ),
        (
            "PAX_FORMAT",
            format!("add(t, 'link', kind=tarfile.LNKTYPE, link='../{long}')"),
            "link".to_owned(),
            "'..'",
        ),
        (
            "GNU_FORMAT",
            format!("add(t, 'link', kind=tarfile.LNKTYPE, link='../{long}')"),
            "link".to_owned(),
            "'..'",
        ),
        (
            "GNU_FORMAT",
            "add(t, 'fifo', kind=tarfile.FIFOTYPE)".to_owned(),
            "fifo".to_owned(),
            "unsupported entry type",
        ),
    ];
    for (i, (format, add, path, reason)) in cases.into_iter().enumerate() {
        let script = format!(
            "{PY_PREAMBLE}\nwith tarfile.open(sys.argv[1], 'w', format=tarfile.{format}) as t:\n{PY_PREFIX}    {add}\n"
        );
        let Some(bytes) = python_archive(tmp.path(), &format!("case{i}.tar"), &script) else {
            return;
        };
        expect_refused(&format!("{format} {add}"), bytes, &path, &[reason]).await;
    }
}

/// A name component or symlink target that castore cannot hold, though
/// tar can: refused, with nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_names_and_targets_castore_cannot_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let name = "n".repeat(256);
    let target = "t".repeat(4096);
    // The refusal names the entry by its full path below the root.
    let cases = [
        (
            format!("add(t, 'sub/{name}', b'x')"),
            format!("sub/{name}"),
            "longer than 255",
        ),
        (
            format!("add(t, 'sub/ln', kind=tarfile.SYMTYPE, link='{target}')"),
            "sub/ln".to_owned(),
            "longer than 4095",
        ),
    ];
    for (i, (add, entry, reason)) in cases.into_iter().enumerate() {
        let script = format!(
            "{PY_PREAMBLE}\nwith tarfile.open(sys.argv[1], 'w', format=tarfile.GNU_FORMAT) as t:\n{PY_PREFIX}    {add}\n"
        );
        let Some(bytes) = python_archive(tmp.path(), &format!("limits{i}.tar"), &script) else {
            return;
        };
        expect_refused(&format!("limits {entry:.20}"), bytes, &entry, &[reason]).await;
    }
}
