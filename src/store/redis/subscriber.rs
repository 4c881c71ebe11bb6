//! The one Redis subscription of a server process: it feeds every watch
//! stream of the process through the [`Hub`].
//!
//! It listens on a dedicated connection (not the request pool) to the
//! channel the write scripts publish changes on, and to keyspace
//! notifications of our keys. Our keys never carry a Redis TTL and our
//! writes are published by the scripts themselves, so the only keyspace
//! events asked for are `expired` and `evicted` (flags `Kxe`): either means
//! something other than `discovered` changed the registry (an operator's
//! EXPIRE, a maxmemory eviction), and watchers resync.
//!
//! When the subscription drops, or the master moves (a failover: see
//! [`Master`]), it finds the master again, reconnects with a backoff capped
//! at 2 s, adds the notification flags again on that same node (a restarted
//! Redis or a promoted replica has forgotten them), resubscribes, and only
//! then tells every watcher to resync: from that moment no change can be
//! missed.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use tokio_util::sync::CancellationToken;

use super::changes;
use super::keys::Keys;
use super::master::Master;
use super::pool::display_addr;
use super::sentinel::{self, ResolveError};
use crate::backoff::Backoff;
use crate::store::{Hub, StoreEvent};

/// The keyspace-notification flags the server needs: keyspace events (K)
/// for expired (x) and evicted (e) keys.
pub const REQUIRED_FLAGS: &str = "Kxe";

/// Waits between attempts to subscribe again.
pub const BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
/// How often an idle subscription is checked with PING, and how long the
/// answer may take before the connection counts as dead.
pub const LIVENESS_INTERVAL: Duration = Duration::from_secs(5);
pub const LIVENESS_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on connecting, configuring and subscribing.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an attempt to subscribe failed; the subscriber retries.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// No master could be found.
    #[error("{0}")]
    Master(#[from] ResolveError),
    /// Connecting or subscribing failed.
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    /// Connecting, configuring and subscribing took too long.
    #[error("timed out subscribing")]
    Timeout,
}

/// The subscription task and what it needs, until [`Subscriber::run`]
/// starts it.
pub struct Subscriber {
    /// Where to subscribe, and when to move.
    pub master: Arc<Master>,
    /// The database our keys live in (keyspace channels name it).
    pub db: i64,
    /// What it feeds, and how.
    pub feed: FeedSettings,
}

/// Whether the change subscription is up, and which one: 0 while it is
/// down, else a number that grows with every new subscription. A reader
/// that saw the same number before and after a read knows that no change
/// of that time can have been missed (see [`crate::store::Registry::feed`]).
#[derive(Debug)]
pub struct FeedState {
    tx: tokio::sync::watch::Sender<u64>,
    made: std::sync::atomic::AtomicU64,
}

impl FeedState {
    /// A feed that is down, and the receiver of its state.
    pub fn new() -> (Self, tokio::sync::watch::Receiver<u64>) {
        let (tx, rx) = tokio::sync::watch::channel(0);
        let made = std::sync::atomic::AtomicU64::new(0);
        (Self { tx, made }, rx)
    }

    /// A new subscription is up.
    pub fn up(&self) {
        let n = self.made.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        self.tx.send_replace(n);
    }

    /// The subscription is down.
    pub fn down(&self) {
        self.tx.send_replace(0);
    }
}

/// What a change subscription needs, on any deployment.
pub struct FeedSettings {
    /// Our key layout.
    pub keys: Keys,
    /// Whether to add the notification flags with CONFIG SET.
    pub config_set: bool,
    /// Where events go.
    pub hub: Hub,
    /// Whether the subscription is up, and which one it is.
    pub subscribed: FeedState,
    /// Ends the subscriber.
    pub stop: CancellationToken,
}

/// The flags to set so that `current` also has [`REQUIRED_FLAGS`], or
/// `None` if it has them already. Flags already set are kept.
pub fn merged_flags(current: &str) -> Option<String> {
    // 'A' stands for every event class, expired and evicted included.
    let has = |c: char| current.contains(c) || (c != 'K' && current.contains('A'));
    let missing: String = REQUIRED_FLAGS.chars().filter(|c| !has(*c)).collect();
    (!missing.is_empty()).then(|| format!("{current}{missing}"))
}

/// Adds [`REQUIRED_FLAGS`] to `notify-keyspace-events` of the node behind
/// `conn`, keeping the flags already set.
pub async fn ensure_notifications(conn: &mut MultiplexedConnection) -> redis::RedisResult<()> {
    let (_, current): (String, String) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(conn)
        .await?;
    if let Some(flags) = merged_flags(&current) {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg(&flags)
            .query_async::<()>(conn)
            .await?;
        tracing::info!(from = %current, to = %flags, "set notify-keyspace-events");
    }
    Ok(())
}

/// How a subscription ended.
enum Ended {
    /// The registry is gone: stop.
    Stopped,
    /// The connection dropped or stopped answering: subscribe again.
    Lost,
    /// The master moved: subscribe again on the new one.
    Moved,
}

impl Subscriber {
    /// Subscribes, feeds the hub and subscribes again whenever the
    /// subscription drops, until `stop` is cancelled.
    pub async fn run(self) {
        // After the first failure every subscription is a recovery, which
        // watchers must hear of, and further failures were already logged.
        let mut failed_before = false;
        let mut attempt = 0;
        loop {
            let subscribing = tokio::time::timeout(CONNECT_TIMEOUT, self.subscribe());
            let result = tokio::select! {
                _ = self.feed.stop.cancelled() => return,
                r = subscribing => r.unwrap_or(Err(SubscribeError::Timeout)),
            };
            match result {
                Ok((pubsub, node)) => {
                    attempt = 0;
                    if failed_before {
                        tracing::info!(addr = %self.master.describe(), "Redis subscription restored; watchers resync");
                        // Subscribed: from here on nothing is missed, so
                        // watchers may take a fresh snapshot. The first
                        // subscription comes before the server serves (see
                        // `check`), with no watcher to tell.
                        self.feed.hub.send(StoreEvent::Resync);
                    }
                    self.feed.subscribed.up();
                    match self.listen(pubsub, &node).await {
                        Ended::Stopped => return,
                        Ended::Lost => {
                            tracing::warn!(addr = %self.master.describe(), "Redis subscription lost; reconnecting")
                        }
                        Ended::Moved => {
                            tracing::warn!(addr = %self.master.describe(), "Redis master moved; subscribing on the new one")
                        }
                    }
                    failed_before = true;
                    self.feed.subscribed.down();
                }
                Err(e) => {
                    if !failed_before {
                        tracing::warn!(addr = %self.master.describe(), error = %e, "cannot subscribe to Redis; retrying");
                    }
                    failed_before = true;
                    let wait = BACKOFF.delay(attempt);
                    attempt = attempt.saturating_add(1);
                    let mut moves = self.master.moves();
                    moves.mark_unchanged();
                    tokio::select! {
                        _ = self.feed.stop.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                        // A new master is known: try it now, not after the
                        // backoff that the outage built up.
                        _ = moves.changed() => attempt = 0,
                    }
                }
            }
        }
    }

    /// Adds the notification flags (unless told not to) and subscribes on a
    /// new connection.
    /// Returns the subscription and the node it is on (`host:port`).
    async fn subscribe(&self) -> Result<(redis::aio::PubSub, String), SubscribeError> {
        // The flags and the subscription must be on the same node: the
        // master found now (a promoted replica has no flags set).
        let info = self.master.resolve().await?;
        if self.feed.config_set {
            ensure_notifications(&mut sentinel::connect(&info).await?).await?;
        }
        let node = display_addr(&info);
        let mut pubsub = redis::Client::open(info)?.get_async_pubsub().await?;
        pubsub.subscribe(self.feed.keys.changes_channel()).await?;
        pubsub
            .psubscribe(self.feed.keys.keyspace_pattern(self.db))
            .await?;
        Ok((pubsub, node))
    }

    /// Whether the master is still `node` after the pool suspected a move
    /// (the pool retires its connections at every suspicion, which is
    /// cheap; a new subscription costs every watcher a RESYNC, so it waits
    /// for a real move).
    async fn still_on(&self, node: &str) -> bool {
        match tokio::time::timeout(CONNECT_TIMEOUT, self.master.resolve()).await {
            Ok(Ok(info)) => display_addr(&info) == node,
            _ => false,
        }
    }

    /// Feeds the hub from one subscription until it ends.
    async fn listen(&self, pubsub: redis::aio::PubSub, node: &str) -> Ended {
        let (mut sink, mut messages) = pubsub.split();
        let mut liveness = tokio::time::interval(LIVENESS_INTERVAL);
        liveness.reset();
        let mut moves = self.master.moves();
        moves.mark_unchanged();
        loop {
            tokio::select! {
                _ = self.feed.stop.cancelled() => return Ended::Stopped,
                _ = moves.changed() => if !self.still_on(node).await {
                    return Ended::Moved;
                },
                msg = messages.next() => match msg {
                    Some(msg) => self.handle(&msg),
                    None => return Ended::Lost,
                },
                // A connection that died without a FIN or RST (a lost host,
                // a partition) shows only when asked.
                _ = liveness.tick() => {
                    let ping = tokio::time::timeout(LIVENESS_TIMEOUT, sink.ping::<redis::Value>());
                    if !matches!(ping.await, Ok(Ok(_))) {
                        return Ended::Lost;
                    }
                }
            }
        }
    }

    /// Hands one message on to the watchers.
    fn handle(&self, msg: &redis::Msg) {
        deliver(&self.feed.hub, msg);
    }
}

/// Hands one message of our subscription on to the watchers: a change, or
/// a RESYNC for a keyspace event (a key of ours expired or evicted by
/// something other than `discovered`) or a message that does not read.
pub fn deliver(hub: &Hub, msg: &redis::Msg) {
    let payload: String = match msg.get_payload() {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "unreadable message on the Redis subscription");
            return;
        }
    };
    if msg.from_pattern() {
        // A keyspace event: expired or evicted, never caused by us.
        tracing::warn!(key = %msg.get_channel_name(), event = %payload, "a registry key changed outside discovered; watchers resync");
        hub.send(StoreEvent::Resync);
        return;
    }
    match changes::parse(&payload) {
        Ok(event) => hub.send_event(event),
        Err(e) => {
            // Watchers cannot know what this changed: resync them.
            tracing::warn!(error = %e, "unreadable change message; watchers resync");
            hub.send(StoreEvent::Resync);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::merged_flags;

    #[test]
    fn flags_are_added_not_replaced() {
        assert_eq!(merged_flags("").as_deref(), Some("Kxe"));
        assert_eq!(merged_flags("Ex").as_deref(), Some("ExKe"));
        assert_eq!(merged_flags("KEA"), None);
        assert_eq!(merged_flags("xeK"), None);
        assert_eq!(merged_flags("AE").as_deref(), Some("AEK"));
    }
}
