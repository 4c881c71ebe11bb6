//! The in-memory backend: the default when no Redis is configured.
//!
//! One process, nothing persisted. Expiry works as on Redis: expired nodes
//! are hidden from reads at once and removed by a sweeper that wakes at
//! the next deadline, which tells watchers. Every change is sent to
//! watchers under the lock that makes it, so they see changes in revision
//! order.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;

use tokio::sync::{Notify, broadcast};

use super::{
    Change, Hub, NodeRegistration, Registered, Registry, Removal, Renewal, Snapshot, StoreError,
    StoreEvent, StoreResult,
};
use crate::model::{
    Actor, Millis, NodeRecord, Page, PageRequest, ServiceKey, ServiceRecord, ServiceSpec,
    now_millis,
};

/// The longest the sweeper sleeps without looking. It sleeps until the
/// next deadline, but deadlines are wall-clock times and the wall clock
/// can jump.
const MAX_SWEEP_SLEEP: Duration = Duration::from_secs(1);

/// A registry held in this process's memory.
#[derive(Clone)]
pub struct MemoryRegistry {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// group -> service name -> service.
    groups: BTreeMap<String, BTreeMap<String, Service>>,
    /// Node deadlines, soonest first: (expires_at, service, node).
    deadlines: BTreeSet<(Millis, ServiceKey, String)>,
    /// The revision of the last change.
    revision: u64,
    /// Watchers. Changes are sent while the state is locked, so they go out
    /// in revision order.
    hub: Hub,
    /// Wakes the sweeper when a deadline comes before those it knew of, and
    /// when the registry goes.
    wake: Arc<Notify>,
}

impl Drop for State {
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}

#[derive(Default)]
struct Service {
    /// The registered record, if the service was registered itself.
    record: Option<ServiceRecord>,
    nodes: BTreeMap<String, NodeRecord>,
}

impl State {
    /// Records a change: the next revision, sent to every watcher.
    fn emit(&mut self, change: Change, now: Millis) {
        self.revision += 1;
        self.hub.send_change(change, self.revision, now);
    }

    fn service_mut(&mut self, key: &ServiceKey) -> &mut Service {
        self.groups
            .entry(key.group.clone())
            .or_default()
            .entry(key.service.clone())
            .or_default()
    }

    fn service(&self, key: &ServiceKey) -> Option<&Service> {
        self.groups.get(&key.group)?.get(&key.service)
    }

    /// Adds a node's deadline entry, waking the sweeper if it is the
    /// soonest.
    fn add_deadline(&mut self, t: Millis, key: ServiceKey, node: String) {
        let soonest = self.deadlines.first().is_none_or(|first| t < first.0);
        self.deadlines.insert((t, key, node));
        if soonest {
            self.wake.notify_one();
        }
    }

    /// How long the sweeper may sleep after sweeping at `now`.
    fn sweeper_sleep(&self, now: Millis) -> Duration {
        self.deadlines.first().map_or(MAX_SWEEP_SLEEP, |(t, _, _)| {
            let ms = u64::try_from(t.saturating_sub(now)).unwrap_or(0).max(1);
            Duration::from_millis(ms).min(MAX_SWEEP_SLEEP)
        })
    }

    /// Drops a node's deadline entry, if it has one.
    fn forget_deadline(&mut self, node: &NodeRecord) {
        if let Some(t) = node.expires_at {
            self.deadlines
                .remove(&(t, node.key.clone(), node.name.clone()));
        }
    }

    /// Removes a service with its nodes; how many live nodes it had.
    fn take_service(&mut self, key: &ServiceKey, now: Millis) -> Option<u32> {
        let services = self.groups.get_mut(&key.group)?;
        let service = services.remove(&key.service)?;
        if services.is_empty() {
            self.groups.remove(&key.group);
        }
        let mut live = 0;
        let had_nodes = !service.nodes.is_empty();
        for node in service.nodes.into_values() {
            self.forget_deadline(&node);
            live += u32::from(!node.is_expired(now));
            self.emit(gone(node, now), now);
        }
        if service.record.is_some() || had_nodes {
            let record = service
                .record
                .unwrap_or_else(|| ServiceRecord::implicit(key.clone()));
            self.emit(Change::ServiceRemoved(record), now);
        }
        Some(live)
    }

    /// Removes every node whose deadline has passed.
    fn sweep(&mut self, now: Millis) {
        crate::metrics::metrics().expiry_sweeps.inc();
        while let Some(first) = self.deadlines.first() {
            if first.0 > now {
                break;
            }
            let Some((_, key, name)) = self.deadlines.pop_first() else {
                break;
            };
            if let Some(service) = self
                .groups
                .get_mut(&key.group)
                .and_then(|s| s.get_mut(&key.service))
                && service.nodes.get(&name).is_some_and(|n| n.is_expired(now))
                && let Some(node) = service.nodes.remove(&name)
            {
                self.emit(Change::NodeExpired(node), now);
            }
        }
    }
}

/// The change that removing `node` at `now` makes: it expired if its
/// deadline had passed, else it was removed.
fn gone(node: NodeRecord, now: Millis) -> Change {
    if node.is_expired(now) {
        Change::NodeExpired(node)
    } else {
        Change::NodeRemoved(node)
    }
}

fn page_of<'a>(names: impl Iterator<Item = &'a String>, page: &PageRequest) -> Page {
    let names = names
        .filter(|n| page.after.as_ref().is_none_or(|a| *n > a))
        .take(page.size + 1)
        .cloned()
        .collect();
    Page::from_lookahead(names, page.size)
}

impl MemoryRegistry {
    /// An empty registry. Spawns its expiry sweeper on the current Tokio
    /// runtime; the sweeper ends when the registry is dropped.
    pub fn new() -> Self {
        let state = State::default();
        let wake = state.wake.clone();
        let registry = Self {
            state: Arc::new(Mutex::new(state)),
        };
        tokio::spawn(sweeper(Arc::downgrade(&registry.state), wake));
        registry
    }

    /// The fan-out this registry feeds; [`Hub::receivers`] counts the open
    /// watch streams.
    pub fn hub(&self) -> Hub {
        self.state.lock().map(|s| s.hub.clone()).unwrap_or_default()
    }

    fn lock(&self) -> StoreResult<MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| StoreError::Internal("memory registry lock poisoned".into()))
    }
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self::new()
    }
}

/// Removes expired nodes as their deadlines pass, sleeping in between
/// (as mini-redis's `purge_expired_tasks` does) rather than polling.
async fn sweeper(state: Weak<Mutex<State>>, wake: Arc<Notify>) {
    loop {
        let sleep = {
            let Some(state) = state.upgrade() else { return };
            let Ok(mut s) = state.lock() else { return };
            let now = now_millis();
            s.sweep(now);
            s.sweeper_sleep(now)
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = wake.notified() => {}
        }
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn register_service(
        &self,
        key: ServiceKey,
        spec: ServiceSpec,
    ) -> StoreResult<ServiceRecord> {
        let now = now_millis();
        let mut state = self.lock()?;
        let service = state.service_mut(&key);
        let old = service.record.take();
        let record = ServiceRecord {
            key,
            spec,
            registered_at: Some(old.as_ref().and_then(|r| r.registered_at).unwrap_or(now)),
            updated_at: Some(now),
        };
        service.record = Some(record.clone());
        match old {
            None => state.emit(Change::ServiceRegistered(record.clone()), now),
            Some(old) if old.spec != record.spec => {
                state.emit(Change::ServiceUpdated(record.clone()), now)
            }
            Some(_) => {}
        }
        Ok(record)
    }

    async fn register_node(&self, reg: NodeRegistration) -> StoreResult<Registered> {
        let now = now_millis();
        let mut state = self.lock()?;
        let old = state.service_mut(&reg.key).nodes.get(&reg.name).cloned();
        let mut spec = reg.spec;
        let mut owner = reg.actor.as_ref().map(|a| a.name.clone());
        let registered_at = match &old {
            Some(old) if !old.is_expired(now) => {
                if let Some(actor) = &reg.actor
                    && !actor.may_change(old.owner.as_deref())
                {
                    return Err(not_owner(old));
                }
                // Without auth a node keeps the owner it had.
                owner = owner.or_else(|| old.owner.clone());
                if reg.keep_instance {
                    spec.instance_id = old.spec.instance_id.clone();
                }
                old.registered_at
            }
            _ => now,
        };
        if let Some(old) = &old {
            state.forget_deadline(old);
        }
        let record = NodeRecord {
            key: reg.key,
            name: reg.name,
            spec,
            registered_at,
            updated_at: now,
            expires_at: crate::model::expiry(now, reg.ttl),
            owner,
        };
        if let Some(t) = record.expires_at {
            state.add_deadline(t, record.key.clone(), record.name.clone());
        }
        state
            .service_mut(&record.key)
            .nodes
            .insert(record.name.clone(), record.clone());
        let changed = match old {
            Some(old) if !old.is_expired(now) => {
                if old.spec != record.spec {
                    state.emit(Change::NodeUpdated(record.clone()), now);
                }
                old.spec != record.spec || old.owner != record.owner
            }
            Some(old) => {
                state.emit(Change::NodeExpired(old), now);
                state.emit(Change::NodeAdded(record.clone()), now);
                true
            }
            None => {
                state.emit(Change::NodeAdded(record.clone()), now);
                true
            }
        };
        Ok(Registered { record, changed })
    }

    async fn get_service(&self, key: &ServiceKey) -> StoreResult<Option<ServiceRecord>> {
        let state = self.lock()?;
        Ok(state.service(key).map(|s| {
            s.record
                .clone()
                .unwrap_or_else(|| ServiceRecord::implicit(key.clone()))
        }))
    }

    async fn get_nodes(&self, key: &ServiceKey) -> StoreResult<Vec<NodeRecord>> {
        let now = now_millis();
        let state = self.lock()?;
        Ok(state
            .service(key)
            .map(|s| {
                s.nodes
                    .values()
                    .filter(|n| !n.is_expired(now))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn list_services(&self, group: &str, page: PageRequest) -> StoreResult<Page> {
        let state = self.lock()?;
        Ok(match state.groups.get(group) {
            Some(services) => {
                let start = match &page.after {
                    Some(a) => Bound::Excluded(a.clone()),
                    None => Bound::Unbounded,
                };
                page_of(
                    services.range((start, Bound::Unbounded)).map(|(k, _)| k),
                    &page,
                )
            }
            None => Page::default(),
        })
    }

    async fn list_groups(&self, page: PageRequest) -> StoreResult<Page> {
        let state = self.lock()?;
        Ok(page_of(state.groups.keys(), &page))
    }

    async fn remove_node(
        &self,
        key: &ServiceKey,
        node: &str,
        instance: Option<&str>,
        actor: Option<&Actor>,
    ) -> StoreResult<Removal> {
        let now = now_millis();
        let mut state = self.lock()?;
        let Some(service) = state
            .groups
            .get_mut(&key.group)
            .and_then(|s| s.get_mut(&key.service))
        else {
            return Ok(Removal::Missing);
        };
        let Some(old) = service.nodes.get(node) else {
            return Ok(Removal::Missing);
        };
        if !old.is_expired(now)
            && let Some(actor) = actor
            && !actor.may_change(old.owner.as_deref())
        {
            return Err(not_owner(old));
        }
        if let Some(id) = instance
            && !old.is_expired(now)
            && old.spec.instance_id != id
        {
            return Ok(Removal::OtherInstance(old.spec.instance_id.clone()));
        }
        let Some(old) = service.nodes.remove(node) else {
            return Ok(Removal::Missing);
        };
        state.forget_deadline(&old);
        let live = !old.is_expired(now);
        state.emit(gone(old, now), now);
        Ok(if live {
            Removal::Removed
        } else {
            Removal::Missing
        })
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
        let mut state = self.lock()?;
        let Some(old) = state
            .service(key)
            .and_then(|s| s.nodes.get(node))
            .filter(|n| !n.is_expired(now))
            .cloned()
        else {
            return Ok(Renewal::Missing);
        };
        if let Some(actor) = actor
            && !actor.may_change(old.owner.as_deref())
        {
            return Err(not_owner(&old));
        }
        if let Some(id) = instance
            && old.spec.instance_id != id
        {
            return Ok(Renewal::OtherInstance(old.spec.instance_id));
        }
        state.forget_deadline(&old);
        let expires_at = crate::model::expiry(now, ttl);
        if let Some(t) = expires_at {
            state.add_deadline(t, key.clone(), node.to_string());
        }
        if let Some(n) = state.service_mut(key).nodes.get_mut(node) {
            n.expires_at = expires_at;
        }
        Ok(Renewal::Renewed(expires_at))
    }

    async fn remove_service(&self, key: &ServiceKey) -> StoreResult<Option<u32>> {
        let mut state = self.lock()?;
        Ok(state.take_service(key, now_millis()))
    }

    async fn remove_group(&self, group: &str) -> StoreResult<Option<u32>> {
        let now = now_millis();
        let mut state = self.lock()?;
        let Some(services) = state.groups.get(group) else {
            return Ok(None);
        };
        let names: Vec<String> = services.keys().cloned().collect();
        for name in &names {
            state.take_service(&ServiceKey::new(group, name.clone()), now);
        }
        Ok(Some(names.len() as u32))
    }

    fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        match self.state.lock() {
            Ok(state) => state.hub.subscribe(),
            // Poisoned: every call fails from here on; a receiver of a
            // fan-out nobody sends on at least never lies.
            Err(_) => Hub::new().subscribe(),
        }
    }

    fn hub(&self) -> Hub {
        MemoryRegistry::hub(self)
    }

    async fn snapshot(&self, group: &str, service: Option<&str>) -> StoreResult<Snapshot> {
        let now = now_millis();
        let state = self.lock()?;
        let nodes = match state.groups.get(group) {
            Some(services) => services
                .iter()
                .filter(|(name, _)| service.is_none_or(|s| s == name.as_str()))
                .flat_map(|(_, s)| s.nodes.values())
                .filter(|n| !n.is_expired(now))
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        Ok(Snapshot {
            revision: state.revision,
            nodes,
            ..Snapshot::default()
        })
    }

    async fn ping(&self) -> StoreResult<()> {
        self.lock().map(|_| ())
    }

    fn describe(&self) -> String {
        "memory (single process, not persistent)".into()
    }
}

/// The refusal of a change to `node` by someone other than its owner.
fn not_owner(node: &NodeRecord) -> StoreError {
    StoreError::NotOwner {
        node: node.name.clone(),
        owner: node.owner.clone().unwrap_or_default(),
    }
}
