//! The Redis backend: state shared by any number of `discovered` processes.
//!
//! | file | holds |
//! | --- | --- |
//! | `config.rs` | [`RedisConfig`]: where the registry lives |
//! | `registry.rs` | [`RedisRegistry`]: the [`crate::store::Registry`] operations |
//! | `keys.rs` | the key layout ([`Keys`]) |
//! | `record.rs` | how records are stored: the envelope, and what the scripts rely on |
//! | `scripts/` | one type per Lua script (`lua/`): its KEYS, ARGV and reply |
//! | `pool.rs` | a pool of connections ([`RedisPool`]): one for requests, one for large reads, one for the health probe (see `registry.rs`) |
//! | `sweeper.rs` | removes the nodes whose deadline has passed |
//! | `subscriber.rs` | the one subscription that feeds every watcher |
//! | `changes.rs` | reads the change messages the scripts publish |
//!
//! Round trips per call:
//!
//! | call | Redis work | round trips |
//! | --- | --- | --- |
//! | RegisterService | `listing_add` + `register_service` scripts (MULTI); with a secret key and credentials, a GET of the old record first (see `sealed_credentials` in `registry.rs`) | 1-2 |
//! | RegisterNode | `listing_add`, ZADD/ZREM deadline, `register_node` script (MULTI) | 1 |
//! | GetService | GET record + ZSCORE listing | 1 |
//! | GetNodes | HGETALL | 1 |
//! | ListServices / ListServiceGroups | ZRANGEBYLEX | 1 |
//! | RemoveNode | `remove_node` script, then ZREM deadline if removed | 1-2 |
//! | Heartbeat | `heartbeat` script, then ZADD/ZREM deadline if renewed | 1-2 |
//! | RemoveService | `remove_service` + `listing_remove` scripts (MULTI), then ZREM deadlines | 1-2 |
//! | RemoveServiceGroup | ZRANGE, then the RemoveService work per service | 2-3 |
//! | WatchService start | `snapshot` script (plus a ZRANGE for a whole group) | 1-2 |
//!
//! Snapshots and RemoveServiceGroup (large replies) run on connections of
//! their own, a few at a time, and the health probe's PING on one of its
//! own: a RESYNC of hundreds of watchers must not queue small calls or the
//! probe behind hundreds of large replies (issue 11).
//!
//! Every script that changes what watchers see also takes the next
//! revision and publishes the change (see `lua/prelude.lua`); one
//! subscription per process (`subscriber.rs`) feeds every watch stream.
//!
//! Writes that touch a service's listing and its records go as one
//! MULTI/EXEC (see `atomic_pipeline` in `registry.rs`), so no reader and no
//! racing writer sees one half without the other.

mod changes;
mod cluster;
mod config;
mod keys;
mod master;
mod migrate;
mod pool;
// Public only for tests/redis_scripts.rs, which runs the scripts on
// records the Rust side encoded: not part of the crate's API.
#[doc(hidden)]
pub mod record;
mod registry;
#[doc(hidden)]
pub mod scripts;
mod sentinel;
mod shards;
mod subscriber;
mod sweeper;

pub use config::{ConfigError, DataNode, RedisConfig, Target};
pub use keys::{DEADLINE_SHARDS, Keys};
pub use pool::{Purpose, RedisPool};
pub use registry::{CheckError, RedisRegistry};
pub use sentinel::{ResolveError, Sentinels};
