//! Compiles `tvix/store/v1/store.proto` with protox (no system `protoc`),
//! reusing cairn-castore's generated `tvix.castore.v1` types.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = "tvix/store/v1/store.proto";
    for f in [file, "tvix/castore/v1/castore.proto"] {
        println!("cargo:rerun-if-changed={}", proto_root.join(f).display());
    }
    let descriptors = protox::compile([file], [&proto_root])?;
    let mut config = prost_build::Config::new();
    config.bytes(["."]);
    config.extern_path(".tvix.castore.v1", "::cairn_castore::proto");
    config.compile_fds(descriptors)?;
    Ok(())
}
