//! The NAR URLs uploaders chose. `nix copy --to` names a NAR after the
//! hash of its compressed bytes (`nar/FILEHASH.nar.xz`) and keeps the
//! narinfo it uploaded in its own narinfo cache for weeks, so a later
//! substitution on that machine asks for that URL, not the one this
//! server's narinfos give. Each accepted upload's URL is therefore
//! recorded with the path and the compression the uploader used, and
//! served by rendering the path's NAR compressed the same way.
//!
//! Recorded in `nar-urls.redb` in the server's state directory, or in
//! memory when there is none. Local to one server: a front end that did
//! not receive the upload answers such a URL with 404, and Nix then
//! fetches the narinfo afresh.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use redb::{Database, ReadableDatabase, TableDefinition};

use crate::server::ServedCompression;

const URLS: TableDefinition<&str, &str> = TableDefinition::new("nar_urls");

/// Where a NAR URL leads: the path's hash part, its NAR hash
/// (nixbase32) and the compression to serve it with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NarTarget {
    pub(crate) hash_part: String,
    pub(crate) nar_hash: String,
    pub(crate) compression: ServedCompression,
}

impl NarTarget {
    fn encode(&self) -> String {
        format!(
            "{} {} {}",
            self.hash_part,
            self.nar_hash,
            self.compression.name()
        )
    }

    fn decode(s: &str) -> Option<Self> {
        let mut parts = s.split(' ');
        let (hash_part, nar_hash, compression) = (parts.next()?, parts.next()?, parts.next()?);
        Some(NarTarget {
            hash_part: hash_part.to_owned(),
            nar_hash: nar_hash.to_owned(),
            compression: compression.parse().ok()?,
        })
    }
}

/// Why the table failed.
#[derive(Debug, thiserror::Error)]
#[error("uploaded NAR URL table: {0}")]
pub(crate) struct NarUrlsError(String);

fn err(e: impl std::fmt::Display) -> NarUrlsError {
    NarUrlsError(e.to_string())
}

pub(crate) enum NarUrls {
    Disk(Database),
    Memory(Mutex<HashMap<String, String>>),
}

impl NarUrls {
    pub(crate) fn open(path: &Path) -> Result<Self, NarUrlsError> {
        let db = cairn_castore::embedded::open_redb(path).map_err(err)?;
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(URLS).map_err(err)?;
        txn.commit().map_err(err)?;
        Ok(NarUrls::Disk(db))
    }

    pub(crate) fn in_memory() -> Self {
        NarUrls::Memory(Mutex::new(HashMap::new()))
    }

    pub(crate) fn record(&self, url: &str, nar: &NarTarget) -> Result<(), NarUrlsError> {
        match self {
            NarUrls::Disk(db) => {
                let txn = db.begin_write().map_err(err)?;
                txn.open_table(URLS)
                    .map_err(err)?
                    .insert(url, nar.encode().as_str())
                    .map_err(err)?;
                txn.commit().map_err(err)
            }
            NarUrls::Memory(map) => {
                map.lock()
                    .map_err(err)?
                    .insert(url.to_owned(), nar.encode());
                Ok(())
            }
        }
    }

    pub(crate) fn lookup(&self, url: &str) -> Result<Option<NarTarget>, NarUrlsError> {
        let found = match self {
            NarUrls::Disk(db) => {
                let txn = db.begin_read().map_err(err)?;
                let table = txn.open_table(URLS).map_err(err)?;
                table.get(url).map_err(err)?.map(|v| v.value().to_owned())
            }
            NarUrls::Memory(map) => map.lock().map_err(err)?.get(url).cloned(),
        };
        Ok(found.and_then(|s| NarTarget::decode(&s)))
    }
}
