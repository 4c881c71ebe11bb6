//! The Redis key layout (`v2`): one layout for a single Redis, Sentinel
//! and Redis Cluster.
//!
//! Every key starts with `<prefix>:v2:` (the schema version; `v1` data is
//! moved over at start, see `migrate.rs`). Every multi-key script and
//! pipeline touches the keys of one hash tag only, so each stays in one
//! Redis Cluster slot, and no key is touched by every write:
//!
//! - one service's keys share the tag `{group/service}`: its record, its
//!   nodes, its revision and its listing mark change together in one
//!   script, and different services spread over the shards;
//! - the group listings share the tag `{listing}`;
//! - node deadlines are hints spread over [`DEADLINE_SHARDS`] sorted sets
//!   with tags `{dl<k>}`, so the busiest write (a heartbeat's new deadline)
//!   spreads too.
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `discovered:v2:{listing}:groups` | sorted set (all scores 0) | group names |
//! | `discovered:v2:{listing}:group:<g>:services` | sorted set (all scores 0) | service names of group `g` |
//! | `discovered:v2:{listing}:pending` | sorted set: `g/s#id` -> ms | registrations listing a service right now |
//! | `discovered:v2:{<g>/<s>}:service` | string (JSON) | the service's record |
//! | `discovered:v2:{<g>/<s>}:nodes` | hash: node name -> JSON | the service's node records |
//! | `discovered:v2:{<g>/<s>}:rev` | string (integer) | the service's last revision (kept after removal) |
//! | `discovered:v2:{<g>/<s>}:listed` | string | present while the service is known to be listed |
//! | `discovered:v2:{dl<k>}:deadlines` | sorted set: `g/s/n` -> ms | deadline hints of nodes with a TTL |
//!
//! Changes are published on the channel `discovered:v2:changes` (classic
//! PUBLISH, which Redis Cluster delivers on every node).
//!
//! Names never contain `/`, `:`, `#` or braces (see
//! [`crate::model::validate_name`]), so every key and member splits back
//! unambiguously.

use crate::model::ServiceKey;

/// How many sorted sets hold the deadline hints. Fixed by the layout: a
/// server reading another number would miss deadlines.
pub const DEADLINE_SHARDS: u32 = 16;

/// Builds the keys of one registry (one key prefix).
#[derive(Debug, Clone)]
pub struct Keys {
    /// `<prefix>:v2`
    base: String,
    /// `<prefix>`
    prefix: String,
    /// The deadlines shards' keys (their tags take a search to find).
    deadlines: Vec<String>,
}

impl Keys {
    /// Keys under `<prefix>:v2:`.
    pub fn new(prefix: &str) -> Self {
        let base = format!("{prefix}:v2");
        let deadlines = (0..DEADLINE_SHARDS)
            .map(|k| format!("{base}:{{{}}}:deadlines", deadline_tag(k)))
            .collect();
        Self {
            base,
            prefix: prefix.into(),
            deadlines,
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

    /// The sorted set of registrations that are listing a service now.
    pub fn pending(&self) -> String {
        format!("{}:{{listing}}:pending", self.base)
    }

    /// The string holding a service's record.
    pub fn service(&self, key: &ServiceKey) -> String {
        self.of_service(key, "service")
    }

    /// The hash holding a service's node records.
    pub fn nodes(&self, key: &ServiceKey) -> String {
        self.of_service(key, "nodes")
    }

    /// The service's revision: that of its last change.
    pub fn revision(&self, key: &ServiceKey) -> String {
        self.of_service(key, "rev")
    }

    /// Present while the service is known to be listed: writes that find
    /// it need not list the service first.
    pub fn listed(&self, key: &ServiceKey) -> String {
        self.of_service(key, "listed")
    }

    fn of_service(&self, key: &ServiceKey, what: &str) -> String {
        format!("{}:{{{}/{}}}:{what}", self.base, key.group, key.service)
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

    /// The deadline hints of shard `k` (below [`DEADLINE_SHARDS`]).
    pub fn deadlines(&self, shard: u32) -> String {
        self.deadlines[shard as usize].clone()
    }

    /// The deadline hints that hold `member`.
    pub fn deadlines_of(&self, member: &str) -> String {
        self.deadlines(deadline_shard(member))
    }

    /// The layout before this one, for the migration.
    pub fn v1(&self) -> V1Keys {
        V1Keys {
            base: format!("{}:v1", self.prefix),
        }
    }
}

/// The keys of layout `v1` that `migrate.rs` reads and removes.
#[derive(Debug, Clone)]
pub struct V1Keys {
    base: String,
}

impl V1Keys {
    /// The sorted set of group names.
    pub fn groups(&self) -> String {
        format!("{}:{{listing}}:groups", self.base)
    }

    /// The sorted set of a group's service names.
    pub fn group_services(&self, group: &str) -> String {
        format!("{}:{{listing}}:group:{group}:services", self.base)
    }

    /// A service's record.
    pub fn service(&self, key: &ServiceKey) -> String {
        format!("{}:{{{}/{}}}:service", self.base, key.group, key.service)
    }

    /// A service's nodes.
    pub fn nodes(&self, key: &ServiceKey) -> String {
        format!("{}:{{{}/{}}}:nodes", self.base, key.group, key.service)
    }

    /// The single deadlines set and the revision counter of v1.
    pub fn globals(&self) -> [String; 2] {
        [
            format!("{}:deadlines", self.base),
            format!("{}:revision", self.base),
        ]
    }
}

/// The member naming a node in the deadline hints: `group/service/node`.
pub fn deadline_member(key: &ServiceKey, node: &str) -> String {
    format!("{}/{}/{}", key.group, key.service, node)
}

/// Splits a deadlines member back into its service and node.
pub fn parse_deadline_member(member: &str) -> Option<(ServiceKey, String)> {
    let mut parts = member.splitn(3, '/');
    let (g, s, n) = (parts.next()?, parts.next()?, parts.next()?);
    Some((ServiceKey::new(g, s), n.to_string()))
}

/// The hash tag of deadlines shard `k`: `dl<k>-<j>` with the smallest `j`
/// whose Redis Cluster slot falls in the `k`-th of [`DEADLINE_SHARDS`]
/// equal slot ranges. Tags `dl0`..`dl15` alone would land where CRC16
/// puts them (10 of 16 on one master of a three-way split, measured); so
/// spread, every even split of the slots gets an even share of shards.
pub fn deadline_tag(shard: u32) -> String {
    let width = SLOTS / DEADLINE_SHARDS;
    (0..)
        .map(|j| format!("dl{shard}-{j}"))
        .find(|tag| slot_of(tag) / width == shard)
        .expect("some suffix lands in every range")
}

/// Redis Cluster's slot count.
const SLOTS: u32 = 16384;

/// The Redis Cluster slot of a hash tag: CRC16 (XMODEM) modulo 16384.
fn slot_of(tag: &str) -> u32 {
    let crc = tag.bytes().fold(0u16, |mut crc, b| {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
        crc
    });
    u32::from(crc) % SLOTS
}

/// The shard of a deadline member: FNV-1a of its bytes, mixed with
/// MurmurHash3's finalizer (FNV's low bits alone spread names that differ
/// in their last characters unevenly). Fixed by the layout (every server
/// must agree), so not `std`'s randomly keyed hash.
fn deadline_shard(member: &str) -> u32 {
    let mut h = member.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h % DEADLINE_SHARDS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let keys = Keys::new("discovered");
        let k = ServiceKey::new("default", "payments");
        assert_eq!(keys.nodes(&k), "discovered:v2:{default/payments}:nodes");
        assert_eq!(keys.service(&k), "discovered:v2:{default/payments}:service");
        assert_eq!(keys.revision(&k), "discovered:v2:{default/payments}:rev");
        assert_eq!(keys.groups(), "discovered:v2:{listing}:groups");
        assert_eq!(
            keys.group_services("default"),
            "discovered:v2:{listing}:group:default:services"
        );
        assert!(keys.deadlines(3).starts_with("discovered:v2:{dl3-"));
        let m = deadline_member(&k, "pay-1");
        assert_eq!(parse_deadline_member(&m), Some((k, "pay-1".into())));
    }

    #[test]
    fn slots_are_redis_clusters() {
        // CLUSTER KEYSLOT, measured on Redis 7.0.
        assert_eq!(slot_of("default/payments"), 15393);
        assert_eq!(slot_of("123456789"), 0x31c3);
    }

    #[test]
    fn deadline_shards_spread_over_the_slots() {
        for k in 0..DEADLINE_SHARDS {
            let slot = slot_of(&deadline_tag(k));
            assert_eq!(slot / 1024, k, "{}", deadline_tag(k));
        }
    }

    #[test]
    fn deadlines_spread_over_every_shard() {
        let mut count = [0u32; DEADLINE_SHARDS as usize];
        for i in 0..16_000 {
            count[deadline_shard(&format!("default/svc-{}/node-{i}", i % 97)) as usize] += 1;
        }
        // Each shard within 10% of the even share of 1,000.
        assert!(count.iter().all(|c| (900..=1100).contains(c)), "{count:?}");
    }
}
