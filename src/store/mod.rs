//! Where the registry lives: the [`Registry`] trait and its two backends.
//!
//! Both backends keep the same semantics, and one conformance suite
//! (`tests/conformance.rs`) runs the same test bodies against each.

use std::time::Duration;

use async_trait::async_trait;

use crate::model::{
    Actor, Millis, NodeRecord, NodeSpec, Page, PageRequest, ServiceKey, ServiceRecord, ServiceSpec,
};

pub mod memory;
pub mod redis;
pub mod secrets;
pub mod watch;

pub use memory::MemoryRegistry;
pub use redis::{RedisConfig, RedisRegistry};
pub use secrets::{RevealError, SecretKey};
pub use watch::{Change, ChangeEvent, FANOUT_CAPACITY, Hub, Listener, Snapshot, StoreEvent};

/// Why a store operation failed. Bad input never gets here: the server
/// validates requests before it calls a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backing store cannot be reached or is failing over; the caller
    /// may retry.
    #[error("registry store unavailable: {0}")]
    Unavailable(String),
    /// Something that should not happen: a bug or corrupted data.
    #[error("registry store error: {0}")]
    Internal(String),
    /// A live node was registered by another identity, and the caller is
    /// not an admin; nothing changed.
    #[error(
        "node {node:?} is registered by {owner:?}; only that identity or an admin may change it"
    )]
    NotOwner {
        /// The node's name.
        node: String,
        /// The identity that registered it.
        owner: String,
    },
}

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// A node registration, validated.
#[derive(Debug, Clone)]
pub struct NodeRegistration {
    /// The service the node belongs to.
    pub key: ServiceKey,
    /// The node's name.
    pub name: String,
    /// The node's record.
    pub spec: NodeSpec,
    /// How long the node lives unless registered again; `None`: forever.
    pub ttl: Option<Duration>,
    /// The request named no instance: keep the live node's instance id if
    /// there is one (`spec.instance_id` then only serves a new node), so a
    /// plain re-registration changes nothing.
    pub keep_instance: bool,
    /// Who registers it, when the registry is protected; the node then
    /// records it as its owner. `None`: no auth, no ownership check.
    pub actor: Option<Actor>,
}

/// What a RegisterNode did: the node as stored, and whether that changed
/// anything (a new node, another record, another owner) or only renewed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The node as stored.
    pub record: NodeRecord,
    /// `false` for a registration of exactly what was there (times aside).
    pub changed: bool,
}

/// What a RemoveNode did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// The live node was removed.
    Removed,
    /// There was no live node of that name (an expired one is gone too).
    Missing,
    /// The node belongs to another instance (its id); nothing changed.
    OtherInstance(String),
}

/// What a Heartbeat did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// Renewed; the new deadline, if any.
    Renewed(Option<Millis>),
    /// There is no live node of that name: register it again.
    Missing,
    /// The node belongs to another instance (its id); nothing changed.
    OtherInstance(String),
}

/// The registry's operations, as every backend implements them.
///
/// Names in every argument are already valid (see [`crate::model`]).
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Registers a service or replaces its record whole, keeping
    /// `registered_at`.
    async fn register_service(
        &self,
        key: ServiceKey,
        spec: ServiceSpec,
    ) -> StoreResult<ServiceRecord>;

    /// Registers a node or replaces its record whole, keeping
    /// `registered_at` (unless the old record had expired), and lists its
    /// service in the group.
    async fn register_node(&self, reg: NodeRegistration) -> StoreResult<Registered>;

    /// The service's record; an implicit record for a service listed only
    /// through its nodes; `None` if the service is not known.
    async fn get_service(&self, key: &ServiceKey) -> StoreResult<Option<ServiceRecord>>;

    /// The `auth_credentials` of a record [`Registry::get_service`]
    /// returned, in the clear. Kept apart from `get_service` so that a
    /// value that cannot be opened (encrypted, and no key or another one)
    /// fails only the call that reveals it. The memory store keeps
    /// plaintext (it never leaves the process), hence this default.
    fn reveal_credentials(&self, record: &ServiceRecord) -> Result<String, RevealError> {
        Ok(record.spec.auth_credentials.clone())
    }

    /// The live nodes of a service, in name order.
    async fn get_nodes(&self, key: &ServiceKey) -> StoreResult<Vec<NodeRecord>>;

    /// A page of the service names of a group.
    async fn list_services(&self, group: &str, page: PageRequest) -> StoreResult<Page>;

    /// A page of the group names.
    async fn list_groups(&self, page: PageRequest) -> StoreResult<Page>;

    /// Removes a node; only `instance`'s registration when given, and
    /// only one `actor` may change when given ([`StoreError::NotOwner`]).
    async fn remove_node(
        &self,
        key: &ServiceKey,
        node: &str,
        instance: Option<&str>,
        actor: Option<&Actor>,
    ) -> StoreResult<Removal>;

    /// Gives a live node a new deadline `ttl` from now (none: no expiry)
    /// without writing its record or telling watchers; only `instance`'s
    /// registration when given, and only one `actor` may change when given
    /// ([`StoreError::NotOwner`]).
    async fn heartbeat(
        &self,
        key: &ServiceKey,
        node: &str,
        ttl: Option<Duration>,
        instance: Option<&str>,
        actor: Option<&Actor>,
    ) -> StoreResult<Renewal>;

    /// Removes a service and its nodes; `None` if the service was not
    /// known, else how many live nodes went with it.
    async fn remove_service(&self, key: &ServiceKey) -> StoreResult<Option<u32>>;

    /// Removes a group with its services and nodes; `None` if the group was
    /// not known, else how many services went with it.
    async fn remove_group(&self, group: &str) -> StoreResult<Option<u32>>;

    /// A receiver of every change from now on, in revision order, and of
    /// [`StoreEvent::Resync`] when changes may have been missed.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<StoreEvent>;

    /// The fan-out [`Registry::subscribe`] draws from.
    fn hub(&self) -> Hub;

    /// Which change feed [`Registry::subscribe`] hears now: `None` while
    /// changes may be going unheard (Redis's subscription is down), else a
    /// number that changes whenever the feed was lost and made anew. Two
    /// equal answers around a read mean every change since the first is
    /// (or will be) on the feed: what a cache of reads relies on. The
    /// memory store's feed never breaks.
    fn feed(&self) -> Option<u64> {
        Some(1)
    }

    /// The live nodes of one service (`Some(name)`) or of every service in
    /// the group (`None`), at one revision.
    async fn snapshot(&self, group: &str, service: Option<&str>) -> StoreResult<Snapshot>;

    /// Checks that the store answers; feeds the health service.
    async fn ping(&self) -> StoreResult<()>;

    /// A one-line description for logs, such as `redis 127.0.0.1:6379 db 0`.
    fn describe(&self) -> String;

    /// The connections of the store's request pool, for metrics; `None`
    /// for a store without one (memory, Redis Cluster's own links).
    fn pool_state(&self) -> Option<PoolState> {
        None
    }
}

/// How a store's connection pool stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolState {
    /// Connections open and waiting for a request.
    pub idle: u32,
    /// Connections lent out to requests now.
    pub in_use: u32,
}
