//! `cairn mount`: the store as a lazy, read-only filesystem (FUSE).

use std::path::PathBuf;

use anyhow::{Context, Result};
use cairn_fs::{mount, MountOptions};
use clap::Args;

use crate::services::ServiceArgs;

#[derive(Args)]
pub struct MountArgs {
    /// An empty directory to mount the store on
    mountpoint: PathBuf,
    /// Let listing the mount's root enumerate every store path (one
    /// query for all PathInfos); without it the root looks empty and
    /// store paths are found by name, e.g. `ls MOUNTPOINT/HASH-NAME`
    #[arg(long)]
    list_root: bool,
    /// Let other users read the mount (non-root users need
    /// `user_allow_other` in /etc/fuse.conf)
    #[arg(long)]
    allow_other: bool,
    /// Threads answering filesystem requests [default: 2 per CPU]
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// How much the kernel reads ahead in a file read sequentially, in
    /// KiB; larger means fewer, bigger requests (helps remote stores).
    /// Setting it needs root: otherwise the kernel's 128 stays. 0 leaves
    /// the kernel's setting alone
    #[arg(long, value_name = "KIB", default_value_t = 1024)]
    read_ahead: u32,
    #[command(flatten)]
    services: ServiceArgs,
}

pub fn run(a: MountArgs) -> Result<()> {
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let store = a.services.open_store()?;
    let mut options = MountOptions {
        list_root: a.list_root,
        allow_other: a.allow_other,
        read_ahead_kib: a.read_ahead,
        ..MountOptions::default()
    };
    if let Some(n) = a.threads {
        options.threads = n.max(1);
    }
    let mounted = mount(store, rt.handle().clone(), &a.mountpoint, &options)?;
    eprintln!("cairn mount: mounted at {}", a.mountpoint.display());
    let external = rt.block_on(async {
        tokio::select! {
            _ = super::daemon::stop_signal() => false,
            _ = mounted.unmounted_elsewhere() => true,
        }
    });
    if external {
        eprintln!("cairn mount: {} was unmounted", a.mountpoint.display());
        drop(mounted);
    } else {
        mounted
            .unmount()
            .with_context(|| format!("cannot unmount {}", a.mountpoint.display()))?;
        eprintln!("cairn mount: unmounted {}", a.mountpoint.display());
    }
    Ok(())
}
