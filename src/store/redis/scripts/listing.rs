//! The scripts that keep the group listings (the `{listing}` keys).

use std::sync::LazyLock;

use redis::{Script, ScriptInvocation};

use super::{Keys, ScriptCall};
use crate::model::ServiceKey;

plain_script!(LISTING_ADD, "listing_add.lua");
plain_script!(LISTING_REMOVE, "listing_remove.lua");

/// `lua/listing_add.lua`: lists a service and its group. Replies whether
/// the service is new to the listing.
#[derive(Debug)]
pub struct ListingAdd<'a> {
    /// The service.
    pub service: &'a ServiceKey,
}

impl ScriptCall for ListingAdd<'_> {
    type Reply = bool;

    fn invocation(&self, keys: &Keys) -> ScriptInvocation<'static> {
        listing_call(&LISTING_ADD, keys, self.service)
    }
}

/// `lua/listing_remove.lua`: unlists a service, and its group with its
/// last service. Replies whether the service was listed.
#[derive(Debug)]
pub struct ListingRemove<'a> {
    /// The service.
    pub service: &'a ServiceKey,
}

impl ScriptCall for ListingRemove<'_> {
    type Reply = bool;

    fn invocation(&self, keys: &Keys) -> ScriptInvocation<'static> {
        listing_call(&LISTING_REMOVE, keys, self.service)
    }
}

/// Both listing scripts take the same KEYS and ARGV.
fn listing_call(
    script: &'static Script,
    keys: &Keys,
    service: &ServiceKey,
) -> ScriptInvocation<'static> {
    let mut call = script.key(keys.groups());
    call.key(keys.group_services(&service.group))
        .arg(&service.group)
        .arg(&service.service);
    call
}
