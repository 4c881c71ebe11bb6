//! The read cache: each service's GetNodes answer and its GetService
//! answer, encoded, kept until something could have changed them.
//!
//! GetService's is kept for a registered service only: a service listed
//! by its nodes alone can lose its listing without a change message (a
//! registration and a removal that raced), and an unknown service is not
//! worth keeping. An answer revealing credentials is never kept.
//!
//! An entry goes when
//! - the change feed reports a change of its service (any server's write),
//!   or a RESYNC (changes may have been missed: everything goes);
//! - a write through this server touches its service, before that write
//!   answers (read-your-writes on one server);
//! - the earliest deadline among its nodes passes, so an expired node is
//!   never served;
//! - the feed is down or was made anew ([`Registry::feed`]): then reads
//!   bypass the cache until it is back;
//! - the cache is over its byte budget (least recently used first).
//!
//! A read races the invalidations: it may fetch the state just before a
//! change and store it just after the change's invalidation went by. So
//! every invalidation advances a version (one of [`VERSION_SLOTS`], by the
//! service's hash, and a global one for RESYNC), and a read stores its
//! answer only if the versions it saw before fetching are still current.
//!
//! Across servers an answer is as fresh as the change feed is fast: a
//! change through another server reaches this one's cache as soon as its
//! change message does (see the README).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use lru::LruCache;

use crate::model::{Millis, ServiceKey, now_millis};
use crate::store::{Registry, StoreEvent};

/// The default of `--read-cache-bytes`: some 16,000 services of 20 nodes.
pub const DEFAULT_READ_CACHE_BYTES: usize = 64 * 1024 * 1024;
/// Versions kept for invalidations, one per group of services: a change
/// holds back the stores of 1 / 256 of the services only.
const VERSION_SLOTS: usize = 256;
/// What an entry costs beyond its bytes (key, map slot, list links).
const ENTRY_OVERHEAD: usize = 128;

/// Which answer about a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// GetNodes: its live nodes.
    Nodes,
    /// GetService: its record.
    Service,
}

impl Answer {
    /// Its name in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Answer::Nodes => "nodes",
            Answer::Service => "service",
        }
    }
}

/// One cached answer.
struct Held {
    answer: Bytes,
    /// The earliest deadline of its nodes: not served from then on.
    valid_until: Option<Millis>,
    /// The feed it was read under.
    feed: u64,
}

impl Held {
    fn fresh(&self, feed: u64) -> bool {
        self.feed == feed && self.valid_until.is_none_or(|t| now_millis() < t)
    }
}

/// A service's cached answers: they go together, as any change of the
/// service may change either.
#[derive(Default)]
struct Entry {
    nodes: Option<Held>,
    service: Option<Held>,
}

impl Entry {
    fn slot(&mut self, answer: Answer) -> &mut Option<Held> {
        match answer {
            Answer::Nodes => &mut self.nodes,
            Answer::Service => &mut self.service,
        }
    }

    fn cost(&self, key: &ServiceKey) -> usize {
        let held = |h: &Option<Held>| h.as_ref().map_or(0, |h| h.answer.len());
        held(&self.nodes)
            + held(&self.service)
            + key.group.len()
            + key.service.len()
            + ENTRY_OVERHEAD
    }
}

/// What a read saw before fetching: stored only if still current.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    global: u64,
    slot: u64,
    feed: u64,
}

/// The cache of one server.
pub struct ReadCache {
    entries: Mutex<Entries>,
    /// Advanced by every RESYNC and feed change.
    global: AtomicU64,
    /// Advanced by each invalidation of a service in the slot.
    slots: Vec<AtomicU64>,
    /// At most this many bytes are kept.
    budget: AtomicUsize,
}

struct Entries {
    lru: LruCache<ServiceKey, Entry>,
    bytes: usize,
}

impl std::fmt::Debug for ReadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache")
            .field("budget", &self.budget.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl ReadCache {
    /// A cache of at most `budget` bytes (0: caches nothing).
    pub fn new(budget: usize) -> Self {
        Self {
            entries: Mutex::new(Entries {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
            global: AtomicU64::new(0),
            slots: (0..VERSION_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            budget: AtomicUsize::new(budget),
        }
    }

    /// Keeps at most `budget` bytes from now on (0: caches nothing).
    pub fn set_budget(&self, budget: usize) {
        self.budget.store(budget, Ordering::Relaxed);
        self.clear();
    }

    fn slot(&self, key: &ServiceKey) -> &AtomicU64 {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        &self.slots[(h.finish() as usize) % VERSION_SLOTS]
    }

    /// `key`'s cached `answer`, if it is still good under `feed` (the
    /// registry's [`Registry::feed`] now).
    pub fn get(&self, key: &ServiceKey, answer: Answer, feed: Option<u64>) -> Option<Bytes> {
        let found = self.lookup(key, answer, feed);
        // A cache turned off, or bypassed while the feed is down, is not
        // missed.
        if feed.is_some() && self.budget.load(Ordering::Relaxed) > 0 {
            let m = crate::metrics::metrics();
            let counter = if found.is_some() {
                &m.cache_hits
            } else {
                &m.cache_misses
            };
            counter.with_label_values(&[answer.label()]).inc();
        }
        found
    }

    fn lookup(&self, key: &ServiceKey, answer: Answer, feed: Option<u64>) -> Option<Bytes> {
        let feed = feed?;
        let mut entries = self.entries.lock().ok()?;
        let held = entries.lru.get_mut(key)?.slot(answer);
        match held {
            Some(h) if h.fresh(feed) => Some(h.answer.clone()),
            Some(_) => {
                // Stale: the service's other answer goes too (the same
                // change or deadline made it).
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// What a read of `key` must note before it fetches, to store its
    /// answer after; `None` while the feed is down (nothing is stored).
    pub fn ticket(&self, key: &ServiceKey, feed: Option<u64>) -> Option<Ticket> {
        Some(Ticket {
            feed: feed?,
            global: self.global.load(Ordering::Acquire),
            slot: self.slot(key).load(Ordering::Acquire),
        })
    }

    /// Stores the `answer` a read fetched under `ticket` as `key`'s
    /// `kind`, unless an invalidation came in between or the feed changed
    /// (`feed` now).
    pub fn put(
        &self,
        key: &ServiceKey,
        kind: Answer,
        ticket: Ticket,
        feed: Option<u64>,
        answer: Bytes,
        valid_until: Option<Millis>,
    ) {
        let budget = self.budget.load(Ordering::Relaxed);
        if answer.len() + key.group.len() + key.service.len() + ENTRY_OVERHEAD > budget
            || feed != Some(ticket.feed)
        {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        // Checked under the lock that invalidations take too, so none can
        // slip in between the check and the store.
        let current = self.global.load(Ordering::Acquire) == ticket.global
            && self.slot(key).load(Ordering::Acquire) == ticket.slot;
        if !current {
            return;
        }
        let mut entry = entries.take(key).unwrap_or_default();
        *entry.slot(kind) = Some(Held {
            answer,
            valid_until,
            feed: ticket.feed,
        });
        entries.bytes += entry.cost(key);
        entries.lru.put(key.clone(), entry);
        while entries.bytes > budget {
            let Some((k, e)) = entries.lru.pop_lru() else {
                break;
            };
            entries.bytes -= e.cost(&k);
        }
    }

    /// Forgets `key`'s answer: its service changed.
    pub fn invalidate(&self, key: &ServiceKey) {
        if let Ok(mut entries) = self.entries.lock() {
            self.slot(key).fetch_add(1, Ordering::AcqRel);
            entries.remove(key);
        }
    }

    /// Forgets the answers of every service of `group`.
    pub fn invalidate_group(&self, group: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            // A group's services are spread over every slot.
            self.global.fetch_add(1, Ordering::AcqRel);
            let keys: Vec<ServiceKey> = entries
                .lru
                .iter()
                .filter(|(k, _)| k.group == group)
                .map(|(k, _)| k.clone())
                .collect();
            for k in keys {
                entries.remove(&k);
            }
        }
    }

    /// Forgets everything: changes may have been missed.
    pub fn clear(&self) {
        if let Ok(mut entries) = self.entries.lock() {
            self.global.fetch_add(1, Ordering::AcqRel);
            entries.lru.clear();
            entries.bytes = 0;
        }
    }

    /// How many answers are cached.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().map(|e| e.lru.len()).unwrap_or(0)
    }

    /// Whether nothing is cached.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Follows `registry`'s change feed: each change forgets its
    /// service's answer, a RESYNC everything, as the feed delivers them
    /// (before any watcher sees them).
    pub fn follow(self: &Arc<Self>, registry: &Arc<dyn Registry>) {
        let cache = self.clone();
        registry.hub().listen(Arc::new(move |event| match event {
            StoreEvent::Change(change) => cache.invalidate(change.change.key()),
            StoreEvent::Resync => cache.clear(),
        }));
    }
}

impl Entries {
    /// Takes `key`'s entry out, with its bytes.
    fn take(&mut self, key: &ServiceKey) -> Option<Entry> {
        let entry = self.lru.pop(key)?;
        self.bytes -= entry.cost(key);
        Some(entry)
    }

    fn remove(&mut self, key: &ServiceKey) {
        self.take(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> ServiceKey {
        ServiceKey::new("g", s)
    }

    fn answer(n: usize) -> Bytes {
        Bytes::from(vec![7u8; n])
    }

    #[test]
    fn an_answer_read_before_an_invalidation_is_not_stored() {
        let cache = ReadCache::new(1 << 20);
        let ticket = cache.ticket(&key("a"), Some(1)).unwrap();
        cache.invalidate(&key("a"));
        cache.put(&key("a"), Answer::Nodes, ticket, Some(1), answer(10), None);
        assert!(cache.get(&key("a"), Answer::Nodes, Some(1)).is_none());
        // A fresh read stores.
        let ticket = cache.ticket(&key("a"), Some(1)).unwrap();
        cache.put(&key("a"), Answer::Nodes, ticket, Some(1), answer(10), None);
        assert_eq!(
            cache.get(&key("a"), Answer::Nodes, Some(1)),
            Some(answer(10))
        );
    }

    #[test]
    fn a_clear_or_a_new_feed_drops_everything() {
        let cache = ReadCache::new(1 << 20);
        let ticket = cache.ticket(&key("a"), Some(1)).unwrap();
        cache.put(&key("a"), Answer::Nodes, ticket, Some(1), answer(10), None);
        assert!(
            cache.get(&key("a"), Answer::Nodes, Some(2)).is_none(),
            "another feed"
        );
        let ticket = cache.ticket(&key("a"), Some(2)).unwrap();
        cache.clear();
        cache.put(&key("a"), Answer::Nodes, ticket, Some(2), answer(10), None);
        assert!(cache.is_empty());
        assert!(cache.ticket(&key("a"), None).is_none(), "feed down");
        assert!(cache.get(&key("a"), Answer::Nodes, None).is_none());
    }

    #[test]
    fn an_answer_is_not_served_past_its_earliest_deadline() {
        let cache = ReadCache::new(1 << 20);
        let ticket = cache.ticket(&key("a"), Some(1)).unwrap();
        cache.put(
            &key("a"),
            Answer::Nodes,
            ticket,
            Some(1),
            answer(10),
            Some(now_millis() - 1),
        );
        assert!(cache.get(&key("a"), Answer::Nodes, Some(1)).is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn the_least_recently_used_go_past_the_budget() {
        let cost = 1000 + "g".len() + "a".len() + ENTRY_OVERHEAD;
        let cache = ReadCache::new(3 * cost);
        for s in ["a", "b", "c"] {
            let ticket = cache.ticket(&key(s), Some(1)).unwrap();
            cache.put(&key(s), Answer::Nodes, ticket, Some(1), answer(1000), None);
        }
        assert!(
            cache.get(&key("a"), Answer::Nodes, Some(1)).is_some(),
            "a used last"
        );
        let ticket = cache.ticket(&key("d"), Some(1)).unwrap();
        cache.put(
            &key("d"),
            Answer::Nodes,
            ticket,
            Some(1),
            answer(1000),
            None,
        );
        assert_eq!(cache.len(), 3);
        assert!(
            cache.get(&key("b"), Answer::Nodes, Some(1)).is_none(),
            "b was least recent"
        );
        assert!(cache.get(&key("a"), Answer::Nodes, Some(1)).is_some());
    }

    #[test]
    fn a_service_keeps_both_answers_and_loses_them_together() {
        let cache = ReadCache::new(1 << 20);
        for kind in [Answer::Nodes, Answer::Service] {
            let ticket = cache.ticket(&key("a"), Some(1)).unwrap();
            cache.put(&key("a"), kind, ticket, Some(1), answer(10), None);
        }
        assert_eq!(cache.len(), 1, "one entry per service");
        assert!(cache.get(&key("a"), Answer::Service, Some(1)).is_some());
        assert!(cache.get(&key("a"), Answer::Nodes, Some(1)).is_some());
        cache.invalidate(&key("a"));
        assert!(cache.get(&key("a"), Answer::Service, Some(1)).is_none());
        assert!(cache.get(&key("a"), Answer::Nodes, Some(1)).is_none());
        // The bytes of both were counted and given back.
        assert_eq!(cache.entries.lock().unwrap().bytes, 0);
    }
}
