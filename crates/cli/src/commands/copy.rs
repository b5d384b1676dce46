//! `cairn copy`: store paths from one store to another.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use cairn_store::copy::copy_paths;
use clap::Args;

use crate::progress::Bar;
use crate::services::ServiceArgs;

#[derive(Args)]
pub struct CopyArgs {
    /// The store to copy from: a daemon (grpc+http://HOST:PORT,
    /// grpc+unix:///PATH) or a data directory [default: the default data
    /// directory]
    #[arg(long, value_name = "STORE")]
    from: Option<String>,
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
        let from = store_args(a.from.as_deref())
            .open_store()
            .context("cannot open the source store")?;
        let to = store_args(a.to.as_deref())
            .open_store()
            .context("cannot open the destination store")?;
        let bar = Bar::bytes_unknown_total("copying");
        let summary = copy_paths(&from, &to, &paths, !a.no_closure, &bar)
            .await
            .context("copy failed")?;
        bar.finish();
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
