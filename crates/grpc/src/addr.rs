//! Service addresses including remote daemons. Local schemes are handed
//! to cairn-castore and cairn-store, `objectstore+…` ones to
//! cairn-objectstore; this module adds:
//!
//! | address | meaning |
//! | --- | --- |
//! | `grpc+http://HOST:PORT` | a daemon over TCP |
//! | `grpc+unix:///ABS/PATH` | a daemon on a Unix socket |
//!
//! | `layered://?local=ADDR&remote=ADDR` | `local` in front of `remote`: reads filled from the remote on a miss, writes to the remote |
//!
//! Options: `?dialect=snix` speaks the `snix.*` package names instead of
//! `tvix.*`; directory addresses take `?size-rule=tvix-compat` (the rule
//! the daemon's store uses, which the client checks closures with). The
//! inner addresses of `layered://` are written as they are (a `+` stays a
//! `+`), except that their own `&` and `%` are percent-encoded (`%26`,
//! `%25`): the outer query is percent-decoded once.

use std::sync::Arc;

use cairn_castore::addr::{bad, check_options, local_path, parse, size_rule};
use cairn_castore::layered::{LayeredBlobService, LayeredDirectoryService};
use cairn_castore::{BlobService, DirectoryService, Error};
use cairn_store::pathinfoservice::LayeredPathInfoService;
use cairn_store::PathInfoService;
use url::Url;

use crate::client::{GrpcBlobService, GrpcDirectoryService, GrpcPathInfoService};
use crate::transport::{Connection, Location};
use crate::Dialect;

/// Where a `grpc+…` address points, or `None` for another scheme.
pub fn grpc_location(addr: &str) -> Result<Option<(Location, Url)>, Error> {
    let url = parse(addr)?;
    let location = match url.scheme() {
        "grpc+http" => {
            let host = url
                .host_str()
                .filter(|h| !h.is_empty())
                .ok_or_else(|| bad(addr, "expected grpc+http://HOST:PORT"))?;
            let port = url.port().ok_or_else(|| {
                bad(
                    addr,
                    "expected grpc+http://HOST:PORT (the port is required)",
                )
            })?;
            if !matches!(url.path(), "" | "/") {
                return Err(bad(addr, "expected grpc+http://HOST:PORT, with no path"));
            }
            Location::Tcp(format!("{host}:{port}"))
        }
        "grpc+unix" => Location::Unix(local_path(addr, &url)?),
        _ => return Ok(None),
    };
    Ok(Some((location, url)))
}

fn dialect(addr: &str, url: &Url) -> Result<Dialect, Error> {
    match url.query_pairs().find(|(k, _)| k == "dialect") {
        None => Ok(Dialect::Tvix),
        Some((_, v)) if v == "tvix" => Ok(Dialect::Tvix),
        Some((_, v)) if v == "snix" => Ok(Dialect::Snix),
        Some((_, v)) => Err(bad(
            addr,
            format!("dialect must be tvix or snix, not {v:?}"),
        )),
    }
}

fn connection(addr: &str, location: Location, url: &Url) -> Result<Arc<Connection>, Error> {
    Ok(Arc::new(Connection::new(location, dialect(addr, url)?)))
}

/// The `local` and `remote` addresses of a `layered://` address, or `None`
/// for another scheme.
pub fn layers(addr: &str) -> Result<Option<(String, String)>, Error> {
    let url = parse(addr)?;
    if url.scheme() != "layered" {
        return Ok(None);
    }
    check_options(addr, &url, &["local", "remote"])?;
    // A literal `+` is kept, not read as a space as HTML forms would:
    // inner addresses are full of them (`grpc+http://`, `objectstore+s3://`).
    let query = url.query().unwrap_or_default().replace('+', "%2B");
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let get = |key: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| bad(addr, format!("layered:// needs {key}=ADDR")))
    };
    Ok(Some((get("local")?, get("remote")?)))
}

/// A blob service for `addr`: a daemon, layers, or any local backend.
pub fn blob_service_from_addr(addr: &str) -> Result<Arc<dyn BlobService>, Error> {
    if let Some((local, remote)) = layers(addr)? {
        return Ok(Arc::new(LayeredBlobService::new(
            blob_service_from_addr(&local)?,
            blob_service_from_addr(&remote)?,
        )));
    }
    match grpc_location(addr)? {
        Some((location, url)) => {
            check_options(addr, &url, &["dialect"])?;
            Ok(Arc::new(GrpcBlobService::new(connection(
                addr, location, &url,
            )?)))
        }
        None => match cairn_objectstore::addr::blob_service_from_addr(addr)? {
            Some(service) => Ok(service),
            None => cairn_castore::addr::blob_service_from_addr(addr),
        },
    }
}

/// A directory service for `addr`: a daemon, layers, or any local backend.
pub fn directory_service_from_addr(addr: &str) -> Result<Arc<dyn DirectoryService>, Error> {
    if let Some((local, remote)) = layers(addr)? {
        return Ok(Arc::new(LayeredDirectoryService::new(
            directory_service_from_addr(&local)?,
            directory_service_from_addr(&remote)?,
        )?));
    }
    match grpc_location(addr)? {
        Some((location, url)) => {
            check_options(addr, &url, &["dialect", "size-rule"])?;
            let rule = size_rule(addr, &url)?.unwrap_or_default();
            Ok(Arc::new(GrpcDirectoryService::new(
                connection(addr, location, &url)?,
                rule,
            )))
        }
        None => match cairn_objectstore::addr::directory_service_from_addr(addr)? {
            Some(service) => Ok(service),
            None => cairn_castore::addr::directory_service_from_addr(addr),
        },
    }
}

/// A PathInfo service for `addr`: a daemon, layers, or any local backend.
pub fn path_info_service_from_addr(
    addr: &str,
) -> Result<Arc<dyn PathInfoService>, cairn_store::pathinfoservice::Error> {
    if let Some((local, remote)) = layers(addr)? {
        return Ok(Arc::new(LayeredPathInfoService::new(
            path_info_service_from_addr(&local)?,
            path_info_service_from_addr(&remote)?,
        )));
    }
    match grpc_location(addr)? {
        Some((location, url)) => {
            check_options(addr, &url, &["dialect"])?;
            Ok(Arc::new(GrpcPathInfoService::new(connection(
                addr, location, &url,
            )?)))
        }
        None => match cairn_objectstore::addr::path_info_service_from_addr(addr)? {
            Some(service) => Ok(service),
            None => cairn_store::addr::path_info_service_from_addr(addr),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_addresses_parse_or_say_why_not() {
        let (loc, _) = grpc_location("grpc+http://127.0.0.1:8000")
            .unwrap()
            .unwrap();
        assert_eq!(loc, Location::Tcp("127.0.0.1:8000".into()));
        let (loc, _) = grpc_location("grpc+unix:///run/cairn.sock")
            .unwrap()
            .unwrap();
        assert_eq!(loc, Location::Unix("/run/cairn.sock".into()));
        assert!(grpc_location("objects:///x").unwrap().is_none());
        for (addr, why) in [
            ("grpc+http://127.0.0.1", "port is required"),
            ("grpc+http://127.0.0.1:8000/x", "no path"),
            ("grpc+unix://relative", "absolute path"),
        ] {
            let err = grpc_location(addr).unwrap_err().to_string();
            assert!(err.contains(why), "{addr}: {err}");
        }
        let err = blob_service_from_addr("grpc+http://127.0.0.1:1?dialect=foo")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("dialect must be"), "{err}");
    }

    #[test]
    fn layered_addresses_take_inner_addresses_as_written() {
        let (local, remote) =
            layers("layered://?local=objects:///var/cache/blobs&remote=grpc+http://127.0.0.1:8000")
                .unwrap()
                .unwrap();
        assert_eq!(local, "objects:///var/cache/blobs");
        assert_eq!(remote, "grpc+http://127.0.0.1:8000");
        // Percent-encoded, as before; an inner `&` has to be.
        let (local, remote) = layers(
            "layered://?local=objects:///c%3Fcompression%3Dzstd%26x%3Dy&remote=grpc%2Bunix:///run/c.sock",
        )
        .unwrap()
        .unwrap();
        assert_eq!(local, "objects:///c?compression=zstd&x=y");
        assert_eq!(remote, "grpc+unix:///run/c.sock");
        assert!(layers("objects:///x").unwrap().is_none());
        let err = layers("layered://?local=memory://")
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs remote=ADDR"), "{err}");
    }
}
