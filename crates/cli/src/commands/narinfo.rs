//! `cairn narinfo …`: sign and verify narinfo files of a binary cache.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cairn_nix::{NarInfo, VerifyingKey};
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum NarinfoCommand {
    /// Add a signature to narinfo files, rewriting each in place (atomically).
    Sign(SignArgs),
    /// Check that each narinfo carries a valid signature by a trusted key.
    ///
    /// Prints one line per file; exits with status 1 if any file has none.
    Verify(VerifyArgs),
}

#[derive(Args)]
pub struct SignArgs {
    /// Secret key file (as written by `cairn key generate` or `nix-store --generate-binary-cache-key`).
    #[arg(long)]
    key_file: PathBuf,
    /// narinfo files to sign.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// A trusted public key `name:base64`; repeat for several.
    #[arg(long = "trusted-public-key", required = true)]
    keys: Vec<String>,
    /// narinfo files to check.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub fn run(cmd: NarinfoCommand) -> Result<()> {
    match cmd {
        NarinfoCommand::Sign(a) => sign(a),
        NarinfoCommand::Verify(a) => verify(a),
    }
}

fn read_narinfo(path: &Path) -> Result<NarInfo> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    NarInfo::parse(&text).with_context(|| format!("{} is not a valid narinfo", path.display()))
}

fn sign(args: SignArgs) -> Result<()> {
    let key = super::key::read_secret_key(&args.key_file)?;
    for path in &args.files {
        let mut info = read_narinfo(path)?;
        info.sign(&key);
        let tmp = path.with_extension("narinfo.cairn-tmp");
        std::fs::write(&tmp, info.to_string())
            .and_then(|()| std::fs::rename(&tmp, path))
            .with_context(|| format!("cannot rewrite {}", path.display()))?;
    }
    Ok(())
}

fn verify(args: VerifyArgs) -> Result<()> {
    let keys = args
        .keys
        .iter()
        .map(|k| VerifyingKey::parse(k).with_context(|| format!("invalid public key {k:?}")))
        .collect::<Result<Vec<_>>>()?;
    let mut failures = 0;
    for path in &args.files {
        let info = read_narinfo(path)?;
        let good: Vec<String> = info
            .valid_signatures(&keys)
            .map(|s| s.name().to_owned())
            .collect();
        if good.is_empty() {
            failures += 1;
            super::say(format_args!(
                "{}: no valid signature from a trusted key",
                path.display()
            ))?;
        } else {
            super::say(format_args!(
                "{}: signed by {}",
                path.display(),
                good.join(", ")
            ))?;
        }
    }
    if failures > 0 {
        bail!(
            "{failures} of {} narinfo files lack a trusted signature",
            args.files.len()
        );
    }
    Ok(())
}
