//! [`ObjectDirectoryService`]: one object per directory, its canonical
//! encoding, keyed by its digest.
//!
//! A closure is validated whole before anything is uploaded, then
//! uploaded by height, leaves first (every directory of one height at
//! once, up to a window), so a directory is visible only after all it
//! refers to is. Closures are fetched a breadth-first level at a time,
//! the level's directories in parallel. Every directory read is decoded,
//! validated and re-hashed against its key.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use cairn_castore::blobservice::VerifyReport;
use cairn_castore::directoryservice::ClosureValidator;
use cairn_castore::gc::{GcReport, KeepYoung};
use cairn_castore::{B3Digest, Directory, DirectoryPutter, DirectoryService, Error, SizeRule};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use tokio::sync::OnceCell;

use crate::blobs::{account_spared, delete_unless_refreshed, get_opt, storage, Written};
use crate::layout::{Layout, DIRECTORIES};

/// Requests one closure fetch or upload keeps in flight.
const WINDOW: usize = 16;

/// Directories in an object store.
#[derive(Clone)]
pub struct ObjectDirectoryService {
    store: Arc<dyn ObjectStore>,
    layout: Layout,
    rule: SizeRule,
    /// Set once the bucket's recorded size rule was checked (or recorded).
    rule_checked: Arc<OnceCell<()>>,
}

impl ObjectDirectoryService {
    /// Directories in `store` under `layout`, with sizes by `rule`.
    pub fn new(store: Arc<dyn ObjectStore>, layout: Layout, rule: SizeRule) -> Self {
        ObjectDirectoryService {
            store,
            layout,
            rule,
            rule_checked: Arc::new(OnceCell::new()),
        }
    }

    /// Records this service's size rule in the bucket if none is, and
    /// refuses to write under another rule than the recorded one: one
    /// bucket never mixes the two.
    async fn check_rule(&self) -> Result<(), Error> {
        self.rule_checked
            .get_or_try_init(|| async {
                let key = self.layout.kind(DIRECTORIES).join("size-rule");
                let mine = Bytes::from(self.rule.name().to_owned());
                let create = PutOptions {
                    mode: PutMode::Create,
                    ..PutOptions::default()
                };
                match self
                    .store
                    .put_opts(&key, PutPayload::from(mine.clone()), create)
                    .await
                {
                    Ok(_) => return Ok(()),
                    Err(object_store::Error::AlreadyExists { .. }) => {}
                    // A store without conditional writes: record it unless
                    // recorded (two first writers racing write the same
                    // rule, or the loser is refused on its next write).
                    Err(
                        object_store::Error::NotImplemented { .. }
                        | object_store::Error::NotSupported { .. },
                    ) => {
                        if get_opt(self.store.as_ref(), &key).await?.is_none() {
                            self.store
                                .put(&key, PutPayload::from(mine.clone()))
                                .await
                                .map_err(|e| storage(&key, e))?;
                        }
                    }
                    Err(e) => return Err(storage(&key, e)),
                }
                let recorded = get_opt(self.store.as_ref(), &key)
                    .await?
                    .unwrap_or_default();
                if recorded != mine {
                    return Err(Error::Storage(format!(
                        "object {key} says this bucket's directories use the {} size rule, \
                         not {}: give the address ?size-rule={}",
                        String::from_utf8_lossy(&recorded),
                        self.rule.name(),
                        String::from_utf8_lossy(&recorded),
                    )));
                }
                Ok(())
            })
            .await
            .map(|_| ())
    }

    async fn fetch(&self, digest: B3Digest) -> Result<Option<Directory>, Error> {
        let key = self.layout.directory(&digest);
        let Some(raw) = get_opt(self.store.as_ref(), &key).await? else {
            return Ok(None);
        };
        let dir = Directory::decode(&raw).map_err(|e| Error::Integrity {
            digest,
            detail: format!("object {key}: {e}"),
        })?;
        let actual = dir.digest();
        if actual != digest {
            return Err(Error::Integrity {
                digest,
                detail: format!("object {key}: contents hash to {actual}"),
            });
        }
        Ok(Some(dir))
    }

    /// Every directory key with its digest, size and last put.
    async fn keys(&self) -> Result<Vec<(Path, B3Digest, u64, Written)>, Error> {
        let prefix = self.layout.kind(DIRECTORIES);
        self.store
            .list(Some(&prefix))
            .map_err(|e| storage(&prefix, e))
            .try_filter_map(|meta| async move {
                Ok(Layout::digest_of(&meta.location)
                    .map(|d| (meta.location, d, meta.size, meta.last_modified)))
            })
            .try_collect()
            .await
    }
}

#[async_trait]
impl DirectoryService for ObjectDirectoryService {
    async fn get(&self, digest: &B3Digest) -> Result<Option<Directory>, Error> {
        self.fetch(*digest).await
    }

    fn get_recursive(&self, root: &B3Digest) -> BoxStream<'_, Result<Directory, Error>> {
        let start = (vec![*root], HashSet::from([*root]));
        futures::stream::try_unfold(start, move |(level, mut seen)| async move {
            if level.is_empty() {
                return Ok::<_, Error>(None);
            }
            // In order: the same breadth-first order as one at a time.
            let dirs: Vec<Directory> = futures::stream::iter(level)
                .map(|d| async move {
                    self.fetch(d).await?.ok_or(Error::NotFound {
                        what: "directory",
                        digest: d,
                    })
                })
                .buffered(WINDOW)
                .try_collect()
                .await?;
            let mut next = Vec::new();
            for dir in &dirs {
                for (_, child, _) in dir.subdirectories() {
                    if seen.insert(*child) {
                        next.push(*child);
                    }
                }
            }
            Ok(Some((dirs, (next, seen))))
        })
        .map_ok(|dirs| futures::stream::iter(dirs.into_iter().map(Ok)))
        .try_flatten()
        .boxed()
    }

    fn put_multiple_start(&self) -> Box<dyn DirectoryPutter + '_> {
        Box::new(ObjectPutter {
            service: self.clone(),
            validator: ClosureValidator::new(self.rule),
        })
    }

    fn size_rule(&self) -> SizeRule {
        self.rule
    }

    async fn collect_garbage(
        &self,
        live: &HashSet<B3Digest>,
        keep: KeepYoung,
        dry_run: bool,
    ) -> Result<GcReport, Error> {
        // Other front ends may be importing into the bucket right now: a
        // closure they put is unreachable until their PathInfo lands, and
        // every put rewrites the object, so its age is since the last one.
        let mut report = GcReport::default();
        let mut doomed = Vec::new();
        for (key, digest, size, written) in self.keys().await? {
            if live.contains(&digest) {
                report.live += 1;
                continue;
            }
            if keep.keeps(written.into()) {
                report.young += 1;
                continue;
            }
            report.deleted += 1;
            report.deleted_bytes += size;
            doomed.push((key, size));
        }
        if !dry_run {
            // In any order: no live directory refers to a doomed one.
            let spared = delete_unless_refreshed(&self.store, doomed, keep, WINDOW).await?;
            account_spared(&mut report, spared);
        }
        Ok(report)
    }

    async fn written_within(&self, keep: KeepYoung) -> Result<Vec<B3Digest>, Error> {
        Ok(self
            .keys()
            .await?
            .into_iter()
            .filter(|(_, _, _, written)| keep.keeps((*written).into()))
            .map(|(_, digest, _, _)| digest)
            .collect())
    }

    async fn verify_all(&self) -> Result<VerifyReport, Error> {
        let mut report = VerifyReport::default();
        for (_, digest, _, _) in self.keys().await? {
            report.checked += 1;
            match self.fetch(digest).await {
                Ok(Some(_)) => {}
                Ok(None) => report
                    .problems
                    .push(format!("directory {digest}: listed but gone")),
                Err(e) => report.problems.push(format!("directory {digest}: {e}")),
            }
        }
        Ok(report)
    }
}

/// A closure being put: validated as it arrives, uploaded at close.
struct ObjectPutter {
    service: ObjectDirectoryService,
    validator: ClosureValidator,
}

#[async_trait]
impl DirectoryPutter for ObjectPutter {
    async fn put(&mut self, directory: Directory) -> Result<(), Error> {
        self.validator.add(directory)
    }

    async fn close(self: Box<Self>) -> Result<B3Digest, Error> {
        let ObjectPutter { service, validator } = *self;
        let (root, dirs) = validator.finish()?;
        service.check_rule().await?;
        // Height: 0 for a directory with no subdirectories, else one
        // more than its highest child. Children arrived first.
        let mut height: HashMap<B3Digest, usize> = HashMap::new();
        let mut by_height: Vec<Vec<(B3Digest, Directory)>> = Vec::new();
        for (digest, dir) in dirs {
            let h = dir
                .subdirectories()
                .filter_map(|(_, child, _)| height.get(child).map(|h| h + 1))
                .max()
                .unwrap_or(0);
            height.insert(digest, h);
            if by_height.len() <= h {
                by_height.resize_with(h + 1, Vec::new);
            }
            by_height[h].push((digest, dir));
        }
        for level in by_height {
            futures::stream::iter(level)
                .map(|(digest, dir)| {
                    let service = &service;
                    async move {
                        let key = service.layout.directory(&digest);
                        service
                            .store
                            .put(&key, PutPayload::from(dir.encode()))
                            .await
                            .map(drop)
                            .map_err(|e| storage(&key, e))
                    }
                })
                .buffer_unordered(WINDOW)
                .try_collect::<Vec<()>>()
                .await?;
        }
        Ok(root)
    }
}
