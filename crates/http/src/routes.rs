//! The read side: `nix-cache-info`, narinfos, NARs, listings, logs,
//! metrics. Everything is rendered from the store on each request;
//! nothing is cached here but what the services cache themselves.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use cairn_castore::{B3Digest, Directory, Node};
use cairn_nix::nixbase32;
use cairn_store::render::NarLayout;
use cairn_store::PathInfo;
use futures::TryStreamExt;

use crate::metrics::Metrics;
use crate::nar_body::{nar_body, parse_range, RangeRequest};
use crate::nar_urls::NarTarget;
use crate::server::ServedCompression;
use crate::CacheServer;

/// A plain-text answer (errors name what is wrong, on one line).
pub(crate) fn reply(status: StatusCode, text: impl Into<String>) -> Response {
    let mut text = text.into();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

/// A store error as a 500, logged.
pub(crate) fn internal(what: &str, e: impl std::fmt::Display) -> Response {
    tracing::error!(%what, error = %e, "request failed");
    reply(StatusCode::INTERNAL_SERVER_ERROR, format!("{what}: {e}"))
}

/// A store path hash part (32 nixbase32 characters) as its digest.
pub(crate) fn parse_hash_part(s: &str) -> Option<[u8; 20]> {
    if s.len() != 32 {
        return None;
    }
    nixbase32::decode_array::<20>(s.as_bytes()).ok()
}

pub(crate) async fn cache_info(State(server): State<CacheServer>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/x-nix-cache-info")],
        format!(
            "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: {}\n",
            server.inner.config.priority
        ),
    )
        .into_response()
}

pub(crate) async fn health() -> Response {
    reply(StatusCode::OK, "ok")
}

pub(crate) async fn metrics(State(server): State<CacheServer>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        server.inner.metrics.render(),
    )
        .into_response()
}

pub(crate) async fn not_found() -> Response {
    reply(StatusCode::NOT_FOUND, "no such file in this cache")
}

/// `/HASH.narinfo` and `/HASH.ls`.
pub(crate) async fn top_level(
    State(server): State<CacheServer>,
    Path(file): Path<String>,
) -> Response {
    if let Some(hash) = file.strip_suffix(".narinfo") {
        narinfo(&server, hash).await
    } else if let Some(hash) = file.strip_suffix(".ls") {
        listing(&server, hash).await
    } else {
        not_found().await
    }
}

/// The PathInfo of a hash part, or the response to give instead.
async fn lookup(server: &CacheServer, hash: &str) -> Result<PathInfo, Response> {
    let Some(digest) = parse_hash_part(hash) else {
        return Err(reply(
            StatusCode::NOT_FOUND,
            format!("{hash:?} is not a store path hash"),
        ));
    };
    match server.inner.store.path_infos.get(&digest).await {
        Ok(Some(info)) => Ok(info),
        Ok(None) => Err(reply(
            StatusCode::NOT_FOUND,
            format!("{hash} is not in this cache"),
        )),
        Err(e) => Err(internal(hash, e)),
    }
}

/// The URL (relative to the cache) of `info`'s NAR: named by both hashes,
/// so it is immutable and cannot be taken for another path's.
pub(crate) fn nar_url(info: &PathInfo, compression: ServedCompression) -> String {
    format!(
        "nar/{}-{}{}",
        info.store_path.hash_part(),
        nixbase32::encode(&info.nar_sha256),
        compression.extension()
    )
}

async fn narinfo(server: &CacheServer, hash: &str) -> Response {
    let metrics = &server.inner.metrics;
    let info = match lookup(server, hash).await {
        Ok(info) => info,
        Err(response) => {
            if response.status() == StatusCode::NOT_FOUND {
                Metrics::add(&metrics.narinfo_misses, 1);
            }
            return response;
        }
    };
    Metrics::add(&metrics.narinfo_hits, 1);
    let config = &server.inner.config;
    let mut narinfo = info.to_narinfo(
        nar_url(&info, config.compression),
        config.compression.name(),
    );
    if let Some(key) = &config.sign_key {
        narinfo.sign(key);
    }
    // For HEAD, axum sends these headers (and the length) without the body.
    (
        [(header::CONTENT_TYPE, "text/x-nix-narinfo")],
        narinfo.to_string(),
    )
        .into_response()
}

/// The directory closure below `info`'s root and its NAR layout.
async fn layout_of(
    server: &CacheServer,
    info: &PathInfo,
) -> Result<(HashMap<B3Digest, Directory>, NarLayout), Response> {
    let what = info.store_path.to_absolute_path();
    let mut closure = HashMap::new();
    if let Node::Directory { digest, .. } = &info.node {
        let mut dirs = server.inner.store.dirs.get_recursive(digest);
        loop {
            match dirs.try_next().await {
                Ok(Some(d)) => {
                    closure.insert(d.digest(), d);
                }
                Ok(None) => break,
                Err(e) => return Err(internal(&what, e)),
            }
        }
    }
    let layout = NarLayout::from_closure(&info.node, &closure).map_err(|e| internal(&what, e))?;
    if layout.size() != info.nar_size {
        return Err(internal(
            &what,
            format!(
                "stored tree renders to {} bytes, its PathInfo says {}",
                layout.size(),
                info.nar_size
            ),
        ));
    }
    Ok((closure, layout))
}

async fn listing(server: &CacheServer, hash: &str) -> Response {
    let info = match lookup(server, hash).await {
        Ok(info) => info,
        Err(response) => return response,
    };
    let (closure, layout) = match layout_of(server, &info).await {
        Ok(x) => x,
        Err(response) => return response,
    };
    let body = crate::listing::listing_json(&info.node, &closure, &layout);
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// An empty body whose length is not announced: a HEAD answer for a
/// response whose GET is chunked (axum would say `Content-Length: 0`).
fn no_body_unknown_length() -> Body {
    Body::from_stream(futures::stream::empty::<Result<bytes::Bytes, std::io::Error>>())
}

/// What one of this server's own NAR URLs (`HASH-NARHASH.nar[.EXT]`) names.
fn own_nar_url(file: &str) -> Option<NarTarget> {
    let (stem, compression) = ServedCompression::from_extension(file)?;
    let (hash, nar_hash) = stem.split_once('-')?;
    Some(NarTarget {
        hash_part: hash.to_owned(),
        nar_hash: nar_hash.to_owned(),
        compression,
    })
}

/// `/nar/HASH-NARHASH.nar[.EXT]`, and NAR URLs uploaders chose.
pub(crate) async fn nar(
    State(server): State<CacheServer>,
    method: Method,
    headers: HeaderMap,
    Path(file): Path<String>,
) -> Response {
    let head = method == Method::HEAD;
    let url = format!("nar/{file}");
    // `nix copy --to` asks whether a NAR it is about to upload is here.
    if head && server.inner.pending.contains(&url) {
        return Response::new(no_body_unknown_length());
    }
    // An uploader's own URL (a point read in redb, done in place like the
    // PathInfo lookup), else one of ours.
    let target = match server.inner.nar_urls.lookup(&url) {
        Ok(Some(target)) => target,
        // Only the compression configured: anything else would let any
        // client make the server spend its CPU on xz or brotli.
        Ok(None) => match own_nar_url(&file) {
            Some(target) if target.compression == server.inner.config.compression => target,
            _ => return not_found().await,
        },
        Err(e) => return internal("NAR URL", e),
    };
    let compression = target.compression;
    let info = match lookup(&server, &target.hash_part).await {
        Ok(info) => info,
        Err(response) => return response,
    };
    if nixbase32::encode(&info.nar_sha256) != target.nar_hash {
        return reply(
            StatusCode::NOT_FOUND,
            format!(
                "{} is in this cache, but not with NAR hash {}",
                target.hash_part, target.nar_hash
            ),
        );
    }
    let what = info.store_path.to_absolute_path();
    let (_, layout) = match layout_of(&server, &info).await {
        Ok(x) => x,
        Err(response) => return response,
    };
    // Never start a 200 that cannot be finished: every blob must be here.
    let mut digests: Vec<B3Digest> = layout.files().iter().map(|f| f.digest).collect();
    digests.sort_unstable();
    digests.dedup();
    match server.inner.store.blobs.missing(&digests).await {
        Ok(missing) if missing.is_empty() => {}
        Ok(missing) => {
            return internal(
                &what,
                format!(
                    "the store lacks {} of the {} blobs of this NAR (first: {})",
                    missing.len(),
                    digests.len(),
                    missing[0]
                ),
            )
        }
        Err(e) => return internal(&what, e),
    }

    let size = layout.size();
    let mut response_headers = HeaderMap::new();
    response_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-nix-nar"),
    );
    // Named by its content: it never changes.
    response_headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    let (status, range) = if compression == ServedCompression::None {
        response_headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        let asked = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
        match parse_range(asked, size) {
            RangeRequest::Whole => (StatusCode::OK, 0..size),
            RangeRequest::Part(r) => {
                if let Ok(v) =
                    HeaderValue::from_str(&format!("bytes {}-{}/{size}", r.start, r.end - 1))
                {
                    response_headers.insert(header::CONTENT_RANGE, v);
                }
                (StatusCode::PARTIAL_CONTENT, r)
            }
            RangeRequest::Unsatisfiable => {
                let mut r = reply(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    format!("the NAR has {size} bytes"),
                );
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return r;
            }
        }
    } else {
        (StatusCode::OK, 0..size)
    };
    if compression == ServedCompression::None {
        response_headers.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(range.end - range.start),
        );
    }
    let body = if head && compression == ServedCompression::None {
        Body::empty()
    } else if head {
        no_body_unknown_length()
    } else {
        nar_body(&server.inner, Arc::new(layout), range, compression, what)
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = response_headers;
    response
}

/// `GET /log/DRV`.
pub(crate) async fn get_log(
    State(server): State<CacheServer>,
    Path(drv): Path<String>,
) -> Response {
    let Some(logs) = &server.inner.logs else {
        return reply(StatusCode::NOT_FOUND, "this cache keeps no build logs");
    };
    match logs.read(&drv).await {
        Ok(Some(text)) => {
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
        }
        Ok(None) => reply(StatusCode::NOT_FOUND, format!("no build log for {drv}")),
        Err(crate::logs::LogError::BadName(msg)) => reply(StatusCode::BAD_REQUEST, msg),
        Err(e) => internal(&drv, e),
    }
}
