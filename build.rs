//! Generates the gRPC code for `proto/discovered/v1/discovery.proto` and the
//! file descriptor set that server reflection serves. Uses the vendored
//! `protoc`, so a bare machine needs no system install.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the
    // environment while this runs.
    unsafe {
        env::set_var("PROTOC", protoc);
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("discovered_descriptor.bin"))
        .compile_protos(
            &[PathBuf::from("proto/discovered/v1/discovery.proto")],
            &[PathBuf::from("proto"), include.clone()],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
