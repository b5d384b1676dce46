//! NAR size and sha256 of a castore node, as `CalculateNAR` answers and as
//! a PathInfo for a node records: rendered and hashed, then remembered.
//!
//! A service of its own, not a PathInfoService method: computing needs the
//! blob and directory services, which PathInfo storage does not have. A
//! result depends only on the node (a Merkle root), so the cache never
//! goes stale; it is bounded and forgets arbitrarily when full.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_trait::async_trait;
use cairn_castore::{BlobService, DirectoryService, Node};
use cairn_nix::hash::{HashAlgo, Hasher};
use tokio::io::AsyncWrite;

use crate::render::{write_nar, RenderError};

/// Computes NAR sizes and hashes of nodes.
#[async_trait]
pub trait NarCalculationService: Send + Sync {
    /// The NAR size and sha256 of `root`.
    async fn calculate_nar(&self, root: &Node) -> Result<(u64, [u8; 32]), RenderError>;
}

/// Results remembered at most.
const CACHE_ENTRIES: usize = 4096;

/// Renders from castore and hashes, with a cache.
pub struct CastoreNarCalculator {
    blobs: Arc<dyn BlobService>,
    dirs: Arc<dyn DirectoryService>,
    cache: Mutex<HashMap<Node, (u64, [u8; 32])>>,
}

impl CastoreNarCalculator {
    /// A calculator over these services.
    pub fn new(blobs: Arc<dyn BlobService>, dirs: Arc<dyn DirectoryService>) -> Self {
        CastoreNarCalculator {
            blobs,
            dirs,
            cache: Mutex::new(HashMap::new()),
        }
    }
}

/// An `AsyncWrite` that hashes and counts.
struct HashSink {
    hasher: Hasher,
    len: u64,
}

impl AsyncWrite for HashSink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.hasher.update(buf);
        self.len += buf.len() as u64;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[async_trait]
impl NarCalculationService for CastoreNarCalculator {
    async fn calculate_nar(&self, root: &Node) -> Result<(u64, [u8; 32]), RenderError> {
        if let Some(hit) = self.cache.lock().ok().and_then(|c| c.get(root).copied()) {
            return Ok(hit);
        }
        let sink = HashSink {
            hasher: Hasher::new(HashAlgo::Sha256),
            len: 0,
        };
        let sink = write_nar(sink, self.blobs.as_ref(), self.dirs.as_ref(), root).await?;
        let sha = sink
            .hasher
            .finish()
            .sha256_bytes()
            .map_err(|e| cairn_castore::Error::Storage(format!("NAR hash: {e}")))?;
        let result = (sink.len, sha);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(root.clone(), result);
        }
        Ok(result)
    }
}
