//! Existing Nix binary caches as a read-only PathInfoService:
//! `nix+http://…`, `nix+https://…` (cache.nixos.org, any `cairn serve`,
//! any `nix copy --to http://` target) and `nix+file:///…` (what `nix
//! copy --to file://` writes).
//!
//! A `get` fetches the narinfo, checks its signatures and content
//! address, then streams the NAR (decompressed on the fly) into the blob
//! and directory services it was given, and returns the PathInfo only if
//! the NAR's hash and size match the narinfo. It never puts the PathInfo:
//! the caller (a copy, a layered store) decides where it goes. What a
//! failed `get` ingested is referenced by nothing; gc takes it.
//!
//! Options: `trusted-public-keys=NAME:KEY,…` (a path must carry a valid
//! signature by one of them) or `check-sigs=false` (NarHash is still
//! checked: that proves the NAR is the one the narinfo describes, but
//! not who made the narinfo). One of the two is required.

use std::io;
use std::path::{Component, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cairn_castore::addr::{bad, check_options, local_path, parse};
use cairn_castore::import::{NoProgress, Progress};
use cairn_castore::{BlobService, DirectoryService};
use cairn_nix::hash::NixHash;
use cairn_nix::narinfo::NarInfo;
use cairn_nix::{nixbase32, VerifyingKey};
use cairn_store::compression::{decoder, Compression};
use cairn_store::ingest::ingest_nar;
use cairn_store::pathinfoservice::Error;
use cairn_store::{check_content_address, PathInfo, PathInfoService};
use futures::stream::BoxStream;
use futures::TryStreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};
use tokio_util::io::StreamReader;
use url::Url;

/// Largest narinfo accepted.
const NARINFO_MAX: u64 = 1024 * 1024;
/// Read buffer in front of the decompressor.
const READ_BUFFER: usize = 1024 * 1024;

/// Whether `addr` names a binary cache (`nix+http`, `nix+https`, `nix+file`).
pub fn is_cache_addr(addr: &str) -> bool {
    ["nix+http://", "nix+https://", "nix+file://"]
        .iter()
        .any(|p| addr.starts_with(p))
}

/// Whose signatures make a narinfo trusted.
#[derive(Clone)]
pub enum Trust {
    /// At least one valid signature by one of these keys.
    Keys(Vec<VerifyingKey>),
    /// Signatures are not checked (NarHash still is).
    Unchecked,
}

enum Source {
    Http { client: reqwest::Client, base: Url },
    File(PathBuf),
}

/// A binary cache, read through.
pub struct NixCache {
    /// The address without options, for messages.
    name: String,
    source: Source,
    trust: Trust,
    blobs: Arc<dyn BlobService>,
    dirs: Arc<dyn DirectoryService>,
    progress: Arc<dyn Progress>,
    /// NAR bytes ingested so far (uncompressed).
    fetched: AtomicU64,
}

fn remote(msg: String) -> Error {
    Error::Remote(msg)
}

impl NixCache {
    /// The cache at `addr`, ingesting into `blobs` and `dirs`.
    pub fn from_addr(
        addr: &str,
        blobs: Arc<dyn BlobService>,
        dirs: Arc<dyn DirectoryService>,
    ) -> Result<Self, Error> {
        let url = parse(addr)?;
        check_options(addr, &url, &["trusted-public-keys", "check-sigs"])?;
        let option = |key: &str| {
            url.query_pairs()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.into_owned())
        };
        let trust = match (option("trusted-public-keys"), option("check-sigs")) {
            (Some(keys), None) => Trust::Keys(
                keys.split([',', ' '])
                    .filter(|k| !k.is_empty())
                    .map(|k| {
                        VerifyingKey::parse(k)
                            .map_err(|e| bad(addr, format!("trusted public key {k:?}: {e}")))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            (None, Some(v)) if v == "false" => Trust::Unchecked,
            (Some(_), Some(_)) => {
                return Err(bad(
                    addr,
                    "give trusted-public-keys or check-sigs=false, not both",
                )
                .into())
            }
            _ => {
                return Err(bad(
                    addr,
                    "say whose signatures to trust: ?trusted-public-keys=NAME:KEY[,…], \
                     or ?check-sigs=false to check only NAR hashes",
                )
                .into())
            }
        };
        if let Trust::Keys(k) = &trust {
            if k.is_empty() {
                return Err(bad(addr, "trusted-public-keys is empty").into());
            }
        }
        let mut plain = url.clone();
        plain.set_query(None);
        let source = match url.scheme() {
            "nix+file" => Source::File(local_path(addr, &url)?),
            "nix+http" | "nix+https" => {
                let rest = plain.as_str().trim_start_matches("nix+");
                let mut base =
                    Url::parse(rest).map_err(|e| bad(addr, format!("not a URL: {e}")))?;
                if !base.path().ends_with('/') {
                    let path = format!("{}/", base.path());
                    base.set_path(&path);
                }
                let client = reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(30))
                    .read_timeout(Duration::from_secs(300))
                    .user_agent(concat!("cairn/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| bad(addr, format!("HTTP client: {e}")))?;
                Source::Http { client, base }
            }
            other => {
                return Err(bad(
                    addr,
                    format!("{other}: not a binary cache scheme (nix+http, nix+https, nix+file)"),
                )
                .into())
            }
        };
        Ok(NixCache {
            name: plain.as_str().to_owned(),
            source,
            trust,
            blobs,
            dirs,
            progress: Arc::new(NoProgress),
            fetched: AtomicU64::new(0),
        })
    }

    /// Reports the bytes of each NAR ingested to `progress`.
    pub fn with_progress(mut self, progress: Arc<dyn Progress>) -> Self {
        self.progress = progress;
        self
    }

    /// NAR bytes fetched and ingested so far.
    pub fn fetched_bytes(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// A file of the cache (`rel` as a narinfo names it), or `None` if
    /// the cache does not have it.
    async fn open(&self, rel: &str) -> Result<Option<Box<dyn AsyncRead + Unpin + Send>>, Error> {
        match &self.source {
            Source::File(root) => {
                let rel_path = std::path::Path::new(rel);
                if !rel_path
                    .components()
                    .all(|c| matches!(c, Component::Normal(_)))
                {
                    return Err(remote(format!(
                        "{}: refusing file name {rel:?}, which leaves the cache",
                        self.name
                    )));
                }
                match tokio::fs::File::open(root.join(rel_path)).await {
                    Ok(f) => Ok(Some(Box::new(f))),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(remote(format!("{}/{rel}: {e}", self.name))),
                }
            }
            Source::Http { client, base } => {
                let url = base
                    .join(rel)
                    .map_err(|e| remote(format!("{}: bad file name {rel:?}: {e}", self.name)))?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(remote(format!("{}: refusing URL {url}", self.name)));
                }
                let response = client
                    .get(url.clone())
                    .send()
                    .await
                    .map_err(|e| remote(format!("{url}: {e}")))?;
                let status = response.status();
                // S3-style caches answer 403 for what they do not have.
                if status == reqwest::StatusCode::NOT_FOUND
                    || status == reqwest::StatusCode::FORBIDDEN
                {
                    return Ok(None);
                }
                if !status.is_success() {
                    return Err(remote(format!("{url}: HTTP {status}")));
                }
                let stream = response.bytes_stream().map_err(io::Error::other);
                Ok(Some(Box::new(StreamReader::new(stream))))
            }
        }
    }

    async fn narinfo(&self, hash: &str) -> Result<Option<NarInfo>, Error> {
        let file = format!("{hash}.narinfo");
        let Some(reader) = self.open(&file).await? else {
            return Ok(None);
        };
        let mut text = String::new();
        reader
            .take(NARINFO_MAX + 1)
            .read_to_string(&mut text)
            .await
            .map_err(|e| remote(format!("{}/{file}: {e}", self.name)))?;
        if text.len() as u64 > NARINFO_MAX {
            return Err(remote(format!(
                "{}/{file} is larger than {NARINFO_MAX} bytes",
                self.name
            )));
        }
        NarInfo::parse(&text)
            .map(Some)
            .map_err(|e| remote(format!("{}/{file}: {e}", self.name)))
    }

    fn check_trust(&self, narinfo: &NarInfo) -> Result<(), Error> {
        let Trust::Keys(keys) = &self.trust else {
            return Ok(());
        };
        if narinfo.valid_signatures(keys).next().is_some() {
            return Ok(());
        }
        let names: Vec<&str> = keys.iter().map(VerifyingKey::name).collect();
        Err(remote(format!(
            "{} from {} has no valid signature by a trusted key ({}); signed by: {}",
            narinfo.store_path,
            self.name,
            names.join(", "),
            if narinfo.signatures.is_empty() {
                "nobody".to_owned()
            } else {
                narinfo
                    .signatures
                    .iter()
                    .map(|s| s.name().to_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )))
    }
}

#[async_trait]
impl PathInfoService for NixCache {
    async fn get(&self, digest: &[u8; 20]) -> Result<Option<PathInfo>, Error> {
        let hash = nixbase32::encode(digest);
        let Some(narinfo) = self.narinfo(&hash).await? else {
            return Ok(None);
        };
        let path = narinfo.store_path.to_absolute_path();
        if narinfo.store_path.digest() != digest {
            return Err(remote(format!(
                "{}/{hash}.narinfo describes {path}",
                self.name
            )));
        }
        self.check_trust(&narinfo)?;
        check_content_address(
            &narinfo.store_path,
            narinfo.ca.as_ref(),
            &narinfo.references,
        )
        .map_err(|e| remote(format!("{}: {e}", self.name)))?;
        let compression: Compression = narinfo
            .compression
            .as_deref()
            // A narinfo without `Compression:` means bzip2 to Nix.
            .unwrap_or("bzip2")
            .parse()
            .map_err(|e| remote(format!("{}/{hash}.narinfo: {e}", self.name)))?;
        let Some(file) = self.open(&narinfo.url).await? else {
            return Err(remote(format!(
                "{}/{hash}.narinfo names {}, which the cache lacks",
                self.name, narinfo.url
            )));
        };
        // A cache that sends more than the narinfo says is cut off one
        // byte past it (and then fails the size check), not read forever.
        let nar = decoder(BufReader::with_capacity(READ_BUFFER, file), compression)
            .take(narinfo.nar_size.saturating_add(1));
        let ingested = ingest_nar(
            nar,
            self.blobs.clone(),
            self.dirs.as_ref(),
            self.progress.as_ref(),
        )
        .await
        .map_err(|e| remote(format!("{}/{}: {e}", self.name, narinfo.url)))?;
        let actual = NixHash::sha256(ingested.nar_sha256);
        if actual != narinfo.nar_hash || ingested.nar_size != narinfo.nar_size {
            return Err(remote(format!(
                "{}/{}: the NAR of {path} has hash {} and {} bytes; its narinfo says {} and {}",
                self.name,
                narinfo.url,
                actual.to_nix_base32_string(),
                ingested.nar_size,
                narinfo.nar_hash.to_nix_base32_string(),
                narinfo.nar_size
            )));
        }
        self.fetched.fetch_add(ingested.nar_size, Ordering::Relaxed);
        let info = PathInfo {
            store_path: narinfo.store_path,
            node: ingested.node,
            references: narinfo.references,
            nar_size: ingested.nar_size,
            nar_sha256: ingested.nar_sha256,
            signatures: narinfo.signatures,
            deriver: narinfo.deriver,
            ca: narinfo.ca,
        };
        // ingest_nar made the blobs durable before the directories.
        Ok(Some(info))
    }

    async fn put(&self, _info: PathInfo) -> Result<PathInfo, Error> {
        Err(Error::ReadOnly(self.name.clone()))
    }

    fn list(&self) -> BoxStream<'_, Result<PathInfo, Error>> {
        Box::pin(futures::stream::once(async move {
            Err(remote(format!(
                "{}: a binary cache cannot be listed (ask for paths by name)",
                self.name
            )))
        }))
    }
}
