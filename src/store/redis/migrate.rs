//! Moves a registry kept in the key layout `v1` to the current one, when a
//! server starts on it (see `keys.rs` for both).
//!
//! `v1` kept one revision counter and one deadlines set for the whole
//! registry; `v2` keeps a revision per service and spreads the deadlines.
//! Records and listings are copied as they are (the envelopes did not
//! change), each service gets the listed mark and a revision, each node
//! with a TTL a deadline hint, and the `v1` keys are deleted. Copies never
//! overwrite what `v2` already holds (`SET NX`, `HSETNX`), so servers
//! starting together, or a start interrupted midway and run again, move
//! everything once and lose nothing.

use super::keys::{Keys, V1Keys, deadline_member};
use super::pool::RedisPool;
use super::record::node_record;
use crate::model::ServiceKey;
use crate::store::StoreResult;

/// Moves `v1` data over, if there is any.
pub async fn from_v1(pool: &RedisPool, keys: &Keys) -> StoreResult<()> {
    let v1 = keys.v1();
    let mut pipe = redis::pipe();
    pipe.zrange(v1.groups(), 0, -1);
    let (groups,): (Vec<String>,) = pool.query(&pipe).await?;
    let mut moved = 0;
    for group in &groups {
        let mut pipe = redis::pipe();
        pipe.zrange(v1.group_services(group), 0, -1);
        let (services,): (Vec<String>,) = pool.query(&pipe).await?;
        for service in services {
            move_service(pool, keys, &v1, &ServiceKey::new(group.clone(), service)).await?;
            moved += 1;
        }
        let mut pipe = redis::pipe();
        pipe.del(v1.group_services(group)).ignore();
        pool.query::<()>(&pipe).await?;
    }
    for key in std::iter::once(v1.groups()).chain(v1.globals()) {
        let mut pipe = redis::pipe();
        pipe.del(key).ignore();
        pool.query::<()>(&pipe).await?;
    }
    if !groups.is_empty() {
        tracing::info!(
            groups = groups.len(),
            services = moved,
            "moved the registry from key layout v1 to v2"
        );
    }
    Ok(())
}

/// Copies one service (record, nodes, listing) to `v2`, then deletes its
/// `v1` keys.
async fn move_service(
    pool: &RedisPool,
    keys: &Keys,
    v1: &V1Keys,
    key: &ServiceKey,
) -> StoreResult<()> {
    let mut pipe = redis::pipe();
    pipe.get(v1.service(key)).hgetall(v1.nodes(key));
    let (record, nodes): (Option<String>, Vec<(String, String)>) = pool.query(&pipe).await?;

    // The listing first: records are only ever written while listed.
    let mut pipe = redis::pipe();
    pipe.zadd(keys.groups(), &key.group, 0)
        .ignore()
        .zadd(keys.group_services(&key.group), &key.service, 0)
        .ignore();
    pool.query::<()>(&pipe).await?;

    for (name, raw) in &nodes {
        if let Some(deadline) = node_record(key, name, raw)?.expires_at {
            let member = deadline_member(key, name);
            let mut pipe = redis::pipe();
            pipe.cmd("ZADD")
                .arg(keys.deadlines_of(&member))
                .arg("LT")
                .arg(deadline)
                .arg(&member)
                .ignore();
            pool.query::<()>(&pipe).await?;
        }
    }

    // The service's own keys, in its slot. Its revision starts at the
    // clock, above every v1 revision (which were at least the clock too).
    let mut pipe = redis::pipe();
    if let Some(record) = &record {
        pipe.cmd("SET")
            .arg(keys.service(key))
            .arg(record)
            .arg("NX")
            .ignore();
    }
    for (name, raw) in &nodes {
        pipe.hset_nx(keys.nodes(key), name, raw).ignore();
    }
    let now_us = crate::model::now_millis().saturating_mul(1000);
    pipe.cmd("SET")
        .arg(keys.revision(key))
        .arg(now_us)
        .arg("NX")
        .ignore();
    pipe.set(keys.listed(key), "1").ignore();
    pool.query::<()>(&pipe).await?;

    let mut pipe = redis::pipe();
    pipe.del(&[v1.service(key), v1.nodes(key)]).ignore();
    pool.query::<()>(&pipe).await
}
