//! `redb:///PATH`: directories in an embedded redb database file.
//!
//! Why redb: directories are small, numerous and written in closures that
//! must appear all at once; a single ACID write transaction per closure
//! gives exactly that, crash-safe, with no server and no C dependencies.
//! The database also records the store's size rule, so a store is never
//! opened with the other one.
//!
//! redb allows one process at a time per file; see [`crate::embedded`] for
//! how a second process waits.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ::redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;

use super::{ClosureValidator, DirectoryPutter, DirectoryService};
use crate::util::blocking;
use crate::{B3Digest, Directory, Error, SizeRule};

const DIRECTORIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("directories");
/// When each directory was last put, in seconds since the Unix epoch: the
/// GC keeps unreachable directories younger than its grace period. A
/// directory without a row (stored before this table existed) is old.
const WRITTEN: TableDefinition<&[u8], u64> = TableDefinition::new("directory-written");
const SETTINGS: TableDefinition<&str, &str> = TableDefinition::new("settings");
const SIZE_RULE_KEY: &str = "directory-size-rule";

fn db_err(e: impl std::fmt::Display) -> Error {
    Error::Storage(format!("directory database: {e}"))
}

/// Directories in a redb file.
#[derive(Clone)]
pub struct RedbDirectoryService {
    db: Arc<Database>,
    rule: SizeRule,
    path: PathBuf,
}

impl RedbDirectoryService {
    /// Creates the tables of a new database (or completes an old one's)
    /// and records `rule` if no rule is recorded yet; the rule in force.
    fn create_tables(
        db: &Database,
        rule: Option<SizeRule>,
        unknown: impl Fn(&str) -> Error,
    ) -> Result<SizeRule, Error> {
        let txn = db.begin_write().map_err(db_err)?;
        let stored = {
            let mut settings = txn.open_table(SETTINGS).map_err(db_err)?;
            txn.open_table(DIRECTORIES).map_err(db_err)?;
            txn.open_table(WRITTEN).map_err(db_err)?;
            let stored = settings
                .get(SIZE_RULE_KEY)
                .map_err(db_err)?
                .map(|v| v.value().to_owned());
            match stored {
                Some(name) => SizeRule::parse(&name).ok_or_else(|| unknown(&name))?,
                None => {
                    let r = rule.unwrap_or_default();
                    settings.insert(SIZE_RULE_KEY, r.name()).map_err(db_err)?;
                    r
                }
            }
        };
        txn.commit().map_err(db_err)?;
        Ok(stored)
    }

    /// Opens or creates the database. `rule` is the size rule asked for:
    /// a new database records it (default: documented); an existing one
    /// must match it, or opening fails.
    pub fn open(path: &Path, rule: Option<SizeRule>) -> Result<Self, Error> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let db = crate::embedded::open_redb(path)?;
        let unknown =
            |name: &str| Error::Storage(format!("{}: unknown size rule {name:?}", path.display()));
        // An existing database has its tables and its rule: read them
        // without committing anything.
        let mut found: Option<String> = None;
        let ready = crate::embedded::tables_exist(&db, |txn| {
            txn.open_table(DIRECTORIES)?;
            txn.open_table(WRITTEN)?;
            let settings = txn.open_table(SETTINGS)?;
            found = settings
                .get(SIZE_RULE_KEY)
                .ok()
                .flatten()
                .map(|v| v.value().to_owned());
            Ok(())
        });
        let stored = match found.filter(|_| ready) {
            Some(name) => SizeRule::parse(&name).ok_or_else(|| unknown(&name))?,
            None => Self::create_tables(&db, rule, unknown)?,
        };
        if let Some(asked) = rule {
            if asked != stored {
                return Err(Error::Storage(format!(
                    "{} uses the {} directory size rule and cannot be opened with {}; a store never mixes the two",
                    path.display(),
                    stored.name(),
                    asked.name()
                )));
            }
        }
        Ok(RedbDirectoryService {
            db: Arc::new(db),
            rule: stored,
            path: path.to_owned(),
        })
    }

    fn read(&self, digest: &B3Digest) -> Result<Option<Directory>, Error> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(DIRECTORIES).map_err(db_err)?;
        let Some(bytes) = table.get(digest.as_bytes().as_slice()).map_err(db_err)? else {
            return Ok(None);
        };
        verify(digest, bytes.value()).map(Some)
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Decodes stored bytes and checks they are the directory asked for.
fn verify(digest: &B3Digest, bytes: &[u8]) -> Result<Directory, Error> {
    let dir = Directory::decode(bytes).map_err(|e| Error::Integrity {
        digest: *digest,
        detail: format!("stored directory does not decode: {e}"),
    })?;
    let actual = dir.digest();
    if actual != *digest {
        return Err(Error::Integrity {
            digest: *digest,
            detail: format!("stored directory hashes to {actual}"),
        });
    }
    Ok(dir)
}

#[async_trait]
impl DirectoryService for RedbDirectoryService {
    async fn get(&self, digest: &B3Digest) -> Result<Option<Directory>, Error> {
        let this = self.clone();
        let digest = *digest;
        blocking(move || this.read(&digest)).await
    }

    fn get_recursive(&self, root: &B3Digest) -> BoxStream<'_, Result<Directory, Error>> {
        // One read transaction for the whole walk.
        let this = self.clone();
        let root = *root;
        let walk = blocking(move || {
            let txn = this.db.begin_read().map_err(db_err)?;
            let table = txn.open_table(DIRECTORIES).map_err(db_err)?;
            let mut out = Vec::new();
            let mut queue = std::collections::VecDeque::from([root]);
            let mut seen = std::collections::HashSet::from([root]);
            while let Some(d) = queue.pop_front() {
                let Some(bytes) = table.get(d.as_bytes().as_slice()).map_err(db_err)? else {
                    out.push(Err(Error::NotFound {
                        what: "directory",
                        digest: d,
                    }));
                    break;
                };
                let dir = match verify(&d, bytes.value()) {
                    Ok(dir) => dir,
                    Err(e) => {
                        out.push(Err(e));
                        break;
                    }
                };
                for (_, child, _) in dir.subdirectories() {
                    if seen.insert(*child) {
                        queue.push_back(*child);
                    }
                }
                out.push(Ok(dir));
            }
            Ok(out)
        });
        futures::stream::once(walk)
            .flat_map(|r| match r {
                Ok(items) => futures::stream::iter(items).boxed(),
                Err(e) => futures::stream::iter(vec![Err(e)]).boxed(),
            })
            .boxed()
    }

    fn put_multiple_start(&self) -> Box<dyn DirectoryPutter + '_> {
        Box::new(RedbPutter {
            service: self.clone(),
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
        let db = self.db.clone();
        let live = live.clone();
        blocking(move || {
            // One write transaction: the sweep is all or nothing.
            let txn = db.begin_write().map_err(db_err)?;
            let mut report = crate::gc::GcReport::default();
            {
                let mut table = txn.open_table(DIRECTORIES).map_err(db_err)?;
                let mut written = txn.open_table(WRITTEN).map_err(db_err)?;
                let mut dead: Vec<Vec<u8>> = Vec::new();
                for row in table.iter().map_err(db_err)? {
                    let (k, v) = row.map_err(db_err)?;
                    let is_live = B3Digest::try_from(k.value()).is_ok_and(|d| live.contains(&d));
                    let when = written.get(k.value()).map_err(db_err)?.map(|t| t.value());
                    if is_live {
                        report.live += 1;
                    } else if when.is_some_and(|t| keep.keeps_unix_secs(t)) {
                        report.young += 1;
                    } else {
                        report.deleted += 1;
                        report.deleted_bytes += v.value().len() as u64;
                        dead.push(k.value().to_vec());
                    }
                }
                if !dry_run {
                    for k in &dead {
                        table.remove(k.as_slice()).map_err(db_err)?;
                        written.remove(k.as_slice()).map_err(db_err)?;
                    }
                }
            }
            if dry_run {
                txn.abort().map_err(db_err)?;
            } else {
                txn.commit().map_err(db_err)?;
            }
            Ok(report)
        })
        .await
    }

    async fn written_within(&self, keep: crate::gc::KeepYoung) -> Result<Vec<B3Digest>, Error> {
        if keep == crate::gc::KeepYoung::NOTHING {
            return Ok(Vec::new());
        }
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_read().map_err(db_err)?;
            let written = txn.open_table(WRITTEN).map_err(db_err)?;
            let mut out = Vec::new();
            for row in written.iter().map_err(db_err)? {
                let (k, t) = row.map_err(db_err)?;
                if keep.keeps_unix_secs(t.value()) {
                    if let Ok(d) = B3Digest::try_from(k.value()) {
                        out.push(d);
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn verify_all(&self) -> Result<crate::blobservice::VerifyReport, Error> {
        let db = self.db.clone();
        let rule = self.rule;
        blocking(move || {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(DIRECTORIES).map_err(db_err)?;
            let mut items = Vec::new();
            for row in table.iter().map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                let item = match B3Digest::try_from(k.value()) {
                    Ok(d) => verify(&d, v.value())
                        .map(|dir| (d, dir))
                        .map_err(|e| (format!("directory {d}"), e)),
                    Err(e) => Err(("directory key".to_owned(), Error::Storage(e.to_string()))),
                };
                items.push(item);
            }
            Ok(super::verify_directories(items.into_iter(), rule))
        })
        .await
    }
}

impl std::fmt::Debug for RedbDirectoryService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedbDirectoryService({})", self.path.display())
    }
}

struct RedbPutter {
    service: RedbDirectoryService,
    validator: ClosureValidator,
}

#[async_trait]
impl DirectoryPutter for RedbPutter {
    async fn put(&mut self, directory: Directory) -> Result<(), Error> {
        self.validator.add(directory)
    }

    async fn close(self: Box<Self>) -> Result<B3Digest, Error> {
        let (root, dirs) = self.validator.finish()?;
        let db = self.service.db.clone();
        blocking(move || {
            let now = unix_now();
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut table = txn.open_table(DIRECTORIES).map_err(db_err)?;
                let mut written = txn.open_table(WRITTEN).map_err(db_err)?;
                for (digest, dir) in &dirs {
                    let key = digest.as_bytes().as_slice();
                    table.insert(key, dir.encode().as_slice()).map_err(db_err)?;
                    written.insert(key, now).map_err(db_err)?;
                }
            }
            txn.commit().map_err(db_err)
        })
        .await?;
        Ok(root)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A database keeps the rule it was made with, whether it is opened
    /// again by reading (tables all there) or by completing its tables.
    #[test]
    fn a_database_keeps_its_size_rule_and_refuses_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("castore.redb");
        let made = RedbDirectoryService::open(&path, Some(SizeRule::TvixCompat)).unwrap();
        assert_eq!(made.size_rule(), SizeRule::TvixCompat);
        drop(made);

        let again = RedbDirectoryService::open(&path, None).unwrap();
        assert_eq!(again.size_rule(), SizeRule::TvixCompat);
        drop(again);
        let same = RedbDirectoryService::open(&path, Some(SizeRule::TvixCompat)).unwrap();
        drop(same);
        let Err(e) = RedbDirectoryService::open(&path, Some(SizeRule::Documented)) else {
            panic!("opened with the other size rule");
        };
        assert!(e.to_string().contains("never mixes"), "{e}");

        // A database whose tables an older Cairn never made gets them,
        // with the rule it already records.
        {
            let db = crate::embedded::open_redb(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.delete_table(WRITTEN).unwrap();
            txn.commit().unwrap();
        }
        let completed = RedbDirectoryService::open(&path, None).unwrap();
        assert_eq!(completed.size_rule(), SizeRule::TvixCompat);
    }
}
