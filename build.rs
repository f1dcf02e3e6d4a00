//! Compiles proto/*.proto for the library, and the slice of etcd's API that
//! the `raft-kv-bench` binary speaks (src/bin/raft-kv-bench/etcd.proto),
//! with a vendored protoc, so no manual install is needed. The etcd code is
//! only generated here: the bench includes it, the library does not.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through this variable.
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure()
        .codec_path("crate::grpc_codec::StrictCodec")
        .compile_protos(&["proto/raft.proto", "proto/watch.proto"], &["proto"])?;
    // The client API's descriptors, which server reflection serves
    // (`grpcurl list`, `describe`); the peer protocol's are left out.
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .codec_path("crate::grpc_codec::StrictCodec")
        .file_descriptor_set_path(out_dir.join("raftkv_descriptor.bin"))
        .compile_protos(
            &[
                "proto/kv.proto",
                "proto/leadership.proto",
                "proto/membership.proto",
            ],
            &["proto"],
        )?;
    // Outside the library, the codec is named through it; the bench is only
    // a client.
    tonic_prost_build::configure()
        .codec_path("raft_kv::grpc_codec::StrictCodec")
        .build_server(false)
        .compile_protos(
            &["src/bin/raft-kv-bench/etcd.proto"],
            &["src/bin/raft-kv-bench"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=src/bin/raft-kv-bench/etcd.proto");
    Ok(())
}
