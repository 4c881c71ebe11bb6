//! What a store tells its watchers, and the in-process fan-out that carries
//! it to every watch stream of this process.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use tokio::sync::broadcast;

use crate::model::{Millis, NodeRecord, ServiceKey, ServiceRecord};

/// One change to the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A node was registered that did not exist (or had expired).
    NodeAdded(NodeRecord),
    /// A live node was registered again with a changed record.
    NodeUpdated(NodeRecord),
    /// A node was removed through the API; its last record.
    NodeRemoved(NodeRecord),
    /// A node's TTL ran out; its last record.
    NodeExpired(NodeRecord),
    /// A service was registered that had no record.
    ServiceRegistered(ServiceRecord),
    /// A service was registered again with a changed record.
    ServiceUpdated(ServiceRecord),
    /// A service was removed; its last record (implicit if it had none).
    ServiceRemoved(ServiceRecord),
}

impl Change {
    /// The service the change belongs to.
    pub fn key(&self) -> &ServiceKey {
        match self {
            Change::NodeAdded(n)
            | Change::NodeUpdated(n)
            | Change::NodeRemoved(n)
            | Change::NodeExpired(n) => &n.key,
            Change::ServiceRegistered(s)
            | Change::ServiceUpdated(s)
            | Change::ServiceRemoved(s) => &s.key,
        }
    }
}

impl Change {
    /// The change with any service record's `auth_credentials` blanked:
    /// what a watcher may see. Every change passes [`Hub::send_event`],
    /// which applies this, so no watch buffer ever holds a credential,
    /// whichever store sent it.
    fn without_credentials(mut self) -> Self {
        match &mut self {
            Change::ServiceRegistered(s)
            | Change::ServiceUpdated(s)
            | Change::ServiceRemoved(s) => {
                s.spec.auth_credentials.clear();
            }
            Change::NodeAdded(_)
            | Change::NodeUpdated(_)
            | Change::NodeRemoved(_)
            | Change::NodeExpired(_) => {}
        }
        self
    }
}

/// A change with its place in the registry's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEvent {
    /// The change.
    pub change: Change,
    /// Its service's revision for it: increasing across every server that
    /// shares the registry (each service's changes have one order).
    pub revision: u64,
    /// When it happened.
    pub time: Millis,
    /// The change as the server sends it to watchers (its encoded
    /// `WatchEvent` but for the stream's own sequence number), made once
    /// by the first stream that sends it and shared by every other.
    pub wire: OnceLock<Bytes>,
}

/// What a watcher receives from the store.
#[derive(Debug, Clone)]
pub enum StoreEvent {
    /// A change, in revision order.
    Change(Arc<ChangeEvent>),
    /// Changes may have been missed (the store's feed dropped and is back):
    /// take a new snapshot.
    Resync,
}

/// A consistent view of some nodes: each service's nodes as of a revision
/// of that service, so that every change of it with a higher revision
/// happened after the view, and every other change is in the view.
///
/// The memory store has one revision for the whole registry
/// ([`Snapshot::revision`]); Redis has one per service
/// ([`Snapshot::revisions`]), read with that service's nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The revision of services that have none in `revisions`: the
    /// registry's (memory store), or 0 (Redis: a service not read yet, all
    /// of whose changes come after the view).
    pub revision: u64,
    /// Per service name of the group: its revision when it was read.
    pub revisions: HashMap<String, u64>,
    /// The live nodes, by service then name.
    pub nodes: Vec<NodeRecord>,
}

impl Snapshot {
    /// The revision the view has of `service`: changes of it above this
    /// one are news to the view.
    pub fn revision_of(&self, service: &str) -> u64 {
        self.revisions
            .get(service)
            .copied()
            .unwrap_or(self.revision)
    }
}

/// How many events the fan-out holds for the slowest watcher before that
/// watcher is told to resync.
pub const FANOUT_CAPACITY: usize = 4096;

/// The in-process fan-out: one feed in, any number of watchers out. A
/// watcher that falls more than [`FANOUT_CAPACITY`] events behind loses
/// them and is told so (see [`tokio::sync::broadcast`]), so a slow watcher
/// never holds up the others and memory stays bounded.
#[derive(Clone)]
pub struct Hub {
    tx: broadcast::Sender<StoreEvent>,
    /// Called with every event before any watcher can see it.
    listeners: Arc<std::sync::RwLock<Vec<Listener>>>,
}

/// A function the hub calls with every event, in order, as it is sent.
pub type Listener = Arc<dyn Fn(&StoreEvent) + Send + Sync>;

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("receivers", &self.tx.receiver_count())
            .finish_non_exhaustive()
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    /// An empty fan-out.
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(FANOUT_CAPACITY);
        Self {
            tx,
            listeners: Arc::default(),
        }
    }

    /// Hands an event to every listener, then to every current watcher.
    pub fn send(&self, event: StoreEvent) {
        if let Ok(listeners) = self.listeners.read() {
            for listener in listeners.iter() {
                listener(&event);
            }
        }
        // No receiver is fine: nobody is watching.
        let _ = self.tx.send(event);
    }

    /// Calls `listener` with every event from now on, before any watcher
    /// gets it, on the task that sends it: for what must never lag behind
    /// the feed (the read cache's invalidations).
    pub fn listen(&self, listener: Listener) {
        if let Ok(mut listeners) = self.listeners.write() {
            listeners.push(listener);
        }
    }

    /// Hands a change to every current watcher.
    pub fn send_change(&self, change: Change, revision: u64, time: Millis) {
        self.send_event(ChangeEvent {
            change,
            revision,
            time,
            wire: OnceLock::new(),
        });
    }

    /// Hands a change to every current watcher, credentials blanked.
    pub fn send_event(&self, event: ChangeEvent) {
        if let Change::NodeExpired(node) = &event.change
            && let Some(deadline) = node.expires_at
        {
            // Every expiry reaches every server's feed: each counts what
            // the registry expired, with the lag it saw.
            let lag = event.time.saturating_sub(deadline).max(0);
            crate::metrics::metrics().expired(std::time::Duration::from_millis(lag as u64));
        }
        self.send(StoreEvent::Change(Arc::new(ChangeEvent {
            change: event.change.without_credentials(),
            ..event
        })));
    }

    /// How many receivers exist: one per open watch stream.
    pub fn receivers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// A new watcher's receiver: it sees what is sent from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.tx.subscribe()
    }
}
