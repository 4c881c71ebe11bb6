//! Generates the gRPC code for `proto/discovered/v1/discovery.proto` and the
//! file descriptor set that server reflection serves. Uses the vendored
//! `protoc`, so a bare machine needs no system install.
//!
//! Two passes, because tonic-prost-build takes one codec for the client and
//! the server alike and only the server wants ours:
//!
//! 1. the messages and the client, with tonic's default prost codec, into
//!    `OUT_DIR/discovered.v1.rs`;
//! 2. the server alone, into `OUT_DIR/server/discovered.v1.rs`, with
//!    `crate::server::codec::RequestCodec` (a request body that cannot be
//!    decoded is INVALID_ARGUMENT, not INTERNAL) and the messages of pass 1
//!    (`extern_path`, so they are not generated twice), except
//!    `GetNodesResponse` and `WatchEvent`, which the server sends
//!    pre-encoded (`crate::server::reply`).

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
    let protos = [PathBuf::from("proto/discovered/v1/discovery.proto")];
    let includes = [PathBuf::from("proto"), include];

    // `prost::Name` on every message: the codec names the message a request
    // body failed to decode as ("discovered.v1.RegisterNodeRequest").
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        .build_server(false)
        .file_descriptor_set_path(out_dir.join("discovered_descriptor.bin"))
        .compile_with_config(config, &protos, &includes)?;

    let server_dir = out_dir.join("server");
    std::fs::create_dir_all(&server_dir)?;
    tonic_prost_build::configure()
        .build_client(false)
        .out_dir(&server_dir)
        .extern_path(".discovered.v1", "crate::proto::v1")
        // GetNodes answers go out as bytes encoded once (server/reply.rs).
        .extern_path(
            ".discovered.v1.GetNodesResponse",
            "crate::server::reply::EncodedReply",
        )
        // Watch events go out encoded once for every stream.
        .extern_path(
            ".discovered.v1.WatchEvent",
            "crate::server::reply::SharedEvent",
        )
        .codec_path("crate::server::codec::RequestCodec")
        .compile_protos(&protos, &includes)?;

    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build.rs");
    Ok(())
}
