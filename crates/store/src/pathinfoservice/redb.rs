//! `redb:///PATH`: PathInfos in an embedded redb database, keyed by the
//! 20-byte store path digest, stored as `tvix.store.v1.PathInfo` protobuf
//! bytes (the wire form, so nothing new to version).
//!
//! A file of its own rather than a table in the directory database: each
//! service stays one job with one address, and a PathInfo put never waits
//! behind a large directory closure commit. One process at a time, as
//! [`cairn_castore::embedded`] explains.

use std::path::Path;
use std::sync::Arc;

use ::redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use prost::Message;

use super::{Error, PathInfoService};
use crate::{proto, PathInfo};

const PATHINFOS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("pathinfos");

fn db_err(e: impl std::fmt::Display) -> Error {
    Error::Storage(format!("path info database: {e}"))
}

/// PathInfos in a redb file.
#[derive(Clone)]
pub struct RedbPathInfoService {
    db: Arc<Database>,
}

impl RedbPathInfoService {
    /// Opens or creates the database.
    pub fn open(path: &Path) -> Result<Self, Error> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(db_err)?;
        }
        let db = cairn_castore::embedded::open_redb(path)?;
        if !cairn_castore::embedded::tables_exist(&db, |txn| txn.open_table(PATHINFOS).map(drop)) {
            let txn = db.begin_write().map_err(db_err)?;
            txn.open_table(PATHINFOS).map_err(db_err)?;
            txn.commit().map_err(db_err)?;
        }
        Ok(RedbPathInfoService { db: Arc::new(db) })
    }
}

fn decode(key: &[u8], bytes: &[u8]) -> Result<PathInfo, Error> {
    let msg = proto::PathInfo::decode(bytes)
        .map_err(|e| db_err(format!("stored entry does not decode: {e}")))?;
    let info = PathInfo::try_from(msg)?;
    if info.store_path.digest().as_slice() != key {
        return Err(db_err(format!(
            "entry for {} is stored under another key",
            info.store_path
        )));
    }
    Ok(info)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Storage(format!("blocking task failed: {e}")))?
}

#[async_trait]
impl PathInfoService for RedbPathInfoService {
    async fn get(&self, digest: &[u8; 20]) -> Result<Option<PathInfo>, Error> {
        // A point read takes microseconds from redb's page cache, so it
        // runs right here: a hop to the blocking pool (thread wake-ups
        // both ways) cost more than the read and capped a binary cache's
        // narinfo rate. Only a cold page can make it wait on the disk.
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(PATHINFOS).map_err(db_err)?;
        match table.get(digest.as_slice()).map_err(db_err)? {
            Some(v) => decode(digest, v.value()).map(Some),
            None => Ok(None),
        }
    }

    async fn put(&self, info: PathInfo) -> Result<PathInfo, Error> {
        let db = self.db.clone();
        let bytes = info.to_proto().encode_to_vec();
        let key = *info.store_path.digest();
        blocking(move || {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut table = txn.open_table(PATHINFOS).map_err(db_err)?;
                table
                    .insert(key.as_slice(), bytes.as_slice())
                    .map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
        .await?;
        Ok(info)
    }

    fn list(&self) -> BoxStream<'_, Result<PathInfo, Error>> {
        // One read transaction; entries are decoded in batches off the
        // async threads so a large store streams without blocking them.
        let db = self.db.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<PathInfo, Error>>(256);
        tokio::task::spawn_blocking(move || {
            let send_all = || -> Result<(), Error> {
                let txn = db.begin_read().map_err(db_err)?;
                let table = txn.open_table(PATHINFOS).map_err(db_err)?;
                for item in table.iter().map_err(db_err)? {
                    let (k, v) = item.map_err(db_err)?;
                    if tx.blocking_send(decode(k.value(), v.value())).is_err() {
                        return Ok(()); // the caller stopped listening
                    }
                }
                Ok(())
            };
            if let Err(e) = send_all() {
                let _ = tx.blocking_send(Err(e));
            }
        });
        futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
        .boxed()
    }
}
