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
//! When the subscription drops, it reconnects with a backoff capped at 2 s,
//! adds the notification flags again (a restarted Redis or a promoted
//! replica has forgotten them), resubscribes, and only then tells every
//! watcher to resync: from that moment no change can be missed.

use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::changes;
use super::keys::Keys;
use super::pool::RedisPool;
use crate::store::{Hub, StoreError, StoreEvent};

/// The keyspace-notification flags the server needs: keyspace events (K)
/// for expired (x) and evicted (e) keys.
pub const REQUIRED_FLAGS: &str = "Kxe";

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often an idle subscription is checked with PING, and how long the
/// answer may take before the connection counts as dead.
const LIVENESS_INTERVAL: Duration = Duration::from_secs(5);
const LIVENESS_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on connecting, configuring and subscribing.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the subscriber needs.
pub struct Feed {
    /// Opens the dedicated subscription connection.
    pub client: redis::Client,
    /// For CONFIG GET/SET.
    pub pool: RedisPool,
    /// Our key layout.
    pub keys: Keys,
    /// The database our keys live in (keyspace channels name it).
    pub db: i64,
    /// Whether to add the notification flags with CONFIG SET.
    pub config_set: bool,
    /// Where events go.
    pub hub: Hub,
    /// Whether the subscription is up, for [`super::RedisRegistry::check`].
    pub subscribed: tokio::sync::watch::Sender<bool>,
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

/// Adds [`REQUIRED_FLAGS`] to `notify-keyspace-events`, keeping the flags
/// already set.
pub async fn ensure_notifications(pool: &RedisPool) -> Result<(), StoreError> {
    let mut pipe = redis::pipe();
    pipe.cmd("CONFIG").arg("GET").arg("notify-keyspace-events");
    let ((_, current),): ((String, String),) = pool.query(&pipe).await?;
    if let Some(flags) = merged_flags(&current) {
        let mut pipe = redis::pipe();
        pipe.cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg(&flags)
            .ignore();
        pool.query::<()>(&pipe).await?;
        tracing::info!(from = %current, to = %flags, "set notify-keyspace-events");
    }
    Ok(())
}

/// Runs until `feed.stop` is cancelled.
pub async fn run(feed: Feed) {
    let mut backoff = FIRST_BACKOFF;
    let mut failing = false;
    loop {
        let attempt = tokio::time::timeout(CONNECT_TIMEOUT, subscribe(&feed));
        let result = tokio::select! {
            _ = feed.stop.cancelled() => return,
            r = attempt => r.unwrap_or_else(|_| Err("timed out subscribing".into())),
        };
        match result {
            Ok(pubsub) => {
                if failing {
                    tracing::info!(addr = %feed.pool.addr(), "Redis subscription restored; watchers resync");
                }
                backoff = FIRST_BACKOFF;
                // Subscribed: from here on nothing is missed, so watchers
                // may take a fresh snapshot. The first subscription comes
                // before the server serves (see `check`), with no watcher
                // to tell; every later one follows a failure.
                if failing {
                    feed.hub.send(StoreEvent::Resync);
                }
                feed.subscribed.send_replace(true);
                let (mut sink, mut messages) = pubsub.split();
                let mut liveness = tokio::time::interval(LIVENESS_INTERVAL);
                liveness.reset();
                loop {
                    tokio::select! {
                        _ = feed.stop.cancelled() => return,
                        msg = messages.next() => match msg {
                            Some(msg) => handle(&feed, &msg),
                            None => break,
                        },
                        // A connection that died without a FIN or RST (a
                        // lost host, a partition) shows only when asked.
                        _ = liveness.tick() => {
                            let ping = tokio::time::timeout(LIVENESS_TIMEOUT, sink.ping::<redis::Value>());
                            if !matches!(ping.await, Ok(Ok(_))) {
                                break;
                            }
                        }
                    }
                }
                tracing::warn!(addr = %feed.pool.addr(), "Redis subscription lost; reconnecting");
                failing = true;
                feed.subscribed.send_replace(false);
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(addr = %feed.pool.addr(), error = %e, "cannot subscribe to Redis; retrying");
                }
                failing = true;
                tokio::select! {
                    _ = feed.stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn subscribe(feed: &Feed) -> Result<redis::aio::PubSub, String> {
    if feed.config_set {
        ensure_notifications(&feed.pool)
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut pubsub = feed
        .client
        .get_async_pubsub()
        .await
        .map_err(|e| e.to_string())?;
    pubsub
        .subscribe(feed.keys.changes_channel())
        .await
        .map_err(|e| e.to_string())?;
    pubsub
        .psubscribe(feed.keys.keyspace_pattern(feed.db))
        .await
        .map_err(|e| e.to_string())?;
    Ok(pubsub)
}

fn handle(feed: &Feed, msg: &redis::Msg) {
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
        feed.hub.send(StoreEvent::Resync);
        return;
    }
    match changes::parse(&payload) {
        Ok(event) => feed
            .hub
            .send(StoreEvent::Change(std::sync::Arc::new(event))),
        Err(e) => {
            // Watchers cannot know what this changed: resync them.
            tracing::warn!(error = %e, "unreadable change message; watchers resync");
            feed.hub.send(StoreEvent::Resync);
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
