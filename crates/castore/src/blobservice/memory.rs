//! `memory://`: blobs in a hash map, for tests and short-lived processes.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use super::{BlobReader, BlobService, BlobWriter, ChunkMeta};
use crate::{B3Digest, Error};

/// A blob and when it was last written, for garbage collection's grace.
struct Stored {
    data: Bytes,
    written: SystemTime,
}

/// Blobs held in memory, whole (no chunking).
#[derive(Clone, Default)]
pub struct MemoryBlobService {
    blobs: Arc<RwLock<HashMap<B3Digest, Stored>>>,
}

impl MemoryBlobService {
    /// An empty service.
    pub fn new() -> Self {
        Self::default()
    }

    fn get(&self, digest: &B3Digest) -> Result<Option<Bytes>, Error> {
        let map = self
            .blobs
            .read()
            .map_err(|_| Error::Storage("memory blob map poisoned".into()))?;
        Ok(map.get(digest).map(|s| s.data.clone()))
    }
}

#[async_trait]
impl BlobService for MemoryBlobService {
    async fn has(&self, digest: &B3Digest) -> Result<bool, Error> {
        Ok(self.get(digest)?.is_some())
    }

    async fn open_read(&self, digest: &B3Digest) -> Result<Option<Box<dyn BlobReader>>, Error> {
        Ok(self
            .get(digest)?
            .map(|b| Box::new(Cursor::new(b)) as Box<dyn BlobReader>))
    }

    async fn open_write(&self) -> Box<dyn BlobWriter> {
        Box::new(MemoryBlobWriter {
            blobs: self.blobs.clone(),
            data: Vec::new(),
        })
    }

    async fn chunks(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        Ok(self.get(digest)?.map(|_| Vec::new()))
    }

    async fn collect_garbage(
        &self,
        live: &std::collections::HashSet<B3Digest>,
        keep: crate::gc::KeepYoung,
        dry_run: bool,
    ) -> Result<crate::gc::GcReport, Error> {
        let mut map = self
            .blobs
            .write()
            .map_err(|_| Error::Storage("memory blob map poisoned".into()))?;
        let mut report = crate::gc::GcReport::default();
        map.retain(|digest, stored| {
            if live.contains(digest) {
                report.live += 1;
                return true;
            }
            if keep.keeps(stored.written) {
                report.young += 1;
                return true;
            }
            report.deleted += 1;
            report.deleted_bytes += stored.data.len() as u64;
            dry_run
        });
        Ok(report)
    }

    async fn verify_all(&self) -> Result<super::VerifyReport, Error> {
        let map = self
            .blobs
            .read()
            .map_err(|_| Error::Storage("memory blob map poisoned".into()))?;
        let mut report = super::VerifyReport::default();
        for (digest, data) in map.iter() {
            report.checked += 1;
            if B3Digest::of(&data.data) != *digest {
                report
                    .problems
                    .push(format!("blob {digest}: contents do not match"));
            }
        }
        Ok(report)
    }
}

struct MemoryBlobWriter {
    blobs: Arc<RwLock<HashMap<B3Digest, Stored>>>,
    data: Vec<u8>,
}

#[async_trait]
impl BlobWriter for MemoryBlobWriter {
    async fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        self.data.extend_from_slice(data);
        Ok(())
    }

    async fn close(self: Box<Self>) -> Result<B3Digest, Error> {
        let MemoryBlobWriter { blobs, data } = *self;
        let digest = B3Digest::of(&data);
        let mut map = blobs
            .write()
            .map_err(|_| Error::Storage("memory blob map poisoned".into()))?;
        let now = SystemTime::now();
        map.entry(digest)
            .and_modify(|s| s.written = now)
            .or_insert_with(|| Stored {
                data: Bytes::from(data),
                written: now,
            });
        Ok(digest)
    }
}
