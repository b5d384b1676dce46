//! `memory://`: directories in a hash map, for tests and short-lived processes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use async_trait::async_trait;

use super::{ClosureValidator, DirectoryPutter, DirectoryService};
use crate::{B3Digest, Directory, Error, SizeRule};

/// Each directory with when it was last put (for the GC's grace period).
type Map = Arc<RwLock<HashMap<B3Digest, (Directory, SystemTime)>>>;

/// Directories held in memory.
#[derive(Clone, Default)]
pub struct MemoryDirectoryService {
    dirs: Map,
    rule: SizeRule,
}

impl MemoryDirectoryService {
    /// An empty service validating with `rule`.
    pub fn new(rule: SizeRule) -> Self {
        MemoryDirectoryService {
            dirs: Map::default(),
            rule,
        }
    }
}

fn poisoned() -> Error {
    Error::Storage("memory directory map poisoned".into())
}

#[async_trait]
impl DirectoryService for MemoryDirectoryService {
    async fn get(&self, digest: &B3Digest) -> Result<Option<Directory>, Error> {
        Ok(self
            .dirs
            .read()
            .map_err(|_| poisoned())?
            .get(digest)
            .map(|(dir, _)| dir.clone()))
    }

    fn put_multiple_start(&self) -> Box<dyn DirectoryPutter + '_> {
        Box::new(MemoryPutter {
            dirs: self.dirs.clone(),
            validator: ClosureValidator::new(self.rule),
        })
    }

    fn size_rule(&self) -> SizeRule {
        self.rule
    }

    async fn collect_garbage(
        &self,
        live: &std::collections::HashSet<B3Digest>,
        keep: crate::gc::KeepYoung,
        dry_run: bool,
    ) -> Result<crate::gc::GcReport, Error> {
        let mut map = self.dirs.write().map_err(|_| poisoned())?;
        let mut report = crate::gc::GcReport::default();
        map.retain(|digest, (dir, written)| {
            if live.contains(digest) {
                report.live += 1;
                return true;
            }
            if keep.keeps(*written) {
                report.young += 1;
                return true;
            }
            report.deleted += 1;
            report.deleted_bytes += dir.encode().len() as u64;
            dry_run
        });
        Ok(report)
    }

    async fn written_within(&self, keep: crate::gc::KeepYoung) -> Result<Vec<B3Digest>, Error> {
        let map = self.dirs.read().map_err(|_| poisoned())?;
        Ok(map
            .iter()
            .filter(|(_, (_, written))| keep.keeps(*written))
            .map(|(d, _)| *d)
            .collect())
    }

    async fn verify_all(&self) -> Result<crate::blobservice::VerifyReport, Error> {
        let map = self.dirs.read().map_err(|_| poisoned())?;
        Ok(super::verify_directories(
            map.iter().map(|(d, (dir, _))| Ok((*d, dir.clone()))),
            self.rule,
        ))
    }
}

struct MemoryPutter {
    dirs: Map,
    validator: ClosureValidator,
}

#[async_trait]
impl DirectoryPutter for MemoryPutter {
    async fn put(&mut self, directory: Directory) -> Result<(), Error> {
        self.validator.add(directory)
    }

    async fn close(self: Box<Self>) -> Result<B3Digest, Error> {
        let (root, dirs) = self.validator.finish()?;
        let mut map = self.dirs.write().map_err(|_| poisoned())?;
        let now = SystemTime::now();
        map.extend(dirs.into_iter().map(|(d, dir)| (d, (dir, now))));
        Ok(root)
    }
}
