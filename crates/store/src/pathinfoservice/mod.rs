//! The PathInfoService trait and its backends.
//!
//! A PathInfo may only be put once everything its root node reaches is in
//! the blob and directory services (SPEC §2); backends store and return
//! PathInfos, callers (import, copy, the gRPC server) check that rule.

use async_trait::async_trait;
use futures::stream::BoxStream;
use thiserror::Error;

use crate::{PathInfo, PathInfoError};

mod layered;
mod memory;
mod redb;

pub use self::redb::RedbPathInfoService;
pub use layered::LayeredPathInfoService;
pub use memory::MemoryPathInfoService;

/// What can go wrong in a PathInfoService.
#[derive(Debug, Error)]
pub enum Error {
    /// A stored or received PathInfo is invalid.
    #[error("invalid PathInfo: {0}")]
    Invalid(#[from] PathInfoError),
    /// The backend's storage failed.
    #[error("storage: {0}")]
    Storage(String),
    /// A remote source (a binary cache) failed or sent what it may not.
    #[error("{0}")]
    Remote(String),
    /// This backend does not take writes.
    #[error("{0} is read-only")]
    ReadOnly(String),
    /// A castore-level failure (an address, an embedded database lock).
    #[error(transparent)]
    Castore(#[from] cairn_castore::Error),
}

/// Where PathInfos live, keyed by the 20-byte digest of their store path.
#[async_trait]
pub trait PathInfoService: Send + Sync {
    /// The PathInfo of the store path with this digest, if any.
    async fn get(&self, digest: &[u8; 20]) -> Result<Option<PathInfo>, Error>;
    /// Stores a PathInfo durably and returns it as stored (a backend may
    /// add signatures). Putting the same path again replaces its metadata.
    async fn put(&self, info: PathInfo) -> Result<PathInfo, Error>;
    /// Every stored PathInfo, in no particular order.
    fn list(&self) -> BoxStream<'_, Result<PathInfo, Error>>;
}
