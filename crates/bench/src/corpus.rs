//! The corpus the job groups share: trees of different shapes under
//! `<work-dir>/corpus/`, each next to the NAR `nix-store --dump` makes of it
//! (`<name>.nar`: the `nar` group's restore input, and what the `import`
//! group checks its round trip against).
//!
//! | tree | shape | groups |
//! | --- | --- | --- |
//! | `usr-share-doc` | copy of `/usr/share/doc`: thousands of tiny files | nar, import, store |
//! | `python3.X` | copy of the Python stdlib with the most files: small to mid-size files | nar, import, store |
//! | `rust-lib` | copy of `$(rustc --print sysroot)/lib`: a few dozen files, some of 100+ MiB | import, store |
//! | `large-2GiB` (`large-256MiB` with `--quick`) | one huge and three 64 MiB pseudo-random files | nar, store (256 MiB only) |
//! | `large-4GiB` | one 3,904 MiB and four 64 MiB pseudo-random files: a NAR over 4 GiB | store |
//! | `kitchen-sink` | `cairn_testkit::generated_trees`: every NAR shape, odd names, deep nesting | nar |
//!
//! Each group picks its trees with the [`Spec`] constructors and hands them
//! to [`prepare`]. System directories are copied (through
//! `nix-store --dump | --restore`), so the corpus does not change under the
//! benchmark when packages do. A tree is built once and reused, by every
//! group, while its marker file `<name>.complete` matches what would be
//! built; delete the work directory to start afresh.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::harness::files::remove_path;

/// Bumped when the trees built for a given description change.
const CORPUS_FORMAT: u32 = 1;

const MIB: u64 = 1 << 20;

/// Size of the chunks generated files are written in.
const WRITE_CHUNK: usize = 1 << 20;

/// One corpus tree, ready to benchmark.
#[derive(Clone, Debug, Serialize)]
pub struct Tree {
    /// Short name, used in the table.
    pub name: String,
    /// Where it came from.
    pub description: String,
    /// The tree itself.
    pub root: PathBuf,
    /// `nix-store --dump` of `root`.
    pub nar: PathBuf,
    /// Its size and shape.
    pub stats: TreeStats,
}

/// A tree's size and shape.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TreeStats {
    /// Size of its NAR.
    pub nar_bytes: u64,
    /// Regular files.
    pub files: u64,
    /// Directories, the root included.
    pub directories: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Sum of regular files' sizes.
    pub file_bytes: u64,
    /// The largest regular file.
    pub largest_file: u64,
}

/// What `<name>.complete` records.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    format: u32,
    description: String,
    stats: TreeStats,
}

enum Source {
    /// A copy of a directory on this machine.
    Copy(PathBuf),
    /// Pseudo-random files of these sizes.
    Large(Vec<u64>),
    /// The testkit's kitchen-sink tree.
    KitchenSink,
}

/// A tree to build (or reuse): its name, where it comes from.
pub struct Spec {
    name: String,
    description: String,
    source: Source,
}

impl Spec {
    /// The real trees the `import` and `store` groups share: the Python
    /// standard library alone with `quick`, else also `/usr/share/doc` and
    /// the Rust toolchain's lib directory; those missing here are left out.
    pub fn real_trees(quick: bool) -> Result<Vec<Spec>> {
        let specs = if quick {
            vec![Spec::python_stdlib()?]
        } else {
            vec![
                Spec::python_stdlib()?,
                Spec::usr_share_doc(),
                Spec::rust_lib(),
            ]
        };
        Ok(specs.into_iter().flatten().collect())
    }

    /// A copy of `/usr/share/doc`; `None` (with a warning) if it is missing.
    pub fn usr_share_doc() -> Option<Spec> {
        let doc = Path::new("/usr/share/doc");
        if !doc.is_dir() {
            eprintln!(
                "warning: {} does not exist; skipping that tree",
                doc.display()
            );
            return None;
        }
        Some(Spec {
            name: "usr-share-doc".into(),
            description: format!("copy of {}", doc.display()),
            source: Source::Copy(doc.into()),
        })
    }

    /// A copy of the `/usr/lib/python3.*` directory with the most files;
    /// `None` (with a warning) if there is none.
    pub fn python_stdlib() -> Result<Option<Spec>> {
        let Some(py) = python_stdlib()? else {
            eprintln!("warning: no /usr/lib/python3.* directory; skipping that tree");
            return Ok(None);
        };
        Ok(Some(Spec {
            name: py
                .file_name()
                .map_or_else(|| "python".into(), |n| n.to_string_lossy().into_owned()),
            description: format!("copy of {}", py.display()),
            source: Source::Copy(py),
        }))
    }

    /// A copy of the `lib` directory of the Rust toolchain `rustc` on `PATH`
    /// belongs to (`$(rustc --print sysroot)/lib`): few files, some of them
    /// shared libraries of 100+ MiB. `None` (with a warning) without rustc.
    pub fn rust_lib() -> Option<Spec> {
        let lib = rust_sysroot().map(|s| s.join("lib")).filter(|l| l.is_dir());
        let Some(lib) = lib else {
            eprintln!(
                "warning: no Rust toolchain (`rustc --print sysroot` failed or has no lib/); \
                 skipping that tree"
            );
            return None;
        };
        Some(Spec {
            name: "rust-lib".into(),
            description: format!("copy of {}", lib.display()),
            source: Source::Copy(lib),
        })
    }

    /// One big (2 GiB, or 256 MiB with `quick`) and three 64 MiB
    /// pseudo-random files.
    pub fn large(quick: bool) -> Spec {
        if quick {
            Self::generated("large-256MiB", 256 * MIB, 3)
        } else {
            Self::generated("large-2GiB", 2048 * MIB, 3)
        }
    }

    /// One 3,904 MiB and four 64 MiB pseudo-random files: a NAR just over
    /// 4 GiB, for checking that memory stays flat past the 32-bit sizes.
    pub fn large_4gib() -> Spec {
        Self::generated("large-4GiB", 3904 * MIB, 4)
    }

    /// One file of `big` bytes and `small` files of 64 MiB, pseudo-random.
    fn generated(name: &str, big: u64, small: usize) -> Spec {
        let mut sizes = vec![big];
        sizes.resize(1 + small, 64 * MIB);
        Spec {
            name: name.into(),
            description: format!(
                "generated: 1 x {} MiB + {small} x 64 MiB pseudo-random files",
                big / MIB
            ),
            source: Source::Large(sizes),
        }
    }

    /// The testkit's kitchen-sink tree: every NAR shape, odd names, deep
    /// nesting.
    pub fn kitchen_sink() -> Spec {
        Spec {
            name: "kitchen-sink".into(),
            description: "generated: cairn_testkit::generated_trees kitchen-sink".into(),
            source: Source::KitchenSink,
        }
    }
}

/// Builds (or reuses) the trees `specs` describe, under `<work_dir>/corpus`.
pub fn prepare(work_dir: &Path, specs: &[Spec], nix_store: &Path) -> Result<Vec<Tree>> {
    let dir = work_dir.join("corpus");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    specs
        .iter()
        .map(|spec| ensure(spec, &dir, nix_store))
        .collect()
}

/// `rustc --print sysroot`, if rustc runs.
fn rust_sysroot() -> Option<PathBuf> {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let path = String::from_utf8(out.stdout).ok()?;
    let path = path.trim();
    (!path.is_empty()).then(|| PathBuf::from(path))
}

/// The `/usr/lib/python3.*` directory with the most files.
fn python_stdlib() -> Result<Option<PathBuf>> {
    let mut best: Option<(u64, PathBuf)> = None;
    let entries = match fs::read_dir("/usr/lib") {
        Ok(e) => e,
        Err(_) => return Ok(None),
    };
    for entry in entries {
        let entry = entry.context("cannot list /usr/lib")?;
        let name = entry.file_name();
        let path = entry.path();
        if !name.to_string_lossy().starts_with("python3.") || !path.is_dir() {
            continue;
        }
        let files = walk(&path)?.files;
        if best.as_ref().is_none_or(|(n, _)| files > *n) {
            best = Some((files, path));
        }
    }
    Ok(best.map(|(_, p)| p))
}

fn ensure(spec: &Spec, dir: &Path, nix_store: &Path) -> Result<Tree> {
    let root = dir.join(&spec.name);
    let nar = dir.join(format!("{}.nar", spec.name));
    let marker = dir.join(format!("{}.complete", spec.name));
    let tree = |stats| Tree {
        name: spec.name.clone(),
        description: spec.description.clone(),
        root: root.clone(),
        nar: nar.clone(),
        stats,
    };
    if let Some(stats) = reusable(spec, &root, &nar, &marker) {
        eprintln!("corpus: reusing {}", root.display());
        return Ok(tree(stats));
    }

    let started = Instant::now();
    eprintln!("corpus: building {} ({})", root.display(), spec.description);
    remove_path(&marker)?;
    remove_path(&root)?;
    remove_path(&nar)?;
    match &spec.source {
        Source::Copy(src) => {
            let source_nar = dir.join(format!("{}.source.nar", spec.name));
            nix_dump_to_file(nix_store, src, &source_nar)?;
            let restored = Command::new(nix_store)
                .arg("--restore")
                .arg(&root)
                .stdin(
                    File::open(&source_nar)
                        .with_context(|| format!("cannot open {}", source_nar.display()))?,
                )
                .status()
                .with_context(|| format!("cannot run {}", nix_store.display()))?;
            if !restored.success() {
                bail!("nix-store --restore {} failed ({restored})", root.display());
            }
            remove_path(&source_nar)?;
        }
        Source::Large(sizes) => {
            fs::create_dir(&root).with_context(|| format!("cannot create {}", root.display()))?;
            for (i, &size) in sizes.iter().enumerate() {
                let name = format!("{i}-{}MiB.bin", size / MIB);
                // One of them executable, so both file kinds are covered.
                write_pseudo_random(&root.join(name), i as u64 + 1, size, i == 1)?;
            }
        }
        Source::KitchenSink => {
            let temp = dir.join(".generated-tmp");
            remove_path(&temp)?;
            fs::create_dir(&temp).with_context(|| format!("cannot create {}", temp.display()))?;
            let roots = cairn_testkit::generated_trees(&temp);
            let sink = roots
                .iter()
                .find(|p| p.file_name().is_some_and(|n| n == "kitchen-sink"))
                .context("cairn_testkit::generated_trees made no kitchen-sink tree")?;
            fs::rename(sink, &root)
                .with_context(|| format!("cannot move {} into place", sink.display()))?;
            remove_path(&temp)?;
        }
    }
    nix_dump_to_file(nix_store, &root, &nar)?;
    let mut stats = walk(&root)?;
    stats.nar_bytes = fs::metadata(&nar)
        .with_context(|| format!("cannot stat {}", nar.display()))?
        .len();
    let record = Marker {
        format: CORPUS_FORMAT,
        description: spec.description.clone(),
        stats: stats.clone(),
    };
    fs::write(&marker, serde_json::to_vec_pretty(&record)?)
        .with_context(|| format!("cannot write {}", marker.display()))?;
    eprintln!(
        "corpus: built {} in {:.1} s",
        spec.name,
        started.elapsed().as_secs_f64()
    );
    Ok(tree(stats))
}

/// The recorded stats, if the tree and its NAR are complete and current.
fn reusable(spec: &Spec, root: &Path, nar: &Path, marker: &Path) -> Option<TreeStats> {
    let recorded: Marker = serde_json::from_slice(&fs::read(marker).ok()?).ok()?;
    let nar_len = fs::metadata(nar).ok()?.len();
    let current = recorded.format == CORPUS_FORMAT
        && recorded.description == spec.description
        && recorded.stats.nar_bytes == nar_len
        && fs::symlink_metadata(root).is_ok();
    current.then_some(recorded.stats)
}

/// `nix-store --dump src > out`.
fn nix_dump_to_file(nix_store: &Path, src: &Path, out: &Path) -> Result<()> {
    let file = File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let status = Command::new(nix_store)
        .arg("--dump")
        .arg(src)
        .stdin(Stdio::null())
        .stdout(file)
        .status()
        .with_context(|| format!("cannot run {}", nix_store.display()))?;
    if !status.success() {
        bail!("nix-store --dump {} failed ({status})", src.display());
    }
    Ok(())
}

/// Writes `len` bytes of `cairn_testkit::pseudo_random_bytes(seed, len)`
/// to `path`, generated and written a chunk at a time.
fn write_pseudo_random(path: &Path, seed: u64, len: u64, executable: bool) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if executable { 0o755 } else { 0o644 })
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let mut rng = XorShift::new(seed);
    let mut buf = vec![0u8; WRITE_CHUNK];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left).map_or(WRITE_CHUNK, |l| l.min(WRITE_CHUNK));
        rng.fill(&mut buf[..n]);
        file.write_all(&buf[..n])
            .with_context(|| format!("cannot write {}", path.display()))?;
        left -= n as u64;
    }
    Ok(())
}

/// The generator behind `cairn_testkit::pseudo_random_bytes`, as a stream.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Fills `buf` with the next bytes of the stream. Only the last call may
    /// pass a length that is not a multiple of 8.
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// Counts what is in the tree at `path`, without following symlinks.
fn walk(path: &Path) -> Result<TreeStats> {
    let mut stats = TreeStats::default();
    walk_into(path, &mut stats)?;
    Ok(stats)
}

fn walk_into(path: &Path, stats: &mut TreeStats) -> Result<()> {
    let meta =
        fs::symlink_metadata(path).with_context(|| format!("cannot stat {}", path.display()))?;
    let ft = meta.file_type();
    if ft.is_dir() {
        stats.directories += 1;
        for entry in
            fs::read_dir(path).with_context(|| format!("cannot list {}", path.display()))?
        {
            let entry = entry.with_context(|| format!("cannot list {}", path.display()))?;
            walk_into(&entry.path(), stats)?;
        }
    } else if ft.is_symlink() {
        stats.symlinks += 1;
    } else if ft.is_file() {
        stats.files += 1;
        stats.file_bytes += meta.len();
        stats.largest_file = stats.largest_file.max(meta.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn streamed_bytes_match_the_testkit() {
        let len = 3 * 1024 * 1024 + 5;
        let expected = cairn_testkit::pseudo_random_bytes(42, len);
        let mut rng = XorShift::new(42);
        let mut got = vec![0u8; len];
        for chunk in got.chunks_mut(4096) {
            rng.fill(chunk);
        }
        assert_eq!(got, expected);
    }

    #[test]
    fn large_trees_keep_their_descriptions() {
        // Markers of trees built before record these; changing them would
        // rebuild the trees.
        assert_eq!(
            Spec::large(true).description,
            "generated: 1 x 256 MiB + 3 x 64 MiB pseudo-random files"
        );
        assert_eq!(
            Spec::large(false).description,
            "generated: 1 x 2048 MiB + 3 x 64 MiB pseudo-random files"
        );
        let Source::Large(sizes) = Spec::large_4gib().source else {
            panic!("large-4GiB is not generated");
        };
        assert_eq!(sizes.len(), 5);
        assert!(sizes.iter().sum::<u64>() > 4 << 30, "{sizes:?}");
    }

    #[test]
    fn generated_file_matches_the_testkit() {
        let dir = crate::harness::test_dir::fresh("corpus");
        let path = dir.join("f");
        let len = WRITE_CHUNK as u64 * 2 + 13;
        write_pseudo_random(&path, 7, len, true).unwrap();
        let expected = cairn_testkit::pseudo_random_bytes(7, len as usize);
        assert_eq!(fs::read(&path).unwrap(), expected);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o755
        );
        fs::remove_dir_all(dir).unwrap();
    }
}
