//! `cairn gc`: delete what no store path reaches.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::{ArgGroup, Args};

use crate::services::ServiceArgs;

#[derive(Args)]
#[command(group(ArgGroup::new("mode").required(true).args(["dry_run", "yes"])))]
pub struct GcArgs {
    /// Report what would be deleted, and delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Delete.
    #[arg(long)]
    yes: bool,
    /// Keep unreachable blobs and directories written (or reused) less
    /// than this many minutes ago: they may belong to an import still
    /// running elsewhere.
    #[arg(long, value_name = "MINUTES", default_value_t = 60)]
    grace_minutes: u64,
    #[command(flatten)]
    services: ServiceArgs,
}

pub fn run(a: GcArgs) -> Result<()> {
    let store = a.services.open_existing_store()?;
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let grace = Duration::from_secs(a.grace_minutes.saturating_mul(60));
    let s = rt
        .block_on(store.collect_garbage(grace, a.dry_run))
        .context("garbage collection failed")?;
    let verb = if a.dry_run { "would delete" } else { "deleted" };
    super::say(format_args!(
        "store paths: {} (everything they reach is kept)",
        s.paths
    ))?;
    super::say(format_args!(
        "directories: {} live, {} unreachable but younger than {} min (kept), {verb} {} ({} bytes)",
        s.directories.live,
        s.directories.young,
        a.grace_minutes,
        s.directories.deleted,
        s.directories.deleted_bytes
    ))?;
    super::say(format_args!(
        "blob objects: {} live, {} unreachable but younger than {} min (kept), {verb} {} ({} bytes)",
        s.blobs.live, s.blobs.young, a.grace_minutes, s.blobs.deleted, s.blobs.deleted_bytes
    ))
}
