//! The main jobs on store paths: `cairn import`, `import-nar`, `export`,
//! `path-info`, `ls`, `cat` and `sign`. Each parses its arguments, opens
//! the store and calls one `cairn_store::Store` method; the work and the
//! checks live there.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use cairn_castore::import::NoProgress;
use cairn_castore::Node;
use cairn_nix::hash::NixHash;
use cairn_nix::narinfo::NarInfo;
use cairn_nix::StorePath;
use cairn_store::compression::{self, Compression};
use cairn_store::{NarDescription, PathInfo, Store};
use clap::Args;
use futures::{Stream, StreamExt, TryStreamExt};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncRead, AsyncWriteExt};

use crate::progress::Bar;
use crate::services::ServiceArgs;

#[derive(Args)]
pub struct ImportArgs {
    /// Files, directories or symlinks to add, each as its own store path.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// The store path name [default: each PATH's file name].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    #[command(flatten)]
    services: ServiceArgs,
}

#[derive(Args)]
pub struct ImportNarArgs {
    /// The NAR: a file (plain or compressed with xz, zstd, bzip2 or gzip,
    /// recognised by its first bytes) or `-` for stdin. With --narinfo it
    /// may be left out: the narinfo's URL is then read relative to the
    /// narinfo's directory, as in a `file://` binary cache.
    #[arg(value_name = "FILE")]
    nar: Option<PathBuf>,
    /// Add it as the source path NAME (what `nix-store --add` of the tree
    /// in the NAR gives).
    #[arg(
        long,
        value_name = "NAME",
        conflicts_with = "narinfo",
        required_unless_present = "narinfo"
    )]
    name: Option<String>,
    /// Take the store path, references, signatures, deriver and CA from this
    /// narinfo, and check the NAR against its NarHash and NarSize. Every
    /// reference must already be in the store.
    #[arg(long, value_name = "FILE")]
    narinfo: Option<PathBuf>,
    #[command(flatten)]
    services: ServiceArgs,
}

#[derive(Args)]
pub struct ExportArgs {
    /// The store path (`/nix/store/…` or its base name).
    #[arg(value_name = "STORE-PATH")]
    path: String,
    /// Write the tree to DEST (which must not exist) instead of the NAR to stdout.
    #[arg(long, value_name = "DEST")]
    to: Option<PathBuf>,
    #[command(flatten)]
    services: ServiceArgs,
}

#[derive(Args)]
pub struct PathInfoArgs {
    /// Store paths (`/nix/store/…` or base names).
    #[arg(required = true, value_name = "STORE-PATH")]
    paths: Vec<String>,
    /// Print a JSON array in the shape of `nix path-info --json`.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    services: ServiceArgs,
}

#[derive(Args)]
pub struct LsArgs {
    /// A store path, optionally followed by a path inside it.
    #[arg(value_name = "STORE-PATH[/SUB]")]
    path: String,
    /// List subdirectories too.
    #[arg(short = 'R', long)]
    recursive: bool,
    /// Print JSON in the shape of Nix's NAR listings.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    services: ServiceArgs,
}

#[derive(Args)]
pub struct CatArgs {
    /// A regular file inside a store path.
    #[arg(value_name = "STORE-PATH/FILE")]
    path: String,
    #[command(flatten)]
    services: ServiceArgs,
}

#[derive(Args)]
pub struct SignArgs {
    /// Secret key file, as written by `cairn key generate` or `nix key generate-secret`.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// Store paths to sign.
    #[arg(required = true, value_name = "STORE-PATH")]
    paths: Vec<String>,
    #[command(flatten)]
    services: ServiceArgs,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("cannot start the async runtime")
}

/// Parses `/nix/store/<hash>-<name>[/sub]` or `<hash>-<name>[/sub]`.
fn parse_path(arg: &str) -> Result<(StorePath, String)> {
    if arg.starts_with('/') {
        let (p, sub) = StorePath::split_absolute_path(arg)
            .with_context(|| format!("{arg:?} is not a store path"))?;
        return Ok((p, sub.to_owned()));
    }
    let (base, sub) = arg.split_once('/').unwrap_or((arg, ""));
    let p =
        StorePath::from_base_name(base).with_context(|| format!("{arg:?} is not a store path"))?;
    Ok((p, sub.trim_matches('/').to_owned()))
}

pub(crate) fn whole_path(arg: &str) -> Result<StorePath> {
    let (p, sub) = parse_path(arg)?;
    if !sub.is_empty() {
        bail!("{arg:?}: expected a store path, not a path inside one");
    }
    Ok(p)
}

pub fn import(a: ImportArgs) -> Result<()> {
    if a.name.is_some() && a.paths.len() > 1 {
        bail!(
            "--name applies to one PATH, but {} were given",
            a.paths.len()
        );
    }
    let store = a.services.open_store()?;
    runtime()?.block_on(async {
        let mut out = std::io::stdout().lock();
        for path in &a.paths {
            let name = match &a.name {
                Some(n) => n.clone(),
                None => default_name(path)?,
            };
            let bar = Bar::bytes_unknown_total(&format!("adding {name}"));
            let info = store
                .import_tree(path, &name, &bar)
                .await
                .with_context(|| format!("cannot add {}", path.display()))?;
            bar.finish();
            writeln!(out, "{}", info.store_path)
                .and_then(|()| out.flush())
                .context("cannot write to standard output")?;
        }
        Ok(())
    })
}

/// What `nix-store --add` names a path: its last component.
fn default_name(path: &Path) -> Result<String> {
    let absolute =
        std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))?;
    let name = absolute
        .file_name()
        .with_context(|| format!("{} has no file name; give one with --name", path.display()))?;
    name.to_str().map(str::to_owned).with_context(|| {
        format!(
            "{} is not valid UTF-8; give a name with --name",
            path.display()
        )
    })
}

/// Owned pieces of a NAR, as read.
type Pieces = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// A NAR file (or stdin) read on a thread of its own, in owned pieces
/// counted into a progress bar. tokio's file and stdin types would hop to
/// the blocking pool for every read.
struct NarInput {
    /// What the first bytes say the input is.
    sniffed: Option<Compression>,
    pieces: Pieces,
}

impl NarInput {
    async fn open(path: &Path, bar: Arc<Bar>) -> Result<NarInput> {
        let raw = if path.as_os_str() == "-" {
            cairn_store::read_pieces_on_thread(std::io::stdin()).left_stream()
        } else {
            let f = std::fs::File::open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            if let Ok(meta) = f.metadata() {
                bar.set_total(meta.len());
            }
            cairn_store::read_pieces_on_thread(f).right_stream()
        };
        // Fused: after an empty input's end, the chain below asks once more.
        let mut counted = raw
            .inspect_ok(move |piece| bar.advance(piece.len() as u64))
            .fuse();
        // A piece is all of the input or 256 KiB of it: enough to sniff.
        let first = counted
            .try_next()
            .await
            .with_context(|| format!("cannot read {}", path.display()))?
            .unwrap_or_default();
        let sniffed = Compression::sniff(&first);
        let pieces = futures::stream::iter([Ok(first)]).chain(counted);
        Ok(NarInput {
            sniffed,
            pieces: Box::pin(pieces),
        })
    }

    /// The plain NAR's pieces, or `None` if `compression` (or, when not
    /// given, the first bytes) says it must be decompressed first.
    fn into_plain(self, compression: Option<Compression>) -> Result<Pieces, NarInput> {
        match compression.or(self.sniffed) {
            Some(Compression::None) => Ok(self.pieces),
            _ => Err(self),
        }
    }

    /// The NAR, decompressed as `compression` (or the first bytes) says;
    /// input in no known format is passed on as it is, for the NAR parser
    /// to reject.
    fn into_reader(self, compression: Option<Compression>) -> Box<dyn AsyncRead + Unpin + Send> {
        let found = compression.or(self.sniffed).unwrap_or(Compression::None);
        // Already buffered: it lends out each piece in turn.
        compression::decoder(tokio_util::io::StreamReader::new(self.pieces), found)
    }
}

pub fn import_nar(a: ImportNarArgs) -> Result<()> {
    let store = a.services.open_store()?;
    runtime()?.block_on(async {
        let bar = Arc::new(Bar::bytes_unknown_total("reading NAR"));
        let info = match &a.narinfo {
            None => {
                let name = a.name.as_deref().context("--name or --narinfo is required")?;
                let file = a.nar.clone().unwrap_or_else(|| PathBuf::from("-"));
                let added = match NarInput::open(&file, bar.clone()).await?.into_plain(None) {
                    Ok(pieces) => {
                        store
                            .import_nar_pieces_as_source(pieces, name, &NoProgress)
                            .await
                    }
                    Err(input) => {
                        store
                            .import_nar_as_source(input.into_reader(None), name, &NoProgress)
                            .await
                    }
                };
                added.with_context(|| format!("cannot add the NAR {}", file.display()))?
            }
            Some(narinfo_path) => {
                let text = std::fs::read_to_string(narinfo_path)
                    .with_context(|| format!("cannot read {}", narinfo_path.display()))?;
                let narinfo = NarInfo::parse(&text)
                    .with_context(|| format!("{} is not a valid narinfo", narinfo_path.display()))?;
                let (file, compression) = match &a.nar {
                    Some(f) => (f.clone(), None),
                    None => {
                        let base = narinfo_path.parent().unwrap_or(Path::new("."));
                        let url = &narinfo.url;
                        if url.contains("://") || url.starts_with('/') || url.split('/').any(|c| c == "..") {
                            bail!(
                                "{}: URL {url:?} is not a path inside the cache directory; give the NAR file as an argument",
                                narinfo_path.display()
                            );
                        }
                        let c = narinfo
                            .compression
                            .as_deref()
                            .unwrap_or("bzip2")
                            .parse::<Compression>()?;
                        (base.join(url), Some(c))
                    }
                };
                let desc = NarDescription::from(&narinfo);
                let added = match NarInput::open(&file, bar.clone())
                    .await?
                    .into_plain(compression)
                {
                    Ok(pieces) => store.import_nar_pieces(pieces, desc, &NoProgress).await,
                    Err(input) => {
                        let nar = input.into_reader(compression);
                        store.import_nar(nar, desc, &NoProgress).await
                    }
                };
                added.with_context(|| format!("cannot import {}", narinfo_path.display()))?
            }
        };
        bar.finish();
        super::say(&info.store_path)?;
        Ok(())
    })
}

pub fn export(a: ExportArgs) -> Result<()> {
    let path = whole_path(&a.path)?;
    if a.to.is_none() && std::io::stdout().is_terminal() {
        bail!("refusing to write a binary NAR to a terminal; redirect stdout, or use --to DEST to write the tree");
    }
    let store = a.services.open_existing_store()?;
    runtime()?.block_on(async {
        match &a.to {
            Some(dest) => {
                let info = store.path_info(&path).await?;
                cairn_castore::export::export_node(
                    store.blobs.as_ref(),
                    store.dirs.as_ref(),
                    &info.node,
                    dest,
                )
                .await
                .with_context(|| format!("cannot export {path} to {}", dest.display()))
            }
            None => {
                let (_, layout) = store.nar_layout(&path).await?;
                // A plain file handle on fd 1, written by a thread of its
                // own: tokio's stdout would hop to the blocking pool and
                // copy for every write.
                let stdout = std::io::stdout();
                let fd = std::os::fd::AsFd::as_fd(&stdout)
                    .try_clone_to_owned()
                    .context("cannot use stdout")?;
                let mut sink = cairn_store::ThreadWriterSink::new(std::fs::File::from(fd))?;
                let rendered = layout
                    .render_range(store.blobs.as_ref(), 0..layout.size(), &mut sink)
                    .await;
                let written = sink.finish().await;
                rendered.with_context(|| format!("cannot export {path}"))?;
                written.with_context(|| format!("cannot export {path}"))?;
                Ok(())
            }
        }
    })
}

fn nar_hash(info: &PathInfo) -> NixHash {
    NixHash::sha256(info.nar_sha256)
}

/// The object `nix path-info --json` prints for a valid path.
fn path_info_json(info: &PathInfo) -> Value {
    let mut refs: Vec<String> = info
        .references
        .iter()
        .map(StorePath::to_absolute_path)
        .collect();
    refs.sort();
    let mut o = Map::new();
    o.insert("path".into(), json!(info.store_path.to_absolute_path()));
    o.insert(
        "narHash".into(),
        json!(nar_hash(info).to_nix_base32_string()),
    );
    o.insert("narSize".into(), json!(info.nar_size));
    o.insert("references".into(), json!(refs));
    if let Some(ca) = &info.ca {
        o.insert("ca".into(), json!(ca.to_string()));
    }
    if let Some(d) = &info.deriver {
        o.insert("deriver".into(), json!(d.to_absolute_path()));
    }
    if !info.signatures.is_empty() {
        let sigs: Vec<String> = info.signatures.iter().map(ToString::to_string).collect();
        o.insert("signatures".into(), json!(sigs));
    }
    Value::Object(o)
}

fn path_info_text(info: &PathInfo, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "StorePath: {}", info.store_path)?;
    writeln!(out, "NarHash: {}", nar_hash(info).to_nix_base32_string())?;
    writeln!(out, "NarSize: {}", info.nar_size)?;
    let mut refs: Vec<String> = info.references.iter().map(StorePath::base_name).collect();
    refs.sort();
    writeln!(out, "References: {}", refs.join(" "))?;
    if let Some(d) = &info.deriver {
        writeln!(out, "Deriver: {}", d.base_name())?;
    }
    for s in &info.signatures {
        writeln!(out, "Sig: {s}")?;
    }
    if let Some(ca) = &info.ca {
        writeln!(out, "CA: {ca}")?;
    }
    let root = match &info.node {
        Node::Directory { digest, .. } => format!("directory {digest}"),
        Node::File { digest, .. } => format!("file {digest}"),
        Node::Symlink { .. } => "symlink".to_owned(),
    };
    writeln!(out, "Root: {root}")
}

pub fn path_info(a: PathInfoArgs) -> Result<()> {
    let paths: Vec<StorePath> = a
        .paths
        .iter()
        .map(|p| whole_path(p))
        .collect::<Result<_>>()?;
    let store = a.services.open_existing_store()?;
    runtime()?.block_on(async {
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for p in &paths {
            match store.path_infos.get(p.digest()).await? {
                Some(info) => found.push(Ok(info)),
                None => {
                    missing.push(p.to_absolute_path());
                    found.push(Err(p.clone()));
                }
            }
        }
        let mut out = std::io::stdout().lock();
        if a.json {
            let list: Vec<Value> = found
                .iter()
                .map(|r| match r {
                    Ok(info) => path_info_json(info),
                    Err(p) => json!({"path": p.to_absolute_path(), "valid": false}),
                })
                .collect();
            writeln!(out, "{}", Value::Array(list))?;
        } else {
            let mut first = true;
            for info in found.iter().flatten() {
                if !first {
                    writeln!(out)?;
                }
                first = false;
                path_info_text(info, &mut out)?;
            }
        }
        out.flush()?;
        if !missing.is_empty() {
            bail!("not in the store: {}", missing.join(" "));
        }
        Ok(())
    })
}

/// One `ls` line, as `nix store ls -l` prints it.
fn ls_line(out: &mut impl Write, name: &str, node: &Node) -> std::io::Result<()> {
    match node {
        Node::Directory { .. } => writeln!(out, "dr-xr-xr-x {:>20} {name}", 0),
        Node::File {
            size, executable, ..
        } => {
            let mode = if *executable {
                "-r-xr-xr-x"
            } else {
                "-r--r--r--"
            };
            writeln!(out, "{mode} {size:>20} {name}")
        }
        Node::Symlink { target } => writeln!(
            out,
            "lrwxrwxrwx {:>20} {name} -> {}",
            0,
            String::from_utf8_lossy(target.as_bytes())
        ),
    }
}

/// A directory a store path's tree refers to (missing: a damaged store).
async fn directory(
    store: &Store,
    digest: &cairn_castore::B3Digest,
) -> Result<cairn_castore::Directory> {
    store
        .dirs
        .get(digest)
        .await?
        .with_context(|| format!("directory {digest} is missing from the store"))
}

async fn listing_json(store: &Store, node: &Node, recursive: bool, depth: usize) -> Result<Value> {
    Ok(match node {
        Node::File {
            size, executable, ..
        } => {
            let mut o = json!({"type": "regular", "size": size});
            if *executable {
                o["executable"] = json!(true);
            }
            o
        }
        Node::Symlink { target } => {
            json!({"type": "symlink", "target": String::from_utf8_lossy(target.as_bytes())})
        }
        Node::Directory { digest, .. } => {
            if depth > 0 && !recursive {
                return Ok(json!({"type": "directory"}));
            }
            let dir = directory(store, digest).await?;
            let mut entries = Map::new();
            for (name, child) in dir.entries() {
                let v = Box::pin(listing_json(store, child, recursive, depth + 1)).await?;
                entries.insert(name.to_string(), v);
            }
            json!({"type": "directory", "entries": entries})
        }
    })
}

async fn list_long(
    store: &Store,
    node: &Node,
    prefix: &str,
    recursive: bool,
    out: &mut impl Write,
) -> Result<()> {
    let Node::Directory { digest, .. } = node else {
        ls_line(out, prefix, node)?;
        return Ok(());
    };
    let dir = directory(store, digest).await?;
    for (name, child) in dir.entries() {
        let shown = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        ls_line(out, &shown, child)?;
        if recursive && matches!(child, Node::Directory { .. }) {
            Box::pin(list_long(store, child, &shown, true, out)).await?;
        }
    }
    Ok(())
}

pub fn ls(a: LsArgs) -> Result<()> {
    let (path, sub) = parse_path(&a.path)?;
    let store = a.services.open_existing_store()?;
    runtime()?.block_on(async {
        let node = store.resolve(&path, &sub).await?;
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        if a.json {
            let v = listing_json(&store, &node, a.recursive, 0).await?;
            writeln!(out, "{v}")?;
        } else {
            // A directory lists its entries; a file or symlink is shown
            // under its own name (the store path's, at the root).
            let shown = match (&node, sub.rsplit('/').next()) {
                (Node::Directory { .. }, _) => String::new(),
                (_, Some(name)) if !name.is_empty() => name.to_owned(),
                _ => path.base_name(),
            };
            list_long(&store, &node, &shown, a.recursive, &mut out).await?;
        }
        out.flush()?;
        Ok(())
    })
}

pub fn cat(a: CatArgs) -> Result<()> {
    let (path, sub) = parse_path(&a.path)?;
    let store = a.services.open_existing_store()?;
    runtime()?.block_on(async {
        let node = store.resolve(&path, &sub).await?;
        let digest = match &node {
            Node::File { digest, .. } => *digest,
            Node::Directory { .. } => bail!("{}: is a directory", a.path),
            Node::Symlink { target } => bail!(
                "{}: is a symlink to {}",
                a.path,
                String::from_utf8_lossy(target.as_bytes())
            ),
        };
        let mut reader = store.blobs.open_read(&digest).await?.with_context(|| {
            format!(
                "{}: contents (blob {digest}) missing from the store",
                a.path
            )
        })?;
        let mut stdout = tokio::io::stdout();
        tokio::io::copy(&mut reader, &mut stdout)
            .await
            .map_err(cairn_castore::Error::from_io)
            .with_context(|| format!("cannot read {}", a.path))?;
        stdout.flush().await?;
        Ok(())
    })
}

pub fn sign(a: SignArgs) -> Result<()> {
    let key = super::key::read_secret_key(&a.key)?;
    let paths: Vec<StorePath> = a
        .paths
        .iter()
        .map(|p| whole_path(p))
        .collect::<Result<_>>()?;
    let store = a.services.open_existing_store()?;
    runtime()?.block_on(async {
        for p in &paths {
            store
                .sign(p, &key)
                .await
                .with_context(|| format!("cannot sign {p}"))?;
        }
        Ok(())
    })
}
