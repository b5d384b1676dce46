//! `cairn nar …`: NAR archives to and from the local filesystem.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use cairn_nix::hash::{HashAlgo, HashingWriter};
use cairn_nix::nar::{self, Event, NarReader};
use clap::{Args, Subcommand};
use serde::Serialize;

/// Reads are large so that pipes and files are drained in few syscalls.
const IO_BUFFER: usize = 1 << 20;

#[derive(Subcommand)]
pub enum NarCommand {
    /// Write the NAR of a file, directory or symlink to stdout (like `nix-store --dump`).
    Dump(DumpArgs),
    /// Unpack a NAR from stdin into DEST (like `nix-store --restore`).
    ///
    /// The NAR is unpacked into a hidden sibling of DEST and renamed into
    /// place only when it was read completely and found valid: on any error
    /// DEST does not exist afterwards. DEST must not exist beforehand.
    Restore(RestoreArgs),
    /// Print the sha256 of a path's NAR (like `nix-store --query --hash` prints it).
    Hash(HashArgs),
    /// List the contents of a NAR file (like `nix nar ls -lR FILE /`).
    Ls(LsArgs),
}

#[derive(Args)]
pub struct DumpArgs {
    /// The path to archive; a symlink is archived as a symlink, not followed.
    path: PathBuf,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// Where to create the file, directory or symlink the NAR holds.
    dest: PathBuf,
}

#[derive(Args)]
pub struct HashArgs {
    /// The path whose NAR to hash.
    path: PathBuf,
    /// Print the SRI form (`sha256-<base64>`) instead of `sha256:<nixbase32>`.
    #[arg(long)]
    sri: bool,
}

#[derive(Args)]
pub struct LsArgs {
    /// The NAR file to list (`-` for stdin).
    file: PathBuf,
    /// Print the listing as JSON, in the shape of `nix nar ls --json -R` and
    /// of binary caches' `.ls` files (with `narOffset` for regular files).
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: NarCommand) -> Result<()> {
    match cmd {
        NarCommand::Dump(a) => dump(a),
        NarCommand::Restore(a) => restore(a),
        NarCommand::Hash(a) => hash(a),
        NarCommand::Ls(a) => ls(a),
    }
}

fn dump(args: DumpArgs) -> Result<()> {
    let stdout = io::stdout();
    if stdout.is_terminal() {
        bail!("refusing to write a binary NAR to a terminal; redirect stdout to a file or pipe");
    }
    // A plain file handle on fd 1, not Rust's line-buffered stdout: the NAR
    // writer batches small writes itself, and large file contents go
    // file → stdout inside the kernel (sendfile) without a copy.
    let fd = std::os::fd::AsFd::as_fd(&stdout)
        .try_clone_to_owned()
        .context("cannot use stdout")?;
    nar::fs::dump_path_to_file(&args.path, File::from(fd))
        .with_context(|| format!("cannot dump {}", args.path.display()))?;
    Ok(())
}

fn restore(args: RestoreArgs) -> Result<()> {
    let input = BufReader::with_capacity(IO_BUFFER, io::stdin().lock());
    nar::fs::restore_atomically(input, &args.dest)
        .with_context(|| format!("cannot restore NAR into {}", args.dest.display()))
}

fn hash(args: HashArgs) -> Result<()> {
    let sink = BufWriter::with_capacity(IO_BUFFER, HashingWriter::new(HashAlgo::Sha256));
    let sink = nar::fs::dump_path(&args.path, sink)
        .with_context(|| format!("cannot hash {}", args.path.display()))?;
    let (hash, _size) = sink.into_inner().map_err(|e| e.into_error())?.finish();
    super::say(if args.sri {
        hash.to_sri()
    } else {
        hash.to_string()
    })
}

/// A node of the JSON listing, in Nix's key order.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum LsNode {
    Regular {
        size: u64,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        executable: bool,
        #[serde(rename = "narOffset")]
        nar_offset: u64,
    },
    Symlink {
        target: String,
    },
    Directory {
        entries: BTreeMap<String, LsNode>,
    },
}

fn ls(args: LsArgs) -> Result<()> {
    let input: Box<dyn io::Read> = if args.file.as_os_str() == "-" {
        Box::new(io::stdin().lock())
    } else {
        Box::new(
            File::open(&args.file)
                .with_context(|| format!("cannot open {}", args.file.display()))?,
        )
    };
    let mut reader = NarReader::new(BufReader::with_capacity(IO_BUFFER, input));
    let mut out = BufWriter::new(io::stdout().lock());
    let listed = if args.json {
        list_json(&mut reader, &mut out)
    } else {
        list_long(&mut reader, &mut out)
    };
    listed.with_context(|| format!("cannot list {}", args.file.display()))?;
    out.flush()?;
    Ok(())
}

/// Streams `nix nar ls -lR` lines; only the current path is held in memory.
fn list_long(reader: &mut NarReader<impl io::BufRead>, out: &mut impl Write) -> Result<()> {
    let mut path: Vec<Vec<u8>> = Vec::new();
    let mut depth = 0usize;
    let line = |out: &mut dyn Write,
                path: &[Vec<u8>],
                mode: &str,
                size: u64,
                suffix: &[u8]|
     -> io::Result<()> {
        write!(out, "{mode} {size:20} ")?;
        if !path.is_empty() {
            out.write_all(b".")?;
            for p in path {
                out.write_all(b"/")?;
                out.write_all(p)?;
            }
        }
        out.write_all(suffix)?;
        out.write_all(b"\n")
    };
    while let Some(event) = reader.next()? {
        match event {
            Event::Entry { name } => {
                path.push(name);
                continue;
            }
            Event::Directory => {
                if depth > 0 {
                    line(out, &path, "dr-xr-xr-x", 0, b"")?;
                }
                depth += 1;
                continue;
            }
            Event::EndDirectory => depth -= 1,
            Event::File {
                executable, size, ..
            } => {
                let mode = if executable {
                    "-r-xr-xr-x"
                } else {
                    "-r--r--r--"
                };
                line(out, &path, mode, size, b"")?;
            }
            Event::Symlink { target } => {
                line(
                    out,
                    &path,
                    "lrwxrwxrwx",
                    0,
                    &[b" -> ", &target[..]].concat(),
                )?;
            }
        }
        if depth > 0 {
            path.pop();
        }
    }
    Ok(())
}

fn list_json(reader: &mut NarReader<impl io::BufRead>, out: &mut impl Write) -> Result<()> {
    // Directories under construction, innermost last, with the entry name
    // each child will be filed under.
    let mut stack: Vec<(BTreeMap<String, LsNode>, Option<String>)> = Vec::new();
    let mut pending_name: Option<String> = None;
    let mut root = None;
    while let Some(event) = reader.next()? {
        let node = match event {
            Event::Entry { name } => {
                pending_name = Some(String::from_utf8_lossy(&name).into_owned());
                continue;
            }
            Event::Directory => {
                stack.push((BTreeMap::new(), pending_name.take()));
                continue;
            }
            Event::EndDirectory => {
                let (entries, name) = stack.pop().context("unbalanced directory events")?;
                pending_name = name;
                LsNode::Directory { entries }
            }
            Event::File {
                executable,
                size,
                offset,
            } => LsNode::Regular {
                size,
                executable,
                nar_offset: offset,
            },
            Event::Symlink { target } => LsNode::Symlink {
                target: String::from_utf8_lossy(&target).into_owned(),
            },
        };
        match (stack.last_mut(), pending_name.take()) {
            (Some((entries, _)), Some(name)) => {
                entries.insert(name, node);
            }
            _ => root = Some(node),
        }
    }
    let root = root.context("empty NAR")?;
    serde_json::to_writer(&mut *out, &root)?;
    out.write_all(b"\n")?;
    Ok(())
}
