//! NARs to and from the local filesystem: `nix-store --dump` and
//! `nix-store --restore`, with the restore made all-or-nothing.
//!
//! Only regular files, directories and symlinks are representable; anything
//! else (sockets, devices, fifos) is an error, as in Nix.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::{Event, NarError, NarReader, NarWriteError, NarWriter};

/// A failure while archiving a path.
#[derive(Debug, Error)]
pub enum DumpError {
    /// The filesystem refused something.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file type NAR cannot represent.
    #[error(
        "{0}: unsupported file type (only regular files, directories and symlinks can be archived)"
    )]
    UnsupportedType(PathBuf),
    /// The writer refused (invalid name, changed file, output failure).
    #[error("{path}: {source}")]
    Write {
        /// Where.
        path: PathBuf,
        /// Why.
        source: NarWriteError,
    },
}

/// A failure while unpacking a NAR.
#[derive(Debug, Error)]
pub enum RestoreError {
    /// The NAR is malformed or its source failed.
    #[error(transparent)]
    Nar(#[from] NarError),
    /// The destination already exists.
    #[error("{0}: already exists")]
    Exists(PathBuf),
    /// The filesystem refused something.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> DumpError + '_ {
    move |source| DumpError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes the NAR of `path` (not following a top-level symlink) to `out`.
pub fn dump_path<W: Write>(path: &Path, out: W) -> Result<W, DumpError> {
    let mut writer = NarWriter::new(out);
    dump_node(path, None, &mut writer)?;
    writer.finish().map_err(|source| DumpError::Write {
        path: path.to_owned(),
        source,
    })
}

/// Writes the NAR of `path` to an open file or pipe, letting the kernel
/// move file contents straight into it where it can (sendfile).
pub fn dump_path_to_file(path: &Path, out: File) -> Result<File, DumpError> {
    let fd = std::os::fd::AsFd::as_fd(&out)
        .try_clone_to_owned()
        .map_err(io_at(path))?;
    let mut writer = NarWriter::new(out).with_output_fd(fd);
    dump_node(path, None, &mut writer)?;
    writer.finish().map_err(|source| DumpError::Write {
        path: path.to_owned(),
        source,
    })
}

/// Archives one node. `known` is the type read from the parent directory
/// (d_type), which spares an lstat per entry; the root is lstat'ed.
fn dump_node<W: Write>(
    path: &Path,
    known: Option<fs::FileType>,
    w: &mut NarWriter<W>,
) -> Result<(), DumpError> {
    let ft = match known {
        Some(ft) => ft,
        None => fs::symlink_metadata(path).map_err(io_at(path))?.file_type(),
    };
    let write_err = |source| DumpError::Write {
        path: path.to_owned(),
        source,
    };
    if ft.is_symlink() {
        let target = fs::read_link(path).map_err(io_at(path))?;
        w.symlink(target.as_os_str().as_bytes()).map_err(write_err)
    } else if ft.is_file() {
        // O_NOFOLLOW: if the file was swapped for a symlink since it was
        // listed, fail rather than archive what the link points at. Size
        // and mode come from the opened file itself.
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)
            .map_err(io_at(path))?;
        let meta = file.metadata().map_err(io_at(path))?;
        let executable = meta.mode() & 0o100 != 0;
        w.file_from(executable, meta.len(), &mut file)
            .map_err(write_err)
    } else if ft.is_dir() {
        let mut entries: Vec<(OsString, fs::FileType)> = fs::read_dir(path)
            .map_err(io_at(path))?
            .map(|e| e.and_then(|e| Ok((e.file_name(), e.file_type()?))))
            .collect::<Result<_, _>>()
            .map_err(io_at(path))?;
        entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        w.directory().map_err(write_err)?;
        let mut child = path.to_path_buf();
        for (name, child_type) in entries {
            child.push(&name);
            w.entry(name.as_bytes())
                .map_err(|source| DumpError::Write {
                    path: child.clone(),
                    source,
                })?;
            dump_node(&child, Some(child_type), w)?;
            child.pop();
        }
        w.end_directory().map_err(write_err)
    } else {
        Err(DumpError::UnsupportedType(path.to_owned()))
    }
}

/// Unpacks the NAR read from `source` at `dest`, which must not exist.
///
/// On error, whatever was created is removed again. For a destination that
/// never becomes visible half-written, use [`restore_atomically`].
pub fn restore<R: BufRead>(source: R, dest: &Path) -> Result<(), RestoreError> {
    // Checked first, so the cleanup below only ever removes what we created.
    if fs::symlink_metadata(dest).is_ok() {
        return Err(RestoreError::Exists(dest.to_owned()));
    }
    let result = unpack(NarReader::new(source), dest);
    if result.is_err() {
        remove_tree(dest);
    }
    result
}

/// Unpacks into a hidden temporary sibling of `dest` and renames it into
/// place only once the whole NAR has been read and verified. `dest` never
/// exists in a partial state; on any error it does not exist at all.
pub fn restore_atomically<R: BufRead>(source: R, dest: &Path) -> Result<(), RestoreError> {
    if fs::symlink_metadata(dest).is_ok() {
        return Err(RestoreError::Exists(dest.to_owned()));
    }
    let temp = temp_sibling(dest);
    restore(source, &temp)?;
    publish(&temp, dest).map_err(|err| {
        if err.kind() == io::ErrorKind::AlreadyExists {
            RestoreError::Exists(dest.to_owned())
        } else {
            RestoreError::Io {
                path: dest.to_owned(),
                source: err,
            }
        }
    })
}

/// Renames a completed `temp` tree to `dest`, refusing to replace anything
/// already there (`RENAME_NOREPLACE`); on failure `temp` is removed.
pub fn publish(temp: &Path, dest: &Path) -> io::Result<()> {
    let renamed = rustix::fs::renameat_with(
        rustix::fs::CWD,
        temp,
        rustix::fs::CWD,
        dest,
        rustix::fs::RenameFlags::NOREPLACE,
    );
    renamed.map_err(|errno| {
        remove_tree(temp);
        io::Error::from(errno)
    })
}

/// `<parent>/.<name>.cairn-tmp-<pid>-<n>`: hidden, recognisable, unique per call.
pub fn temp_sibling(dest: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = dest.file_name().unwrap_or(OsStr::new("restore"));
    let mut temp_name = OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".cairn-tmp-{}-{n}", std::process::id()));
    dest.with_file_name(temp_name)
}

/// Removes a file, symlink or directory tree, ignoring errors (cleanup only).
pub fn remove_tree(path: &Path) {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            let _ = fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = fs::remove_file(path);
        }
        Err(_) => {}
    }
}

fn unpack<R: BufRead>(mut nar: NarReader<R>, dest: &Path) -> Result<(), RestoreError> {
    let io_at = |path: &Path| {
        let path = path.to_owned();
        move |source| RestoreError::Io { path, source }
    };
    let mut path = dest.to_path_buf();
    let mut depth = 0usize;
    while let Some(event) = nar.next()? {
        match event {
            Event::Entry { name } => {
                path.push(OsStr::from_bytes(&name));
                continue;
            }
            Event::Directory => {
                fs::create_dir(&path).map_err(io_at(&path))?;
                depth += 1;
                continue;
            }
            Event::EndDirectory => depth -= 1,
            Event::Symlink { target } => {
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .map_err(io_at(&path))?;
            }
            Event::File { executable, .. } => {
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o666)
                    .open(&path)
                    .map_err(io_at(&path))?;
                copy_contents(&mut nar, &mut file).map_err(|e| match e {
                    CopyError::Nar(e) => RestoreError::Nar(e),
                    CopyError::Write(source) => RestoreError::Io {
                        path: path.clone(),
                        source,
                    },
                })?;
                if executable {
                    // As nix-store --restore: execute for everyone, whatever the umask.
                    let mode = file.metadata().map_err(io_at(&path))?.permissions().mode();
                    file.set_permissions(fs::Permissions::from_mode(mode | 0o111))
                        .map_err(io_at(&path))?;
                }
            }
        }
        // A node inside a directory just ended: leave its entry.
        if depth > 0 {
            path.pop();
        }
    }
    Ok(())
}

enum CopyError {
    Nar(NarError),
    Write(io::Error),
}

/// Copies the current file's contents straight from the reader's buffer.
fn copy_contents<R: BufRead>(nar: &mut NarReader<R>, out: &mut File) -> Result<(), CopyError> {
    let mut contents = nar.contents();
    loop {
        let chunk = contents.fill_buf().map_err(|e| CopyError::Nar(e.into()))?;
        if chunk.is_empty() {
            return Ok(());
        }
        let n = chunk.len();
        out.write_all(chunk).map_err(CopyError::Write)?;
        contents.consume(n);
    }
}
