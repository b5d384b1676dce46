//! The harness every job group shares.
//!
//! - [`process`]: spawn one child and measure it (wall time, peak RSS).
//! - here: the options every group takes, finding the binaries under test,
//!   alternating Cairn with its baselines, and summarising the samples.
//! - [`files`]: untimed chores around runs (removing outputs, `sync`,
//!   disk usage, comparing output with a file).
//! - [`report`]: the table on stdout, machine information, the JSON file.
//!
//! A job group (such as `nar`) builds its inputs, then for each job hands
//! [`compare`] two closures, one per tool, that each perform one measured
//! run (with any untimed setup or cleanup around it); a job with more than
//! one baseline (such as `import`'s) hands [`alternate`] one closure per
//! tool instead.

pub mod files;
pub mod process;
pub mod report;
pub mod summary;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

pub use process::{run_timed, Invocation, Sample};

/// Warm-up pairs run (and discarded) before the counted ones.
pub const WARMUP_PAIRS: usize = 1;

/// Options every job group takes.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Smaller inputs and fewer runs: a check that finishes in a few minutes,
    /// not a measurement to quote.
    #[arg(long)]
    pub quick: bool,

    /// Counted runs per tool and job, after one warm-up pair [default: 5, or 2 with --quick].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: Option<u32>,

    /// Where inputs, scratch space and the JSON report go; inputs are reused
    /// by later runs.
    #[arg(long, value_name = "DIR", default_value = "bench-out")]
    pub work_dir: PathBuf,

    /// Where to write the JSON report [default: <work-dir>/<group>-bench.json].
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

impl CommonArgs {
    /// Counted runs per tool and job.
    pub fn runs(&self) -> usize {
        match self.runs {
            Some(n) => n as usize,
            None if self.quick => 2,
            None => 5,
        }
    }

    /// The work directory as an absolute path, created if missing.
    pub fn prepare_work_dir(&self) -> Result<PathBuf> {
        std::fs::create_dir_all(&self.work_dir)
            .with_context(|| format!("cannot create {}", self.work_dir.display()))?;
        std::path::absolute(&self.work_dir)
            .with_context(|| format!("cannot resolve {}", self.work_dir.display()))
    }

    /// Where group `group`'s JSON report goes.
    pub fn json_path(&self, work_dir: &Path, group: &str) -> PathBuf {
        self.json
            .clone()
            .unwrap_or_else(|| work_dir.join(format!("{group}-bench.json")))
    }
}

/// The `cairn` binary next to this executable: the build under test.
pub fn cairn_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the path of cairn-bench itself")?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let cairn = dir.join("cairn");
    if !cairn.is_file() {
        bail!(
            "{} not found (it is looked for next to cairn-bench); \
             run `cargo build --release -p cairn` first",
            cairn.display()
        );
    }
    if dir.file_name().is_some_and(|n| n == "debug") {
        eprintln!(
            "warning: benchmarking a debug build ({}); \
             build with `cargo build --release -p cairn -p cairn-bench`",
            cairn.display()
        );
    }
    Ok(cairn)
}

/// `tool` on `PATH`, if it is there.
pub fn find_on_path(tool: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// First line of `program --version`, or `"unknown"`.
pub fn tool_version(program: &Path) -> String {
    std::process::Command::new(program)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// What one job measures, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct JobSpec {
    /// The job group (`nar`, …).
    pub group: &'static str,
    /// The job within the group (`dump`, `restore`, …).
    pub job: String,
    /// The input it ran on (a corpus tree's name, …).
    pub subject: String,
    /// Bytes each run processes (for MB/s).
    pub bytes: u64,
    /// Cairn's command, for the report.
    pub cairn_command: String,
    /// The baseline's command, for the report.
    pub baseline_command: String,
}

/// One tool's samples in one job, and their summary.
#[derive(Clone, Debug, Serialize)]
pub struct ToolResult {
    /// The warm-up run (not counted).
    pub warmup: Vec<Sample>,
    /// The counted runs, in the order they ran.
    pub samples: Vec<Sample>,
    /// Median wall time of the counted runs, seconds.
    pub median_wall_s: f64,
    /// Fastest counted run, seconds.
    pub min_wall_s: f64,
    /// Slowest counted run, seconds.
    pub max_wall_s: f64,
    /// Median peak RSS of the counted runs, MiB.
    pub median_max_rss_mib: f64,
    /// Highest peak RSS of any run (warm-up included), MiB.
    pub max_max_rss_mib: f64,
    /// Median user CPU time, seconds.
    pub median_user_s: f64,
    /// Median kernel CPU time, seconds.
    pub median_sys_s: f64,
    /// Bytes per second at the median, in MB/s (10^6 bytes).
    pub mb_per_s: f64,
}

impl ToolResult {
    fn new(warmup: Vec<Sample>, samples: Vec<Sample>, bytes: u64) -> Self {
        let wall: Vec<f64> = samples.iter().map(|s| s.wall_s).collect();
        let rss = |s: &Sample| s.max_rss_kib as f64 / 1024.0;
        let median_wall_s = median(&wall);
        Self {
            median_wall_s,
            min_wall_s: wall.iter().copied().fold(f64::INFINITY, f64::min),
            max_wall_s: wall.iter().copied().fold(0.0, f64::max),
            median_max_rss_mib: median(&samples.iter().map(rss).collect::<Vec<_>>()),
            max_max_rss_mib: warmup.iter().chain(&samples).map(rss).fold(0.0, f64::max),
            median_user_s: median(&samples.iter().map(|s| s.user_s).collect::<Vec<_>>()),
            median_sys_s: median(&samples.iter().map(|s| s.sys_s).collect::<Vec<_>>()),
            mb_per_s: bytes as f64 / median_wall_s / 1e6,
            warmup,
            samples,
        }
    }
}

/// One job's outcome: both tools' results and how they compare.
#[derive(Clone, Debug, Serialize)]
pub struct JobResult {
    /// What was measured.
    #[serde(flatten)]
    pub spec: JobSpec,
    /// Cairn's samples and summary.
    pub cairn: ToolResult,
    /// The baseline's samples and summary.
    pub baseline: ToolResult,
    /// Baseline median wall time / Cairn median wall time: ≥ 1 means Cairn
    /// is at least as fast.
    pub ratio: f64,
}

/// Runs one job: a warm-up pair, then `runs` counted pairs, alternating
/// Cairn and the baseline (A, B, A, B, …) so that drift in the machine's
/// state hits both alike. Each closure performs one measured run.
pub fn compare(
    spec: JobSpec,
    runs: usize,
    mut cairn: impl FnMut() -> Result<Sample>,
    mut baseline: impl FnMut() -> Result<Sample>,
) -> Result<JobResult> {
    let label = format!("{} {} {}", spec.group, spec.job, spec.subject);
    let started = Instant::now();
    let mut results = alternate(
        &label,
        runs,
        spec.bytes,
        &mut [("cairn", &mut cairn), ("baseline", &mut baseline)],
    )?
    .into_iter();
    let (Some(cairn), Some(baseline)) = (results.next(), results.next()) else {
        bail!("{label}: missing results");
    };
    let ratio = baseline.median_wall_s / cairn.median_wall_s;
    eprintln!(
        " — cairn {}, baseline {}, ratio {ratio:.2} ({:.1} s)",
        report::secs(cairn.median_wall_s),
        report::secs(baseline.median_wall_s),
        started.elapsed().as_secs_f64()
    );
    Ok(JobResult {
        spec,
        cairn,
        baseline,
        ratio,
    })
}

/// One tool of a job for [`alternate`]: its name (for messages) and a
/// closure performing one measured run.
pub type Contender<'a> = (&'a str, &'a mut dyn FnMut() -> Result<Sample>);

/// Runs the tools of one job in turn: [`WARMUP_PAIRS`] warm-up rounds, then
/// `runs` counted rounds, each round running every tool once in the order
/// given (A, B, C, A, B, C, …), so that drift in the machine's state hits all
/// alike and a tool may rely on the one before it in the round (`import`'s
/// warm import runs in the data directory its cold import just filled).
/// Returns one result per tool, in the same order; progress goes to stderr
/// on the line `label` starts (the caller ends it).
pub fn alternate(
    label: &str,
    runs: usize,
    bytes: u64,
    tools: &mut [Contender<'_>],
) -> Result<Vec<ToolResult>> {
    eprint!("[{label}] warm-up");
    let mut warm: Vec<Vec<Sample>> = tools.iter().map(|_| Vec::new()).collect();
    for _ in 0..WARMUP_PAIRS {
        for ((name, run), out) in tools.iter_mut().zip(&mut warm) {
            out.push(run().with_context(|| format!("{label}: {name} warm-up"))?);
        }
    }
    let mut counted: Vec<Vec<Sample>> = tools.iter().map(|_| Vec::with_capacity(runs)).collect();
    for i in 0..runs {
        eprint!(" {}", i + 1);
        for ((name, run), out) in tools.iter_mut().zip(&mut counted) {
            out.push(run().with_context(|| format!("{label}: {name} run {}", i + 1))?);
        }
    }
    Ok(warm
        .into_iter()
        .zip(counted)
        .map(|(w, c)| ToolResult::new(w, c, bytes))
        .collect())
}

/// The median; the mean of the two middle values for an even count.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Scratch directories for unit tests.
#[cfg(test)]
pub(crate) mod test_dir {
    use std::path::PathBuf;

    /// A fresh, empty directory under the system's temp dir, unique to this
    /// process and `name`.
    pub fn fresh(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("cairn-bench-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn compare_alternates_and_summarises() {
        let order = std::cell::RefCell::new(String::new());
        let sample = |wall_s| Sample {
            wall_s,
            max_rss_kib: 2048,
            user_s: 0.0,
            sys_s: 0.0,
            stdout_bytes: None,
        };
        let spec = JobSpec {
            group: "test",
            job: "job".into(),
            subject: "input".into(),
            bytes: 1_000_000,
            cairn_command: "a".into(),
            baseline_command: "b".into(),
        };
        let r = compare(
            spec,
            3,
            || {
                order.borrow_mut().push('A');
                Ok(sample(0.5))
            },
            || {
                order.borrow_mut().push('B');
                Ok(sample(1.0))
            },
        )
        .unwrap();
        assert_eq!(*order.borrow(), "ABABABAB");
        assert_eq!(r.cairn.samples.len(), 3);
        assert_eq!(r.cairn.warmup.len(), 1);
        assert_eq!(r.ratio, 2.0);
        assert_eq!(r.cairn.mb_per_s, 2.0);
        assert_eq!(r.baseline.median_max_rss_mib, 2.0);
    }

    #[test]
    fn alternate_runs_rounds_in_order() {
        let order = std::cell::RefCell::new(String::new());
        let sample = |wall_s| Sample {
            wall_s,
            max_rss_kib: 1024,
            user_s: 0.0,
            sys_s: 0.0,
            stdout_bytes: None,
        };
        let tool = |c: char, wall_s: f64| {
            let order = &order;
            move || {
                order.borrow_mut().push(c);
                Ok(sample(wall_s))
            }
        };
        let (mut a, mut b, mut c) = (tool('A', 1.0), tool('B', 2.0), tool('C', 4.0));
        let results = alternate(
            "test",
            2,
            4_000_000,
            &mut [("a", &mut a), ("b", &mut b), ("c", &mut c)],
        )
        .unwrap();
        assert_eq!(*order.borrow(), "ABCABCABC");
        let medians: Vec<f64> = results.iter().map(|r| r.median_wall_s).collect();
        assert_eq!(medians, [1.0, 2.0, 4.0]);
        assert_eq!(results[2].mb_per_s, 1.0);
        assert_eq!(results[0].warmup.len(), 1);
        assert_eq!(results[0].samples.len(), 2);
    }
}
