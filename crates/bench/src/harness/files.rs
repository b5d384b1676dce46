//! Filesystem chores around measured runs, none of them timed: removing
//! what a run created, flushing writeback so no run pays for its
//! predecessor's, measuring disk usage, and checking a command's output
//! against a file.

use std::cell::Cell;
use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::{run_timed, Invocation, Sample};

/// Removes a file, symlink or directory tree; a missing path is fine.
pub fn remove_path(path: &Path) -> Result<()> {
    let removed = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    removed.with_context(|| format!("cannot remove {}", path.display()))
}

/// `path` as a new, empty directory (whatever was there is removed).
pub fn fresh_dir(path: &Path) -> Result<()> {
    remove_path(path)?;
    fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))
}

/// `sync(1)`: writes back dirty pages, so they do not bias the next run.
pub fn sync() -> Result<()> {
    let status = Command::new("sync").status().context("cannot run sync")?;
    if !status.success() {
        bail!("sync failed ({status})");
    }
    Ok(())
}

/// One timed run of `inv`, which must create the fresh path `dest`.
/// Removing `dest` before and after, and flushing the filesystem afterwards,
/// are not timed, so every run starts from the same state instead of paying
/// for its predecessor's writeback.
pub fn run_timed_creating(inv: &Invocation, dest: &Path, log: &Path) -> Result<Sample> {
    remove_path(dest)?;
    let sample = run_timed(inv, log)?;
    if fs::symlink_metadata(dest).is_err() {
        bail!(
            "{} succeeded but {} does not exist",
            inv.display(),
            dest.display()
        );
    }
    remove_path(dest)?;
    sync()?;
    Ok(sample)
}

/// Where the outputs of runs go instead of being deleted, until the job
/// group ends ([`Trash::empty`]).
///
/// Deleting many files between runs biases the runs after it: on ext4
/// without a journal, allocating an inode skips, one at a time, every free
/// inode deleted less than a minute ago, or six minutes if its inode-table
/// block is dirty, as allocating a neighbour makes it
/// (`recently_deleted()` in `fs/ext4/ialloc.c`). On such a filesystem,
/// `cp -r` of 1,400 files took 0.06 s in a quiet state and over 1 s after a
/// few rounds of create-and-delete, nearly all in that scan. A rename frees
/// no inode.
pub struct Trash {
    dir: PathBuf,
    discarded: Cell<u64>,
}

impl Trash {
    /// An empty trash directory at `dir`, which must be on the filesystem of
    /// everything discarded into it.
    pub fn new(dir: PathBuf) -> Result<Self> {
        fresh_dir(&dir)?;
        Ok(Self {
            dir,
            discarded: Cell::new(0),
        })
    }

    /// Moves `path` (a file or tree) into the trash.
    pub fn discard(&self, path: &Path) -> Result<()> {
        let n = self.discarded.get() + 1;
        self.discarded.set(n);
        let to = self.dir.join(n.to_string());
        fs::rename(path, &to)
            .with_context(|| format!("cannot move {} to {}", path.display(), to.display()))
    }

    /// Deletes everything discarded, and writes the deletion back.
    pub fn empty(self) -> Result<()> {
        remove_path(&self.dir)?;
        sync()
    }
}

/// What a tree occupies, counted like `du`: every entry (directories and
/// symlinks included, the root too), hard links once, symlinks not followed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DiskUsage {
    /// Sum of sizes (`du -sb`).
    pub apparent_bytes: u64,
    /// Sum of allocated blocks, in bytes (`du -s --block-size=1`): the
    /// space it takes on disk.
    pub allocated_bytes: u64,
    /// Regular files.
    pub files: u64,
}

/// Measures `path` like `du` (see [`DiskUsage`]).
pub fn disk_usage(path: &Path) -> Result<DiskUsage> {
    let mut usage = DiskUsage::default();
    let mut seen = HashSet::new();
    du_into(path, &mut usage, &mut seen)?;
    Ok(usage)
}

fn du_into(path: &Path, usage: &mut DiskUsage, seen: &mut HashSet<(u64, u64)>) -> Result<()> {
    let meta =
        fs::symlink_metadata(path).with_context(|| format!("cannot stat {}", path.display()))?;
    if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
        return Ok(());
    }
    usage.apparent_bytes += meta.len();
    usage.allocated_bytes += meta.blocks() * 512;
    if meta.is_file() {
        usage.files += 1;
    }
    if meta.is_dir() {
        for entry in
            fs::read_dir(path).with_context(|| format!("cannot list {}", path.display()))?
        {
            let entry = entry.with_context(|| format!("cannot list {}", path.display()))?;
            du_into(&entry.path(), usage, seen)?;
        }
    }
    Ok(())
}

/// Runs `cmd` and checks that its stdout equals the file `expected`, byte
/// for byte.
pub fn stdout_matches_file(mut cmd: Command, expected: &Path) -> Result<()> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot run {what}"))?;
    let file = File::open(expected).with_context(|| format!("cannot open {}", expected.display()));
    let compared = match (child.stdout.take(), file) {
        (Some(mut out), Ok(file)) => {
            let compared = first_difference(&mut out, file).map_err(anyhow::Error::from);
            // Read the rest even after a difference, so the child ends
            // normally instead of on a broken pipe; dropping `out` then
            // closes the pipe, so it cannot block on it either way.
            let _ = io::copy(&mut out, &mut io::sink());
            compared
        }
        (None, _) => Err(anyhow::anyhow!("no stdout pipe")),
        (_, Err(e)) => Err(e),
    };
    let status = child
        .wait()
        .with_context(|| format!("cannot wait for {what}"))?;
    let compared = compared.with_context(|| format!("cannot compare the output of {what}"))?;
    if let Some(offset) = compared {
        bail!(
            "the output of {what} differs from {} at byte {offset}",
            expected.display()
        );
    }
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Compares two streams; `None` if equal, else the offset of the first
/// differing byte (or of the end of the shorter one).
fn first_difference(mut a: impl Read, mut b: impl Read) -> io::Result<Option<u64>> {
    const CHUNK: usize = 1 << 20;
    let (mut buf_a, mut buf_b) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut offset = 0u64;
    loop {
        let na = read_full(&mut a, &mut buf_a)?;
        let nb = read_full(&mut b, &mut buf_b)?;
        let same = buf_a[..na.min(nb)]
            .iter()
            .zip(&buf_b[..na.min(nb)])
            .position(|(x, y)| x != y);
        if let Some(i) = same {
            return Ok(Some(offset + i as u64));
        }
        if na != nb {
            return Ok(Some(offset + na.min(nb) as u64));
        }
        if na == 0 {
            return Ok(None);
        }
        offset += na as u64;
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_difference_finds_the_offset() {
        let a = vec![7u8; 3 << 20];
        let mut b = a.clone();
        assert_eq!(first_difference(&a[..], &b[..]).unwrap(), None);
        b[(2 << 20) + 5] = 0;
        assert_eq!(
            first_difference(&a[..], &b[..]).unwrap(),
            Some((2 << 20) + 5)
        );
        assert_eq!(first_difference(&a[..], &a[..10]).unwrap(), Some(10));
        assert_eq!(first_difference(&a[..0], &a[..0]).unwrap(), None);
    }

    #[test]
    fn trash_keeps_until_emptied() {
        let dir = crate::harness::test_dir::fresh("trash");
        let trash = Trash::new(dir.join("trash")).unwrap();
        fs::create_dir(dir.join("out")).unwrap();
        fs::write(dir.join("out/f"), b"x").unwrap();
        fs::write(dir.join("g"), b"y").unwrap();
        trash.discard(&dir.join("out")).unwrap();
        trash.discard(&dir.join("g")).unwrap();
        assert!(!dir.join("out").exists() && !dir.join("g").exists());
        assert_eq!(fs::read(dir.join("trash/1/f")).unwrap(), b"x");
        trash.empty().unwrap();
        assert!(!dir.join("trash").exists());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn disk_usage_counts_like_du() {
        let dir = crate::harness::test_dir::fresh("du");
        fs::write(dir.join("a"), vec![1u8; 10_000]).unwrap();
        fs::create_dir(dir.join("sub")).unwrap();
        fs::write(dir.join("sub/b"), b"xyz").unwrap();
        fs::hard_link(dir.join("a"), dir.join("sub/a-again")).unwrap();
        std::os::unix::fs::symlink("a", dir.join("link")).unwrap();
        let du = disk_usage(&dir).unwrap();
        assert_eq!(du.files, 2, "a hard link counts once");
        let dirs = fs::metadata(&dir).unwrap().len() + fs::metadata(dir.join("sub")).unwrap().len();
        let link = fs::symlink_metadata(dir.join("link")).unwrap().len();
        assert_eq!(du.apparent_bytes, 10_000 + 3 + dirs + link);
        assert!(du.allocated_bytes >= 10_000, "{du:?}");
        fs::remove_dir_all(dir).unwrap();
    }
}
