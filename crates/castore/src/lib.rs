//! The content-addressed layer of Cairn (SPEC §1): file contents are blobs
//! named by their BLAKE3 digest, directories are canonical protobuf
//! messages named by the BLAKE3 of their encoding, forming a Merkle DAG.
//!
//! This crate holds the model ([`Directory`], [`Node`], [`B3Digest`]), the
//! two service traits ([`BlobService`], [`DirectoryService`]) with their
//! backends chosen by address URL, and import/export of filesystem trees
//! and tar archives. It knows nothing of Nix store paths or NARs; that is
//! the store crate's job. Everything that enters is validated; everything
//! read back is verified against the digest it was asked for.

pub mod addr;
pub mod blobservice;
mod digest;
mod directory;
pub mod directoryservice;
pub mod embedded;
mod error;
pub mod export;
pub mod gc;
pub mod import;
pub mod layered;
pub mod proto;
mod util;

pub use blobservice::{BlobReader, BlobService, BlobWriter, ChunkMeta};
pub use digest::{B3Digest, DigestError};
pub use directory::{Directory, DirectoryError, Node, PathComponent, SizeRule, SymlinkTarget};
pub use directoryservice::{DirectoryPutter, DirectoryService};
pub use error::Error;
