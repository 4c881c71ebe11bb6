//! Conversions between the protobuf messages and the domain types, with
//! the validation of every request field on the way in.

use std::collections::BTreeMap;

use prost_types::Timestamp;
use tonic::Status;

use crate::model::{
    InvalidField, Millis, NodeRecord, NodeSpec, ServiceRecord, ServiceSpec, WallTime, validate_name,
};
use crate::proto::v1 as pb;
use crate::store::StoreError;

impl From<InvalidField> for Status {
    fn from(e: InvalidField) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => Status::unavailable(m),
            StoreError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                Status::internal(m)
            }
        }
    }
}

/// A validated name, or the group's default when it may be defaulted.
pub fn group_or_default(value: &str, default: &str) -> Result<String, InvalidField> {
    if value.is_empty() {
        return Ok(default.to_string());
    }
    validate_name("service_group", value)?;
    Ok(value.to_string())
}

/// A validated name field.
pub fn name(field: &str, value: &str) -> Result<String, InvalidField> {
    validate_name(field, value)?;
    Ok(value.to_string())
}

/// Milliseconds since the epoch as a protobuf timestamp.
pub fn timestamp(ms: Millis) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn instant_in(field: &str, t: Option<Timestamp>) -> Result<Option<WallTime>, InvalidField> {
    match t {
        None => Ok(None),
        // The range protobuf's Timestamp allows: years 0001 to 9999.
        Some(t) if !(-62_135_596_800..=253_402_300_799).contains(&t.seconds) => Err(
            InvalidField::new(field, "must be between years 0001 and 9999"),
        ),
        Some(t) if (0..1_000_000_000).contains(&t.nanos) => Ok(Some(WallTime {
            seconds: t.seconds,
            nanos: t.nanos,
        })),
        Some(_) => Err(InvalidField::new(
            field,
            "nanos must be between 0 and 999,999,999",
        )),
    }
}

fn sorted(map: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    map.into_iter().collect()
}

/// The service spec of a registration, validated.
pub fn service_spec(r: pb::RegisterServiceRequest) -> Result<ServiceSpec, InvalidField> {
    let spec = ServiceSpec {
        endpoint: r.endpoint,
        endpoint_type: r.endpoint_type,
        auth_type: r.auth_type,
        auth_credentials: r.auth_credentials,
        backend: r.backend,
        description: r.description,
        metadata: sorted(r.metadata),
    };
    spec.validate()?;
    Ok(spec)
}

/// The node spec of a registration, validated, addresses canonical.
pub fn node_spec(r: pb::RegisterNodeRequest) -> Result<NodeSpec, InvalidField> {
    if !r.instance_id.is_empty() {
        validate_name("instance_id", &r.instance_id)?;
    }
    let mut spec = NodeSpec {
        instance_id: r.instance_id,
        ip: r.ip,
        port: r.port,
        fqdn: r.fqdn,
        os: r.os,
        platform_name: r.platform_name,
        arch: r.arch,
        cpu_count: r.cpu_count,
        memory_mb: r.memory_mb,
        last_boot: instant_in("last_boot", r.last_boot)?,
        metadata: sorted(r.metadata),
    };
    if spec.port > u32::from(u16::MAX) {
        return Err(InvalidField::new(
            "port",
            format!("must be at most 65535 (got {})", spec.port),
        ));
    }
    spec.validate()?;
    Ok(spec)
}

/// A service record as the API returns it; credentials only when asked.
pub fn service_out(r: ServiceRecord, reveal_credentials: bool) -> pb::Service {
    pb::Service {
        service_group: r.key.group,
        service_name: r.key.service,
        endpoint: r.spec.endpoint,
        endpoint_type: r.spec.endpoint_type,
        auth_type: r.spec.auth_type,
        auth_credentials: if reveal_credentials {
            r.spec.auth_credentials
        } else {
            String::new()
        },
        backend: r.spec.backend,
        description: r.spec.description,
        metadata: r.spec.metadata.into_iter().collect(),
        registered_at: r.registered_at.map(timestamp),
        updated_at: r.updated_at.map(timestamp),
    }
}

/// A node record as the API returns it.
pub fn node_out(r: NodeRecord) -> pb::Node {
    pb::Node {
        service_group: r.key.group,
        service_name: r.key.service,
        node_name: r.name,
        ip: r.spec.ip,
        port: r.spec.port,
        fqdn: r.spec.fqdn,
        os: r.spec.os,
        platform_name: r.spec.platform_name,
        arch: r.spec.arch,
        cpu_count: r.spec.cpu_count,
        memory_mb: r.spec.memory_mb,
        last_boot: r.spec.last_boot.map(|t| Timestamp {
            seconds: t.seconds,
            nanos: t.nanos,
        }),
        metadata: r.spec.metadata.into_iter().collect(),
        registered_at: Some(timestamp(r.registered_at)),
        updated_at: Some(timestamp(r.updated_at)),
        expires_at: r.expires_at.map(timestamp),
        instance_id: r.spec.instance_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_split_milliseconds() {
        let t = timestamp(1_700_000_000_123);
        assert_eq!((t.seconds, t.nanos), (1_700_000_000, 123_000_000));
        let t = timestamp(-1);
        assert_eq!((t.seconds, t.nanos), (-1, 999_000_000));
    }
}
