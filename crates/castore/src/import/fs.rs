//! Import of a filesystem tree: walk, store file contents as blobs with
//! bounded parallelism, then put the directory closure leaves first.
//!
//! Memory is bounded by the tree's entry count (names and small metadata),
//! never by file sizes: the blob service reads contents in pieces.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};

use super::tree::{EntryId, TreeBuilder};
use super::{ImportError, Progress};
use crate::{BlobService, DirectoryService, Error, Node};

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> ImportError + '_ {
    move |source| ImportError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A file to store: its entry, path and size at walk time.
struct FileToStore {
    id: EntryId,
    path: PathBuf,
    size: u64,
}

/// Lists the tree in pre-order (parents before children), names sorted.
fn walk(root: &Path) -> Result<(TreeBuilder, Vec<FileToStore>), ImportError> {
    let mut tree = TreeBuilder::new(root);
    let mut files = Vec::new();
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
        tree.leave_to_depth(item.depth());
        let name = item.file_name().as_bytes();
        let ft = item.file_type();
        if ft.is_dir() {
            tree.directory(name);
        } else if ft.is_symlink() {
            let target = std::fs::read_link(item.path()).map_err(io_at(item.path()))?;
            tree.symlink(name, target.as_os_str().as_bytes());
        } else if ft.is_file() {
            let meta = item.metadata().map_err(|e| ImportError::Io {
                path: item.path().to_owned(),
                source: e
                    .into_io_error()
                    .unwrap_or_else(|| std::io::Error::other("metadata")),
            })?;
            let size = meta.len();
            let id = tree.file(name, size, meta.permissions().mode() & 0o100 != 0);
            files.push(FileToStore {
                id,
                path: item.into_path(),
                size,
            });
        } else {
            return Err(ImportError::UnsupportedType(item.into_path()));
        }
    }
    Ok((tree, files))
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
    let (mut tree, files) = tokio::task::spawn_blocking(move || walk(&root))
        .await
        .map_err(|e| Error::Storage(e.to_string()))??;
    tracing::debug!(files = files.len(), "walked {}", path.display());
    progress.add_total(files.len() as u64, files.iter().map(|f| f.size).sum());

    // Contents first, several files at a time (I/O and hashing overlap).
    let parallel = std::env::var("CAIRN_IMPORT_PARALLEL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(4, |n| n.get() * 4));
    let blobs_ref = &blobs;
    let mut uploads = futures::stream::iter(files)
        .map(|f| async move {
            let d = blobs_ref.ingest_file(&f.path, f.size).await?;
            progress.file_done(f.size);
            Ok::<_, ImportError>((f.id, d))
        })
        .buffer_unordered(parallel);
    while let Some((id, d)) = uploads.try_next().await? {
        tree.set_digest(id, d);
    }
    drop(uploads);
    tracing::debug!("file contents stored");
    // Directory records must not become durable before the blobs they reach.
    blobs.sync().await?;
    tracing::debug!("blobs synced");
    let node = tree.finish(dirs).await?;
    tracing::debug!("directories committed");
    Ok(node)
}
