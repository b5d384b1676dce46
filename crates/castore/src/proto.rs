//! The `tvix.castore.v1` messages, generated from `proto/` at build time.
//! Plain data: validation happens when converting into the model types.

#![allow(missing_docs, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/tvix.castore.v1.rs"));
