//! 32 clients at once, each on its own connection, importing trees into one
//! daemon (on-disk backends) and reading them back, for a bounded time: no
//! errors, no lost paths, every NAR read back as imported. Prints the
//! throughput it saw.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_castore::import::NoProgress;
use cairn_grpc::server::Services;
use cairn_grpc::transport::{spawn, Location};
use cairn_store::nar_calc::CastoreNarCalculator;
use cairn_store::Store;
use cairn_testkit::pseudo_random_bytes;

const CLIENTS: u64 = 32;
const RUN_FOR: Duration = Duration::from_secs(3);

/// A small tree unique to (client, round): a few files, one shared by all.
fn make_tree(dir: &Path, client: u64, round: u64) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let seed = client * 1_000_000 + round;
    std::fs::write(dir.join("own"), pseudo_random_bytes(seed, 20_000)).unwrap();
    std::fs::write(
        dir.join("sub/big"),
        pseudo_random_bytes(seed + 1, 1_500_000),
    )
    .unwrap();
    std::fs::write(dir.join("sub/shared"), b"the same in every tree\n").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_clients_import_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display().to_string();
    let server = Store {
        blobs: cairn_castore::addr::blob_service_from_addr(&format!("objects://{root}/objects"))
            .unwrap(),
        dirs: cairn_castore::addr::directory_service_from_addr(&format!(
            "redb://{root}/castore.redb"
        ))
        .unwrap(),
        path_infos: cairn_store::addr::path_info_service_from_addr(&format!(
            "redb://{root}/pathinfo.redb"
        ))
        .unwrap(),
    };
    let services = Services::new(
        server.blobs.clone(),
        server.dirs.clone(),
        server.path_infos.clone(),
        Arc::new(CastoreNarCalculator::new(
            server.blobs.clone(),
            server.dirs.clone(),
        )),
    );
    let server_task = spawn(services, Location::Tcp("127.0.0.1:0".into()))
        .await
        .unwrap();
    let addr = server_task.addr();

    let started = Instant::now();
    let deadline = started + RUN_FOR;
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let addr = addr.clone();
        let scratch = dir.path().join(format!("client-{client}"));
        clients.push(tokio::spawn(async move {
            // Each client opens its own connections.
            let store = Store {
                blobs: cairn_grpc::addr::blob_service_from_addr(&addr).unwrap(),
                dirs: cairn_grpc::addr::directory_service_from_addr(&addr).unwrap(),
                path_infos: cairn_grpc::addr::path_info_service_from_addr(&addr).unwrap(),
            };
            let mut done = Vec::new();
            let mut bytes = 0u64;
            let mut round = 0;
            // At least one round each, however slow the machine.
            while round == 0 || Instant::now() < deadline {
                let tree = scratch.join(format!("tree-{round}"));
                make_tree(&tree, client, round);
                let info = store
                    .import_tree(&tree, &format!("c{client}-r{round}"), &NoProgress)
                    .await
                    .unwrap();
                let (_, layout) = store.nar_layout(&info.store_path).await.unwrap();
                let nar = layout
                    .write_range(store.blobs.as_ref(), Vec::new(), 0..layout.size())
                    .await
                    .unwrap();
                let want = cairn_nix::nar::fs::dump_path(&tree, Vec::new()).unwrap();
                assert!(nar == want, "client {client} round {round}: NAR differs");
                bytes += 2 * nar.len() as u64;
                done.push(info.store_path);
                round += 1;
            }
            (done, bytes)
        }));
    }
    let mut all = Vec::new();
    let mut bytes = 0;
    for c in clients {
        let (paths, b) = c.await.unwrap();
        all.extend(paths);
        bytes += b;
    }
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "{CLIENTS} clients: {} paths imported and read back in {elapsed:.1} s \
         ({:.1} paths/s, {:.1} MB/s through the daemon)",
        all.len(),
        all.len() as f64 / elapsed,
        bytes as f64 / elapsed / 1e6
    );
    server_task.stop().await.unwrap();
    // No path lost: every one is in the daemon's store.
    for p in &all {
        assert!(
            server.path_infos.get(p.digest()).await.unwrap().is_some(),
            "{p} was acknowledged but is not stored"
        );
    }
    assert!(all.len() as u64 >= CLIENTS);
}
