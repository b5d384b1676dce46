//! Import of a filesystem tree: walk, store file contents as blobs with
//! bounded parallelism, then put the directory closure leaves first.
//!
//! Memory is bounded by the tree's entry count (names and small metadata),
//! never by file sizes: the blob service reads contents in pieces.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::{ImportError, Progress};
use crate::{
    B3Digest, BlobService, Directory, DirectoryService, Error, Node, PathComponent, SymlinkTarget,
};

enum Kind {
    Directory { children: Vec<usize> },
    File { size: u64, executable: bool },
    Symlink { target: Vec<u8> },
}

struct Entry {
    path: PathBuf,
    name: Vec<u8>,
    kind: Kind,
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> ImportError + '_ {
    move |source| ImportError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Lists the tree in pre-order (parents before children), names sorted.
fn walk(root: &Path) -> Result<Vec<Entry>, ImportError> {
    let mut entries: Vec<Entry> = Vec::new();
    // Index of the open directory at each depth.
    let mut open: Vec<usize> = Vec::new();
    let walker = walkdir::WalkDir::new(root)
        .follow_links(false)
        .follow_root_links(false)
        .sort_by(|a, b| a.file_name().as_bytes().cmp(b.file_name().as_bytes()));
    for item in walker {
        let item = item.map_err(|e| {
            let path = e.path().unwrap_or(root).to_owned();
            ImportError::Io {
                path,
                source: e
                    .into_io_error()
                    .unwrap_or_else(|| std::io::Error::other("filesystem loop")),
            }
        })?;
        let path = item.path().to_owned();
        let ft = item.file_type();
        let kind = if ft.is_dir() {
            Kind::Directory {
                children: Vec::new(),
            }
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path).map_err(io_at(&path))?;
            Kind::Symlink {
                target: target.as_os_str().as_bytes().to_vec(),
            }
        } else if ft.is_file() {
            let meta = item.metadata().map_err(|e| ImportError::Io {
                path: path.clone(),
                source: e
                    .into_io_error()
                    .unwrap_or_else(|| std::io::Error::other("metadata")),
            })?;
            Kind::File {
                size: meta.len(),
                executable: meta.permissions().mode() & 0o100 != 0,
            }
        } else {
            return Err(ImportError::UnsupportedType(path));
        };
        let idx = entries.len();
        let depth = item.depth();
        open.truncate(depth);
        if let Some(&parent) = open.last() {
            if let Kind::Directory { children } = &mut entries[parent].kind {
                children.push(idx);
            }
        }
        if matches!(kind, Kind::Directory { .. }) {
            open.push(idx);
        }
        entries.push(Entry {
            name: item.file_name().as_bytes().to_vec(),
            path,
            kind,
        });
    }
    Ok(entries)
}

/// Imports the tree at `path` and returns its root node. A symlink at
/// `path` is imported as a symlink, not followed.
pub async fn import_path(
    blobs: Arc<dyn BlobService>,
    dirs: &dyn DirectoryService,
    path: &Path,
    progress: &dyn Progress,
) -> Result<Node, ImportError> {
    let root = path.to_owned();
    let entries = tokio::task::spawn_blocking(move || walk(&root))
        .await
        .map_err(|e| Error::Storage(e.to_string()))??;
    tracing::debug!(entries = entries.len(), "walked {}", path.display());

    let files: Vec<(usize, u64)> = entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match e.kind {
            Kind::File { size, .. } => Some((i, size)),
            _ => None,
        })
        .collect();
    progress.add_total(files.len() as u64, files.iter().map(|(_, s)| s).sum());

    // Contents first, several files at a time (I/O and hashing overlap).
    let parallel = std::env::var("CAIRN_IMPORT_PARALLEL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(4, |n| n.get() * 4));
    let mut digests: Vec<Option<B3Digest>> = vec![None; entries.len()];
    let entries_ref = &entries;
    let blobs_ref = &blobs;
    let mut uploads = futures::stream::iter(files)
        .map(|(i, size)| async move {
            let d = blobs_ref.ingest_file(&entries_ref[i].path, size).await?;
            progress.file_done(size);
            Ok::<_, ImportError>((i, d))
        })
        .buffer_unordered(parallel);
    while let Some((i, d)) = uploads.try_next().await? {
        digests[i] = Some(d);
    }
    drop(uploads);
    tracing::debug!("file contents stored");
    // Directory records must not become durable before the blobs they reach.
    blobs.sync().await?;
    tracing::debug!("blobs synced");

    // Then directories, children before parents (reverse pre-order).
    let mut nodes: Vec<Option<Node>> = vec![None; entries.len()];
    let mut putter = dirs.put_multiple_start();
    let mut any_dir = false;
    let rule = dirs.size_rule();
    for i in (0..entries.len()).rev() {
        let e = &entries[i];
        let invalid = |source| ImportError::Invalid {
            path: e.path.clone(),
            source,
        };
        let node = match &e.kind {
            Kind::File { size, executable } => Node::File {
                digest: digests[i]
                    .ok_or_else(|| Error::Storage(format!("{}: not uploaded", e.path.display())))?,
                size: *size,
                executable: *executable,
            },
            Kind::Symlink { target } => Node::Symlink {
                target: SymlinkTarget::new(Bytes::copy_from_slice(target), &e.name)
                    .map_err(invalid)?,
            },
            Kind::Directory { children } => {
                let mut dir = Directory::new();
                for &c in children {
                    let child = &entries[c];
                    let name =
                        PathComponent::try_from(child.name.as_slice()).map_err(|source| {
                            ImportError::Invalid {
                                path: child.path.clone(),
                                source,
                            }
                        })?;
                    let node = nodes[c].take().ok_or_else(|| {
                        Error::Storage(format!("{}: child not built", child.path.display()))
                    })?;
                    dir.add(name, node).map_err(invalid)?;
                }
                let size = dir.size(rule).map_err(invalid)?;
                let digest = dir.digest();
                putter.put(dir).await?;
                any_dir = true;
                Node::Directory { digest, size }
            }
        };
        nodes[i] = Some(node);
    }
    if any_dir {
        putter.close().await?;
        tracing::debug!("directories committed");
    }
    nodes.into_iter().next().flatten().ok_or_else(|| {
        ImportError::Castore(Error::Storage(format!(
            "{}: nothing imported",
            path.display()
        )))
    })
}
