//! [`ObjectPathInfoService`]: one object per store path, its PathInfo
//! message, keyed by the path's hash part (`PREFIX/pathinfo/HASH`).
//!
//! A PathInfo is what makes a store path visible, so it is written last:
//! the store writes every blob and directory it reaches first, and those
//! become visible only when complete (see the blob and directory
//! services). A PathInfo read back must decode, validate and name the key
//! it is stored under.

use std::sync::Arc;

use async_trait::async_trait;
use cairn_nix::nixbase32;
use cairn_store::pathinfoservice::Error;
use cairn_store::{proto, PathInfo, PathInfoService};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use prost::Message;

use crate::blobs::get_opt;
use crate::layout::{Layout, PATHINFOS};

/// PathInfos a listing fetches at once.
const WINDOW: usize = 16;

fn storage(key: &Path, e: impl std::fmt::Display) -> Error {
    Error::Storage(format!("object {key}: {e}"))
}

/// PathInfos in an object store.
#[derive(Clone)]
pub struct ObjectPathInfoService {
    store: Arc<dyn ObjectStore>,
    layout: Layout,
}

impl ObjectPathInfoService {
    /// PathInfos in `store` under `layout`.
    pub fn new(store: Arc<dyn ObjectStore>, layout: Layout) -> Self {
        ObjectPathInfoService { store, layout }
    }

    fn key(&self, digest: &[u8; 20]) -> Path {
        self.layout.kind(PATHINFOS).join(nixbase32::encode(digest))
    }

    async fn fetch(&self, key: Path) -> Result<Option<PathInfo>, Error> {
        let Some(raw) = get_opt(self.store.as_ref(), &key).await? else {
            return Ok(None);
        };
        let msg = proto::PathInfo::decode(raw)
            .map_err(|e| storage(&key, format!("does not decode: {e}")))?;
        let info = PathInfo::try_from(msg)?;
        if self.key(info.store_path.digest()) != key {
            return Err(storage(
                &key,
                format!("holds the PathInfo of {}", info.store_path),
            ));
        }
        Ok(Some(info))
    }
}

#[async_trait]
impl PathInfoService for ObjectPathInfoService {
    async fn get(&self, digest: &[u8; 20]) -> Result<Option<PathInfo>, Error> {
        self.fetch(self.key(digest)).await
    }

    async fn put(&self, info: PathInfo) -> Result<PathInfo, Error> {
        let key = self.key(info.store_path.digest());
        self.store
            .put(&key, PutPayload::from(info.to_proto().encode_to_vec()))
            .await
            .map_err(|e| storage(&key, e))?;
        Ok(info)
    }

    fn list(&self) -> BoxStream<'_, Result<PathInfo, Error>> {
        let prefix = self.layout.kind(PATHINFOS);
        self.store
            .list(Some(&prefix))
            .map_err(move |e| storage(&self.layout.kind(PATHINFOS), e))
            .map_ok(move |meta| async move { self.fetch(meta.location).await })
            .try_buffered(WINDOW)
            // Gone between listing and fetching: deleted meanwhile.
            .try_filter_map(|info| async move { Ok(info) })
            .boxed()
    }
}
