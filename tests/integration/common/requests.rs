//! Request builders shared by the test files: registrations with every
//! field set, so a test that compares what it sent with what it got back
//! covers every field.

use std::collections::HashMap;

use discovered::proto::v1::{Locality, NodeStatus, RegisterNodeRequest, RegisterServiceRequest};
use prost_types::Timestamp;

/// A metadata map from pairs.
pub fn meta(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A service registration with every field set, credentials included, and
/// an empty metadata value (kept as such).
pub fn full_service(group: &str, name: &str) -> RegisterServiceRequest {
    RegisterServiceRequest {
        service_group: group.into(),
        service_name: name.into(),
        endpoint: format!("https://{name}.example.com:8443/api"),
        endpoint_type: "http".into(),
        auth_type: "basic".into(),
        auth_credentials: "user:s3cret".into(),
        backend: "postgres-15".into(),
        description: format!("The {name} service"),
        metadata: meta(&[
            ("team", "core"),
            ("tier", "1"),
            ("owner", "ops"),
            ("empty", ""),
        ]),
    }
}

/// A minimal service registration.
pub fn bare_service(group: &str, name: &str) -> RegisterServiceRequest {
    RegisterServiceRequest {
        service_group: group.into(),
        service_name: name.into(),
        endpoint: "http://x".into(),
        ..Default::default()
    }
}

/// A node registration with every field set and no TTL: addresses
/// `10.1.0.<i>` and `fd00::<i>`, port `9000 + i`, and several metadata
/// entries, so that a re-registration that changes nothing is only
/// recognised as such if the server compares records, not the order a map
/// happened to be sent in.
pub fn full_node(group: &str, service: &str, name: &str, i: u32) -> RegisterNodeRequest {
    RegisterNodeRequest {
        service_group: group.into(),
        service_name: service.into(),
        node_name: name.into(),
        ip: vec![format!("10.1.0.{i}"), format!("fd00::{i}")],
        port: 9000 + i,
        fqdn: format!("{name}.example.com"),
        os: "Debian GNU/Linux 12".into(),
        platform_name: "Linux".into(),
        arch: "x86_64".into(),
        cpu_count: 4 * i,
        memory_mb: (1u64 << 40) + u64::from(i),
        last_boot: Some(Timestamp {
            seconds: 1_700_000_000 + i64::from(i),
            nanos: 123_456_789,
        }),
        metadata: meta(&[
            ("rack", &format!("r{i}")),
            ("zone", "eu-1"),
            ("alpha", "1"),
            ("beta", "2"),
            ("gamma", "3"),
            ("delta", "4"),
        ]),
        status: NodeStatus::Serving as i32,
        locality: Some(Locality {
            region: "eu".into(),
            zone: "eu-1".into(),
            sub_zone: format!("rack-{i}"),
        }),
        weight: 10 + i,
        ttl_seconds: None,
        auto: None,
        instance_id: format!("{name}-instance"),
    }
}

/// A minimal node registration with an explicit address.
pub fn bare_node(group: &str, service: &str, name: &str, ttl: Option<i64>) -> RegisterNodeRequest {
    RegisterNodeRequest {
        service_group: group.into(),
        service_name: service.into(),
        node_name: name.into(),
        ip: vec!["10.0.0.1".into()],
        port: 8080,
        ttl_seconds: ttl,
        ..Default::default()
    }
}
