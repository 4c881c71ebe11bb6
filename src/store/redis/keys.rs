//! The Redis key layout.
//!
//! Every key starts with `<prefix>:v1:` (the schema version), so a later
//! layout can live beside this one during an upgrade. One service's keys
//! share the hash tag `{group/service}`, so its multi-key scripts stay in
//! one Redis Cluster slot while different services spread over the shards.
//! The group listings share the tag `{listing}`, so adding and removing a
//! listing entry is one atomic script too.
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `discovered:v1:{listing}:groups` | sorted set (all scores 0) | group names |
//! | `discovered:v1:{listing}:group:<g>:services` | sorted set (all scores 0) | service names of group `g` |
//! | `discovered:v1:{<g>/<s>}:service` | string (JSON) | the service's record |
//! | `discovered:v1:{<g>/<s>}:nodes` | hash: node name -> JSON | the service's node records |
//! | `discovered:v1:deadlines` | sorted set: `g/s/n` -> expires_at ms | nodes with a TTL, for the sweeper |
//! | `discovered:v1:revision` | string (integer) | the revision of the last change |
//!
//! Changes are published on the channel `discovered:v1:changes`.
//!
//! Names never contain `/`, `:` or braces (see [`crate::model::validate_name`]),
//! so every key and `g/s/n` member splits back unambiguously.

use crate::model::ServiceKey;

/// Builds the keys of one registry (one key prefix).
#[derive(Debug, Clone)]
pub struct Keys {
    /// `<prefix>:v1`
    base: String,
}

impl Keys {
    /// Keys under `<prefix>:v1:`.
    pub fn new(prefix: &str) -> Self {
        Self {
            base: format!("{prefix}:v1"),
        }
    }

    /// The sorted set of group names.
    pub fn groups(&self) -> String {
        format!("{}:{{listing}}:groups", self.base)
    }

    /// The sorted set of a group's service names.
    pub fn group_services(&self, group: &str) -> String {
        format!("{}:{{listing}}:group:{group}:services", self.base)
    }

    /// The string holding a service's record.
    pub fn service(&self, key: &ServiceKey) -> String {
        format!("{}:{{{}/{}}}:service", self.base, key.group, key.service)
    }

    /// The hash holding a service's node records.
    pub fn nodes(&self, key: &ServiceKey) -> String {
        format!("{}:{{{}/{}}}:nodes", self.base, key.group, key.service)
    }

    /// The counter of changes: the revision of the last one.
    pub fn revision(&self) -> String {
        format!("{}:revision", self.base)
    }

    /// The channel the write scripts publish changes on.
    pub fn changes_channel(&self) -> String {
        format!("{}:changes", self.base)
    }

    /// The keyspace-notification pattern for every key of this registry
    /// in database `db`.
    pub fn keyspace_pattern(&self, db: i64) -> String {
        format!("__keyspace@{db}__:{}:*", self.base)
    }

    /// The sorted set of node deadlines.
    pub fn deadlines(&self) -> String {
        format!("{}:deadlines", self.base)
    }
}

/// The member naming a node in the deadlines set: `group/service/node`.
pub fn deadline_member(key: &ServiceKey, node: &str) -> String {
    format!("{}/{}/{}", key.group, key.service, node)
}

/// Splits a deadlines member back into its service and node.
pub fn parse_deadline_member(member: &str) -> Option<(ServiceKey, String)> {
    let mut parts = member.splitn(3, '/');
    let (g, s, n) = (parts.next()?, parts.next()?, parts.next()?);
    Some((ServiceKey::new(g, s), n.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let keys = Keys::new("discovered");
        let k = ServiceKey::new("default", "payments");
        assert_eq!(keys.nodes(&k), "discovered:v1:{default/payments}:nodes");
        assert_eq!(keys.service(&k), "discovered:v1:{default/payments}:service");
        assert_eq!(keys.groups(), "discovered:v1:{listing}:groups");
        assert_eq!(
            keys.group_services("default"),
            "discovered:v1:{listing}:group:default:services"
        );
        let m = deadline_member(&k, "pay-1");
        assert_eq!(parse_deadline_member(&m), Some((k, "pay-1".into())));
    }
}
