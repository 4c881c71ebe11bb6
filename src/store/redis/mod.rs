//! The Redis backend: state shared by any number of `discovered` processes.
//!
//! Round trips per call (see `keys.rs` for the layout):
//!
//! | call | Redis work | round trips |
//! | --- | --- | --- |
//! | RegisterService | `listing_add` + `register_service` scripts (MULTI) | 1 |
//! | RegisterNode | `listing_add`, ZADD/ZREM deadline, `register_node` script (MULTI) | 1 |
//! | GetService | GET record + ZSCORE listing | 1 |
//! | GetNodes | HGETALL | 1 |
//! | ListServices / ListServiceGroups | ZRANGEBYLEX | 1 |
//! | RemoveNode | `remove_node` script + ZREM deadline | 1 |
//! | RemoveService | `remove_service` + `listing_remove` scripts (MULTI), then ZREM deadlines | 1-2 |
//! | RemoveServiceGroup | ZRANGE, then the RemoveService work per service | 2-3 |
//! | WatchService start | `snapshot` script (plus a ZRANGE for a whole group) | 1-2 |
//!
//! Every script that changes what watchers see also takes the next
//! revision and publishes the change (see `lua/prelude.lua`); one
//! subscription per process (`subscriber.rs`) feeds every watch stream.
//!
//! Writes that touch a service's listing and its records go as one
//! MULTI/EXEC (see `listing_and_records`), so no reader and no racing
//! writer sees one half without the other.

mod changes;
mod keys;
mod pool;
mod scripts;
mod subscriber;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub use keys::Keys;
pub use pool::RedisPool;

use self::keys::{deadline_member, parse_deadline_member};
use super::{
    Hub, NodeRegistration, Registry, Removal, Renewal, Snapshot, StoreError, StoreEvent,
    StoreResult,
};
use crate::model::{
    Millis, NodeRecord, NodeSpec, Page, PageRequest, ServiceKey, ServiceRecord, ServiceSpec,
    now_millis,
};

/// How often each server looks for nodes whose deadline has passed.
const SWEEP_INTERVAL: Duration = Duration::from_millis(200);
/// Most expired nodes one sweep removes; the rest wait for the next.
const SWEEP_BATCH: usize = 500;

/// Where the registry lives in Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// The server and how to log in.
    pub info: ConnectionInfo,
    /// First part of every key (`discovered` by default).
    pub key_prefix: String,
    /// Whether the server may add the keyspace-notification flags it needs
    /// with CONFIG SET (off for managed Redis that forbids CONFIG).
    pub config_set: bool,
}

impl RedisConfig {
    /// From a `redis://` or `rediss://` URL.
    pub fn from_url(url: &str, key_prefix: &str) -> Result<Self, String> {
        let info = url
            .into_connection_info()
            .map_err(|e| format!("bad Redis URL: {e}"))?;
        Ok(Self {
            info,
            key_prefix: key_prefix.into(),
            config_set: true,
        })
    }

    /// From the original library's parameters.
    pub fn from_parts(
        host: &str,
        port: u16,
        db: i64,
        username: Option<&str>,
        password: Option<&str>,
        key_prefix: &str,
    ) -> Result<Self, String> {
        let mut settings = RedisConnectionInfo::default().set_db(db);
        if let Some(u) = username {
            settings = settings.set_username(u);
        }
        if let Some(p) = password {
            settings = settings.set_password(p);
        }
        let info = ConnectionAddr::Tcp(host.into(), port)
            .into_connection_info()
            .map_err(|e| format!("bad Redis address: {e}"))?
            .set_redis_settings(settings);
        Ok(Self {
            info,
            key_prefix: key_prefix.into(),
            config_set: true,
        })
    }
}

/// A registry kept in Redis.
#[derive(Clone)]
pub struct RedisRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    pool: RedisPool,
    keys: Keys,
    db: i64,
    config_set: bool,
    hub: Hub,
    /// Ends the subscriber when the last clone of the registry goes.
    stop: CancellationToken,
    /// Whether the change subscription is up.
    subscribed: tokio::sync::watch::Receiver<bool>,
    /// The subscriber, until [`RedisRegistry::check`] starts it.
    feed: std::sync::Mutex<Option<subscriber::Feed>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How a record is stored: the server's times around the registered record.
#[derive(Deserialize)]
struct Envelope<T> {
    registered_at: Millis,
    updated_at: Millis,
    #[serde(default)]
    expires_at: Option<Millis>,
    record: T,
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, raw: &str) -> StoreResult<Envelope<T>> {
    serde_json::from_str(raw)
        .map_err(|e| StoreError::Internal(format!("corrupt {what} record: {e}")))
}

impl Envelope<ServiceSpec> {
    fn into_record(self, key: &ServiceKey) -> ServiceRecord {
        ServiceRecord {
            key: key.clone(),
            spec: self.record,
            registered_at: Some(self.registered_at),
            updated_at: Some(self.updated_at),
        }
    }
}

impl Envelope<NodeSpec> {
    fn into_record(self, key: &ServiceKey, name: &str) -> NodeRecord {
        NodeRecord {
            key: key.clone(),
            name: name.into(),
            spec: self.record,
            registered_at: self.registered_at,
            updated_at: self.updated_at,
            expires_at: self.expires_at,
        }
    }
}

fn encode<T: serde::Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Internal(format!("encoding record: {e}")))
}

fn service_record(key: &ServiceKey, raw: &str) -> StoreResult<ServiceRecord> {
    Ok(decode::<ServiceSpec>("service", raw)?.into_record(key))
}

fn node_record(key: &ServiceKey, name: &str, raw: &str) -> StoreResult<NodeRecord> {
    Ok(decode::<NodeSpec>("node", raw)?.into_record(key, name))
}

/// The live, readable nodes among `(name, stored)` pairs of one service.
/// One unreadable record (written by hand, say) must not hide the others.
fn live_nodes(
    key: &ServiceKey,
    all: Vec<(String, String)>,
    now: Millis,
    out: &mut Vec<NodeRecord>,
) {
    for (name, raw) in all {
        match node_record(key, &name, &raw) {
            // Expired but not yet swept: already gone for readers.
            Ok(node) if node.is_expired(now) => {}
            Ok(node) => out.push(node),
            Err(e) => {
                tracing::warn!(service = ?key, node = %name, error = %e, "skipping unreadable node record");
            }
        }
    }
}

impl RedisRegistry {
    /// The fan-out this registry feeds; [`Hub::receivers`] counts the open
    /// watch streams.
    pub fn hub(&self) -> Hub {
        self.inner.hub.clone()
    }

    /// A registry on the Redis that `config` names. Connects lazily: call
    /// [`RedisRegistry::check`] before serving, to find out whether Redis
    /// answers and to start the change subscription that watchers need.
    /// Spawns the expiry sweeper on the current Tokio runtime; it ends when
    /// the last clone of the registry is dropped.
    pub fn new(config: RedisConfig) -> StoreResult<Self> {
        let db = config.info.redis_settings().db();
        let client = redis::Client::open(config.info.clone())
            .map_err(|e| StoreError::Internal(format!("bad Redis settings: {e}")))?;
        let pool = RedisPool::new(config.info, scripts::all())?;
        let (subscribed_tx, subscribed) = tokio::sync::watch::channel(false);
        let registry = Self {
            inner: Arc::new(Inner {
                pool,
                keys: Keys::new(&config.key_prefix),
                db,
                config_set: config.config_set,
                hub: Hub::new(),
                stop: CancellationToken::new(),
                subscribed,
                feed: std::sync::Mutex::new(None),
            }),
        };
        tokio::spawn(sweeper(Arc::downgrade(&registry.inner)));
        *registry
            .inner
            .feed
            .lock()
            .map_err(|_| StoreError::Internal("feed lock poisoned".into()))? =
            Some(subscriber::Feed {
                client,
                pool: registry.inner.pool.clone(),
                keys: registry.inner.keys.clone(),
                db,
                config_set: config.config_set,
                hub: registry.inner.hub.clone(),
                stop: registry.inner.stop.clone(),
                subscribed: subscribed_tx,
            });
        Ok(registry)
    }

    /// Connects once and sends PING, enables keyspace notifications
    /// (unless told not to) and waits for the change subscription; the
    /// error says what went wrong and where (`host:port`), for a one-line
    /// message at start.
    pub async fn check(&self) -> Result<(), String> {
        self.check_connection().await?;
        if self.inner.config_set {
            subscriber::ensure_notifications(&self.inner.pool).await.map_err(|e| {
                format!(
                    "cannot enable keyspace notifications on Redis at {}: {e}. Set notify-keyspace-events to include '{}' in the Redis configuration and start with --no-config-set",
                    self.inner.pool.addr(),
                    subscriber::REQUIRED_FLAGS
                )
            })?;
        }
        // The subscriber starts here, once Redis is known to be usable, so
        // that a refused start says one thing once.
        if let Some(feed) = self.inner.feed.lock().ok().and_then(|mut f| f.take()) {
            tokio::spawn(subscriber::run(feed));
        }
        // Serve only once changes reach this process, so the first
        // watchers need no RESYNC.
        let mut subscribed = self.inner.subscribed.clone();
        match tokio::time::timeout(Duration::from_secs(5), subscribed.wait_for(|up| *up)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(format!(
                "cannot subscribe to change notifications on Redis at {}",
                self.inner.pool.addr()
            )),
        }
    }

    async fn check_connection(&self) -> Result<(), String> {
        self.inner.pool.check().await.map_err(|e| {
            let addr = self.inner.pool.addr();
            match e.kind() {
                redis::ErrorKind::AuthenticationFailed => {
                    format!("Redis at {addr} refused the credentials: {e}")
                }
                _ if e.code().is_some_and(|c| c == "WRONGPASS" || c == "NOAUTH") => {
                    format!("Redis at {addr} refused the credentials: {e}")
                }
                _ => format!("cannot reach Redis at {addr}: {e}"),
            }
        })
    }

    fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    fn pool(&self) -> &RedisPool {
        &self.inner.pool
    }

    /// Adds the listing of `key` to a pipeline.
    fn listing_add(&self, pipe: &mut redis::Pipeline, key: &ServiceKey) {
        pipe.invoke_script(
            scripts::LISTING_ADD
                .key(self.keys().groups())
                .key(self.keys().group_services(&key.group))
                .arg(&key.group)
                .arg(&key.service),
        )
        .ignore();
    }

    /// Adds the removal of a service's keys and listing to a pipeline; its
    /// replies are the `remove_service` result and the `listing_remove` one.
    fn remove_service_cmds(&self, pipe: &mut redis::Pipeline, key: &ServiceKey) {
        pipe.invoke_script(
            scripts::REMOVE_SERVICE
                .key(self.keys().service(key))
                .key(self.keys().nodes(key))
                .key(self.keys().revision())
                .arg(now_millis())
                .arg(self.keys().changes_channel())
                .arg(&key.group)
                .arg(&key.service),
        );
        pipe.invoke_script(
            scripts::LISTING_REMOVE
                .key(self.keys().groups())
                .key(self.keys().group_services(&key.group))
                .arg(&key.group)
                .arg(&key.service),
        );
    }

    /// Reads the replies of [`Self::remove_service_cmds`]: whether the
    /// service existed, its live node count, and the deadline members of
    /// the nodes it had.
    fn removed_service(
        key: &ServiceKey,
        removed: Vec<redis::Value>,
        unlisted: i64,
        now: Millis,
        members: &mut Vec<String>,
    ) -> StoreResult<(bool, u32)> {
        let mut items = removed.into_iter();
        let had_record: i64 = items
            .next()
            .map(redis::from_redis_value)
            .transpose()
            .map_err(|e| StoreError::Internal(format!("remove_service reply: {e}")))?
            .unwrap_or(0);
        let rest: Vec<String> = redis::from_redis_value(redis::Value::Array(items.collect()))
            .map_err(|e| StoreError::Internal(format!("remove_service reply: {e}")))?;
        let mut live = 0;
        let mut had_nodes = false;
        for pair in rest.chunks(2) {
            if let [name, raw] = pair {
                had_nodes = true;
                let node = node_record(key, name, raw)?;
                if node.expires_at.is_some() {
                    members.push(deadline_member(key, name));
                }
                live += u32::from(!node.is_expired(now));
            }
        }
        Ok((had_record == 1 || had_nodes || unlisted == 1, live))
    }

    /// Drops deadline entries of removed nodes (no-op for none).
    async fn forget_deadlines(&self, members: &[String]) -> StoreResult<()> {
        if members.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.zrem(self.keys().deadlines(), members).ignore();
        self.pool().query::<()>(&pipe).await
    }

    async fn list(&self, key: String, page: PageRequest) -> StoreResult<Page> {
        let min = match &page.after {
            Some(after) => format!("({after}"),
            None => "-".into(),
        };
        let mut pipe = redis::pipe();
        pipe.zrangebylex_limit(key, min, "+", 0, page.size as isize + 1);
        let (names,): (Vec<String>,) = self.pool().query(&pipe).await?;
        Ok(Page::from_lookahead(names, page.size))
    }

    /// One sweep: removes the nodes whose deadline has passed. Several
    /// servers may sweep at once; the script makes each removal happen once.
    async fn sweep(&self) -> StoreResult<usize> {
        let now = now_millis();
        let deadlines = self.keys().deadlines();
        let mut pipe = redis::pipe();
        pipe.cmd("ZRANGEBYSCORE")
            .arg(&deadlines)
            .arg("-inf")
            .arg(now)
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(SWEEP_BATCH);
        let (due,): (Vec<(String, String)>,) = self.pool().query(&pipe).await?;
        if due.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        for (member, score) in &due {
            if let Some((key, node)) = parse_deadline_member(member) {
                pipe.invoke_script(
                    scripts::EXPIRE_NODE
                        .key(self.keys().nodes(&key))
                        .key(self.keys().revision())
                        .arg(node)
                        .arg(now)
                        .arg(self.keys().changes_channel())
                        .arg(&key.group)
                        .arg(&key.service),
                )
                .ignore();
            }
            // Whatever the node's state, this entry has been dealt with:
            // expired, gone, or renewed (and a renewal wrote a new score,
            // which the score check keeps).
            pipe.invoke_script(
                scripts::FORGET_DEADLINE
                    .key(&deadlines)
                    .arg(member)
                    .arg(score),
            )
            .ignore();
        }
        self.pool().query::<()>(&pipe).await?;
        Ok(due.len())
    }
}

async fn sweeper(inner: std::sync::Weak<Inner>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let registry = RedisRegistry { inner };
        // A full batch means more are due: keep going rather than let the
        // backlog add a tick of delay per batch.
        loop {
            match registry.sweep().await {
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

/// A MULTI/EXEC pipeline, for writes that touch a service's listing (in the
/// `{listing}` slot) and its records (in the service's own slot) together.
/// Redis then runs them with no other client's command in between, so a
/// registration racing a removal of the same service cannot leave a node
/// that is stored but unlisted. Still one round trip.
fn listing_and_records() -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.atomic();
    pipe
}

#[async_trait]
impl Registry for RedisRegistry {
    async fn register_service(
        &self,
        key: ServiceKey,
        spec: ServiceSpec,
    ) -> StoreResult<ServiceRecord> {
        let now = now_millis();
        let mut pipe = listing_and_records();
        self.listing_add(&mut pipe, &key);
        pipe.invoke_script(
            scripts::REGISTER_SERVICE
                .key(self.keys().service(&key))
                .key(self.keys().revision())
                .arg(encode(&spec)?)
                .arg(now)
                .arg(self.keys().changes_channel())
                .arg(&key.group)
                .arg(&key.service),
        );
        let (raw,): (String,) = self.pool().query(&pipe).await?;
        service_record(&key, &raw)
    }

    async fn register_node(&self, reg: NodeRegistration) -> StoreResult<NodeRecord> {
        let now = now_millis();
        let expires_at = crate::model::expiry(now, reg.ttl);
        let member = deadline_member(&reg.key, &reg.name);
        let mut pipe = listing_and_records();
        self.listing_add(&mut pipe, &reg.key);
        // The deadline goes in before the record, so a sweep never sees a
        // record whose deadline it does not know.
        match expires_at {
            Some(t) => pipe.zadd(self.keys().deadlines(), &member, t).ignore(),
            None => pipe.zrem(self.keys().deadlines(), &member).ignore(),
        };
        pipe.invoke_script(
            scripts::REGISTER_NODE
                .key(self.keys().nodes(&reg.key))
                .key(self.keys().revision())
                .arg(&reg.name)
                .arg(encode(&reg.spec)?)
                .arg(now)
                .arg(expires_at.map(|t| t.to_string()).unwrap_or_default())
                .arg(self.keys().changes_channel())
                .arg(&reg.key.group)
                .arg(&reg.key.service)
                .arg(if reg.keep_instance { "1" } else { "" }),
        );
        let (raw,): (String,) = self.pool().query(&pipe).await?;
        node_record(&reg.key, &reg.name, &raw)
    }

    async fn get_service(&self, key: &ServiceKey) -> StoreResult<Option<ServiceRecord>> {
        let mut pipe = redis::pipe();
        pipe.get(self.keys().service(key))
            .zscore(self.keys().group_services(&key.group), &key.service);
        let (raw, listed): (Option<String>, Option<f64>) = self.pool().query(&pipe).await?;
        match (raw, listed) {
            (Some(raw), _) => service_record(key, &raw).map(Some),
            (None, Some(_)) => Ok(Some(ServiceRecord::implicit(key.clone()))),
            (None, None) => Ok(None),
        }
    }

    async fn get_nodes(&self, key: &ServiceKey) -> StoreResult<Vec<NodeRecord>> {
        let mut pipe = redis::pipe();
        pipe.hgetall(self.keys().nodes(key));
        let (all,): (Vec<(String, String)>,) = self.pool().query(&pipe).await?;
        let mut nodes = Vec::with_capacity(all.len());
        live_nodes(key, all, now_millis(), &mut nodes);
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(nodes)
    }

    async fn list_services(&self, group: &str, page: PageRequest) -> StoreResult<Page> {
        self.list(self.keys().group_services(group), page).await
    }

    async fn list_groups(&self, page: PageRequest) -> StoreResult<Page> {
        self.list(self.keys().groups(), page).await
    }

    async fn remove_node(
        &self,
        key: &ServiceKey,
        node: &str,
        instance: Option<&str>,
    ) -> StoreResult<Removal> {
        let mut pipe = redis::pipe();
        pipe.invoke_script(
            scripts::REMOVE_NODE
                .key(self.keys().nodes(key))
                .key(self.keys().revision())
                .arg(node)
                .arg(now_millis())
                .arg(self.keys().changes_channel())
                .arg(&key.group)
                .arg(&key.service)
                .arg(instance.unwrap_or_default()),
        );
        let (reply,): (Vec<String>,) = self.pool().query(&pipe).await?;
        match reply.as_slice() {
            [status, raw] if status == "removed" => {
                // Its deadline entry goes only now: a refused removal must
                // keep it, or the node would never be swept.
                self.forget_deadlines(&[deadline_member(key, node)]).await?;
                Ok(if node_record(key, node, raw)?.is_expired(now_millis()) {
                    Removal::Missing
                } else {
                    Removal::Removed
                })
            }
            [status, id] if status == "other" => Ok(Removal::OtherInstance(id.clone())),
            _ => Ok(Removal::Missing),
        }
    }

    async fn heartbeat(
        &self,
        key: &ServiceKey,
        node: &str,
        ttl: Option<Duration>,
        instance: Option<&str>,
    ) -> StoreResult<Renewal> {
        let now = now_millis();
        let expires_at = crate::model::expiry(now, ttl);
        let mut pipe = redis::pipe();
        pipe.invoke_script(
            scripts::HEARTBEAT
                .key(self.keys().nodes(key))
                .arg(node)
                .arg(now)
                .arg(expires_at.map(|t| t.to_string()).unwrap_or_default())
                .arg(instance.unwrap_or_default()),
        );
        let (reply,): (Vec<String>,) = self.pool().query(&pipe).await?;
        match reply.as_slice() {
            [status] if status == "renewed" => {
                // The new deadline goes in after the record: a sweep in
                // between finds the record renewed and leaves it.
                let member = deadline_member(key, node);
                let mut pipe = redis::pipe();
                match expires_at {
                    Some(t) => pipe.zadd(self.keys().deadlines(), &member, t).ignore(),
                    None => pipe.zrem(self.keys().deadlines(), &member).ignore(),
                };
                self.pool().query::<()>(&pipe).await?;
                Ok(Renewal::Renewed(expires_at))
            }
            [status, id] if status == "other" => Ok(Renewal::OtherInstance(id.clone())),
            _ => Ok(Renewal::Missing),
        }
    }

    async fn remove_service(&self, key: &ServiceKey) -> StoreResult<Option<u32>> {
        let mut pipe = listing_and_records();
        self.remove_service_cmds(&mut pipe, key);
        let (removed, unlisted): (Vec<redis::Value>, i64) = self.pool().query(&pipe).await?;
        let mut members = Vec::new();
        let (existed, live) =
            Self::removed_service(key, removed, unlisted, now_millis(), &mut members)?;
        self.forget_deadlines(&members).await?;
        Ok(existed.then_some(live))
    }

    async fn remove_group(&self, group: &str) -> StoreResult<Option<u32>> {
        let mut pipe = redis::pipe();
        pipe.zrange(self.keys().group_services(group), 0, -1)
            .zscore(self.keys().groups(), group);
        let (services, listed): (Vec<String>, Option<f64>) = self.pool().query(&pipe).await?;
        if services.is_empty() {
            if listed.is_some() {
                // A group listed without services (left by a crash): unlist it.
                let mut pipe = redis::pipe();
                pipe.zrem(self.keys().groups(), group).ignore();
                self.pool().query::<()>(&pipe).await?;
            }
            return Ok(listed.map(|_| 0));
        }
        let keys: Vec<ServiceKey> = services
            .iter()
            .map(|s| ServiceKey::new(group, s.clone()))
            .collect();
        let mut pipe = listing_and_records();
        for key in &keys {
            self.remove_service_cmds(&mut pipe, key);
        }
        let replies: Vec<redis::Value> = self.pool().query(&pipe).await?;
        let now = now_millis();
        let mut members = Vec::new();
        let mut replies = replies.into_iter();
        for key in &keys {
            let (Some(removed), Some(unlisted)) = (replies.next(), replies.next()) else {
                return Err(StoreError::Internal("short remove_group reply".into()));
            };
            let removed: Vec<redis::Value> = redis::from_redis_value(removed)
                .map_err(|e| StoreError::Internal(format!("remove_service reply: {e}")))?;
            let unlisted: i64 = redis::from_redis_value(unlisted)
                .map_err(|e| StoreError::Internal(format!("listing_remove reply: {e}")))?;
            Self::removed_service(key, removed, unlisted, now, &mut members)?;
        }
        self.forget_deadlines(&members).await?;
        Ok(Some(keys.len() as u32))
    }

    fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.inner.hub.subscribe()
    }

    async fn snapshot(&self, group: &str, service: Option<&str>) -> StoreResult<Snapshot> {
        let mut services = match service {
            Some(s) => vec![s.to_string()],
            None => {
                let mut pipe = redis::pipe();
                pipe.zrange(self.keys().group_services(group), 0, -1);
                let (names,): (Vec<String>,) = self.pool().query(&pipe).await?;
                names
            }
        };
        // The listing is read again inside the script: if a service joined
        // the group in between, read again with it.
        for _ in 0..5 {
            let mut invocation = scripts::SNAPSHOT.key(self.keys().revision());
            invocation.key(self.keys().group_services(group));
            for s in &services {
                invocation.key(self.keys().nodes(&ServiceKey::new(group, s.clone())));
            }
            let mut pipe = redis::pipe();
            pipe.invoke_script(&invocation);
            let (reply,): (Vec<redis::Value>,) = self.pool().query(&pipe).await?;
            let mut reply = reply.into_iter();
            let bad = |e: redis::ParsingError| StoreError::Internal(format!("snapshot reply: {e}"));
            let revision: u64 =
                redis::from_redis_value(reply.next().unwrap_or(redis::Value::Nil)).map_err(bad)?;
            let listing: Vec<String> =
                redis::from_redis_value(reply.next().unwrap_or(redis::Value::Nil)).map_err(bad)?;
            if service.is_none() && listing != services {
                services = listing;
                continue;
            }
            let now = now_millis();
            let mut nodes = Vec::new();
            for (s, hash) in services.iter().zip(reply) {
                let all: Vec<(String, String)> = redis::from_redis_value(hash).map_err(bad)?;
                let mut of_service = Vec::with_capacity(all.len());
                live_nodes(
                    &ServiceKey::new(group, s.clone()),
                    all,
                    now,
                    &mut of_service,
                );
                of_service.sort_by(|a, b| a.name.cmp(&b.name));
                nodes.extend(of_service);
            }
            return Ok(Snapshot { revision, nodes });
        }
        Err(StoreError::Unavailable(format!(
            "the services of group {group:?} kept changing while a snapshot was taken; retry"
        )))
    }

    async fn ping(&self) -> StoreResult<()> {
        let mut pipe = redis::pipe();
        pipe.cmd("PING");
        self.pool().query::<(String,)>(&pipe).await.map(|_| ())
    }

    fn describe(&self) -> String {
        format!("redis {} db {}", self.pool().addr(), self.inner.db)
    }
}
