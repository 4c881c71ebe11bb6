//! The API types: code generated from `proto/discovered/v1/discovery.proto`,
//! and the conversions between them and the domain types of [`crate::model`]
//! (in `convert.rs`, beside the generated types, so a new field is mapped
//! in one place).

mod convert;

pub use convert::{InvalidTimestamp, timestamp};

/// The `discovered.v1` package.
pub mod v1 {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("discovered.v1");

    // The server, generated apart (see build.rs) so that it decodes
    // requests with `crate::server::codec::RequestCodec`.
    #[cfg(feature = "server")]
    include!(concat!(env!("OUT_DIR"), "/server/discovered.v1.rs"));
}

/// The encoded file descriptor set of our protos, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("discovered_descriptor");
