//! Compiles `affinity/v1/*.proto` with protox (a Rust protobuf compiler, so no system
//! `protoc` is needed), generates prost messages and tonic stubs, and writes the descriptor
//! set that gRPC server reflection serves.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "affinity/v1/affinity.proto",
    "affinity/v1/cluster.proto",
    "affinity/v1/raft.proto",
    "affinity/v1/storage.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let descriptors = protox::compile(PROTOS, ["."])?;
    let encoded = prost::Message::encode_to_vec(&descriptors);
    std::fs::write(out_dir.join("affinity_descriptor.bin"), encoded)?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
