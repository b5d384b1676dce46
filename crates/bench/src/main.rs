//! `cairn-bench`: Cairn's benchmark suite.
//!
//! Every job runs a Cairn command against the established tool it replaces
//! (its baseline) on the same input, alternating the two, and reports
//! medians, how they compare and peak memory. [`harness`] holds what all job
//! groups share (spawning, timing, alternating, summarising, reporting),
//! [`corpus`] the input trees they share; every other module is one job
//! group, selected by the first command-line argument.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod all;
mod corpus;
mod fs;
mod grpc;
mod harness;
mod http;
mod import;
mod nar;
mod s3;
mod storage;
mod store;

/// Benchmarks Cairn against the tools it replaces, on this machine, now.
///
/// Build first: `cargo build --release -p cairn -p cairn-bench`. The `cairn`
/// binary under test is the one next to this executable.
#[derive(Parser)]
#[command(name = "cairn-bench", version, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    group: Group,
}

#[derive(Subcommand)]
enum Group {
    /// NAR archives: `cairn nar dump|restore` against `nix-store --dump|--restore`.
    Nar(nar::NarArgs),
    /// Importing trees: `cairn castore import` (cold, warm) against `b3sum` and `cp -r`.
    Import(import::ImportArgs),
    /// Store commands: `cairn import|export|import-nar` against `nix-store --add|--dump|--restore`.
    Store(store::StoreArgs),
    /// Through `cairn daemon` over loopback against the embedded store directly: import and read.
    Grpc(grpc::GrpcArgs),
    /// `cairn serve` against nginx serving files: NAR downloads, narinfo requests/s, `nix copy --from`.
    Http(http::HttpArgs),
    /// Reading through `cairn mount` against the same tree on local disk, cold and warm.
    Fs(fs::FsArgs),
    /// Bytes on disk: two near-identical trees in Cairn against the Nix store and Nix's binary caches.
    Storage(storage::StorageArgs),
    /// Cairn on a real three-node Garage cluster: import vs rclone and vs embedded, cold vs warm render.
    S3(s3::S3Args),
    /// Every group above in turn (and `storage`), then one table of every job and its target.
    All(all::AllArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.group {
        Group::Nar(args) => nar::run(args).map(drop),
        Group::Import(args) => import::run(args).map(drop),
        Group::Store(args) => store::run(args).map(drop),
        Group::Grpc(args) => grpc::run(args).map(drop),
        Group::Http(args) => http::run_group(args).map(drop),
        Group::Fs(args) => fs::run(args).map(drop),
        Group::Storage(args) => storage::run(args).map(drop),
        Group::S3(args) => s3::run(args).map(drop),
        Group::All(args) => all::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
