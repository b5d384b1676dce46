//! Object-store addresses. Every other scheme is someone else's: these
//! functions answer `None` for it, so a dispatcher can try them first.
//!
//! | address | where |
//! | --- | --- |
//! | `objectstore+file:///ABS/PATH` | the bucket layout in a local directory (created if missing) |
//! | `objectstore+memory://` | in memory, for tests (each address a new, empty store) |
//!
//! Options: `?prefix=P` puts every key under `P/` (several stores in one
//! bucket); blob addresses take `?compression=zstd` (chunks are stored
//! compressed; either kind is read back); directory addresses take
//! `?size-rule=tvix-compat` (recorded in the bucket on first write, and
//! a bucket refuses writes under the other rule).

use std::sync::Arc;

use cairn_castore::addr::{bad, check_options, local_path, parse, size_rule};
use cairn_castore::{BlobService, DirectoryService, Error};
use cairn_store::PathInfoService;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::ObjectStore;
use url::Url;

use crate::{Layout, ObjectBlobService, ObjectDirectoryService, ObjectPathInfoService};

/// What an `objectstore+…` address names: the store, the key layout in
/// it, and the parsed address (for its other options).
struct Opened {
    store: Arc<dyn ObjectStore>,
    layout: Layout,
    url: Url,
}

/// The store and key layout an `objectstore+…` address names, or `None`
/// for another scheme.
fn open(addr: &str, extra: &[&str]) -> Result<Option<Opened>, Error> {
    let url = parse(addr)?;
    let Some(kind) = url.scheme().strip_prefix("objectstore+") else {
        return Ok(None);
    };
    let mut known = vec!["prefix"];
    known.extend_from_slice(extra);
    check_options(addr, &url, &known)?;
    let prefix = url
        .query_pairs()
        .find(|(k, _)| k == "prefix")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let store: Arc<dyn ObjectStore> = match kind {
        "file" => {
            let root = local_path(addr, &url)?;
            std::fs::create_dir_all(&root)
                .map_err(|e| bad(addr, format!("cannot create {}: {e}", root.display())))?;
            Arc::new(
                LocalFileSystem::new_with_prefix(&root)
                    .map_err(|e| bad(addr, e.to_string()))?
                    // Uploads land in a temporary file renamed into place:
                    // a crash leaves no partial object.
                    .with_automatic_cleanup(true),
            )
        }
        "memory" => Arc::new(InMemory::new()),
        other => {
            return Err(bad(
                addr,
                format!(
                "unknown object store {other:?}: expected objectstore+file or objectstore+memory"
            ),
            ))
        }
    };
    Ok(Some(Opened {
        store,
        layout: Layout::new(&prefix),
        url,
    }))
}

/// A blob service for an `objectstore+…` address, `None` for another.
pub fn blob_service_from_addr(addr: &str) -> Result<Option<Arc<dyn BlobService>>, Error> {
    let Some(Opened { store, layout, url }) = open(addr, &["compression"])? else {
        return Ok(None);
    };
    let zstd = match url.query_pairs().find(|(k, _)| k == "compression") {
        None => false,
        Some((_, v)) if v == "zstd" => true,
        Some((_, v)) if v == "none" => false,
        Some((_, v)) => {
            return Err(bad(
                addr,
                format!("compression must be zstd or none, not {v:?}"),
            ))
        }
    };
    Ok(Some(Arc::new(ObjectBlobService::new(store, layout, zstd))))
}

/// A directory service for an `objectstore+…` address, `None` for another.
pub fn directory_service_from_addr(addr: &str) -> Result<Option<Arc<dyn DirectoryService>>, Error> {
    let Some(Opened { store, layout, url }) = open(addr, &["size-rule"])? else {
        return Ok(None);
    };
    let rule = size_rule(addr, &url)?.unwrap_or_default();
    Ok(Some(Arc::new(ObjectDirectoryService::new(
        store, layout, rule,
    ))))
}

/// A PathInfo service for an `objectstore+…` address, `None` for another.
pub fn path_info_service_from_addr(addr: &str) -> Result<Option<Arc<dyn PathInfoService>>, Error> {
    let Some(Opened { store, layout, .. }) = open(addr, &[])? else {
        return Ok(None);
    };
    Ok(Some(Arc::new(ObjectPathInfoService::new(store, layout))))
}
