//! The scripts that write a service's own keys: its record and its nodes.

use std::sync::LazyLock;

use redis::{FromRedisValue, ParsingError, Script, ScriptInvocation, Value};

use super::{Keys, ScriptCall, bad_reply, change_call};
use crate::model::{Millis, ServiceKey};

change_script!(REGISTER_SERVICE, "register_service.lua");
change_script!(REMOVE_SERVICE, "remove_service.lua");

/// `lua/register_service.lua`: writes a service's record whole and
/// publishes service_registered or service_updated, once the service is
/// listed.
#[derive(Debug)]
pub struct RegisterService<'a> {
    /// The service.
    pub service: &'a ServiceKey,
    /// Its record, as `record::encode` writes it.
    pub record: &'a str,
    /// The server's time.
    pub now: Millis,
    /// Write even if the service is not marked listed: the caller has
    /// just listed it ([`super::ListingAdd`]).
    pub listed_now: bool,
}

impl ScriptCall for RegisterService<'_> {
    type Reply = ServiceWrite;

    fn invocation(&self, keys: &Keys) -> ScriptInvocation<'static> {
        let mut call = change_call(&REGISTER_SERVICE, keys, self.service, self.now);
        call.key(keys.service(self.service))
            .key(keys.listed(self.service))
            .arg(self.record)
            .arg(if self.listed_now { "1" } else { "" });
        call
    }
}

/// What [`RegisterService`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceWrite {
    /// Written: the stored envelope.
    Stored(String),
    /// Nothing written: the service is not marked listed; list it, then
    /// write with `listed_now`.
    Unlisted,
}

impl FromRedisValue for ServiceWrite {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let items: Vec<String> = redis::from_redis_value_ref(&v)?;
        match items.as_slice() {
            [status, stored] if status == "stored" => Ok(Self::Stored(stored.clone())),
            [status] if status == "unlisted" => Ok(Self::Unlisted),
            _ => Err(bad_reply("register_service", &v)),
        }
    }
}

/// `lua/remove_service.lua`: removes a service's record and every node,
/// publishing each removal. Its listing is [`super::ListingRemove`]'s job.
#[derive(Debug)]
pub struct RemoveService<'a> {
    /// The service.
    pub service: &'a ServiceKey,
    /// The server's time.
    pub now: Millis,
}

impl ScriptCall for RemoveService<'_> {
    type Reply = RemovedService;

    fn invocation(&self, keys: &Keys) -> ScriptInvocation<'static> {
        let mut call = change_call(&REMOVE_SERVICE, keys, self.service, self.now);
        call.key(keys.service(self.service))
            .key(keys.nodes(self.service))
            .key(keys.listed(self.service));
        call
    }
}

/// What [`RemoveService`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedService {
    /// Whether the service had a record of its own.
    pub had_record: bool,
    /// `(name, stored envelope)` of every node it had, expired ones too.
    pub nodes: Vec<(String, String)>,
}

impl FromRedisValue for RemovedService {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let Value::Array(items) = &v else {
            return Err(bad_reply("remove_service", &v));
        };
        let Some((had_record, nodes)) = items.split_first() else {
            return Err(bad_reply("remove_service", &v));
        };
        Ok(Self {
            had_record: redis::from_redis_value_ref::<i64>(had_record)? == 1,
            nodes: FromRedisValue::from_redis_value_refs(nodes)?,
        })
    }
}
