//! The `grpc` job group: Cairn through `cairn daemon` over loopback TCP
//! against Cairn on the embedded store directly, on the same trees
//! (`python3.X` and `rust-lib`; `python3.X` only with `--quick`).
//!
//! Jobs, per tree:
//!
//! 1. **import**: `cairn import --store-addr grpc+http://127.0.0.1:PORT
//!    TREE` into a daemon on a fresh data directory, against `cairn import
//!    --data-dir DIR TREE` into a fresh data directory. Each daemon is
//!    started before its run and stopped (SIGTERM, waited for) after it,
//!    untimed. **Target: ratio ≥ 0.80** (the daemon costs at most a fifth).
//! 2. **read**: `cairn export STORE-PATH` through the daemon against the
//!    same export from the data directory directly (both filled once,
//!    untimed; output to a file whose size is checked): blob read
//!    throughput over gRPC against the local store. Reported, no target.
//!
//! Here the "baseline" column is Cairn direct and the "cairn" column Cairn
//! through the daemon: ratio = direct / daemon, 1.00 meaning the daemon
//! costs nothing. Every import must print the store path `cairn
//! store-path` computes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use crate::corpus::{self, Spec, Tree};
use crate::harness::files::{fresh_dir, remove_path, sync, Trash};
use crate::harness::process::spawn_announcing;
use crate::harness::report::{self, Align, ToolInfo};
use crate::harness::summary::{Row, Target};
use crate::harness::{self, CommonArgs, Invocation, JobResult, JobSpec, Sample};

const GROUP: &str = "grpc";

/// `import`: direct time / daemon time at least this.
const IMPORT_MIN_RATIO: f64 = 0.8;

/// Options of `cairn-bench grpc`.
#[derive(Args, Debug)]
pub struct GrpcArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

/// A daemon for one run, stopped when dropped.
struct Daemon {
    child: Child,
    addr: String,
}

impl Daemon {
    fn start(cairn: &Path, data: &Path) -> Result<Daemon> {
        let (child, bound) = spawn_announcing(
            Command::new(cairn)
                .args(["daemon", "--listen", "127.0.0.1:0", "--data-dir"])
                .arg(data),
            "cairn daemon: listening on ",
        )?;
        Ok(Daemon {
            child,
            addr: format!("grpc+http://{bound}"),
        })
    }

    fn stop(mut self) -> Result<()> {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status()?;
        if !status.success() {
            bail!("cannot signal the daemon");
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.child.try_wait()? {
                if !s.success() {
                    bail!("cairn daemon exited with {s}");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("cairn daemon did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Bench {
    cairn: PathBuf,
    scratch: PathBuf,
    trash: Trash,
    log: PathBuf,
    out: PathBuf,
    made: std::cell::Cell<u32>,
}

impl Bench {
    fn new_path(&self, what: &str) -> Result<PathBuf> {
        let n = self.made.get() + 1;
        self.made.set(n);
        let p = self.scratch.join(format!("{what}-{n}"));
        remove_path(&p)?;
        Ok(p)
    }

    fn cairn(&self) -> Invocation {
        Invocation::new(&self.cairn)
    }

    /// Runs `inv` timed; its stdout (to [`Self::out`]) must be `expect`.
    fn run_printing(&self, inv: Invocation, expect: &str) -> Result<Sample> {
        let inv = inv.stdout_file(&self.out);
        let sample = harness::run_timed(&inv, &self.log)?;
        let printed = fs::read_to_string(&self.out)?;
        if printed.trim() != expect {
            bail!("{} printed {printed:?}, expected {expect}", inv.display());
        }
        Ok(sample)
    }

    /// Runs `inv` timed; it must write `bytes` bytes to [`Self::out`].
    fn run_writing(&self, inv: Invocation, bytes: u64) -> Result<Sample> {
        let inv = inv.stdout_file(&self.out);
        let sample = harness::run_timed(&inv, &self.log)?;
        let written = fs::metadata(&self.out)?.len();
        if written != bytes {
            bail!("{} wrote {written} bytes, expected {bytes}", inv.display());
        }
        remove_path(&self.out)?;
        sync()?;
        Ok(sample)
    }
}

#[derive(Serialize)]
struct GrpcJob {
    #[serde(flatten)]
    result: JobResult,
    target_min_ratio: Option<f64>,
    target_met: Option<bool>,
}

#[derive(Serialize)]
struct Details<'a> {
    trees: &'a [Tree],
    /// What the two columns are.
    columns: &'static str,
}

fn store_path(bench: &Bench, tree: &Tree) -> Result<String> {
    let out = Command::new(&bench.cairn)
        .arg("store-path")
        .arg(&tree.root)
        .output()?;
    if !out.status.success() {
        bail!("cairn store-path {} failed", tree.root.display());
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

fn import_job(bench: &Bench, tree: &Tree, path: &str, runs: usize) -> Result<GrpcJob> {
    let spec = JobSpec {
        group: GROUP,
        job: "import".into(),
        subject: tree.name.clone(),
        bytes: tree.stats.nar_bytes,
        cairn_command: format!(
            "cairn import --store-addr grpc+http://127.0.0.1:PORT {} (daemon on a fresh data dir)",
            tree.root.display()
        ),
        baseline_command: format!(
            "cairn import --data-dir DIR {} (fresh DIR)",
            tree.root.display()
        ),
    };
    let result = harness::compare(
        spec,
        runs,
        || {
            let data = bench.new_path("daemon-data")?;
            let daemon = Daemon::start(&bench.cairn, &data)?;
            let inv = bench
                .cairn()
                .arg("import")
                .arg("--store-addr")
                .arg(&daemon.addr)
                .arg(&tree.root);
            let sample = bench.run_printing(inv, path)?;
            daemon.stop()?;
            bench.trash.discard(&data)?;
            sync()?;
            Ok(sample)
        },
        || {
            let data = bench.new_path("direct-data")?;
            let inv = bench
                .cairn()
                .arg("import")
                .arg("--data-dir")
                .arg(&data)
                .arg(&tree.root);
            let sample = bench.run_printing(inv, path)?;
            bench.trash.discard(&data)?;
            sync()?;
            Ok(sample)
        },
    )?;
    let met = result.ratio >= IMPORT_MIN_RATIO;
    Ok(GrpcJob {
        result,
        target_min_ratio: Some(IMPORT_MIN_RATIO),
        target_met: Some(met),
    })
}

fn read_job(bench: &Bench, tree: &Tree, path: &str, runs: usize) -> Result<GrpcJob> {
    // One data directory, filled once, read directly and through a daemon
    // on it (not at the same time: the daemon holds its databases).
    let data = bench.new_path("read-data")?;
    let out = Command::new(&bench.cairn)
        .args(["import", "--data-dir"])
        .arg(&data)
        .arg(&tree.root)
        .output()?;
    if !out.status.success() {
        bail!("cannot fill {}", data.display());
    }
    sync()?;
    let spec = JobSpec {
        group: GROUP,
        job: "read".into(),
        subject: tree.name.clone(),
        bytes: tree.stats.nar_bytes,
        cairn_command: format!(
            "cairn export --store-addr grpc+http://127.0.0.1:PORT {path} > FILE"
        ),
        baseline_command: format!("cairn export --data-dir DIR {path} > FILE"),
    };
    let result = harness::compare(
        spec,
        runs,
        || {
            let daemon = Daemon::start(&bench.cairn, &data)?;
            let inv = bench
                .cairn()
                .arg("export")
                .arg("--store-addr")
                .arg(&daemon.addr)
                .arg(path);
            let sample = bench.run_writing(inv, tree.stats.nar_bytes)?;
            daemon.stop()?;
            Ok(sample)
        },
        || {
            let inv = bench
                .cairn()
                .arg("export")
                .arg("--data-dir")
                .arg(&data)
                .arg(path);
            bench.run_writing(inv, tree.stats.nar_bytes)
        },
    )?;
    bench.trash.discard(&data)?;
    Ok(GrpcJob {
        result,
        target_min_ratio: None,
        target_met: None,
    })
}

/// Runs the group.
pub fn run(args: GrpcArgs) -> Result<Vec<Row>> {
    let this_run = report::Run::start();
    let common = args.common;
    let runs = common.runs();
    let cairn = harness::cairn_binary()?;
    let nix_store = harness::find_on_path("nix-store").context(
        "nix-store not found on PATH; the corpus is built with it (apt-get install nix-bin)",
    )?;
    let work_dir = common.prepare_work_dir()?;
    let scratch = work_dir.join("scratch");
    fresh_dir(&scratch)?;
    let bench = Bench {
        cairn: cairn.clone(),
        trash: Trash::new(scratch.join("trash"))?,
        log: scratch.join("stderr.log"),
        out: scratch.join("stdout"),
        scratch,
        made: std::cell::Cell::new(0),
    };
    // Trees of small and of large files; /usr/share/doc adds nothing new.
    let mut specs: Vec<Spec> = corpus::Spec::python_stdlib()?.into_iter().collect();
    if !common.quick {
        specs.extend(corpus::Spec::rust_lib());
    }
    let trees = corpus::prepare(&work_dir, &specs, &nix_store)?;
    let mut jobs = Vec::new();
    for tree in &trees {
        let path = store_path(&bench, tree)?;
        jobs.push(import_job(&bench, tree, &path, runs)?);
        jobs.push(read_job(&bench, tree, &path, runs)?);
    }
    let Bench { trash, scratch, .. } = bench;
    trash.empty()?;
    remove_path(&scratch)?;

    println!();
    println!(
        "cairn-bench {GROUP}: median wall time of {runs} runs each, after {} warm-up pair, \
         alternating",
        harness::WARMUP_PAIRS
    );
    println!("daemon = through `cairn daemon` on 127.0.0.1 (started and stopped untimed around each run)");
    println!("direct = the same command on the data directory itself");
    println!("import = `cairn import TREE` into a fresh store; read = `cairn export PATH > FILE`");
    println!("ratio = direct median / daemon median (1.00: the daemon costs nothing)");
    println!();
    let headers = [
        "job",
        "tree",
        "bytes",
        "daemon s",
        "direct s",
        "ratio",
        "target",
        "daemon MB/s",
        "direct MB/s",
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
                match (j.target_min_ratio, j.target_met) {
                    (Some(min), Some(true)) => format!(">= {min:.2} met"),
                    (Some(min), _) => format!(">= {min:.2} MISSED"),
                    _ => "-".into(),
                },
                format!("{:.1}", r.cairn.mb_per_s),
                format!("{:.1}", r.baseline.mb_per_s),
            ]
        })
        .collect();
    print!("{}", report::format_table(&headers, &align, &rows));

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
            columns: "cairn = through the daemon, baseline = direct",
        },
        &jobs,
    )?;
    Ok(jobs
        .iter()
        .map(|j| {
            let files = trees
                .iter()
                .find(|t| t.name == j.result.spec.subject)
                .map(|t| t.stats.files);
            let target = j.target_min_ratio.map(|min| Target::MinRatio { min });
            let mut row = Row::timed(&j.result, "the same, embedded", files, target);
            row.job = format!("{} via daemon", j.result.spec.job);
            row
        })
        .collect())
}
