//! Nix's formats, exactly: nixbase32, hashes and content addresses, store
//! paths, NAR archives (streaming, sync and async), narinfo files and their
//! ed25519 signatures.
//!
//! This crate is the bottom of Cairn. It must not store anything, talk to a
//! network or need an async runtime; every later crate builds on it, and the
//! real Nix client is the oracle for everything it produces.

pub mod hash;
pub mod nar;
pub mod narinfo;
pub mod nixbase32;
pub mod signing;
pub mod store_path;

pub use hash::{ContentAddress, FileIngestionMethod, HashAlgo, NixHash};
pub use narinfo::NarInfo;
pub use signing::{Signature, SigningKey, VerifyingKey};
pub use store_path::StorePath;
