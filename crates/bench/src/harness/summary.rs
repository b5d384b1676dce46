//! The one-line-per-job summary every group hands back, so `cairn-bench
//! all` can print every job of every group in one table (and one JSON
//! file) with the same columns: what was compared, the medians, the ratio,
//! throughput, peak memory and the target.
//!
//! A group still prints its own, more detailed table and writes its own
//! JSON with every raw sample; a summary row only condenses what is there.

use serde::Serialize;

use super::report::{self, Align};
use super::JobResult;

/// What a row's two values measure.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Median wall time, seconds: lower is better.
    Seconds,
    /// Requests per second: higher is better.
    RequestsPerSecond,
    /// Bytes on disk: lower is better.
    Bytes,
}

impl Unit {
    fn show(self, v: f64) -> String {
        match self {
            Unit::Seconds => format!("{} s", report::secs(v)),
            Unit::RequestsPerSecond => format!("{v:.0} req/s"),
            Unit::Bytes => format!("{:.1} MiB", v / (1024.0 * 1024.0)),
        }
    }
}

/// What a job must reach.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Target {
    /// `ratio >= min`.
    MinRatio {
        /// The lowest acceptable ratio.
        min: f64,
    },
    /// Cairn's peak RSS at most `max_mib`.
    MaxRssMib {
        /// The highest acceptable peak, MiB.
        max_mib: f64,
    },
}

impl Target {
    fn show(self) -> String {
        match self {
            Target::MinRatio { min } => format!(">= {min:.2}"),
            Target::MaxRssMib { max_mib } => format!("RSS <= {max_mib:.0} MiB"),
        }
    }
}

/// One job, condensed.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// The job group.
    pub group: &'static str,
    /// The job within it.
    pub job: String,
    /// Its input.
    pub subject: String,
    /// What Cairn was compared with (`nix-store --add`, `nginx`, …).
    pub baseline: String,
    /// What the two values measure.
    pub unit: Unit,
    /// Cairn's value (median).
    pub cairn: f64,
    /// The baseline's value (median).
    pub baseline_value: f64,
    /// How Cairn compares, always so that higher is better for Cairn and
    /// 1.00 is a tie: baseline time / Cairn time, Cairn rate / baseline
    /// rate, baseline bytes / Cairn bytes.
    pub ratio: f64,
    /// Cairn's throughput in MB/s (10^6 bytes), where it means something.
    pub mb_per_s: Option<f64>,
    /// Cairn's files per second, where the input is a tree.
    pub files_per_s: Option<f64>,
    /// Cairn's peak RSS in MiB (the highest of any run), where measured.
    pub cairn_peak_rss_mib: Option<f64>,
    /// The baseline's peak RSS in MiB, where measured.
    pub baseline_peak_rss_mib: Option<f64>,
    /// What the job must reach, if it has a target.
    pub target: Option<Target>,
    /// Whether it did.
    pub met: Option<bool>,
}

impl Row {
    /// A timed job from its [`JobResult`]; `files` is the input's file
    /// count where it is a tree.
    pub fn timed(
        result: &JobResult,
        baseline: impl Into<String>,
        files: Option<u64>,
        target: Option<Target>,
    ) -> Row {
        let mut row = Row {
            group: result.spec.group,
            job: result.spec.job.clone(),
            subject: result.spec.subject.clone(),
            baseline: baseline.into(),
            unit: Unit::Seconds,
            cairn: result.cairn.median_wall_s,
            baseline_value: result.baseline.median_wall_s,
            ratio: result.ratio,
            mb_per_s: Some(result.cairn.mb_per_s),
            files_per_s: files.map(|n| n as f64 / result.cairn.median_wall_s),
            cairn_peak_rss_mib: Some(result.cairn.max_max_rss_mib),
            baseline_peak_rss_mib: Some(result.baseline.max_max_rss_mib),
            target: None,
            met: None,
        };
        row.set_target(target);
        row
    }

    /// Sets the target and judges the row against it.
    pub fn set_target(&mut self, target: Option<Target>) {
        self.target = target;
        self.met = target.map(|t| match t {
            Target::MinRatio { min } => self.ratio >= min,
            Target::MaxRssMib { max_mib } => {
                self.cairn_peak_rss_mib.is_some_and(|rss| rss <= max_mib)
            }
        });
    }
}

/// The summary table of `rows`.
pub fn table(rows: &[Row]) -> String {
    let headers = [
        "group", "job", "input", "baseline", "cairn", "baseline", "ratio", "MB/s", "files/s",
        "RSS MiB", "target",
    ];
    let mut align = vec![Align::Left; 4];
    align.extend([Align::Right; 6]);
    align.push(Align::Left);
    let opt = |v: Option<f64>, digits: usize| match v {
        Some(v) if v.is_finite() => format!("{v:.digits$}"),
        _ => "-".into(),
    };
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.group.to_owned(),
                r.job.clone(),
                r.subject.clone(),
                r.baseline.clone(),
                r.unit.show(r.cairn),
                r.unit.show(r.baseline_value),
                format!("{:.2}", r.ratio),
                opt(r.mb_per_s, 1),
                opt(r.files_per_s, 0),
                opt(r.cairn_peak_rss_mib, 1),
                match (r.target, r.met) {
                    (Some(t), Some(true)) => format!("{} met", t.show()),
                    (Some(t), _) => format!("{} MISSED", t.show()),
                    (None, _) => "-".into(),
                },
            ]
        })
        .collect();
    report::format_table(&headers, &align, &cells)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ratio: f64, rss: Option<f64>) -> Row {
        Row {
            group: "g",
            job: "j".into(),
            subject: "s".into(),
            baseline: "b".into(),
            unit: Unit::Seconds,
            cairn: 1.0,
            baseline_value: ratio,
            ratio,
            mb_per_s: None,
            files_per_s: None,
            cairn_peak_rss_mib: rss,
            baseline_peak_rss_mib: None,
            target: None,
            met: None,
        }
    }

    #[test]
    fn targets_are_judged() {
        let mut r = row(1.5, Some(40.0));
        r.set_target(Some(Target::MinRatio { min: 2.0 }));
        assert_eq!(r.met, Some(false));
        r.set_target(Some(Target::MinRatio { min: 1.5 }));
        assert_eq!(r.met, Some(true));
        r.set_target(Some(Target::MaxRssMib { max_mib: 100.0 }));
        assert_eq!(r.met, Some(true));
        let mut unmeasured = row(1.0, None);
        unmeasured.set_target(Some(Target::MaxRssMib { max_mib: 100.0 }));
        assert_eq!(unmeasured.met, Some(false));
        r.set_target(None);
        assert_eq!(r.met, None);
    }

    #[test]
    fn the_table_says_missed() {
        let mut r = row(0.5, Some(10.0));
        r.set_target(Some(Target::MinRatio { min: 0.9 }));
        let t = table(&[r]);
        assert!(t.contains(">= 0.90 MISSED"), "{t}");
        assert!(t.contains("1.000 s"), "{t}");
    }
}
