//! One measured run of one child process: wall time from just before spawn
//! to just after the child is reaped, plus the kernel's own account of the
//! child's peak RSS and CPU time, taken from `wait4(2)`'s `rusage`.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// Reads from a child's stdout are this large, so draining costs the
/// harness as few syscalls as possible (and the same for every tool).
const DRAIN_BUFFER: usize = 1 << 20;

/// What the child reads on stdin.
#[derive(Clone, Debug)]
pub enum Input {
    /// `/dev/null`.
    Null,
    /// This file, opened before the clock starts.
    File(PathBuf),
}

/// What happens to the child's stdout.
#[derive(Clone, Debug)]
pub enum Output {
    /// `/dev/null`.
    Null,
    /// A pipe the harness reads to the end and discards, counting the bytes.
    Drain,
    /// This file, created (or truncated) before the clock starts, for the
    /// caller to check afterwards.
    File(PathBuf),
}

/// A command line to run and measure.
#[derive(Clone, Debug)]
pub struct Invocation {
    program: PathBuf,
    args: Vec<OsString>,
    stdin: Input,
    stdout: Output,
}

impl Invocation {
    /// `program` with no arguments, stdin and stdout on `/dev/null`.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            stdin: Input::Null,
            stdout: Output::Null,
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Feeds the file at `path` to the child's stdin.
    pub fn stdin_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.stdin = Input::File(path.into());
        self
    }

    /// Pipes the child's stdout to the harness, which drains and discards it.
    pub fn drain_stdout(mut self) -> Self {
        self.stdout = Output::Drain;
        self
    }

    /// Writes the child's stdout to the file at `path` (truncated first).
    pub fn stdout_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.stdout = Output::File(path.into());
        self
    }

    /// The command line, shell-like, for messages.
    pub fn display(&self) -> String {
        let mut s = self.program.display().to_string();
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        if let Input::File(p) = &self.stdin {
            s.push_str(" < ");
            s.push_str(&p.to_string_lossy());
        }
        if let Output::File(p) = &self.stdout {
            s.push_str(" > ");
            s.push_str(&p.to_string_lossy());
        }
        s
    }
}

/// The measurements of one run.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Sample {
    /// Seconds from just before spawn to just after the child was reaped.
    pub wall_s: f64,
    /// The child's peak resident set size (`ru_maxrss`), KiB.
    pub max_rss_kib: u64,
    /// CPU time in user mode, seconds.
    pub user_s: f64,
    /// CPU time in the kernel, seconds.
    pub sys_s: f64,
    /// Bytes read from the child's stdout, when it was drained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout_bytes: Option<u64>,
}

/// Runs `inv` once and measures it. The child's stderr goes to `stderr_log`
/// (truncated first), and is quoted in the error if the child fails.
pub fn run_timed(inv: &Invocation, stderr_log: &Path) -> Result<Sample> {
    let stderr = File::create(stderr_log)
        .with_context(|| format!("cannot create {}", stderr_log.display()))?;
    let stdin = match &inv.stdin {
        Input::Null => Stdio::null(),
        Input::File(p) => File::open(p)
            .with_context(|| format!("cannot open {}", p.display()))?
            .into(),
    };
    let stdout = match &inv.stdout {
        Output::Null => Stdio::null(),
        Output::Drain => Stdio::piped(),
        Output::File(p) => File::create(p)
            .with_context(|| format!("cannot create {}", p.display()))?
            .into(),
    };
    let mut cmd = Command::new(&inv.program);
    cmd.args(&inv.args)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr);
    // Allocated before the clock starts, so no tool pays for it.
    let mut buf = match inv.stdout {
        Output::Drain => vec![0u8; DRAIN_BUFFER],
        Output::Null | Output::File(_) => Vec::new(),
    };

    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", inv.display()))?;
    // `drain` consumes the pipe: if reading fails, the read end is closed on
    // return, so the child cannot block on a full pipe while we reap it.
    let drained = child.stdout.take().map(|out| drain(out, &mut buf));
    let pid = libc::pid_t::try_from(child.id()).context("child pid out of range")?;
    let (status, usage) =
        wait_with_rusage(pid).with_context(|| format!("cannot wait for {}", inv.display()))?;
    let wall_s = start.elapsed().as_secs_f64();

    if !status.success() {
        let log = fs::read_to_string(stderr_log).unwrap_or_default();
        bail!(
            "{} failed ({status}); its stderr:\n{}",
            inv.display(),
            log.trim_end()
        );
    }
    let stdout_bytes = drained
        .transpose()
        .with_context(|| format!("cannot read the output of {}", inv.display()))?;
    Ok(Sample {
        wall_s,
        max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
        user_s: seconds(usage.ru_utime),
        sys_s: seconds(usage.ru_stime),
        stdout_bytes,
    })
}

/// Reads `out` to its end, discarding the data; returns the byte count.
fn drain(mut out: impl Read, buf: &mut [u8]) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        match out.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn seconds(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6
}

/// Reaps the child `pid` with `wait4(2)`, returning its exit status and
/// resource usage (peak RSS, CPU time), which `std` does not expose.
///
/// `pid` must be a child of this process that nothing else waits for: the
/// `std::process::Child` it came from must not be waited on afterwards.
#[allow(unsafe_code)]
fn wait_with_rusage(pid: libc::pid_t) -> io::Result<(ExitStatus, libc::rusage)> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: `libc::rusage` is a plain C struct of integers, for which
        // all-zero bytes is a valid value. `status` and `usage` are live,
        // exclusively borrowed locals, valid for writes for the whole call,
        // and wait4 writes nothing else. Reaping `pid` here is sound because
        // the caller hands us its own child and never waits on it again.
        let (ret, usage) = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            let ret = libc::wait4(pid, &mut status, 0, &mut usage);
            (ret, usage)
        };
        if ret == pid {
            return Ok((ExitStatus::from_raw(status), usage));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Starts a server whose first stderr line announces its address (see
/// `cairn_testkit::spawn_announcing`); its later stderr goes to ours.
pub fn spawn_announcing(cmd: &mut Command, prefix: &str) -> Result<(std::process::Child, String)> {
    cairn_testkit::spawn_announcing(cmd, prefix).map_err(anyhow::Error::msg)
}

/// Stops a server: SIGTERM (so it can finish cleanly; nginx's master
/// then stops its workers, which SIGKILL would orphan), SIGKILL if it is
/// still running after `grace`.
pub fn stop_gracefully(child: &mut std::process::Child, grace: std::time::Duration) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_child_and_counts_its_output() {
        let dir = crate::harness::test_dir::fresh("process-ok");
        let log = dir.join("stderr");
        let inv = Invocation::new("/bin/sh")
            .arg("-c")
            .arg("head -c 3000000 /dev/zero")
            .drain_stdout();
        let s = run_timed(&inv, &log).unwrap();
        assert_eq!(s.stdout_bytes, Some(3_000_000));
        assert!(s.wall_s > 0.0);
        assert!(s.max_rss_kib > 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn stdout_can_go_to_a_file() {
        let dir = crate::harness::test_dir::fresh("process-file");
        let out = dir.join("out");
        let inv = Invocation::new("/bin/sh")
            .arg("-c")
            .arg("echo hello")
            .stdout_file(&out);
        let s = run_timed(&inv, &dir.join("stderr")).unwrap();
        assert_eq!(s.stdout_bytes, None);
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "hello\n");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_failing_child_is_an_error_quoting_its_stderr() {
        let dir = crate::harness::test_dir::fresh("process-fail");
        let log = dir.join("stderr");
        let inv = Invocation::new("/bin/sh")
            .arg("-c")
            .arg("echo broken >&2; exit 3");
        let err = format!("{:#}", run_timed(&inv, &log).unwrap_err());
        assert!(err.contains("broken"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
