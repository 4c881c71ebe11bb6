//! The Lua scripts that make each multi-key update atomic.
//!
//! Each touches the keys of one hash tag only (one service, or the
//! listings, or the deadlines), so it stays legal on Redis Cluster.

use std::sync::LazyLock;

use redis::Script;

macro_rules! script {
    ($name:ident, $file:literal) => {
        #[doc = concat!("`lua/", $file, "`")]
        pub static $name: LazyLock<Script> =
            LazyLock::new(|| Script::new(include_str!(concat!("lua/", $file))));
    };
}

script!(REGISTER_SERVICE, "register_service.lua");
script!(REGISTER_NODE, "register_node.lua");
script!(REMOVE_NODE, "remove_node.lua");
script!(REMOVE_SERVICE, "remove_service.lua");
script!(EXPIRE_NODE, "expire_node.lua");
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
        ]
    });
    &ALL
}
