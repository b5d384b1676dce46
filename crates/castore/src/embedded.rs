//! Opening the embedded redb databases of the on-disk default, shared by
//! the directory service here and the PathInfo service in the store crate.
//!
//! redb allows one process at a time per file. A second process waits for
//! the lock (logging once that it waits) and gives up with a clear "locked
//! by another cairn process" error after `CAIRN_LOCK_TIMEOUT` seconds
//! (default 60). Waiting rather than failing at once is what makes two
//! `cairn import` runs started together both succeed, one after the other.

use std::path::Path;
use std::time::{Duration, Instant};

use redb::{Database, DatabaseError};

use crate::Error;

/// Opens (creating if needed) the redb database at `path`, waiting for
/// another process to release it.
pub fn open_redb(path: &Path) -> Result<Database, Error> {
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
