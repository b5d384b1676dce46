//! Cairn's lazy filesystem: the store as a read-only tree of store paths,
//! served with FUSE (`cairn mount`). The root holds every store path by
//! its base name; a path's PathInfo is looked up when its name is, a
//! directory fetched when it is first looked into, a file's bytes read
//! (chunk by chunk, verified) only when something reads them.
//!
//! [`StoreFs`] is the filesystem (the `fuse-backend-rs` `FileSystem`
//! trait, which is transport-neutral: the same type can back virtio-fs);
//! [`mount`] serves it on a mount point with a pool of threads, and
//! [`serve_virtiofs`] to a virtual machine as a vhost-user device.
//!
//! This crate must not write to the store, nor know about addresses or
//! the command line.

mod inodes;
mod mount;
mod storefs;
mod virtiofs;

pub use mount::{mount, MountError, MountOptions, Mounted};
pub use storefs::StoreFs;
pub use virtiofs::{serve_virtiofs, VirtioFsError};
