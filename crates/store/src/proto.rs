//! The `tvix.store.v1` messages, generated from `proto/` at build time.
//! Plain data: validation happens when converting into [`crate::PathInfo`].

#![allow(missing_docs, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/tvix.store.v1.rs"));
