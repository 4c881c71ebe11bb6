//! The in-memory backend: the default when no Redis is configured.
//!
//! One process, nothing persisted. Expiry works as on Redis: expired nodes
//! are hidden from reads at once and removed by a sweeper shortly after.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;

use super::{NodeRegistration, Registry, StoreError, StoreResult};
use crate::model::{
    Millis, NodeRecord, Page, PageRequest, ServiceKey, ServiceRecord, ServiceSpec, now_millis,
};

/// How often the sweeper removes expired nodes.
const SWEEP_INTERVAL: Duration = Duration::from_millis(50);

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
}

#[derive(Default)]
struct Service {
    /// The registered record, if the service was registered itself.
    record: Option<ServiceRecord>,
    nodes: BTreeMap<String, NodeRecord>,
}

impl State {
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
        for node in service.nodes.values() {
            self.forget_deadline(node);
            live += u32::from(!node.is_expired(now));
        }
        Some(live)
    }

    /// Removes every node whose deadline has passed.
    fn sweep(&mut self, now: Millis) {
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
            {
                service.nodes.remove(&name);
            }
        }
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
        let registry = Self {
            state: Arc::new(Mutex::new(State::default())),
        };
        let weak = Arc::downgrade(&registry.state);
        tokio::spawn(sweeper(weak));
        registry
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

async fn sweeper(state: Weak<Mutex<State>>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade() else { return };
        if let Ok(mut s) = state.lock() {
            s.sweep(now_millis());
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
        let registered_at = service
            .record
            .as_ref()
            .and_then(|r| r.registered_at)
            .unwrap_or(now);
        let record = ServiceRecord {
            key,
            spec,
            registered_at: Some(registered_at),
            updated_at: Some(now),
        };
        service.record = Some(record.clone());
        Ok(record)
    }

    async fn register_node(&self, reg: NodeRegistration) -> StoreResult<NodeRecord> {
        let now = now_millis();
        let mut state = self.lock()?;
        let old = state.service_mut(&reg.key).nodes.get(&reg.name).cloned();
        let registered_at = match &old {
            Some(old) if !old.is_expired(now) => old.registered_at,
            _ => now,
        };
        if let Some(old) = &old {
            state.forget_deadline(old);
        }
        let record = NodeRecord {
            key: reg.key,
            name: reg.name,
            spec: reg.spec,
            registered_at,
            updated_at: now,
            expires_at: reg.ttl.map(|ttl| now + ttl.as_millis() as Millis),
        };
        if let Some(t) = record.expires_at {
            state
                .deadlines
                .insert((t, record.key.clone(), record.name.clone()));
        }
        state
            .service_mut(&record.key)
            .nodes
            .insert(record.name.clone(), record.clone());
        Ok(record)
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

    async fn remove_node(&self, key: &ServiceKey, node: &str) -> StoreResult<bool> {
        let now = now_millis();
        let mut state = self.lock()?;
        let Some(service) = state
            .groups
            .get_mut(&key.group)
            .and_then(|s| s.get_mut(&key.service))
        else {
            return Ok(false);
        };
        let Some(old) = service.nodes.remove(node) else {
            return Ok(false);
        };
        state.forget_deadline(&old);
        Ok(!old.is_expired(now))
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

    async fn ping(&self) -> StoreResult<()> {
        self.lock().map(|_| ())
    }

    fn describe(&self) -> String {
        "memory (single process, not persistent)".into()
    }
}
