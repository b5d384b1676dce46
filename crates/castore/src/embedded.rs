//! Opening the embedded redb databases of the on-disk default, shared by
//! the directory service here and the PathInfo service in the store crate.
//!
//! redb allows one process at a time per file. A second process waits for
//! the lock (logging once that it waits) and gives up with a clear "locked
//! by another cairn process" error after `CAIRN_LOCK_TIMEOUT` seconds
//! (default 60). Waiting rather than failing at once is what makes two
//! `cairn import` runs started together both succeed, one after the other.
//!
//! A new database is made whole under a temporary name and only then
//! linked in under its own: a process killed while redb writes a new
//! file's header must not leave a file that is not a database where the
//! store expects one (every later open would fail on it).

use std::path::Path;
use std::time::{Duration, Instant};

use redb::{Database, DatabaseError};

use crate::Error;

/// Opens (creating if needed) the redb database at `path`, waiting for
/// another process to release it.
pub fn open_redb(path: &Path) -> Result<Database, Error> {
    // Including one killed between linking its database into place and
    // removing the temporary name.
    if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
        remove_abandoned_creations(dir, name);
    }
    if !path.exists() {
        create_whole(path)?;
    }
    let timeout = std::env::var("CAIRN_LOCK_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(60), Duration::from_secs);
    let start = Instant::now();
    let mut warned = false;
    loop {
        match Database::create(path) {
            Ok(db) => return Ok(db),
            Err(DatabaseError::DatabaseAlreadyOpen) => {
                if start.elapsed() >= timeout {
                    return Err(Error::Storage(format!(
                        "{} is locked by another cairn process (gave up after {}s; set CAIRN_LOCK_TIMEOUT to wait longer)",
                        path.display(),
                        timeout.as_secs()
                    )));
                }
                if !warned {
                    tracing::warn!(
                        "{} is in use by another cairn process; waiting for it",
                        path.display()
                    );
                    warned = true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(Error::Storage(format!("database {}: {e}", path.display()))),
        }
    }
}

/// Whether every table `check` opens exists already, asked in a read
/// transaction: a process that finds its tables need not commit a write
/// (two fdatasyncs) just to create them. Any error reads as "no", and
/// the caller's write transaction then creates them or reports it.
pub fn tables_exist(
    db: &Database,
    check: impl FnOnce(&redb::ReadTransaction) -> Result<(), redb::TableError>,
) -> bool {
    use redb::ReadableDatabase;
    db.begin_read().is_ok_and(|txn| check(&txn).is_ok())
}

/// How old a creation's temporary file must be before another process
/// removes it: creating an empty database takes milliseconds, so one this
/// old was abandoned even where `/proc` cannot show its creator (another
/// pid namespace, `hidepid`, another host on a shared file system).
const ABANDONED_AFTER: Duration = Duration::from_secs(10 * 60);

/// Removes the temporary files of creations that a killed process left
/// behind (`.NAME.new-PID-TAG`): those older than [`ABANDONED_AFTER`]
/// whose pid, where `/proc` can tell, is gone.
fn remove_abandoned_creations(dir: &Path, name: &std::ffi::OsStr) {
    let proc_root = Path::new("/proc");
    let proc_known = proc_root.join("self").exists();
    let prefix = format!(".{}.new-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .map(|rest| rest.split_once('-').map_or(rest, |(pid, _)| pid))
            .filter(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= ABANDONED_AFTER);
        if old && !(proc_known && proc_root.join(pid).exists()) {
            tracing::debug!(
                "removing {}, left by a killed process",
                entry.path().display()
            );
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A new, empty file in `dir` for a creation to write in, named
/// `.NAME.new-PID-TAG` and made exclusively (pids repeat across
/// namespaces and hosts); its name is removed when the path is dropped.
fn creation_file(dir: &Path, name: &std::ffi::OsStr) -> std::io::Result<tempfile::NamedTempFile> {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .prefix(&format!(
            ".{}.new-{}-",
            name.to_string_lossy(),
            std::process::id()
        ))
        // As a database created in place would be (the umask applies).
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
}

/// Creates an empty database at `path` atomically: written and synced
/// under a temporary name, then hard-linked into place (which fails, and
/// is then fine, if another process got there first).
fn create_whole(path: &Path) -> Result<(), Error> {
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        Error::Storage(format!("database {}: {what}: {e}", path.display()))
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map_or_else(
        || std::ffi::OsString::from("db"),
        std::ffi::OsStr::to_os_string,
    );
    let (file, tmp) = creation_file(dir, &name)
        .map_err(|e| failed("cannot create a temporary file", &e))?
        .into_parts();
    let written = (|| {
        let backend =
            redb::backends::FileBackend::new(file).map_err(|e| failed("cannot create", &e))?;
        let db = Database::builder()
            .create_with_backend(backend)
            .map_err(|e| failed("cannot create", &e))?;
        let txn = db
            .begin_write()
            .map_err(|e| failed("cannot initialise", &e))?;
        txn.commit().map_err(|e| failed("cannot initialise", &e))
    })();
    written?;
    let linked = std::fs::hard_link(&tmp, path);
    // The temporary name goes either way.
    drop(tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(failed("cannot link into place", &e)),
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| failed("cannot sync its directory", &e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_new_database_appears_whole_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.redb");
        drop(open_redb(&path).unwrap());
        // Opens again as a database, and nothing else is left beside it.
        drop(open_redb(&path).unwrap());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("x.redb")]);
    }

    #[test]
    fn creation_sweeps_what_killed_creators_left_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        // A process that has exited and been reaped: its pid is free.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let left = |suffix: &str| dir.path().join(format!(".x.redb.new-{suffix}"));
        let backdate = |suffix: &str| {
            std::fs::File::options()
                .write(true)
                .open(left(suffix))
                .unwrap()
                .set_modified(std::time::SystemTime::now() - ABANDONED_AFTER * 2)
                .unwrap();
        };
        let old_dead = format!("{dead}-1f");
        let young_dead = format!("{dead}-2e");
        for suffix in [&old_dead, &young_dead, "1-3d", "backup"] {
            std::fs::write(left(suffix), b"half a header").unwrap();
        }
        for suffix in [&old_dead, "1-3d", "backup"] {
            backdate(suffix);
        }

        drop(open_redb(&dir.path().join("x.redb")).unwrap());
        assert!(!left(&old_dead).exists(), "a dead creator's file stays");
        // Young: its creator may live where /proc cannot show it.
        assert!(left(&young_dead).exists());
        // pid 1 is alive, and a name that is no pid is not ours to judge.
        assert!(left("1-3d").exists());
        assert!(left("backup").exists());

        // Also when the database itself was linked into place before the
        // kill, and under the pid-only names of earlier versions.
        for suffix in [old_dead.clone(), dead.to_string()] {
            std::fs::write(left(&suffix), b"a whole database").unwrap();
            backdate(&suffix);
            drop(open_redb(&dir.path().join("x.redb")).unwrap());
            assert!(!left(&suffix).exists(), "{suffix} stays");
        }
    }
}
