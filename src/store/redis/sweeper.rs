//! The expiry sweeper: removes the nodes whose deadline has passed and
//! tells watchers, instead of waiting for Redis, which would report expiry
//! late or never (see the README).
//!
//! Every server sweeps; the `expire_node` script makes each removal happen
//! once however many race for it.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::keys::{Keys, parse_deadline_member};
use super::pool::RedisPool;
use super::scripts::{ExpireNode, ForgetDeadline, ScriptCall};
use crate::model::now_millis;
use crate::store::StoreResult;

/// How often each server looks for nodes whose deadline has passed.
const SWEEP_INTERVAL: Duration = Duration::from_millis(200);
/// Most expired nodes one sweep removes; the rest wait for the next.
const SWEEP_BATCH: usize = 500;

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
                    Ok(n) if n >= SWEEP_BATCH => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "expiry sweep failed; retrying");
                        break;
                    }
                }
            }
        }
    }

    /// One sweep: removes up to [`SWEEP_BATCH`] nodes whose deadline has
    /// passed; returns how many deadlines were due.
    async fn sweep(&self) -> StoreResult<usize> {
        let now = now_millis();
        let mut pipe = redis::pipe();
        pipe.cmd("ZRANGEBYSCORE")
            .arg(self.keys.deadlines())
            .arg("-inf")
            .arg(now)
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(SWEEP_BATCH);
        let (due,): (Vec<(String, String)>,) = self.pool.query(&pipe).await?;
        if due.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        for (member, score) in &due {
            if let Some((service, node)) = parse_deadline_member(member) {
                ExpireNode {
                    service: &service,
                    node: &node,
                    now,
                }
                .add_to(&mut pipe, &self.keys)
                .ignore();
            }
            // Whatever the node's state, this entry has been dealt with:
            // expired, gone, or renewed (and a renewal wrote a new score,
            // which the score check keeps).
            ForgetDeadline { member, score }
                .add_to(&mut pipe, &self.keys)
                .ignore();
        }
        self.pool.query::<()>(&pipe).await?;
        Ok(due.len())
    }
}
