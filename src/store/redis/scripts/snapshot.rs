//! The script that reads a consistent view of one service for a watcher.

use std::sync::LazyLock;

use redis::{FromRedisValue, ParsingError, Script, ScriptInvocation, Value};

use super::{Keys, ScriptCall, bad_reply};
use crate::model::ServiceKey;

plain_script!(SNAPSHOT, "snapshot.lua");

/// `lua/snapshot.lua`: a service's revision and nodes, read in one atomic
/// step.
#[derive(Debug)]
pub struct Snapshot<'a> {
    /// The service.
    pub service: &'a ServiceKey,
}

impl ScriptCall for Snapshot<'_> {
    type Reply = SnapshotReply;

    fn invocation(&self, keys: &Keys) -> ScriptInvocation<'static> {
        let mut call = SNAPSHOT.key(keys.revision(self.service));
        call.key(keys.nodes(self.service));
        call
    }
}

/// What [`Snapshot`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotReply {
    /// The service's revision: every later change of it is above.
    pub revision: u64,
    /// Its `(name, stored envelope)` pairs.
    pub nodes: Vec<(String, String)>,
}

impl FromRedisValue for SnapshotReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let Value::Array(items) = &v else {
            return Err(bad_reply("snapshot", &v));
        };
        let [revision, nodes] = items.as_slice() else {
            return Err(bad_reply("snapshot", &v));
        };
        Ok(Self {
            revision: redis::from_redis_value_ref(revision)?,
            nodes: redis::from_redis_value_ref(nodes)?,
        })
    }
}
