//! Generates gRPC clients for the two systems under test: discovered, from
//! the main crate's own proto (so the load generator always speaks the
//! current API), and etcd, from the minimal wire-compatible subset in
//! `proto/etcd`. Uses the vendored `protoc`, so no system install is needed.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the
    // environment while this runs.
    unsafe {
        env::set_var("PROTOC", protoc);
    }
    let discovered = PathBuf::from("../../proto");
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(
            &[discovered.join("discovered/v1/discovery.proto")],
            &[discovered.clone(), include.clone()],
        )?;
    let etcd = PathBuf::from("proto/etcd");
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(
            &[etcd.join("etcdserverpb/rpc.proto")],
            &[etcd.clone(), include],
        )?;
    println!("cargo:rerun-if-changed=../../proto");
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
