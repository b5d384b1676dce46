//! The `storage` job group: bytes on disk, not time. How much room two
//! near-identical trees take in Cairn, against the Nix store and Nix's
//! binary caches holding the same two store paths.
//!
//! The trees are the corpus's `dedup-v1` and `dedup-v2` (see
//! [`crate::corpus::Spec::near_identical`]): a copy of the Python standard
//! library, and the same tree after a modelled package update (every 20th
//! file changed by a few bytes, 8 removed, 8 added, 416 KiB of new data).
//! Each is stored once, untimed, in that order; the group is deterministic,
//! so it runs once (`--runs` does not apply, and `--quick` changes nothing
//! but the label: it is cheap anyway).
//!
//! - **Cairn**: `cairn import --data-dir DIR dedup-v1`, then `… dedup-v2`,
//!   into one fresh data directory; the whole directory counts (blobs,
//!   directories, both databases, empty shard directories).
//! - **Nix store** (the target's baseline): `nix-store --store DIR --add
//!   dedup-v1 dedup-v2` into a fresh chroot store; the two store path
//!   directories under `DIR/nix/store` count (not Nix's database). No
//!   `nix-store --optimise` first: a default Nix install does not optimise
//!   (`auto-optimise-store = false`), so this is what it pays. The store is
//!   also measured after `nix-store --optimise` (identical files
//!   hard-linked; the two paths and `.links` count), held to no target.
//! - **Binary caches**: `nix copy --to file://CACHE?compression=none` and
//!   `?compression=zstd` of both paths, each to a fresh cache; the NAR
//!   files under `CACHE/nar/` count (not the narinfos). No target.
//!
//! Cairn's printed store paths must equal `nix-store --add`'s, or the run
//! stops. **Target: Cairn's bytes at most 0.6 × the Nix store's** (ratio =
//! Nix store bytes / Cairn bytes ≥ 1 / 0.6 ≈ 1.67).
//!
//! Bytes are **allocated** bytes (`du -s --block-size=1`: `st_blocks` ×
//! 512, hard links once, after `sync`), not apparent sizes: the question
//! is how much of the disk each store takes, and a store of many small
//! files pays a whole block (4 KiB on ext4) for each file and directory
//! however small, which apparent sizes hide; and a database file's
//! apparent length may include space it has not allocated. Apparent sizes
//! are printed and recorded too.
//!
//! The group's table also shows the deduplication itself: how much Cairn's
//! data directory grows from `dedup-v1` to `dedup-v2`, next to the file
//! content `dedup-v2` brings that `dedup-v1` lacks (distinct file contents
//! not byte-identical to any file before, found by hashing and then
//! comparing), and to the Nix store's second store path, a whole copy.

use std::collections::HashMap;
use std::fs;
use std::hash::{DefaultHasher, Hasher};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use crate::corpus::{self, Tree};
use crate::harness::files::{disk_usage, fresh_dir, remove_path, sync, DiskUsage};
use crate::harness::report::{self, Align, ToolInfo};
use crate::harness::summary::{Row, Target, Unit};
use crate::harness::{self, CommonArgs};

/// The group's name: first argument, JSON file name, table label.
const GROUP: &str = "storage";

/// The target: Cairn's bytes at most this fraction of the Nix
/// store's.
const MAX_FRACTION_OF_NIX_STORE: f64 = 0.6;

/// The summary rows' input.
const SUBJECT: &str = "dedup-v1+v2";

/// The summary rows' job.
const JOB: &str = "on-disk";

/// Baseline labels, in the summary and the table.
const NIX_STORE: &str = "Nix store (nix-store --add)";
const NAR_NONE: &str = "NAR files (file:// cache, compression=none)";
const NAR_ZSTD: &str = "file:// cache, compression=zstd";
const NIX_OPTIMISED: &str = "Nix store after nix-store --optimise";

/// Every Nix command's configuration: `nix copy` is experimental in Nix
/// 2.8, and nothing may be substituted from the network.
const NIX_CONFIG: &str = "experimental-features = nix-command\nsubstituters =";

const MIB: f64 = 1024.0 * 1024.0;

/// Options of `cairn-bench storage`.
#[derive(Args, Debug)]
pub struct StorageArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

/// The programs the group runs.
struct Tools {
    cairn: PathBuf,
    nix_store: PathBuf,
    nix: PathBuf,
}

/// File contents a tree brings that no tree stored before it had.
#[derive(Clone, Copy, Debug, Default, Serialize)]
struct NewContent {
    /// Distinct new contents (identical files count once).
    files: u64,
    /// Their sizes, summed.
    bytes: u64,
}

/// One tree of the pair, and what storing it cost.
#[derive(Debug, Serialize)]
struct TreeBytes {
    tree: String,
    /// What both `cairn import` and `nix-store --add` printed for it.
    store_path: String,
    /// The corpus tree itself.
    corpus_disk_usage: DiskUsage,
    /// Its contents that the trees stored before it lack.
    new_content: NewContent,
    /// Cairn's whole data directory once this tree (and those before it)
    /// was imported.
    cairn_data_dir_after: DiskUsage,
    /// Its store path directory in the Nix store (not optimised).
    nix_store_path: DiskUsage,
}

/// Everything the group measured.
#[derive(Debug, Serialize)]
struct StorageJob {
    subject: &'static str,
    trees: Vec<TreeBytes>,
    /// Cairn's data directory after both imports.
    cairn: DiskUsage,
    /// Both store path directories of the Nix store, summed.
    nix_store: DiskUsage,
    /// The same store after `nix-store --optimise`: both store paths and
    /// `.links`, hard links once.
    nix_store_optimised: DiskUsage,
    /// The whole chroot store directory before optimising (its database
    /// included), for reference: not compared.
    nix_chroot_whole: DiskUsage,
    /// The NAR files of the `compression=none` cache.
    nar_none: DiskUsage,
    /// The NAR files of the `compression=zstd` cache.
    nar_zstd: DiskUsage,
    /// The summary rows, ratios and target.
    rows: Vec<Row>,
}

#[derive(Serialize)]
struct Details<'a> {
    trees: &'a [Tree],
    bytes: &'static str,
    cairn: &'static str,
    nix_store: &'static str,
    nix_store_optimised: &'static str,
    binary_caches: &'static str,
    new_content: &'static str,
    target: String,
}

/// Runs the group.
pub fn run(args: StorageArgs) -> Result<Vec<Row>> {
    let this_run = report::Run::start();
    let common = args.common;
    let find = |tool: &str| {
        harness::find_on_path(tool)
            .with_context(|| format!("{tool} not found on PATH (apt-get install nix-bin)"))
    };
    let tools = Tools {
        cairn: harness::cairn_binary()?,
        nix_store: find("nix-store")?,
        nix: find("nix")?,
    };
    let work_dir = common.prepare_work_dir()?;
    let scratch = work_dir.join("scratch-storage");
    discard(&scratch)?;
    fresh_dir(&scratch)?;
    let trees = corpus::prepare(
        &work_dir,
        &corpus::Spec::near_identical()?,
        &tools.nix_store,
    )?;
    if trees.len() != 2 {
        bail!("expected two near-identical trees, got {}", trees.len());
    }

    // Cairn: both trees, one after the other, into one data directory.
    let data = scratch.join("cairn-data");
    let mut store_paths = Vec::new();
    let mut cairn_after = Vec::new();
    for tree in &trees {
        eprintln!("{GROUP}: cairn import {}", tree.name);
        let path = output(
            Command::new(&tools.cairn)
                .args(["import", "--data-dir"])
                .arg(&data)
                .arg(&tree.root),
        )?;
        store_paths.push(path.trim().to_owned());
        sync()?;
        cairn_after.push(disk_usage(&data)?);
    }
    let cairn = cairn_after.last().copied().unwrap_or_default();

    // The Nix store: both trees in one `nix-store --add`.
    eprintln!("{GROUP}: nix-store --add");
    let store = scratch.join("nix-chroot");
    let added = output(
        nix(&tools.nix_store)
            .arg("--store")
            .arg(&store)
            .arg("--add")
            .args(trees.iter().map(|t| &t.root)),
    )?;
    let nix_paths: Vec<&str> = added.lines().map(str::trim).collect();
    if nix_paths != store_paths {
        bail!("cairn import printed {store_paths:?}, nix-store --add {nix_paths:?}");
    }
    let store_dir = store.join("nix/store");
    let names = store_paths
        .iter()
        .map(|p| {
            p.strip_prefix("/nix/store/")
                .with_context(|| format!("{p} is not under /nix/store"))
        })
        .collect::<Result<Vec<_>>>()?;
    sync()?;
    let nix_store_paths = names
        .iter()
        .map(|n| disk_usage(&store_dir.join(n)))
        .collect::<Result<Vec<_>>>()?;
    let nix_store = nix_store_paths.iter().fold(DiskUsage::default(), add);
    let nix_chroot_whole = disk_usage(&store)?;

    // Nix's binary caches, written from that store.
    let nar_none = binary_cache(&tools, &scratch, &store, "none", &store_paths)?;
    let nar_zstd = binary_cache(&tools, &scratch, &store, "zstd", &store_paths)?;

    // The same store, optimised.
    eprintln!("{GROUP}: nix-store --optimise");
    output(
        nix(&tools.nix_store)
            .arg("--store")
            .arg(&store)
            .arg("--optimise"),
    )?;
    sync()?;
    let nix_store_optimised = optimised_usage(&store_dir, &names)?;

    eprintln!("{GROUP}: comparing file contents");
    let new_content = new_content(&trees)?;

    let row = |baseline: &str, bytes: &DiskUsage, target: Option<Target>| {
        let mut row = Row {
            group: GROUP,
            job: JOB.into(),
            subject: SUBJECT.into(),
            baseline: baseline.into(),
            unit: Unit::Bytes,
            cairn: cairn.allocated_bytes as f64,
            baseline_value: bytes.allocated_bytes as f64,
            ratio: bytes.allocated_bytes as f64 / cairn.allocated_bytes as f64,
            mb_per_s: None,
            files_per_s: None,
            cairn_peak_rss_mib: None,
            baseline_peak_rss_mib: None,
            target: None,
            met: None,
        };
        row.set_target(target);
        row
    };
    let rows = vec![
        row(
            NIX_STORE,
            &nix_store,
            Some(Target::MinRatio {
                min: 1.0 / MAX_FRACTION_OF_NIX_STORE,
            }),
        ),
        row(NAR_NONE, &nar_none, None),
        row(NAR_ZSTD, &nar_zstd, None),
        row(NIX_OPTIMISED, &nix_store_optimised, None),
    ];

    let mut tree_bytes = Vec::new();
    for (i, tree) in trees.iter().enumerate() {
        tree_bytes.push(TreeBytes {
            tree: tree.name.clone(),
            store_path: store_paths.get(i).cloned().unwrap_or_default(),
            corpus_disk_usage: disk_usage(&tree.root)?,
            new_content: new_content.get(i).copied().unwrap_or_default(),
            cairn_data_dir_after: cairn_after.get(i).copied().unwrap_or_default(),
            nix_store_path: nix_store_paths.get(i).copied().unwrap_or_default(),
        });
    }
    let job = StorageJob {
        subject: SUBJECT,
        trees: tree_bytes,
        cairn,
        nix_store,
        nix_store_optimised,
        nix_chroot_whole,
        nar_none,
        nar_zstd,
        rows,
    };
    discard(&scratch)?;

    print_tables(&common, &trees, &job);

    this_run.finish(
        GROUP,
        &common,
        1,
        work_dir,
        vec![
            ToolInfo::of("cairn", &tools.cairn),
            ToolInfo::of("nix-store", &tools.nix_store),
            ToolInfo::of("nix", &tools.nix),
        ],
        Details {
            trees: &trees,
            bytes: "allocated bytes (st_blocks x 512, like du -s --block-size=1), hard links \
                    once, measured after sync; apparent sizes recorded too",
            cairn: "cairn import --data-dir FRESH dedup-v1, then the same with dedup-v2: \
                    the whole data directory",
            nix_store: "nix-store --store FRESH --add dedup-v1 dedup-v2: the two store path \
                        directories under FRESH/nix/store (not the database)",
            nix_store_optimised: "then nix-store --store FRESH --optimise: FRESH/nix/store's \
                                  contents (both store paths and .links), hard links once",
            binary_caches: "nix --store FRESH copy --to file://CACHE?compression=none|zstd \
                            PATH1 PATH2, each to a fresh cache: the files under CACHE/nar/",
            new_content: "distinct file contents of a tree not byte-identical to any file of \
                          the trees before it (grouped by size and hash, then compared)",
            target: format!(
                "Cairn's bytes <= {MAX_FRACTION_OF_NIX_STORE} x the Nix store's \
                 (ratio >= {:.2})",
                1.0 / MAX_FRACTION_OF_NIX_STORE
            ),
        },
        std::slice::from_ref(&job),
    )?;
    Ok(job.rows)
}

/// A Nix command, configured by [`NIX_CONFIG`].
fn nix(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("NIX_CONFIG", NIX_CONFIG);
    cmd
}

/// Runs `cmd` to completion, stdin on `/dev/null`, and returns its stdout;
/// its failure is an error carrying its stderr.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("{cmd:?} printed something not UTF-8"))
}

/// `a + b`, field by field.
fn add(a: DiskUsage, b: &DiskUsage) -> DiskUsage {
    DiskUsage {
        apparent_bytes: a.apparent_bytes + b.apparent_bytes,
        allocated_bytes: a.allocated_bytes + b.allocated_bytes,
        files: a.files + b.files,
    }
}

/// `nix copy` of `paths` from the chroot store `store` into a fresh
/// `file://` cache with `compression`; returns what its NAR files take.
fn binary_cache(
    tools: &Tools,
    scratch: &Path,
    store: &Path,
    compression: &str,
    paths: &[String],
) -> Result<DiskUsage> {
    eprintln!("{GROUP}: nix copy --to file://…?compression={compression}");
    let cache = scratch.join(format!("cache-{compression}"));
    output(
        nix(&tools.nix)
            // Nix's narinfo cache, fresh too, so nothing is assumed copied.
            .env("XDG_CACHE_HOME", scratch.join(format!("xdg-{compression}")))
            .arg("--store")
            .arg(store)
            .args(["copy", "--to"])
            .arg(format!(
                "file://{}?compression={compression}",
                cache.display()
            ))
            .args(paths),
    )?;
    sync()?;
    let nar_dir = cache.join("nar");
    let mut total = DiskUsage::default();
    for entry in
        fs::read_dir(&nar_dir).with_context(|| format!("cannot list {}", nar_dir.display()))?
    {
        let entry = entry.with_context(|| format!("cannot list {}", nar_dir.display()))?;
        total = add(total, &disk_usage(&entry.path())?);
    }
    if total.files != paths.len() as u64 {
        bail!(
            "expected {} NAR files in {}, found {}",
            paths.len(),
            nar_dir.display(),
            total.files
        );
    }
    Ok(total)
}

/// What the optimised chroot store's `nix/store` directory holds (the
/// store paths `names` and `.links`), hard links counted once, without
/// the `nix/store` directory's own entry.
fn optimised_usage(store_dir: &Path, names: &[&str]) -> Result<DiskUsage> {
    for entry in
        fs::read_dir(store_dir).with_context(|| format!("cannot list {}", store_dir.display()))?
    {
        let entry = entry.with_context(|| format!("cannot list {}", store_dir.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name != ".links" && !names.contains(&name.as_ref()) {
            eprintln!(
                "{GROUP}: note: {} is in the optimised store too, and counted",
                entry.path().display()
            );
        }
    }
    let total = disk_usage(store_dir)?;
    let own = fs::symlink_metadata(store_dir)
        .with_context(|| format!("cannot stat {}", store_dir.display()))?;
    Ok(DiskUsage {
        apparent_bytes: total.apparent_bytes.saturating_sub(own.len()),
        allocated_bytes: total.allocated_bytes.saturating_sub(own.blocks() * 512),
        files: total.files,
    })
}

/// For each tree in turn, the file contents none of the trees before it
/// (nor an earlier file of its own) had: files are grouped by size and
/// hash, and a file whose group is not empty is compared byte for byte
/// with its members, so a hash collision cannot hide new content.
fn new_content(trees: &[Tree]) -> Result<Vec<NewContent>> {
    let mut seen: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
    let mut result = Vec::new();
    for tree in trees {
        let mut new = NewContent::default();
        for path in regular_files(&tree.root)? {
            let bytes =
                fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let mut hasher = DefaultHasher::new();
            hasher.write(&bytes);
            let group = seen
                .entry((bytes.len() as u64, hasher.finish()))
                .or_default();
            let mut known = false;
            for other in group.iter() {
                let theirs =
                    fs::read(other).with_context(|| format!("cannot read {}", other.display()))?;
                if theirs == bytes {
                    known = true;
                    break;
                }
            }
            if !known {
                group.push(path);
                new.files += 1;
                new.bytes += bytes.len() as u64;
            }
        }
        result.push(new);
    }
    Ok(result)
}

/// The regular files under `root`, symlinks not followed.
fn regular_files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            let ft = entry
                .file_type()
                .with_context(|| format!("cannot stat {}", entry.path().display()))?;
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() {
                files.push(entry.path());
            }
        }
    }
    Ok(files)
}

/// Removes `path` (missing is fine), first making its directories
/// writable: a Nix store's are read-only.
fn discard(path: &Path) -> Result<()> {
    make_dirs_writable(path)?;
    remove_path(path)
}

fn make_dirs_writable(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot stat {}", path.display())),
    };
    if !meta.is_dir() {
        return Ok(());
    }
    let mode = meta.permissions().mode();
    if mode & 0o700 != 0o700 {
        fs::set_permissions(path, fs::Permissions::from_mode(mode | 0o700))
            .with_context(|| format!("cannot chmod {}", path.display()))?;
    }
    for entry in fs::read_dir(path).with_context(|| format!("cannot list {}", path.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", path.display()))?;
        make_dirs_writable(&entry.path())?;
    }
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.2}", bytes as f64 / MIB)
}

/// The group's own tables: what each store takes, and what the second
/// tree cost each.
fn print_tables(common: &CommonArgs, trees: &[Tree], job: &StorageJob) {
    println!();
    println!(
        "cairn-bench {GROUP}: bytes on disk of {} and {} (a tree and its update), stored in \
         that order; untimed, run once{}",
        corpus::DEDUP_V1,
        corpus::DEDUP_V2,
        if common.quick {
            " (--quick changes nothing here)"
        } else {
            ""
        }
    );
    println!(
        "on disk = allocated blocks (du -s --block-size=1); ratio = baseline on disk / Cairn \
         on disk (higher: Cairn smaller)"
    );
    println!();
    let headers = [
        "stored in",
        "files",
        "apparent MiB",
        "on disk MiB",
        "on disk bytes",
        "ratio",
        "target",
    ];
    let mut align = vec![Align::Left];
    align.extend([Align::Right; 5]);
    align.push(Align::Left);
    let line = |what: &str, usage: &DiskUsage, row: Option<&Row>| {
        vec![
            what.to_owned(),
            usage.files.to_string(),
            mib(usage.apparent_bytes),
            mib(usage.allocated_bytes),
            usage.allocated_bytes.to_string(),
            row.map_or_else(|| "1.00".into(), |r| format!("{:.2}", r.ratio)),
            match row.and_then(|r| r.target.zip(r.met)) {
                Some((Target::MinRatio { min }, met)) => {
                    format!(">= {min:.2} {}", if met { "met" } else { "MISSED" })
                }
                Some((Target::MaxRssMib { max_mib }, met)) => {
                    format!(
                        "RSS <= {max_mib:.0} MiB {}",
                        if met { "met" } else { "MISSED" }
                    )
                }
                None => "-".into(),
            },
        ]
    };
    let usages = [
        &job.nix_store,
        &job.nar_none,
        &job.nar_zstd,
        &job.nix_store_optimised,
    ];
    let mut cells = vec![line("Cairn data dir (cairn import)", &job.cairn, None)];
    cells.extend(
        job.rows
            .iter()
            .zip(usages)
            .map(|(row, usage)| line(&row.baseline, usage, Some(row))),
    );
    print!("{}", report::format_table(&headers, &align, &cells));

    println!();
    let headers = [
        "tree",
        "files",
        "file MiB",
        "new contents",
        "new MiB",
        "Cairn grew MiB",
        "Nix store path MiB",
    ];
    let mut align = vec![Align::Left];
    align.extend([Align::Right; 6]);
    let mut before = 0u64;
    let cells: Vec<Vec<String>> = job
        .trees
        .iter()
        .zip(trees)
        .map(|(t, tree)| {
            let after = t.cairn_data_dir_after.allocated_bytes;
            let grew = after as f64 - before as f64;
            before = after;
            vec![
                t.tree.clone(),
                tree.stats.files.to_string(),
                mib(tree.stats.file_bytes),
                t.new_content.files.to_string(),
                mib(t.new_content.bytes),
                format!("{:.2}", grew / MIB),
                mib(t.nix_store_path.allocated_bytes),
            ]
        })
        .collect();
    print!("{}", report::format_table(&headers, &align, &cells));
    if let [v1, v2] = job.trees.as_slice() {
        let grew = v2.cairn_data_dir_after.allocated_bytes as f64
            - v1.cairn_data_dir_after.allocated_bytes as f64;
        let new = v2.new_content.bytes as f64;
        println!();
        println!(
            "dedup: {} brings {:.2} MiB of file contents {} lacks ({} files); Cairn's data dir \
             grew {:.2} MiB for it ({:.2}x that), the Nix store {:.2} MiB (a whole copy: {:.2}x)",
            v2.tree,
            new / MIB,
            v1.tree,
            v2.new_content.files,
            grew / MIB,
            grew / new,
            v2.nix_store_path.allocated_bytes as f64 / MIB,
            v2.nix_store_path.allocated_bytes as f64 / new,
        );
    }
    println!(
        "not counted: the Nix store's database and the rest of the chroot store take {:.2} MiB \
         more on disk; Cairn's databases are in its count",
        (job.nix_chroot_whole.allocated_bytes as f64 - job.nix_store.allocated_bytes as f64) / MIB
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_content_counts_distinct_unseen_files() {
        let dir = crate::harness::test_dir::fresh("storage-new");
        let tree = |name: &str, files: &[(&str, &[u8])]| {
            let root = dir.join(name);
            fs::create_dir_all(root.join("sub")).unwrap();
            for (path, bytes) in files {
                fs::write(root.join(path), bytes).unwrap();
            }
            Tree {
                name: name.into(),
                description: String::new(),
                root,
                nar: PathBuf::new(),
                stats: Default::default(),
            }
        };
        let a = tree(
            "a",
            &[("x", b"hello"), ("sub/y", b"hello"), ("z", b"world!")],
        );
        let b = tree(
            "b",
            &[
                ("x", b"hello"),
                ("sub/moved", b"world!"),
                ("n1", b"new"),
                ("n2", b"new"),
            ],
        );
        let got = new_content(&[a, b]).unwrap();
        assert_eq!((got[0].files, got[0].bytes), (2, 11));
        assert_eq!((got[1].files, got[1].bytes), (1, 3));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn discard_removes_read_only_trees() {
        let dir = crate::harness::test_dir::fresh("storage-discard");
        let tree = dir.join("t");
        fs::create_dir_all(tree.join("ro")).unwrap();
        fs::write(tree.join("ro/f"), b"x").unwrap();
        fs::set_permissions(tree.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
        discard(&tree).unwrap();
        assert!(!tree.exists());
        discard(&tree).unwrap();
        fs::remove_dir_all(dir).unwrap();
    }
}
