//! [`RedisRegistry`]: the [`Registry`] operations as pipelines of the
//! typed script calls (`scripts/`) and plain commands.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Semaphore, SemaphorePermit, broadcast};
use tokio_util::sync::CancellationToken;

use super::config::RedisConfig;
use super::keys::{Keys, deadline_member};
use super::master::Master;
use super::pool::{self, Purpose, RedisPool};
use super::record::{self, live_nodes, node_record, service_record};
use super::scripts::{
    self, Heartbeat, ListingAdd, ListingRemove, NodeRemoval, NodeRenewal, NodeWrite, RegisterNode,
    RegisterService, RemoveNode, RemoveService, RemovedService, ScriptCall,
};
use super::sentinel::{self, ResolveError};
use super::subscriber::{self, Subscriber};
use super::sweeper::Sweeper;
use crate::model::{
    Actor, Millis, NodeRecord, Page, PageRequest, ServiceKey, ServiceRecord, ServiceSpec, expiry,
    now_millis,
};
use crate::store::secrets::{self, RevealError, SecretKey};
use crate::store::{
    Hub, NodeRegistration, Registered, Registry, Removal, Renewal, Snapshot, StoreError,
    StoreEvent, StoreResult,
};

/// How long [`RedisRegistry::check`] waits for the change subscription.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`RedisRegistry::check`] waits to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Large reads in flight at once. Redis runs the commands it has read
/// from one connection back to back, so hundreds of snapshots sent at once
/// (a RESYNC of every watcher) would hold every other client, the request
/// and probe connections too, until all were done. A few at a time keep
/// both large-read connections busy and let Redis serve the others in
/// between; the rest wait here, in the process, where no reply bound runs.
const LARGE_READS_IN_FLIGHT: usize = 4;

/// Why [`RedisRegistry::check`] found Redis unusable; each says where
/// (`host:port`), for a one-line message at start.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Sentinel could not name a master: no sentinel answered, they do not
    /// know the name, or none names a master that is up.
    #[error("{0}")]
    Master(#[from] ResolveError),
    /// Redis refused the username or password.
    #[error("Redis at {addr} refused the credentials: {source}")]
    Credentials {
        /// `host:port` of Redis.
        addr: String,
        /// What Redis said.
        source: redis::RedisError,
    },
    /// Redis could not be reached or did not answer PING.
    #[error("cannot reach Redis at {addr}: {source}")]
    Unreachable {
        /// `host:port` of Redis.
        addr: String,
        /// What went wrong.
        source: redis::RedisError,
    },
    /// CONFIG SET of the notification flags failed (a managed Redis, say).
    #[error(
        "cannot enable keyspace notifications on Redis at {addr}: {source}. Set notify-keyspace-events to include '{flags}' in the Redis configuration and start with --no-config-set",
        flags = subscriber::REQUIRED_FLAGS
    )]
    Notifications {
        /// `host:port` of Redis.
        addr: String,
        /// What went wrong.
        source: redis::RedisError,
    },
    /// The change subscription did not come up in time.
    #[error("cannot subscribe to change notifications on Redis at {addr}")]
    NotSubscribed {
        /// `host:port` of Redis.
        addr: String,
    },
}

impl CheckError {
    /// Why connecting and PING failed: refused credentials or no answer.
    fn connecting(addr: String, source: redis::RedisError) -> Self {
        let refused = source.kind() == redis::ErrorKind::AuthenticationFailed
            || source
                .code()
                .is_some_and(|c| c == "WRONGPASS" || c == "NOAUTH");
        if refused {
            Self::Credentials { addr, source }
        } else {
            Self::Unreachable { addr, source }
        }
    }
}

/// A registry kept in Redis.
#[derive(Clone)]
pub struct RedisRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    master: Arc<Master>,
    /// The connections of every call but those below.
    pool: RedisPool,
    /// The connections of large reads, so that small calls never queue
    /// behind them (issue 11).
    large: RedisPool,
    /// Bounds the large reads in flight ([`LARGE_READS_IN_FLIGHT`]).
    large_slots: Semaphore,
    /// The health probe's connection: a PING queued behind other traffic
    /// would report a slow answer as an outage.
    probe: RedisPool,
    keys: Keys,
    db: i64,
    config_set: bool,
    hub: Hub,
    /// Ends the subscriber and the sweeper when the last clone of the
    /// registry goes.
    stop: CancellationToken,
    /// Whether the change subscription is up.
    subscribed: tokio::sync::watch::Receiver<bool>,
    /// Seals `auth_credentials` at rest (`--secret-key-file`).
    secret_key: Option<SecretKey>,
    /// The subscriber, until [`RedisRegistry::check`] starts it.
    subscriber: std::sync::Mutex<Option<Subscriber>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What removing one service did.
struct ServiceRemoval {
    /// Whether the service had a record, nodes or a listing.
    existed: bool,
    /// How many of its nodes were live.
    live: u32,
    /// The deadline entries of its nodes, to drop.
    deadlines: Vec<String>,
}

impl ServiceRemoval {
    /// Reads the replies of [`RedisRegistry::add_service_removal`].
    fn new(
        key: &ServiceKey,
        removed: RemovedService,
        unlisted: bool,
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
            existed: removed.had_record || !removed.nodes.is_empty() || unlisted,
            live,
            deadlines,
        })
    }
}

/// A MULTI/EXEC pipeline, for writes that touch a service's listing (in the
/// `{listing}` slot) and its records (in the service's own slot) together.
/// Redis then runs them with no other client's command in between, so a
/// registration racing a removal of the same service cannot leave a node
/// that is stored but unlisted. Still one round trip.
fn atomic_pipeline() -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.atomic();
    pipe
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
        let master = Arc::new(Master::new(config.target));
        let db = master.db();
        let pool = RedisPool::new(master.clone(), scripts::all(), Purpose::Requests);
        let large = RedisPool::new(master.clone(), scripts::all(), Purpose::LargeReads);
        let probe = RedisPool::new(master.clone(), scripts::all(), Purpose::Health);
        let keys = Keys::new(&config.key_prefix);
        let hub = Hub::new();
        let stop = CancellationToken::new();
        let (subscribed_tx, subscribed) = tokio::sync::watch::channel(false);
        let subscriber = Subscriber {
            master: master.clone(),
            keys: keys.clone(),
            db,
            config_set: config.config_set,
            hub: hub.clone(),
            stop: stop.clone(),
            subscribed: subscribed_tx,
        };
        master.follow(&stop);
        tokio::spawn(
            Sweeper {
                pool: pool.clone(),
                keys: keys.clone(),
                stop: stop.clone(),
            }
            .run(),
        );
        Ok(Self {
            inner: Arc::new(Inner {
                master,
                pool,
                large,
                large_slots: Semaphore::new(LARGE_READS_IN_FLIGHT),
                probe,
                keys,
                db,
                config_set: config.config_set,
                hub,
                stop,
                subscribed,
                secret_key: config.secret_key,
                subscriber: std::sync::Mutex::new(Some(subscriber)),
            }),
        })
    }

    /// Finds the master (through the sentinels, for Sentinel), connects
    /// once and sends PING, enables keyspace notifications (unless told
    /// not to) and waits for the change subscription.
    pub async fn check(&self) -> Result<(), CheckError> {
        let info = self.inner.master.resolve().await?;
        let addr = pool::display_addr(&info);
        let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, sentinel::connect(&info))
            .await
            .unwrap_or_else(|_| Err((redis::ErrorKind::Io, "timed out connecting").into()))
            .map_err(|source| CheckError::connecting(addr.clone(), source))?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(|source| CheckError::connecting(addr.clone(), source))?;
        if self.inner.config_set {
            subscriber::ensure_notifications(&mut conn)
                .await
                .map_err(|source| CheckError::Notifications {
                    addr: addr.clone(),
                    source,
                })?;
        }
        // The subscriber starts here, once Redis is known to be usable, so
        // that a refused start says one thing once.
        if let Some(subscriber) = self.inner.subscriber.lock().ok().and_then(|mut s| s.take()) {
            tokio::spawn(subscriber.run());
        }
        // Serve only once changes reach this process, so the first
        // watchers need no RESYNC.
        let mut subscribed = self.inner.subscribed.clone();
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, subscribed.wait_for(|up| *up)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(CheckError::NotSubscribed { addr }),
        }
    }

    fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// The stored form of `plaintext` credentials of `key`: sealed when
    /// the server has a key, else as given. A re-registration with the
    /// same credentials keeps the stored value (one GET first): a fresh
    /// nonce would make every identical re-registration a change, a
    /// SERVICE_UPDATED for every watcher. Only RegisterService with
    /// credentials and a key pays that round trip.
    async fn sealed_credentials(&self, key: &ServiceKey, plaintext: String) -> StoreResult<String> {
        let Some(secret) = &self.inner.secret_key else {
            return Ok(plaintext);
        };
        if plaintext.is_empty() {
            return Ok(plaintext);
        }
        let mut pipe = redis::pipe();
        pipe.get(self.keys().service(key));
        let (old,): (Option<String>,) = self.pool().query(&pipe).await?;
        // An old record that does not read, or does not open, is simply
        // not reused.
        let kept = old
            .and_then(|raw| service_record(key, &raw).ok())
            .map(|r| r.spec.auth_credentials)
            .filter(|stored| secrets::is_sealed(stored))
            .filter(|stored| {
                secrets::open(Some(secret), key, stored).ok().as_ref() == Some(&plaintext)
            });
        Ok(kept.unwrap_or_else(|| secret.seal(key, &plaintext)))
    }

    fn pool(&self) -> &RedisPool {
        &self.inner.pool
    }

    /// Adds a node's deadline to a pipeline: its new time, or its removal
    /// for a node without TTL.
    fn set_deadline(
        &self,
        pipe: &mut redis::Pipeline,
        key: &ServiceKey,
        node: &str,
        expires_at: Option<Millis>,
    ) {
        let member = deadline_member(key, node);
        match expires_at {
            Some(t) => pipe.zadd(self.keys().deadlines(), member, t).ignore(),
            None => pipe.zrem(self.keys().deadlines(), member).ignore(),
        };
    }

    /// Adds the removal of a service's keys and listing to a pipeline; its
    /// replies are a [`RemovedService`] and whether it was listed.
    fn add_service_removal(&self, pipe: &mut redis::Pipeline, key: &ServiceKey) {
        let now = now_millis();
        RemoveService { service: key, now }.add_to(pipe, self.keys());
        ListingRemove { service: key }.add_to(pipe, self.keys());
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

    /// Runs one script call on its own.
    async fn call<S: ScriptCall>(&self, call: S) -> StoreResult<S::Reply> {
        self.call_on(self.pool(), call).await
    }

    /// Runs one script call on its own, on `pool`.
    async fn call_on<S: ScriptCall>(&self, pool: &RedisPool, call: S) -> StoreResult<S::Reply> {
        let mut pipe = redis::pipe();
        call.add_to(&mut pipe, self.keys());
        let (reply,): (S::Reply,) = pool.query(&pipe).await?;
        Ok(reply)
    }

    /// Waits for a turn to run a large read on the large-read connections
    /// (see [`LARGE_READS_IN_FLIGHT`]); the turn ends when the permit goes.
    async fn large_read_slot(&self) -> StoreResult<SemaphorePermit<'_>> {
        self.inner
            .large_slots
            .acquire()
            .await
            .map_err(|_| StoreError::Internal("the large-read semaphore closed".into()))
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

    /// The service names of a group, read on the large-read connections
    /// (the caller holds a slot).
    async fn group_services(&self, group: &str) -> StoreResult<Vec<String>> {
        let mut pipe = redis::pipe();
        pipe.zrange(self.keys().group_services(group), 0, -1);
        let (names,): (Vec<String>,) = self.inner.large.query(&pipe).await?;
        Ok(names)
    }
}

#[async_trait]
impl Registry for RedisRegistry {
    async fn register_service(
        &self,
        key: ServiceKey,
        mut spec: ServiceSpec,
    ) -> StoreResult<ServiceRecord> {
        spec.auth_credentials = self.sealed_credentials(&key, spec.auth_credentials).await?;
        let record = record::encode(&spec)?;
        let mut pipe = atomic_pipeline();
        ListingAdd { service: &key }
            .add_to(&mut pipe, self.keys())
            .ignore();
        RegisterService {
            service: &key,
            record: &record,
            now: now_millis(),
        }
        .add_to(&mut pipe, self.keys());
        let (stored,): (String,) = self.pool().query(&pipe).await?;
        service_record(&key, &stored)
    }

    async fn register_node(&self, reg: NodeRegistration) -> StoreResult<Registered> {
        let now = now_millis();
        let expires_at = expiry(now, reg.ttl);
        let record = record::encode(&reg.spec)?;
        let mut pipe = atomic_pipeline();
        ListingAdd { service: &reg.key }
            .add_to(&mut pipe, self.keys())
            .ignore();
        // The script sets the node's deadline with its record, and neither
        // when it refuses the write (a node of another owner keeps its own).
        RegisterNode {
            service: &reg.key,
            node: &reg.name,
            record: &record,
            now,
            expires_at,
            keep_instance: reg.keep_instance,
            actor: reg.actor.as_ref(),
        }
        .add_to(&mut pipe, self.keys());
        match self.pool().query(&pipe).await? {
            (NodeWrite::Stored { envelope, changed },) => Ok(Registered {
                record: node_record(&reg.key, &reg.name, &envelope)?,
                changed,
            }),
            (NodeWrite::Owned(owner),) => Err(StoreError::NotOwner {
                node: reg.name,
                owner,
            }),
        }
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

    fn reveal_credentials(&self, record: &ServiceRecord) -> Result<String, RevealError> {
        secrets::open(
            self.inner.secret_key.as_ref(),
            &record.key,
            &record.spec.auth_credentials,
        )
    }

    async fn get_nodes(&self, key: &ServiceKey) -> StoreResult<Vec<NodeRecord>> {
        let mut pipe = redis::pipe();
        pipe.hgetall(self.keys().nodes(key));
        let (all,): (Vec<(String, String)>,) = self.pool().query(&pipe).await?;
        Ok(live_nodes(key, all, now_millis()))
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
        actor: Option<&Actor>,
    ) -> StoreResult<Removal> {
        let removal = RemoveNode {
            service: key,
            node,
            instance,
            now: now_millis(),
            actor,
        };
        match self.call(removal).await? {
            NodeRemoval::Removed(stored) => {
                // Its deadline entry goes only now: a refused removal must
                // keep it, or the node would never be swept.
                self.forget_deadlines(&[deadline_member(key, node)]).await?;
                Ok(
                    if node_record(key, node, &stored)?.is_expired(now_millis()) {
                        Removal::Missing
                    } else {
                        Removal::Removed
                    },
                )
            }
            NodeRemoval::Missing => Ok(Removal::Missing),
            NodeRemoval::Owned(owner) => Err(StoreError::NotOwner {
                node: node.into(),
                owner,
            }),
            NodeRemoval::OtherInstance(id) => Ok(Removal::OtherInstance(id)),
        }
    }

    async fn heartbeat(
        &self,
        key: &ServiceKey,
        node: &str,
        ttl: Option<Duration>,
        instance: Option<&str>,
        actor: Option<&Actor>,
    ) -> StoreResult<Renewal> {
        let now = now_millis();
        let expires_at = expiry(now, ttl);
        let renewal = Heartbeat {
            service: key,
            node,
            now,
            expires_at,
            instance,
            actor,
        };
        match self.call(renewal).await? {
            NodeRenewal::Renewed => {
                // The new deadline goes in after the record: a sweep in
                // between finds the record renewed and leaves it.
                let mut pipe = redis::pipe();
                self.set_deadline(&mut pipe, key, node, expires_at);
                self.pool().query::<()>(&pipe).await?;
                Ok(Renewal::Renewed(expires_at))
            }
            NodeRenewal::Missing => Ok(Renewal::Missing),
            NodeRenewal::Owned(owner) => Err(StoreError::NotOwner {
                node: node.into(),
                owner,
            }),
            NodeRenewal::OtherInstance(id) => Ok(Renewal::OtherInstance(id)),
        }
    }

    async fn remove_service(&self, key: &ServiceKey) -> StoreResult<Option<u32>> {
        let mut pipe = atomic_pipeline();
        self.add_service_removal(&mut pipe, key);
        let (removed, unlisted): (RemovedService, bool) = self.pool().query(&pipe).await?;
        let removal = ServiceRemoval::new(key, removed, unlisted, now_millis())?;
        self.forget_deadlines(&removal.deadlines).await?;
        Ok(removal.existed.then_some(removal.live))
    }

    async fn remove_group(&self, group: &str) -> StoreResult<Option<u32>> {
        // The listing and the removal's reply (every node of the group) can
        // be large: they go on the large-read connections.
        let slot = self.large_read_slot().await?;
        let mut pipe = redis::pipe();
        pipe.zrange(self.keys().group_services(group), 0, -1)
            .zscore(self.keys().groups(), group);
        let (services, listed): (Vec<String>, Option<f64>) = self.inner.large.query(&pipe).await?;
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
            .into_iter()
            .map(|s| ServiceKey::new(group, s))
            .collect();
        let mut pipe = atomic_pipeline();
        for key in &keys {
            self.add_service_removal(&mut pipe, key);
        }
        let replies: Vec<(RemovedService, bool)> = self.inner.large.query(&pipe).await?;
        drop(slot);
        if replies.len() != keys.len() {
            return Err(StoreError::Internal("short remove_group reply".into()));
        }
        let now = now_millis();
        let mut deadlines = Vec::new();
        for (key, (removed, unlisted)) in keys.iter().zip(replies) {
            deadlines.extend(ServiceRemoval::new(key, removed, unlisted, now)?.deadlines);
        }
        self.forget_deadlines(&deadlines).await?;
        Ok(Some(keys.len() as u32))
    }

    fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.inner.hub.subscribe()
    }

    async fn snapshot(&self, group: &str, service: Option<&str>) -> StoreResult<Snapshot> {
        // One turn for the whole snapshot, listing and retries included.
        let _slot = self.large_read_slot().await?;
        let mut services = match service {
            Some(s) => vec![s.to_string()],
            None => self.group_services(group).await?,
        };
        // The listing is read again inside the script: if a service joined
        // the group in between, read again with it.
        for _ in 0..5 {
            let read = scripts::Snapshot {
                group,
                services: &services,
            };
            let reply = self.call_on(&self.inner.large, read).await?;
            if service.is_none() && reply.listing != services {
                services = reply.listing;
                continue;
            }
            let now = now_millis();
            let nodes = services
                .iter()
                .zip(reply.nodes)
                .flat_map(|(s, all)| live_nodes(&ServiceKey::new(group, s.clone()), all, now))
                .collect();
            return Ok(Snapshot {
                revision: reply.revision,
                nodes,
            });
        }
        Err(StoreError::Unavailable(format!(
            "the services of group {group:?} kept changing while a snapshot was taken; retry"
        )))
    }

    async fn ping(&self) -> StoreResult<()> {
        let mut pipe = redis::pipe();
        pipe.cmd("PING");
        self.inner.probe.query::<(String,)>(&pipe).await.map(|_| ())
    }

    fn describe(&self) -> String {
        format!("redis {} db {}", self.pool().addr(), self.inner.db)
    }
}
