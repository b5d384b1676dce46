//! PathInfos: local first, copied from the remote on a miss; puts go to
//! the remote (the store others share) and are remembered locally.
//!
//! A PathInfo remembered locally says nothing about its tree being local:
//! the layered castore services fill blobs and directories when they are
//! read.

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;

use super::{Error, PathInfoService};
use crate::PathInfo;

/// A local PathInfo service in front of a remote one.
pub struct LayeredPathInfoService {
    local: Arc<dyn PathInfoService>,
    remote: Arc<dyn PathInfoService>,
}

impl LayeredPathInfoService {
    /// `local` in front of `remote`.
    pub fn new(local: Arc<dyn PathInfoService>, remote: Arc<dyn PathInfoService>) -> Self {
        LayeredPathInfoService { local, remote }
    }
}

#[async_trait]
impl PathInfoService for LayeredPathInfoService {
    async fn get(&self, digest: &[u8; 20]) -> Result<Option<PathInfo>, Error> {
        if let Some(info) = self.local.get(digest).await? {
            return Ok(Some(info));
        }
        let Some(info) = self.remote.get(digest).await? else {
            return Ok(None);
        };
        self.local.put(info.clone()).await?;
        Ok(Some(info))
    }

    async fn put(&self, info: PathInfo) -> Result<PathInfo, Error> {
        let stored = self.remote.put(info).await?;
        self.local.put(stored.clone()).await?;
        Ok(stored)
    }

    fn list(&self) -> BoxStream<'_, Result<PathInfo, Error>> {
        self.remote.list()
    }
}
