//! `cairn key …`: binary-cache signing keys in Nix's format.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cairn_nix::SigningKey;
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Create a key pair (like `nix-store --generate-binary-cache-key`).
    ///
    /// Writes the secret key (mode 0600) and the public key, and prints the
    /// public key, ready for nix.conf's `trusted-public-keys`.
    Generate(GenerateArgs),
}

#[derive(Args)]
pub struct GenerateArgs {
    /// Key name, conventionally the cache's host name plus a number (`cache.example.org-1`).
    name: String,
    /// Where to write the secret key [default: ./NAME.secret]
    #[arg(long)]
    secret_key_file: Option<PathBuf>,
    /// Where to write the public key [default: ./NAME.public]
    #[arg(long)]
    public_key_file: Option<PathBuf>,
    /// Overwrite existing key files.
    #[arg(long)]
    force: bool,
}

pub fn run(cmd: KeyCommand) -> Result<()> {
    match cmd {
        KeyCommand::Generate(a) => generate(a),
    }
}

fn write_key(path: &Path, contents: &str, mode: u32, force: bool) -> Result<()> {
    let mut opts = OpenOptions::new();
    opts.write(true).mode(mode);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts.open(path).with_context(|| {
        format!(
            "cannot create {} (use --force to overwrite)",
            path.display()
        )
    })?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn generate(args: GenerateArgs) -> Result<()> {
    let key = SigningKey::generate(&args.name)?;
    let secret = args
        .secret_key_file
        .unwrap_or_else(|| PathBuf::from(format!("{}.secret", args.name)));
    let public = args
        .public_key_file
        .unwrap_or_else(|| PathBuf::from(format!("{}.public", args.name)));
    let public_text = key.verifying_key().to_string();
    write_key(&secret, &key.to_secret_string(), 0o600, args.force)?;
    write_key(&public, &public_text, 0o644, args.force)?;
    super::say(public_text)?;
    Ok(())
}

/// Reads a secret key file (`cairn key generate` or `nix-store
/// --generate-binary-cache-key` output).
pub fn read_secret_key(path: &Path) -> Result<SigningKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    SigningKey::parse(text.trim())
        .with_context(|| format!("{} is not a secret key", path.display()))
}
