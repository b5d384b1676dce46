//! The `import` job group: `cairn castore import` of a tree into a data
//! directory, against the two floors an import cannot beat: hashing every
//! file (`b3sum`) and copying the tree (`cp -r`).
//!
//! Per tree, every round runs, in turn:
//!
//! 1. **cold**: `cairn castore import TREE` into a fresh data directory;
//! 2. **warm**: the same import again, into the data directory the cold
//!    import just filled, so that everything deduplicates;
//! 3. **b3sum**: every regular file of TREE hashed by `b3sum`, in as many
//!    parallel processes as there are CPUs (see [`b3sum_script`]);
//! 4. **cp**: `cp -r TREE DEST`, DEST fresh.
//! 5. **cp+sync**: `cp -r TREE DEST && sync -f DEST`: the copy made
//!    durable. Not a floor the target uses, a reference: a cold import
//!    returns only once its blobs are on disk (it must, before directories
//!    that refer to them are committed), which `cp -r` never waits for, so
//!    when the disk writes slowly the import is held to the disk's speed
//!    and `cp -r` is not.
//!
//! Every run writes to a fresh path; `sync` runs (untimed) after every run
//! that writes, so no run pays for its predecessor's writeback, and what
//! runs write is only deleted when the group ends (see
//! [`crate::harness::files::Trash`]), so no run pays for its predecessors'
//! deletions either. The report gives each import as a multiple of
//! each floor (cairn / floor), and the data directory's size on disk after
//! the cold import against the tree's size.
//!
//! Before anything is timed, each tree is imported and exported back, and
//! the export must dump to the tree's NAR byte for byte; every timed import
//! must then print the same root digest. A fast wrong answer is not worth
//! measuring.

use std::cell::Cell;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use crate::corpus::{self, Spec, Tree};
use crate::harness::files::{
    disk_usage, fresh_dir, remove_path, stdout_matches_file, sync, DiskUsage, Trash,
};
use crate::harness::report::{self, Align, ToolInfo};
use crate::harness::summary::{Row, Target, Unit};
use crate::harness::{self, CommonArgs, Invocation, Sample, ToolResult};

/// The group's name: first argument, JSON file name, table label.
const GROUP: &str = "import";

/// The target the import is held to: a cold import takes at most this many
/// times as long as the slower of the two floors.
const TARGET_MULTIPLE: f64 = 1.5;

/// `b3sum` batches per CPU. One: every b3sum process costs a few
/// milliseconds to start, more than uneven batches cost (each process
/// spreads a large file over all CPUs by itself).
const B3SUM_BATCHES_PER_CPU: u64 = 1;

const MB: f64 = 1e6;

/// Options of `cairn-bench import`.
#[derive(Args, Debug)]
pub struct ImportArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

/// What the JSON report adds for this group.
#[derive(Serialize)]
struct Details<'a> {
    trees: &'a [Tree],
    /// A cold import should take at most this multiple of the slower floor.
    target_multiple: f64,
    /// Parallel `b3sum` processes (`xargs -P`).
    b3sum_processes: usize,
}

/// One tool's part in a tree's job.
#[derive(Serialize)]
struct Measured {
    /// The command, shell-like (`DATA_DIR` and `DEST` stand for each run's
    /// own).
    command: String,
    /// The tree's regular files / median wall time.
    files_per_s: f64,
    /// Samples and summary (`mb_per_s` counts the tree's file bytes).
    #[serde(flatten)]
    result: ToolResult,
}

/// Time multiples, cairn median / floor median: ≤ 1 means cairn is at least
/// as fast.
#[derive(Serialize)]
struct Multiples {
    cold_over_b3sum: f64,
    cold_over_cp: f64,
    /// Against the durable copy (a reference, not the target's measure).
    cold_over_cp_sync: f64,
    /// Against the slower of b3sum and cp: the target's measure.
    cold_over_slower_floor: f64,
    target_multiple: f64,
    target_met: bool,
    warm_over_cold: f64,
    warm_over_b3sum: f64,
}

/// Space: the data directory against the tree.
#[derive(Serialize)]
struct Space {
    /// Sum of the tree's regular files' sizes: what is imported.
    tree_file_bytes: u64,
    /// The tree itself, measured like `du`.
    tree: DiskUsage,
    /// The data directory after each cold import (warm-up first).
    data_dir_after_cold: Vec<DiskUsage>,
    /// The data directory after each warm import (warm-up first).
    data_dir_after_warm: Vec<DiskUsage>,
    /// Median of `data_dir_after_cold`'s allocated bytes: the space the
    /// import takes on disk.
    data_dir_bytes: u64,
    /// `data_dir_bytes / tree_file_bytes`: below 1 when deduplication saves
    /// more than the store's overhead costs.
    data_dir_over_tree: f64,
    /// Median growth of allocated bytes from the cold to the warm import
    /// (0 when the warm import stores nothing new).
    warm_growth_bytes: i64,
}

/// One tree's job: four tools, alternated.
#[derive(Serialize)]
struct TreeJob {
    group: &'static str,
    /// The tree's name.
    subject: String,
    /// The tree's regular files' bytes (for MB/s).
    bytes: u64,
    /// The tree's regular files (for files/s).
    files: u64,
    /// The root digest every import printed.
    root_digest: String,
    cold: Measured,
    warm: Measured,
    b3sum: Measured,
    cp: Measured,
    cp_sync: Measured,
    multiples: Multiples,
    space: Space,
}

/// The programs a run uses.
struct Tools {
    cairn: PathBuf,
    nix_store: PathBuf,
    b3sum: PathBuf,
    cp: PathBuf,
    /// Parallel b3sum processes: the CPUs this process may use.
    cpus: usize,
}

/// Runs the whole group: corpus, checks, jobs, tables, JSON.
pub fn run(args: ImportArgs) -> Result<Vec<Row>> {
    let this_run = report::Run::start();
    let common = args.common;
    let runs = common.runs();

    let tools = Tools {
        cairn: harness::cairn_binary()?,
        nix_store: harness::find_on_path("nix-store").context(
            "nix-store not found on PATH; the import group needs it to copy the corpus and \
             to check the imports (install it, e.g. `apt-get install nix-bin`)",
        )?,
        b3sum: harness::find_on_path("b3sum").context(
            "b3sum not found on PATH; it is the hashing floor of the import jobs \
             (install it, e.g. `apt-get install b3sum`)",
        )?,
        cp: harness::find_on_path("cp").context("cp not found on PATH")?,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let work_dir = common.prepare_work_dir()?;
    let scratch = work_dir.join("scratch");
    fresh_dir(&scratch)?;
    let trash = Trash::new(scratch.join("trash"))?;

    let specs = Spec::real_trees(common.quick)?;
    if specs.is_empty() {
        bail!("none of the import group's trees exists on this machine");
    }
    let trees = corpus::prepare(&work_dir, &specs, &tools.nix_store)?;
    let digests = trees
        .iter()
        .map(|tree| verify(&tools, tree, &scratch, &trash))
        .collect::<Result<Vec<_>>>()?;

    let mut jobs = Vec::new();
    for (tree, digest) in trees.iter().zip(digests) {
        jobs.push(tree_job(&tools, tree, digest, &scratch, &trash, runs)?);
    }
    eprintln!("removing the runs' outputs");
    trash.empty()?;
    remove_path(&scratch)?;

    println!();
    println!(
        "cairn-bench {GROUP}: median wall time of {runs} runs per tool, after {} warm-up round; \
         each round runs cold, warm, b3sum, cp, cp+sync in turn",
        harness::WARMUP_PAIRS
    );
    println!(
        "cold = `cairn castore import TREE` into a fresh data dir; \
         warm = the same import again into the data dir the cold one filled"
    );
    println!(
        "floors: b3sum = `{}` (hashing), cp = `cp -r TREE DEST` (copying)",
        b3sum_command("TREE", tools.cpus, None)
    );
    println!(
        "reference: cp+sync = `cp -r TREE DEST && sync -f DEST`, the copy made durable, as a \
         cold import is before it returns (not used by the target)"
    );
    println!(
        "multiples = cairn median / floor median (<= 1.00x: cairn at least as fast); \
         target: cold <= {TARGET_MULTIPLE:.1}x the slower floor"
    );
    println!();
    print!("{}", time_table(&jobs));
    println!();
    println!(
        "MB = 10^6 bytes of the tree's regular files; RSS = median peak RSS; data dir = its \
         size on disk after the cold import; data/tree = that / MB"
    );
    print!("{}", rate_table(&jobs));

    this_run.finish(
        GROUP,
        &common,
        runs,
        work_dir,
        vec![
            ToolInfo::of("cairn", &tools.cairn),
            ToolInfo::of("b3sum", &tools.b3sum),
            ToolInfo::of("cp", &tools.cp),
            ToolInfo::of("nix-store", &tools.nix_store),
        ],
        Details {
            trees: &trees,
            target_multiple: TARGET_MULTIPLE,
            b3sum_processes: tools.cpus,
        },
        &jobs,
    )?;
    Ok(jobs.iter().flat_map(summary_rows).collect())
}

/// A tree's job as summary rows: the cold import against the slower floor
/// (the target), and against each floor.
fn summary_rows(job: &TreeJob) -> Vec<Row> {
    let cold = &job.cold.result;
    let row = |baseline: &str, against: &ToolResult| Row {
        group: GROUP,
        job: "import (cold)".into(),
        subject: job.subject.clone(),
        baseline: baseline.into(),
        unit: Unit::Seconds,
        cairn: cold.median_wall_s,
        baseline_value: against.median_wall_s,
        ratio: against.median_wall_s / cold.median_wall_s,
        mb_per_s: Some(cold.mb_per_s),
        files_per_s: Some(job.cold.files_per_s),
        cairn_peak_rss_mib: Some(cold.max_max_rss_mib),
        baseline_peak_rss_mib: Some(against.max_max_rss_mib),
        target: None,
        met: None,
    };
    let (b3sum, cp) = (&job.b3sum.result, &job.cp.result);
    let slower = if b3sum.median_wall_s >= cp.median_wall_s {
        b3sum
    } else {
        cp
    };
    let mut target = row("slower of b3sum, cp -r", slower);
    target.set_target(Some(Target::MinRatio {
        min: 1.0 / TARGET_MULTIPLE,
    }));
    vec![target, row("b3sum", b3sum), row("cp -r", cp)]
}

/// `cairn castore import --json --data-dir DATA ROOT`.
fn import_invocation(cairn: &Path, data: &Path, root: &Path) -> Invocation {
    Invocation::new(cairn)
        .arg("castore")
        .arg("import")
        .arg("--json")
        .arg("--data-dir")
        .arg(data)
        .arg(root)
}

/// The hashing floor, as a shell script taking the tree as `$1` and the
/// b3sum binary as `$2`: `find` lists the regular files and `xargs` splits
/// them into one batch per CPU, run as that many b3sum processes at once,
/// so that every CPU hashes even when all files are small (b3sum's own
/// threads only ever split one large file, which `--num-threads` lets them
/// do across all CPUs). Measured on 2 CPUs, this is as fast as or faster
/// than one b3sum for all files, more batches, or one thread per process,
/// on all three trees.
fn b3sum_script(files: u64, cpus: usize) -> String {
    let batch = b3sum_batch(files, cpus);
    format!(
        "find \"$1\" -type f -print0 | xargs -0 -P {cpus} -n {batch} \"$2\" --num-threads {cpus}"
    )
}

/// Files per b3sum process: [`B3SUM_BATCHES_PER_CPU`] batches per CPU.
fn b3sum_batch(files: u64, cpus: usize) -> u64 {
    files.div_ceil(cpus as u64 * B3SUM_BATCHES_PER_CPU).max(1)
}

/// [`b3sum_script`] for humans; `files` `None` leaves the batch size symbolic.
fn b3sum_command(root: &str, cpus: usize, files: Option<u64>) -> String {
    let batch = files.map_or_else(
        || format!("FILES/{}", cpus as u64 * B3SUM_BATCHES_PER_CPU),
        |f| b3sum_batch(f, cpus).to_string(),
    );
    format!(
        "find {root} -type f -print0 | xargs -0 -P {cpus} -n {batch} b3sum --num-threads {cpus}"
    )
}

fn tree_job(
    tools: &Tools,
    tree: &Tree,
    digest: String,
    scratch: &Path,
    trash: &Trash,
    runs: usize,
) -> Result<TreeJob> {
    // Every run gets its own data directory or copy, moved to the trash
    // after it (see `Trash` for why nothing is deleted between runs).
    let data_dir = |round: u32| scratch.join(format!("data-{}-{round}", tree.name));
    let copy_dest = |run: u32| scratch.join(format!("cp-{}-{run}", tree.name));
    let log = scratch.join("stderr.log");
    let out = scratch.join("stdout.json");
    let files = tree.stats.files;

    let import_inv =
        |data: &Path| import_invocation(&tools.cairn, data, &tree.root).stdout_file(&out);
    let b3sum_inv = Invocation::new("/bin/sh")
        .arg("-c")
        .arg(b3sum_script(files, tools.cpus))
        .arg("sh")
        .arg(&tree.root)
        .arg(&tools.b3sum)
        .drain_stdout();
    let cp_inv = |dest: &Path| {
        Invocation::new(&tools.cp)
            .arg("-r")
            .arg(&tree.root)
            .arg(dest)
    };
    let cp_sync_inv = |dest: &Path| {
        Invocation::new("/bin/sh")
            .arg("-c")
            .arg(r#"cp -r "$1" "$2" && sync -f "$2""#)
            .arg("sh")
            .arg(&tree.root)
            .arg(dest)
    };
    // Each line b3sum prints is 64 hex digits, 2 spaces, the path (the root,
    // a slash, at least one character) and a newline.
    let min_b3sum_output = files * (64 + 2 + tree.root.as_os_str().len() as u64 + 2 + 1);

    // The round the cold import started; the warm one uses its data dir.
    let round = Cell::new(0u32);
    let mut after_cold = Vec::new();
    let mut after_warm = Vec::new();
    let mut run_cold = || -> Result<Sample> {
        round.set(round.get() + 1);
        let data = data_dir(round.get());
        remove_path(&data)?;
        let sample = harness::run_timed(&import_inv(&data), &log)?;
        check_root(&out, &digest)?;
        after_cold.push(disk_usage(&data)?);
        sync()?;
        Ok(sample)
    };
    let mut run_warm = || -> Result<Sample> {
        let data = data_dir(round.get());
        if fs::symlink_metadata(&data).is_err() {
            bail!(
                "no data directory left by the cold import at {}",
                data.display()
            );
        }
        let sample = harness::run_timed(&import_inv(&data), &log)?;
        check_root(&out, &digest)?;
        after_warm.push(disk_usage(&data)?);
        trash.discard(&data)?;
        sync()?;
        Ok(sample)
    };
    let mut run_b3sum = || -> Result<Sample> {
        let sample = harness::run_timed(&b3sum_inv, &log)?;
        let printed = sample.stdout_bytes.unwrap_or(0);
        if printed < min_b3sum_output {
            bail!(
                "b3sum printed {printed} bytes for {files} files, \
                 less than one line per file ({min_b3sum_output} bytes)"
            );
        }
        Ok(sample)
    };
    let cp_runs = Cell::new(0u32);
    let copy = |durable: bool| -> Result<Sample> {
        cp_runs.set(cp_runs.get() + 1);
        let dest = copy_dest(cp_runs.get());
        remove_path(&dest)?;
        let inv = if durable {
            cp_sync_inv(&dest)
        } else {
            cp_inv(&dest)
        };
        let sample = harness::run_timed(&inv, &log)?;
        if fs::symlink_metadata(&dest).is_err() {
            bail!(
                "{} succeeded but {} does not exist",
                inv.display(),
                dest.display()
            );
        }
        trash.discard(&dest)?;
        sync()?;
        Ok(sample)
    };
    let mut run_cp = || copy(false);
    let mut run_cp_sync = || copy(true);

    let label = format!("{GROUP} {}", tree.name);
    let started = Instant::now();
    let mut results = harness::alternate(
        &label,
        runs,
        tree.stats.file_bytes,
        &mut [
            ("cold import", &mut run_cold),
            ("warm import", &mut run_warm),
            ("b3sum", &mut run_b3sum),
            ("cp -r", &mut run_cp),
            ("cp+sync", &mut run_cp_sync),
        ],
    )?
    .into_iter();
    let (Some(cold), Some(warm), Some(b3sum), Some(cp), Some(cp_sync)) = (
        results.next(),
        results.next(),
        results.next(),
        results.next(),
        results.next(),
    ) else {
        bail!("{label}: missing results");
    };

    let (c, w, b, k) = (
        cold.median_wall_s,
        warm.median_wall_s,
        b3sum.median_wall_s,
        cp.median_wall_s,
    );
    let multiples = Multiples {
        cold_over_b3sum: c / b,
        cold_over_cp: c / k,
        cold_over_cp_sync: c / cp_sync.median_wall_s,
        cold_over_slower_floor: c / b.max(k),
        target_multiple: TARGET_MULTIPLE,
        target_met: c / b.max(k) <= TARGET_MULTIPLE,
        warm_over_cold: w / c,
        warm_over_b3sum: w / b,
    };
    eprintln!(
        " — cold {}, warm {}, b3sum {}, cp {}, cp+sync {}; cold = {:.2}x the slower floor ({:.1} s)",
        report::secs(c),
        report::secs(w),
        report::secs(b),
        report::secs(k),
        report::secs(cp_sync.median_wall_s),
        multiples.cold_over_slower_floor,
        started.elapsed().as_secs_f64()
    );

    let median_of = |v: &[DiskUsage]| {
        harness::median(
            &v.iter()
                .map(|u| u.allocated_bytes as f64)
                .collect::<Vec<_>>(),
        ) as u64
    };
    let growth: Vec<f64> = after_cold
        .iter()
        .zip(&after_warm)
        .map(|(c, w)| w.allocated_bytes as f64 - c.allocated_bytes as f64)
        .collect();
    let data_dir_bytes = median_of(&after_cold);
    let space = Space {
        tree_file_bytes: tree.stats.file_bytes,
        tree: disk_usage(&tree.root)?,
        data_dir_bytes,
        data_dir_over_tree: data_dir_bytes as f64 / tree.stats.file_bytes as f64,
        warm_growth_bytes: harness::median(&growth) as i64,
        data_dir_after_cold: after_cold,
        data_dir_after_warm: after_warm,
    };

    let measured = |command: String, result: ToolResult| Measured {
        command,
        files_per_s: files as f64 / result.median_wall_s,
        result,
    };
    let data_placeholder = import_inv(&scratch.join("DATA_DIR")).display();
    let b3sum = measured(
        b3sum_command(&tree.root.to_string_lossy(), tools.cpus, Some(files)),
        b3sum,
    );
    Ok(TreeJob {
        group: GROUP,
        subject: tree.name.clone(),
        bytes: tree.stats.file_bytes,
        files,
        root_digest: digest,
        cold: measured(data_placeholder.clone(), cold),
        warm: measured(data_placeholder, warm),
        b3sum,
        cp: measured(cp_inv(&scratch.join("DEST")).display(), cp),
        cp_sync: measured(cp_sync_inv(&scratch.join("DEST")).display(), cp_sync),
        multiples,
        space,
    })
}

/// Checks that the import whose stdout is in the file `out` printed the
/// root `expected`.
fn check_root(out: &Path, expected: &str) -> Result<()> {
    let printed = fs::read(out).with_context(|| format!("cannot read {}", out.display()))?;
    let digest = root_digest(&printed)?;
    if digest != expected {
        bail!("the import printed root {digest}, not {expected} as before");
    }
    Ok(())
}

/// The digest in `cairn castore import --json`'s output, which must be a
/// directory node.
fn root_digest(json: &[u8]) -> Result<String> {
    let text = String::from_utf8_lossy(json);
    let node: serde_json::Value = serde_json::from_str(text.trim())
        .with_context(|| format!("cannot parse the import's output {:?}", text.trim()))?;
    if node["type"] != "directory" {
        bail!("the import's root is not a directory: {}", text.trim());
    }
    node["digest"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no digest in the import's output {}", text.trim()))
}

/// The pre-flight check: importing `tree` and exporting its root again gives
/// back the same tree (its NAR is byte-identical to the corpus's). Returns
/// the root digest, which every timed import must print too.
fn verify(tools: &Tools, tree: &Tree, scratch: &Path, trash: &Trash) -> Result<String> {
    let started = Instant::now();
    let data = scratch.join(format!("check-data-{}", tree.name));
    let exported = scratch.join(format!("check-export-{}", tree.name));
    remove_path(&data)?;
    remove_path(&exported)?;

    let mut import = Command::new(&tools.cairn);
    import
        .arg("castore")
        .arg("import")
        .arg("--json")
        .arg("--data-dir")
        .arg(&data)
        .arg(&tree.root);
    let output = import
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", tools.cairn.display()))?;
    if !output.status.success() {
        bail!(
            "`cairn castore import {}` failed ({})",
            tree.root.display(),
            output.status
        );
    }
    let digest = root_digest(&output.stdout)?;

    let status = Command::new(&tools.cairn)
        .arg("castore")
        .arg("export")
        .arg("--data-dir")
        .arg(&data)
        .arg(&digest)
        .arg(&exported)
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot run {}", tools.cairn.display()))?;
    if !status.success() {
        bail!(
            "`cairn castore export {digest} {}` failed ({status})",
            exported.display()
        );
    }
    let mut dump = Command::new(&tools.nix_store);
    dump.arg("--dump").arg(&exported);
    stdout_matches_file(dump, &tree.nar).with_context(|| {
        format!(
            "`cairn castore import {}` then `export` does not give back the same tree \
             (its NAR differs from {}); refusing to benchmark it",
            tree.root.display(),
            tree.nar.display()
        )
    })?;
    trash.discard(&data)?;
    trash.discard(&exported)?;
    eprintln!(
        "check: {} imports as {digest} and exports back identically ({:.1} s)",
        tree.name,
        started.elapsed().as_secs_f64()
    );
    Ok(digest)
}

/// A time multiple, such as `12.30x`.
fn times(m: f64) -> String {
    format!("{m:.2}x")
}

/// Medians and multiples, one line per tree.
fn time_table(jobs: &[TreeJob]) -> String {
    let headers = [
        "tree",
        "files",
        "MB",
        "cold s",
        "warm s",
        "b3sum s",
        "cp s",
        "cp+sync s",
        "cold/b3sum",
        "cold/cp",
        "cold/slower",
        "target",
        "cold/cp+sync",
        "warm/cold",
    ];
    let mut align = vec![Align::Left];
    align.extend([Align::Right; 13]);
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            let m = &j.multiples;
            vec![
                j.subject.clone(),
                j.files.to_string(),
                format!("{:.1}", j.bytes as f64 / MB),
                report::secs(j.cold.result.median_wall_s),
                report::secs(j.warm.result.median_wall_s),
                report::secs(j.b3sum.result.median_wall_s),
                report::secs(j.cp.result.median_wall_s),
                report::secs(j.cp_sync.result.median_wall_s),
                times(m.cold_over_b3sum),
                times(m.cold_over_cp),
                times(m.cold_over_slower_floor),
                if m.target_met { "met" } else { "MISSED" }.into(),
                times(m.cold_over_cp_sync),
                times(m.warm_over_cold),
            ]
        })
        .collect();
    report::format_table(&headers, &align, &rows)
}

/// Throughput, memory and space, one line per tree.
fn rate_table(jobs: &[TreeJob]) -> String {
    let headers = [
        "tree",
        "cold MB/s",
        "cold files/s",
        "warm MB/s",
        "warm files/s",
        "cold RSS MiB",
        "warm RSS MiB",
        "data dir MB",
        "data/tree",
        "warm growth KiB",
    ];
    let mut align = vec![Align::Left];
    align.extend([Align::Right; 9]);
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.subject.clone(),
                format!("{:.1}", j.cold.result.mb_per_s),
                format!("{:.0}", j.cold.files_per_s),
                format!("{:.1}", j.warm.result.mb_per_s),
                format!("{:.0}", j.warm.files_per_s),
                format!("{:.1}", j.cold.result.median_max_rss_mib),
                format!("{:.1}", j.warm.result.median_max_rss_mib),
                format!("{:.1}", j.space.data_dir_bytes as f64 / MB),
                format!("{:.2}", j.space.data_dir_over_tree),
                format!("{:.0}", j.space.warm_growth_bytes as f64 / 1024.0),
            ]
        })
        .collect();
    report::format_table(&headers, &align, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_digest_reads_directory_nodes_only() {
        let dir = br#"{"digest":"b3:abc=","size":3,"type":"directory"}"#;
        assert_eq!(root_digest(dir).unwrap(), "b3:abc=");
        assert_eq!(
            root_digest(&[dir.as_slice(), b"\n"].concat()).unwrap(),
            "b3:abc="
        );
        let file = br#"{"digest":"b3:abc=","size":3,"type":"file","executable":false}"#;
        assert!(root_digest(file).is_err());
        assert!(root_digest(b"directory b3:abc= size 3").is_err());
    }

    #[test]
    fn b3sum_batches_spread_over_the_cpus() {
        assert_eq!(b3sum_batch(1403, 2), 702);
        assert_eq!(b3sum_batch(89, 2), 45);
        assert_eq!(b3sum_batch(1, 2), 1);
        assert_eq!(b3sum_batch(0, 2), 1);
        assert_eq!(
            b3sum_command("T", 2, Some(16)),
            "find T -type f -print0 | xargs -0 -P 2 -n 8 b3sum --num-threads 2"
        );
    }

    #[test]
    fn the_b3sum_script_hashes_every_file() {
        if harness::find_on_path("b3sum").is_none() {
            eprintln!("b3sum not installed; skipping");
            return;
        }
        let dir = harness::test_dir::fresh("b3sum-script");
        let tree = dir.join("tree");
        fs::create_dir_all(tree.join("sub")).unwrap();
        for i in 0..7 {
            fs::write(tree.join("sub").join(format!("f{i}")), [i as u8; 100]).unwrap();
        }
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(b3sum_script(7, 2))
            .arg("sh")
            .arg(&tree)
            .arg("b3sum")
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 7);
        fs::remove_dir_all(dir).unwrap();
    }
}
