//! The change subscription on Redis Cluster: one subscription per master.
//!
//! The write scripts PUBLISH on a classic channel, which the cluster
//! delivers on every node, so one subscription to it (on one master)
//! hears every change. Keyspace events are node-local, so every master
//! that serves slots gets its own subscription to them. The cluster's
//! shape (`cluster.rs`'s [`Topology`]) is read again every
//! [`TOPOLOGY_POLL`]: when a master fails over or slots move, keys have
//! moved between nodes, and messages could have been lost (asynchronous
//! replication) or come out of order (two links), so every subscription
//! is made anew on the new shape and watchers resync. Any lost
//! subscription does the same. Watchers are never left with silence.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::SelectAll;
use redis::RedisError;

use super::cluster::{ClusterLink, Topology};
use super::pool::display_addr;
use super::sentinel;
use super::subscriber::{
    self, BACKOFF, CONNECT_TIMEOUT, FeedSettings, LIVENESS_INTERVAL, LIVENESS_TIMEOUT, deliver,
};
use crate::store::StoreEvent;

/// How often the cluster's shape is read again.
const TOPOLOGY_POLL: Duration = Duration::from_secs(1);

/// Adds the notification flags on every node of the cluster, replicas
/// too (a promoted replica must have them). On failure, the node and the
/// error.
pub async fn ensure_notifications(
    link: &ClusterLink,
    known: Option<&Topology>,
) -> Result<Topology, (String, RedisError)> {
    let topology = link
        .topology(known)
        .await
        .map_err(|e| (link.describe(), e))?;
    for node in topology.nodes.iter().filter(|n| !n.failed) {
        let info = link.node(&node.host, node.port);
        let addr = display_addr(&info);
        let set = async {
            let mut conn = sentinel::connect(&info).await?;
            subscriber::ensure_notifications(&mut conn).await
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, set).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err((addr, e)),
            Err(_) => return Err((addr, (redis::ErrorKind::Io, "timed out").into())),
        }
    }
    Ok(topology)
}

/// The cluster's subscription task and what it needs.
pub struct ShardSubscriber {
    /// The cluster.
    pub link: Arc<ClusterLink>,
    /// What it feeds, and how.
    pub feed: FeedSettings,
}

/// The subscriptions on one shape of the cluster.
struct Subscriptions {
    topology: Topology,
    /// Every master's messages, as one stream; `None` when one master's
    /// subscription ends.
    messages: SelectAll<futures::stream::BoxStream<'static, Option<redis::Msg>>>,
    /// Each master's sending half, for the liveness PING, with its address.
    sinks: Vec<(String, redis::aio::PubSubSink)>,
}

impl ShardSubscriber {
    /// Subscribes on every master, feeds the hub, and subscribes anew
    /// whenever a subscription drops or the cluster's shape changes,
    /// until `stop` is cancelled.
    pub async fn run(self) {
        let mut failed_before = false;
        let mut attempt = 0;
        let mut known: Option<Topology> = None;
        loop {
            let subscribing = tokio::time::timeout(CONNECT_TIMEOUT, self.subscribe(known.as_ref()));
            let result = tokio::select! {
                _ = self.feed.stop.cancelled() => return,
                r = subscribing => r.unwrap_or_else(|_| Err((self.link.describe(), (redis::ErrorKind::Io, "timed out subscribing").into()))),
            };
            match result {
                Ok(subs) => {
                    attempt = 0;
                    known = Some(subs.topology.clone());
                    if failed_before {
                        tracing::info!(cluster = %self.link.describe(), masters = subs.sinks.len(), "Redis Cluster subscriptions restored; watchers resync");
                        self.feed.hub.send(StoreEvent::Resync);
                    }
                    self.feed.subscribed.up();
                    match self.listen(subs).await {
                        None => return,
                        Some(why) => {
                            tracing::warn!(cluster = %self.link.describe(), %why, "Redis Cluster subscriptions end; subscribing again")
                        }
                    }
                    failed_before = true;
                    self.feed.subscribed.down();
                }
                Err((addr, e)) => {
                    if !failed_before {
                        tracing::warn!(%addr, error = %e, "cannot subscribe on the Redis Cluster; retrying");
                    }
                    failed_before = true;
                    self.feed.subscribed.down();
                    let wait = BACKOFF.delay(attempt).min(TOPOLOGY_POLL);
                    attempt = attempt.saturating_add(1);
                    tokio::select! {
                        _ = self.feed.stop.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// Reads the shape, adds the flags (unless told not to), and
    /// subscribes on every serving master: keyspace events on each, the
    /// change channel on the first.
    async fn subscribe(
        &self,
        known: Option<&Topology>,
    ) -> Result<Subscriptions, (String, RedisError)> {
        let topology = if self.feed.config_set {
            ensure_notifications(&self.link, known).await?
        } else {
            self.link
                .topology(known)
                .await
                .map_err(|e| (self.link.describe(), e))?
        };
        let mut messages = SelectAll::new();
        let mut sinks = Vec::new();
        for (i, master) in topology.masters().enumerate() {
            let info = self.link.node(&master.host, master.port);
            let addr = display_addr(&info);
            let subscribed = async {
                let mut pubsub = redis::Client::open(info)?.get_async_pubsub().await?;
                if i == 0 {
                    pubsub.subscribe(self.feed.keys.changes_channel()).await?;
                }
                pubsub
                    .psubscribe(self.feed.keys.keyspace_pattern(0))
                    .await?;
                Ok::<_, RedisError>(pubsub)
            };
            let pubsub = subscribed.await.map_err(|e| (addr.clone(), e))?;
            let (sink, stream) = pubsub.split();
            let ended = futures::stream::once(std::future::ready(None));
            messages.push(stream.map(Some).chain(ended).boxed());
            sinks.push((addr, sink));
        }
        if sinks.is_empty() {
            return Err((
                self.link.describe(),
                (redis::ErrorKind::Io, "no master serves slots").into(),
            ));
        }
        Ok(Subscriptions {
            topology,
            messages,
            sinks,
        })
    }

    /// Feeds the hub until a subscription ends or the shape changes
    /// (`Some(why)`), or the registry stops (`None`).
    async fn listen(&self, mut subs: Subscriptions) -> Option<String> {
        let mut poll = tokio::time::interval(TOPOLOGY_POLL);
        poll.reset();
        let mut liveness = tokio::time::interval(LIVENESS_INTERVAL);
        liveness.reset();
        loop {
            tokio::select! {
                _ = self.feed.stop.cancelled() => return None,
                msg = subs.messages.next() => match msg {
                    Some(Some(msg)) => deliver(&self.feed.hub, &msg),
                    Some(None) | None => return Some("a master's subscription ended".into()),
                },
                _ = poll.tick() => {
                    // A node that stops answering shows here as well: its
                    // stream ends, or the shape changes when it fails.
                    if let Ok(now) = self.link.topology(Some(&subs.topology)).await
                        && now.shape() != subs.topology.shape()
                    {
                        return Some("the cluster's masters or slots changed".into());
                    }
                }
                _ = liveness.tick() => {
                    for (addr, sink) in &mut subs.sinks {
                        let ping = tokio::time::timeout(LIVENESS_TIMEOUT, sink.ping::<redis::Value>());
                        if !matches!(ping.await, Ok(Ok(_))) {
                            return Some(format!("the subscription on {addr} stopped answering"));
                        }
                    }
                }
            }
        }
    }
}
