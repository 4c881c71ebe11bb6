//! Generated gRPC clients (see `build.rs`).

/// `discovered.v1`: the system under test.
pub mod discovered {
    tonic::include_proto!("discovered.v1");
}

/// `mvccpb`: etcd's stored key-value message.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// `etcdserverpb`: the KV and Lease services of etcd v3 (subset).
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
