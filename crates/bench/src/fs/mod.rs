//! The `fs` job group: reading through `cairn mount` against reading the
//! same tree from the local disk, cold and warm.
//!
//! Jobs, per tree (`python3.X` and `large-256MiB` with `--quick`; also
//! `rust-lib` and `large-2GiB` without):
//!
//! 1. **read**: `cat FILE` (to a drained pipe) of the tree's largest file.
//! 2. **tar**: `tar -c` of the whole tree (to a drained pipe).
//!
//! Each comes **cold** (page cache dropped before every run, both sides:
//! `sync; echo 3 > /proc/sys/vm/drop_caches`, needs root; skipped with a
//! note otherwise) and **warm** (the same read again, caches kept).
//! The mount is `cairn mount` on a data directory filled by `cairn
//! import`, started once per tree, untimed. "cairn" column: through the
//! mount; "baseline": the corpus tree on disk. ratio = disk time / mount
//! time. **Targets: cold ≥ 0.5, warm ≥ 0.9.**

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use crate::corpus::{self, Spec, Tree};
use crate::harness::files::{fresh_dir, remove_path};
use crate::harness::process::{spawn_announcing, stop_gracefully};
use crate::harness::report::{self, Align, ToolInfo};
use crate::harness::summary::{Row, Target};
use crate::harness::{self, CommonArgs, Invocation, JobResult, JobSpec, Sample};

const GROUP: &str = "fs";
const COLD_MIN_RATIO: f64 = 0.5;
const WARM_MIN_RATIO: f64 = 0.9;

/// Options of `cairn-bench fs`.
#[derive(Args, Debug)]
pub struct FsArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

/// A running `cairn mount`, unmounted (SIGTERM) when dropped.
struct Mount {
    child: Child,
}

impl Mount {
    fn start(cairn: &Path, data: &Path, at: &Path) -> Result<Mount> {
        fresh_dir(at)?;
        let (child, _) = spawn_announcing(
            Command::new(cairn)
                .arg("mount")
                .arg("--data-dir")
                .arg(data)
                .arg(at),
            "cairn mount: mounted at ",
        )?;
        Ok(Mount { child })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        stop_gracefully(&mut self.child, Duration::from_secs(20));
    }
}

/// Empties the page cache (and so FUSE's): `sync`, then drop_caches.
fn drop_caches() -> Result<()> {
    crate::harness::files::sync()?;
    fs::write("/proc/sys/vm/drop_caches", "3").context("cannot drop the page cache (needs root)")
}

#[derive(Serialize)]
struct FsJob {
    #[serde(flatten)]
    result: JobResult,
    cold: bool,
    target_min_ratio: f64,
    target_met: bool,
}

#[derive(Serialize)]
struct Details<'a> {
    trees: &'a [Tree],
    columns: &'static str,
    cold_skipped: Option<String>,
}

/// The largest regular file below `root`.
fn largest_file(root: &Path) -> Result<PathBuf> {
    let mut best: Option<(u64, PathBuf)> = None;
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir)? {
            let e = e?;
            let m = fs::symlink_metadata(e.path())?;
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() && best.as_ref().is_none_or(|(n, _)| m.len() > *n) {
                best = Some((m.len(), e.path()));
            }
        }
    }
    best.map(|(_, p)| p)
        .with_context(|| format!("{} has no regular file", root.display()))
}

/// Runs the group.
pub fn run(args: FsArgs) -> Result<Vec<Row>> {
    let this_run = report::Run::start();
    let common = args.common;
    let runs = common.runs();
    let cairn = harness::cairn_binary()?;
    let nix_store = harness::find_on_path("nix-store").context(
        "nix-store not found on PATH; the corpus is built with it (apt-get install nix-bin)",
    )?;
    let work_dir = common.prepare_work_dir()?;
    let scratch = work_dir.join("scratch-fs");
    fresh_dir(&scratch)?;
    let log = scratch.join("stderr.log");
    let mut specs: Vec<Spec> = corpus::Spec::python_stdlib()?.into_iter().collect();
    if !common.quick {
        specs.extend(corpus::Spec::rust_lib());
    }
    specs.push(corpus::Spec::large(common.quick));
    let trees = corpus::prepare(&work_dir, &specs, &nix_store)?;
    let cold_skipped = drop_caches().err().map(|e| format!("{e:#}"));
    if let Some(why) = &cold_skipped {
        eprintln!("fs: cold runs skipped: {why}");
    }

    let mut jobs = Vec::new();
    for tree in &trees {
        let data = scratch.join(format!("data-{}", tree.name));
        let out = Command::new(&cairn)
            .args(["import", "--data-dir"])
            .arg(&data)
            .arg(&tree.root)
            .output()?;
        if !out.status.success() {
            bail!("cannot import {}", tree.root.display());
        }
        let path = String::from_utf8(out.stdout)?.trim().to_owned();
        let mnt = scratch.join(format!("mnt-{}", tree.name));
        let mount = Mount::start(&cairn, &data, &mnt)?;
        let mounted_root = mnt.join(path.trim_start_matches("/nix/store/"));
        let big = largest_file(&tree.root)?;
        let rel = big.strip_prefix(&tree.root)?.to_owned();
        let big_size = fs::metadata(&big)?.len();
        let read = |root: &Path| {
            Invocation::new("cat")
                .arg(if rel.as_os_str().is_empty() {
                    root.to_owned()
                } else {
                    root.join(&rel)
                })
                .drain_stdout()
        };
        let tar = |root: &Path| {
            let parent = root.parent().unwrap_or(Path::new("/")).to_owned();
            let name = root.file_name().unwrap_or_default().to_owned();
            Invocation::new("tar")
                .arg("-c")
                .arg("-f")
                .arg("-")
                .arg("-C")
                .arg(parent)
                .arg(name)
                .drain_stdout()
        };
        for (job, bytes, make) in [
            ("read", big_size, &read as &dyn Fn(&Path) -> Invocation),
            ("tar", tree.stats.file_bytes, &tar),
        ] {
            for cold in [true, false] {
                if cold && cold_skipped.is_some() {
                    continue;
                }
                let ours = make(&mounted_root);
                let theirs = make(&tree.root);
                let spec = JobSpec {
                    group: GROUP,
                    job: format!("{job} {}", if cold { "cold" } else { "warm" }),
                    subject: tree.name.clone(),
                    bytes,
                    cairn_command: format!("{} (through cairn mount)", ours.display()),
                    baseline_command: format!("{} (local disk)", theirs.display()),
                };
                let timed = |inv: &Invocation| -> Result<Sample> {
                    if cold {
                        drop_caches()?;
                    }
                    harness::run_timed(inv, &log)
                };
                let result = harness::compare(spec, runs, || timed(&ours), || timed(&theirs))?;
                let min = if cold { COLD_MIN_RATIO } else { WARM_MIN_RATIO };
                jobs.push(FsJob {
                    target_met: result.ratio >= min,
                    result,
                    cold,
                    target_min_ratio: min,
                });
            }
        }
        drop(mount);
        remove_path(&data)?;
        remove_path(&mnt)?;
    }
    remove_path(&scratch)?;

    println!();
    println!(
        "cairn-bench {GROUP}: medians of {runs} runs each, after a warm-up, alternating; \
         cairn = through `cairn mount`, baseline = the same tree on local disk"
    );
    println!("read = cat of the largest file; tar = tar -c of the tree; cold = page cache dropped before each run");
    println!("ratio = disk time / mount time (1.00: as fast as the disk)");
    println!();
    let headers = [
        "job",
        "tree",
        "bytes",
        "mount s",
        "disk s",
        "ratio",
        "target",
        "mount MB/s",
        "disk MB/s",
    ];
    let mut align = vec![Align::Left, Align::Left];
    align.extend([Align::Right; 7]);
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            let r = &j.result;
            vec![
                r.spec.job.clone(),
                r.spec.subject.clone(),
                r.spec.bytes.to_string(),
                report::secs(r.cairn.median_wall_s),
                report::secs(r.baseline.median_wall_s),
                format!("{:.2}", r.ratio),
                format!(
                    ">= {:.2} {}",
                    j.target_min_ratio,
                    if j.target_met { "met" } else { "MISSED" }
                ),
                format!("{:.1}", r.cairn.mb_per_s),
                format!("{:.1}", r.baseline.mb_per_s),
            ]
        })
        .collect();
    print!("{}", report::format_table(&headers, &align, &rows));
    if let Some(why) = &cold_skipped {
        println!("\ncold runs skipped: {why}");
    }

    this_run.finish(
        GROUP,
        &common,
        runs,
        work_dir,
        vec![ToolInfo {
            name: "cairn".into(),
            version: harness::tool_version(&cairn),
            path: cairn,
        }],
        Details {
            trees: &trees,
            columns: "cairn = through cairn mount, baseline = local disk",
            cold_skipped,
        },
        &jobs,
    )?;
    Ok(jobs
        .iter()
        .map(|j| {
            let r = &j.result;
            let files = r.spec.job.starts_with("tar").then(|| {
                trees
                    .iter()
                    .find(|t| t.name == r.spec.subject)
                    .map_or(0, |t| t.stats.files)
            });
            let target = Some(Target::MinRatio {
                min: j.target_min_ratio,
            });
            let mut row = Row::timed(r, "the same on local disk", files, target);
            row.job = format!("{} via mount", r.spec.job);
            // The measured process is the reader (cat, tar), not the mount.
            row.cairn_peak_rss_mib = None;
            row.baseline_peak_rss_mib = None;
            row
        })
        .collect())
}
