//! The Redis backend: state shared by any number of `discovered` processes.
//!
//! | file | holds |
//! | --- | --- |
//! | `config.rs` | [`RedisConfig`]: where the registry lives |
//! | `registry.rs` | [`RedisRegistry`]: the [`crate::store::Registry`] operations |
//! | `keys.rs` | the key layout ([`Keys`]): one layout for single Redis, Sentinel and Cluster |
//! | `record.rs` | how records are stored: the envelope, and what the scripts rely on |
//! | `scripts/` | one type per Lua script (`lua/`): its KEYS, ARGV and reply |
//! | `pool.rs` | the connections ([`RedisPool`]): one pool for requests, one for large reads, one for the health probe |
//! | `master.rs`, `sentinel.rs` | which node is the master (single Redis, Sentinel), and following a failover |
//! | `cluster.rs`, `shards.rs` | Redis Cluster: the request connection and the cluster's shape; a subscription per master |
//! | `sweeper.rs` | removes the nodes whose deadline has passed |
//! | `subscriber.rs` | the one subscription that feeds every watcher (single Redis, Sentinel) |
//! | `changes.rs` | reads the change messages the scripts publish |
//! | `migrate.rs` | moves the keys of layout v1 to v2 when a server starts on them |
//!
//! Round trips per call (on Cluster, requests to different slots cannot
//! share a pipeline, so "pipelined" becomes one request after the other):
//!
//! | call | Redis work | round trips |
//! | --- | --- | --- |
//! | RegisterService | `register_service` script; for a service not yet listed, then `listing_add`, the script again, ZREM of the pending note, `mark_listed`; with a secret key and credentials, a GET of the old record first (see `sealed_credentials` in `registry.rs`) | 1 (5 the first time), +1 |
//! | RegisterNode | ZADD LT of the deadline hint and the `register_node` script, pipelined; for a service not yet listed, as RegisterService | 1 (5 the first time) |
//! | GetService | GET record, ZSCORE listing, sent together | 1 |
//! | GetNodes | HGETALL | 1 |
//! | ListServices / ListServiceGroups | ZRANGEBYLEX | 1 |
//! | RemoveNode | `remove_node` script, then ZREM of the hint if removed | 1-2 |
//! | Heartbeat | `heartbeat` script, then ZADD/ZREM of the hint if renewed | 1-2 |
//! | RemoveService | `remove_service`, then `listing_remove`, then ZREMs of hints | 2-3 |
//! | RemoveServiceGroup | ZRANGE, then the RemoveService work per service, 16 at a time | 3+ |
//! | WatchService start | `snapshot` script per service (plus a ZRANGE for a whole group), 16 at a time | 1-2+ |
//!
//! Snapshots and removals (large replies) run on connections of their own,
//! a few at a time, and the health probe's PING on one of its own: a
//! RESYNC of hundreds of watchers must not queue small calls or the probe
//! behind hundreds of large replies (issue 11).
//!
//! Every script that changes what watchers see also takes its service's
//! next revision and publishes the change (see `lua/prelude.lua`); one
//! subscription per process (`subscriber.rs`, or `shards.rs` on Cluster)
//! feeds every watch stream.
//!
//! A service's records and its listing are in different hash slots, so no
//! transaction joins them; the order of steps keeps every service that has
//! records listed (see `scripts/listing.rs`).

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
