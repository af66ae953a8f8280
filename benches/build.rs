//! Compiles the subset of etcd's KV API that the load generator uses as a peer
//! (`proto/etcd/kv.proto`) with protox, so no system `protoc` is needed; client stubs only.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/etcd/kv.proto");
    let descriptors = protox::compile(["etcd/kv.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(descriptors)?;
    Ok(())
}
