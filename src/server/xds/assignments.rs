//! The endpoint assignments of the services xDS clients follow, shared by
//! every stream of the server: a change makes each affected assignment
//! once, however many clients follow the service (a thousand clients of
//! one service cost one read of its nodes per change, not a thousand).
//!
//! One task follows the store's change feed. For each change it first
//! drops the service's assignment, then tells the streams; a stream told
//! of a change (or subscribing anew) asks for the assignment and gets the
//! kept one, or joins the read already under way, or starts one. A read
//! keeps its result only if nothing dropped the service meanwhile and the
//! feed was up throughout ([`Registry::feed`]): while it is down every ask
//! reads the store. Only services with nodes are kept, so the slots are
//! bounded by what is registered, not by the names clients ask for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::resources;
use crate::model::ServiceKey;
use crate::store::{Registry, StoreEvent, StoreResult};

/// Changes kept for streams that are slow to take them; one that falls
/// further behind looks at all its services again.
const CHANGED_CAPACITY: usize = 4096;

/// A service's assignment, encoded once, with its hash.
#[derive(Debug)]
pub struct Assignment {
    /// The ClusterLoadAssignment.
    pub any: envoy_types::pb::google::protobuf::Any,
    /// Its content's hash: equal hashes, nothing to send.
    pub hash: u64,
    /// Whether the service had no live nodes: such an assignment is not
    /// kept (any name a client makes up has one, and nothing would ever
    /// drop it), only shared while it is read.
    pub empty: bool,
}

/// What a stream is told.
#[derive(Debug, Clone)]
pub enum Changed {
    /// This service's assignment may have changed.
    Service(ServiceKey),
    /// Any may have (changes were missed).
    All,
}

type Read = Shared<BoxFuture<'static, Result<Arc<Assignment>, String>>>;

/// A service's slot: the kept assignment, or the read under way.
enum Slot {
    Kept(Arc<Assignment>),
    Reading { read: Read, generation: u64 },
}

/// The shared assignments of one server.
pub struct Assignments {
    registry: Arc<dyn Registry>,
    slots: Mutex<Slots>,
    changed: broadcast::Sender<Changed>,
    /// Stops the follower.
    stop: CancellationToken,
    /// Whether the follower runs: it starts with the first stream, so a
    /// server no xDS client uses keeps no task and no feed receiver.
    following: std::sync::Once,
}

#[derive(Default)]
struct Slots {
    by_service: HashMap<ServiceKey, Slot>,
    /// Advanced by each drop: a read started before it keeps nothing.
    generation: u64,
}

impl Assignments {
    /// Assignments of `registry`'s services; `registry`'s changes are
    /// followed from the first [`Assignments::subscribe`] until `stop` is
    /// cancelled.
    pub fn new(registry: Arc<dyn Registry>, stop: CancellationToken) -> Arc<Self> {
        let (changed, _) = broadcast::channel(CHANGED_CAPACITY);
        Arc::new(Self {
            registry,
            slots: Mutex::new(Slots::default()),
            changed,
            stop,
            following: std::sync::Once::new(),
        })
    }

    /// Changes from now on, each told after its assignment was dropped.
    pub fn subscribe(self: &Arc<Self>) -> broadcast::Receiver<Changed> {
        self.following.call_once(|| {
            // Subscribed here, before the caller reads anything: no change
            // falls between.
            let feed = self.registry.subscribe();
            tokio::spawn(self.clone().follow(feed, self.stop.clone()));
        });
        self.changed.subscribe()
    }

    async fn follow(
        self: Arc<Self>,
        mut feed: broadcast::Receiver<StoreEvent>,
        stop: CancellationToken,
    ) {
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => return,
                event = feed.recv() => event,
            };
            let told = match event {
                Ok(StoreEvent::Change(change)) => {
                    let key = change.change.key().clone();
                    self.drop_kept(Some(&key));
                    Changed::Service(key)
                }
                Ok(StoreEvent::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.drop_kept(None);
                    Changed::All
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            // No stream listening is fine.
            let _ = self.changed.send(told);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops one service's slot, or all of them.
    fn drop_kept(&self, key: Option<&ServiceKey>) {
        let mut slots = self.lock();
        slots.generation += 1;
        match key {
            Some(key) => {
                slots.by_service.remove(key);
            }
            None => slots.by_service.clear(),
        }
    }

    /// The current assignment of `key`.
    pub async fn get(&self, key: &ServiceKey) -> StoreResult<Arc<Assignment>> {
        let (read, generation) = {
            let mut slots = self.lock();
            match slots.by_service.get(key) {
                Some(Slot::Kept(kept)) => return Ok(kept.clone()),
                Some(Slot::Reading { read, generation }) => (read.clone(), *generation),
                None => {
                    let read = self.read(key.clone());
                    let generation = slots.generation;
                    slots.by_service.insert(
                        key.clone(),
                        Slot::Reading {
                            read: read.clone(),
                            generation,
                        },
                    );
                    (read, generation)
                }
            }
        };
        let feed_before = self.registry.feed();
        let result = read.await;
        let mut slots = self.lock();
        // A drop removes the slot, and a slot made after it has a later
        // generation: finding ours means nothing dropped the service
        // since its read began.
        if let Some(Slot::Reading { generation: g, .. }) = slots.by_service.get(key)
            && *g == generation
        {
            match &result {
                Ok(a)
                    if !a.empty && feed_before.is_some() && self.registry.feed() == feed_before =>
                {
                    slots.by_service.insert(key.clone(), Slot::Kept(a.clone()));
                }
                _ => {
                    slots.by_service.remove(key);
                }
            }
        }
        result.map_err(crate::store::StoreError::Unavailable)
    }

    /// Reads `key`'s nodes and makes its assignment; shared by every
    /// stream that asks meanwhile.
    fn read(&self, key: ServiceKey) -> Read {
        let registry = self.registry.clone();
        async move {
            let nodes = registry.get_nodes(&key).await.map_err(|e| e.to_string())?;
            let any = resources::load_assignment(&key, &nodes);
            let hash = resources::hash_of(&any);
            Ok(Arc::new(Assignment {
                any,
                hash,
                empty: nodes.is_empty(),
            }))
        }
        .boxed()
        .shared()
    }
}
