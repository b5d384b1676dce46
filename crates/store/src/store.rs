//! The main jobs on a store made of the three services: add a tree as
//! `nix-store --add` would, add a NAR (optionally described by a narinfo),
//! look up paths and paths inside them, render NARs, sign.
//!
//! Every job that adds a path follows one order: contents, then
//! directories, then the PathInfo, and only after every check passed; a
//! job that fails at any point leaves `get` unchanged. It must not print
//! or parse command lines: front ends (CLI, HTTP, gRPC) do that.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cairn_castore::gc::{GcReport, KeepYoung};
use cairn_castore::import::{ImportError, Progress};
use cairn_castore::{B3Digest, BlobService, DirectoryService, Node};
use cairn_nix::hash::{ContentAddress, FileIngestionMethod, NixHash};
use cairn_nix::narinfo::NarInfo;
use cairn_nix::store_path::{compute_ca_path, compute_source_path, References, StorePath};
use cairn_nix::{Signature, SigningKey};
use futures::{Stream, TryStreamExt};
use thiserror::Error;
use tokio::io::AsyncRead;

use crate::bridge::{channel_pieces, ChannelWriter};
use crate::ingest::{ingest_nar_pieces, pieces_of, IngestError, IngestedNar};
use crate::pathinfoservice::Error as PathInfoServiceError;
use crate::render::{NarLayout, RenderError};
use crate::{PathInfo, PathInfoService};

/// Why a store job failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// Reading the NAR or storing its contents failed.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// Dumping the source tree failed.
    #[error("{0}")]
    Dump(String),
    /// The NAR is not the one its narinfo describes.
    #[error("NAR {what} mismatch for {path}: narinfo says {expected}, the NAR has {actual}")]
    NarMismatch {
        /// The store path.
        path: String,
        /// `NarHash` or `NarSize`.
        what: &'static str,
        /// What the narinfo says.
        expected: String,
        /// What the NAR has.
        actual: String,
    },
    /// References that are not in the store (a path may only be added
    /// after everything it refers to).
    #[error("{path} refers to paths not in the store: {missing}")]
    MissingReferences {
        /// The path being added.
        path: String,
        /// The missing references, space-separated.
        missing: String,
    },
    /// A narinfo whose content address does not give its store path.
    #[error("{path}: content address {ca} gives store path {computed}")]
    CaMismatch {
        /// The store path claimed.
        path: String,
        /// The CA claimed.
        ca: String,
        /// The path the CA and references give.
        computed: String,
    },
    /// A name, path or reference that Nix refuses.
    #[error("{0}")]
    Invalid(String),
    /// A store path that is not in the store.
    #[error("{0} is not in the store")]
    NotFound(String),
    /// A path inside a store path that does not exist or is not what was asked.
    #[error("{path}: {reason}")]
    BadSubPath {
        /// The full path asked for.
        path: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The PathInfo service failed.
    #[error(transparent)]
    PathInfo(#[from] PathInfoServiceError),
    /// The castore services failed.
    #[error(transparent)]
    Castore(#[from] cairn_castore::Error),
    /// Rendering failed.
    #[error(transparent)]
    Render(#[from] RenderError),
}

impl From<ImportError> for StoreError {
    fn from(e: ImportError) -> Self {
        StoreError::Ingest(IngestError::Import(e))
    }
}

/// What is known about a NAR before it is read, from a narinfo.
#[derive(Debug, Clone)]
pub struct NarDescription {
    /// The store path it is for.
    pub store_path: StorePath,
    /// The NAR's hash, if known (checked).
    pub nar_hash: Option<NixHash>,
    /// The NAR's size, if known (checked).
    pub nar_size: Option<u64>,
    /// Its references.
    pub references: Vec<StorePath>,
    /// Signatures to keep.
    pub signatures: Vec<Signature>,
    /// The deriver.
    pub deriver: Option<StorePath>,
    /// The content address (checked against the store path).
    pub ca: Option<ContentAddress>,
}

impl From<&NarInfo> for NarDescription {
    fn from(n: &NarInfo) -> Self {
        NarDescription {
            store_path: n.store_path.clone(),
            nar_hash: Some(n.nar_hash.clone()),
            nar_size: Some(n.nar_size),
            references: n.references.clone(),
            signatures: n.signatures.clone(),
            deriver: n.deriver.clone(),
            ca: n.ca.clone(),
        }
    }
}

/// Checks that a content address, when there is one, gives `path` with
/// these references (a claim anyone can check, signed or not).
pub fn check_content_address(
    path: &StorePath,
    ca: Option<&ContentAddress>,
    references: &[StorePath],
) -> Result<(), StoreError> {
    let Some(ca) = ca else { return Ok(()) };
    let others: Vec<StorePath> = references.iter().filter(|r| *r != path).cloned().collect();
    let refs = References {
        others: &others,
        self_ref: others.len() != references.len(),
    };
    let computed = compute_ca_path(ca, &refs, path.name())
        .map_err(|e| StoreError::Invalid(format!("{path}: {e}")))?;
    if computed != *path {
        return Err(StoreError::CaMismatch {
            path: path.to_absolute_path(),
            ca: ca.to_string(),
            computed: computed.to_absolute_path(),
        });
    }
    Ok(())
}

/// The three services, and the jobs that need all of them.
#[derive(Clone)]
pub struct Store {
    /// File contents.
    pub blobs: Arc<dyn BlobService>,
    /// Directories.
    pub dirs: Arc<dyn DirectoryService>,
    /// Store paths.
    pub path_infos: Arc<dyn PathInfoService>,
}

/// Refuses a name Nix would refuse, before any work is done.
fn check_name(name: &str) -> Result<(), StoreError> {
    cairn_nix::store_path::validate_name(name)
        .map_err(|e| StoreError::Invalid(format!("cannot use {name:?} as a store path name: {e}")))
}

impl Store {
    /// Adds the tree at `path` as `nix-store --add` does: the same store
    /// path (a `source` path named `name`), the same NAR hash, CA
    /// `fixed:r:sha256`. The tree is read once, as a NAR, so the recorded
    /// hash is exactly that of the contents stored.
    pub async fn import_tree(
        &self,
        path: &Path,
        name: &str,
        progress: &dyn Progress,
    ) -> Result<PathInfo, StoreError> {
        check_name(name)?;
        let (reader, dumping) = dump_as_stream(path.to_owned());
        let ingested =
            ingest_nar_pieces(reader, self.blobs.clone(), self.dirs.as_ref(), progress).await;
        // Each side's failure shows up to the other as a broken stream:
        // report the cause, not the symptom.
        let dumped = dumping
            .await
            .map_err(|e| StoreError::Dump(format!("dump task failed: {e}")))?;
        if let Err(DumpFailure::Source(msg)) = dumped {
            return Err(StoreError::Dump(msg));
        }
        self.add_as_source(ingested?, name).await
    }

    /// Adds a NAR as the source path `name` (what `nix-store --add` of
    /// the tree inside it would give).
    pub async fn import_nar_as_source<R: AsyncRead + Unpin + Send>(
        &self,
        nar: R,
        name: &str,
        progress: &dyn Progress,
    ) -> Result<PathInfo, StoreError> {
        self.import_nar_pieces_as_source(pieces_of(nar), name, progress)
            .await
    }

    /// [`Store::import_nar_as_source`] for a NAR that arrives as owned
    /// pieces (see [`crate::read_pieces_on_thread`]): parsed where they
    /// lie, without a copy into a read buffer.
    pub async fn import_nar_pieces_as_source<S>(
        &self,
        pieces: S,
        name: &str,
        progress: &dyn Progress,
    ) -> Result<PathInfo, StoreError>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Unpin + Send,
    {
        check_name(name)?;
        let ingested =
            ingest_nar_pieces(pieces, self.blobs.clone(), self.dirs.as_ref(), progress).await?;
        self.add_as_source(ingested, name).await
    }

    /// Records an ingested tree as the `source` path `nix-store --add`
    /// gives it: named by its NAR hash, no references, CA `fixed:r:sha256`.
    async fn add_as_source(
        &self,
        ingested: IngestedNar,
        name: &str,
    ) -> Result<PathInfo, StoreError> {
        let no_refs = References {
            others: &[],
            self_ref: false,
        };
        let store_path = compute_source_path(&ingested.nar_sha256, &no_refs, name)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let ca = ContentAddress::Fixed(
            FileIngestionMethod::Recursive,
            NixHash::sha256(ingested.nar_sha256),
        );
        let desc = NarDescription {
            store_path,
            nar_hash: None,
            nar_size: None,
            references: Vec::new(),
            signatures: Vec::new(),
            deriver: None,
            ca: Some(ca),
        };
        self.finish_nar(ingested, desc).await
    }

    /// Adds a NAR described by `desc` (from a narinfo): the NAR's hash and
    /// size must match, every reference must already be in the store, and
    /// a content address must give the store path.
    pub async fn import_nar<R: AsyncRead + Unpin + Send>(
        &self,
        nar: R,
        desc: NarDescription,
        progress: &dyn Progress,
    ) -> Result<PathInfo, StoreError> {
        self.import_nar_pieces(pieces_of(nar), desc, progress).await
    }

    /// [`Store::import_nar`] for a NAR that arrives as owned pieces.
    pub async fn import_nar_pieces<S>(
        &self,
        pieces: S,
        desc: NarDescription,
        progress: &dyn Progress,
    ) -> Result<PathInfo, StoreError>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Unpin + Send,
    {
        // Cheap checks first: a NAR that cannot be added is not read.
        self.check_description(&desc).await?;
        let ingested =
            ingest_nar_pieces(pieces, self.blobs.clone(), self.dirs.as_ref(), progress).await?;
        self.finish_nar(ingested, desc).await
    }

    /// Adds a NAR that was ingested already (an upload whose narinfo came
    /// later): the same checks as [`Store::import_nar`], then the PathInfo.
    pub async fn add_ingested(
        &self,
        ingested: IngestedNar,
        desc: NarDescription,
    ) -> Result<PathInfo, StoreError> {
        self.check_description(&desc).await?;
        self.finish_nar(ingested, desc).await
    }

    async fn check_description(&self, desc: &NarDescription) -> Result<(), StoreError> {
        check_content_address(&desc.store_path, desc.ca.as_ref(), &desc.references)?;
        let mut missing = Vec::new();
        for r in &desc.references {
            if *r != desc.store_path && self.path_infos.get(r.digest()).await?.is_none() {
                missing.push(r.to_absolute_path());
            }
        }
        if !missing.is_empty() {
            return Err(StoreError::MissingReferences {
                path: desc.store_path.to_absolute_path(),
                missing: missing.join(" "),
            });
        }
        Ok(())
    }

    async fn finish_nar(
        &self,
        ingested: IngestedNar,
        desc: NarDescription,
    ) -> Result<PathInfo, StoreError> {
        let path = desc.store_path.to_absolute_path();
        if let Some(expected) = &desc.nar_hash {
            let actual = NixHash::sha256(ingested.nar_sha256);
            if *expected != actual {
                return Err(StoreError::NarMismatch {
                    path,
                    what: "hash",
                    expected: expected.to_nix_base32_string(),
                    actual: actual.to_nix_base32_string(),
                });
            }
        }
        if let Some(expected) = desc.nar_size {
            if expected != ingested.nar_size {
                return Err(StoreError::NarMismatch {
                    path,
                    what: "size",
                    expected: expected.to_string(),
                    actual: ingested.nar_size.to_string(),
                });
            }
        }
        let info = PathInfo {
            store_path: desc.store_path,
            node: ingested.node,
            references: desc.references,
            nar_size: ingested.nar_size,
            nar_sha256: ingested.nar_sha256,
            signatures: desc.signatures,
            deriver: desc.deriver,
            ca: desc.ca,
        };
        Ok(self.path_infos.put(info).await?)
    }

    /// The PathInfo of `path`, or a `NotFound` error.
    pub async fn path_info(&self, path: &StorePath) -> Result<PathInfo, StoreError> {
        self.path_infos
            .get(path.digest())
            .await?
            .ok_or_else(|| StoreError::NotFound(path.to_absolute_path()))
    }

    /// The node at `sub` (a relative path, `/`-separated, may be empty)
    /// inside `path`. Symlinks are not followed.
    pub async fn resolve(&self, path: &StorePath, sub: &str) -> Result<Node, StoreError> {
        let info = self.path_info(path).await?;
        let mut node = info.node;
        let full = || format!("{}/{sub}", path.to_absolute_path());
        for component in sub.split('/').filter(|c| !c.is_empty() && *c != ".") {
            let Node::Directory { digest, .. } = &node else {
                return Err(StoreError::BadSubPath {
                    path: full(),
                    reason: "a path component is not a directory",
                });
            };
            if component == ".." {
                return Err(StoreError::BadSubPath {
                    path: full(),
                    reason: "`..` is not allowed",
                });
            }
            let dir = self
                .dirs
                .get(digest)
                .await?
                .ok_or(cairn_castore::Error::NotFound {
                    what: "directory",
                    digest: *digest,
                })?;
            let child = dir
                .entries()
                .find(|(name, _)| name.as_bytes() == component.as_bytes())
                .map(|(_, n)| n.clone());
            node = child.ok_or(StoreError::BadSubPath {
                path: full(),
                reason: "no such file or directory",
            })?;
        }
        Ok(node)
    }

    /// The layout of `path`'s NAR (for rendering it, whole or in part).
    pub async fn nar_layout(&self, path: &StorePath) -> Result<(PathInfo, NarLayout), StoreError> {
        let info = self.path_info(path).await?;
        let layout = NarLayout::of(&info.node, self.dirs.as_ref()).await?;
        if layout.size() != info.nar_size {
            return Err(StoreError::Invalid(format!(
                "{}: stored tree renders to {} bytes, its PathInfo says {}",
                path,
                layout.size(),
                info.nar_size
            )));
        }
        Ok((info, layout))
    }

    /// Adds (or replaces) `key`'s signature on `path`'s PathInfo.
    pub async fn sign(&self, path: &StorePath, key: &SigningKey) -> Result<PathInfo, StoreError> {
        let mut info = self.path_info(path).await?;
        key.sign_into(info.fingerprint().as_bytes(), &mut info.signatures);
        Ok(self.path_infos.put(info).await?)
    }
}

/// What a garbage collection found and did.
#[derive(Debug, Clone, Copy, Default)]
pub struct GcSummary {
    /// Store paths whose trees were kept.
    pub paths: u64,
    /// Directories.
    pub directories: GcReport,
    /// Blob objects (whole blobs, chunk lists and chunks).
    pub blobs: GcReport,
}

impl Store {
    /// Deletes every directory and blob no PathInfo reaches. Directories
    /// and blobs written or reused less than `grace` ago are kept, so a
    /// concurrent import's contents survive until its PathInfo lands. With `dry_run`, only
    /// reports. Stops without deleting anything if a store path's tree is
    /// incomplete: deciding what is garbage needs every tree whole.
    pub async fn collect_garbage(
        &self,
        grace: Duration,
        dry_run: bool,
    ) -> Result<GcSummary, StoreError> {
        // Whatever was written within `grace` of this instant is kept,
        // however long the marking below takes: an import whose PathInfo
        // lands after the listing is protected for `grace` from its
        // writes, not from whenever a backend gets round to deleting.
        let keep = KeepYoung::within(grace, std::time::SystemTime::now());
        let mut live_dirs: HashSet<B3Digest> = HashSet::new();
        let mut live_blobs: HashSet<B3Digest> = HashSet::new();
        let mut summary = GcSummary::default();
        let mut infos = self.path_infos.list();
        while let Some(info) = infos.try_next().await? {
            summary.paths += 1;
            match &info.node {
                Node::File { digest, .. } => {
                    live_blobs.insert(*digest);
                }
                Node::Symlink { .. } => {}
                Node::Directory { digest, .. } => {
                    if live_dirs.contains(digest) {
                        continue;
                    }
                    let mut closure = self.dirs.get_recursive(digest);
                    while let Some(dir) = closure.try_next().await.map_err(|e| {
                        StoreError::Invalid(format!(
                            "{}: its tree cannot be read ({e}); not collecting garbage",
                            info.store_path
                        ))
                    })? {
                        for (_, node) in dir.entries() {
                            if let Node::File { digest, .. } = node {
                                live_blobs.insert(*digest);
                            }
                        }
                        live_dirs.insert(dir.digest());
                    }
                }
            }
        }
        drop(infos);
        // A directory written within the grace period may be an import's
        // whose PathInfo has not landed yet: it is kept, and so is all it
        // reaches, even what that import found already stored (and so did
        // not write again: an old blob, or a subtree `cairn copy` saw was
        // there).
        let mut kept_young: HashSet<B3Digest> = HashSet::new();
        for root in self.dirs.written_within(keep).await? {
            if live_dirs.contains(&root) || kept_young.contains(&root) {
                continue;
            }
            let mut closure = self.dirs.get_recursive(&root);
            // A closure that cannot be read whole keeps what was read:
            // the directory is young, its import may still be running.
            while let Some(Ok(dir)) = futures::StreamExt::next(&mut closure).await {
                for (_, node) in dir.entries() {
                    if let Node::File { digest, .. } = node {
                        live_blobs.insert(*digest);
                    }
                }
                let digest = dir.digest();
                if !live_dirs.contains(&digest) {
                    kept_young.insert(digest);
                }
            }
        }
        live_dirs.extend(kept_young.iter().copied());
        // Directories first: no directory ever refers to a deleted blob.
        summary.directories = self.dirs.collect_garbage(&live_dirs, keep, dry_run).await?;
        // Reported as what they are: unreachable, kept for their age.
        let kept = kept_young.len() as u64;
        summary.directories.live = summary.directories.live.saturating_sub(kept);
        summary.directories.young += kept;
        summary.blobs = self
            .blobs
            .collect_garbage(&live_blobs, keep, dry_run)
            .await?;
        Ok(summary)
    }
}

/// Why a dump stopped.
enum DumpFailure {
    /// Reading the tree failed (or it holds something a NAR cannot).
    Source(String),
    /// The ingest stopped reading; its own error says why.
    IngestStopped,
}

type DumpTask = tokio::task::JoinHandle<Result<(), DumpFailure>>;

/// Dumps `path` as a NAR on a blocking thread; returns the NAR as a
/// stream of owned pieces and the dump's own outcome.
fn dump_as_stream(
    path: std::path::PathBuf,
) -> (
    impl futures::Stream<Item = std::io::Result<Bytes>> + Unpin + Send,
    DumpTask,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(8);
    let task = tokio::task::spawn_blocking(move || {
        let writer = ChannelWriter::new(tx.clone());
        let result = cairn_nix::nar::fs::dump_path(&path, writer).and_then(|mut w| {
            std::io::Write::flush(&mut w).map_err(|e| cairn_nix::nar::fs::DumpError::Write {
                path: path.clone(),
                source: e.into(),
            })
        });
        match result {
            Ok(()) => Ok(()),
            Err(_) if tx.is_closed() => Err(DumpFailure::IngestStopped),
            Err(e) => {
                let msg = e.to_string();
                // Make the ingest fail too, rather than see a short NAR end.
                let _ = tx.blocking_send(Err(std::io::Error::other(msg.clone())));
                Err(DumpFailure::Source(msg))
            }
        }
    });
    (channel_pieces(rx), task)
}
