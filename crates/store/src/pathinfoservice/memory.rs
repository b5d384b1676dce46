//! `memory://`: PathInfos in a hash map, for tests and short-lived processes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;

use super::{Error, PathInfoService};
use crate::PathInfo;

/// PathInfos held in memory.
#[derive(Clone, Default)]
pub struct MemoryPathInfoService {
    infos: Arc<RwLock<HashMap<[u8; 20], PathInfo>>>,
}

impl MemoryPathInfoService {
    /// An empty service.
    pub fn new() -> Self {
        Self::default()
    }
}

fn poisoned() -> Error {
    Error::Storage("memory path info map poisoned".into())
}

#[async_trait]
impl PathInfoService for MemoryPathInfoService {
    async fn get(&self, digest: &[u8; 20]) -> Result<Option<PathInfo>, Error> {
        Ok(self
            .infos
            .read()
            .map_err(|_| poisoned())?
            .get(digest)
            .cloned())
    }

    async fn put(&self, info: PathInfo) -> Result<PathInfo, Error> {
        let mut map = self.infos.write().map_err(|_| poisoned())?;
        map.insert(*info.store_path.digest(), info.clone());
        Ok(info)
    }

    fn list(&self) -> BoxStream<'_, Result<PathInfo, Error>> {
        let snapshot: Vec<Result<PathInfo, Error>> = match self.infos.read() {
            Ok(map) => map.values().cloned().map(Ok).collect(),
            Err(_) => vec![Err(poisoned())],
        };
        futures::stream::iter(snapshot).boxed()
    }
}
