//! Compiles Cairn's `.proto` files with protox (pure Rust), so no system
//! `protoc` is ever needed. Only messages are generated here; the gRPC
//! crate generates the services from the same files.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = "tvix/castore/v1/castore.proto";
    println!("cargo:rerun-if-changed={}", proto_root.join(file).display());
    let descriptors = protox::compile([file], [&proto_root])?;
    let mut config = prost_build::Config::new();
    // Blob data and digests as `bytes::Bytes`: cheap to clone and slice.
    config.bytes(["."]);
    config.compile_fds(descriptors)?;
    Ok(())
}
