//! `cairn castore …`: the content-addressed layer directly, without Nix.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use cairn_castore::import::{self, Progress};
use cairn_castore::{B3Digest, Node};
use clap::{Args, Subcommand};
use futures::TryStreamExt;
use serde_json::json;

use crate::progress::Bar;
use crate::services::ServiceArgs;

#[derive(Subcommand)]
pub enum CastoreCommand {
    /// Import a file, directory or symlink (or a tar archive with --tar) and print its root node.
    ///
    /// Identical files and directories are stored once, whatever their names.
    Import(ImportArgs),
    /// Write a stored directory (or, with --file, a blob) to DEST, which must not exist.
    Export(ExportArgs),
    /// Show what the store holds under a digest: a blob with its chunks, a directory with its entries.
    Stat(StatArgs),
    /// Check every stored object against its digest (like `git fsck`); exits 1 on any problem.
    Verify(VerifyArgs),
}

#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    services: ServiceArgs,
}

#[derive(Args)]
pub struct ImportArgs {
    /// What to import.
    path: PathBuf,
    /// PATH is a tar archive (plain, gzip, xz or zstd; `-` for stdin) to import as a directory.
    #[arg(long)]
    tar: bool,
    /// Print the node as JSON: {"type", "digest", "size"} plus "executable" or "target".
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    services: ServiceArgs,
}

#[derive(Args)]
pub struct ExportArgs {
    /// Digest of a directory (or of a blob with --file): b3:<base64>, hex or nixbase32.
    digest: B3Digest,
    /// Where to create it.
    dest: PathBuf,
    /// DIGEST is a blob: write it as a regular file.
    #[arg(long)]
    file: bool,
    /// With --file: make the file executable.
    #[arg(long, requires = "file")]
    executable: bool,
    #[command(flatten)]
    services: ServiceArgs,
}

#[derive(Args)]
pub struct StatArgs {
    /// The digest to look up.
    digest: B3Digest,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    services: ServiceArgs,
}

pub fn run(cmd: CastoreCommand) -> Result<()> {
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async {
        match cmd {
            CastoreCommand::Import(a) => import_cmd(a).await,
            CastoreCommand::Export(a) => export_cmd(a).await,
            CastoreCommand::Stat(a) => stat_cmd(a).await,
            CastoreCommand::Verify(a) => verify_cmd(a).await,
        }
    })
}

/// The JSON shape of a node, shared with other commands that print nodes.
pub fn node_json(node: &Node) -> serde_json::Value {
    match node {
        Node::Directory { digest, size } => {
            json!({"type": "directory", "digest": digest.to_string(), "size": size})
        }
        Node::File {
            digest,
            size,
            executable,
        } => {
            json!({"type": "file", "digest": digest.to_string(), "size": size, "executable": executable})
        }
        Node::Symlink { target } => {
            json!({"type": "symlink", "target": String::from_utf8_lossy(target.as_bytes())})
        }
    }
}

fn node_line(node: &Node) -> String {
    match node {
        Node::Directory { digest, size } => format!("directory {digest} size {size}"),
        Node::File {
            digest,
            size,
            executable,
        } => format!(
            "file {digest} size {size}{}",
            if *executable { " executable" } else { "" }
        ),
        Node::Symlink { target } => {
            format!("symlink -> {}", String::from_utf8_lossy(target.as_bytes()))
        }
    }
}

async fn import_cmd(a: ImportArgs) -> Result<()> {
    let s = a.services.open()?;
    let bar = Arc::new(Bar::new("importing"));
    let node = if a.tar {
        let source: Box<dyn std::io::Read + Send> = if a.path.as_os_str() == "-" {
            Box::new(std::io::stdin())
        } else {
            Box::new(
                std::fs::File::open(&a.path)
                    .with_context(|| format!("cannot open {}", a.path.display()))?,
            )
        };
        import::tar::import_tar(
            s.blobs.clone(),
            s.dirs.as_ref(),
            source,
            bar.clone() as Arc<dyn Progress>,
        )
        .await
    } else {
        import::fs::import_path(s.blobs.clone(), s.dirs.as_ref(), &a.path, bar.as_ref()).await
    }
    .with_context(|| format!("cannot import {}", a.path.display()))?;
    bar.finish();
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", node_json(&node))?;
    } else {
        writeln!(out, "{}", node_line(&node))?;
    }
    Ok(())
}

async fn export_cmd(a: ExportArgs) -> Result<()> {
    let s = a.services.open_existing()?;
    let node = if a.file {
        let chunks = s.blobs.chunks(&a.digest).await?;
        if chunks.is_none() {
            bail!("blob {} is not in the store", a.digest);
        }
        let mut r = s
            .blobs
            .open_read(&a.digest)
            .await?
            .context("blob vanished")?;
        let size = tokio::io::copy(&mut r, &mut tokio::io::sink())
            .await
            .map_err(cairn_castore::Error::from_io)
            .with_context(|| format!("cannot read blob {}", a.digest))?;
        Node::File {
            digest: a.digest,
            size,
            executable: a.executable,
        }
    } else {
        let dir = s.dirs.get(&a.digest).await?.with_context(|| {
            format!(
                "directory {} is not in the store (use --file for a blob)",
                a.digest
            )
        })?;
        Node::Directory {
            digest: a.digest,
            size: dir.size(s.dirs.size_rule())?,
        }
    };
    cairn_castore::export::export_node(s.blobs.as_ref(), s.dirs.as_ref(), &node, &a.dest)
        .await
        .with_context(|| format!("cannot export {} to {}", a.digest, a.dest.display()))
}

async fn stat_cmd(a: StatArgs) -> Result<()> {
    let s = a.services.open_existing()?;
    let mut found = false;
    let mut report = serde_json::Map::new();
    let mut out = std::io::stdout().lock();
    if let Some(chunks) = s.blobs.chunks(&a.digest).await? {
        found = true;
        let size: u64 = if chunks.is_empty() {
            let mut r = s
                .blobs
                .open_read(&a.digest)
                .await?
                .context("blob vanished")?;
            tokio::io::copy(&mut r, &mut tokio::io::sink())
                .await
                .map_err(cairn_castore::Error::from_io)?
        } else {
            chunks.iter().map(|c| c.size).sum()
        };
        if a.json {
            let list: Vec<_> = chunks
                .iter()
                .map(|c| json!({"digest": c.digest.to_string(), "size": c.size}))
                .collect();
            report.insert("blob".into(), json!({"size": size, "chunks": list}));
        } else {
            writeln!(out, "blob {} size {size} chunks {}", a.digest, chunks.len())?;
            for c in &chunks {
                writeln!(out, "  chunk {} size {}", c.digest, c.size)?;
            }
        }
    }
    if let Some(dir) = s.dirs.get(&a.digest).await? {
        found = true;
        let closure: Vec<_> = s.dirs.get_recursive(&a.digest).try_collect().await?;
        if a.json {
            let entries: serde_json::Map<String, serde_json::Value> = dir
                .entries()
                .map(|(n, node)| (n.to_string(), node_json(node)))
                .collect();
            report.insert(
                "directory".into(),
                json!({"size": dir.size(s.dirs.size_rule())?, "directories_in_closure": closure.len(), "entries": entries}),
            );
        } else {
            writeln!(
                out,
                "directory {} entries {} size {} directories in closure {}",
                a.digest,
                dir.len(),
                dir.size(s.dirs.size_rule())?,
                closure.len()
            )?;
            for (name, node) in dir.entries() {
                writeln!(out, "  {name}: {}", node_line(node))?;
            }
        }
    }
    if !found {
        bail!(
            "{} is neither a blob nor a directory in the store",
            a.digest
        );
    }
    if a.json {
        writeln!(out, "{}", serde_json::Value::Object(report))?;
    }
    Ok(())
}

async fn verify_cmd(a: VerifyArgs) -> Result<()> {
    let s = a.services.open_existing()?;
    let blobs = s.blobs.verify_all().await.context("cannot verify blobs")?;
    let dirs = s
        .dirs
        .verify_all()
        .await
        .context("cannot verify directories")?;
    let mut out = std::io::stdout().lock();
    for p in blobs.problems.iter().chain(&dirs.problems) {
        writeln!(out, "{p}")?;
    }
    writeln!(
        out,
        "checked {} blob objects and {} directories: {} problems",
        blobs.checked,
        dirs.checked,
        blobs.problems.len() + dirs.problems.len()
    )?;
    if !blobs.problems.is_empty() || !dirs.problems.is_empty() {
        bail!(
            "the store has {} damaged objects",
            blobs.problems.len() + dirs.problems.len()
        );
    }
    Ok(())
}
