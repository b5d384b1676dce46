//! Object-store addresses. Every other scheme is someone else's: these
//! functions answer `None` for it, so a dispatcher can try them first.
//!
//! | address | where |
//! | --- | --- |
//! | `objectstore+file:///ABS/PATH` | the bucket layout in a local directory (created if missing) |
//! | `objectstore+s3://BUCKET[/PREFIX]?endpoint=URL&region=R` | an S3-compatible bucket (AWS, Garage, MinIO, …) |
//! | `objectstore+memory://` | in memory, for tests (each address a new, empty store) |
//!
//! S3 credentials come from the environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, optionally `AWS_SESSION_TOKEN`, or the other
//! `AWS_*` variables the `object_store` crate reads), never from the
//! address, and are never logged. `endpoint` (default: AWS) and `region`
//! (default `AWS_REGION`, else `us-east-1`) may also come from
//! `AWS_ENDPOINT` and `AWS_REGION`. Requests are path-style (what
//! self-hosted stores expect) and retried with backoff on 5xx, timeouts
//! and connection errors.
//!
//! Options: `?prefix=P` puts every key under `P/` (several stores in one
//! bucket); `?compression=zstd` stores chunks compressed (either kind is
//! read back); `?size-rule=tvix-compat` is the directories' size rule
//! (recorded in the bucket on first write, and a bucket refuses writes
//! under the other rule); `?checksum=` is how an S3 upload proves its
//! bytes to the server: `crc64nvme` (the default) sends the payload
//! unsigned with a CRC64-NVME the server checks, `sha256` signs the
//! payload's SHA-256 (every S3 server takes it; it costs a SHA-256 of
//! every byte on both sides, which on a three-node Garage cluster made
//! an import of large files some 20% slower). One address serves all
//! three services (`--store-addr`), so each accepts every option and
//! uses its own.

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

/// Every option of an `objectstore+…` address.
const OPTIONS: &[&str] = &[
    "prefix",
    "endpoint",
    "region",
    "checksum",
    "compression",
    "size-rule",
];

/// The store and key layout an `objectstore+…` address names, or `None`
/// for another scheme.
fn open(addr: &str) -> Result<Option<Opened>, Error> {
    let url = parse(addr)?;
    let Some(kind) = url.scheme().strip_prefix("objectstore+") else {
        return Ok(None);
    };
    check_options(addr, &url, OPTIONS)?;
    let option = |key: &str| {
        url.query_pairs()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    };
    if kind != "s3"
        && (option("endpoint").is_some()
            || option("region").is_some()
            || option("checksum").is_some())
    {
        return Err(bad(
            addr,
            "endpoint, region and checksum are options of objectstore+s3 only",
        ));
    }
    // In a bucket's address the path is the prefix; ?prefix= adds to it.
    let mut prefix = String::new();
    if kind == "s3" {
        prefix.push_str(url.path().trim_matches('/'));
    }
    if let Some(p) = option("prefix") {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(p.trim_matches('/'));
    }
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
        "s3" => s3(addr, &url)?,
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

/// An option with two values, `off` (the default, false) and `on` (true).
fn switch(addr: &str, url: &Url, key: &str, (off, on): (&str, &str)) -> Result<bool, Error> {
    match url.query_pairs().find(|(k, _)| k == key) {
        None => Ok(false),
        Some((_, v)) if v == off => Ok(false),
        Some((_, v)) if v == on => Ok(true),
        Some((_, v)) => Err(bad(addr, format!("{key} must be {on} or {off}, not {v:?}"))),
    }
}

/// A blob service for an `objectstore+…` address, `None` for another.
pub fn blob_service_from_addr(addr: &str) -> Result<Option<Arc<dyn BlobService>>, Error> {
    let Some(Opened { store, layout, url }) = open(addr)? else {
        return Ok(None);
    };
    let zstd = switch(addr, &url, "compression", ("none", "zstd"))?;
    Ok(Some(Arc::new(ObjectBlobService::new(store, layout, zstd))))
}

/// A directory service for an `objectstore+…` address, `None` for another.
pub fn directory_service_from_addr(addr: &str) -> Result<Option<Arc<dyn DirectoryService>>, Error> {
    let Some(Opened { store, layout, url }) = open(addr)? else {
        return Ok(None);
    };
    let rule = size_rule(addr, &url)?.unwrap_or_default();
    Ok(Some(Arc::new(ObjectDirectoryService::new(
        store, layout, rule,
    ))))
}

/// A PathInfo service for an `objectstore+…` address, `None` for another.
pub fn path_info_service_from_addr(addr: &str) -> Result<Option<Arc<dyn PathInfoService>>, Error> {
    let Some(Opened { store, layout, .. }) = open(addr)? else {
        return Ok(None);
    };
    Ok(Some(Arc::new(ObjectPathInfoService::new(store, layout))))
}

/// An S3 bucket client for `objectstore+s3://BUCKET/…`.
fn s3(addr: &str, url: &Url) -> Result<Arc<dyn ObjectStore>, Error> {
    use object_store::aws::{AmazonS3Builder, Checksum};
    use object_store::{BackoffConfig, RetryConfig};

    let bucket = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad(addr, "expected objectstore+s3://BUCKET/PREFIX"))?;
    // One process-wide TLS crypto provider; a second install is refused
    // harmlessly (the first stays).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_virtual_hosted_style_request(false)
        .with_retry(RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 10,
            retry_timeout: std::time::Duration::from_secs(120),
        });
    let signed = switch(addr, url, "checksum", ("crc64nvme", "sha256"))?;
    builder = if signed {
        builder.with_unsigned_payload(false)
    } else {
        builder
            .with_unsigned_payload(true)
            .with_checksum_algorithm(Checksum::CRC64NVME)
    };
    for (key, value) in url.query_pairs() {
        match key.as_ref() {
            "endpoint" => {
                builder = builder
                    .with_allow_http(value.starts_with("http://"))
                    .with_endpoint(value.as_ref());
            }
            "region" => builder = builder.with_region(value.as_ref()),
            _ => {}
        }
    }
    if std::env::var_os("AWS_ENDPOINT").is_some_and(|e| e.to_string_lossy().starts_with("http://"))
    {
        builder = builder.with_allow_http(true);
    }
    let store = builder
        .build()
        .map_err(|e| bad(addr, format!("cannot open the bucket: {e}")))?;
    Ok(Arc::new(store))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob_error(addr: &str) -> String {
        match blob_service_from_addr(addr) {
            Ok(_) => panic!("{addr} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn one_address_serves_all_three_services() {
        // `--store-addr` hands the same address to every service, so each
        // takes the others' options.
        let addr = "objectstore+memory://?prefix=p&compression=zstd&size-rule=tvix-compat";
        assert!(blob_service_from_addr(addr).unwrap().is_some());
        assert!(directory_service_from_addr(addr).unwrap().is_some());
        assert!(path_info_service_from_addr(addr).unwrap().is_some());
    }

    #[test]
    fn bad_options_are_named() {
        let e = blob_error("objectstore+memory://?compresion=zstd");
        assert!(e.contains("compresion"), "{e}");
        let e = blob_error("objectstore+memory://?compression=lz4");
        assert!(e.contains("zstd or none"), "{e}");
        let e = blob_error("objectstore+s3://b?endpoint=http://127.0.0.1:1&checksum=md5");
        assert!(e.contains("sha256 or crc64nvme"), "{e}");
        let e = blob_error("objectstore+file:///tmp/x?checksum=sha256");
        assert!(e.contains("objectstore+s3 only"), "{e}");
    }

    #[test]
    fn both_checksum_modes_open_a_bucket_client() {
        for checksum in ["", "&checksum=crc64nvme", "&checksum=sha256"] {
            let addr = format!("objectstore+s3://b?endpoint=http://127.0.0.1:1&region=r{checksum}");
            assert!(blob_service_from_addr(&addr).unwrap().is_some(), "{addr}");
        }
    }
}
