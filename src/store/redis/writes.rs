//! The writes that take more than one request, because what they change
//! lives in more than one hash slot: a service's first registration (its
//! listing around its records, see `scripts/listing.rs`), a node's deadline
//! hint before its record, and a service's removal.

use std::collections::HashMap;

use super::keys::deadline_member;
use super::record::node_record;
use super::registry::RedisRegistry;
use super::scripts::{
    ListingAdd, ListingRemove, MarkListed, NodeWrite, RegisterNode, RemoveService, RemovedService,
    ScriptCall, pending_member,
};
use crate::model::{Millis, ServiceKey, now_millis};
use crate::store::StoreResult;

/// What removing one service did.
pub(super) struct ServiceRemoval {
    /// Whether the service had a record, nodes or a listing.
    pub existed: bool,
    /// How many of its nodes were live.
    pub live: u32,
    /// The deadline hints of its nodes, to drop.
    pub deadlines: Vec<String>,
}

impl ServiceRemoval {
    /// Reads what [`RemoveService`] and [`ListingRemove`] replied.
    fn new(
        key: &ServiceKey,
        removed: RemovedService,
        unlisted: i64,
        now: Millis,
    ) -> StoreResult<Self> {
        let mut live = 0;
        let mut deadlines = Vec::new();
        for (name, raw) in &removed.nodes {
            let node = node_record(key, name, raw)?;
            if node.expires_at.is_some() {
                deadlines.push(deadline_member(key, name));
            }
            live += u32::from(!node.is_expired(now));
        }
        Ok(Self {
            // -1: still listed for a registration racing this removal.
            existed: removed.had_record || !removed.nodes.is_empty() || unlisted != 0,
            live,
            deadlines,
        })
    }
}

impl RedisRegistry {
    /// Sets a node's deadline hint to its new deadline, or drops it for a
    /// node without TTL.
    pub(super) async fn set_deadline(
        &self,
        key: &ServiceKey,
        node: &str,
        expires_at: Option<Millis>,
    ) -> StoreResult<()> {
        let member = deadline_member(key, node);
        let mut pipe = redis::pipe();
        match expires_at {
            Some(t) => pipe.zadd(self.keys().deadlines_of(&member), &member, t),
            None => pipe.zrem(self.keys().deadlines_of(&member), &member),
        };
        self.pool().query::<()>(pipe.ignore()).await
    }

    /// Drops deadline hints of removed nodes (no-op for none): one ZREM
    /// per deadlines shard, sent together.
    pub(super) async fn forget_deadlines(&self, members: &[String]) -> StoreResult<()> {
        let mut by_shard: HashMap<String, Vec<&String>> = HashMap::new();
        for m in members {
            by_shard
                .entry(self.keys().deadlines_of(m))
                .or_default()
                .push(m);
        }
        let zrems = by_shard.into_iter().map(|(shard, members)| async move {
            let mut pipe = redis::pipe();
            pipe.zrem(shard, members).ignore();
            self.pool().query::<()>(&pipe).await
        });
        futures::future::try_join_all(zrems).await.map(drop)
    }

    /// Lists `key` around `write`, its first records (see
    /// `scripts/listing.rs`): lists the service and notes the registration
    /// as pending, writes, drops the note, and marks the service listed so
    /// that later writes need one round trip. The note is dropped whatever
    /// `write` did.
    pub(super) async fn listing_around<T>(
        &self,
        key: &ServiceKey,
        write: impl AsyncFnOnce() -> StoreResult<T>,
    ) -> StoreResult<T> {
        let pending = pending_member(key);
        self.call(ListingAdd {
            service: key,
            pending: &pending,
            now: now_millis(),
        })
        .await?;
        let written = write().await;
        let mut pipe = redis::pipe();
        pipe.zrem(self.keys().pending(), &pending).ignore();
        let dropped = self.pool().query::<()>(&pipe).await;
        let written = written?;
        dropped?;
        self.call(MarkListed { service: key }).await?;
        Ok(written)
    }

    /// Writes a node's record after its deadline hint (so a node with a
    /// TTL always has a hint no later than its deadline, and the sweeper
    /// finds it): in one pipeline where the two slots may share one, else
    /// as two requests in order. The hint only ever moves earlier here
    /// (`ZADD LT`): a registration refused for another owner must not
    /// delay that owner's expiry; the sweeper moves a hint that fires
    /// early to the node's real deadline.
    pub(super) async fn write_node(&self, write: RegisterNode<'_>) -> StoreResult<NodeWrite> {
        let Some(deadline) = write.expires_at else {
            return self.call(write).await;
        };
        let member = deadline_member(write.service, write.node);
        let mut hint = redis::pipe();
        hint.cmd("ZADD")
            .arg(self.keys().deadlines_of(&member))
            .arg("LT")
            .arg(deadline)
            .arg(&member)
            .ignore();
        if self.pool().mixes_slots() {
            write.add_to(&mut hint, self.keys());
            let (reply,): (NodeWrite,) = self.pool().query(&hint).await?;
            return Ok(reply);
        }
        self.pool().query::<()>(&hint).await?;
        self.call(write).await
    }

    /// Removes one service: its records and listing mark, then its
    /// listing, then its nodes' deadline hints. The removal replies with
    /// every node, so it goes on the large-read connections.
    pub(super) async fn remove_one(&self, key: &ServiceKey) -> StoreResult<ServiceRemoval> {
        let removal = RemoveService {
            service: key,
            now: now_millis(),
        };
        let removed = self.call_on(self.large(), removal).await?;
        let unlisted = self
            .call(ListingRemove {
                service: key,
                now: now_millis(),
            })
            .await?;
        let removal = ServiceRemoval::new(key, removed, unlisted, now_millis())?;
        self.forget_deadlines(&removal.deadlines).await?;
        Ok(removal)
    }
}
