//! `cairn store-path`: the path `nix-store --add` would give a tree.

use std::io::BufWriter;
use std::path::PathBuf;

use anyhow::{Context, Result};
use cairn_nix::hash::{HashAlgo, HashingWriter};
use cairn_nix::nar;
use cairn_nix::store_path::{compute_source_path, References};
use clap::Args;

#[derive(Args)]
pub struct StorePathArgs {
    /// The file, directory or symlink to compute the path of.
    path: PathBuf,
    /// Store path name (default: the last component of PATH, as Nix does).
    #[arg(long)]
    name: Option<String>,
}

pub fn run(args: StorePathArgs) -> Result<()> {
    let name = match &args.name {
        Some(n) => n.clone(),
        None => default_name(&args.path)?,
    };
    let sink = BufWriter::with_capacity(1 << 20, HashingWriter::new(HashAlgo::Sha256));
    let sink = nar::fs::dump_path(&args.path, sink)
        .with_context(|| format!("cannot read {}", args.path.display()))?;
    let (hash, _) = sink.into_inner().map_err(|e| e.into_error())?.finish();
    let path = compute_source_path(&hash.sha256_bytes()?, &References::default(), &name)?;
    super::say(path)?;
    Ok(())
}

/// Nix names an added path after the last component of its absolute path.
fn default_name(path: &std::path::Path) -> Result<String> {
    let abs =
        std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))?;
    let mut clean = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::ParentDir => {
                clean.pop();
            }
            std::path::Component::CurDir => {}
            other => clean.push(other),
        }
    }
    let name = clean
        .file_name()
        .with_context(|| format!("{} has no file name to use; pass --name", path.display()))?;
    name.to_str().map(str::to_owned).with_context(|| {
        format!(
            "{} is not a valid store path name; pass --name",
            path.display()
        )
    })
}
