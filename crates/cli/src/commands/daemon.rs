//! `cairn daemon`: the store's three services over gRPC.

use std::sync::Arc;

use anyhow::{Context, Result};
use cairn_grpc::server::Services;
use cairn_grpc::transport::{serve, Location};
use cairn_store::nar_calc::CastoreNarCalculator;
use clap::Args;

use crate::services::ServiceArgs;

#[derive(Args)]
pub struct DaemonArgs {
    /// Where to listen: HOST:PORT (port 0 picks a free one), or unix:/PATH
    /// for a Unix socket. Only loopback by default: the protocol has no
    /// authentication, so expose it with care.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8000")]
    listen: String,
    #[command(flatten)]
    services: ServiceArgs,
}

fn location(listen: &str) -> Location {
    match listen.strip_prefix("unix:") {
        Some(path) => Location::Unix(path.into()),
        None => Location::Tcp(listen.to_owned()),
    }
}

/// Resolves once SIGINT or SIGTERM arrives.
pub(crate) async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: stopping"),
                _ = int.recv() => tracing::info!("SIGINT: stopping"),
            }
        }
        _ => {
            tracing::warn!("cannot watch for signals; stopping only when killed");
            std::future::pending::<()>().await;
        }
    }
}

pub fn run(a: DaemonArgs) -> Result<()> {
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async {
        let store = a.services.open_store()?;
        let nar_calc = Arc::new(CastoreNarCalculator::new(
            store.blobs.clone(),
            store.dirs.clone(),
        ));
        let services = Services::new(
            store.blobs.clone(),
            store.dirs.clone(),
            store.path_infos.clone(),
            nar_calc,
        );
        let at = location(&a.listen);
        serve(
            services,
            &at,
            |bound| eprintln!("cairn daemon: listening on {bound}"),
            stop_signal(),
        )
        .await
        .with_context(|| format!("cannot serve on {at}"))?;
        // Requests in flight have finished: make every acknowledged blob
        // durable before exiting.
        store
            .blobs
            .sync()
            .await
            .context("cannot make the last writes durable")?;
        eprintln!("cairn daemon: stopped");
        Ok(())
    })
}
