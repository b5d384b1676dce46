//! `cairn serve`: the store as a Nix HTTP binary cache.

use std::path::PathBuf;

use anyhow::{Context, Result};
use cairn_http::{CacheServer, ServeConfig, ServedCompression};
use cairn_nix::VerifyingKey;
use clap::Args;

use crate::services::ServiceArgs;

#[derive(Args)]
pub struct ServeArgs {
    /// Where to listen, HOST:PORT (port 0 picks a free one)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9000")]
    listen: String,
    /// How served narinfos point at NARs: none (fastest, ranges served),
    /// zstd or xz (compressed as they are sent; also bzip2, br, gzip)
    #[arg(long, value_name = "NAME", default_value = "none")]
    compression: ServedCompression,
    /// Sign every narinfo served with this secret key (from `cairn key
    /// generate` or `nix-store --generate-binary-cache-key`); give clients
    /// the public key as a trusted-public-key
    #[arg(long, value_name = "FILE")]
    sign_key: Option<PathBuf>,
    /// Require this token for uploads: `Authorization: Bearer TOKEN`, or
    /// basic auth with TOKEN as the password (what Nix sends from a netrc
    /// file). Reads stay open.
    #[arg(
        long,
        env = "CAIRN_UPLOAD_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    upload_token: Option<String>,
    /// Refuse all uploads
    #[arg(long)]
    read_only: bool,
    /// A public key (NAME:BASE64) whose signatures on uploaded narinfos
    /// must verify; repeatable. The --sign-key's own is always checked.
    #[arg(long = "trusted-public-key", value_name = "KEY")]
    trusted_public_keys: Vec<String>,
    /// Keep uploaded build logs and the NAR URLs uploaders used here
    /// [default: DATA_DIR/http]
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// The cache's priority in nix-cache-info (Nix prefers lower)
    #[arg(long, value_name = "N", default_value_t = 30)]
    priority: u32,
    #[command(flatten)]
    services: ServiceArgs,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let sign_key = a
        .sign_key
        .as_deref()
        .map(super::key::read_secret_key)
        .transpose()?;
    let trusted_keys = a
        .trusted_public_keys
        .iter()
        .map(|k| VerifyingKey::parse(k).with_context(|| format!("bad public key {k:?}")))
        .collect::<Result<Vec<_>>>()?;
    let state_dir = match a.state_dir {
        Some(d) => d,
        None => a.services.resolved_data_dir()?.join("http"),
    };
    let config = ServeConfig {
        compression: a.compression,
        sign_key,
        upload_token: a.upload_token.filter(|t| !t.is_empty()),
        read_only: a.read_only,
        trusted_keys,
        state_dir: Some(state_dir),
        priority: a.priority,
    };
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async {
        let store = a.services.open_store()?;
        let server = CacheServer::new(store, config)?;
        let listener = tokio::net::TcpListener::bind(&a.listen)
            .await
            .with_context(|| format!("cannot listen on {}", a.listen))?;
        let bound = listener
            .local_addr()
            .context("cannot read the bound address")?;
        eprintln!("cairn serve: listening on http://{bound}");
        server
            .serve(listener, super::daemon::stop_signal())
            .await
            .context("serving failed")?;
        eprintln!("cairn serve: stopped");
        Ok(())
    })
}
