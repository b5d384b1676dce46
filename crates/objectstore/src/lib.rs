//! Cairn's services on object storage: every blob chunk, chunk list and
//! directory is one immutable object named by its digest, so several
//! Cairn processes can share one bucket with no coordination (the same
//! key always holds the same bytes).
//!
//! Backends of `object_store` are chosen by address (see [`addr`]): an
//! S3-compatible bucket, a directory on the local disk with the same
//! layout, or memory. Nothing read back is trusted: every chunk and
//! directory is re-hashed before it is returned.
//!
//! This crate must not keep state outside the bucket: front ends over one
//! bucket are interchangeable and stateless (a local cache in front of
//! one is the layered services' job).

pub mod addr;
mod blobs;
mod directories;
mod layout;
mod pathinfos;

pub use blobs::ObjectBlobService;
pub use directories::ObjectDirectoryService;
pub use layout::Layout;
pub use pathinfos::ObjectPathInfoService;
