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

/// A status code's name as gRPC's protos spell it, e.g. `NOT_FOUND` (for
/// messages and metric labels).
pub fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
