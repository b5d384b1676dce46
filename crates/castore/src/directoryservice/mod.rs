//! The DirectoryService trait, closure validation, and backends.
//!
//! Directories are put as closures, leaves first, through a putter that
//! checks the whole graph — every child sent before its parent, every
//! declared size right under the store's [`SizeRule`], everything reachable
//! from the root — before a single directory becomes visible.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;

use crate::{B3Digest, Directory, Error, SizeRule};

mod memory;
mod redb;

pub use memory::MemoryDirectoryService;
pub use redb::RedbDirectoryService;

/// Where directories live.
#[async_trait]
pub trait DirectoryService: Send + Sync {
    /// One directory, verified against `digest`, or `None`.
    async fn get(&self, digest: &B3Digest) -> Result<Option<Directory>, Error>;

    /// The directory and everything below it, breadth-first, each once,
    /// parents before children. A missing directory is an error item.
    fn get_recursive(&self, root: &B3Digest) -> BoxStream<'_, Result<Directory, Error>> {
        breadth_first(self, *root)
    }

    /// Starts putting a closure.
    fn put_multiple_start(&self) -> Box<dyn DirectoryPutter + '_>;

    /// The size rule this store validates with.
    fn size_rule(&self) -> SizeRule;

    /// Deletes every stored directory not in `live` (which the caller must
    /// have made closed under "child of") and not kept young by `keep`: a
    /// closure put by an import whose PathInfo has not landed yet is
    /// unreachable but must survive. A put of a directory already stored
    /// counts as writing it again. With `dry_run`, only reports.
    async fn collect_garbage(
        &self,
        _live: &HashSet<B3Digest>,
        _keep: crate::gc::KeepYoung,
        _dry_run: bool,
    ) -> Result<crate::gc::GcReport, Error> {
        Err(Error::Storage(
            "this directory service cannot collect garbage".into(),
        ))
    }

    /// The directories `keep` keeps for their age (a put of one already
    /// stored counts as writing it): the roots a garbage collection must
    /// keep alive with everything they reach, since an import in progress
    /// may be about to name them in a PathInfo.
    async fn written_within(&self, _keep: crate::gc::KeepYoung) -> Result<Vec<B3Digest>, Error> {
        Err(Error::Storage(
            "this directory service cannot collect garbage".into(),
        ))
    }

    /// Checks every stored directory: it decodes, hashes to its key, and its
    /// subdirectories exist with the declared sizes (an fsck).
    async fn verify_all(&self) -> Result<crate::blobservice::VerifyReport, Error> {
        Err(Error::Storage(
            "this directory service cannot enumerate its directories".into(),
        ))
    }
}

/// Receives a closure leaves first; `close` validates it as a whole,
/// commits it atomically and returns the root digest.
#[async_trait]
pub trait DirectoryPutter: Send {
    /// Adds the next directory. Fails early if it refers to a directory not
    /// sent before it, or declares a wrong size for one.
    async fn put(&mut self, directory: Directory) -> Result<(), Error>;
    /// Checks connectivity, commits, and returns the root (the last one put).
    async fn close(self: Box<Self>) -> Result<B3Digest, Error>;
}

/// Puts one closure given leaves first; returns the root digest.
pub async fn put_closure(
    service: &dyn DirectoryService,
    leaves_first: impl IntoIterator<Item = Directory>,
) -> Result<B3Digest, Error> {
    let mut putter = service.put_multiple_start();
    for d in leaves_first {
        putter.put(d).await?;
    }
    putter.close().await
}

/// The closure in an order the putter accepts: every directory after all
/// of its children (post-order from the root, each once).
pub fn leaves_first(
    root: &B3Digest,
    closure: &HashMap<B3Digest, Directory>,
) -> Result<Vec<Directory>, Error> {
    let mut out = Vec::with_capacity(closure.len());
    let mut done: HashSet<B3Digest> = HashSet::new();
    // (digest, children pushed yet?)
    let mut stack = vec![(*root, false)];
    while let Some((d, expanded)) = stack.pop() {
        if done.contains(&d) {
            continue;
        }
        let dir = closure.get(&d).ok_or(Error::NotFound {
            what: "directory",
            digest: d,
        })?;
        if expanded {
            done.insert(d);
            out.push(dir.clone());
        } else {
            stack.push((d, true));
            for (_, child, _) in dir.subdirectories() {
                if !done.contains(child) {
                    stack.push((*child, false));
                }
            }
        }
    }
    Ok(out)
}

/// Puts a closure held as a map (in any order) into `service`, leaves
/// first, and checks that it commits as `root`; returns how many
/// directories it put.
pub async fn put_closure_map(
    service: &dyn DirectoryService,
    root: &B3Digest,
    closure: &HashMap<B3Digest, Directory>,
) -> Result<usize, Error> {
    let order = leaves_first(root, closure)?;
    let n = order.len();
    let committed = put_closure(service, order).await?;
    if committed != *root {
        return Err(Error::Integrity {
            digest: *root,
            detail: format!("the closure was stored as {committed}"),
        });
    }
    Ok(n)
}

/// Directory services are shared between tasks.
pub type SharedDirectoryService = Arc<dyn DirectoryService>;

fn breadth_first<S: DirectoryService + ?Sized>(
    service: &S,
    root: B3Digest,
) -> BoxStream<'_, Result<Directory, Error>> {
    let state = (VecDeque::from([root]), HashSet::from([root]));
    futures::stream::try_unfold(state, move |(mut queue, mut seen)| async move {
        let Some(digest) = queue.pop_front() else {
            return Ok(None);
        };
        let dir = service.get(&digest).await?.ok_or(Error::NotFound {
            what: "directory",
            digest,
        })?;
        for (_, child, _) in dir.subdirectories() {
            if seen.insert(*child) {
                queue.push_back(*child);
            }
        }
        Ok(Some((dir, (queue, seen))))
    })
    .boxed()
}

/// Checks a closure as it streams in, leaves first.
pub struct ClosureValidator {
    rule: SizeRule,
    sizes: HashMap<B3Digest, u64>,
    order: Vec<(B3Digest, Directory)>,
}

impl ClosureValidator {
    /// A validator for a store using `rule`.
    pub fn new(rule: SizeRule) -> Self {
        ClosureValidator {
            rule,
            sizes: HashMap::new(),
            order: Vec::new(),
        }
    }

    /// Accepts the next directory, or says why not.
    pub fn add(&mut self, dir: Directory) -> Result<(), Error> {
        let digest = dir.digest();
        for (name, child, declared) in dir.subdirectories() {
            match self.sizes.get(child) {
                None => {
                    return Err(Error::InvalidClosure(format!(
                        "directory {digest}: entry {name:?} refers to {child}, which was not sent before it"
                    )))
                }
                Some(&size) if size != declared => {
                    return Err(Error::InvalidClosure(format!(
                        "directory {digest}: entry {name:?} declares size {declared}, but {child} has size {size} under the {} size rule",
                        self.rule.name()
                    )))
                }
                Some(_) => {}
            }
        }
        let size = dir.size(self.rule)?;
        if self.sizes.insert(digest, size).is_none() {
            self.order.push((digest, dir));
        }
        Ok(())
    }

    /// Checks that everything sent is reachable from the root (the last
    /// directory added) and returns the root and the directories in the
    /// order received.
    pub fn finish(self) -> Result<(B3Digest, Vec<(B3Digest, Directory)>), Error> {
        let Some((root, _)) = self.order.last() else {
            return Err(Error::InvalidClosure("no directories were sent".into()));
        };
        let root = *root;
        let by_digest: HashMap<&B3Digest, &Directory> =
            self.order.iter().map(|(d, dir)| (d, dir)).collect();
        let mut reached = HashSet::from([root]);
        let mut queue = vec![root];
        while let Some(d) = queue.pop() {
            if let Some(dir) = by_digest.get(&d) {
                for (_, child, _) in dir.subdirectories() {
                    if reached.insert(*child) {
                        queue.push(*child);
                    }
                }
            }
        }
        if let Some((stray, _)) = self.order.iter().find(|(d, _)| !reached.contains(d)) {
            return Err(Error::InvalidClosure(format!(
                "directory {stray} is not reachable from the root {root}"
            )));
        }
        Ok((root, self.order))
    }
}

/// Checks directories against their keys and each other: shared by the
/// backends' `verify_all`. Items that failed to load are reported as given.
pub(crate) fn verify_directories(
    items: impl Iterator<Item = Result<(B3Digest, Directory), (String, Error)>>,
    rule: SizeRule,
) -> crate::blobservice::VerifyReport {
    let mut report = crate::blobservice::VerifyReport::default();
    let mut all = HashMap::new();
    for item in items {
        report.checked += 1;
        match item {
            Ok((digest, dir)) => {
                if dir.digest() != digest {
                    report.problems.push(format!(
                        "directory {digest}: contents hash to {}",
                        dir.digest()
                    ));
                    continue;
                }
                all.insert(digest, dir);
            }
            Err((what, e)) => report.problems.push(format!("{what}: {e}")),
        }
    }
    for (digest, dir) in &all {
        for (name, child, declared) in dir.subdirectories() {
            match all.get(child).map(|c| c.size(rule)) {
                None => report.problems.push(format!(
                    "directory {digest}: entry {name:?} refers to missing {child}"
                )),
                Some(Ok(size)) if size != declared => report.problems.push(format!(
                    "directory {digest}: entry {name:?} declares size {declared}, actual {size}"
                )),
                Some(Err(e)) => report.problems.push(format!("directory {child}: {e}")),
                Some(Ok(_)) => {}
            }
        }
    }
    report
}
