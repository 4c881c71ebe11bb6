//! [`RedisRegistry`]: the [`Registry`] operations as pipelines of the
//! typed script calls (`scripts/`) and plain commands.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Semaphore, SemaphorePermit, broadcast};
use tokio_util::sync::CancellationToken;

use futures::{StreamExt, TryStreamExt};

use super::check::{self, CheckError};
use super::cluster::ClusterLink;
use super::config::{RedisConfig, Target};
use super::keys::{Keys, deadline_member};
use super::master::Master;
use super::migrate;
use super::pool::{Purpose, RedisPool};
use super::record::{self, live_nodes, node_record, service_record};
use super::scripts::{
    self, Heartbeat, NodeRemoval, NodeRenewal, NodeWrite, RegisterNode, RegisterService,
    RemoveNode, ScriptCall, ServiceWrite,
};
use super::shards::ShardSubscriber;
use super::subscriber::{FeedSettings, FeedState, Subscriber};
use super::sweeper::Sweeper;
use crate::model::{
    Actor, NodeRecord, Page, PageRequest, ServiceKey, ServiceRecord, ServiceSpec, expiry,
    now_millis,
};
use crate::store::secrets::{self, RevealError, SecretKey};
use crate::store::{
    Hub, NodeRegistration, Registered, Registry, Removal, Renewal, Snapshot, StoreError,
    StoreEvent, StoreResult,
};

/// How long [`RedisRegistry::check`] waits for the change subscription.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Large reads in flight at once. Redis runs the commands it has read
/// from one connection back to back, so hundreds of snapshots sent at once
/// (a RESYNC of every watcher) would hold every other client, the request
/// and probe connections too, until all were done. A few at a time keep
/// both large-read connections busy and let Redis serve the others in
/// between; the rest wait here, in the process, where no reply bound runs.
const LARGE_READS_IN_FLIGHT: usize = 4;

/// A registry kept in Redis.
#[derive(Clone)]
pub struct RedisRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    /// What the registry is on: one Redis (or Sentinel's master), or a
    /// cluster.
    deployment: Deployment,
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
    subscribed: tokio::sync::watch::Receiver<u64>,
    /// Seals `auth_credentials` at rest (`--secret-key-file`).
    secret_key: Option<SecretKey>,
    /// The subscriber, until [`RedisRegistry::check`] starts it.
    subscriber: std::sync::Mutex<Option<Feed>>,
}

/// Where the registry's Redis is.
enum Deployment {
    /// One Redis at a fixed address, or the master Sentinel names.
    Master(Arc<Master>),
    /// A Redis Cluster.
    Cluster(Arc<ClusterLink>),
}

/// The three pools of a registry (see [`Purpose`]).
struct Pools {
    pool: RedisPool,
    large: RedisPool,
    probe: RedisPool,
}

impl Deployment {
    /// The deployment `target` names, with its pools. On one Redis or
    /// Sentinel, also follows the master's moves until `stop`.
    fn open(target: Target, stop: &CancellationToken) -> StoreResult<(Self, Pools)> {
        if let Target::Cluster { seeds } = target {
            let pool_of = |purpose| {
                RedisPool::cluster(seeds.clone(), scripts::all(), purpose)
                    .map_err(|e| StoreError::Internal(format!("Redis Cluster settings: {e}")))
            };
            let pools = Pools {
                pool: pool_of(Purpose::Requests)?,
                large: pool_of(Purpose::LargeReads)?,
                probe: pool_of(Purpose::Health)?,
            };
            let link = pools.pool.cluster_link().expect("a cluster pool").clone();
            return Ok((Deployment::Cluster(link), pools));
        }
        let master = Arc::new(Master::new(target));
        master.follow(stop);
        let pool_of = |purpose| RedisPool::new(master.clone(), scripts::all(), purpose);
        let pools = Pools {
            pool: pool_of(Purpose::Requests),
            large: pool_of(Purpose::LargeReads),
            probe: pool_of(Purpose::Health),
        };
        Ok((Deployment::Master(master), pools))
    }

    /// The change subscription on this deployment, in database `db`.
    fn feed(&self, db: i64, feed: FeedSettings) -> Feed {
        match self {
            Deployment::Master(master) => Feed::Master(Subscriber {
                master: master.clone(),
                db,
                feed,
            }),
            Deployment::Cluster(link) => Feed::Cluster(ShardSubscriber {
                link: link.clone(),
                feed,
            }),
        }
    }
}

/// The change subscription of either deployment, until it starts.
enum Feed {
    Master(Subscriber),
    Cluster(ShardSubscriber),
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
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
    /// answers, to move data of an older layout over, and to start the
    /// change subscription that watchers need. Spawns the expiry sweeper
    /// on the current Tokio runtime; it ends when the last clone of the
    /// registry is dropped.
    pub fn new(config: RedisConfig) -> StoreResult<Self> {
        let db = config.target.db();
        let keys = Keys::new(&config.key_prefix);
        let hub = Hub::new();
        let stop = CancellationToken::new();
        let (subscribed_tx, subscribed) = FeedState::new();
        let (deployment, Pools { pool, large, probe }) = Deployment::open(config.target, &stop)?;
        let feed = deployment.feed(
            db,
            FeedSettings {
                keys: keys.clone(),
                config_set: config.config_set,
                hub: hub.clone(),
                stop: stop.clone(),
                subscribed: subscribed_tx,
            },
        );
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
                deployment,
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
                subscriber: std::sync::Mutex::new(Some(feed)),
            }),
        })
    }

    /// Connects once and sends PING (for Sentinel, after finding the
    /// master), enables keyspace notifications (unless told not to) on
    /// every node that may hold our keys, moves data of an older layout
    /// over (`migrate.rs`), and waits for the change subscription.
    pub async fn check(&self) -> Result<(), CheckError> {
        let config_set = self.inner.config_set;
        let addr = match &self.inner.deployment {
            Deployment::Master(master) => check::master(master, config_set).await?,
            Deployment::Cluster(link) => check::cluster(link, config_set).await?,
        };
        migrate::from_v1(&self.inner.pool, &self.inner.keys)
            .await
            .map_err(|e| CheckError::Migration {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        // The subscriber starts here, once Redis is known to be usable, so
        // that a refused start says one thing once.
        if let Some(feed) = self.inner.subscriber.lock().ok().and_then(|mut s| s.take()) {
            match feed {
                Feed::Master(s) => tokio::spawn(s.run()),
                Feed::Cluster(s) => tokio::spawn(s.run()),
            };
        }
        // Serve only once changes reach this process, so the first
        // watchers need no RESYNC.
        let mut subscribed = self.inner.subscribed.clone();
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, subscribed.wait_for(|feed| *feed != 0)).await
        {
            Ok(Ok(_)) => Ok(()),
            _ => Err(CheckError::NotSubscribed { addr }),
        }
    }

    pub(super) fn keys(&self) -> &Keys {
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

    pub(super) fn pool(&self) -> &RedisPool {
        &self.inner.pool
    }

    /// The large-read connections.
    pub(super) fn large(&self) -> &RedisPool {
        &self.inner.large
    }

    /// Runs one script call on its own.
    pub(super) async fn call<S: ScriptCall>(&self, call: S) -> StoreResult<S::Reply> {
        self.call_on(self.pool(), call).await
    }

    /// Runs one script call on its own, on `pool`.
    pub(super) async fn call_on<S: ScriptCall>(
        &self,
        pool: &RedisPool,
        call: S,
    ) -> StoreResult<S::Reply> {
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

/// Services removed, snapshotted or read at once by one call of a whole
/// group: enough to keep every connection busy, few enough that one
/// group's call does not flood Redis.
const GROUP_CONCURRENCY: usize = 16;

#[async_trait]
impl Registry for RedisRegistry {
    async fn register_service(
        &self,
        key: ServiceKey,
        mut spec: ServiceSpec,
    ) -> StoreResult<ServiceRecord> {
        spec.auth_credentials = self.sealed_credentials(&key, spec.auth_credentials).await?;
        let record = record::encode(&spec)?;
        let write = |listed_now| RegisterService {
            service: &key,
            record: &record,
            now: now_millis(),
            listed_now,
        };
        let stored = match self.call(write(false)).await? {
            ServiceWrite::Stored(stored) => stored,
            ServiceWrite::Unlisted => match self
                .listing_around(&key, async || self.call(write(true)).await)
                .await?
            {
                ServiceWrite::Stored(stored) => stored,
                ServiceWrite::Unlisted => {
                    return Err(StoreError::Internal(
                        "register_service refused a write it was told to make".into(),
                    ));
                }
            },
        };
        service_record(&key, &stored)
    }

    async fn register_node(&self, reg: NodeRegistration) -> StoreResult<Registered> {
        let now = now_millis();
        let expires_at = expiry(now, reg.ttl);
        let record = record::encode(&reg.spec)?;
        let write = |listed_now| RegisterNode {
            service: &reg.key,
            node: &reg.name,
            record: &record,
            now,
            expires_at,
            keep_instance: reg.keep_instance,
            actor: reg.actor.as_ref(),
            listed_now,
        };
        let mut reply = self.write_node(write(false)).await?;
        if reply == NodeWrite::Unlisted {
            reply = self
                .listing_around(&reg.key, async || self.write_node(write(true)).await)
                .await?;
        }
        match reply {
            NodeWrite::Stored { envelope, changed } => Ok(Registered {
                record: node_record(&reg.key, &reg.name, &envelope)?,
                changed,
            }),
            NodeWrite::Owned(owner) => Err(StoreError::NotOwner {
                node: reg.name,
                owner,
            }),
            NodeWrite::Unlisted => Err(StoreError::Internal(
                "register_node refused a write it was told to make".into(),
            )),
        }
    }

    async fn get_service(&self, key: &ServiceKey) -> StoreResult<Option<ServiceRecord>> {
        // Two slots: the record's and the listing's.
        let mut record = redis::pipe();
        record.get(self.keys().service(key));
        let mut listing = redis::pipe();
        listing.zscore(self.keys().group_services(&key.group), &key.service);
        let ((raw,), (listed,)): ((Option<String>,), (Option<f64>,)) =
            tokio::try_join!(self.pool().query(&record), self.pool().query(&listing))?;
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
                // Its deadline hint goes only now: a refused removal must
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
                self.set_deadline(key, node, expires_at).await?;
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
        let removal = self.remove_one(key).await?;
        Ok(removal.existed.then_some(removal.live))
    }

    async fn remove_group(&self, group: &str) -> StoreResult<Option<u32>> {
        // The listing can be large: it goes on the large-read connections.
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
        let count = services.len() as u32;
        futures::stream::iter(services)
            .map(|s| async move { self.remove_one(&ServiceKey::new(group, s)).await })
            .buffer_unordered(GROUP_CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?;
        drop(slot);
        Ok(Some(count))
    }

    fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.inner.hub.subscribe()
    }

    fn hub(&self) -> Hub {
        RedisRegistry::hub(self)
    }

    fn feed(&self) -> Option<u64> {
        let feed = *self.inner.subscribed.borrow();
        (feed != 0).then_some(feed)
    }

    async fn snapshot(&self, group: &str, service: Option<&str>) -> StoreResult<Snapshot> {
        // One turn for the whole snapshot.
        let _slot = self.large_read_slot().await?;
        let services = match service {
            Some(s) => vec![s.to_string()],
            None => self.group_services(group).await?,
        };
        // Each service is read in one step with its revision; a service
        // listed after the listing was read has no revision here, so all
        // of its changes pass (its records are written after it is listed,
        // and the watcher subscribed before this read).
        let reads = futures::stream::iter(services)
            .map(|s| async move {
                let key = ServiceKey::new(group, s);
                let read = scripts::Snapshot { service: &key };
                let reply = self.call_on(&self.inner.large, read).await?;
                StoreResult::Ok((key, reply))
            })
            .buffered(GROUP_CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?;
        let now = now_millis();
        let mut snapshot = Snapshot::default();
        for (key, reply) in reads {
            snapshot
                .revisions
                .insert(key.service.clone(), reply.revision);
            snapshot.nodes.extend(live_nodes(&key, reply.nodes, now));
        }
        Ok(snapshot)
    }

    async fn ping(&self) -> StoreResult<()> {
        let mut pipe = redis::pipe();
        pipe.cmd("PING");
        self.inner
            .probe
            .query::<(redis::Value,)>(&pipe)
            .await
            .map(|_| ())
    }

    fn pool_state(&self) -> Option<crate::store::PoolState> {
        self.pool().state()
    }

    fn describe(&self) -> String {
        match &self.inner.deployment {
            Deployment::Master(_) => format!("redis {} db {}", self.pool().addr(), self.inner.db),
            Deployment::Cluster(link) => format!("redis {}", link.describe()),
        }
    }
}
