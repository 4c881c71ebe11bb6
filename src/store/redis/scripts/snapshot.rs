//! The script that reads a consistent view for a new watcher.

use std::sync::LazyLock;

use redis::{FromRedisValue, ParsingError, Script, ScriptInvocation, Value};

use super::{Keys, ScriptCall, bad_reply};
use crate::model::ServiceKey;

plain_script!(SNAPSHOT, "snapshot.lua");

/// `lua/snapshot.lua`: the revision, a group's listing and some of its
/// services' nodes, all read in one atomic step.
#[derive(Debug)]
pub struct Snapshot<'a> {
    /// The group.
    pub group: &'a str,
    /// The services of the group whose nodes to read.
    pub services: &'a [String],
}

impl ScriptCall for Snapshot<'_> {
    type Reply = SnapshotReply;

    fn invocation(&self, keys: &Keys) -> ScriptInvocation<'static> {
        let mut call = SNAPSHOT.key(keys.revision());
        call.key(keys.group_services(self.group));
        for service in self.services {
            call.key(keys.nodes(&ServiceKey::new(self.group, service.clone())));
        }
        call
    }
}

/// What [`Snapshot`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotReply {
    /// The revision of the last change before the read.
    pub revision: u64,
    /// The group's service names, as listed at that revision.
    pub listing: Vec<String>,
    /// Per service asked for, in order: its `(name, stored envelope)` pairs.
    pub nodes: Vec<Vec<(String, String)>>,
}

impl FromRedisValue for SnapshotReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let Value::Array(items) = &v else {
            return Err(bad_reply("snapshot", &v));
        };
        let [revision, listing, nodes @ ..] = items.as_slice() else {
            return Err(bad_reply("snapshot", &v));
        };
        Ok(Self {
            revision: redis::from_redis_value_ref(revision)?,
            listing: redis::from_redis_value_ref(listing)?,
            nodes: nodes
                .iter()
                .map(redis::from_redis_value_ref)
                .collect::<Result<_, _>>()?,
        })
    }
}
