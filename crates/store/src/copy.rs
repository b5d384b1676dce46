//! Copying store paths between two stores, whatever their backends:
//! references first (so the destination never holds a path whose
//! references it lacks), and of each path only the blobs and directories
//! the destination does not already have.
//!
//! Order within a path: blobs, then the directory closure (one put,
//! validated whole by the destination), then the PathInfo. A copy stopped
//! at any point leaves the destination without the PathInfo, so the path
//! is either there whole or not at all.

use std::collections::{HashMap, HashSet, VecDeque};

use cairn_castore::blobservice::copy_blob;
use cairn_castore::directoryservice::put_closure_map;
use cairn_castore::{B3Digest, Directory, Node};
use cairn_nix::store_path::StorePath;
use futures::TryStreamExt;

use crate::store::{Store, StoreError};
use crate::PathInfo;

/// What a copy did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CopySummary {
    /// Paths copied.
    pub copied: u64,
    /// Paths the destination already had.
    pub present: u64,
    /// Blobs sent (the others were there already).
    pub blobs_sent: u64,
    /// Their bytes.
    pub bytes_sent: u64,
    /// Directories sent.
    pub directories_sent: u64,
}

/// Told about each path as it is done.
pub trait CopyProgress: Send + Sync {
    /// `path` is now at the destination (`copied` false: it was already).
    fn path_done(&self, _path: &StorePath, _copied: bool) {}
    /// `n` more blob bytes were sent.
    fn bytes_sent(&self, _n: u64) {}
}

/// Reports nothing.
pub struct NoCopyProgress;
impl CopyProgress for NoCopyProgress {}

/// The paths to copy, references before referrers: with `closure`,
/// everything `paths` refer to, transitively; else `paths` alone.
///
/// Paths `present` already has are left out, and so are their references
/// (a store holds a path only with its references), without asking
/// `from` for them: asking a binary cache for a path means downloading it.
pub async fn closure_order(
    from: &Store,
    present: Option<&Store>,
    paths: &[StorePath],
    closure: bool,
) -> Result<(Vec<PathInfo>, u64), StoreError> {
    let mut infos: HashMap<StorePath, PathInfo> = HashMap::new();
    let mut skipped: HashSet<StorePath> = HashSet::new();
    let mut queue: VecDeque<StorePath> = paths.iter().cloned().collect();
    while let Some(p) = queue.pop_front() {
        if infos.contains_key(&p) || skipped.contains(&p) {
            continue;
        }
        if let Some(to) = present {
            if to.path_infos.get(p.digest()).await?.is_some() {
                skipped.insert(p);
                continue;
            }
        }
        let info = from.path_info(&p).await?;
        if closure {
            for r in &info.references {
                if !infos.contains_key(r) {
                    queue.push_back(r.clone());
                }
            }
        }
        infos.insert(p, info);
    }
    // Post-order over references (each path after those it refers to);
    // references outside the set (without `closure`) are not followed.
    let mut order = Vec::with_capacity(infos.len());
    let mut done: HashSet<StorePath> = HashSet::new();
    let mut roots: Vec<&StorePath> = infos.keys().collect();
    roots.sort_by_key(|p| p.to_string());
    for root in roots {
        let mut stack = vec![(root.clone(), false)];
        while let Some((p, expanded)) = stack.pop() {
            if done.contains(&p) {
                continue;
            }
            let Some(info) = infos.get(&p) else { continue };
            if expanded {
                done.insert(p);
                order.push(info.clone());
            } else {
                stack.push((p.clone(), true));
                for r in &info.references {
                    // A path referring to itself is common in Nix.
                    if *r != p && !done.contains(r) {
                        stack.push((r.clone(), false));
                    }
                }
            }
        }
    }
    Ok((order, skipped.len() as u64))
}

/// Copies `paths` (and with `closure`, everything they refer to) from
/// `from` to `to`.
pub async fn copy_paths(
    from: &Store,
    to: &Store,
    paths: &[StorePath],
    closure: bool,
    progress: &dyn CopyProgress,
) -> Result<CopySummary, StoreError> {
    let (order, present) = closure_order(from, Some(to), paths, closure).await?;
    let mut summary = CopySummary {
        present,
        ..CopySummary::default()
    };
    for info in order {
        copy_tree(from, to, &info.node, &mut summary, progress).await?;
        to.path_infos.put(info.clone()).await?;
        summary.copied += 1;
        progress.path_done(&info.store_path, true);
    }
    Ok(summary)
}

/// Sends what `to` lacks of the tree at `node`.
async fn copy_tree(
    from: &Store,
    to: &Store,
    node: &Node,
    summary: &mut CopySummary,
    progress: &dyn CopyProgress,
) -> Result<(), StoreError> {
    let root = match node {
        Node::Symlink { .. } => return Ok(()),
        Node::File { digest, size, .. } => {
            return copy_blobs(from, to, &[(*digest, *size)], summary, progress).await;
        }
        Node::Directory { digest, .. } => *digest,
    };
    let closure: HashMap<B3Digest, Directory> = from
        .dirs
        .get_recursive(&root)
        .map_ok(|d| (d.digest(), d))
        .try_collect()
        .await?;
    let mut files: Vec<(B3Digest, u64)> = Vec::new();
    let mut seen = HashSet::new();
    for dir in closure.values() {
        for (_, n) in dir.entries() {
            if let Node::File { digest, size, .. } = n {
                if seen.insert(*digest) {
                    files.push((*digest, *size));
                }
            }
        }
    }
    copy_blobs(from, to, &files, summary, progress).await?;
    // Put even when the destination has the whole closure already (as
    // garbage, or under another path): a put dates it, and garbage
    // collection spares a young directory and everything it reaches, so
    // an old tree this copy relies on stays until the PathInfo lands.
    summary.directories_sent += put_closure_map(to.dirs.as_ref(), &root, &closure).await? as u64;
    Ok(())
}

/// Sends the blobs `to` lacks, streaming each; every one is verified on
/// both ends (read from `from`, named by `to`).
async fn copy_blobs(
    from: &Store,
    to: &Store,
    blobs: &[(B3Digest, u64)],
    summary: &mut CopySummary,
    progress: &dyn CopyProgress,
) -> Result<(), StoreError> {
    let digests: Vec<B3Digest> = blobs.iter().map(|(d, _)| *d).collect();
    // `to_send`, not `missing`: a blob stored long ago is sent again where
    // the backend's garbage collection goes by age.
    let missing = to.blobs.to_send(&digests).await?;
    for d in missing {
        let sent = copy_blob(from.blobs.as_ref(), to.blobs.as_ref(), &d, |n| {
            progress.bytes_sent(n)
        })
        .await?
        .ok_or(cairn_castore::Error::NotFound {
            what: "blob",
            digest: d,
        })?;
        summary.blobs_sent += 1;
        summary.bytes_sent += sent;
    }
    // What was sent is durable before directories that refer to it are.
    to.blobs.sync().await?;
    Ok(())
}
