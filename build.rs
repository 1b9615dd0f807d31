//! Compiles the public contract in `proto/` into Rust and embeds a descriptor set for
//! server reflection. protoc comes from the `protoc-bin-vendored` crate, so no system
//! protoc is needed.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment here.
    unsafe { std::env::set_var("PROTOC", protoc) };

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "proto/artifactd/v1/access.proto",
        "proto/artifactd/v1/admin.proto",
        "proto/artifactd/v1/audit.proto",
        "proto/artifactd/v1/backup.proto",
        "proto/artifactd/v1/artifact.proto",
        "proto/artifactd/v1/encryption.proto",
        "proto/artifactd/v1/fallback.proto",
        "proto/artifactd/v1/retention.proto",
        "proto/artifactd/v1/search.proto",
    ];
    tonic_prost_build::configure()
        // Content travels as `bytes::Bytes`, so data messages are passed on without copies.
        .bytes(".artifactd.v1")
        .file_descriptor_set_path(out_dir.join("artifactd_descriptor.bin"))
        .compile_protos(&protos, &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
