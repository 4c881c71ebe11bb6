//! WatchService: one task per stream, fed by the store's fan-out.
//!
//! A stream subscribes to the store's changes first and takes its snapshot
//! second, so nothing falls between the two: a change that the snapshot
//! already shows has a revision no higher than the snapshot's revision of
//! its service and is skipped. The same happens after every RESYNC.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::reply::SharedEvent;
use crate::auth::{Action, Auth, Caller};
use crate::model::{NodeRecord, ServiceKey, now_millis};
use crate::proto::timestamp;
use crate::proto::v1::{self as pb, EventType};
use crate::store::{Change, ChangeEvent, Registry, Snapshot, StoreError, StoreEvent};

/// The default of `--watch-buffer-bytes`: encoded bytes of events a stream
/// holds for a client that reads slowly (issue 11).
///
/// When it is full the stream's task waits and stops taking changes from
/// the fan-out; if it falls more than the fan-out's capacity behind, the
/// client gets a RESYNC and the current state once it reads again. Counted
/// in bytes, not events: 256 events of a node with large metadata once
/// pinned 400 KB per frozen client.
pub const DEFAULT_WATCH_BUFFER_BYTES: usize = 32 * 1024;
/// How long a stream waits before retrying a snapshot the store refused
/// (Redis down): the store's own RESYNC usually comes first.
const SNAPSHOT_RETRY: Duration = Duration::from_secs(1);

/// The stream type of WatchService: the events a stream's task queued,
/// each giving its bytes back to the stream's budget as it is taken.
pub struct WatchStream {
    queue: mpsc::UnboundedReceiver<Queued>,
}

/// One entry of a stream's queue. Boxed, so an empty queue's blocks of
/// slots stay small: a stream that is open but quiet costs little.
enum Queued {
    /// An event and its share of the stream's budget.
    Event(Box<SharedEvent>, OwnedSemaphorePermit),
    /// The status the stream ends with.
    End(Box<Status>),
}

impl Stream for WatchStream {
    type Item = Result<SharedEvent, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.queue.poll_recv(cx).map(|queued| {
            queued.map(|q| match q {
                // The permit is dropped here: the event's bytes now belong
                // to the transport, which has its own bounds.
                Queued::Event(event, _permit) => Ok(*event),
                Queued::End(status) => Err(*status),
            })
        })
    }
}

/// What one stream watches: a group, and one service or all of them.
#[derive(Debug, Clone)]
pub struct Filter {
    /// The group.
    pub group: String,
    /// The service, or `None` for every service of the group.
    pub service: Option<String>,
}

impl Filter {
    fn matches(&self, key: &ServiceKey) -> bool {
        key.group == self.group && self.service.as_ref().is_none_or(|s| *s == key.service)
    }
}

/// The default of `--max-watch-streams`: each open stream costs a task,
/// a buffer of up to [`DEFAULT_WATCH_BUFFER_BYTES`] and a fan-out receiver,
/// so a bound keeps a client that opens streams without end from taking
/// the memory.
pub const DEFAULT_MAX_WATCH_STREAMS: usize = 10_000;

/// Counts the open watch streams of one server against its limit.
/// Clones share the count.
#[derive(Debug, Clone)]
pub struct WatchSlots {
    inner: Arc<SlotCount>,
}

#[derive(Debug)]
struct SlotCount {
    open: AtomicUsize,
    max: usize,
    /// Each stream's budget of queued bytes.
    buffer_bytes: u32,
    /// Set when a refusal has been logged; cleared once the count has
    /// fallen back, so a server at its limit logs each crossing once and
    /// not each refused watch.
    warned: AtomicBool,
}

/// One open stream's place in [`WatchSlots`], given back when dropped.
#[derive(Debug)]
pub struct WatchSlot {
    inner: Arc<SlotCount>,
}

impl WatchSlots {
    /// Room for `max` open streams, each holding at most `buffer_bytes` of
    /// events its client has not taken.
    pub fn new(max: usize, buffer_bytes: usize) -> Self {
        Self {
            inner: Arc::new(SlotCount {
                open: AtomicUsize::new(0),
                max,
                buffer_bytes: u32::try_from(buffer_bytes.max(1)).unwrap_or(u32::MAX),
                warned: AtomicBool::new(false),
            }),
        }
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::Relaxed)
    }

    /// Takes a place for a new stream, or refuses it with
    /// RESOURCE_EXHAUSTED when `max` are open.
    pub fn acquire(&self) -> Result<WatchSlot, Status> {
        let c = &self.inner;
        let taken = c
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < c.max).then_some(n + 1)
            });
        if taken.is_ok() {
            return Ok(WatchSlot { inner: c.clone() });
        }
        if !c.warned.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                max = c.max,
                "watch streams at the limit (--max-watch-streams): refusing new ones with RESOURCE_EXHAUSTED"
            );
        }
        Err(Status::resource_exhausted(format!(
            "too many open watch streams: this server allows {} (--max-watch-streams); retry later or elsewhere",
            c.max
        )))
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let c = &self.inner;
        let before = c.open.fetch_sub(1, Ordering::AcqRel);
        // Re-arm the warning only once a tenth of the room is free again,
        // so streams closing and opening at the edge do not log each time.
        if before <= c.max - c.max / 10 {
            c.warned.store(false, Ordering::Release);
        }
    }
}

/// Who opened a watch, when the server has an auth file: checked again
/// each time the file is reloaded, so that a watch whose entry was removed
/// or no longer allows it ends (UNAUTHENTICATED or PERMISSION_DENIED)
/// instead of streaming for as long as its connection lasts.
pub struct Access {
    auth: Arc<Auth>,
    caller: Caller,
    reloads: tokio::sync::watch::Receiver<u64>,
}

impl Access {
    /// `caller`'s access under `auth`, from the policy in force now on.
    pub fn new(auth: Arc<Auth>, caller: Caller) -> Self {
        let reloads = auth.reloads();
        Self {
            auth,
            caller,
            reloads,
        }
    }

    /// Completes, with the status to end the stream with, once a reload
    /// takes away the access to `filter`; never without a reload.
    async fn revoked(&mut self, filter: &Filter) -> Status {
        loop {
            if self.reloads.changed().await.is_err() {
                return std::future::pending().await;
            }
            let Some(now) = self.auth.policy().again(&self.caller) else {
                return Status::unauthenticated(format!(
                    "{:?} is no longer in the server's auth file: this watch ends",
                    self.caller.name
                ));
            };
            let service = filter.service.as_deref();
            if let Err(denied) = now.authorize(Action::WatchService, &filter.group, service) {
                return denied.into();
            }
            self.caller = now;
        }
    }
}

/// Completes when `access` is revoked; never for a server without auth.
async fn revoked(access: &mut Option<Access>, filter: &Filter) -> Status {
    match access {
        Some(access) => access.revoked(filter).await,
        None => std::future::pending().await,
    }
}

/// Starts a stream's task and returns the stream. The task ends when the
/// client goes away, or with UNAVAILABLE when `shutdown` is cancelled;
/// `slot` is given back then.
pub fn start(
    registry: Arc<dyn Registry>,
    filter: Filter,
    send_initial: bool,
    shutdown: CancellationToken,
    slot: WatchSlot,
    access: Option<Access>,
) -> WatchStream {
    let (tx, rx) = mpsc::unbounded_channel();
    let budget = slot.inner.buffer_bytes;
    // Subscribe before the task runs, so that the snapshot it takes cannot
    // miss a change made in between.
    let events = registry.subscribe();
    let watcher = Watcher {
        registry,
        filter,
        tx,
        budget: Arc::new(Semaphore::new(budget as usize)),
        budget_bytes: budget,
        shutdown,
        sequence: 0,
        access,
        _slot: slot,
    };
    tokio::spawn(watcher.run(events, send_initial));
    WatchStream { queue: rx }
}

struct Watcher {
    registry: Arc<dyn Registry>,
    filter: Filter,
    tx: mpsc::UnboundedSender<Queued>,
    /// Permits are bytes: what the queue may hold before [`Watcher::send`]
    /// waits for the client to take some.
    budget: Arc<Semaphore>,
    budget_bytes: u32,
    shutdown: CancellationToken,
    sequence: u64,
    /// The caller, checked again on reloads of the auth file.
    access: Option<Access>,
    /// Held for as long as the task runs, which is as long as the stream.
    _slot: WatchSlot,
}

/// Why a stream's task stops.
enum End {
    /// The client went away: nothing more to send.
    ClientGone,
    /// The server is stopping: tell the client.
    Shutdown,
    /// The caller's access was taken away: end with this status.
    Revoked(Status),
}

impl Watcher {
    async fn run(mut self, mut events: broadcast::Receiver<StoreEvent>, send_initial: bool) {
        let end = self.watch(&mut events, send_initial).await;
        let status = match end {
            Err(End::Shutdown) => {
                Status::unavailable("the server is shutting down; watch again elsewhere")
            }
            Err(End::Revoked(status)) => status,
            Ok(()) | Err(End::ClientGone) => return,
        };
        let _ = self.tx.send(Queued::End(Box::new(status)));
    }

    async fn watch(
        &mut self,
        events: &mut broadcast::Receiver<StoreEvent>,
        send_initial: bool,
    ) -> Result<(), End> {
        // Without INITIAL events the snapshot is still read, for its
        // revisions: a change made before the stream opened can reach this
        // server after it (on Redis Cluster, through another master), and
        // must not be sent as news.
        let mut seen = self.sync(false, send_initial).await?;
        loop {
            let event = tokio::select! {
                _ = self.shutdown.cancelled() => return Err(End::Shutdown),
                _ = self.tx.closed() => return Err(End::ClientGone),
                status = revoked(&mut self.access, &self.filter) => return Err(End::Revoked(status)),
                event = events.recv() => event,
            };
            match event {
                Ok(StoreEvent::Change(change)) => {
                    let key = change.change.key();
                    if self.filter.matches(key) && change.revision > seen.revision_of(&key.service)
                    {
                        let body = change.wire.get_or_init(|| encoded(&change_event(&change)));
                        self.send(body.clone()).await?;
                    }
                }
                Ok(StoreEvent::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    seen = self.sync(true, true).await?;
                }
                Err(broadcast::error::RecvError::Closed) => return Err(End::Shutdown),
            }
        }
    }

    /// Reads a snapshot and sends the current state (after a RESYNC marker
    /// when `resync`; INITIAL events when `send_nodes`), then SYNCED;
    /// returns the snapshot's revisions (its nodes taken out).
    async fn sync(&mut self, resync: bool, send_nodes: bool) -> Result<Snapshot, End> {
        if resync {
            self.marker(EventType::Resync).await?;
        }
        let mut snapshot = loop {
            match self
                .registry
                .snapshot(&self.filter.group, self.filter.service.as_deref())
                .await
            {
                Ok(snapshot) => break snapshot,
                Err(e) => {
                    if matches!(e, StoreError::Internal(_)) {
                        tracing::error!(error = %e, "watch snapshot failed");
                    }
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Err(End::Shutdown),
                        _ = self.tx.closed() => return Err(End::ClientGone),
                        _ = tokio::time::sleep(SNAPSHOT_RETRY) => {}
                    }
                }
            }
        };
        let now = now_millis();
        let nodes = std::mem::take(&mut snapshot.nodes);
        if send_nodes {
            for node in nodes {
                let revision = snapshot.revision_of(&node.key.service);
                let event = initial_event(node, revision, now);
                self.send(encoded(&event)).await?;
            }
        }
        self.marker(EventType::Synced).await?;
        Ok(snapshot)
    }

    async fn marker(&mut self, kind: EventType) -> Result<(), End> {
        let event = pb::WatchEvent {
            r#type: kind as i32,
            service_group: self.filter.group.clone(),
            service_name: self.filter.service.clone().unwrap_or_default(),
            node: None,
            service: None,
            sequence: 0,
            revision: 0,
            time: Some(timestamp(now_millis())),
        };
        self.send(encoded(&event)).await
    }

    /// Queues one event (`body`: all but its sequence number, encoded) as
    /// the stream's next, waiting while the stream's budget is spent. An
    /// event larger than the whole budget waits for an empty queue.
    async fn send(&mut self, body: Bytes) -> Result<(), End> {
        let event = SharedEvent {
            body,
            sequence: self.sequence + 1,
        };
        let cost = u32::try_from(event.encoded_len())
            .unwrap_or(u32::MAX)
            .clamp(1, self.budget_bytes);
        let permit = tokio::select! {
            _ = self.shutdown.cancelled() => return Err(End::Shutdown),
            _ = self.tx.closed() => return Err(End::ClientGone),
            permit = self.budget.clone().acquire_many_owned(cost) => {
                permit.expect("a stream's budget is never closed")
            }
        };
        self.tx
            .send(Queued::Event(Box::new(event), permit))
            .map_err(|_| End::ClientGone)?;
        self.sequence += 1;
        Ok(())
    }
}

/// An event without its sequence number (each stream adds its own), as
/// the bytes every stream shares.
fn encoded(event: &pb::WatchEvent) -> Bytes {
    debug_assert_eq!(event.sequence, 0, "the sequence is the stream's own");
    event.encode_to_vec().into()
}

fn initial_event(node: NodeRecord, revision: u64, now: i64) -> pb::WatchEvent {
    pb::WatchEvent {
        r#type: EventType::Initial as i32,
        service_group: node.key.group.clone(),
        service_name: node.key.service.clone(),
        node: Some(node.into()),
        service: None,
        sequence: 0,
        revision,
        time: Some(timestamp(now)),
    }
}

fn change_event(event: &ChangeEvent) -> pb::WatchEvent {
    let key = event.change.key();
    let (kind, node, service) = match event.change.clone() {
        Change::NodeAdded(n) => (EventType::NodeAdded, Some(n.into()), None),
        Change::NodeUpdated(n) => (EventType::NodeUpdated, Some(n.into()), None),
        Change::NodeRemoved(n) => (EventType::NodeRemoved, Some(n.into()), None),
        Change::NodeExpired(n) => (EventType::NodeExpired, Some(n.into()), None),
        Change::ServiceRegistered(s) => (EventType::ServiceRegistered, None, Some(s.into())),
        Change::ServiceUpdated(s) => (EventType::ServiceUpdated, None, Some(s.into())),
        Change::ServiceRemoved(s) => (EventType::ServiceRemoved, None, Some(s.into())),
    };
    pb::WatchEvent {
        r#type: kind as i32,
        service_group: key.group.clone(),
        service_name: key.service.clone(),
        node,
        service,
        sequence: 0,
        revision: event.revision,
        time: Some(timestamp(event.time)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_refuse_past_the_limit_and_come_back_when_dropped() {
        let slots = WatchSlots::new(2, DEFAULT_WATCH_BUFFER_BYTES);
        let a = slots.acquire().expect("first");
        let _b = slots.acquire().expect("second");
        let refused = slots.acquire().expect_err("third");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("--max-watch-streams"));
        assert!(refused.message().contains('2'));
        assert_eq!(slots.open(), 2);
        drop(a);
        assert_eq!(slots.open(), 1);
        let _c = slots.acquire().expect("a freed place");
    }

    #[test]
    fn the_warning_rearms_only_after_room_frees_up() {
        let slots = WatchSlots::new(20, DEFAULT_WATCH_BUFFER_BYTES);
        let mut held: Vec<_> = (0..20).map(|_| slots.acquire().unwrap()).collect();
        assert!(slots.acquire().is_err());
        assert!(slots.inner.warned.load(Ordering::Acquire));
        // One freed place, taken again at once: still the same crossing.
        held.pop();
        assert!(slots.inner.warned.load(Ordering::Acquire));
        held.truncate(17);
        assert!(!slots.inner.warned.load(Ordering::Acquire));
    }
}
