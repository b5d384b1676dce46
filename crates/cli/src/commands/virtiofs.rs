//! `cairn virtiofs`: the store's lazy filesystem for a virtual machine,
//! as a vhost-user virtio-fs device on a Unix socket.

use std::path::PathBuf;

use anyhow::{Context, Result};
use cairn_fs::{serve_virtiofs, StoreFs};
use clap::Args;

use crate::services::ServiceArgs;

#[derive(Args)]
pub struct VirtiofsArgs {
    /// The Unix socket to create for the VMM (cloud-hypervisor `--fs
    /// socket=…`, QEMU `-chardev socket,path=…` with `vhost-user-fs-pci`)
    socket: PathBuf,
    /// Let listing the filesystem's root enumerate every store path
    #[arg(long)]
    list_root: bool,
    #[command(flatten)]
    services: ServiceArgs,
}

pub fn run(a: VirtiofsArgs) -> Result<()> {
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let store = a.services.open_store()?;
    let fs = StoreFs::new(store, rt.handle().clone(), a.list_root);
    eprintln!("cairn virtiofs: listening on {}", a.socket.display());
    let socket = a.socket.clone();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(serve_virtiofs(fs, &socket));
    });
    // The device thread ends when the VMM disconnects; a signal ends the
    // device (the store is read-only here: nothing to flush).
    let outcome = rt.block_on(async {
        tokio::select! {
            _ = super::daemon::stop_signal() => None,
            served = done_rx => Some(served),
        }
    });
    let _ = std::fs::remove_file(&a.socket);
    match outcome {
        None => eprintln!("cairn virtiofs: stopped"),
        Some(Ok(result)) => {
            result?;
            eprintln!("cairn virtiofs: the VMM disconnected");
        }
        Some(Err(_)) => anyhow::bail!("the virtio-fs device thread failed"),
    }
    // On a signal the device thread is still serving: end the process
    // rather than wait for it.
    std::process::exit(0)
}
