//! The write side, as `nix copy --to http://…` drives it: `PUT
//! nar/FILE` (the NAR, compressed as the client chose), then `PUT
//! HASH.narinfo` naming that file. The NAR is ingested while it streams
//! in; its tree stays invisible (no PathInfo refers to it) until a
//! narinfo arrives whose NarHash and NarSize match, whose references are
//! all here and whose signatures by known key names verify. A NAR no
//! narinfo claims is forgotten after an hour and its objects left to gc.
//!
//! Pending NARs are held in memory: a restart between the two PUTs makes
//! the narinfo fail, and Nix uploads both again on its next try.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{to_bytes, Body};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cairn_castore::import::NoProgress;
use cairn_nix::hash::NixHash;
use cairn_nix::narinfo::NarInfo;
use cairn_nix::nixbase32;
use cairn_store::compression::{decoder, sniffing_decoder, Compression};
use cairn_store::ingest::{ingest_nar, IngestedNar};
use cairn_store::{NarDescription, StoreError};
use data_encoding::BASE64;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, BufReader};
use tokio_util::io::StreamReader;

use crate::metrics::Metrics;
use crate::nar_urls::NarTarget;
use crate::routes::{internal, reply};
use crate::server::ServedCompression;
use crate::CacheServer;

/// How long an uploaded NAR waits for its narinfo.
const PENDING_FOR: Duration = Duration::from_secs(3600);
/// At most this many NARs wait at once (the oldest go first).
const PENDING_MAX: usize = 100_000;
/// A narinfo is a few hundred bytes; this is generous.
const NARINFO_MAX: usize = 1024 * 1024;
/// Build logs, as sent and as decompressed.
const LOG_MAX: usize = 256 * 1024 * 1024;

struct Pending {
    /// Tells this upload from a later one to the same URL.
    generation: u64,
    ingested: IngestedNar,
    /// Bytes as uploaded (narinfo `FileSize`).
    file_size: u64,
    at: Instant,
}

/// NARs uploaded and not yet claimed by a narinfo, by URL (`nar/FILE`).
#[derive(Default)]
pub(crate) struct PendingNars {
    map: Mutex<HashMap<String, Pending>>,
    generations: std::sync::atomic::AtomicU64,
}

impl PendingNars {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        match self.map.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn insert(&self, url: String, ingested: IngestedNar, file_size: u64) {
        let mut map = self.lock();
        let now = Instant::now();
        map.retain(|_, p| now.duration_since(p.at) < PENDING_FOR);
        if map.len() >= PENDING_MAX {
            if let Some(oldest) = map.iter().min_by_key(|(_, p)| p.at).map(|(k, _)| k.clone()) {
                map.remove(&oldest);
            }
        }
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        map.insert(
            url,
            Pending {
                generation,
                ingested,
                file_size,
                at: now,
            },
        );
    }

    pub(crate) fn contains(&self, url: &str) -> bool {
        self.lock().contains_key(url)
    }

    /// The upload at `url`: its tree, its size as uploaded, its generation.
    fn get(&self, url: &str) -> Option<(IngestedNar, u64, u64)> {
        self.lock()
            .get(url)
            .map(|p| (p.ingested.clone(), p.file_size, p.generation))
    }

    fn remove(&self, url: &str) {
        self.lock().remove(url);
    }

    /// Forgets the upload at `url` if it is still `generation` (not
    /// replaced by a newer upload meanwhile).
    fn remove_generation(&self, url: &str, generation: u64) {
        let mut map = self.lock();
        if map.get(url).is_some_and(|p| p.generation == generation) {
            map.remove(url);
        }
    }
}

/// Byte strings equal, in time independent of where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The refusal (counted), if this request may not upload.
fn upload_refusal(server: &CacheServer, headers: &HeaderMap) -> Option<Response> {
    let refusal = unauthorised(server, headers);
    if refusal.is_some() {
        Metrics::add(&server.inner.metrics.uploads_rejected, 1);
    }
    refusal
}

fn unauthorised(server: &CacheServer, headers: &HeaderMap) -> Option<Response> {
    let config = &server.inner.config;
    if config.read_only {
        return Some(reply(StatusCode::FORBIDDEN, "this cache is read-only"));
    }
    let token = config.upload_token.as_ref()?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let ok = if let Some(bearer) = given.strip_prefix("Bearer ") {
        same_secret(bearer.trim().as_bytes(), token.as_bytes())
    } else if let Some(basic) = given.strip_prefix("Basic ") {
        BASE64
            .decode(basic.trim().as_bytes())
            .ok()
            .and_then(|pair| {
                let colon = pair.iter().position(|&b| b == b':')?;
                Some(same_secret(&pair[colon + 1..], token.as_bytes()))
            })
            .unwrap_or(false)
    } else {
        false
    };
    if ok {
        return None;
    }
    let mut r = reply(
        StatusCode::UNAUTHORIZED,
        "uploads need the upload token (Authorization: Bearer TOKEN, or basic auth with it as the password)",
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"cairn\""),
    );
    Some(r)
}

/// A small upload's body, whole, or why not.
async fn read_whole(body: Body, limit: usize) -> Result<bytes::Bytes, String> {
    to_bytes(body, limit)
        .await
        .map_err(|e| format!("cannot read the upload (at most {limit} bytes): {e}"))
}

/// A refused upload, counted.
fn refuse(server: &CacheServer, status: StatusCode, text: String) -> Response {
    Metrics::add(&server.inner.metrics.uploads_rejected, 1);
    tracing::warn!(%status, reason = %text, "upload refused");
    reply(status, text)
}

fn accepted(server: &CacheServer) -> Response {
    Metrics::add(&server.inner.metrics.uploads_accepted, 1);
    StatusCode::OK.into_response()
}

/// `PUT /nar/FILE`: ingested while it arrives, held until its narinfo.
pub(crate) async fn put_nar(
    State(server): State<CacheServer>,
    headers: HeaderMap,
    Path(file): Path<String>,
    body: Body,
) -> Response {
    if let Some(r) = upload_refusal(&server, &headers) {
        return r;
    }
    let url = format!("nar/{file}");
    // A new upload to a URL replaces the old one, even if it fails.
    server.inner.pending.remove(&url);
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let stream = body.into_data_stream().map(move |piece| {
        piece
            .inspect(|b| {
                counter.fetch_add(b.len() as u64, Ordering::Relaxed);
            })
            .map_err(io::Error::other)
    });
    let store = &server.inner.store;
    let reader = StreamReader::new(stream);
    // The name says the compression (Nix's extensions); a plain `.nar`
    // may still be gzip (Nix gives it no extension of its own), so that
    // one is recognised by its first bytes.
    let by_name = [
        (".nar.xz", Compression::Xz),
        (".nar.zst", Compression::Zstd),
        (".nar.bz2", Compression::Bzip2),
        (".nar.br", Compression::Brotli),
    ]
    .into_iter()
    .find(|(ext, _)| file.ends_with(ext));
    let decoded = match by_name {
        Some((_, c)) => Ok(decoder(reader, c)),
        None => sniffing_decoder(reader).await,
    };
    let nar = match decoded {
        Ok(nar) => nar,
        Err(e) => {
            return refuse(
                &server,
                StatusCode::BAD_REQUEST,
                format!("{url}: cannot read the upload: {e}"),
            )
        }
    };
    match ingest_nar(nar, store.blobs.clone(), store.dirs.as_ref(), &NoProgress).await {
        Ok(ingested) => {
            tracing::info!(%url, nar_size = ingested.nar_size, "NAR received; waiting for its narinfo");
            server
                .inner
                .pending
                .insert(url, ingested, received.load(Ordering::Relaxed));
            accepted(&server)
        }
        Err(e) => refuse(
            &server,
            StatusCode::BAD_REQUEST,
            format!("{url} is not a whole, valid NAR: {e}"),
        ),
    }
}

/// `PUT /HASH.narinfo` attaches an uploaded NAR; `PUT /HASH.ls` is
/// accepted and dropped (listings are computed from the store).
pub(crate) async fn put_narinfo(
    State(server): State<CacheServer>,
    headers: HeaderMap,
    Path(file): Path<String>,
    body: Body,
) -> Response {
    if let Some(r) = upload_refusal(&server, &headers) {
        return r;
    }
    if file.ends_with(".ls") {
        return StatusCode::OK.into_response();
    }
    let Some(hash) = file.strip_suffix(".narinfo") else {
        return refuse(
            &server,
            StatusCode::NOT_FOUND,
            format!("cannot upload {file:?}: uploads go to HASH.narinfo, nar/FILE or log/DRV"),
        );
    };
    let text = match read_whole(body, NARINFO_MAX).await {
        Ok(bytes) => bytes,
        Err(e) => return refuse(&server, StatusCode::BAD_REQUEST, format!("{file}: {e}")),
    };
    match attach(&server, hash, &text).await {
        Ok(()) => accepted(&server),
        Err((status, text)) => {
            if status.is_server_error() {
                Metrics::add(&server.inner.metrics.uploads_rejected, 1);
                return internal(&file, text);
            }
            refuse(&server, status, format!("{file}: {text}"))
        }
    }
}

/// Checks an uploaded narinfo and adds its path; the status and reason
/// when it is refused.
async fn attach(server: &CacheServer, hash: &str, text: &[u8]) -> Result<(), (StatusCode, String)> {
    let bad = |msg: String| (StatusCode::BAD_REQUEST, msg);
    let text = std::str::from_utf8(text).map_err(|_| bad("not UTF-8 text".into()))?;
    let narinfo = NarInfo::parse(text).map_err(|e| bad(format!("not a valid narinfo: {e}")))?;
    if narinfo.store_path.hash_part() != hash {
        return Err(bad(format!(
            "it describes {}, whose narinfo is {}.narinfo",
            narinfo.store_path,
            narinfo.store_path.hash_part()
        )));
    }
    check_signatures(server, &narinfo).map_err(bad)?;
    let store = &server.inner.store;
    // Replacing a path by one with other contents is refused: whoever
    // trusts this cache's signatures would get different bytes under a
    // name they already had.
    match store.path_infos.get(narinfo.store_path.digest()).await {
        Ok(Some(existing)) if NixHash::sha256(existing.nar_sha256) != narinfo.nar_hash => {
            return Err((
                StatusCode::CONFLICT,
                format!(
                    "{} is here already, with NAR hash {}",
                    narinfo.store_path,
                    NixHash::sha256(existing.nar_sha256).to_nix_base32_string()
                ),
            ))
        }
        Ok(_) => {}
        Err(e) => return Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
    let (ingested, generation) = match server.inner.pending.get(&narinfo.url) {
        Some((ingested, file_size, generation)) => {
            if let Some(expected) = narinfo.file_size {
                if expected != file_size {
                    return Err(bad(format!(
                        "FileSize says {expected} bytes, {} has {file_size}",
                        narinfo.url
                    )));
                }
            }
            (ingested, Some(generation))
        }
        // Nix skips uploading a NAR whose URL answers HEAD, as one does
        // when another path with the same contents was uploaded before.
        None => match served_nar(server, &narinfo.url).await? {
            Some(ingested) => (ingested, None),
            None => {
                return Err(bad(format!(
                    "its URL {} names no NAR uploaded here (PUT the NAR first)",
                    narinfo.url
                )))
            }
        },
    };
    match store
        .add_ingested(ingested, NarDescription::from(&narinfo))
        .await
    {
        Ok(info) => {
            if let Some(generation) = generation {
                server
                    .inner
                    .pending
                    .remove_generation(&narinfo.url, generation);
            }
            tracing::info!(path = %info.store_path, "path added by upload");
            remember_url(server, &narinfo).await;
            Ok(())
        }
        Err(
            e @ (StoreError::NarMismatch { .. }
            | StoreError::MissingReferences { .. }
            | StoreError::CaMismatch { .. }
            | StoreError::Invalid(_)),
        ) => Err(bad(e.to_string())),
        Err(e) => Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

/// The tree behind a NAR URL an earlier upload recorded, if that path is
/// still here with that NAR.
async fn served_nar(
    server: &CacheServer,
    url: &str,
) -> Result<Option<IngestedNar>, (StatusCode, String)> {
    let internal = |e: String| (StatusCode::INTERNAL_SERVER_ERROR, e);
    let Some(target) = server
        .inner
        .nar_urls
        .lookup(url)
        .map_err(|e| internal(e.to_string()))?
    else {
        return Ok(None);
    };
    let Some(digest) = crate::routes::parse_hash_part(&target.hash_part) else {
        return Ok(None);
    };
    let info = server
        .inner
        .store
        .path_infos
        .get(&digest)
        .await
        .map_err(|e| internal(e.to_string()))?;
    Ok(info
        .filter(|i| nixbase32::encode(&i.nar_sha256) == target.nar_hash)
        .map(|i| IngestedNar {
            node: i.node,
            nar_size: i.nar_size,
            nar_sha256: i.nar_sha256,
        }))
}

/// Records the uploader's NAR URL, which its Nix will ask for later.
/// Failing that is logged, not fatal: the path is stored, and the URL
/// this server's own narinfos give still works.
async fn remember_url(server: &CacheServer, narinfo: &NarInfo) {
    let compression = narinfo
        .compression
        .as_deref()
        .unwrap_or("bzip2")
        .parse::<ServedCompression>();
    let Ok(compression) = compression else {
        return;
    };
    let target = NarTarget {
        hash_part: narinfo.store_path.hash_part(),
        nar_hash: nixbase32::encode(narinfo.nar_hash.digest()),
        compression,
    };
    let inner = server.inner.clone();
    let url = narinfo.url.clone();
    let recorded = tokio::task::spawn_blocking(move || inner.nar_urls.record(&url, &target)).await;
    if let Err(e) = recorded
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
    {
        tracing::warn!(url = %narinfo.url, error = %e, "cannot record the upload's NAR URL");
    }
}

/// A signature by a key this server knows by name must verify; others
/// are kept as they are (Nix keeps them too).
fn check_signatures(server: &CacheServer, narinfo: &NarInfo) -> Result<(), String> {
    let config = &server.inner.config;
    let own = config.sign_key.as_ref().map(|k| k.verifying_key());
    let known: Vec<_> = config.trusted_keys.iter().chain(own.as_ref()).collect();
    let fingerprint = narinfo.fingerprint();
    for sig in &narinfo.signatures {
        for key in known.iter().filter(|k| k.name() == sig.name()) {
            if !key.verify(fingerprint.as_bytes(), sig) {
                return Err(format!(
                    "its signature by {} does not verify (wrong key, or the narinfo was altered)",
                    sig.name()
                ));
            }
        }
    }
    Ok(())
}

/// `PUT /log/DRV`: decoded when sent with a `Content-Encoding`.
pub(crate) async fn put_log(
    State(server): State<CacheServer>,
    headers: HeaderMap,
    Path(drv): Path<String>,
    body: Body,
) -> Response {
    if let Some(r) = upload_refusal(&server, &headers) {
        return r;
    }
    let Some(logs) = &server.inner.logs else {
        return refuse(
            &server,
            StatusCode::FORBIDDEN,
            "this cache keeps no build logs".into(),
        );
    };
    let sent = match read_whole(body, LOG_MAX).await {
        Ok(b) => b,
        Err(e) => return refuse(&server, StatusCode::BAD_REQUEST, format!("log/{drv}: {e}")),
    };
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    let compression = match encoding.as_str() {
        "" | "identity" => None,
        other => match other.parse::<Compression>() {
            Ok(c) => Some(c),
            Err(_) => {
                return refuse(
                    &server,
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!("log/{drv}: unknown Content-Encoding {other:?}"),
                )
            }
        },
    };
    let text = match compression {
        None => sent.to_vec(),
        Some(c) => {
            let mut out = Vec::new();
            let reader = decoder(BufReader::new(std::io::Cursor::new(sent)), c);
            if let Err(e) = reader.take(LOG_MAX as u64 + 1).read_to_end(&mut out).await {
                return refuse(
                    &server,
                    StatusCode::BAD_REQUEST,
                    format!("log/{drv}: cannot decode {encoding}: {e}"),
                );
            }
            if out.len() > LOG_MAX {
                return refuse(
                    &server,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("log/{drv}: more than {LOG_MAX} bytes once decoded"),
                );
            }
            out
        }
    };
    match logs.write(&drv, text).await {
        Ok(()) => accepted(&server),
        Err(crate::logs::LogError::BadName(msg)) => refuse(&server, StatusCode::BAD_REQUEST, msg),
        Err(e) => internal(&drv, e),
    }
}
