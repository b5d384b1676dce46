//! PathInfo service addresses including binary caches: `nix+http://`,
//! `nix+https://` and `nix+file:///` (see [`crate::cache`]) on top of
//! everything cairn-grpc resolves, also as a layer of `layered://`
//! (`layered://?local=redb:///…&remote=nix+https://cache.nixos.org?…`
//! substitutes on demand and keeps what it fetched).
//!
//! A binary cache holds NARs, not castore objects, so its service needs
//! the blob and directory services to ingest into.

use std::sync::Arc;

use cairn_castore::{BlobService, DirectoryService};
use cairn_store::pathinfoservice::{Error, LayeredPathInfoService};
use cairn_store::PathInfoService;

use crate::cache::{is_cache_addr, NixCache};

/// A PathInfo service for `addr`; a binary cache ingests into `blobs`
/// and `dirs`.
pub fn path_info_service_from_addr(
    addr: &str,
    blobs: &Arc<dyn BlobService>,
    dirs: &Arc<dyn DirectoryService>,
) -> Result<Arc<dyn PathInfoService>, Error> {
    if let Some((local, remote)) = cairn_grpc::addr::layers(addr)? {
        return Ok(Arc::new(LayeredPathInfoService::new(
            path_info_service_from_addr(&local, blobs, dirs)?,
            path_info_service_from_addr(&remote, blobs, dirs)?,
        )));
    }
    if is_cache_addr(addr) {
        return Ok(Arc::new(NixCache::from_addr(
            addr,
            blobs.clone(),
            dirs.clone(),
        )?));
    }
    cairn_grpc::addr::path_info_service_from_addr(addr)
}
