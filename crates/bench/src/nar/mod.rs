//! The `nar` job group: `cairn nar dump` against `nix-store --dump`, and
//! `cairn nar restore` against `nix-store --restore`, on the shared corpus's
//! `usr-share-doc`, `python3.X`, `large-*` and `kitchen-sink` trees (see
//! [`crate::corpus`]).
//!
//! Before anything is timed, each tree's `cairn nar dump` is checked to be
//! byte-identical to its `nix-store --dump`, and a `cairn nar restore` of
//! that NAR to dump back to the same bytes; any difference aborts the run,
//! since a fast wrong answer is not worth measuring.

use std::fs::File;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use crate::corpus::{self, Spec, Tree};
use crate::harness::files::{fresh_dir, remove_path, run_timed_creating, stdout_matches_file};
use crate::harness::report::{self, Align, ToolInfo};
use crate::harness::summary::Row;
use crate::harness::{self, CommonArgs, Invocation, JobResult, JobSpec, Sample};

/// The group's name: first argument, JSON file name, table label.
const GROUP: &str = "nar";

/// Options of `cairn-bench nar`.
#[derive(Args, Debug)]
pub struct NarArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

/// What the JSON report adds for this group.
#[derive(Serialize)]
struct Details<'a> {
    trees: &'a [Tree],
}

/// Runs the whole group: corpus, checks, jobs, table, JSON.
pub fn run(args: NarArgs) -> Result<Vec<Row>> {
    let this_run = report::Run::start();
    let common = args.common;
    let runs = common.runs();

    let cairn = harness::cairn_binary()?;
    let nix_store = harness::find_on_path("nix-store").context(
        "nix-store not found on PATH; it is the baseline of the nar jobs \
         (install it, e.g. `apt-get install nix-bin`)",
    )?;
    let work_dir = common.prepare_work_dir()?;
    let scratch = work_dir.join("scratch");
    fresh_dir(&scratch)?;

    let specs: Vec<Spec> = [
        Spec::usr_share_doc(),
        Spec::python_stdlib()?,
        Some(Spec::large(common.quick)),
        Some(Spec::kitchen_sink()),
    ]
    .into_iter()
    .flatten()
    .collect();
    let trees = corpus::prepare(&work_dir, &specs, &nix_store)?;
    for tree in &trees {
        verify(&cairn, &nix_store, tree, &scratch)?;
    }

    let mut jobs = Vec::new();
    for tree in &trees {
        jobs.push(dump_job(&cairn, &nix_store, tree, &scratch, runs)?);
    }
    for tree in &trees {
        jobs.push(restore_job(&cairn, &nix_store, tree, &scratch, runs)?);
    }
    remove_path(&scratch)?;

    let nix_version = harness::tool_version(&nix_store);
    println!();
    println!(
        "cairn-bench {GROUP}: median wall time of {runs} runs per tool, after {} warm-up pair, \
         alternating cairn and baseline",
        harness::WARMUP_PAIRS
    );
    println!(
        "baseline: dump = `nix-store --dump`, restore = `nix-store --restore` ({nix_version})"
    );
    println!("ratio = baseline median / cairn median: >= 1.00 means Cairn is at least as fast");
    println!(
        "bytes = NAR size; MB/s = bytes / cairn median (1 MB = 10^6 B); RSS = median peak RSS"
    );
    println!();
    print!("{}", report::results_table(&jobs));
    println!();
    print!("{}", memory_table(&trees, &jobs));

    this_run.finish(
        GROUP,
        &common,
        runs,
        work_dir,
        vec![
            ToolInfo {
                name: "cairn".into(),
                version: harness::tool_version(&cairn),
                path: cairn,
            },
            ToolInfo {
                name: "nix-store".into(),
                version: nix_version,
                path: nix_store,
            },
        ],
        Details { trees: &trees },
        &jobs,
    )?;
    Ok(jobs
        .iter()
        .map(|j| {
            let files = trees
                .iter()
                .find(|t| t.name == j.spec.subject)
                .map(|t| t.stats.files);
            let baseline = format!("nix-store --{}", j.spec.job);
            Row::timed(j, baseline, files, None)
        })
        .collect())
}

/// Peak RSS of each job next to the largest file of each tree, so that
/// "memory does not grow with file size" can be read off directly.
fn memory_table(trees: &[Tree], jobs: &[JobResult]) -> String {
    let rss = |job: &str, tree: &Tree, cairn: bool| {
        jobs.iter()
            .find(|j| j.spec.job == job && j.spec.subject == tree.name)
            .map_or_else(String::new, |j| {
                let r = if cairn { &j.cairn } else { &j.baseline };
                format!("{:.1}", r.median_max_rss_mib)
            })
    };
    let rows: Vec<Vec<String>> = trees
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                format!("{:.1}", t.stats.largest_file as f64 / (1u64 << 20) as f64),
                rss("dump", t, true),
                rss("restore", t, true),
                rss("dump", t, false),
                rss("restore", t, false),
            ]
        })
        .collect();
    let mut align = vec![Align::Left];
    align.extend([Align::Right; 5]);
    let mut out = String::from(
        "peak RSS (MiB, median) against each tree's largest file: \
         flat means memory does not grow with file size\n",
    );
    out.push_str(&report::format_table(
        &[
            "tree",
            "largest file MiB",
            "cairn dump",
            "cairn restore",
            "nix-store dump",
            "nix-store restore",
        ],
        &align,
        &rows,
    ));
    out
}

fn dump_job(
    cairn: &Path,
    nix_store: &Path,
    tree: &Tree,
    scratch: &Path,
    runs: usize,
) -> Result<JobResult> {
    let cairn_inv = Invocation::new(cairn)
        .arg("nar")
        .arg("dump")
        .arg(&tree.root)
        .drain_stdout();
    let nix_inv = Invocation::new(nix_store)
        .arg("--dump")
        .arg(&tree.root)
        .drain_stdout();
    let spec = JobSpec {
        group: GROUP,
        job: "dump".into(),
        subject: tree.name.clone(),
        bytes: tree.stats.nar_bytes,
        cairn_command: cairn_inv.display(),
        baseline_command: nix_inv.display(),
    };
    let log = scratch.join("stderr.log");
    let checked = |inv: &Invocation| -> Result<Sample> {
        let sample = harness::run_timed(inv, &log)?;
        if sample.stdout_bytes != Some(tree.stats.nar_bytes) {
            bail!(
                "{} wrote {:?} bytes, expected the NAR's {}",
                inv.display(),
                sample.stdout_bytes,
                tree.stats.nar_bytes
            );
        }
        Ok(sample)
    };
    harness::compare(spec, runs, || checked(&cairn_inv), || checked(&nix_inv))
}

fn restore_job(
    cairn: &Path,
    nix_store: &Path,
    tree: &Tree,
    scratch: &Path,
    runs: usize,
) -> Result<JobResult> {
    let cairn_inv = |dest: &Path| {
        Invocation::new(cairn)
            .arg("nar")
            .arg("restore")
            .arg(dest)
            .stdin_file(&tree.nar)
    };
    let nix_inv = |dest: &Path| {
        Invocation::new(nix_store)
            .arg("--restore")
            .arg(dest)
            .stdin_file(&tree.nar)
    };
    let placeholder = scratch.join("DEST");
    let spec = JobSpec {
        group: GROUP,
        job: "restore".into(),
        subject: tree.name.clone(),
        bytes: tree.stats.nar_bytes,
        cairn_command: cairn_inv(&placeholder).display(),
        baseline_command: nix_inv(&placeholder).display(),
    };
    let log = scratch.join("stderr.log");
    let (mut cairn_n, mut nix_n) = (0u32, 0u32);
    harness::compare(
        spec,
        runs,
        || {
            cairn_n += 1;
            let dest = scratch.join(format!("cairn-{}-{cairn_n}", tree.name));
            run_timed_creating(&cairn_inv(&dest), &dest, &log)
        },
        || {
            nix_n += 1;
            let dest = scratch.join(format!("nix-{}-{nix_n}", tree.name));
            run_timed_creating(&nix_inv(&dest), &dest, &log)
        },
    )
}

/// The pre-flight checks: Cairn's dump of `tree` is byte-identical to the
/// baseline's NAR, and Cairn's restore of that NAR dumps back to it.
fn verify(cairn: &Path, nix_store: &Path, tree: &Tree, scratch: &Path) -> Result<()> {
    let started = Instant::now();
    let mut dump = Command::new(cairn);
    dump.arg("nar").arg("dump").arg(&tree.root);
    stdout_matches_file(dump, &tree.nar).with_context(|| {
        format!(
            "`cairn nar dump {}` is not byte-identical to `nix-store --dump`; \
             refusing to benchmark it",
            tree.root.display()
        )
    })?;

    let dest = scratch.join(format!("verify-{}", tree.name));
    remove_path(&dest)?;
    let status = Command::new(cairn)
        .arg("nar")
        .arg("restore")
        .arg(&dest)
        .stdin(
            File::open(&tree.nar).with_context(|| format!("cannot open {}", tree.nar.display()))?,
        )
        .status()
        .with_context(|| format!("cannot run {}", cairn.display()))?;
    if !status.success() {
        bail!(
            "`cairn nar restore {} < {}` failed ({status})",
            dest.display(),
            tree.nar.display()
        );
    }
    let mut redump = Command::new(nix_store);
    redump.arg("--dump").arg(&dest);
    stdout_matches_file(redump, &tree.nar).with_context(|| {
        format!(
            "`cairn nar restore` of {} does not dump back to the same NAR; \
             refusing to benchmark it",
            tree.nar.display()
        )
    })?;
    remove_path(&dest)?;
    eprintln!(
        "check: {} dumps and restores byte-identically ({:.1} s)",
        tree.name,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
