//! Cairn over gRPC: the `tvix.castore.v1` and `tvix.store.v1` protocols
//! (SPEC.md §1–2) in both directions.
//!
//! - [`server`]: the three services (and Cairn's batch extension) served
//!   from any backends, the same handlers also under the `snix.*` package
//!   names;
//! - [`client`]: backends that are remote daemons, verifying everything
//!   they receive against the digest it was asked for;
//! - [`transport`]: listening and connecting on TCP and Unix sockets;
//! - [`addr`]: `grpc+http://HOST:PORT` and `grpc+unix:///PATH` addresses,
//!   on top of the local backends' addresses.
//!
//! The protobuf messages are cairn-castore's and cairn-store's; only the
//! services are generated here. This crate must not contain storage logic:
//! it translates between the wire and the service traits.

pub mod addr;
pub mod client;
pub mod server;
pub mod transport;

/// The generated services. Plain generated code.
#[allow(missing_docs, clippy::all)]
pub mod generated {
    /// `tvix.castore.v1` services.
    pub mod castore {
        include!(concat!(env!("OUT_DIR"), "/tvix.castore.v1.rs"));
    }
    /// `tvix.store.v1` services.
    pub mod store {
        include!(concat!(env!("OUT_DIR"), "/tvix.store.v1.rs"));
    }
    /// `cairn.v1`: Cairn's batch extension, messages and service.
    pub mod batch {
        include!(concat!(env!("OUT_DIR"), "/cairn.v1.rs"));
    }
}

/// The encoded descriptors of every served `.proto` file, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// Messages above this size are refused. A blob travels as a stream of
/// pieces of at most [`BLOB_PIECE`] bytes and a directory is small, so only
/// a hostile or broken peer comes near it; tonic's default of 4 MiB is set
/// explicitly rather than relied on.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Bytes per `BlobChunk` message when sending a blob.
pub const BLOB_PIECE: usize = 1024 * 1024;

/// Which package names to speak as a client (a server answers to both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    /// `tvix.castore.v1`, `tvix.store.v1`.
    #[default]
    Tvix,
    /// `snix.castore.v1`, `snix.store.v1`: the same messages and numbers.
    Snix,
}
