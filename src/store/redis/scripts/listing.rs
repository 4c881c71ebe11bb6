//! The scripts that keep the group listings (the `{listing}` keys), and
//! the listed mark a service keeps in its own slot.
//!
//! A service's records and its listing live in different hash slots (on
//! Redis Cluster, often on different nodes), so no one script or
//! transaction changes both. The order of steps keeps the promise that a
//! service with records is listed:
//!
//! - a registration that does not find the service marked listed lists it
//!   first ([`ListingAdd`], which also notes the registration as pending),
//!   writes, drops its pending note, then marks the service listed
//!   ([`MarkListed`]); later registrations find the mark and write in one
//!   step;
//! - a removal deletes the records and the mark, then unlists the service
//!   ([`ListingRemove`]) unless a registration is pending for it.
//!
//! So records are only ever written while the service is listed, and a
//! group's watchers, which read the listing after subscribing, never miss
//! a service's first changes.

use std::sync::LazyLock;

use redis::{Script, ScriptInvocation};

use super::{Keys, ScriptCall};
use crate::model::{Millis, ServiceKey};

plain_script!(LISTING_ADD, "listing_add.lua");
plain_script!(LISTING_REMOVE, "listing_remove.lua");
plain_script!(MARK_LISTED, "mark_listed.lua");

/// How long a pending registration keeps its service listed against a
/// removal: far longer than a registration's few round trips take, so
/// only one that died midway is ignored.
pub const PENDING_FOR: Millis = 10_000;

/// `lua/listing_add.lua`: lists a service and its group and notes the
/// registration as pending. Replies whether the service is new to the
/// listing.
#[derive(Debug)]
pub struct ListingAdd<'a> {
    /// The service.
    pub service: &'a ServiceKey,
    /// The registration's pending member (see [`pending_member`]).
    pub pending: &'a str,
    /// The server's time.
    pub now: Millis,
}

impl ScriptCall for ListingAdd<'_> {
    type Reply = bool;

    fn invocation(&self, keys: &Keys) -> ScriptInvocation<'static> {
        let mut call = listing_call(&LISTING_ADD, keys, self.service);
        call.arg(self.pending).arg(self.now);
        call
    }
}

/// `lua/listing_remove.lua`: unlists a removed service, and its group with
/// its last service, unless a registration is pending for it.
#[derive(Debug)]
pub struct ListingRemove<'a> {
    /// The service.
    pub service: &'a ServiceKey,
    /// The server's time.
    pub now: Millis,
}

impl ScriptCall for ListingRemove<'_> {
    /// 1 unlisted, 0 was not listed, -1 kept for a pending registration.
    type Reply = i64;

    fn invocation(&self, keys: &Keys) -> ScriptInvocation<'static> {
        let mut call = listing_call(&LISTING_REMOVE, keys, self.service);
        call.arg(self.now).arg(PENDING_FOR);
        call
    }
}

/// `lua/mark_listed.lua`: marks a service listed if it still has records.
#[derive(Debug)]
pub struct MarkListed<'a> {
    /// The service.
    pub service: &'a ServiceKey,
}

impl ScriptCall for MarkListed<'_> {
    type Reply = bool;

    fn invocation(&self, keys: &Keys) -> ScriptInvocation<'static> {
        let mut call = MARK_LISTED.key(keys.service(self.service));
        call.key(keys.nodes(self.service))
            .key(keys.listed(self.service));
        call
    }
}

/// A registration's member in the pending set: `group/service#<random>`.
pub fn pending_member(service: &ServiceKey) -> String {
    format!(
        "{}/{}#{:016x}",
        service.group,
        service.service,
        rand::random::<u64>()
    )
}

/// Both listing scripts start with the same KEYS and ARGV.
fn listing_call(
    script: &'static Script,
    keys: &Keys,
    service: &ServiceKey,
) -> ScriptInvocation<'static> {
    let mut call = script.key(keys.groups());
    call.key(keys.group_services(&service.group))
        .key(keys.pending())
        .arg(&service.group)
        .arg(&service.service);
    call
}
