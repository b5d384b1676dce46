//! A local store in front of a remote one: reads are served locally, and a
//! miss is filled from the remote first; writes go to the remote (the
//! store others share), and reach the local one when read back.
//!
//! Filling trusts nothing more than the remote client does: a blob is
//! streamed from the remote's verifying reader into a local writer that is
//! closed only if the whole read succeeded and named the digest asked for;
//! a directory closure is fetched with one recursive call and committed
//! locally through the local putter, which validates it as a whole. So a
//! lying remote leaves nothing in the local store under a false name.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use crate::blobservice::{copy_blob, BlobReader, BlobWriter, ChunkMeta};
use crate::directoryservice::{put_closure_map, DirectoryPutter};
use crate::{B3Digest, BlobService, Directory, DirectoryService, Error, SizeRule};

/// Blobs: local first, filled from the remote on a miss.
pub struct LayeredBlobService {
    local: Arc<dyn BlobService>,
    remote: Arc<dyn BlobService>,
}

impl LayeredBlobService {
    /// `local` in front of `remote`.
    pub fn new(local: Arc<dyn BlobService>, remote: Arc<dyn BlobService>) -> Self {
        LayeredBlobService { local, remote }
    }

    /// Copies a blob from the remote into the local store; false if the
    /// remote does not have it either.
    async fn fill(&self, digest: &B3Digest) -> Result<bool, Error> {
        let filled = copy_blob(self.remote.as_ref(), self.local.as_ref(), digest, |_| {})
            .await?
            .is_some();
        if filled {
            tracing::debug!(%digest, "blob filled from the remote");
        }
        Ok(filled)
    }
}

#[async_trait]
impl BlobService for LayeredBlobService {
    async fn has(&self, digest: &B3Digest) -> Result<bool, Error> {
        Ok(self.local.has(digest).await? || self.remote.has(digest).await?)
    }

    async fn open_read(&self, digest: &B3Digest) -> Result<Option<Box<dyn BlobReader>>, Error> {
        if let Some(r) = self.local.open_read(digest).await? {
            return Ok(Some(r));
        }
        if !self.fill(digest).await? {
            return Ok(None);
        }
        self.local.open_read(digest).await
    }

    async fn open_write(&self) -> Box<dyn BlobWriter> {
        self.remote.open_write().await
    }

    fn writer_buffer(&self) -> usize {
        self.remote.writer_buffer()
    }

    async fn put_many(&self, blobs: Vec<Bytes>) -> Result<Vec<B3Digest>, Error> {
        self.remote.put_many(blobs).await
    }

    async fn read_many(&self, wanted: &[(B3Digest, u64)]) -> Result<Vec<Option<Bytes>>, Error> {
        let mut found = self.local.read_many(wanted).await?;
        let missing: Vec<(B3Digest, u64)> = wanted
            .iter()
            .zip(&found)
            .filter(|(_, f)| f.is_none())
            .map(|(w, _)| *w)
            .collect();
        if missing.is_empty() {
            return Ok(found);
        }
        // Small blobs: fetched from the remote (which verifies them) and
        // stored locally in one batch.
        let fetched = self.remote.read_many(&missing).await?;
        let present: Vec<Bytes> = fetched.iter().flatten().cloned().collect();
        let stored = self.local.put_many(present).await?;
        let mut stored = stored.into_iter();
        let mut fetched = fetched.into_iter();
        for (slot, (d, _)) in found.iter_mut().zip(wanted) {
            if slot.is_some() {
                continue;
            }
            let Some(data) = fetched.next().flatten() else {
                continue;
            };
            if stored.next() != Some(*d) {
                return Err(Error::Integrity {
                    digest: *d,
                    detail: "the remote's bytes stored under another digest".into(),
                });
            }
            *slot = Some(data);
        }
        Ok(found)
    }

    async fn chunks(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        match self.local.chunks(digest).await? {
            Some(c) => Ok(Some(c)),
            None => self.remote.chunks(digest).await,
        }
    }

    async fn sync(&self) -> Result<(), Error> {
        self.local.sync().await?;
        self.remote.sync().await
    }
}

/// Directories: local first, whole closures filled from the remote.
pub struct LayeredDirectoryService {
    local: Arc<dyn DirectoryService>,
    remote: Arc<dyn DirectoryService>,
}

impl LayeredDirectoryService {
    /// `local` in front of `remote`. Both must use the same size rule.
    pub fn new(
        local: Arc<dyn DirectoryService>,
        remote: Arc<dyn DirectoryService>,
    ) -> Result<Self, Error> {
        if local.size_rule() != remote.size_rule() {
            return Err(Error::Storage(format!(
                "the local store uses the {} size rule and the remote the {}; they cannot be layered",
                local.size_rule().name(),
                remote.size_rule().name()
            )));
        }
        Ok(LayeredDirectoryService { local, remote })
    }

    /// Fetches the closure below `root` from the remote in one recursive
    /// call and commits it locally; false if the remote lacks `root`.
    async fn fill(&self, root: &B3Digest) -> Result<bool, Error> {
        let mut closure: HashMap<B3Digest, Directory> = HashMap::new();
        let mut stream = self.remote.get_recursive(root);
        loop {
            match stream.try_next().await {
                Ok(Some(d)) => {
                    closure.insert(d.digest(), d);
                }
                Ok(None) => break,
                Err(Error::NotFound { digest, .. }) if digest == *root => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        drop(stream);
        let n = put_closure_map(self.local.as_ref(), root, &closure).await?;
        tracing::debug!(%root, directories = n, "closure filled from the remote");
        Ok(true)
    }
}

#[async_trait]
impl DirectoryService for LayeredDirectoryService {
    async fn get(&self, digest: &B3Digest) -> Result<Option<Directory>, Error> {
        if let Some(d) = self.local.get(digest).await? {
            return Ok(Some(d));
        }
        if !self.fill(digest).await? {
            return Ok(None);
        }
        self.local.get(digest).await
    }

    fn get_recursive(&self, root: &B3Digest) -> BoxStream<'_, Result<Directory, Error>> {
        let root = *root;
        futures::stream::once(async move {
            // A closure is filled whole, so a root present locally has
            // every directory below it there too.
            if self.local.get(&root).await?.is_none() && !self.fill(&root).await? {
                return Err(Error::NotFound {
                    what: "directory",
                    digest: root,
                });
            }
            Ok(self.local.get_recursive(&root))
        })
        .try_flatten()
        .boxed()
    }

    fn put_multiple_start(&self) -> Box<dyn DirectoryPutter + '_> {
        self.remote.put_multiple_start()
    }

    fn size_rule(&self) -> SizeRule {
        self.local.size_rule()
    }
}
