//! Backends by address URL, so callers never name a concrete type. The
//! parsing helpers are public so the store crate's PathInfo addresses
//! follow the same rules.
//!
//! | address | blobs | directories |
//! | --- | --- | --- |
//! | `memory://` | in memory | in memory (`?size-rule=tvix-compat` optional) |
//! | `objects:///ABS/PATH[?compression=zstd]` | pack files + redb index on disk | — |
//! | `redb:///ABS/PATH.redb[?size-rule=tvix-compat]` | — | embedded redb database |

use std::path::PathBuf;
use std::sync::Arc;

use url::Url;

use crate::blobservice::{Compression, MemoryBlobService, ObjectsBlobService};
use crate::directoryservice::{MemoryDirectoryService, RedbDirectoryService};
use crate::{BlobService, DirectoryService, Error, SizeRule};

/// The error for an address refused for `reason`.
pub fn bad(addr: &str, reason: impl Into<String>) -> Error {
    Error::Address {
        addr: addr.to_owned(),
        reason: reason.into(),
    }
}

/// Parses an address URL.
pub fn parse(addr: &str) -> Result<Url, Error> {
    Url::parse(addr).map_err(|e| bad(addr, e.to_string()))
}

/// The absolute path of a `SCHEME:///absolute/path` address.
pub fn local_path(addr: &str, url: &Url) -> Result<PathBuf, Error> {
    if url.host_str().is_some_and(|h| !h.is_empty()) {
        return Err(bad(
            addr,
            "expected an absolute path: SCHEME:///absolute/path",
        ));
    }
    let path = url
        .to_file_path()
        .map_err(|()| bad(addr, "expected an absolute path: SCHEME:///absolute/path"))?;
    Ok(path)
}

fn option<'a>(url: &'a Url, key: &str) -> Option<std::borrow::Cow<'a, str>> {
    url.query_pairs().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// Refuses query options not in `known`.
pub fn check_options(addr: &str, url: &Url, known: &[&str]) -> Result<(), Error> {
    for (k, _) in url.query_pairs() {
        if !known.contains(&k.as_ref()) {
            return Err(bad(
                addr,
                format!("unknown option {k:?} (known: {})", known.join(", ")),
            ));
        }
    }
    Ok(())
}

/// The `size-rule` option of an address, if given.
pub fn size_rule(addr: &str, url: &Url) -> Result<Option<SizeRule>, Error> {
    option(url, "size-rule")
        .map(|v| {
            SizeRule::parse(&v).ok_or_else(|| {
                bad(
                    addr,
                    format!("size-rule must be documented or tvix-compat, not {v:?}"),
                )
            })
        })
        .transpose()
}

/// A blob service for `addr`.
pub fn blob_service_from_addr(addr: &str) -> Result<Arc<dyn BlobService>, Error> {
    let url = parse(addr)?;
    match url.scheme() {
        "memory" => {
            check_options(addr, &url, &[])?;
            Ok(Arc::new(MemoryBlobService::new()))
        }
        "objects" => {
            check_options(addr, &url, &["compression"])?;
            let compression = match option(&url, "compression").as_deref() {
                None | Some("none") => Compression::None,
                Some("zstd") => Compression::Zstd,
                Some(other) => {
                    return Err(bad(
                        addr,
                        format!("compression must be none or zstd, not {other:?}"),
                    ))
                }
            };
            Ok(Arc::new(ObjectsBlobService::open(
                &local_path(addr, &url)?,
                compression,
            )?))
        }
        other => Err(bad(
            addr,
            format!("no blob service for scheme {other:?} (try memory:// or objects:///PATH)"),
        )),
    }
}

/// A directory service for `addr`.
pub fn directory_service_from_addr(addr: &str) -> Result<Arc<dyn DirectoryService>, Error> {
    let url = parse(addr)?;
    match url.scheme() {
        "memory" => {
            check_options(addr, &url, &["size-rule"])?;
            Ok(Arc::new(MemoryDirectoryService::new(
                size_rule(addr, &url)?.unwrap_or_default(),
            )))
        }
        "redb" => {
            check_options(addr, &url, &["size-rule"])?;
            Ok(Arc::new(RedbDirectoryService::open(
                &local_path(addr, &url)?,
                size_rule(addr, &url)?,
            )?))
        }
        other => Err(bad(
            addr,
            format!("no directory service for scheme {other:?} (try memory:// or redb:///PATH)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_addresses_with_reasons() {
        for (addr, want) in [
            ("nonsense", "relative URL"),
            ("ftp://x", "no blob service"),
            ("objects://relative/path", "absolute path"),
            ("objects:///tmp/x?compression=lz4", "compression must be"),
            ("memory://?colour=red", "unknown option"),
        ] {
            let err = blob_service_from_addr(addr)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(want), "{addr}: {err}");
        }
        let err = directory_service_from_addr("memory://?size-rule=odd")
            .err()
            .map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("size-rule must be"));
    }
}
