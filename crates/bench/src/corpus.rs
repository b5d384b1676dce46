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
//! | `dedup-v1` | another copy of the Python stdlib (generated mixed-size files without Python) | storage |
//! | `dedup-v2` | `dedup-v1` after a modelled package update: every 20th file changed, 8 removed, 8 added | storage |
//!
//! Each group picks its trees with the [`Spec`] constructors and hands them
//! to [`prepare`]. System directories are copied (through
//! `nix-store --dump | --restore`), so the corpus does not change under the
//! benchmark when packages do. A tree is built once and reused, by every
//! group, while its marker file `<name>.complete` matches what would be
//! built; delete the work directory to start afresh. A tree derived from
//! another (`dedup-v2`) also records the stats of the tree it was made from,
//! and is rebuilt when those change.

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

/// The first tree of the near-identical pair ([`Spec::near_identical`]).
pub const DEDUP_V1: &str = "dedup-v1";

/// The second tree of the pair: [`DEDUP_V1`] after a modelled update.
pub const DEDUP_V2: &str = "dedup-v2";

/// The update rewrites every this-many-th regular file (in sorted path
/// order, starting with the first): about 5 % of them.
const UPDATE_REWRITE_EVERY: usize = 20;

/// Bytes the update flips in the middle of each rewritten file (it also
/// appends a line).
const UPDATE_FLIPPED_BYTES: usize = 8;

/// Regular files the update removes.
const UPDATE_REMOVED: usize = 8;

/// Sizes of the pseudo-random files the update adds (416 KiB in all).
const UPDATE_ADDED_KIB: [u64; 8] = [8, 16, 24, 32, 48, 64, 96, 128];

/// Seed of the files the update adds (the k-th uses this plus k).
const UPDATE_SEED: u64 = 0xDED0_0002;

/// The stand-in for `dedup-v1` where there is no Python: this many
/// pseudo-random files of mixed sizes…
const MIXED_FILES: usize = 1200;

/// …spread over this many directories…
const MIXED_DIRS: usize = 30;

/// …drawn from this seed.
const MIXED_SEED: u64 = 0xDED0_0001;

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
    /// For a tree derived from another: that tree's stats when this one
    /// was built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base: Option<TreeStats>,
}

enum Source {
    /// A copy of a directory on this machine.
    Copy(PathBuf),
    /// Pseudo-random files of these sizes.
    Large(Vec<u64>),
    /// The testkit's kitchen-sink tree.
    KitchenSink,
    /// [`MIXED_FILES`] pseudo-random files of mixed sizes in [`MIXED_DIRS`]
    /// directories, from [`MIXED_SEED`].
    Mixed,
    /// A copy of the corpus tree of this name (built before it, by the same
    /// [`prepare`]) after the update [`apply_update`] makes.
    Update(String),
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

    /// Two versions of one tree, as a package update makes them, in this
    /// order (hand both to one [`prepare`]: the second is made from the
    /// first):
    ///
    /// - [`DEDUP_V1`]: a copy of the Python standard library (the tree
    ///   [`Spec::python_stdlib`] copies), or where there is none, with a
    ///   note, [`MIXED_FILES`] pseudo-random files of mixed sizes;
    /// - [`DEDUP_V2`]: `dedup-v1` with every 20th regular file, in sorted
    ///   path order, changed (8 bytes in its middle flipped, a line
    ///   appended), 8 files removed and 8 pseudo-random files (416 KiB)
    ///   added.
    ///
    /// Both are the same bytes on every machine with the same source.
    pub fn near_identical() -> Result<Vec<Spec>> {
        let v1 = match python_stdlib()? {
            Some(py) => Spec {
                name: DEDUP_V1.into(),
                description: format!("copy of {}", py.display()),
                source: Source::Copy(py),
            },
            None => {
                eprintln!("note: no /usr/lib/python3.* directory; {DEDUP_V1} is generated instead");
                Spec {
                    name: DEDUP_V1.into(),
                    description: format!(
                        "generated: {MIXED_FILES} pseudo-random files of mixed sizes \
                         in {MIXED_DIRS} directories (seed {MIXED_SEED:#x})"
                    ),
                    source: Source::Mixed,
                }
            }
        };
        let added_kib: u64 = UPDATE_ADDED_KIB.iter().sum();
        let v2 = Spec {
            name: DEDUP_V2.into(),
            description: format!(
                "{DEDUP_V1} updated: every {UPDATE_REWRITE_EVERY}th file in sorted path order \
                 changed ({UPDATE_FLIPPED_BYTES} bytes flipped mid-file, a line appended), \
                 {UPDATE_REMOVED} files removed, {} pseudo-random files ({added_kib} KiB, \
                 seed {UPDATE_SEED:#x}) added",
                UPDATE_ADDED_KIB.len()
            ),
            source: Source::Update(DEDUP_V1.into()),
        };
        Ok(vec![v1, v2])
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
    // A derived tree is current only while its base is what it was made from.
    let base = match &spec.source {
        Source::Update(base) => {
            let recorded =
                read_marker(&dir.join(format!("{base}.complete"))).with_context(|| {
                    format!(
                        "{} is made from the corpus tree {base}, which is not built \
                     (prepare both, {base} first)",
                        spec.name
                    )
                })?;
            Some(recorded.stats)
        }
        _ => None,
    };
    if let Some(stats) = reusable(spec, &root, &nar, &marker, base.as_ref()) {
        eprintln!("corpus: reusing {}", root.display());
        return Ok(tree(stats));
    }

    let started = Instant::now();
    eprintln!("corpus: building {} ({})", root.display(), spec.description);
    remove_path(&marker)?;
    remove_path(&root)?;
    remove_path(&nar)?;
    match &spec.source {
        Source::Copy(src) => copy_tree(nix_store, src, &root, dir, &spec.name)?,
        Source::Update(base) => {
            copy_tree(nix_store, &dir.join(base), &root, dir, &spec.name)?;
            apply_update(&root)?;
        }
        Source::Mixed => write_mixed(&root)?,
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
        base,
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

/// The recorded stats, if the tree and its NAR are complete and current
/// (and, for a derived tree, made from a base with the stats `base`).
fn reusable(
    spec: &Spec,
    root: &Path,
    nar: &Path,
    marker: &Path,
    base: Option<&TreeStats>,
) -> Option<TreeStats> {
    let recorded = read_marker(marker)?;
    let nar_len = fs::metadata(nar).ok()?.len();
    let current = recorded.format == CORPUS_FORMAT
        && recorded.description == spec.description
        && recorded.stats.nar_bytes == nar_len
        && recorded.base.as_ref() == base
        && fs::symlink_metadata(root).is_ok();
    current.then_some(recorded.stats)
}

/// The marker at `path`, if there is a readable one.
fn read_marker(path: &Path) -> Option<Marker> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// Copies the tree `src` to the new path `root`, through
/// `nix-store --dump` into `<dir>/<name>.source.nar` and
/// `nix-store --restore` from it, so that only what a NAR keeps (contents,
/// the executable bit, symlinks) is copied.
fn copy_tree(nix_store: &Path, src: &Path, root: &Path, dir: &Path, name: &str) -> Result<()> {
    let source_nar = dir.join(format!("{name}.source.nar"));
    nix_dump_to_file(nix_store, src, &source_nar)?;
    let restored = Command::new(nix_store)
        .arg("--restore")
        .arg(root)
        .stdin(
            File::open(&source_nar)
                .with_context(|| format!("cannot open {}", source_nar.display()))?,
        )
        .status()
        .with_context(|| format!("cannot run {}", nix_store.display()))?;
    if !restored.success() {
        bail!("nix-store --restore {} failed ({restored})", root.display());
    }
    remove_path(&source_nar)
}

/// Turns the tree at `root` into its next version, as a package update
/// might: of its regular files in sorted path order, every
/// [`UPDATE_REWRITE_EVERY`]th (the first included) gets
/// [`UPDATE_FLIPPED_BYTES`] bytes in its middle flipped and a line
/// appended; [`UPDATE_REMOVED`] others, spread over the tree, are
/// removed; and [`UPDATE_ADDED_KIB`] pseudo-random files are added, each
/// next to a file spread over the tree. The same tree always gets the same
/// changes.
fn apply_update(root: &Path) -> Result<()> {
    let files = sorted_regular_files(root)?;
    let n = files.len();
    if n < UPDATE_REWRITE_EVERY * UPDATE_REMOVED {
        bail!(
            "{} has {n} regular files, too few to update (it needs {})",
            root.display(),
            UPDATE_REWRITE_EVERY * UPDATE_REMOVED
        );
    }
    for (i, rel) in files.iter().enumerate().step_by(UPDATE_REWRITE_EVERY) {
        rewrite_file(&root.join(rel), i)?;
    }
    // Where files are added: next to files spread evenly over the tree
    // (chosen before any is removed).
    let added_dirs: Vec<PathBuf> = (0..UPDATE_ADDED_KIB.len())
        .map(|k| {
            let rel = &files[k * n / UPDATE_ADDED_KIB.len()];
            root.join(rel.parent().unwrap_or(Path::new("")))
        })
        .collect();
    // Removed: files halfway between two rewritten ones, spread evenly.
    let candidates: Vec<usize> = (UPDATE_REWRITE_EVERY / 2..n)
        .step_by(UPDATE_REWRITE_EVERY)
        .collect();
    let stride = (candidates.len() / UPDATE_REMOVED).max(1);
    for &i in candidates.iter().step_by(stride).take(UPDATE_REMOVED) {
        let path = root.join(&files[i]);
        fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    }
    for (k, (dir, kib)) in added_dirs.iter().zip(UPDATE_ADDED_KIB).enumerate() {
        let path = dir.join(format!("cairn-bench-added-{k}.bin"));
        write_pseudo_random(&path, UPDATE_SEED + k as u64, kib * 1024, false)?;
    }
    Ok(())
}

/// Flips [`UPDATE_FLIPPED_BYTES`] bytes in the middle of the file at
/// `path` and appends a line naming `index`; its mode stays as it was.
fn rewrite_file(path: &Path, index: usize) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let start = bytes.len() / 2;
    let end = (start + UPDATE_FLIPPED_BYTES).min(bytes.len());
    for b in &mut bytes[start..end] {
        *b ^= 0x5a;
    }
    bytes.extend_from_slice(format!("\n# cairn-bench dedup-v2: file {index} changed\n").as_bytes());
    let mode = fs::metadata(path)
        .with_context(|| format!("cannot stat {}", path.display()))?
        .permissions()
        .mode();
    let set_mode = |mode: u32| {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot chmod {}", path.display()))
    };
    if mode & 0o200 == 0 {
        set_mode(mode | 0o200)?;
    }
    fs::write(path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
    set_mode(mode)
}

/// The regular files under `root`, relative to it, in sorted path order
/// (by component, byte-wise), so the same on every machine.
fn sorted_regular_files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            let ft = entry
                .file_type()
                .with_context(|| format!("cannot stat {}", entry.path().display()))?;
            let child = rel.join(entry.file_name());
            if ft.is_dir() {
                stack.push(child);
            } else if ft.is_file() {
                files.push(child);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Writes the stand-in for `dedup-v1` at `root`: [`MIXED_FILES`]
/// pseudo-random files in [`MIXED_DIRS`] directories, most of them small
/// (70 % under 8 KiB, 25 % up to 128 KiB, 4 % up to 1 MiB, 1 % up to
/// 2 MiB: about 77 MB in all), every 50th executable, all drawn from
/// [`MIXED_SEED`].
fn write_mixed(root: &Path) -> Result<()> {
    const KIB: u64 = 1024;
    fs::create_dir(root).with_context(|| format!("cannot create {}", root.display()))?;
    let mut rng = XorShift::new(MIXED_SEED);
    for d in 0..MIXED_DIRS {
        let dir = root.join(format!("dir-{d:02}"));
        fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    for i in 0..MIXED_FILES {
        let (low, high) = match rng.next_u64() % 100 {
            0..70 => (64, 8 * KIB),
            70..95 => (8 * KIB, 128 * KIB),
            95..99 => (128 * KIB, MIB),
            _ => (MIB, 2 * MIB),
        };
        let size = low + rng.next_u64() % (high - low);
        let path = root
            .join(format!("dir-{:02}", i % MIXED_DIRS))
            .join(format!("file-{i:04}.bin"));
        write_pseudo_random(&path, MIXED_SEED + 1 + i as u64, size, i % 50 == 0)?;
    }
    Ok(())
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

    /// The next 8 bytes of the stream, as a number.
    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Fills `buf` with the next bytes of the stream. Only the last call may
    /// pass a length that is not a multiple of 8.
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let x = self.next_u64();
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
    fn the_update_is_small_and_deterministic() {
        let dir = crate::harness::test_dir::fresh("update");
        let make = |root: &Path| {
            for i in 0..300u64 {
                let sub = root.join(format!("d{}", i % 7));
                fs::create_dir_all(&sub).unwrap();
                write_pseudo_random(&sub.join(format!("f{i:03}")), i + 1, i * 10, i == 3).unwrap();
            }
            apply_update(root).unwrap();
        };
        let (a, b) = (dir.join("a"), dir.join("b"));
        make(&a);
        make(&b);
        let files = sorted_regular_files(&a).unwrap();
        assert_eq!(files, sorted_regular_files(&b).unwrap());
        assert_eq!(files.len(), 300 - UPDATE_REMOVED + UPDATE_ADDED_KIB.len());
        for rel in &files {
            assert_eq!(
                fs::read(a.join(rel)).unwrap(),
                fs::read(b.join(rel)).unwrap()
            );
        }
        let added: u64 = files
            .iter()
            .filter(|f| f.to_string_lossy().contains("cairn-bench-added-"))
            .map(|f| fs::metadata(a.join(f)).unwrap().len())
            .sum();
        assert_eq!(added, UPDATE_ADDED_KIB.iter().sum::<u64>() * 1024);
        let changed = files
            .iter()
            .filter(|f| {
                let bytes = fs::read(a.join(f)).unwrap();
                bytes.ends_with(b" changed\n")
            })
            .count();
        assert_eq!(changed, 300usize.div_ceil(UPDATE_REWRITE_EVERY));
        fs::remove_dir_all(dir).unwrap();
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
