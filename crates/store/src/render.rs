//! Rendering the NAR of a castore node, streaming: directories come from
//! the directory service, file contents straight from blob readers (which
//! verify what they return). Byte-identical to `nix-store --dump` of the
//! tree the node was imported from.

use std::collections::HashMap;

use cairn_castore::{B3Digest, BlobService, Directory, DirectoryService, Node};
use cairn_nix::nar::{AsyncNarWriter, NarWriteError};
use futures::future::BoxFuture;
use futures::TryStreamExt;
use thiserror::Error;
use tokio::io::AsyncWrite;

/// Why a NAR could not be rendered.
#[derive(Debug, Error)]
pub enum RenderError {
    /// A blob or directory is missing or failed verification.
    #[error(transparent)]
    Castore(#[from] cairn_castore::Error),
    /// The output failed, or a blob's size differs from its node's.
    #[error(transparent)]
    Write(#[from] NarWriteError),
}

/// Writes the NAR of `root` to `out` and returns `out`.
///
/// The directory closure is fetched first (small next to the contents);
/// blobs are streamed one at a time.
pub async fn write_nar<W: AsyncWrite + Unpin + Send>(
    out: W,
    blobs: &dyn BlobService,
    dirs: &dyn DirectoryService,
    root: &Node,
) -> Result<W, RenderError> {
    let mut closure = HashMap::new();
    if let Node::Directory { digest, .. } = root {
        let mut stream = dirs.get_recursive(digest);
        while let Some(d) = stream.try_next().await? {
            closure.insert(d.digest(), d);
        }
    }
    let mut w = AsyncNarWriter::new(out);
    write_node(&mut w, blobs, &closure, root).await?;
    Ok(w.finish().await?)
}

fn write_node<'a, W: AsyncWrite + Unpin + Send>(
    w: &'a mut AsyncNarWriter<W>,
    blobs: &'a dyn BlobService,
    closure: &'a HashMap<B3Digest, Directory>,
    node: &'a Node,
) -> BoxFuture<'a, Result<(), RenderError>> {
    Box::pin(async move {
        match node {
            Node::Symlink { target } => w.symlink(target.as_bytes()).await?,
            Node::File {
                digest,
                size,
                executable,
            } => {
                let mut reader =
                    blobs
                        .open_read(digest)
                        .await?
                        .ok_or(cairn_castore::Error::NotFound {
                            what: "blob",
                            digest: *digest,
                        })?;
                w.file(*executable, *size, &mut reader)
                    .await
                    .map_err(|e| match e {
                        // A verification failure inside the blob reader.
                        NarWriteError::Io(io) => {
                            RenderError::Castore(cairn_castore::Error::from_io(io))
                        }
                        other => RenderError::Write(other),
                    })?;
            }
            Node::Directory { digest, .. } => {
                let dir = closure.get(digest).ok_or(cairn_castore::Error::NotFound {
                    what: "directory",
                    digest: *digest,
                })?;
                w.directory().await?;
                for (name, child) in dir.entries() {
                    w.entry(name.as_bytes()).await?;
                    write_node(w, blobs, closure, child).await?;
                }
                w.end_directory().await?;
            }
        }
        Ok(())
    })
}
