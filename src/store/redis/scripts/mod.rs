//! The Lua scripts that make each multi-key update atomic, one Rust type
//! per script.
//!
//! Each type owns its script's contract: it pushes the KEYS and ARGV in the
//! order the script's header comment lists them ([`ScriptCall::invocation`])
//! and names what the script returns ([`ScriptCall::Reply`], parsed next to
//! the type). Callers put invocations in pipelines, often several in one
//! MULTI/EXEC, and read the typed replies.
//!
//! Each script touches the keys of one hash tag only (one service, or the
//! listings, or one deadlines shard), so it runs on Redis Cluster too. The
//! scripts that change what watchers see take the next revision of their
//! service (its `rev` key), which gives each service's changes one order.
//!
//! | script | type | reply |
//! | --- | --- | --- |
//! | `register_service.lua` | [`RegisterService`] | [`ServiceWrite`] |
//! | `remove_service.lua` | [`RemoveService`] | [`RemovedService`] |
//! | `register_node.lua` | [`RegisterNode`] | [`NodeWrite`] |
//! | `remove_node.lua` | [`RemoveNode`] | [`NodeRemoval`] |
//! | `expire_node.lua` | [`ExpireNode`] | [`NodeExpiry`] |
//! | `heartbeat.lua` | [`Heartbeat`] | [`NodeRenewal`] |
//! | `listing_add.lua` | [`ListingAdd`] | whether the service is new to the listing |
//! | `listing_remove.lua` | [`ListingRemove`] | unlisted, not listed, or kept |
//! | `mark_listed.lua` | [`MarkListed`] | whether it marked the service |
//! | `settle_deadline.lua` | [`SettleDeadline`] | whether it settled the hint |
//! | `snapshot.lua` | [`Snapshot`] | [`SnapshotReply`] |

use std::sync::LazyLock;

use redis::{FromRedisValue, Pipeline, Script, ScriptInvocation};

use super::keys::Keys;
use crate::model::{Millis, ServiceKey};

/// `lua/record.lua`, after the constants it and `lua/prelude.lua` take
/// from `record.rs`.
macro_rules! record_lua {
    () => {
        concat!(
            "local NODE_RECORD_HEAD = '",
            crate::store::redis::record::node_record_head!(),
            "'\nlocal CREDENTIALS_FIELD = '",
            crate::store::redis::record::credentials_field!(),
            "'\n",
            include_str!("../lua/record.lua")
        )
    };
}

/// A script that reads no stored record: its file alone.
macro_rules! plain_script {
    ($name:ident, $file:literal) => {
        #[doc = concat!("`lua/", $file, "`")]
        pub(super) static $name: LazyLock<Script> =
            LazyLock::new(|| Script::new(include_str!(concat!("../lua/", $file))));
    };
}

/// A script that reads stored records but changes nothing watchers see:
/// `lua/record.lua` comes first.
macro_rules! record_script {
    ($name:ident, $file:literal) => {
        #[doc = concat!("`lua/record.lua` + `lua/", $file, "`")]
        pub(super) static $name: LazyLock<Script> = LazyLock::new(|| {
            Script::new(concat!(
                record_lua!(),
                include_str!(concat!("../lua/", $file))
            ))
        });
    };
}

/// A script that publishes changes: `lua/record.lua` and `lua/prelude.lua`
/// come first. Its invocation starts with [`change_call`].
macro_rules! change_script {
    ($name:ident, $file:literal) => {
        #[doc = concat!("`lua/record.lua` + `lua/prelude.lua` + `lua/", $file, "`")]
        pub(super) static $name: LazyLock<Script> = LazyLock::new(|| {
            Script::new(concat!(
                record_lua!(),
                include_str!("../lua/prelude.lua"),
                include_str!(concat!("../lua/", $file))
            ))
        });
    };
}

mod deadline;
mod listing;
mod node;
mod service;
mod snapshot;

pub use deadline::SettleDeadline;
pub use listing::{ListingAdd, ListingRemove, MarkListed, PENDING_FOR, pending_member};
pub use node::{
    ExpireNode, Heartbeat, NodeExpiry, NodeRemoval, NodeRenewal, NodeWrite, RegisterNode,
    RemoveNode,
};
pub use service::{RegisterService, RemoveService, RemovedService, ServiceWrite};
pub use snapshot::{Snapshot, SnapshotReply};

/// One call of one script.
pub trait ScriptCall {
    /// What the script returns.
    type Reply: FromRedisValue;

    /// The call with its KEYS and ARGV.
    fn invocation(&self, keys: &Keys) -> ScriptInvocation<'static>;

    /// Adds the call to a pipeline, whose reply for it is a [`Self::Reply`]
    /// (or nothing, after `.ignore()`).
    fn add_to<'p>(&self, pipe: &'p mut Pipeline, keys: &Keys) -> &'p mut Pipeline {
        pipe.invoke_script(&self.invocation(keys))
    }
}

/// Every script, for loading into a Redis that has forgotten them.
pub fn all() -> &'static [&'static Script] {
    static ALL: LazyLock<Vec<&'static Script>> = LazyLock::new(|| {
        vec![
            &*service::REGISTER_SERVICE,
            &*service::REMOVE_SERVICE,
            &*node::REGISTER_NODE,
            &*node::REMOVE_NODE,
            &*node::EXPIRE_NODE,
            &*node::HEARTBEAT,
            &*listing::LISTING_ADD,
            &*listing::LISTING_REMOVE,
            &*listing::MARK_LISTED,
            &*deadline::SETTLE_DEADLINE,
            &*snapshot::SNAPSHOT,
        ]
    });
    &ALL
}

/// Starts a call of a change script with where and when its changes go, at
/// the fixed positions `lua/prelude.lua` reads them from: KEYS[1] the
/// service's revision; ARGV[1] `now`, ARGV[2] the change channel, ARGV[3] and
/// ARGV[4] the group and service. The script's own KEYS and ARGV follow.
fn change_call(
    script: &'static Script,
    keys: &Keys,
    service: &ServiceKey,
    now: Millis,
) -> ScriptInvocation<'static> {
    let mut call = script.key(keys.revision(service));
    call.arg(now)
        .arg(keys.changes_channel())
        .arg(&service.group)
        .arg(&service.service);
    call
}

/// A reply that does not have the shape its script promises.
fn bad_reply(script: &str, value: &redis::Value) -> redis::ParsingError {
    format!("unexpected {script} reply: {value:?}").into()
}

/// An optional time or id as the scripts take it: `""` for none.
fn or_empty<T: ToString>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}
