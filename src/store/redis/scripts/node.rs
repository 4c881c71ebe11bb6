//! The scripts that write one node: register, remove, expire, renew.

use std::sync::LazyLock;

use redis::{FromRedisValue, ParsingError, Script, ScriptInvocation, Value};

use super::{Keys, ScriptCall, bad_reply, change_call, or_empty};
use crate::model::{Actor, Millis, ServiceKey};

change_script!(REGISTER_NODE, "register_node.lua");
change_script!(REMOVE_NODE, "remove_node.lua");
change_script!(EXPIRE_NODE, "expire_node.lua");
record_script!(HEARTBEAT, "heartbeat.lua");

/// `lua/register_node.lua`: writes a node's record whole and publishes
/// node_added or node_updated, once the service is listed. Its deadline
/// hint is the caller's to set first.
#[derive(Debug)]
pub struct RegisterNode<'a> {
    /// The node's service.
    pub service: &'a ServiceKey,
    /// The node's name.
    pub node: &'a str,
    /// The node's record, as `record::encode` writes it.
    pub record: &'a str,
    /// The server's time.
    pub now: Millis,
    /// The node's deadline, if it has a TTL.
    pub expires_at: Option<Millis>,
    /// Keep a live node's instance id rather than the record's.
    pub keep_instance: bool,
    /// Who registers it, when the registry is protected.
    pub actor: Option<&'a Actor>,
    /// Write even if the service is not marked listed: the caller has
    /// just listed it ([`super::ListingAdd`]).
    pub listed_now: bool,
}

impl ScriptCall for RegisterNode<'_> {
    type Reply = NodeWrite;

    fn invocation(&self, keys: &Keys) -> ScriptInvocation<'static> {
        let mut call = change_call(&REGISTER_NODE, keys, self.service, self.now);
        call.key(keys.nodes(self.service))
            .key(keys.listed(self.service))
            .arg(self.node)
            .arg(self.record)
            .arg(or_empty(self.expires_at))
            .arg(if self.keep_instance { "1" } else { "" });
        add_actor(&mut call, self.actor);
        call.arg(if self.listed_now { "1" } else { "" });
        call
    }
}

/// The two arguments every node-writing script takes about its caller:
/// the name as a JSON string (as the envelope stores it) and whether it
/// may change nodes others registered; both empty without auth.
fn add_actor(call: &mut ScriptInvocation<'static>, actor: Option<&Actor>) {
    match actor {
        Some(a) => {
            let name = serde_json::to_string(&a.name).expect("a string always encodes");
            call.arg(name).arg(if a.admin { "1" } else { "" });
        }
        None => {
            call.arg("").arg("");
        }
    }
}

/// An owner as the scripts reply it: the JSON string the envelope holds.
fn owner_name(script: &str, json: &str, v: &Value) -> Result<String, ParsingError> {
    serde_json::from_str(json).map_err(|_| bad_reply(script, v))
}

/// What [`RegisterNode`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeWrite {
    /// Written: the stored envelope, and whether the record or the owner
    /// changed (not for a renewal that registered the same again).
    Stored {
        /// The stored envelope.
        envelope: String,
        /// Whether anything but the times and the deadline changed.
        changed: bool,
    },
    /// A live node registered by another identity (its name) is there;
    /// nothing changed.
    Owned(String),
    /// Nothing written: the service is not marked listed; list it, then
    /// write with `listed_now`.
    Unlisted,
}

impl FromRedisValue for NodeWrite {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let items: Vec<String> = redis::from_redis_value_ref(&v)?;
        match items.as_slice() {
            [status, stored, changed] if status == "stored" => Ok(Self::Stored {
                envelope: stored.clone(),
                changed: changed == "1",
            }),
            [status, owner] if status == "owned" => {
                Ok(Self::Owned(owner_name("register_node", owner, &v)?))
            }
            [status] if status == "unlisted" => Ok(Self::Unlisted),
            _ => Err(bad_reply("register_node", &v)),
        }
    }
}

/// `lua/remove_node.lua`: removes a node, unless a live one belongs to
/// another instance, and publishes node_removed (or node_expired).
#[derive(Debug)]
pub struct RemoveNode<'a> {
    /// The node's service.
    pub service: &'a ServiceKey,
    /// The node's name.
    pub node: &'a str,
    /// The instance the node must belong to, if any.
    pub instance: Option<&'a str>,
    /// The server's time.
    pub now: Millis,
    /// Who removes it, when the registry is protected.
    pub actor: Option<&'a Actor>,
}

impl ScriptCall for RemoveNode<'_> {
    type Reply = NodeRemoval;

    fn invocation(&self, keys: &Keys) -> ScriptInvocation<'static> {
        let mut call = change_call(&REMOVE_NODE, keys, self.service, self.now);
        call.key(keys.nodes(self.service))
            .arg(self.node)
            .arg(or_empty(self.instance));
        add_actor(&mut call, self.actor);
        call
    }
}

/// What [`RemoveNode`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeRemoval {
    /// Removed; the envelope it had (which may have been past its deadline).
    Removed(String),
    /// There was no such node.
    Missing,
    /// A live node registered by another identity (its name) is there;
    /// nothing changed.
    Owned(String),
    /// A live node of another instance (its id) is there; nothing changed.
    OtherInstance(String),
}

impl FromRedisValue for NodeRemoval {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let items: Vec<String> = redis::from_redis_value_ref(&v)?;
        match items.as_slice() {
            [status, stored] if status == "removed" => Ok(Self::Removed(stored.clone())),
            [status] if status == "missing" => Ok(Self::Missing),
            [status, owner] if status == "owned" => {
                Ok(Self::Owned(owner_name("remove_node", owner, &v)?))
            }
            [status, id] if status == "other" => Ok(Self::OtherInstance(id.clone())),
            _ => Err(bad_reply("remove_node", &v)),
        }
    }
}

/// `lua/expire_node.lua`: removes a node whose deadline has passed and
/// publishes node_expired.
#[derive(Debug)]
pub struct ExpireNode<'a> {
    /// The node's service.
    pub service: &'a ServiceKey,
    /// The node's name.
    pub node: &'a str,
    /// The server's time, which the deadline must not be after.
    pub now: Millis,
}

impl ScriptCall for ExpireNode<'_> {
    type Reply = NodeExpiry;

    fn invocation(&self, keys: &Keys) -> ScriptInvocation<'static> {
        let mut call = change_call(&EXPIRE_NODE, keys, self.service, self.now);
        call.key(keys.nodes(self.service)).arg(self.node);
        call
    }
}

/// What [`ExpireNode`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeExpiry {
    /// The node was past its deadline and is gone now.
    Expired,
    /// There is no such node.
    Gone,
    /// The node is live: its deadline, or `None` without a TTL.
    Live(Option<Millis>),
}

impl FromRedisValue for NodeExpiry {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let items: Vec<String> = redis::from_redis_value_ref(&v)?;
        match items.as_slice() {
            [status] if status == "expired" => Ok(Self::Expired),
            [status] if status == "gone" => Ok(Self::Gone),
            [status, deadline] if status == "live" => match deadline.as_str() {
                "" => Ok(Self::Live(None)),
                d => d
                    .parse()
                    .map(|d| Self::Live(Some(d)))
                    .map_err(|_| bad_reply("expire_node", &v)),
            },
            _ => Err(bad_reply("expire_node", &v)),
        }
    }
}

/// `lua/heartbeat.lua`: gives a live node a new deadline, publishing
/// nothing.
#[derive(Debug)]
pub struct Heartbeat<'a> {
    /// The node's service.
    pub service: &'a ServiceKey,
    /// The node's name.
    pub node: &'a str,
    /// The server's time.
    pub now: Millis,
    /// The new deadline; `None`: the node no longer expires.
    pub expires_at: Option<Millis>,
    /// The instance the node must belong to, if any.
    pub instance: Option<&'a str>,
    /// Who renews it, when the registry is protected.
    pub actor: Option<&'a Actor>,
}

impl ScriptCall for Heartbeat<'_> {
    type Reply = NodeRenewal;

    fn invocation(&self, keys: &Keys) -> ScriptInvocation<'static> {
        let mut call = HEARTBEAT.key(keys.nodes(self.service));
        call.arg(self.node)
            .arg(self.now)
            .arg(or_empty(self.expires_at))
            .arg(or_empty(self.instance));
        add_actor(&mut call, self.actor);
        call
    }
}

/// What [`Heartbeat`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeRenewal {
    /// The node has its new deadline.
    Renewed,
    /// There is no live node of that name.
    Missing,
    /// The node was registered by another identity (its name); nothing
    /// changed.
    Owned(String),
    /// The node belongs to another instance (its id); nothing changed.
    OtherInstance(String),
}

impl FromRedisValue for NodeRenewal {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let items: Vec<String> = redis::from_redis_value_ref(&v)?;
        match items.as_slice() {
            [status] if status == "renewed" => Ok(Self::Renewed),
            [status] if status == "missing" => Ok(Self::Missing),
            [status, owner] if status == "owned" => {
                Ok(Self::Owned(owner_name("heartbeat", owner, &v)?))
            }
            [status, id] if status == "other" => Ok(Self::OtherInstance(id.clone())),
            _ => Err(bad_reply("heartbeat", &v)),
        }
    }
}
