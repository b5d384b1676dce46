//! Cairn as a Nix HTTP binary cache, both ways (SPEC §3):
//!
//! - [`server`]: `cairn serve`, which answers the real `nix` client as a
//!   substituter and as a `nix copy --to` target. narinfos and NARs are
//!   rendered from castore on each request; uploads are ingested as they
//!   stream in and become visible only once their narinfo checks out.
//! - [`cache`]: existing binary caches (`http(s)://`, `file://`) as a
//!   read-only PathInfoService that ingests what it fetches, verified.
//!
//! This crate must not store anything itself (that is the services' job)
//! nor parse Nix formats (cairn-nix does).

pub mod addr;
pub mod cache;
mod listing;
mod logs;
mod metrics;
mod nar_body;
mod nar_urls;
mod routes;
pub mod server;
mod upload;

pub use server::{CacheServer, ServeConfig, ServedCompression};
