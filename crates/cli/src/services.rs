//! Where the services live: the data directory (the embedded default) or
//! explicit service addresses, as flags every store-using command shares.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use cairn_castore::{BlobService, DirectoryService};
use cairn_grpc::addr::{blob_service_from_addr, directory_service_from_addr};
use cairn_http::addr::path_info_service_from_addr;
use cairn_store::Store;
use clap::Args;

/// Service selection flags.
#[derive(Args, Debug, Clone)]
pub struct ServiceArgs {
    /// The data directory of the embedded store [env: CAIRN_DATA_DIR]
    /// [default: $XDG_DATA_HOME/cairn, else ~/.local/share/cairn]
    #[arg(long, env = "CAIRN_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// All three services on one `cairn daemon`: grpc+http://HOST:PORT or
    /// grpc+unix:///PATH (a flag for one service below takes precedence)
    #[arg(long, env = "CAIRN_STORE_ADDR", value_name = "ADDR")]
    pub store_addr: Option<String>,

    /// Keep a local cache of the remote store (--store-addr or the flags
    /// below) in this directory: reads are served from it and filled from
    /// the remote on a miss, so a second read works with the remote gone
    #[arg(long, env = "CAIRN_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Blob service address, e.g. memory://, objects:///srv/cairn/objects?compression=zstd
    /// or grpc+http://127.0.0.1:8000 [default: objects://DATA_DIR/objects]
    #[arg(long, env = "CAIRN_BLOB_SERVICE_ADDR", value_name = "ADDR")]
    pub blob_service_addr: Option<String>,

    /// Directory service address, e.g. memory://, redb:///srv/cairn/castore.redb
    /// or grpc+unix:///run/cairn.sock
    /// (append ?size-rule=tvix-compat when creating a store that exchanges
    /// directories with tvix/snix) [default: redb://DATA_DIR/castore.redb]
    #[arg(long, env = "CAIRN_DIRECTORY_SERVICE_ADDR", value_name = "ADDR")]
    pub directory_service_addr: Option<String>,

    /// PathInfo service address, e.g. memory://, redb:///srv/cairn/pathinfo.redb,
    /// grpc+http://127.0.0.1:8000, or a Nix binary cache to fetch paths from
    /// on demand: nix+https://cache.example.org?trusted-public-keys=NAME:KEY
    /// (ignored by `cairn castore` commands) [default: redb://DATA_DIR/pathinfo.redb]
    #[arg(long, env = "CAIRN_PATH_INFO_SERVICE_ADDR", value_name = "ADDR")]
    pub path_info_service_addr: Option<String>,
}

/// The same flags before the subcommand (`cairn --data-dir D import P`):
/// they apply to whichever subcommand follows, which may still override
/// them with its own. Kept apart from [`ServiceArgs`] so the subcommands'
/// help stays theirs.
#[derive(Args, Debug, Clone, Default)]
pub struct LeadingServiceArgs {
    /// The data directory of the embedded store, for the subcommand that follows
    #[arg(long = "data-dir", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// One `cairn daemon` for all three services, for the subcommand that follows
    #[arg(long = "store-addr", value_name = "ADDR")]
    store_addr: Option<String>,
    /// A local cache of the remote store, for the subcommand that follows
    #[arg(long = "cache-dir", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// The blob service address, for the subcommand that follows
    #[arg(long = "blob-service-addr", value_name = "ADDR")]
    blob_service_addr: Option<String>,
    /// The directory service address, for the subcommand that follows
    #[arg(long = "directory-service-addr", value_name = "ADDR")]
    directory_service_addr: Option<String>,
    /// The PathInfo service address, for the subcommand that follows
    #[arg(long = "path-info-service-addr", value_name = "ADDR")]
    path_info_service_addr: Option<String>,
}

impl LeadingServiceArgs {
    /// The environment variables that carry these flags to the subcommand:
    /// each subcommand's flags read them as their defaults, so a flag given
    /// after the subcommand still wins.
    pub fn as_env(&self) -> Vec<(&'static str, std::ffi::OsString)> {
        let mut out = Vec::new();
        let mut put = |k: &'static str, v: Option<std::ffi::OsString>| {
            if let Some(v) = v {
                out.push((k, v));
            }
        };
        put("CAIRN_DATA_DIR", self.data_dir.clone().map(Into::into));
        put("CAIRN_STORE_ADDR", self.store_addr.clone().map(Into::into));
        put("CAIRN_CACHE_DIR", self.cache_dir.clone().map(Into::into));
        put(
            "CAIRN_BLOB_SERVICE_ADDR",
            self.blob_service_addr.clone().map(Into::into),
        );
        put(
            "CAIRN_DIRECTORY_SERVICE_ADDR",
            self.directory_service_addr.clone().map(Into::into),
        );
        put(
            "CAIRN_PATH_INFO_SERVICE_ADDR",
            self.path_info_service_addr.clone().map(Into::into),
        );
        out
    }
}

/// What marks a data directory as holding a store: the first import
/// creates it.
const STORE_MARKER: &str = "castore.redb";

/// Fails unless `dir` holds a store.
fn require_store(dir: &std::path::Path) -> Result<()> {
    if dir.join(STORE_MARKER).exists() {
        return Ok(());
    }
    anyhow::bail!(
        "no Cairn store in {}: nothing has been imported there (check --data-dir or CAIRN_DATA_DIR)",
        dir.display()
    )
}

/// The opened castore services.
pub struct Services {
    pub blobs: Arc<dyn BlobService>,
    pub dirs: Arc<dyn DirectoryService>,
}

impl ServiceArgs {
    /// No flags given: the default data directory (`CAIRN_DATA_DIR` if set).
    pub fn none() -> Self {
        ServiceArgs {
            data_dir: std::env::var_os("CAIRN_DATA_DIR")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            store_addr: None,
            cache_dir: None,
            blob_service_addr: None,
            directory_service_addr: None,
            path_info_service_addr: None,
        }
    }

    /// A service's address: its own flag, else `--store-addr`.
    fn given(&self, own: &Option<String>) -> Option<String> {
        own.clone().or_else(|| self.store_addr.clone())
    }

    /// With `--cache-dir`, `remote` layered behind the cache (`local`
    /// makes the embedded backend's address in the cache directory).
    fn cached(&self, remote: String, local: impl Fn(&std::path::Path) -> String) -> Result<String> {
        let Some(dir) = &self.cache_dir else {
            return Ok(remote);
        };
        let dir = std::path::absolute(dir)
            .with_context(|| format!("cannot resolve {}", dir.display()))?;
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("local", &local(&dir))
            .append_pair("remote", &remote)
            .finish();
        Ok(format!("layered://?{query}"))
    }

    /// The data directory these flags name (or the default one), whether
    /// or not the services live there.
    pub fn resolved_data_dir(&self) -> Result<PathBuf> {
        self.data_dir()
    }

    fn data_dir(&self) -> Result<PathBuf> {
        if let Some(d) = &self.data_dir {
            return std::path::absolute(d)
                .with_context(|| format!("cannot resolve {}", d.display()));
        }
        let base = match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            Some(x) => PathBuf::from(x),
            None => PathBuf::from(
                std::env::var_os("HOME")
                    .context("neither --data-dir, CAIRN_DATA_DIR, XDG_DATA_HOME nor HOME is set")?,
            )
            .join(".local/share"),
        };
        Ok(base.join("cairn"))
    }

    /// A cache with nothing remote to cache is a mistake worth saying.
    fn check_cache(&self) -> Result<()> {
        let remote = self.store_addr.is_some()
            || self.blob_service_addr.is_some()
            || self.directory_service_addr.is_some()
            || self.path_info_service_addr.is_some();
        if self.cache_dir.is_some() && !remote {
            anyhow::bail!(
                "--cache-dir caches a remote store: give it --store-addr (or a service address)"
            );
        }
        Ok(())
    }

    /// Opens the castore services the flags name, creating the data
    /// directory's store if it has none yet (for commands that write).
    pub fn open(&self) -> Result<Services> {
        self.open_castore_with(false)
    }

    /// Opens the castore services of a store that must exist already (for
    /// commands that only read): a mistyped `--data-dir` is an error, not
    /// a new empty store.
    pub fn open_existing(&self) -> Result<Services> {
        self.open_castore_with(true)
    }

    fn open_castore_with(&self, must_exist: bool) -> Result<Services> {
        self.check_cache()?;
        let data = self.data_dir_if_needed(false)?;
        if let (true, Some(d)) = (must_exist, &data) {
            require_store(d)?;
        }
        self.open_castore(data.as_deref())
    }

    /// Opens all three services: a store, created in the data directory
    /// if it has none yet (for commands that write).
    pub fn open_store(&self) -> Result<Store> {
        self.open_store_with(false)
    }

    /// Opens a store that must exist already (for commands that only
    /// read, or change only what is there).
    pub fn open_existing_store(&self) -> Result<Store> {
        self.open_store_with(true)
    }

    fn open_store_with(&self, must_exist: bool) -> Result<Store> {
        self.check_cache()?;
        let data = self.data_dir_if_needed(true)?;
        if let (true, Some(d)) = (must_exist, &data) {
            require_store(d)?;
        }
        let castore = self.open_castore(data.as_deref())?;
        let pathinfo =
            |d: &std::path::Path| format!("redb://{}", d.join("pathinfo.redb").display());
        let addr = match (&self.given(&self.path_info_service_addr), &data) {
            (Some(a), _) => self.cached(a.clone(), pathinfo)?,
            (None, Some(d)) => pathinfo(d),
            (None, None) => anyhow::bail!("no path info service address and no data directory"),
        };
        tracing::debug!(path_info_addr = %addr, "opening path info service");
        let path_infos = path_info_service_from_addr(&addr, &castore.blobs, &castore.dirs)
            .with_context(|| format!("cannot open path info service {addr}"))?;
        Ok(Store {
            blobs: castore.blobs,
            dirs: castore.dirs,
            path_infos,
        })
    }

    fn data_dir_if_needed(&self, with_path_infos: bool) -> Result<Option<PathBuf>> {
        let needs_data_dir = self.given(&self.blob_service_addr).is_none()
            || self.given(&self.directory_service_addr).is_none()
            || (with_path_infos && self.given(&self.path_info_service_addr).is_none());
        if needs_data_dir {
            Ok(Some(self.data_dir()?))
        } else {
            Ok(None)
        }
    }

    fn open_castore(&self, data: Option<&std::path::Path>) -> Result<Services> {
        let objects = |d: &std::path::Path| format!("objects://{}", d.join("objects").display());
        let castore = |d: &std::path::Path| format!("redb://{}", d.join("castore.redb").display());
        let blob_addr = match self.given(&self.blob_service_addr) {
            Some(remote) => self.cached(remote, objects)?,
            None => data.map(objects).unwrap_or_default(),
        };
        let dir_addr = match self.given(&self.directory_service_addr) {
            Some(remote) => self.cached(remote, castore)?,
            None => data.map(castore).unwrap_or_default(),
        };
        tracing::debug!(%blob_addr, %dir_addr, "opening services");
        Ok(Services {
            blobs: blob_service_from_addr(&blob_addr)
                .with_context(|| format!("cannot open blob service {blob_addr}"))?,
            dirs: directory_service_from_addr(&dir_addr)
                .with_context(|| format!("cannot open directory service {dir_addr}"))?,
        })
    }
}
