//! Compiles `proto/` into Rust with tonic-prost-build and writes the descriptor set that server
//! reflection serves. protoc comes from `protoc-bin-vendored`: none is installed on our machines,
//! and pointing the config at it avoids mutating the environment (`set_var` is unsafe). The
//! generated service and client use our codec, which bounds what a request may decode to
//! (`src/grpc/codec.rs`).
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("ratchet_descriptor.bin"))
        .codec_path("crate::grpc::codec::BoundedCodec")
        .compile_with_config(config, &["proto/ratchet/v1/token.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
