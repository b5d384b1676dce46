//! Where the services live: the data directory (the embedded default) or
//! explicit service addresses, as flags every store-using command shares.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use cairn_castore::addr::{blob_service_from_addr, directory_service_from_addr};
use cairn_castore::{BlobService, DirectoryService};
use clap::Args;

/// Service selection flags.
#[derive(Args, Debug, Clone)]
pub struct ServiceArgs {
    /// The data directory of the embedded store [env: CAIRN_DATA_DIR]
    /// [default: $XDG_DATA_HOME/cairn, else ~/.local/share/cairn]
    #[arg(long, env = "CAIRN_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Blob service address, e.g. memory:// or objects:///srv/cairn/objects?compression=zstd
    /// [default: objects://DATA_DIR/objects]
    #[arg(long, value_name = "ADDR")]
    pub blob_service_addr: Option<String>,

    /// Directory service address, e.g. memory:// or redb:///srv/cairn/castore.redb
    /// (append ?size-rule=tvix-compat when creating a store that exchanges
    /// directories with tvix/snix) [default: redb://DATA_DIR/castore.redb]
    #[arg(long, value_name = "ADDR")]
    pub directory_service_addr: Option<String>,
}

/// The opened services.
pub struct Services {
    pub blobs: Arc<dyn BlobService>,
    pub dirs: Arc<dyn DirectoryService>,
}

impl ServiceArgs {
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

    /// Opens the services the flags name.
    pub fn open(&self) -> Result<Services> {
        let needs_data_dir =
            self.blob_service_addr.is_none() || self.directory_service_addr.is_none();
        let data = if needs_data_dir {
            Some(self.data_dir()?)
        } else {
            None
        };
        let addr =
            |given: &Option<String>, default: &dyn Fn(&std::path::Path) -> String| -> String {
                given
                    .clone()
                    .unwrap_or_else(|| data.as_deref().map(default).unwrap_or_default())
            };
        let blob_addr = addr(&self.blob_service_addr, &|d| {
            format!("objects://{}", d.join("objects").display())
        });
        let dir_addr = addr(&self.directory_service_addr, &|d| {
            format!("redb://{}", d.join("castore.redb").display())
        });
        tracing::debug!(%blob_addr, %dir_addr, "opening services");
        Ok(Services {
            blobs: blob_service_from_addr(&blob_addr)
                .with_context(|| format!("cannot open blob service {blob_addr}"))?,
            dirs: directory_service_from_addr(&dir_addr)
                .with_context(|| format!("cannot open directory service {dir_addr}"))?,
        })
    }
}
