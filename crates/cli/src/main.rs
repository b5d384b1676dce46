//! `cairn`: the one binary. Parses the command line, sets up logging, and
//! hands each subcommand to its module. Library crates do the work; this
//! crate only wires them together and turns errors into exit codes.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;
mod progress;
mod services;

/// Cairn stores Nix build outputs as content-addressed blobs and
/// directories, and speaks Nix's own formats (NAR, narinfo, store paths)
/// byte for byte.
///
/// Exit status: 0 on success, 1 when the command failed (the reason is one
/// line on stderr), 2 when the command line itself is wrong.
#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    #[command(flatten)]
    leading: services::LeadingServiceArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Add files or directories to the store, as `nix-store --add` does, and print their store paths.
    ///
    /// Each PATH becomes the same store path, with the same NAR hash, that
    /// `nix-store --add PATH` gives it (a content-addressed `source` path).
    Import(commands::store::ImportArgs),
    /// Add a NAR to the store, as a named source path or as described by a narinfo.
    ///
    /// The NAR is read once, streaming; nothing is added unless it is valid,
    /// complete and (with --narinfo) matches the narinfo's NarHash and NarSize.
    #[command(name = "import-nar")]
    ImportNar(commands::store::ImportNarArgs),
    /// Write a store path's NAR to stdout (like `nix-store --dump`), or its tree to --to DEST.
    Export(commands::store::ExportArgs),
    /// Show store paths' NAR hash and size, references, deriver, CA and signatures.
    #[command(name = "path-info")]
    PathInfo(commands::store::PathInfoArgs),
    /// List a directory (or describe a file) inside a store path, without exporting it.
    Ls(commands::store::LsArgs),
    /// Write one file inside a store path to stdout, without exporting the path.
    Cat(commands::store::CatArgs),
    /// Add a binary-cache signature to store paths (replacing the key's old one).
    Sign(commands::store::SignArgs),
    /// Delete directories and blobs that no store path reaches (--dry-run to only report).
    ///
    /// Everything reachable from a PathInfo is kept; of the rest, blobs
    /// written or reused within the grace period are kept too, so an import
    /// running elsewhere is never harmed.
    Gc(commands::gc::GcArgs),
    /// Copy store paths, with everything they refer to, between two stores.
    ///
    /// Only the blobs and directories the destination lacks are sent; a
    /// path appears at the destination only once all of it is there.
    Copy(commands::copy::CopyArgs),
    /// Serve the store over gRPC (tvix.castore.v1 / tvix.store.v1, and snix.*).
    ///
    /// Other cairn commands, and tvix/snix tools, then use it with
    /// --store-addr grpc+http://HOST:PORT (or grpc+unix:///PATH). Stops on
    /// SIGTERM or SIGINT after finishing the requests in flight.
    Daemon(commands::daemon::DaemonArgs),
    /// Serve the store as a Nix binary cache over HTTP (substituter and `nix copy --to` target).
    ///
    /// narinfos and NARs are rendered from the store on each request;
    /// uploads from `nix copy --to http://HOST:PORT` are ingested as they
    /// arrive and appear once their narinfo checks out. Stops on SIGTERM or
    /// SIGINT after finishing the requests in flight.
    Serve(commands::serve::ServeArgs),
    /// Mount the store as a read-only filesystem (FUSE) that fetches only what is read.
    ///
    /// Every store path appears under MOUNTPOINT by its base name; a
    /// directory is fetched when first looked into, a file's contents
    /// (chunk by chunk, verified) when read. Unmounts on SIGTERM or SIGINT.
    Mount(commands::mount::MountArgs),
    /// Serve the same lazy filesystem to a virtual machine, as a vhost-user virtio-fs device.
    ///
    /// Creates SOCKET and serves one VMM; stops when it disconnects, or on
    /// SIGTERM or SIGINT. The guest mounts it with `mount -t virtiofs TAG
    /// DIR`.
    Virtiofs(commands::virtiofs::VirtiofsArgs),
    /// Work with NAR archives: dump, restore, hash and list them.
    #[command(subcommand)]
    Nar(commands::nar::NarCommand),
    /// Print the store path `nix-store --add PATH` would create, without adding it.
    StorePath(commands::store_path::StorePathArgs),
    /// Manage binary-cache signing keys.
    #[command(subcommand)]
    Key(commands::key::KeyCommand),
    /// Sign and verify narinfo files.
    #[command(subcommand)]
    Narinfo(commands::narinfo::NarinfoCommand),
    /// The content-addressed layer: import, export and inspect blobs and directories.
    #[command(subcommand)]
    Castore(commands::castore::CastoreCommand),
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only for a terminal: a log file or journal gets plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(false)
        .init();
}

/// Fewer arenas, and a fixed mmap threshold. Cairn moves data in buffers
/// of one to a few MiB from many threads at once. By default glibc's
/// malloc gives each thread its own arena and, once the first such buffer
/// is freed, raises its mmap threshold to that size, so freed buffers
/// stay resident in whichever arena freed them (a cold render through a
/// cache: 145 MiB RSS for 85 MiB of live heap). Two arenas, and buffers
/// up to 4 MiB (the largest chunk) from the heap where they are reused,
/// bring that to 100 MiB at the same speed; sending everything above
/// 1 MiB back to the kernel instead also bounds memory, but the page
/// faults of mapping fresh buffers cost a fifth of an import's CPU.
/// Setting the threshold also pins glibc's trim threshold at 128 KiB, so
/// the free top of a heap went back to the kernel after every few
/// buffers and was faulted in again (zeroed) for the next; keeping up to
/// 16 MiB of it per arena took some 6 % of a daemon's CPU receiving a
/// large import (1 % of the direct import's), for at most 32 MiB more
/// resident (BENCHMARKS.md, the grpc section).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn tune_allocator() {
    const ARENAS: libc::c_int = 2;
    const MMAP_ABOVE: libc::c_int = 4 * 1024 * 1024 + 1;
    const TRIM_ABOVE: libc::c_int = 16 * 1024 * 1024;
    // SAFETY: mallopt only sets tuning parameters of the allocator; it is
    // called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_ABOVE);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_ABOVE);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

/// Runs this program again, at once, with huge-page heaps switched on,
/// unless the environment already says either way.
///
/// A short-lived Cairn process moves its whole input through fresh
/// buffers, so much of its memory is touched for the first time: with
/// 4 KiB pages, faulting it in cost about a tenth of the CPU of an import
/// through a daemon, on both sides (BENCHMARKS.md, the grpc section).
/// glibc reads the tunable only when a program starts and offers no call
/// to set it later, hence the exec, which costs about a millisecond.
/// Setting `GLIBC_TUNABLES=glibc.malloc.hugetlb=0` keeps 4 KiB pages and
/// skips the exec. Nothing happens for a setuid start (glibc would drop
/// the variable, and this would loop) or when the exec fails.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn reexec_with_huge_page_heap() {
    use std::os::unix::process::CommandExt;
    // Has malloc ask for transparent huge pages for its heaps
    // (`madvise(MADV_HUGEPAGE)`; honoured where the kernel's THP mode is
    // `madvise` or `always`).
    const THP_HEAP_TUNABLE: &str = "glibc.malloc.hugetlb";
    let tunables = std::env::var_os("GLIBC_TUNABLES").unwrap_or_default();
    if tunables.to_string_lossy().contains(THP_HEAP_TUNABLE) {
        return;
    }
    // SAFETY: getauxval only reads the auxiliary vector.
    if unsafe { libc::getauxval(libc::AT_SECURE) } != 0 {
        return;
    }
    let mut with_thp = tunables;
    if !with_thp.is_empty() {
        with_thp.push(":");
    }
    with_thp.push(THP_HEAP_TUNABLE);
    with_thp.push("=1");
    let mut args = std::env::args_os();
    let Some(arg0) = args.next() else { return };
    // /proc/self/exe is this very binary even if its file was replaced
    // or removed since it started. `exec` returns only on failure, and
    // then this process simply goes on with 4 KiB pages.
    let _failed = std::process::Command::new("/proc/self/exe")
        .arg0(arg0)
        .args(args)
        .env("GLIBC_TUNABLES", with_thp)
        .exec();
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn reexec_with_huge_page_heap() {}

fn main() -> ExitCode {
    reexec_with_huge_page_heap();
    tune_allocator();
    let mut cli = Cli::parse();
    // Service flags given before the subcommand reach it as environment
    // variables, the defaults of its own flags; then parse again.
    let leading = cli.leading.as_env();
    if !leading.is_empty() {
        for (k, v) in leading {
            std::env::set_var(k, v);
        }
        cli = Cli::parse();
    }
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Import(a) => commands::store::import(a),
        Command::ImportNar(a) => commands::store::import_nar(a),
        Command::Export(a) => commands::store::export(a),
        Command::PathInfo(a) => commands::store::path_info(a),
        Command::Ls(a) => commands::store::ls(a),
        Command::Cat(a) => commands::store::cat(a),
        Command::Sign(a) => commands::store::sign(a),
        Command::Gc(a) => commands::gc::run(a),
        Command::Daemon(a) => commands::daemon::run(a),
        Command::Copy(a) => commands::copy::run(a),
        Command::Serve(a) => commands::serve::run(a),
        Command::Mount(a) => commands::mount::run(a),
        Command::Virtiofs(a) => commands::virtiofs::run(a),
        Command::Nar(cmd) => commands::nar::run(cmd),
        Command::StorePath(args) => commands::store_path::run(args),
        Command::Key(cmd) => commands::key::run(cmd),
        Command::Narinfo(cmd) => commands::narinfo::run(cmd),
        Command::Castore(cmd) => commands::castore::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if is_broken_pipe(&err) => {
            // A reader such as `head` stopped early: die quietly, as Unix tools do.
            ExitCode::from(141)
        }
        Err(err) => {
            // One line, outermost context first, so scripts can log it as is.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
