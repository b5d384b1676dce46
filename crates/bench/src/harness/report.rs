//! Reporting: the results table on stdout, the machine description, and the
//! JSON file that keeps every raw sample for later comparison.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::Serialize;

use super::JobResult;

/// Bumped when the JSON layout changes incompatibly.
pub const SCHEMA_VERSION: u32 = 1;

/// Column alignment for [`format_table`].
#[derive(Clone, Copy, Debug)]
pub enum Align {
    /// Text columns.
    Left,
    /// Number columns.
    Right,
}

/// Formats rows as a plain-text table with a header line and a rule.
pub fn format_table(headers: &[&str], align: &[Align], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, cell) in cells.enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            if i > 0 {
                s.push_str("  ");
            }
            let pad = " ".repeat(w.saturating_sub(cell.chars().count()));
            match align.get(i).copied().unwrap_or(Align::Left) {
                Align::Left => {
                    s.push_str(cell);
                    s.push_str(&pad);
                }
                Align::Right => {
                    s.push_str(&pad);
                    s.push_str(cell);
                }
            }
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(&mut headers.iter().copied());
    let total = widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1);
    out.push_str(&"-".repeat(total));
    out.push('\n');
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// Seconds with a precision that suits their size.
pub fn secs(s: f64) -> String {
    if s >= 10.0 {
        format!("{s:.2}")
    } else if s >= 0.1 {
        format!("{s:.3}")
    } else {
        format!("{s:.4}")
    }
}

/// The results table: one line per job, medians of the counted runs.
pub fn results_table(jobs: &[JobResult]) -> String {
    let headers = [
        "job",
        "tree",
        "bytes",
        "cairn s",
        "baseline s",
        "ratio",
        "cairn MB/s",
        "cairn RSS MiB",
        "baseline RSS MiB",
    ];
    let mut align = vec![Align::Left, Align::Left];
    align.extend([Align::Right; 7]);
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.spec.job.clone(),
                j.spec.subject.clone(),
                j.spec.bytes.to_string(),
                secs(j.cairn.median_wall_s),
                secs(j.baseline.median_wall_s),
                format!("{:.2}", j.ratio),
                format!("{:.1}", j.cairn.mb_per_s),
                format!("{:.1}", j.cairn.median_max_rss_mib),
                format!("{:.1}", j.baseline.median_max_rss_mib),
            ]
        })
        .collect();
    format_table(&headers, &align, &rows)
}

/// The machine the numbers came from.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// CPUs this process may run on.
    pub nproc: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// Total RAM from /proc/meminfo, MiB.
    pub mem_total_mib: u64,
    /// /proc/loadavg when the run started: other load skews results.
    pub loadavg_start: String,
    /// /proc/loadavg when the run ended.
    pub loadavg_end: String,
}

impl Machine {
    /// Reads what Linux says about this machine; unknown fields stay empty.
    pub fn probe() -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                let (key, value) = l.split_once(':')?;
                (key.trim() == "model name").then(|| value.trim().to_owned())
            })
            .unwrap_or_default();
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_total_mib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024);
        Self {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            mem_total_mib,
            loadavg_start: loadavg(),
            loadavg_end: String::new(),
        }
    }
}

fn read_trimmed(path: &str) -> String {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The current /proc/loadavg line.
pub fn loadavg() -> String {
    read_trimmed("/proc/loadavg")
}

/// A tool a run used, for the record.
#[derive(Clone, Debug, Serialize)]
pub struct ToolInfo {
    /// Short name (`cairn`, `nix-store`).
    pub name: String,
    /// The executable that ran.
    pub path: PathBuf,
    /// First line of its `--version`.
    pub version: String,
}

impl ToolInfo {
    /// `path`, named `name`, with the version it reports.
    pub fn of(name: &str, path: &Path) -> Self {
        ToolInfo {
            name: name.into(),
            version: super::tool_version(path),
            path: path.to_owned(),
        }
    }
}

/// How the run was configured.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    /// `--quick` was given.
    pub quick: bool,
    /// Counted runs per tool and job.
    pub runs: usize,
    /// Warm-up pairs per job.
    pub warmup_pairs: usize,
    /// The work directory.
    pub work_dir: PathBuf,
}

/// The whole JSON report of one group's run; `D` is group-specific detail
/// (for `nar`, the corpus trees), `J` one job's result ([`JobResult`] for a
/// job of Cairn against one baseline).
#[derive(Debug, Serialize)]
pub struct Report<'a, D: Serialize, J: Serialize = JobResult> {
    /// Always `cairn-bench`.
    pub suite: &'static str,
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The job group.
    pub group: &'static str,
    /// When the run started, UTC, RFC 3339.
    pub date: String,
    /// When the run started, seconds since the Unix epoch.
    pub unix_time: u64,
    /// How long the whole run took, corpus preparation included, seconds.
    pub elapsed_s: f64,
    /// Where it ran.
    pub machine: Machine,
    /// The tools compared.
    pub tools: Vec<ToolInfo>,
    /// Options.
    pub settings: Settings,
    /// Group-specific details.
    pub details: D,
    /// Every job, with raw samples and summaries.
    pub jobs: &'a [J],
}

/// Writes `value` as pretty JSON to `path` (via a temporary sibling, so a
/// reader never sees half a report).
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut temp = path.as_os_str().to_owned();
    temp.push(".tmp");
    let temp = PathBuf::from(temp);
    let mut bytes = serde_json::to_vec_pretty(value).context("cannot serialise the report")?;
    bytes.push(b'\n');
    let mut file =
        fs::File::create(&temp).with_context(|| format!("cannot create {}", temp.display()))?;
    file.write_all(&bytes)
        .with_context(|| format!("cannot write {}", temp.display()))?;
    fs::rename(&temp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Now, as seconds since the epoch and as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn now_utc() -> (u64, String) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (secs, rfc3339_utc(secs))
}

fn rfc3339_utc(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let rem = unix % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// What every group records about its run, taken as it starts; the
/// report is written (and where it went printed) by [`Run::finish`].
pub struct Run {
    started: std::time::Instant,
    unix_time: u64,
    date: String,
    machine: Machine,
}

impl Run {
    /// Now, and this machine as it is now.
    pub fn start() -> Run {
        let (unix_time, date) = now_utc();
        Run {
            started: std::time::Instant::now(),
            unix_time,
            date,
            machine: Machine::probe(),
        }
    }

    /// Writes group `group`'s JSON report and prints its path and the
    /// total time.
    #[allow(clippy::too_many_arguments)] // one call per group, all fields of the report
    pub fn finish<D: Serialize, J: Serialize>(
        mut self,
        group: &'static str,
        common: &super::CommonArgs,
        runs: usize,
        work_dir: PathBuf,
        tools: Vec<ToolInfo>,
        details: D,
        jobs: &[J],
    ) -> Result<()> {
        self.machine.loadavg_end = loadavg();
        let elapsed_s = self.started.elapsed().as_secs_f64();
        let json_path = common.json_path(&work_dir, group);
        let full = Report {
            suite: "cairn-bench",
            schema_version: SCHEMA_VERSION,
            group,
            date: self.date,
            unix_time: self.unix_time,
            elapsed_s,
            machine: self.machine,
            tools,
            settings: Settings {
                quick: common.quick,
                runs,
                warmup_pairs: super::WARMUP_PAIRS,
                work_dir,
            },
            details,
            jobs,
        };
        write_json(&json_path, &full)?;
        println!();
        println!("raw samples: {}", json_path.display());
        println!("total time: {elapsed_s:.1} s");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(rfc3339_utc(4_102_444_800), "2100-01-01T00:00:00Z");
    }

    #[test]
    fn table_aligns_columns() {
        let t = format_table(
            &["name", "n"],
            &[Align::Left, Align::Right],
            &[
                vec!["a".into(), "100".into()],
                vec!["long".into(), "2".into()],
            ],
        );
        assert_eq!(t, "name    n\n---------\na     100\nlong    2\n");
    }
}
