//! `cairn-bench all`: every job group in turn, on one corpus, then one
//! table with a line per job and one JSON file with those lines.
//!
//! Each group still prints its own table and writes its own JSON report
//! with every raw sample (`<work-dir>/<group>-bench.json`); this adds the
//! overview and must not measure anything itself. A group that fails is
//! reported and the others still run; the exit status then says so.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;

use crate::harness::report::{self, Machine};
use crate::harness::summary::{self, Row};
use crate::harness::CommonArgs;
use crate::{fs, grpc, http, import, nar, s3, storage, store};

/// Options of `cairn-bench all`.
#[derive(Args, Debug)]
pub struct AllArgs {
    #[command(flatten)]
    common: CommonArgs,
}

/// A group that did not finish.
#[derive(Serialize)]
struct Failure {
    group: &'static str,
    error: String,
}

/// How long a group took.
#[derive(Serialize)]
struct GroupTime {
    group: &'static str,
    elapsed_s: f64,
    /// Its own report, with every sample.
    json: PathBuf,
}

#[derive(Serialize)]
struct Overview<'a> {
    suite: &'static str,
    schema_version: u32,
    group: &'static str,
    date: String,
    unix_time: u64,
    elapsed_s: f64,
    quick: bool,
    runs: usize,
    machine: Machine,
    groups: Vec<GroupTime>,
    failures: Vec<Failure>,
    targets_met: usize,
    targets_missed: usize,
    jobs: &'a [Row],
}

type GroupRun = fn(CommonArgs) -> Result<Vec<Row>>;

/// The groups, in the order they run: cheapest inputs first, so a broken
/// tool shows up early.
const GROUPS: [(&str, GroupRun); 8] = [
    ("nar", |common| nar::run(nar::NarArgs { common })),
    ("import", |common| {
        import::run(import::ImportArgs { common })
    }),
    ("store", |common| store::run(store::StoreArgs { common })),
    ("grpc", |common| grpc::run(grpc::GrpcArgs { common })),
    ("http", |common| http::run_group(http::HttpArgs { common })),
    ("fs", |common| fs::run(fs::FsArgs { common })),
    ("storage", |common| {
        storage::run(storage::StorageArgs { common })
    }),
    ("s3", |common| s3::run(s3::S3Args { common })),
];

/// Runs every group, then prints and writes the overview.
pub fn run(args: AllArgs) -> Result<()> {
    let started = Instant::now();
    let (unix_time, date) = report::now_utc();
    let mut machine = Machine::probe();
    let common = args.common;
    let work_dir = common.prepare_work_dir()?;
    let json = common
        .json
        .clone()
        .unwrap_or_else(|| work_dir.join("all-bench.json"));
    // Each group writes its own report to its default place.
    let per_group = CommonArgs {
        json: None,
        ..common.clone()
    };

    let mut rows = Vec::new();
    let mut failures = Vec::new();
    let mut groups = Vec::new();
    for (group, run) in GROUPS {
        eprintln!("\n===== cairn-bench {group} =====");
        let group_started = Instant::now();
        match run(per_group.clone()) {
            Ok(r) => rows.extend(r),
            Err(e) => {
                eprintln!("cairn-bench {group} failed: {e:#}");
                failures.push(Failure {
                    group,
                    error: format!("{e:#}"),
                });
            }
        }
        groups.push(GroupTime {
            group,
            elapsed_s: group_started.elapsed().as_secs_f64(),
            json: per_group.json_path(&work_dir, group),
        });
    }

    let met = rows.iter().filter(|r| r.met == Some(true)).count();
    let missed = rows.iter().filter(|r| r.met == Some(false)).count();
    println!();
    println!(
        "cairn-bench all: every job of every group{}; medians of {} counted runs",
        if common.quick {
            " (--quick: a check, not figures to quote)"
        } else {
            ""
        },
        common.runs()
    );
    println!(
        "ratio: higher is better for Cairn, 1.00 a tie (baseline time / cairn time, \
         cairn req/s / baseline req/s, baseline bytes / cairn bytes)"
    );
    println!("MB/s and files/s: Cairn's; RSS: Cairn's highest peak (the server's for http)");
    println!();
    print!("{}", summary::table(&rows));
    println!();
    println!("targets: {met} met, {missed} missed");
    for g in &groups {
        println!(
            "{:>8}: {:6.1} s, {}",
            g.group,
            g.elapsed_s,
            g.json.display()
        );
    }
    for f in &failures {
        println!("FAILED {}: {}", f.group, f.error);
    }

    machine.loadavg_end = report::loadavg();
    let elapsed_s = started.elapsed().as_secs_f64();
    let failed = failures.len();
    report::write_json(
        &json,
        &Overview {
            suite: "cairn-bench",
            schema_version: report::SCHEMA_VERSION,
            group: "all",
            date,
            unix_time,
            elapsed_s,
            quick: common.quick,
            runs: common.runs(),
            machine,
            groups,
            failures,
            targets_met: met,
            targets_missed: missed,
            jobs: &rows,
        },
    )?;
    println!();
    println!("overview: {}", json.display());
    println!("total time: {elapsed_s:.1} s");
    if failed > 0 {
        bail!("{failed} group(s) failed");
    }
    Ok(())
}
