//! The `store` job group: the top-level store commands of `cairn` against
//! Nix, on the shared corpus's `python3.X`, `usr-share-doc` and `rust-lib`
//! trees (`python3.X` only with `--quick`; see [`crate::corpus`]), plus a
//! memory job on a tree whose NAR is over 4 GiB (`large-4GiB`, or
//! `large-256MiB` with `--quick`).
//!
//! Jobs, per tree:
//!
//! 1. **import**: `cairn import TREE` into a fresh data directory against
//!    `nix-store --store DIR --add TREE` into a fresh chroot store;
//! 2. **export**: `cairn export STORE-PATH` from a data directory filled once
//!    (untimed) against `nix-store --dump TREE`, both writing stdout to a
//!    file;
//! 3. **import-nar**: `cairn import-nar --name TREE TREE.nar` into a fresh
//!    data directory against `nix-store --restore DEST < TREE.nar`;
//! 4. **sha256 floor**: the NAR's sha256 alone (`openssl dgst -sha256`,
//!    with the CPU's SHA extensions where it has them) in the
//!    Cairn column, against `nix-store --restore` again. SHA-256 cannot be
//!    split across cores, and both `cairn import` and `cairn import-nar`
//!    must compute it (it names the store path and goes in the narinfo),
//!    so this ratio is the most any Cairn could reach against `--restore`
//!    however little else it did: a ceiling, held to no target.
//! 5. **memory** (the large tree only): import-nar and export as above, one
//!    counted pair each after the warm-up pair; the target is Cairn's peak
//!    RSS, not its speed.
//!
//! "Fresh" stores are initialised untimed, so that no timed run pays for
//! creating a database: each Nix store by `nix-store --store DIR --init`,
//! each Cairn data directory by importing a one-line file ([`SEED`]) into
//! it. Like the `import` group, every run that creates a tree writes to a
//! fresh path that is moved to the trash afterwards, never deleted until the
//! group ends (see [`Trash`]), and `sync` runs, untimed, after every run and
//! every initialisation.
//!
//! Before anything is timed, each tree is checked: `cairn import` must print
//! the same store path as `nix-store --add`, `cairn import-nar` of the
//! tree's NAR the same one again, and `cairn export` of that path, from
//! both data directories, must be byte-identical to `nix-store --dump`.
//! Every timed run must then print that store path (or write a NAR of the
//! right size). A fast wrong answer is not worth measuring.

use std::cell::Cell;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use crate::corpus::{self, Spec, Tree};
use crate::harness::files::{fresh_dir, remove_path, stdout_matches_file, sync, Trash};
use crate::harness::report::{self, Align, ToolInfo};
use crate::harness::summary::{self, Row};
use crate::harness::{self, CommonArgs, Invocation, JobResult, JobSpec, Sample};

/// The group's name: first argument, JSON file name, table label.
const GROUP: &str = "store";

/// `import`: Nix must take at least this many times as long as Cairn.
const IMPORT_MIN_RATIO: f64 = 2.0;

/// `export`: Cairn at least as fast as `nix-store --dump`.
const EXPORT_MIN_RATIO: f64 = 1.0;

/// `import-nar`: Cairn at least as fast as `nix-store --restore`.
const IMPORT_NAR_MIN_RATIO: f64 = 1.0;

/// The memory jobs: Cairn's peak RSS, in any run, at most this many MiB.
const MAX_RSS_MIB: f64 = 100.0;

/// Counted runs of the memory jobs, whatever `--runs` says: they are about
/// memory, and each run moves over 4 GiB.
const MEMORY_RUNS: usize = 1;

/// Prefix of the memory jobs' names (`memory import-nar`, `memory export`).
const MEMORY: &str = "memory ";

/// The one-line file imported, untimed, into every fresh Cairn data
/// directory, so that no timed run pays for creating its databases.
const SEED: &str = "cairn-bench: this file initialises a fresh data directory\n";

/// Options of `cairn-bench store`.
#[derive(Args, Debug)]
pub struct StoreArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

/// What a job is held to.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(tag = "measure", rename_all = "snake_case")]
enum Target {
    /// Nothing: a measurement that bounds what the others can reach.
    Ceiling,
    /// Baseline median / Cairn median at least `min`.
    Ratio { min: f64 },
    /// Cairn's highest peak RSS of any run (the warm-up included) at most
    /// `max_mib` MiB.
    PeakRss { max_mib: f64 },
}

impl Target {
    fn met(self, result: &JobResult) -> bool {
        match self {
            Target::Ceiling => true,
            Target::Ratio { min } => result.ratio >= min,
            Target::PeakRss { max_mib } => result.cairn.max_max_rss_mib <= max_mib,
        }
    }

    fn describe(self) -> String {
        match self {
            Target::Ceiling => "(ceiling)".into(),
            Target::Ratio { min } => format!("ratio >= {min:.2}"),
            Target::PeakRss { max_mib } => format!("RSS <= {max_mib:.0} MiB"),
        }
    }
}

/// One job's result, with the store path it checked and its target.
#[derive(Serialize)]
struct StoreJob {
    #[serde(flatten)]
    result: JobResult,
    /// The store path every run printed (import, import-nar) or exported.
    store_path: String,
    target: Target,
    target_met: bool,
}

/// What the JSON report adds for this group.
#[derive(Serialize)]
struct Details<'a> {
    trees: &'a [Tree],
    /// The tree of the memory jobs.
    memory_tree: &'a str,
    /// Counted runs of the memory jobs.
    memory_runs: usize,
    /// How each fresh Nix store is initialised, untimed.
    nix_store_init: &'static str,
    /// How each fresh Cairn data directory is initialised, untimed.
    cairn_data_dir_init: &'static str,
}

/// A command line, run either measured ([`Invocation`]) or untimed
/// ([`Command`]), so that the checks run exactly what is timed.
#[derive(Clone)]
struct CommandLine {
    program: PathBuf,
    args: Vec<OsString>,
}

impl CommandLine {
    fn new(program: &Path) -> Self {
        Self {
            program: program.to_owned(),
            args: Vec::new(),
        }
    }

    fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// To be measured (stdin and stdout on `/dev/null` until set).
    fn timed(&self) -> Invocation {
        self.args
            .iter()
            .fold(Invocation::new(&self.program), |inv, a| inv.arg(a))
    }

    /// To be run untimed.
    fn untimed(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        cmd
    }

    /// Runs it untimed, stdin on `/dev/null`, and returns its stdout without
    /// the final newline; its failure is an error.
    fn output(&self) -> Result<String> {
        let what = self.timed().display();
        let output = self
            .untimed()
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("cannot run {what}"))?;
        if !output.status.success() {
            bail!("`{what}` failed ({})", output.status);
        }
        let text = String::from_utf8(output.stdout)
            .with_context(|| format!("`{what}` printed something not UTF-8"))?;
        Ok(text.trim_end_matches('\n').to_owned())
    }
}

/// The tools, and the scratch space every run writes into.
struct Bench {
    cairn: PathBuf,
    nix_store: PathBuf,
    scratch: PathBuf,
    trash: Trash,
    /// The [`SEED`] file.
    seed: PathBuf,
    /// Every measured run's stderr.
    log: PathBuf,
    /// Every measured run's stdout (when it goes to a file).
    out: PathBuf,
    /// Numbers the fresh paths.
    made: Cell<u32>,
}

impl Bench {
    /// `cairn import --data-dir DATA TREE`.
    fn import(&self, data: &Path, tree: &Path) -> CommandLine {
        self.cairn_command("import", data).arg(tree)
    }

    /// `cairn import-nar --data-dir DATA --name NAME NAR`.
    fn import_nar(&self, data: &Path, name: &str, nar: &Path) -> CommandLine {
        self.cairn_command("import-nar", data)
            .arg("--name")
            .arg(name)
            .arg(nar)
    }

    /// `cairn export --data-dir DATA STORE-PATH`.
    fn export(&self, data: &Path, store_path: &str) -> CommandLine {
        self.cairn_command("export", data).arg(store_path)
    }

    fn cairn_command(&self, subcommand: &str, data: &Path) -> CommandLine {
        CommandLine::new(&self.cairn)
            .arg(subcommand)
            .arg("--data-dir")
            .arg(data)
    }

    /// `nix-store --store STORE --add TREE`.
    fn nix_add(&self, store: &Path, tree: &Path) -> CommandLine {
        CommandLine::new(&self.nix_store)
            .arg("--store")
            .arg(store)
            .arg("--add")
            .arg(tree)
    }

    /// `nix-store --dump TREE`.
    fn nix_dump(&self, tree: &Path) -> CommandLine {
        CommandLine::new(&self.nix_store).arg("--dump").arg(tree)
    }

    /// `nix-store --restore DEST` (the NAR on stdin).
    fn nix_restore(&self, dest: &Path) -> CommandLine {
        CommandLine::new(&self.nix_store).arg("--restore").arg(dest)
    }

    /// A path under the scratch directory that nothing has used, named
    /// after `what`.
    fn new_path(&self, what: &str) -> Result<PathBuf> {
        let n = self.made.get() + 1;
        self.made.set(n);
        let path = self.scratch.join(format!("{what}-{n}"));
        remove_path(&path)?;
        Ok(path)
    }

    /// A new Cairn data directory, its databases created (by importing
    /// [`SEED`]) and written back, untimed.
    fn fresh_data_dir(&self, what: &str) -> Result<PathBuf> {
        let data = self.new_path(what)?;
        self.import(&data, &self.seed)
            .output()
            .context("cannot initialise a fresh Cairn data directory")?;
        sync()?;
        Ok(data)
    }

    /// A new Nix chroot store, initialised by `nix-store --init` and written
    /// back, untimed.
    fn fresh_nix_store(&self, what: &str) -> Result<PathBuf> {
        let store = self.new_path(what)?;
        CommandLine::new(&self.nix_store)
            .arg("--store")
            .arg(&store)
            .arg("--init")
            .output()
            .context("cannot initialise a fresh Nix store")?;
        sync()?;
        Ok(store)
    }

    /// One measured run of `inv`, which must create `creates` and, if
    /// `prints` is given, print that line (`inv`'s stdout must go to
    /// [`Bench::out`]). Afterwards, untimed, `creates` goes to the trash and
    /// the filesystem is synced.
    fn run_creating(
        &self,
        inv: &Invocation,
        creates: &Path,
        prints: Option<&str>,
    ) -> Result<Sample> {
        let sample = harness::run_timed(inv, &self.log)?;
        if fs::symlink_metadata(creates).is_err() {
            bail!(
                "{} succeeded but {} does not exist",
                inv.display(),
                creates.display()
            );
        }
        if let Some(expected) = prints {
            let printed = fs::read_to_string(&self.out)
                .with_context(|| format!("cannot read {}", self.out.display()))?;
            if printed.trim_end_matches('\n') != expected {
                bail!(
                    "{} printed {:?}, not {expected} as the check did",
                    inv.display(),
                    printed.trim_end()
                );
            }
        }
        self.trash.discard(creates)?;
        sync()?;
        Ok(sample)
    }

    /// One measured run of `inv`, whose stdout goes to [`Bench::out`] and
    /// must be `bytes` long; the output is then removed and the filesystem
    /// synced, untimed.
    fn run_writing(&self, inv: &Invocation, bytes: u64) -> Result<Sample> {
        let sample = harness::run_timed(inv, &self.log)?;
        let written = fs::metadata(&self.out)
            .with_context(|| format!("cannot stat {}", self.out.display()))?
            .len();
        if written != bytes {
            bail!(
                "{} wrote {written} bytes, expected the NAR's {bytes}",
                inv.display()
            );
        }
        remove_path(&self.out)?;
        sync()?;
        Ok(sample)
    }
}

/// What the checks established about a tree.
struct Checked {
    /// The store path of the tree (what `nix-store --add` gives it).
    store_path: String,
    /// A data directory holding it: the export jobs' input.
    data: PathBuf,
}

/// Runs the whole group: corpus, checks, jobs, tables, JSON.
pub fn run(args: StoreArgs) -> Result<Vec<Row>> {
    let this_run = report::Run::start();
    let common = args.common;
    let runs = common.runs();

    let cairn = harness::cairn_binary()?;
    let nix_store = harness::find_on_path("nix-store").context(
        "nix-store not found on PATH; it is the baseline of the store jobs \
         (install it, e.g. `apt-get install nix-bin`)",
    )?;
    let work_dir = common.prepare_work_dir()?;
    let scratch = work_dir.join("scratch");
    fresh_dir(&scratch)?;
    let seed = scratch.join("seed");
    fs::write(&seed, SEED).with_context(|| format!("cannot write {}", seed.display()))?;
    let bench = Bench {
        cairn,
        nix_store,
        trash: Trash::new(scratch.join("trash"))?,
        seed,
        log: scratch.join("stderr.log"),
        out: scratch.join("stdout"),
        scratch,
        made: Cell::new(0),
    };

    let specs = Spec::real_trees(common.quick)?;
    if specs.is_empty() {
        bail!("none of the store group's trees exists on this machine");
    }
    let large = if common.quick {
        Spec::large(true)
    } else {
        Spec::large_4gib()
    };
    let mut trees = corpus::prepare(&work_dir, &specs, &bench.nix_store)?;
    let memory_tree = corpus::prepare(&work_dir, &[large], &bench.nix_store)?
        .pop()
        .context("the large tree was not built")?;

    let checked = trees
        .iter()
        .map(|tree| verify(&bench, tree, true))
        .collect::<Result<Vec<_>>>()?;
    let memory_checked = verify(&bench, &memory_tree, false)?;

    let mut jobs = Vec::new();
    for (tree, c) in trees.iter().zip(&checked) {
        jobs.push(import_job(&bench, tree, &c.store_path, runs)?);
    }
    for (tree, c) in trees.iter().zip(&checked) {
        let target = Target::Ratio {
            min: EXPORT_MIN_RATIO,
        };
        jobs.push(export_job(&bench, tree, c, "export", runs, target)?);
    }
    for (tree, c) in trees.iter().zip(&checked) {
        let target = Target::Ratio {
            min: IMPORT_NAR_MIN_RATIO,
        };
        let store_path = &c.store_path;
        jobs.push(import_nar_job(
            &bench,
            tree,
            store_path,
            "import-nar",
            runs,
            target,
        )?);
    }
    for tree in &trees {
        jobs.push(sha256_floor_job(&bench, tree, runs)?);
    }
    let memory_target = Target::PeakRss {
        max_mib: MAX_RSS_MIB,
    };
    let job = format!("{MEMORY}import-nar");
    let store_path = &memory_checked.store_path;
    jobs.push(import_nar_job(
        &bench,
        &memory_tree,
        store_path,
        &job,
        MEMORY_RUNS,
        memory_target,
    )?);
    let job = format!("{MEMORY}export");
    jobs.push(export_job(
        &bench,
        &memory_tree,
        &memory_checked,
        &job,
        MEMORY_RUNS,
        memory_target,
    )?);
    eprintln!("removing the runs' outputs");
    let Bench {
        cairn,
        nix_store,
        scratch,
        trash,
        ..
    } = bench;
    trash.empty()?;
    remove_path(&scratch)?;

    let nix_version = harness::tool_version(&nix_store);
    println!();
    println!(
        "cairn-bench {GROUP}: median wall time of {runs} runs per tool, after {} warm-up pair, \
         alternating cairn and baseline (memory jobs: {MEMORY_RUNS} run each, after the warm-up \
         pair)",
        harness::WARMUP_PAIRS
    );
    println!(
        "import = `cairn import TREE` into a fresh data dir vs `nix-store --store DIR --add TREE` \
         into a fresh store, both initialised untimed"
    );
    println!(
        "export = `cairn export STORE-PATH` from a data dir filled once vs `nix-store --dump TREE`, \
         both > file"
    );
    println!(
        "import-nar = `cairn import-nar --name TREE TREE.nar` into a fresh data dir vs \
         `nix-store --restore DEST < TREE.nar`"
    );
    println!(
        "sha256 floor = the NAR's sha256 alone (`openssl dgst -sha256`) in the cairn column vs \
         `nix-store --restore`: the highest ratio any import-nar could reach, since sha256 is \
         one sequential pass that import and import-nar must make"
    );
    println!(
        "memory = import-nar and export of {}, held to cairn's highest peak RSS of any run",
        memory_tree.name
    );
    println!("baseline: {nix_version}");
    println!("ratio = baseline median / cairn median: >= 1.00 means Cairn is at least as fast");
    println!(
        "bytes = NAR size; MB/s = bytes / cairn median (1 MB = 10^6 B); RSS = median peak RSS"
    );
    println!();
    print!("{}", results_table(&jobs));
    trees.push(memory_tree.clone());
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
        Details {
            trees: &trees,
            memory_tree: &memory_tree.name,
            memory_runs: MEMORY_RUNS,
            nix_store_init: "nix-store --store DIR --init",
            cairn_data_dir_init: "cairn import --data-dir DIR SEED (a one-line file)",
        },
        &jobs,
    )?;
    Ok(jobs
        .iter()
        .map(|j| {
            let r = &j.result;
            let files = trees
                .iter()
                .find(|t| t.name == r.spec.subject)
                .map(|t| t.stats.files);
            let job = r.spec.job.trim_start_matches(MEMORY);
            let baseline = match job {
                "import" => "nix-store --add",
                "export" => "nix-store --dump",
                _ => "nix-store --restore",
            };
            let target = match j.target {
                Target::Ceiling => None,
                Target::Ratio { min } => Some(summary::Target::MinRatio { min }),
                Target::PeakRss { max_mib } => Some(summary::Target::MaxRssMib { max_mib }),
            };
            Row::timed(r, baseline, files, target)
        })
        .collect())
}

/// `cairn import` into a fresh data directory against `nix-store --add`
/// into a fresh chroot store; both must print `store_path`.
fn import_job(bench: &Bench, tree: &Tree, store_path: &str, runs: usize) -> Result<StoreJob> {
    let placeholder = bench.scratch.join("DIR");
    let spec = JobSpec {
        group: GROUP,
        job: "import".into(),
        subject: tree.name.clone(),
        bytes: tree.stats.nar_bytes,
        cairn_command: bench.import(&placeholder, &tree.root).timed().display(),
        baseline_command: bench.nix_add(&placeholder, &tree.root).timed().display(),
    };
    let result = harness::compare(
        spec,
        runs,
        || {
            let data = bench.fresh_data_dir(&format!("import-cairn-{}", tree.name))?;
            let inv = bench
                .import(&data, &tree.root)
                .timed()
                .stdout_file(&bench.out);
            bench.run_creating(&inv, &data, Some(store_path))
        },
        || {
            let store = bench.fresh_nix_store(&format!("import-nix-{}", tree.name))?;
            let inv = bench
                .nix_add(&store, &tree.root)
                .timed()
                .stdout_file(&bench.out);
            bench.run_creating(&inv, &store, Some(store_path))
        },
    )?;
    let target = Target::Ratio {
        min: IMPORT_MIN_RATIO,
    };
    Ok(job(result, store_path, target))
}

/// `cairn export` from the checked data directory against
/// `nix-store --dump` of the tree, both into a file.
fn export_job(
    bench: &Bench,
    tree: &Tree,
    checked: &Checked,
    job_name: &str,
    runs: usize,
    target: Target,
) -> Result<StoreJob> {
    let cairn_inv = bench
        .export(&checked.data, &checked.store_path)
        .timed()
        .stdout_file(&bench.out);
    let nix_inv = bench.nix_dump(&tree.root).timed().stdout_file(&bench.out);
    let spec = JobSpec {
        group: GROUP,
        job: job_name.into(),
        subject: tree.name.clone(),
        bytes: tree.stats.nar_bytes,
        cairn_command: cairn_inv.display(),
        baseline_command: nix_inv.display(),
    };
    let bytes = tree.stats.nar_bytes;
    let result = harness::compare(
        spec,
        runs,
        || bench.run_writing(&cairn_inv, bytes),
        || bench.run_writing(&nix_inv, bytes),
    )?;
    Ok(job(result, &checked.store_path, target))
}

/// `cairn import-nar` of the tree's NAR into a fresh data directory
/// (printing `store_path`) against `nix-store --restore` of it.
fn import_nar_job(
    bench: &Bench,
    tree: &Tree,
    store_path: &str,
    job_name: &str,
    runs: usize,
    target: Target,
) -> Result<StoreJob> {
    let cairn_line = |data: &Path| bench.import_nar(data, &tree.name, &tree.nar);
    let nix_inv = |dest: &Path| bench.nix_restore(dest).timed().stdin_file(&tree.nar);
    let placeholder = bench.scratch.join("DIR");
    let spec = JobSpec {
        group: GROUP,
        job: job_name.into(),
        subject: tree.name.clone(),
        bytes: tree.stats.nar_bytes,
        cairn_command: cairn_line(&placeholder).timed().display(),
        baseline_command: nix_inv(&placeholder).display(),
    };
    let tag = job_name.replace(' ', "-");
    let result = harness::compare(
        spec,
        runs,
        || {
            let data = bench.fresh_data_dir(&format!("{tag}-cairn-{}", tree.name))?;
            let inv = cairn_line(&data).timed().stdout_file(&bench.out);
            bench.run_creating(&inv, &data, Some(store_path))
        },
        || {
            let dest = bench.new_path(&format!("{tag}-nix-{}", tree.name))?;
            bench.run_creating(&nix_inv(&dest), &dest, None)
        },
    )?;
    Ok(job(result, store_path, target))
}

/// `sha256 floor`: the NAR's sha256 alone against `nix-store --restore`.
fn sha256_floor_job(bench: &Bench, tree: &Tree, runs: usize) -> Result<StoreJob> {
    let hasher = CommandLine::new(Path::new("openssl"))
        .arg("dgst")
        .arg("-sha256")
        .arg(&tree.nar);
    let nix_inv = |dest: &Path| bench.nix_restore(dest).timed().stdin_file(&tree.nar);
    let placeholder = bench.scratch.join("DIR");
    let spec = JobSpec {
        group: GROUP,
        job: "sha256 floor".into(),
        subject: tree.name.clone(),
        bytes: tree.stats.nar_bytes,
        cairn_command: hasher.timed().display(),
        baseline_command: nix_inv(&placeholder).display(),
    };
    let result = harness::compare(
        spec,
        runs,
        || harness::run_timed(&hasher.timed(), &bench.log),
        || {
            let dest = bench.new_path(&format!("floor-nix-{}", tree.name))?;
            bench.run_creating(&nix_inv(&dest), &dest, None)
        },
    )?;
    Ok(job(result, "", Target::Ceiling))
}

fn job(result: JobResult, store_path: &str, target: Target) -> StoreJob {
    StoreJob {
        target_met: target.met(&result),
        result,
        store_path: store_path.to_owned(),
        target,
    }
}

/// The pre-flight checks of one tree: `cairn import` prints the store path
/// `nix-store --add` does (with `with_import`; otherwise the path is taken
/// from `cairn store-path`, which adds nothing), `cairn import-nar` of the
/// tree's NAR prints it too, and `cairn export` of it from every data
/// directory so filled is byte-identical to the NAR (`nix-store --dump`'s).
fn verify(bench: &Bench, tree: &Tree, with_import: bool) -> Result<Checked> {
    let started = Instant::now();
    let (store_path, imported) = if with_import {
        let data = bench.new_path(&format!("check-import-{}", tree.name))?;
        let cairn_path = bench.import(&data, &tree.root).output()?;
        let nix = bench.fresh_nix_store(&format!("check-nix-{}", tree.name))?;
        let nix_path = bench.nix_add(&nix, &tree.root).output()?;
        if cairn_path != nix_path {
            bail!(
                "`cairn import {}` printed {cairn_path:?}, but `nix-store --add` {nix_path:?}; \
                 refusing to benchmark it",
                tree.root.display()
            );
        }
        bench.trash.discard(&nix)?;
        (cairn_path, Some(data))
    } else {
        let path = CommandLine::new(&bench.cairn)
            .arg("store-path")
            .arg(&tree.root)
            .output()?;
        (path, None)
    };
    if !store_path.ends_with(&format!("-{}", tree.name)) {
        bail!(
            "{store_path:?} is not a store path named {}; refusing to benchmark it",
            tree.name
        );
    }

    let from_nar = bench.new_path(&format!("check-import-nar-{}", tree.name))?;
    let nar_path = bench
        .import_nar(&from_nar, &tree.name, &tree.nar)
        .output()?;
    if nar_path != store_path {
        bail!(
            "`cairn import-nar --name {} {}` printed {nar_path:?}, not {store_path:?}; \
             refusing to benchmark it",
            tree.name,
            tree.nar.display()
        );
    }

    for data in imported.iter().chain([&from_nar]) {
        let export = bench.export(data, &store_path).untimed();
        stdout_matches_file(export, &tree.nar).with_context(|| {
            format!(
                "`cairn export {store_path}` from {} is not byte-identical to \
                 `nix-store --dump {}`; refusing to benchmark it",
                data.display(),
                tree.root.display()
            )
        })?;
    }
    let data = match imported {
        Some(data) => {
            bench.trash.discard(&from_nar)?;
            data
        }
        None => from_nar,
    };
    sync()?;
    eprintln!(
        "check: {} is {store_path}, imported and exported byte-identically ({:.1} s)",
        tree.name,
        started.elapsed().as_secs_f64()
    );
    Ok(Checked { store_path, data })
}

/// The results table: one line per job and tree.
fn results_table(jobs: &[StoreJob]) -> String {
    let headers = [
        "job",
        "tree",
        "bytes",
        "cairn s",
        "baseline s",
        "ratio",
        "target",
        "met",
        "cairn MB/s",
        "cairn RSS MiB",
        "baseline RSS MiB",
    ];
    let mut align = vec![Align::Left, Align::Left];
    align.extend([Align::Right; 4]);
    align.extend([Align::Left; 2]);
    align.extend([Align::Right; 3]);
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
                j.target.describe(),
                match (j.target, j.target_met) {
                    (Target::Ceiling, _) => "-",
                    (_, true) => "met",
                    (_, false) => "MISSED",
                }
                .into(),
                format!("{:.1}", r.cairn.mb_per_s),
                format!("{:.1}", r.cairn.median_max_rss_mib),
                format!("{:.1}", r.baseline.median_max_rss_mib),
            ]
        })
        .collect();
    report::format_table(&headers, &align, &rows)
}

/// The highest peak RSS of every tool in every job, next to each tree's
/// largest file and NAR size: flat means memory does not grow with size.
fn memory_table(trees: &[Tree], jobs: &[StoreJob]) -> String {
    let rss = |operation: &str, tree: &Tree, cairn: bool| {
        jobs.iter()
            .map(|j| &j.result)
            .find(|r| {
                r.spec.subject == tree.name
                    && r.spec.job.strip_prefix(MEMORY).unwrap_or(&r.spec.job) == operation
            })
            .map_or_else(String::new, |r| {
                let tool = if cairn { &r.cairn } else { &r.baseline };
                format!("{:.1}", tool.max_max_rss_mib)
            })
    };
    let mib = |bytes: u64| format!("{:.1}", bytes as f64 / (1u64 << 20) as f64);
    let rows: Vec<Vec<String>> = trees
        .iter()
        .map(|t| {
            let mut row = vec![
                t.name.clone(),
                mib(t.stats.largest_file),
                mib(t.stats.nar_bytes),
            ];
            for cairn in [true, false] {
                for operation in ["import", "export", "import-nar"] {
                    row.push(rss(operation, t, cairn));
                }
            }
            row
        })
        .collect();
    let mut align = vec![Align::Left];
    align.extend([Align::Right; 8]);
    let mut out = String::from(
        "highest peak RSS of any run (MiB) against each tree's largest file and NAR: \
         flat means memory does not grow with size\n",
    );
    out.push_str(&report::format_table(
        &[
            "tree",
            "largest file MiB",
            "NAR MiB",
            "cairn import",
            "cairn export",
            "cairn import-nar",
            "nix --add",
            "nix --dump",
            "nix --restore",
        ],
        &align,
        &rows,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_run_as_shown() {
        let line = CommandLine::new(Path::new("/bin/echo")).arg("a b").arg("c");
        assert_eq!(line.timed().display(), "/bin/echo a b c");
        assert_eq!(line.output().unwrap(), "a b c");
        assert!(CommandLine::new(Path::new("/bin/false")).output().is_err());
    }

    #[test]
    fn targets_describe_themselves() {
        assert_eq!(Target::Ratio { min: 2.0 }.describe(), "ratio >= 2.00");
        assert_eq!(
            Target::PeakRss { max_mib: 100.0 }.describe(),
            "RSS <= 100 MiB"
        );
    }
}
