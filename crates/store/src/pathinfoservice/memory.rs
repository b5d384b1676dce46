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

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_castore::{B3Digest, Node};
    use cairn_nix::StorePath;
    use futures::TryStreamExt;

    fn info(base: &str) -> PathInfo {
        PathInfo {
            store_path: StorePath::from_base_name(base).unwrap(),
            node: Node::Directory {
                digest: B3Digest::empty(),
                size: 0,
            },
            references: vec![],
            nar_size: 112,
            nar_sha256: [1; 32],
            signatures: vec![],
            deriver: None,
            ca: None,
        }
    }

    #[tokio::test]
    async fn put_get_list_and_replace() {
        let s = MemoryPathInfoService::new();
        let a = info("8sfqrcf48xfcqw4gy961lab11cskjy38-a");
        let b = info("0sfqrcf48xfcqw4gy961lab11cskjy38-b");
        assert!(s.get(a.store_path.digest()).await.unwrap().is_none());
        assert_eq!(s.put(a.clone()).await.unwrap(), a);
        s.put(b.clone()).await.unwrap();
        assert_eq!(s.get(a.store_path.digest()).await.unwrap(), Some(a.clone()));
        let mut listed: Vec<PathInfo> = s.list().try_collect().await.unwrap();
        listed.sort_by_key(|i| i.store_path.base_name());
        assert_eq!(listed, vec![b, a.clone()]);
        // A second put of the same path replaces its metadata.
        let mut a2 = a.clone();
        a2.signatures
            .push(cairn_nix::Signature::from_parts("k-1", [3; 64]));
        s.put(a2.clone()).await.unwrap();
        assert_eq!(s.get(a.store_path.digest()).await.unwrap(), Some(a2));
    }
}
