//! The Lua scripts that make each multi-key update atomic.
//!
//! Each data write touches the keys of one hash tag (one service, or the
//! listings, or the deadlines) plus, for the scripts that change what
//! watchers see, the revision counter: the one key shared by every change,
//! which gives all of a registry's changes one order. (On Redis Cluster
//! that counter is a cross-slot key; see the README.)

use std::sync::LazyLock;

use redis::Script;

macro_rules! script {
    ($name:ident, $file:literal) => {
        #[doc = concat!("`lua/", $file, "`")]
        pub static $name: LazyLock<Script> =
            LazyLock::new(|| Script::new(include_str!(concat!("lua/", $file))));
    };
}

/// A script that publishes changes: `lua/prelude.lua` comes first.
macro_rules! change_script {
    ($name:ident, $file:literal) => {
        #[doc = concat!("`lua/prelude.lua` + `lua/", $file, "`")]
        pub static $name: LazyLock<Script> = LazyLock::new(|| {
            Script::new(concat!(
                include_str!("lua/prelude.lua"),
                include_str!(concat!("lua/", $file))
            ))
        });
    };
}

change_script!(REGISTER_SERVICE, "register_service.lua");
change_script!(REGISTER_NODE, "register_node.lua");
change_script!(REMOVE_NODE, "remove_node.lua");
change_script!(REMOVE_SERVICE, "remove_service.lua");
change_script!(EXPIRE_NODE, "expire_node.lua");
change_script!(HEARTBEAT, "heartbeat.lua");
script!(SNAPSHOT, "snapshot.lua");
script!(LISTING_ADD, "listing_add.lua");
script!(LISTING_REMOVE, "listing_remove.lua");
script!(FORGET_DEADLINE, "forget_deadline.lua");

/// Every script, for reloading into a Redis that has forgotten them.
pub fn all() -> &'static [&'static Script] {
    static ALL: LazyLock<Vec<&'static Script>> = LazyLock::new(|| {
        vec![
            &*REGISTER_SERVICE,
            &*REGISTER_NODE,
            &*REMOVE_NODE,
            &*REMOVE_SERVICE,
            &*EXPIRE_NODE,
            &*LISTING_ADD,
            &*LISTING_REMOVE,
            &*FORGET_DEADLINE,
            &*SNAPSHOT,
            &*HEARTBEAT,
        ]
    });
    &ALL
}
