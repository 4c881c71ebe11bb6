//! Conversions between the generated API types and the domain types: into
//! the domain with validation (`TryFrom`, failing with the field that broke
//! a rule), out of it infallibly (`From`). The server, the agent and the
//! client all convert here.

use std::collections::{BTreeMap, HashMap};

use prost_types::Timestamp;

use super::v1 as pb;
use crate::model::{
    InvalidField, Locality, Millis, NodeRecord, NodeSpec, NodeStatus, ServiceRecord, ServiceSpec,
    WallTime, validate_name,
};

/// Milliseconds since the epoch (how the registry keeps its own times) as
/// a protobuf timestamp.
pub fn timestamp(ms: Millis) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

impl From<WallTime> for Timestamp {
    fn from(t: WallTime) -> Self {
        Timestamp {
            seconds: t.seconds,
            nanos: t.nanos,
        }
    }
}

/// A protobuf timestamp outside the range the protobuf spec allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidTimestamp {
    /// Seconds before year 0001 or after 9999.
    #[error("must be between years 0001 and 9999")]
    Year,
    /// Nanos outside one second.
    #[error("nanos must be between 0 and 999,999,999")]
    Nanos,
}

impl TryFrom<Timestamp> for WallTime {
    type Error = InvalidTimestamp;

    fn try_from(t: Timestamp) -> Result<Self, Self::Error> {
        // The range protobuf's Timestamp allows: years 0001 to 9999.
        if !(-62_135_596_800..=253_402_300_799).contains(&t.seconds) {
            return Err(InvalidTimestamp::Year);
        }
        if !(0..1_000_000_000).contains(&t.nanos) {
            return Err(InvalidTimestamp::Nanos);
        }
        Ok(WallTime {
            seconds: t.seconds,
            nanos: t.nanos,
        })
    }
}

fn sorted(map: HashMap<String, String>) -> BTreeMap<String, String> {
    map.into_iter().collect()
}

/// The service's record from a registration, validated.
impl TryFrom<pb::RegisterServiceRequest> for ServiceSpec {
    type Error = InvalidField;

    fn try_from(r: pb::RegisterServiceRequest) -> Result<Self, Self::Error> {
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
}

/// The node's record from a registration, validated, its addresses in
/// canonical form.
impl TryFrom<pb::RegisterNodeRequest> for NodeSpec {
    type Error = InvalidField;

    fn try_from(r: pb::RegisterNodeRequest) -> Result<Self, Self::Error> {
        if !r.instance_id.is_empty() {
            validate_name("instance_id", &r.instance_id)?;
        }
        let last_boot = r
            .last_boot
            .map(WallTime::try_from)
            .transpose()
            .map_err(|e| InvalidField::new("last_boot", e.to_string()))?;
        if r.port > u32::from(u16::MAX) {
            return Err(InvalidField::new(
                "port",
                format!("must be at most 65535 (got {})", r.port),
            ));
        }
        let status = match pb::NodeStatus::try_from(r.status) {
            Ok(pb::NodeStatus::Unspecified | pb::NodeStatus::Serving) => NodeStatus::Serving,
            Ok(pb::NodeStatus::Draining) => NodeStatus::Draining,
            Err(_) => {
                return Err(InvalidField::new(
                    "status",
                    format!("unknown node status {}", r.status),
                ));
            }
        };
        let locality = r.locality.map_or_else(Locality::default, |l| Locality {
            region: l.region,
            zone: l.zone,
            sub_zone: l.sub_zone,
        });
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
            last_boot,
            metadata: sorted(r.metadata),
            status,
            locality,
            weight: r.weight,
        };
        spec.validate()?;
        Ok(spec)
    }
}

impl pb::Service {
    /// A service record as the API returns it: `auth_credentials` only when
    /// `reveal_credentials` is set.
    pub fn from_record(r: ServiceRecord, reveal_credentials: bool) -> Self {
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
}

/// A service record as the API returns it by default: without credentials.
impl From<ServiceRecord> for pb::Service {
    fn from(r: ServiceRecord) -> Self {
        Self::from_record(r, false)
    }
}

/// A node record as the API returns it.
impl From<NodeRecord> for pb::Node {
    fn from(r: NodeRecord) -> Self {
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
            last_boot: r.spec.last_boot.map(Timestamp::from),
            metadata: r.spec.metadata.into_iter().collect(),
            registered_at: Some(timestamp(r.registered_at)),
            updated_at: Some(timestamp(r.updated_at)),
            expires_at: r.expires_at.map(timestamp),
            instance_id: r.spec.instance_id,
            status: match r.spec.status {
                NodeStatus::Serving => pb::NodeStatus::Serving,
                NodeStatus::Draining => pb::NodeStatus::Draining,
            } as i32,
            locality: (!r.spec.locality.is_empty()).then_some(pb::Locality {
                region: r.spec.locality.region,
                zone: r.spec.locality.zone,
                sub_zone: r.spec.locality.sub_zone,
            }),
            weight: r.spec.weight,
        }
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

    #[test]
    fn wall_times_round_trip_within_the_protobuf_range() {
        let t = Timestamp {
            seconds: 1_700_000_000,
            nanos: 5,
        };
        assert_eq!(Timestamp::from(WallTime::try_from(t).unwrap()), t);
        let late = Timestamp {
            seconds: 253_402_300_800,
            nanos: 0,
        };
        assert_eq!(WallTime::try_from(late), Err(InvalidTimestamp::Year));
        let bad = Timestamp {
            seconds: 0,
            nanos: -1,
        };
        assert_eq!(WallTime::try_from(bad), Err(InvalidTimestamp::Nanos));
    }

    #[test]
    fn a_node_request_names_the_field_it_breaks() {
        let req = pb::RegisterNodeRequest {
            port: 70_000,
            ..Default::default()
        };
        assert_eq!(NodeSpec::try_from(req).unwrap_err().field, "port");
        let req = pb::RegisterNodeRequest {
            last_boot: Some(Timestamp {
                seconds: 0,
                nanos: 1_000_000_000,
            }),
            ..Default::default()
        };
        assert_eq!(NodeSpec::try_from(req).unwrap_err().field, "last_boot");
    }

    #[test]
    fn credentials_leave_only_when_asked() {
        let mut record = ServiceRecord::implicit(crate::model::ServiceKey::new("g", "s"));
        record.spec.auth_credentials = "secret".into();
        assert_eq!(pb::Service::from(record.clone()).auth_credentials, "");
        assert_eq!(
            pb::Service::from_record(record, true).auth_credentials,
            "secret"
        );
    }
}
