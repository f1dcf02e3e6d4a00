//! Compiles proto/*.proto, and the slice of etcd's API that `raft-kv bench`
//! speaks (src/bench/etcd.proto), with a vendored protoc, so no manual
//! install is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through this variable.
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure()
        .codec_path("crate::grpc_codec::StrictCodec")
        .compile_protos(
            &["proto/raft.proto", "proto/kv.proto", "src/bench/etcd.proto"],
            &["proto", "src/bench"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=src/bench/etcd.proto");
    Ok(())
}
