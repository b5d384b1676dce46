//! Generates the gRPC services (server and client) of Cairn's `.proto`
//! files with protox (no system `protoc`). The messages are not generated
//! again: they are cairn-castore's and cairn-store's. The encoded
//! descriptor set is kept for gRPC server reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "tvix/castore/v1/castore.proto",
        "tvix/store/v1/store.proto",
        "cairn/v1/batch.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={}", proto_root.join(f).display());
    }
    let descriptors = protox::compile(files, [&proto_root])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("descriptors.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .bytes(".")
        .extern_path(".tvix.castore.v1", "::cairn_castore::proto")
        .extern_path(".tvix.store.v1", "::cairn_store::proto")
        .compile_fds(descriptors)?;
    Ok(())
}
