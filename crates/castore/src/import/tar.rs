//! Import of tar archives (plain, gzip, xz or zstd, detected by magic).
//!
//! Entries are refused when they would land outside the archive's root:
//! absolute paths, `..` components, and hard links to anything not already
//! in the archive. Symlinks are data in castore (nothing is extracted
//! through them), so their targets are kept as written.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;

use bytes::Bytes;

use super::{ImportError, Progress};
use crate::{
    B3Digest, BlobService, Directory, DirectoryService, Error, Node, PathComponent, SymlinkTarget,
};

enum Tree {
    Dir(BTreeMap<Vec<u8>, Tree>),
    File {
        digest: B3Digest,
        size: u64,
        executable: bool,
    },
    Symlink(Vec<u8>),
}

fn refuse(path: &[u8], reason: impl Into<String>) -> ImportError {
    ImportError::Archive {
        path: String::from_utf8_lossy(path).into_owned(),
        reason: reason.into(),
    }
}

/// Splits an entry path into components, refusing escapes.
fn components(path: &[u8]) -> Result<Vec<Vec<u8>>, ImportError> {
    if path.starts_with(b"/") {
        return Err(refuse(path, "absolute path"));
    }
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(refuse(path, "'..' would escape the archive root")),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

impl Tree {
    fn dir_at<'a>(
        &'a mut self,
        parts: &[Vec<u8>],
        full: &[u8],
    ) -> Result<&'a mut BTreeMap<Vec<u8>, Tree>, ImportError> {
        let mut here = match self {
            Tree::Dir(m) => m,
            _ => return Err(refuse(full, "root is not a directory")),
        };
        for p in parts {
            let next = here
                .entry(p.clone())
                .or_insert_with(|| Tree::Dir(BTreeMap::new()));
            here = match next {
                Tree::Dir(m) => m,
                _ => return Err(refuse(full, "a parent path is not a directory")),
            };
        }
        Ok(here)
    }

    fn insert(&mut self, parts: &[Vec<u8>], node: Tree, full: &[u8]) -> Result<(), ImportError> {
        let Some((last, parents)) = parts.split_last() else {
            return match node {
                Tree::Dir(_) => Ok(()), // "./" itself
                _ => Err(refuse(full, "the archive root must be a directory")),
            };
        };
        let dir = self.dir_at(parents, full)?;
        match (dir.get(last), &node) {
            (Some(Tree::Dir(_)), Tree::Dir(_)) => Ok(()),
            (Some(Tree::Dir(_)), _) | (Some(_), Tree::Dir(_)) => Err(refuse(
                full,
                "appears both as a directory and as something else",
            )),
            _ => {
                dir.insert(last.clone(), node);
                Ok(())
            }
        }
    }

    fn find(&self, parts: &[Vec<u8>]) -> Option<&Tree> {
        let mut here = self;
        for p in parts {
            here = match here {
                Tree::Dir(m) => m.get(p)?,
                _ => return None,
            };
        }
        Some(here)
    }
}

/// Reads the archive on a blocking thread, storing file contents as blobs.
fn read_archive(
    blobs: Arc<dyn BlobService>,
    source: Box<dyn Read + Send>,
    handle: tokio::runtime::Handle,
    progress: &dyn Progress,
) -> Result<Tree, ImportError> {
    let mut buffered = BufReader::with_capacity(1 << 20, source);
    let magic = buffered
        .fill_buf()
        .map_err(|e| refuse(b"", format!("reading archive: {e}")))?;
    let decoded: Box<dyn Read> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(buffered))
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Box::new(liblzma::read::XzDecoder::new_multi_decoder(buffered))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(
            zstd::stream::read::Decoder::with_buffer(buffered)
                .map_err(|e| refuse(b"", e.to_string()))?,
        )
    } else {
        Box::new(buffered)
    };
    let mut archive = tar::Archive::new(decoded);
    let mut root = Tree::Dir(BTreeMap::new());
    let entries = archive
        .entries()
        .map_err(|e| refuse(b"", format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| refuse(b"", format!("malformed archive: {e}")))?;
        let path = entry.path_bytes().into_owned();
        let parts = components(&path)?;
        let kind = entry.header().entry_type();
        let node = if kind.is_dir() {
            Tree::Dir(BTreeMap::new())
        } else if kind.is_file() || kind == tar::EntryType::Continuous {
            let size = entry.size();
            let executable = entry
                .header()
                .mode()
                .map_err(|e| refuse(&path, e.to_string()))?
                & 0o100
                != 0;
            let mut writer = handle.block_on(blobs.open_write());
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0u64;
            loop {
                let n = entry
                    .read(&mut buf)
                    .map_err(|e| refuse(&path, format!("truncated archive: {e}")))?;
                if n == 0 {
                    break;
                }
                total += n as u64;
                handle.block_on(writer.write(&buf[..n]))?;
            }
            if total != size {
                return Err(refuse(
                    &path,
                    format!("truncated archive: {total} of {size} bytes"),
                ));
            }
            let digest = handle.block_on(writer.close())?;
            progress.file_done(size);
            Tree::File {
                digest,
                size,
                executable,
            }
        } else if kind.is_symlink() {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| refuse(&path, "symlink without a target"))?
                .into_owned();
            Tree::Symlink(target)
        } else if kind.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| refuse(&path, "hard link without a target"))?
                .into_owned();
            // Name the link entry, not its target, in the refusal.
            let target_parts = components(&target).map_err(|e| match e {
                ImportError::Archive { reason, .. } => refuse(
                    &path,
                    format!(
                        "hard link to {:?}: {reason}",
                        String::from_utf8_lossy(&target)
                    ),
                ),
                other => other,
            })?;
            match root.find(&target_parts) {
                Some(Tree::File {
                    digest,
                    size,
                    executable,
                }) => Tree::File {
                    digest: *digest,
                    size: *size,
                    executable: *executable,
                },
                _ => {
                    return Err(refuse(
                        &path,
                        format!(
                            "hard link to {:?}, which is not a file earlier in the archive",
                            String::from_utf8_lossy(&target)
                        ),
                    ))
                }
            }
        } else if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            continue;
        } else {
            return Err(refuse(&path, format!("unsupported entry type {kind:?}")));
        };
        root.insert(&parts, node, &path)?;
    }
    Ok(root)
}

/// Puts the directories of `tree` leaves first; returns its node. `path`
/// is the node's path below the archive root (empty for the root), so a
/// refusal names the offending entry in full.
fn build<'a>(
    tree: Tree,
    path: Vec<u8>,
    putter: &'a mut Box<dyn crate::DirectoryPutter + '_>,
    rule: crate::SizeRule,
) -> futures::future::BoxFuture<'a, Result<Node, ImportError>> {
    Box::pin(async move {
        let name = path.rsplit(|&b| b == b'/').next().unwrap_or_default();
        let invalid = |source| refuse(&path, format!("{source}"));
        Ok(match tree {
            Tree::File {
                digest,
                size,
                executable,
            } => Node::File {
                digest,
                size,
                executable,
            },
            Tree::Symlink(target) => Node::Symlink {
                target: SymlinkTarget::new(Bytes::from(target), name).map_err(invalid)?,
            },
            Tree::Dir(children) => {
                let mut dir = Directory::new();
                for (child_name, child) in children {
                    let child_path = if path.is_empty() {
                        child_name.clone()
                    } else {
                        [&path[..], b"/", &child_name[..]].concat()
                    };
                    let pc = PathComponent::try_from(child_name.as_slice())
                        .map_err(|source| refuse(&child_path, format!("{source}")))?;
                    let node = build(child, child_path, putter, rule).await?;
                    dir.add(pc, node).map_err(invalid)?;
                }
                let size = dir.size(rule).map_err(invalid)?;
                let digest = dir.digest();
                putter.put(dir).await?;
                Node::Directory { digest, size }
            }
        })
    })
}

/// Imports a tar archive (any supported compression) as a directory.
pub async fn import_tar(
    blobs: Arc<dyn BlobService>,
    dirs: &dyn DirectoryService,
    source: Box<dyn Read + Send>,
    progress: Arc<dyn Progress>,
) -> Result<Node, ImportError> {
    let handle = tokio::runtime::Handle::current();
    let b = blobs.clone();
    let tree =
        tokio::task::spawn_blocking(move || read_archive(b, source, handle, progress.as_ref()))
            .await
            .map_err(|e| Error::Storage(e.to_string()))??;
    blobs.sync().await?;
    let mut putter = dirs.put_multiple_start();
    let node = build(tree, Vec::new(), &mut putter, dirs.size_rule()).await?;
    putter.close().await?;
    Ok(node)
}
