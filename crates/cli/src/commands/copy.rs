//! `cairn copy`: store paths from one store to another.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use cairn_http::cache::NixCache;
use cairn_store::copy::copy_paths;
use cairn_store::Store;
use clap::Args;

use crate::progress::Bar;
use crate::services::ServiceArgs;

#[derive(Args)]
pub struct CopyArgs {
    /// The store to copy from: a daemon (grpc+http://HOST:PORT,
    /// grpc+unix:///PATH), a data directory, or a Nix binary cache
    /// (nix+https://HOST/…, nix+http://…, nix+file:///DIR; plain http(s)://
    /// and file:// mean the same), whose NARs are checked against their
    /// narinfos as they stream in [default: the default data directory]
    #[arg(long, value_name = "STORE")]
    from: Option<String>,
    /// With a binary cache --from: a public key (NAME:BASE64) whose
    /// signature makes a path trusted; repeatable. Paths without a valid
    /// signature by one of them are refused.
    #[arg(long = "trusted-public-key", value_name = "KEY")]
    trusted_public_keys: Vec<String>,
    /// With a binary cache --from: do not check signatures (NAR hashes
    /// still are), e.g. for an unsigned cache of your own
    #[arg(long, conflicts_with = "trusted_public_keys")]
    no_check_sigs: bool,
    /// The store to copy to, in the same forms [default: the default data
    /// directory]
    #[arg(long, value_name = "STORE")]
    to: Option<String>,
    /// Copy only the paths named, not what they refer to.
    #[arg(long)]
    no_closure: bool,
    /// Store paths to copy.
    #[arg(required = true, value_name = "STORE-PATH")]
    paths: Vec<String>,
}

/// The services of a `--from`/`--to` store.
fn store_args(given: Option<&str>) -> ServiceArgs {
    let mut args = ServiceArgs::none();
    match given {
        Some(s) if s.contains("://") => args.store_addr = Some(s.to_owned()),
        Some(dir) => args.data_dir = Some(PathBuf::from(dir)),
        None => {}
    }
    args
}

/// A binary cache address (`nix+` form) for `given`, or `None` when it
/// names another kind of store.
fn cache_addr(given: &str, a: &CopyArgs) -> Result<Option<String>> {
    let addr = if given.starts_with("nix+") {
        given.to_owned()
    } else if ["http://", "https://", "file://"]
        .iter()
        .any(|p| given.starts_with(p))
    {
        format!("nix+{given}")
    } else {
        return Ok(None);
    };
    let mut url = url::Url::parse(&addr).with_context(|| format!("{given} is not a URL"))?;
    let has_option = url
        .query_pairs()
        .any(|(k, _)| k == "trusted-public-keys" || k == "check-sigs");
    if !has_option {
        if a.no_check_sigs {
            url.query_pairs_mut().append_pair("check-sigs", "false");
        } else if !a.trusted_public_keys.is_empty() {
            url.query_pairs_mut()
                .append_pair("trusted-public-keys", &a.trusted_public_keys.join(","));
        } else {
            bail!(
                "copying from the binary cache {given}: say whose signatures to trust \
                 (--trusted-public-key NAME:KEY), or pass --no-check-sigs"
            );
        }
    }
    Ok(Some(url.to_string()))
}

/// "1 path", "2 paths", "0 directories".
fn count(n: u64, noun: &str) -> String {
    match (n, noun.strip_suffix('y')) {
        (1, _) => format!("1 {noun}"),
        (_, Some(stem)) => format!("{n} {stem}ies"),
        _ => format!("{n} {noun}s"),
    }
}

pub fn run(a: CopyArgs) -> Result<()> {
    if a.from.is_none() && a.to.is_none() {
        bail!("give --from, --to or both (the other defaults to the default data directory)");
    }
    if a.from == a.to {
        bail!("--from and --to name the same store");
    }
    let paths = a
        .paths
        .iter()
        .map(|p| super::store::whole_path(p))
        .collect::<Result<Vec<_>>>()?;
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async {
        let to = store_args(a.to.as_deref())
            .open_store()
            .context("cannot open the destination store")?;
        let bar = Bar::bytes_unknown_total("copying");
        let cache = match a.from.as_deref() {
            Some(given) => cache_addr(given, &a)?,
            None => None,
        };
        // A binary cache's NARs are ingested straight into the
        // destination's castore; the copy then only adds PathInfos.
        let binary_cache = match cache {
            Some(addr) => Some(Arc::new(
                NixCache::from_addr(&addr, to.blobs.clone(), to.dirs.clone())
                    .with_context(|| format!("cannot use binary cache {addr}"))?
                    .with_progress(Arc::new(bar.clone())),
            )),
            None => None,
        };
        let from = match &binary_cache {
            Some(cache) => Store {
                path_infos: cache.clone(),
                ..to.clone()
            },
            None => store_args(a.from.as_deref())
                .open_existing_store()
                .context("cannot open the source store")?,
        };
        let summary = copy_paths(&from, &to, &paths, !a.no_closure, &bar)
            .await
            .context("copy failed")?;
        bar.finish();
        if let Some(cache) = &binary_cache {
            eprintln!(
                "copied {} ({} already there) from the binary cache: {} NAR bytes fetched, checked and stored",
                count(summary.copied, "path"),
                summary.present,
                cache.fetched_bytes()
            );
            return Ok(());
        }
        eprintln!(
            "copied {} ({} already there): {}, {} bytes, {} sent",
            count(summary.copied, "path"),
            summary.present,
            count(summary.blobs_sent, "blob"),
            summary.bytes_sent,
            count(summary.directories_sent, "directory")
        );
        Ok(())
    })
}
