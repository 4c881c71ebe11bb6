//! WatchService: each stream is a [`WatchStream`] that the connection's
//! HTTP/2 task polls for its next event; no task, channel or buffer of its
//! own (issue 14: with 10,000 streams those were most of the cost of one
//! change, in CPU and memory).
//!
//! A stream subscribes to the store's changes first and takes its snapshot
//! second, so nothing falls between the two: a change that the snapshot
//! already shows has a revision no higher than the snapshot's revision of
//! its service and is skipped. The same happens after every RESYNC.
//!
//! A client that does not read: HTTP/2 holds at most `--watch-buffer-bytes`
//! of the stream's events (hyper's per-stream send buffer), and then stops
//! polling the stream, which stops taking changes from the fan-out. Once
//! it is more than the fan-out's capacity behind, its client gets a RESYNC
//! and the current state when it reads again.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use prost::Message;
use tokio_stream::Stream;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::on_wake::OnWake;
use super::reply::SharedEvent;
use crate::auth::{Action, Auth, Caller};
use crate::metrics::{OpenStream, metrics};
use crate::model::{NodeRecord, ServiceKey, now_millis};
use crate::proto::timestamp;
use crate::proto::v1::{self as pb, EventType};
use crate::store::{Change, ChangeEvent, Registry, Snapshot, StoreError, StoreEvent};

/// The default of `--watch-buffer-bytes`: encoded bytes of events HTTP/2
/// holds per stream for a client that reads slowly (issue 11). Counted in
/// bytes, not events: 256 events of a node with large metadata once
/// pinned 400 KB per frozen client.
pub const DEFAULT_WATCH_BUFFER_BYTES: usize = 32 * 1024;
/// How long a stream waits before retrying a snapshot the store refused
/// (Redis down): the store's own RESYNC usually comes first.
const SNAPSHOT_RETRY: Duration = Duration::from_secs(1);

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

/// The default of `--max-watch-streams`: each open stream costs its
/// HTTP/2 state, up to [`DEFAULT_WATCH_BUFFER_BYTES`] of events held for
/// its client and a fan-out receiver, so a bound keeps a client that opens
/// streams without end from taking the memory.
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
    /// Room for `max` open streams.
    pub fn new(max: usize) -> Self {
        Self {
            inner: Arc::new(SlotCount {
                open: AtomicUsize::new(0),
                max,
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

/// A new stream: subscribed to the store's changes now, it reads its
/// snapshot when first polled. It ends when the client goes away (HTTP/2
/// drops it), or with UNAVAILABLE when `shutdown` is cancelled; `slot` is
/// given back then.
pub fn start(
    registry: Arc<dyn Registry>,
    filter: Filter,
    send_initial: bool,
    shutdown: CancellationToken,
    slot: WatchSlot,
    access: Option<Access>,
) -> WatchStream {
    // Subscribe before the snapshot is read, so that it cannot miss a
    // change made in between.
    let events = BroadcastStream::new(registry.subscribe());
    let filter = Arc::new(filter);
    let watched = filter.clone();
    let end = OnWake::new(async move {
        let mut access = access;
        tokio::select! {
            () = shutdown.cancelled_owned() => {
                Status::unavailable("the server is shutting down; watch again elsewhere")
            }
            status = revoked(&mut access, &watched) => status,
        }
    });
    // Without INITIAL events the snapshot is still read, for its
    // revisions: a change made before the stream opened can reach this
    // server after it (on Redis Cluster, through another master), and must
    // not be sent as news.
    let phase = Phase::Reading {
        snapshot: read_snapshot(registry.clone(), filter.clone()),
        send_nodes: send_initial,
    };
    WatchStream {
        registry,
        filter,
        events,
        phase,
        end: Some(end),
        sequence: 0,
        _slot: slot,
        _open: OpenStream::new(&metrics().watch_streams),
    }
}

/// The stream type of WatchService.
pub struct WatchStream {
    registry: Arc<dyn Registry>,
    filter: Arc<Filter>,
    events: BroadcastStream<StoreEvent>,
    phase: Phase,
    /// Completes with the status to end the stream with (server stopping,
    /// access revoked); `None` once the stream has ended.
    end: Option<OnWake<Status>>,
    /// The last event's sequence number.
    sequence: u64,
    /// Held for as long as the stream, which is as long as its call.
    _slot: WatchSlot,
    /// Counts it among the open streams for as long.
    _open: OpenStream,
}

/// Where a stream is between its snapshots and the changes after them.
enum Phase {
    /// Reading a snapshot; its nodes go out as INITIAL if `send_nodes`.
    Reading {
        snapshot: BoxFuture<'static, Snapshot>,
        send_nodes: bool,
    },
    /// Sending a snapshot's nodes, then SYNCED; `seen` is the snapshot
    /// without them.
    Sending {
        nodes: std::vec::IntoIter<NodeRecord>,
        seen: Snapshot,
    },
    /// Passing on the changes that are news to `seen`.
    Live { seen: Snapshot },
}

impl Stream for WatchStream {
    type Item = Result<SharedEvent, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Every field is Unpin (the futures are boxed).
        let this = self.get_mut();
        let Some(end) = this.end.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(status) = end.poll(cx) {
            this.end = None;
            return Poll::Ready(Some(Err(status)));
        }
        let body = match ready!(this.next_body(cx)) {
            Ok(body) => body,
            Err(status) => {
                this.end = None;
                return Poll::Ready(Some(Err(status)));
            }
        };
        this.sequence += 1;
        metrics().watch_events.inc();
        Poll::Ready(Some(Ok(SharedEvent {
            body,
            sequence: this.sequence,
        })))
    }
}

impl WatchStream {
    /// The next event to send, encoded without its sequence number; an
    /// error ends the stream.
    fn next_body(&mut self, cx: &mut Context<'_>) -> Poll<Result<Bytes, Status>> {
        loop {
            match &mut self.phase {
                Phase::Reading {
                    snapshot,
                    send_nodes,
                } => {
                    let mut seen = ready!(snapshot.as_mut().poll(cx));
                    let nodes = std::mem::take(&mut seen.nodes);
                    let nodes = if *send_nodes { nodes } else { Vec::new() };
                    self.phase = Phase::Sending {
                        nodes: nodes.into_iter(),
                        seen,
                    };
                }
                Phase::Sending { nodes, seen } => {
                    if let Some(node) = nodes.next() {
                        let revision = seen.revision_of(&node.key.service);
                        return Poll::Ready(Ok(encoded(&initial_event(
                            node,
                            revision,
                            now_millis(),
                        ))));
                    }
                    let seen = std::mem::take(seen);
                    self.phase = Phase::Live { seen };
                    return Poll::Ready(Ok(self.marker(EventType::Synced)));
                }
                Phase::Live { seen } => {
                    let event = ready!(Pin::new(&mut self.events).poll_next(cx));
                    match event {
                        Some(Ok(StoreEvent::Change(change))) => {
                            let key = change.change.key();
                            if self.filter.matches(key)
                                && change.revision > seen.revision_of(&key.service)
                            {
                                let body =
                                    change.wire.get_or_init(|| encoded(&change_event(&change)));
                                return Poll::Ready(Ok(body.clone()));
                            }
                        }
                        Some(Ok(StoreEvent::Resync) | Err(BroadcastStreamRecvError::Lagged(_))) => {
                            self.phase = Phase::Reading {
                                snapshot: read_snapshot(self.registry.clone(), self.filter.clone()),
                                send_nodes: true,
                            };
                            metrics().watch_resyncs.inc();
                            return Poll::Ready(Ok(self.marker(EventType::Resync)));
                        }
                        None => {
                            return Poll::Ready(Err(Status::unavailable(
                                "the server is shutting down; watch again elsewhere",
                            )));
                        }
                    }
                }
            }
        }
    }

    /// A RESYNC or SYNCED marker for this stream's filter.
    fn marker(&self, kind: EventType) -> Bytes {
        encoded(&pb::WatchEvent {
            r#type: kind as i32,
            service_group: self.filter.group.clone(),
            service_name: self.filter.service.clone().unwrap_or_default(),
            node: None,
            service: None,
            sequence: 0,
            revision: 0,
            time: Some(timestamp(now_millis())),
        })
    }
}

/// Reads the snapshot of `filter`, retrying every [`SNAPSHOT_RETRY`] while
/// the store refuses (the stream's end, or its client going away, stops
/// it).
fn read_snapshot(registry: Arc<dyn Registry>, filter: Arc<Filter>) -> BoxFuture<'static, Snapshot> {
    Box::pin(async move {
        loop {
            match registry
                .snapshot(&filter.group, filter.service.as_deref())
                .await
            {
                Ok(snapshot) => return snapshot,
                Err(e) => {
                    if matches!(e, StoreError::Internal(_)) {
                        tracing::error!(error = %e, "watch snapshot failed");
                    }
                    tokio::time::sleep(SNAPSHOT_RETRY).await;
                }
            }
        }
    })
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
        let slots = WatchSlots::new(2);
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
        let slots = WatchSlots::new(20);
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
