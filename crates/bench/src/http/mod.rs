//! The `http` job group: `cairn serve` against nginx (Debian's, serving
//! files from disk with `sendfile`) on the same bytes, over loopback.
//!
//! Jobs, per tree (`python3.X` and `large-256MiB` with `--quick`; also
//! `rust-lib` and `large-2GiB` without):
//!
//! 1. **nar**: `curl URL > /dev/null` of the tree's NAR, rendered by
//!    `cairn serve` from its store (uncompressed) against nginx serving the
//!    corpus's `nix-store --dump` file. Each download is checked once for
//!    identical bytes first. **Target: ratio ≥ 0.90** (throughput).
//! 2. **narinfo**: `wrk` with 64 connections for a few seconds on the
//!    tree's narinfo, against nginx serving the same text as a file;
//!    requests per second, median of the runs, alternating. **Target:
//!    ratio ≥ 0.50**.
//! 3. **nix-copy** (trees of many files only): `nix copy --from URL` into a
//!    fresh chroot store, from `cairn serve` against from nginx serving the
//!    `file://` cache Nix itself wrote (`compression=none`). Reported, no
//!    target: Nix's own unpacking dominates both.
//!
//! Servers are started once per tree, untimed; the peak RSS of each `cairn
//! serve` is reported (a streaming server must stay flat whatever the NAR
//! size). Here the "cairn" column is `cairn serve` and "baseline" nginx.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use crate::corpus::{self, Spec, Tree};
use crate::harness::files::{fresh_dir, remove_path, stdout_matches_file};
use crate::harness::process::{spawn_announcing, stop_gracefully};
use crate::harness::report::{self, Align, ToolInfo};
use crate::harness::summary::{Row, Target, Unit};
use crate::harness::{self, CommonArgs, Invocation, JobResult, JobSpec, Sample};

const GROUP: &str = "http";
const NAR_MIN_RATIO: f64 = 0.9;
const NARINFO_MIN_RATIO: f64 = 0.5;

/// Options of `cairn-bench http`.
#[derive(Args, Debug)]
pub struct HttpArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

/// A child process killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        stop_gracefully(&mut self.child, Duration::from_secs(10));
    }
}

impl Server {
    /// `cairn serve` on `data`.
    fn cairn(cairn: &Path, data: &Path) -> Result<Server> {
        let (child, url) = spawn_announcing(
            Command::new(cairn)
                .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
                .arg(data),
            "cairn serve: listening on ",
        )?;
        Ok(Server { child, url })
    }

    /// nginx serving `root`, configured as a plain static file server.
    fn nginx(nginx: &Path, root: &Path, prefix: &Path) -> Result<Server> {
        fresh_dir(prefix)?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let user = if running_as_root() {
            "user root;\n"
        } else {
            ""
        };
        let conf = format!(
            "{user}daemon off;\nworker_processes 2;\npid {prefix}/nginx.pid;\n\
             error_log {prefix}/error.log;\nevents {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 100000;\n\
               client_body_temp_path {prefix}/body;\n  proxy_temp_path {prefix}/proxy;\n\
               fastcgi_temp_path {prefix}/fastcgi;\n  uwsgi_temp_path {prefix}/uwsgi;\n\
               scgi_temp_path {prefix}/scgi;\n\
               types {{ text/x-nix-narinfo narinfo; application/x-nix-nar nar; }}\n\
               server {{ listen 127.0.0.1:{port}; root {root}; }}\n}}\n",
            prefix = prefix.display(),
            root = root.display(),
        );
        let conf_path = prefix.join("nginx.conf");
        fs::write(&conf_path, conf)?;
        let child = Command::new(nginx)
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(prefix)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start nginx")?;
        let server = Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("nginx did not start listening (see {})", prefix.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    /// Peak resident memory so far (`VmHWM`), MiB.
    fn peak_rss_mib(&self) -> f64 {
        let status =
            fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .unwrap_or(f64::NAN)
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

/// Runs a command to completion, failing with its stderr.
fn run(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

struct Tools {
    cairn: PathBuf,
    curl: PathBuf,
    wrk: PathBuf,
    nix: PathBuf,
    nix_store: PathBuf,
    nginx: PathBuf,
}

#[derive(Serialize)]
struct RateSide {
    command: String,
    requests_per_s: Vec<f64>,
    median_requests_per_s: f64,
}

/// A requests-per-second job (higher is better).
#[derive(Serialize)]
struct RateJob {
    group: &'static str,
    job: &'static str,
    subject: String,
    cairn: RateSide,
    baseline: RateSide,
    ratio: f64,
}

#[derive(Serialize)]
#[serde(untagged)]
enum HttpJob {
    Timed {
        #[serde(flatten)]
        result: JobResult,
        target_min_ratio: Option<f64>,
        target_met: Option<bool>,
    },
    Rate {
        #[serde(flatten)]
        result: RateJob,
        target_min_ratio: f64,
        target_met: bool,
    },
}

#[derive(Serialize)]
struct ServerMemory {
    tree: String,
    cairn_serve_peak_rss_mib: f64,
}

#[derive(Serialize)]
struct Details<'a> {
    trees: &'a [Tree],
    columns: &'static str,
    server_memory: Vec<ServerMemory>,
}

/// `URL:` of a narinfo.
fn narinfo_url(narinfo: &str) -> Result<&str> {
    narinfo
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .context("narinfo without URL")
}

fn nar_job(
    t: &Tools,
    tree: &Tree,
    cairn_url: &str,
    nginx_url: &str,
    runs: usize,
    log: &Path,
) -> Result<HttpJob> {
    // Same bytes from both, checked once, streaming: holding a 2 GiB NAR
    // twice here would make every child forked later start that large
    // (their peak RSS counts it).
    for url in [cairn_url, nginx_url] {
        let mut curl = Command::new(&t.curl);
        curl.args(["-sS", "--fail", url]);
        stdout_matches_file(curl, &tree.nar)
            .with_context(|| format!("{url} is not the NAR of {}", tree.root.display()))?;
    }
    let spec = JobSpec {
        group: GROUP,
        job: "nar".into(),
        subject: tree.name.clone(),
        bytes: tree.stats.nar_bytes,
        cairn_command: format!("curl {cairn_url} > /dev/null (cairn serve)"),
        baseline_command: format!(
            "curl {nginx_url} > /dev/null (nginx, the nix-store --dump file)"
        ),
    };
    let curl = |url: &str| {
        let inv = Invocation::new(&t.curl).arg("-sS").arg("--fail").arg(url);
        harness::run_timed(&inv, log)
    };
    let result = harness::compare(spec, runs, || curl(cairn_url), || curl(nginx_url))?;
    let met = result.ratio >= NAR_MIN_RATIO;
    Ok(HttpJob::Timed {
        result,
        target_min_ratio: Some(NAR_MIN_RATIO),
        target_met: Some(met),
    })
}

/// `wrk` for `secs` seconds; requests per second, no errors allowed.
fn wrk_rate(t: &Tools, url: &str, secs: u32) -> Result<f64> {
    let out = String::from_utf8(run(Command::new(&t.wrk).args([
        "-t2",
        "-c64",
        &format!("-d{secs}s"),
        url,
    ]))?)?;
    if out.contains("Non-2xx") || out.contains("Socket errors") {
        bail!("wrk saw errors on {url}:\n{out}");
    }
    out.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{out}"))
}

fn narinfo_job(
    t: &Tools,
    tree: &Tree,
    cairn_url: &str,
    nginx_url: &str,
    runs: usize,
    secs: u32,
) -> Result<HttpJob> {
    let label = format!("{GROUP} narinfo {}", tree.name);
    eprint!("[{label}] warm-up");
    wrk_rate(t, cairn_url, 1)?;
    wrk_rate(t, nginx_url, 1)?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for i in 0..runs {
        eprint!(" {}", i + 1);
        ours.push(wrk_rate(t, cairn_url, secs)?);
        theirs.push(wrk_rate(t, nginx_url, secs)?);
    }
    let side = |command: String, v: Vec<f64>| RateSide {
        command,
        median_requests_per_s: harness::median(&v),
        requests_per_s: v,
    };
    let cairn = side(
        format!("wrk -t2 -c64 -d{secs}s {cairn_url} (cairn serve)"),
        ours,
    );
    let baseline = side(
        format!("wrk -t2 -c64 -d{secs}s {nginx_url} (nginx, the same text)"),
        theirs,
    );
    let ratio = cairn.median_requests_per_s / baseline.median_requests_per_s;
    eprintln!(
        " — cairn {:.0}/s, nginx {:.0}/s, ratio {ratio:.2}",
        cairn.median_requests_per_s, baseline.median_requests_per_s
    );
    Ok(HttpJob::Rate {
        result: RateJob {
            group: GROUP,
            job: "narinfo",
            subject: tree.name.clone(),
            cairn,
            baseline,
            ratio,
        },
        target_min_ratio: NARINFO_MIN_RATIO,
        target_met: ratio >= NARINFO_MIN_RATIO,
    })
}

/// `nix copy --from URL PATH` into a fresh chroot store (and a fresh
/// narinfo cache), timed.
fn nix_copy(t: &Tools, scratch: &Path, url: &str, path: &str, log: &Path) -> Result<Sample> {
    let store = scratch.join("nix-copy-store");
    let xdg = scratch.join("nix-copy-xdg");
    for p in [&store, &xdg] {
        if p.exists() {
            run(Command::new("chmod").arg("-R").arg("u+w").arg(p))?;
        }
        remove_path(p)?;
    }
    let inv = Invocation::new("env")
        .arg(format!("XDG_CACHE_HOME={}", xdg.display()))
        .arg("NIX_CONFIG=experimental-features = nix-command\nsubstituters =\nsandbox = false")
        .arg(&t.nix)
        .arg("copy")
        .arg("--no-check-sigs")
        .arg("--from")
        .arg(url)
        .arg("--to")
        .arg(&store)
        .arg(path);
    let sample = harness::run_timed(&inv, log)?;
    if !store.join(path.trim_start_matches('/')).exists() {
        bail!("nix copy from {url} did not produce {path}");
    }
    Ok(sample)
}

/// Runs the group.
pub fn run_group(args: HttpArgs) -> Result<Vec<Row>> {
    let this_run = report::Run::start();
    let common = args.common;
    let runs = common.runs();
    let find = |tool: &str, package: &str| {
        harness::find_on_path(tool)
            .or_else(|| {
                [PathBuf::from("/usr/sbin").join(tool)]
                    .into_iter()
                    .find(|p| p.exists())
            })
            .with_context(|| format!("{tool} not found (apt-get install {package})"))
    };
    let t = Tools {
        cairn: harness::cairn_binary()?,
        curl: find("curl", "curl")?,
        wrk: find("wrk", "wrk")?,
        nix: find("nix", "nix-bin")?,
        nix_store: find("nix-store", "nix-bin")?,
        nginx: find("nginx", "nginx-light")?,
    };
    let work_dir = common.prepare_work_dir()?;
    let scratch = work_dir.join("scratch-http");
    fresh_dir(&scratch)?;
    let log = scratch.join("stderr.log");
    let mut specs: Vec<Spec> = corpus::Spec::python_stdlib()?.into_iter().collect();
    if !common.quick {
        specs.extend(corpus::Spec::rust_lib());
    }
    specs.push(corpus::Spec::large(common.quick));
    let trees = corpus::prepare(&work_dir, &specs, &t.nix_store)?;
    let wrk_secs = if common.quick { 1 } else { 3 };

    // nginx serves one directory: per tree, its NAR (the corpus file),
    // a narinfo, and the file:// cache Nix writes.
    let root = scratch.join("www");
    fresh_dir(&root)?;
    let nginx = Server::nginx(&t.nginx, &root, &scratch.join("nginx"))?;
    let mut jobs = Vec::new();
    let mut memory = Vec::new();
    for tree in &trees {
        let data = scratch.join(format!("cairn-{}", tree.name));
        let path = String::from_utf8(run(Command::new(&t.cairn)
            .args(["import", "--data-dir"])
            .arg(&data)
            .arg(&tree.root))?)?
        .trim()
        .to_owned();
        let hash = &path.trim_start_matches("/nix/store/")[..32];
        let serve = Server::cairn(&t.cairn, &data)?;
        let narinfo = String::from_utf8(run(Command::new(&t.curl)
            .args(["-sS", "--fail"])
            .arg(format!("{}/{hash}.narinfo", serve.url)))?)?;
        let cairn_nar = format!("{}/{}", serve.url, narinfo_url(&narinfo)?);
        let dir = root.join(&tree.name);
        fresh_dir(&dir)?;
        std::os::unix::fs::symlink(&tree.nar, dir.join("tree.nar"))?;
        fs::write(dir.join(format!("{hash}.narinfo")), &narinfo)?;
        let nginx_nar = format!("{}/{}/tree.nar", nginx.url, tree.name);
        jobs.push(nar_job(&t, tree, &cairn_nar, &nginx_nar, runs, &log)?);
        jobs.push(narinfo_job(
            &t,
            tree,
            &format!("{}/{hash}.narinfo", serve.url),
            &format!("{}/{}/{hash}.narinfo", nginx.url, tree.name),
            runs,
            wrk_secs,
        )?);
        if tree.stats.files > 1000 {
            // The file:// cache Nix writes, from a chroot store it added the tree to.
            let nix_src = scratch.join(format!("nix-src-{}", tree.name));
            let env = (
                "NIX_CONFIG",
                "experimental-features = nix-command\nsubstituters =",
            );
            let added = String::from_utf8(run(Command::new(&t.nix_store)
                .env(env.0, env.1)
                .arg("--store")
                .arg(&nix_src)
                .arg("--add")
                .arg(&tree.root))?)?;
            if added.trim() != path {
                bail!("nix-store --add gave {added}, cairn import {path}");
            }
            let cache = root.join(format!("{}-cache", tree.name));
            run(Command::new(&t.nix)
                .env(env.0, env.1)
                .env("XDG_CACHE_HOME", scratch.join("xdg-writer"))
                .arg("--store")
                .arg(&nix_src)
                .args(["copy", "--to"])
                .arg(format!("file://{}?compression=none", cache.display()))
                .arg(&path))?;
            let nginx_cache = format!("{}/{}-cache", nginx.url, tree.name);
            let spec = JobSpec {
                group: GROUP,
                job: "nix-copy".into(),
                subject: tree.name.clone(),
                bytes: tree.stats.nar_bytes,
                cairn_command: format!("nix copy --from {} --to FRESH {path}", serve.url),
                baseline_command: format!(
                    "nix copy --from {nginx_cache} --to FRESH {path} (nginx, Nix's file:// cache)"
                ),
            };
            let result = harness::compare(
                spec,
                runs,
                || nix_copy(&t, &scratch, &serve.url, &path, &log),
                || nix_copy(&t, &scratch, &nginx_cache, &path, &log),
            )?;
            jobs.push(HttpJob::Timed {
                result,
                target_min_ratio: None,
                target_met: None,
            });
            run(Command::new("chmod").arg("-R").arg("u+w").arg(&nix_src))?;
            remove_path(&nix_src)?;
        }
        memory.push(ServerMemory {
            tree: tree.name.clone(),
            cairn_serve_peak_rss_mib: serve.peak_rss_mib(),
        });
        drop(serve);
        remove_path(&data)?;
    }
    drop(nginx);
    if scratch.join("nix-copy-store").exists() {
        run(Command::new("chmod")
            .arg("-R")
            .arg("u+w")
            .arg(scratch.join("nix-copy-store")))?;
    }
    remove_path(&scratch)?;

    println!();
    println!(
        "cairn-bench {GROUP}: medians of {runs} runs each, after a warm-up, alternating; \
         cairn = `cairn serve`, baseline = nginx serving files from disk"
    );
    println!("nar: curl of the NAR, MB/s; narinfo: wrk -c64, requests/s; nix-copy: nix copy --from into a fresh store");
    println!("ratio: cairn throughput / nginx throughput (1.00: as fast as nginx)");
    println!();
    let headers = ["job", "tree", "cairn", "nginx", "unit", "ratio", "target"];
    let mut align = vec![Align::Left, Align::Left];
    align.extend([Align::Right; 5]);
    let target = |min: Option<f64>, met: Option<bool>| match (min, met) {
        (Some(min), Some(true)) => format!(">= {min:.2} met"),
        (Some(min), _) => format!(">= {min:.2} MISSED"),
        _ => "-".into(),
    };
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| match j {
            HttpJob::Timed {
                result,
                target_min_ratio,
                target_met,
            } => vec![
                result.spec.job.clone(),
                result.spec.subject.clone(),
                format!("{:.1}", result.cairn.mb_per_s),
                format!("{:.1}", result.baseline.mb_per_s),
                "MB/s".into(),
                format!("{:.2}", result.ratio),
                target(*target_min_ratio, *target_met),
            ],
            HttpJob::Rate {
                result,
                target_min_ratio,
                target_met,
            } => vec![
                result.job.into(),
                result.subject.clone(),
                format!("{:.0}", result.cairn.median_requests_per_s),
                format!("{:.0}", result.baseline.median_requests_per_s),
                "req/s".into(),
                format!("{:.2}", result.ratio),
                target(Some(*target_min_ratio), Some(*target_met)),
            ],
        })
        .collect();
    print!("{}", report::format_table(&headers, &align, &rows));
    let summary = summary_rows(&jobs, &trees, &memory);
    println!();
    for m in &memory {
        println!(
            "cairn serve peak RSS while serving {}: {:.1} MiB",
            m.tree, m.cairn_serve_peak_rss_mib
        );
    }

    this_run.finish(
        GROUP,
        &common,
        runs,
        work_dir,
        vec![
            ToolInfo {
                name: "cairn".into(),
                version: harness::tool_version(&t.cairn),
                path: t.cairn.clone(),
            },
            ToolInfo {
                name: "nginx".into(),
                version: String::from_utf8_lossy(
                    &Command::new(&t.nginx).arg("-v").output()?.stderr,
                )
                .trim()
                .to_owned(),
                path: t.nginx.clone(),
            },
        ],
        Details {
            trees: &trees,
            columns: "cairn = cairn serve, baseline = nginx",
            server_memory: memory,
        },
        &jobs,
    )?;
    Ok(summary)
}

/// The jobs as summary rows; the peak RSS is `cairn serve`'s over the
/// tree's jobs (the timed processes are the clients).
fn summary_rows(jobs: &[HttpJob], trees: &[Tree], memory: &[ServerMemory]) -> Vec<Row> {
    let serve_rss = |tree: &str| {
        memory
            .iter()
            .find(|m| m.tree == tree)
            .map(|m| m.cairn_serve_peak_rss_mib)
    };
    jobs.iter()
        .map(|j| match j {
            HttpJob::Timed {
                result,
                target_min_ratio,
                ..
            } => {
                let nix_copy = result.spec.job == "nix-copy";
                let files = trees
                    .iter()
                    .find(|t| t.name == result.spec.subject)
                    .map(|t| t.stats.files)
                    .filter(|_| nix_copy);
                let baseline = if nix_copy {
                    "the same from nginx (Nix's file:// cache)"
                } else {
                    "curl of the NAR from nginx"
                };
                let target = target_min_ratio.map(|min| Target::MinRatio { min });
                let mut row = Row::timed(result, baseline, files, target);
                if !nix_copy {
                    row.job = "nar (curl)".into();
                }
                row.cairn_peak_rss_mib = serve_rss(&result.spec.subject);
                row.baseline_peak_rss_mib = None;
                row
            }
            HttpJob::Rate {
                result,
                target_min_ratio,
                ..
            } => {
                let mut row = Row {
                    group: GROUP,
                    job: format!("{} (wrk -c64)", result.job),
                    subject: result.subject.clone(),
                    baseline: "nginx serving the file".into(),
                    unit: Unit::RequestsPerSecond,
                    cairn: result.cairn.median_requests_per_s,
                    baseline_value: result.baseline.median_requests_per_s,
                    ratio: result.ratio,
                    mb_per_s: None,
                    files_per_s: None,
                    cairn_peak_rss_mib: serve_rss(&result.subject),
                    baseline_peak_rss_mib: None,
                    target: None,
                    met: None,
                };
                row.set_target(Some(Target::MinRatio {
                    min: *target_min_ratio,
                }));
                row
            }
        })
        .collect()
}
