//! The `s3` job group: Cairn on a real three-node Garage cluster
//! (`scripts/garage-cluster`, started for the run on ports 4900–4923 and
//! stopped after), against a generic S3 client and against the embedded
//! store.
//!
//! Jobs, per tree (`python3.X` and `rust-lib`; the small generated
//! `kitchen-sink` with `--quick`):
//!
//! 1. **import**: `cairn import --store-addr objectstore+s3://…` into a
//!    fresh prefix of the bucket, against `rclone copy TREE` into a fresh
//!    prefix of the same bucket (rclone's defaults), and against `cairn
//!    import` into a fresh embedded data directory. **Target: at least as
//!    fast as rclone** (ratio = rclone time / Cairn time ≥ 1).
//! 2. **render**: `cairn export --store-addr … --cache-dir CACHE PATH`
//!    with an empty cache each run (cold: everything from the bucket)
//!    against the same with the cache already filled (warm). **Target:
//!    cold ≥ 0.5× warm** (ratio = warm time / cold time). For reference,
//!    the same cold render against rclone downloading the same files from
//!    the same cluster into an empty directory, tuned to its best here
//!    (`--transfers 32 --checkers 32`): how fast the cluster can hand the
//!    bytes to any client.
//! 3. **requests per imported MiB**: the S3 requests the cluster counted
//!    (Garage's `api_s3_request_counter`, summed over the nodes) during
//!    one more import into a fresh prefix, per MiB of the tree's files;
//!    and the same for rclone.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use crate::corpus::{self, Spec, Tree};
use crate::harness::files::{fresh_dir, remove_path};
use crate::harness::report::{self, Align, ToolInfo};
use crate::harness::summary::{Row, Target};
use crate::harness::{self, CommonArgs, Invocation, JobResult, JobSpec, Sample};

const GROUP: &str = "s3";
const IMPORT_MIN_RATIO: f64 = 1.0;
const RENDER_MIN_RATIO: f64 = 0.5;
/// Ports of the benchmark's own cluster (the tests' uses 3900).
const PORT_BASE: u16 = 4900;

/// Options of `cairn-bench s3`.
#[derive(Args, Debug)]
pub struct S3Args {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

/// The cluster, stopped when dropped.
struct Cluster {
    script: PathBuf,
    dir: PathBuf,
    /// `objectstore+s3://cairn?endpoint=…&region=garage`.
    addr: String,
}

impl Cluster {
    fn start(dir: &Path) -> Result<Cluster> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/garage-cluster");
        let out = Command::new(&script)
            .args(["start"])
            .arg(dir)
            .env("GARAGE_PORT_BASE", PORT_BASE.to_string())
            .output()
            .with_context(|| format!("cannot run {}", script.display()))?;
        if !out.status.success() {
            bail!(
                "cannot start the Garage cluster (needs `garage`: cargo install --locked \
                 garage@2.5.0): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut addr = None;
        for line in String::from_utf8(out.stdout)?.lines() {
            let Some((key, value)) = line.strip_prefix("export ").and_then(|l| l.split_once('='))
            else {
                continue;
            };
            let value = value.trim_matches('\'');
            if key == "CAIRN_S3_ADDR" {
                addr = Some(value.to_owned());
            }
            // The children (cairn, rclone) take their credentials from here.
            std::env::set_var(key, value);
        }
        let addr = addr.context("the cluster script printed no CAIRN_S3_ADDR")?;
        // rclone's AWS SDK refuses to start with a CA bundle set in the
        // environment (some machines set one); the cluster is plain HTTP.
        std::env::remove_var("AWS_CA_BUNDLE");
        let endpoint = format!("http://127.0.0.1:{PORT_BASE}");
        for (k, v) in [
            ("TYPE", "s3"),
            ("PROVIDER", "Other"),
            ("ENDPOINT", endpoint.as_str()),
            ("REGION", "garage"),
            ("FORCE_PATH_STYLE", "true"),
        ] {
            std::env::set_var(format!("RCLONE_CONFIG_GARAGE_{k}"), v);
        }
        for (rclone, aws) in [
            ("ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
            ("SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"),
        ] {
            let v = std::env::var(aws).with_context(|| format!("the cluster gave no {aws}"))?;
            std::env::set_var(format!("RCLONE_CONFIG_GARAGE_{rclone}"), v);
        }
        Ok(Cluster {
            script,
            dir: dir.to_owned(),
            addr,
        })
    }

    /// The S3 requests the three nodes have served so far.
    fn requests(&self) -> Result<u64> {
        let mut total = 0;
        for node in 0..3u16 {
            let url = format!("http://127.0.0.1:{}/metrics", PORT_BASE + 10 * node + 3);
            let out = Command::new("curl")
                .args(["-sS", "--fail", &url])
                .output()?;
            if !out.status.success() {
                bail!(
                    "cannot read {url}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if line.starts_with("api_s3_request_counter") {
                    if let Some(n) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
                        total += n as u64;
                    }
                }
            }
        }
        Ok(total)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

#[derive(Serialize)]
struct S3Job {
    #[serde(flatten)]
    result: JobResult,
    target_min_ratio: Option<f64>,
    target_met: Option<bool>,
}

#[derive(Serialize)]
struct Requests {
    tree: String,
    file_mib: f64,
    cairn_requests: u64,
    rclone_requests: u64,
    cairn_per_mib: f64,
    rclone_per_mib: f64,
}

#[derive(Serialize)]
struct Details<'a> {
    trees: &'a [Tree],
    requests: &'a [Requests],
    cluster: &'static str,
}

/// A job measured against two baselines in one alternating series.
struct Job<'a> {
    name: &'static str,
    subject: &'a str,
    bytes: u64,
    files: Option<u64>,
    cairn_command: &'static str,
}

/// One baseline of a [`Job`].
struct Baseline<'a> {
    /// Its name in the progress line.
    label: &'static str,
    /// Its name in the table.
    name: &'static str,
    command: &'static str,
    target: Option<f64>,
    run: &'a mut dyn FnMut() -> Result<Sample>,
}

/// Runs Cairn's side and two baselines alternately and records a row
/// for each baseline (ratio = baseline time / Cairn time).
fn compare_three(
    job: Job<'_>,
    runs: usize,
    cairn: (&'static str, &mut dyn FnMut() -> Result<Sample>),
    baselines: [Baseline<'_>; 2],
    rows: &mut Vec<Row>,
    jobs: &mut Vec<S3Job>,
) -> Result<()> {
    let label = format!("{GROUP} {} {}", job.name, job.subject);
    let [first, second] = baselines;
    let mut results = harness::alternate(
        &label,
        runs,
        job.bytes,
        &mut [
            (cairn.0, cairn.1),
            (first.label, &mut *first.run),
            (second.label, &mut *second.run),
        ],
    )?
    .into_iter();
    eprintln!();
    let (Some(ours), Some(a), Some(b)) = (results.next(), results.next(), results.next()) else {
        bail!("{label}: missing results");
    };
    for (measured, baseline) in [(a, &first), (b, &second)] {
        let ratio = measured.median_wall_s / ours.median_wall_s;
        let result = JobResult {
            spec: JobSpec {
                group: GROUP,
                job: job.name.into(),
                subject: job.subject.to_owned(),
                bytes: job.bytes,
                cairn_command: job.cairn_command.into(),
                baseline_command: baseline.command.into(),
            },
            cairn: ours.clone(),
            baseline: measured,
            ratio,
        };
        let target = baseline.target.map(|min| Target::MinRatio { min });
        rows.push(Row::timed(&result, baseline.name, job.files, target));
        jobs.push(S3Job {
            target_met: baseline.target.map(|min| ratio >= min),
            target_min_ratio: baseline.target,
            result,
        });
    }
    Ok(())
}

/// Runs the group.
pub fn run(args: S3Args) -> Result<Vec<Row>> {
    let this_run = report::Run::start();
    let common = args.common;
    let runs = common.runs();
    let cairn = harness::cairn_binary()?;
    let nix_store = harness::find_on_path("nix-store").context(
        "nix-store not found on PATH; the corpus is built with it (apt-get install nix-bin)",
    )?;
    let rclone = harness::find_on_path("rclone").context(
        "rclone not found on PATH; it is the s3 group's baseline (apt-get install rclone)",
    )?;
    let work_dir = common.prepare_work_dir()?;
    let scratch = work_dir.join("scratch-s3");
    fresh_dir(&scratch)?;
    let log = scratch.join("stderr.log");
    // A bucket costs a round trip per object: --quick uses the small
    // generated tree so the check stays short.
    let specs: Vec<Spec> = if common.quick {
        vec![Spec::kitchen_sink()]
    } else {
        Spec::python_stdlib()?
            .into_iter()
            .chain(Spec::rust_lib())
            .collect()
    };
    let trees = corpus::prepare(&work_dir, &specs, &nix_store)?;
    let cluster = Cluster::start(&scratch.join("garage"))?;

    let made = std::cell::Cell::new(0u64);
    let fresh = |what: &str| {
        made.set(made.get() + 1);
        format!("{what}-{}-{}", std::process::id(), made.get())
    };
    let mut jobs = Vec::new();
    let mut rows = Vec::new();
    let mut requests = Vec::new();
    for tree in &trees {
        let files = Some(tree.stats.files);
        // 1. import: bucket vs rclone vs embedded, alternating.
        let mut cairn_s3 = || -> Result<Sample> {
            let addr = format!("{}&prefix={}", cluster.addr, fresh("cairn"));
            let inv = Invocation::new(&cairn)
                .arg("import")
                .arg("--store-addr")
                .arg(&addr)
                .arg(&tree.root);
            harness::run_timed(&inv, &log)
        };
        let mut rclone_run = || -> Result<Sample> {
            let inv = Invocation::new(&rclone)
                .arg("copy")
                .arg(&tree.root)
                .arg(format!("garage:cairn/{}", fresh("rclone")));
            harness::run_timed(&inv, &log)
        };
        let mut embedded = || -> Result<Sample> {
            let data = scratch.join(fresh("embedded"));
            let inv = Invocation::new(&cairn)
                .arg("import")
                .arg("--data-dir")
                .arg(&data)
                .arg(&tree.root);
            let sample = harness::run_timed(&inv, &log)?;
            remove_path(&data)?;
            Ok(sample)
        };
        compare_three(
            Job {
                name: "import",
                subject: &tree.name,
                bytes: tree.stats.file_bytes,
                files,
                cairn_command:
                    "cairn import --store-addr objectstore+s3://cairn?…&prefix=FRESH TREE",
            },
            runs,
            ("cairn into the bucket", &mut cairn_s3),
            [
                Baseline {
                    label: "rclone copy",
                    name: "rclone copy (same bucket)",
                    command: "rclone copy TREE garage:cairn/FRESH",
                    target: Some(IMPORT_MIN_RATIO),
                    run: &mut rclone_run,
                },
                Baseline {
                    label: "cairn embedded",
                    name: "cairn import, embedded",
                    command: "cairn import --data-dir FRESH TREE",
                    target: None,
                    run: &mut embedded,
                },
            ],
            &mut rows,
            &mut jobs,
        )?;

        // 3. requests per MiB, one more import each.
        let before = cluster.requests()?;
        let addr = format!("{}&prefix={}", cluster.addr, fresh("count"));
        let out = Command::new(&cairn)
            .args(["import", "--store-addr", &addr])
            .arg(&tree.root)
            .output()?;
        if !out.status.success() {
            bail!(
                "cairn import into the bucket failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let path = String::from_utf8(out.stdout)?.trim().to_owned();
        let cairn_requests = cluster.requests()? - before;
        let before = cluster.requests()?;
        // Kept: the render reference downloads these files.
        let rclone_copy = format!("garage:cairn/{}", fresh("rclone-count"));
        let status = Command::new(&rclone)
            .arg("copy")
            .arg(&tree.root)
            .arg(&rclone_copy)
            .status()?;
        if !status.success() {
            bail!("rclone copy failed ({status})");
        }
        let rclone_requests = cluster.requests()? - before;
        let file_mib = tree.stats.file_bytes as f64 / (1024.0 * 1024.0);
        requests.push(Requests {
            tree: tree.name.clone(),
            file_mib,
            cairn_requests,
            rclone_requests,
            cairn_per_mib: cairn_requests as f64 / file_mib,
            rclone_per_mib: rclone_requests as f64 / file_mib,
        });

        // 2. render: cold (empty cache) vs warm (filled cache).
        let warm_cache = scratch.join(fresh("warm-cache"));
        let export = |cache: &Path| {
            Invocation::new(&cairn)
                .arg("export")
                .arg("--store-addr")
                .arg(&addr)
                .arg("--cache-dir")
                .arg(cache)
                .arg(&path)
                .drain_stdout()
        };
        harness::run_timed(&export(&warm_cache), &log)?;
        let cold_cache = scratch.join("cold-cache");
        let download = scratch.join("rclone-download");
        let mut cold = || -> Result<Sample> {
            remove_path(&cold_cache)?;
            harness::run_timed(&export(&cold_cache), &log)
        };
        let mut warm = || harness::run_timed(&export(&warm_cache), &log);
        let mut rclone_download = || -> Result<Sample> {
            remove_path(&download)?;
            let inv = Invocation::new(&rclone)
                .arg("copy")
                .arg(&rclone_copy)
                .arg(&download)
                .arg("--transfers=32")
                .arg("--checkers=32");
            harness::run_timed(&inv, &log)
        };
        compare_three(
            Job {
                name: "render cold",
                subject: &tree.name,
                bytes: tree.stats.nar_bytes,
                files,
                cairn_command: "cairn export --store-addr S3 --cache-dir EMPTY PATH",
            },
            runs,
            ("cold (empty cache)", &mut cold),
            [
                Baseline {
                    label: "warm (filled cache)",
                    name: "render warm (local cache)",
                    command: "cairn export --store-addr S3 --cache-dir FILLED PATH",
                    target: Some(RENDER_MIN_RATIO),
                    run: &mut warm,
                },
                Baseline {
                    label: "rclone download",
                    name: "rclone download (32 transfers)",
                    command: "rclone copy garage:cairn/COPY EMPTY --transfers=32 --checkers=32",
                    target: None,
                    run: &mut rclone_download,
                },
            ],
            &mut rows,
            &mut jobs,
        )?;
        remove_path(&download)?;
        remove_path(&warm_cache)?;
        remove_path(&cold_cache)?;
    }
    drop(cluster);
    remove_path(&scratch)?;

    println!();
    println!(
        "cairn-bench {GROUP}: medians of {runs} runs each, after a warm-up, alternating; \
         a three-node Garage cluster on loopback, replication factor 3"
    );
    println!("import: ratio = baseline time / cairn-into-the-bucket time; render: ratio = warm time / cold time");
    println!();
    print!("{}", crate::harness::summary::table(&rows));
    println!();
    let headers = [
        "tree",
        "file MiB",
        "cairn requests",
        "per MiB",
        "rclone requests",
        "per MiB",
    ];
    let mut align = vec![Align::Left];
    align.extend([Align::Right; 5]);
    let cells: Vec<Vec<String>> = requests
        .iter()
        .map(|r| {
            vec![
                r.tree.clone(),
                format!("{:.1}", r.file_mib),
                r.cairn_requests.to_string(),
                format!("{:.1}", r.cairn_per_mib),
                r.rclone_requests.to_string(),
                format!("{:.1}", r.rclone_per_mib),
            ]
        })
        .collect();
    println!("S3 requests served by the cluster during one import");
    print!("{}", report::format_table(&headers, &align, &cells));

    this_run.finish(
        GROUP,
        &common,
        runs,
        work_dir,
        vec![
            ToolInfo::of("cairn", &cairn),
            ToolInfo::of("rclone", &rclone),
        ],
        Details {
            trees: &trees,
            requests: &requests,
            cluster:
                "scripts/garage-cluster, three nodes on 127.0.0.1:4900-4923, replication factor 3",
        },
        &jobs,
    )?;
    Ok(rows)
}
