//! The expiry sweeper: removes the nodes whose deadline has passed and
//! tells watchers, instead of waiting for Redis, which would report expiry
//! late or never (see the README).
//!
//! Deadlines are hints, spread over [`DEADLINE_SHARDS`] sorted sets (see
//! `keys.rs`); the node record's own deadline decides. A hint is never
//! later than its node's deadline, so a due hint either finds the node
//! expired (removed, with NODE_EXPIRED), gone, or live with a later
//! deadline, renewed since the hint was written: then the hint moves to
//! that deadline.
//!
//! Every server sweeps; the `expire_node` script makes each removal happen
//! once however many race for it.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

use super::keys::{DEADLINE_SHARDS, Keys, parse_deadline_member};
use super::pool::RedisPool;
use super::scripts::{ExpireNode, NodeExpiry, ScriptCall, SettleDeadline};
use crate::model::{Millis, now_millis};
use crate::store::StoreResult;

/// How often each server looks for nodes whose deadline has passed.
const SWEEP_INTERVAL: Duration = Duration::from_millis(200);
/// Most due hints one sweep takes from each shard; the rest wait for the
/// next.
const SWEEP_BATCH: usize = 500;
/// Due hints dealt with at once (each is two requests, one after the
/// other).
const IN_FLIGHT: usize = 64;

/// The sweeper task and what it needs.
pub struct Sweeper {
    /// Where the deadlines and nodes are.
    pub pool: RedisPool,
    /// Our key layout.
    pub keys: Keys,
    /// Ends the sweeper.
    pub stop: CancellationToken,
}

impl Sweeper {
    /// Sweeps every [`SWEEP_INTERVAL`] until `stop` is cancelled.
    pub async fn run(self) {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            // A full batch means more are due: keep going rather than let
            // the backlog add a tick of delay per batch.
            loop {
                match self.sweep().await {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "expiry sweep failed; retrying");
                        break;
                    }
                }
            }
        }
    }

    /// One sweep over every shard; returns whether some shard had a full
    /// batch due (so more may be).
    async fn sweep(&self) -> StoreResult<bool> {
        crate::metrics::metrics().expiry_sweeps.inc();
        let now = now_millis();
        let shards = (0..DEADLINE_SHARDS).map(|shard| self.due(shard, now));
        let due: Vec<Vec<(String, String)>> = futures::future::try_join_all(shards).await?;
        let full = due.iter().any(|d| d.len() >= SWEEP_BATCH);
        futures::stream::iter(due.into_iter().flatten())
            .map(|(member, score)| async move { self.settle(&member, &score, now).await })
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(full)
    }

    /// The hints of one shard that are due at `now`, with their scores.
    async fn due(&self, shard: u32, now: Millis) -> StoreResult<Vec<(String, String)>> {
        let mut pipe = redis::pipe();
        pipe.cmd("ZRANGEBYSCORE")
            .arg(self.keys.deadlines(shard))
            .arg("-inf")
            .arg(now)
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(SWEEP_BATCH);
        let (due,): (Vec<(String, String)>,) = self.pool.query(&pipe).await?;
        Ok(due)
    }

    /// Expires the node of a due hint if its deadline has passed, then
    /// drops the hint or moves it to the node's real deadline.
    async fn settle(&self, member: &str, score: &str, now: Millis) -> StoreResult<()> {
        let deadline = match parse_deadline_member(member) {
            Some((service, node)) => {
                let expire = ExpireNode {
                    service: &service,
                    node: &node,
                    now,
                };
                let mut pipe = redis::pipe();
                expire.add_to(&mut pipe, &self.keys);
                match self.pool.query::<(NodeExpiry,)>(&pipe).await?.0 {
                    NodeExpiry::Expired | NodeExpiry::Gone => None,
                    NodeExpiry::Live(deadline) => deadline,
                }
            }
            None => None,
        };
        let mut pipe = redis::pipe();
        SettleDeadline {
            member,
            score,
            deadline,
        }
        .add_to(&mut pipe, &self.keys)
        .ignore();
        self.pool.query::<()>(&pipe).await
    }
}
