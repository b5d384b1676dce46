//! Export of a node back to the filesystem: directories, files with their
//! executable bit, symlinks. All or nothing: the tree is built in a hidden
//! sibling of the destination and renamed into place when complete.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use thiserror::Error;
use tokio::io::AsyncWriteExt;

use crate::{B3Digest, BlobService, Directory, DirectoryService, Error, Node};

/// Why an export failed; the destination does not exist afterwards.
#[derive(Debug, Error)]
pub enum ExportError {
    /// The destination exists already.
    #[error("{0}: already exists")]
    Exists(PathBuf),
    /// Writing failed.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A blob or directory is missing, or failed verification.
    #[error(transparent)]
    Castore(#[from] Error),
}

/// Writes `node` to `dest`, which must not exist.
pub async fn export_node(
    blobs: &dyn BlobService,
    dirs: &dyn DirectoryService,
    node: &Node,
    dest: &Path,
) -> Result<(), ExportError> {
    if tokio::fs::symlink_metadata(dest).await.is_ok() {
        return Err(ExportError::Exists(dest.to_owned()));
    }
    let temp = cairn_nix::nar::fs::temp_sibling(dest);
    let result = write_node(blobs, dirs, node, &temp).await;
    if let Err(e) = result {
        cairn_nix::nar::fs::remove_tree(&temp);
        return Err(e);
    }
    cairn_nix::nar::fs::publish(&temp, dest).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            ExportError::Exists(dest.to_owned())
        } else {
            ExportError::Io {
                path: dest.to_owned(),
                source,
            }
        }
    })
}

async fn write_node(
    blobs: &dyn BlobService,
    dirs: &dyn DirectoryService,
    node: &Node,
    dest: &Path,
) -> Result<(), ExportError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ExportError::Io { path, source }
    };
    match node {
        Node::Symlink { target } => {
            tokio::fs::symlink(std::ffi::OsStr::from_bytes(target.as_bytes()), dest)
                .await
                .map_err(io(dest))
        }
        Node::File {
            digest,
            size,
            executable,
        } => write_file(blobs, digest, *size, *executable, dest).await,
        Node::Directory { digest, .. } => {
            // The closure is small next to the files; fetch it in one go.
            let mut closure = std::collections::HashMap::new();
            let mut stream = dirs.get_recursive(digest);
            use futures::StreamExt;
            while let Some(d) = stream.next().await {
                let d = d?;
                closure.insert(d.digest(), d);
            }
            drop(stream);
            write_dir(blobs, &closure, digest, dest).await
        }
    }
}

fn write_dir<'a>(
    blobs: &'a dyn BlobService,
    closure: &'a std::collections::HashMap<B3Digest, Directory>,
    digest: &'a B3Digest,
    dest: &'a Path,
) -> futures::future::BoxFuture<'a, Result<(), ExportError>> {
    Box::pin(async move {
        let dir = closure.get(digest).ok_or(Error::NotFound {
            what: "directory",
            digest: *digest,
        })?;
        tokio::fs::create_dir(dest)
            .await
            .map_err(|source| ExportError::Io {
                path: dest.to_owned(),
                source,
            })?;
        for (name, node) in dir.entries() {
            let path = dest.join(std::ffi::OsStr::from_bytes(name.as_bytes()));
            match node {
                Node::Directory { digest, .. } => write_dir(blobs, closure, digest, &path).await?,
                Node::File {
                    digest,
                    size,
                    executable,
                } => write_file(blobs, digest, *size, *executable, &path).await?,
                Node::Symlink { target } => {
                    tokio::fs::symlink(std::ffi::OsStr::from_bytes(target.as_bytes()), &path)
                        .await
                        .map_err(|source| ExportError::Io {
                            path: path.clone(),
                            source,
                        })?
                }
            }
        }
        Ok(())
    })
}

async fn write_file(
    blobs: &dyn BlobService,
    digest: &B3Digest,
    size: u64,
    executable: bool,
    dest: &Path,
) -> Result<(), ExportError> {
    let io = |source| ExportError::Io {
        path: dest.to_owned(),
        source,
    };
    let mut reader = blobs.open_read(digest).await?.ok_or(Error::NotFound {
        what: "blob",
        digest: *digest,
    })?;
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .await
        .map_err(io)?;
    let copied =
        tokio::io::copy(&mut reader, &mut file)
            .await
            .map_err(|e| match Error::from_io(e) {
                Error::Io(source) => ExportError::Io {
                    path: dest.to_owned(),
                    source,
                },
                other => ExportError::Castore(other),
            })?;
    if copied != size {
        return Err(ExportError::Castore(Error::Integrity {
            digest: *digest,
            detail: format!("blob has {copied} bytes, the directory says {size}"),
        }));
    }
    file.flush().await.map_err(io)?;
    if executable {
        let mode = file.metadata().await.map_err(io)?.permissions().mode();
        file.set_permissions(std::fs::Permissions::from_mode(mode | 0o111))
            .await
            .map_err(io)?;
    }
    Ok(())
}
