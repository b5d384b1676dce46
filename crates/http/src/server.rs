//! `cairn serve`: the binary cache's configuration, routes and listener.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /nix-cache-info` | store dir, mass-query hint, priority |
//! | `GET`/`HEAD /HASH.narinfo` | rendered from the PathInfo, signed on the fly with `--sign-key` |
//! | `GET`/`HEAD /nar/HASH-NARHASH.nar[.zst,.xz]` | the NAR rendered from castore; ranges when uncompressed |
//! | `GET /HASH.ls` | the JSON file listing with `narOffset`s, from directories alone |
//! | `PUT /nar/…`, `PUT /HASH.narinfo` | `nix copy --to`: the NAR is ingested as it arrives, attached when its narinfo checks out |
//! | `GET`/`PUT /log/DRV` | build logs |
//! | `GET /metrics`, `GET /health` | Prometheus text; liveness |
//!
//! The handlers live in `routes` and `upload`; this module must not grow
//! request logic.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::Router;
use cairn_nix::{SigningKey, VerifyingKey};
use cairn_store::Store;
use tokio::net::TcpListener;

use crate::logs::LogStore;
use crate::metrics::Metrics;
use crate::nar_urls::NarUrls;
use crate::upload::PendingNars;
use crate::{routes, upload};

/// How a NAR is compressed on the way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServedCompression {
    /// Plain NARs: no CPU spent, ranges served, `Content-Length` known.
    #[default]
    None,
    /// zstd (level 3): fast, about as small as xz at level 6 for most trees.
    Zstd,
    /// xz: what cache.nixos.org serves; slow to produce.
    Xz,
    /// bzip2 (old caches; served where an uploader chose it).
    Bzip2,
    /// brotli.
    Brotli,
    /// gzip.
    Gzip,
}

impl ServedCompression {
    const ALL: [ServedCompression; 6] = [
        Self::Zstd,
        Self::Xz,
        Self::Bzip2,
        Self::Brotli,
        Self::Gzip,
        Self::None,
    ];

    /// The narinfo `Compression:` value.
    pub fn name(self) -> &'static str {
        match self {
            ServedCompression::None => "none",
            ServedCompression::Zstd => "zstd",
            ServedCompression::Xz => "xz",
            ServedCompression::Bzip2 => "bzip2",
            ServedCompression::Brotli => "br",
            ServedCompression::Gzip => "gzip",
        }
    }

    /// The ending of this server's NAR URLs.
    pub(crate) fn extension(self) -> &'static str {
        match self {
            ServedCompression::None => ".nar",
            ServedCompression::Zstd => ".nar.zst",
            ServedCompression::Xz => ".nar.xz",
            ServedCompression::Bzip2 => ".nar.bz2",
            ServedCompression::Brotli => ".nar.br",
            ServedCompression::Gzip => ".nar.gz",
        }
    }

    /// From one of this server's NAR URLs' ending.
    pub(crate) fn from_extension(file: &str) -> Option<(&str, Self)> {
        Self::ALL
            .into_iter()
            .find_map(|c| file.strip_suffix(c.extension()).map(|stem| (stem, c)))
    }
}

impl std::str::FromStr for ServedCompression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| format!("{s:?}: expected none, zstd, xz, bzip2, br or gzip"))
    }
}

/// What `cairn serve` was told.
#[derive(Clone, Default)]
pub struct ServeConfig {
    /// The compression served narinfos name.
    pub compression: ServedCompression,
    /// Signs every narinfo served (in addition to stored signatures).
    pub sign_key: Option<SigningKey>,
    /// Uploads need `Authorization: Bearer TOKEN`, or basic auth with
    /// TOKEN as the password; without it uploads are open.
    pub upload_token: Option<String>,
    /// Refuse every upload.
    pub read_only: bool,
    /// An uploaded narinfo's signature by one of these keys' names must
    /// verify (as must one by `sign_key`'s name).
    pub trusted_keys: Vec<VerifyingKey>,
    /// Where uploaded build logs (`logs/`) and the NAR URLs of uploads
    /// (`nar-urls.redb`) are kept; `None`: logs are refused and URLs
    /// remembered only while the server runs.
    pub state_dir: Option<PathBuf>,
    /// `Priority:` in `nix-cache-info` (lower is preferred by Nix).
    pub priority: u32,
}

/// A binary cache over a store.
#[derive(Clone)]
pub struct CacheServer {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) config: ServeConfig,
    pub(crate) pending: PendingNars,
    pub(crate) logs: Option<LogStore>,
    pub(crate) nar_urls: NarUrls,
    pub(crate) metrics: Metrics,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The state directory cannot be used.
    #[error("state directory {path}: {reason}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A configuration that would be unsafe to run.
    #[error("{0}")]
    Unsafe(&'static str),
    /// Listening or serving failed.
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

impl CacheServer {
    /// A cache serving `store` as `config` says.
    pub fn new(store: Store, config: ServeConfig) -> Result<Self, ServeError> {
        // Signing what anyone may upload would lend the key to anyone.
        if config.sign_key.is_some() && config.upload_token.is_none() && !config.read_only {
            return Err(ServeError::Unsafe(
                "a signing key signs whatever is uploaded: protect uploads with an upload \
                 token (--upload-token or CAIRN_UPLOAD_TOKEN), or serve read-only (--read-only)",
            ));
        }
        let state_err = |path: &std::path::Path, reason: String| ServeError::StateDir {
            path: path.to_owned(),
            reason,
        };
        let (logs, nar_urls) = match &config.state_dir {
            Some(dir) => (
                Some(LogStore::open(&dir.join("logs")).map_err(|e| state_err(dir, e.to_string()))?),
                NarUrls::open(&dir.join("nar-urls.redb"))
                    .map_err(|e| state_err(dir, e.to_string()))?,
            ),
            None => (None, NarUrls::in_memory()),
        };
        Ok(CacheServer {
            inner: Arc::new(Inner {
                store,
                config,
                pending: PendingNars::default(),
                logs,
                nar_urls,
                metrics: Metrics::default(),
            }),
        })
    }

    /// The routes, for serving or for embedding in another router.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/nix-cache-info", get(routes::cache_info))
            .route("/health", get(routes::health))
            .route("/metrics", get(routes::metrics))
            .route(
                "/nar/{file}",
                get(routes::nar).head(routes::nar).put(upload::put_nar),
            )
            .route("/log/{drv}", get(routes::get_log).put(upload::put_log))
            .route(
                "/{file}",
                get(routes::top_level)
                    .head(routes::top_level)
                    .put(upload::put_narinfo),
            )
            .fallback(routes::not_found)
            // NARs are streamed, never buffered: no size limit on bodies
            // (narinfos and logs set their own).
            .layer(DefaultBodyLimit::disable())
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                crate::metrics::track,
            ))
            .with_state(self.clone())
    }

    /// Serves on `listener` until `shutdown` completes, then lets the
    /// requests in flight finish and makes what was uploaded durable.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            // Small responses (narinfos) must not wait for Nagle.
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await?;
        self.inner
            .store
            .blobs
            .sync()
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(())
    }

    /// The store served.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }
}
