//! The Nix layer of Cairn (SPEC §2): a `PathInfo` maps a Nix store path to
//! its castore root node plus the Nix metadata (references, NAR hash and
//! size, signatures, deriver, content address), from which narinfos and
//! NARs can be rendered byte-identical to Nix's.
//!
//! This crate must not reimplement castore or the Nix formats: it joins
//! `cairn-castore` and `cairn-nix`.

pub mod addr;
mod bridge;
pub mod compression;
pub mod copy;
pub mod ingest;
pub mod nar_calc;
mod pathinfo;
pub mod pathinfoservice;
pub mod proto;
pub mod render;
mod store;

pub use bridge::{read_pieces_on_thread, ThreadWriterSink};
pub use pathinfo::{PathInfo, PathInfoError};
pub use pathinfoservice::PathInfoService;
pub use store::{check_content_address, GcSummary, NarDescription, Store, StoreError};
