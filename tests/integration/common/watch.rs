//! [`Watch`]: one watch stream, every event of which is checked for what
//! every event promises (sequence 1, 2, 3... without a gap, a plausible
//! `time`), with the INITIAL...SYNCED start, RESYNC and the stream's end as
//! methods of their own.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use discovered::proto::v1::*;
use tonic::{Status, Streaming};

use super::{Client, WAIT, kind, ms, now_ms};

/// How far an event's `time` may lie outside the span in which the test
/// saw it happen (the server and the test share a clock; this only allows
/// for millisecond rounding).
const CLOCK_SLACK_MS: i64 = 1000;

/// The node an event carries; it must be there, and the event's own
/// group and service must be the node's.
#[track_caller]
pub fn node_of(e: &WatchEvent) -> &Node {
    let n = e
        .node
        .as_ref()
        .unwrap_or_else(|| panic!("event without a node: {e:?}"));
    assert_eq!(
        (e.service_group.as_str(), e.service_name.as_str()),
        (n.service_group.as_str(), n.service_name.as_str()),
        "event names a different service than its node: {e:?}"
    );
    assert!(e.service.is_none(), "node event with a service: {e:?}");
    n
}

/// The group and service an event names.
pub fn about(e: &WatchEvent) -> (&str, &str) {
    (e.service_group.as_str(), e.service_name.as_str())
}

/// The service an event carries; it must be there, without credentials,
/// and the event's own group and service must be the record's.
#[track_caller]
pub fn service_of(e: &WatchEvent) -> &Service {
    let s = e
        .service
        .as_ref()
        .unwrap_or_else(|| panic!("event without a service: {e:?}"));
    assert_eq!(
        (e.service_group.as_str(), e.service_name.as_str()),
        (s.service_group.as_str(), s.service_name.as_str()),
        "event names a different service than its record: {e:?}"
    );
    assert!(e.node.is_none(), "service event with a node: {e:?}");
    assert_eq!(
        s.auth_credentials, "",
        "a watch event must never carry credentials: {e:?}"
    );
    s
}

/// One open watch stream. Every event it hands out has been checked for
/// what every event promises: sequence 1, 2, 3... with no gap, and a
/// `time` that is set and plausible.
pub struct Watch {
    stream: Streaming<WatchEvent>,
    what: String,
    /// The sequence of the last event handed out (0 before the first).
    pub last_sequence: u64,
    opened_ms: i64,
    /// Every event handed out, in order.
    seen: Vec<WatchEvent>,
}

impl Watch {
    /// Opens a watch of `group`/`service` (`""`: the whole group).
    pub async fn open(
        c: &mut Client,
        group: &str,
        service: &str,
        send_initial: Option<bool>,
    ) -> Self {
        let what = format!("watch of {group:?}/{service:?} (send_initial {send_initial:?})");
        let opened_ms = now_ms();
        let stream = c
            .watch_service(WatchServiceRequest {
                service_group: group.into(),
                service_name: service.into(),
                send_initial,
            })
            .await
            .unwrap_or_else(|s| panic!("{what}: WatchService failed: {s:?}"))
            .into_inner();
        Self {
            stream,
            what,
            last_sequence: 0,
            opened_ms,
            seen: Vec::new(),
        }
    }

    /// The next message of the stream, whatever it is; panics if none
    /// arrives within [`WAIT`].
    async fn message(&mut self) -> Result<Option<WatchEvent>, Status> {
        match tokio::time::timeout(WAIT, self.stream.message()).await {
            Err(_) => panic!(
                "{}: nothing within {WAIT:?} after sequence {}",
                self.what, self.last_sequence
            ),
            Ok(message) => message,
        }
    }

    /// The next event; panics if none arrives within [`WAIT`].
    pub async fn next(&mut self) -> WatchEvent {
        let e = match self.message().await {
            Err(s) => panic!("{}: the stream failed: {s:?}", self.what),
            Ok(None) => panic!("{}: the stream ended", self.what),
            Ok(Some(e)) => e,
        };
        assert_eq!(
            e.sequence,
            self.last_sequence + 1,
            "{}: sequence numbers must run 1, 2, 3... without a gap: {e:?}",
            self.what
        );
        self.last_sequence = e.sequence;
        let t = ms(&e.time);
        assert!(
            t >= self.opened_ms - CLOCK_SLACK_MS && t <= now_ms() + CLOCK_SLACK_MS,
            "{}: implausible event time {t} (stream opened at {}, now {}): {e:?}",
            self.what,
            self.opened_ms,
            now_ms()
        );
        self.seen.push(e.clone());
        e
    }

    /// Every event handed out so far, in order (sequence 1 first).
    pub fn seen(&self) -> &[WatchEvent] {
        &self.seen
    }

    /// The next `n` events, whatever their types.
    pub async fn next_n(&mut self, n: usize) -> Vec<WatchEvent> {
        let mut events = Vec::new();
        for _ in 0..n {
            events.push(self.next().await);
        }
        events
    }

    /// The next event, which must be of type `want`.
    pub async fn expect(&mut self, want: EventType) -> WatchEvent {
        let e = self.next().await;
        assert_eq!(
            kind(&e),
            want,
            "{}: expected {want:?} next, got {e:?}",
            self.what
        );
        e
    }

    /// The next event, which must be of type `want` and carry `node`.
    pub async fn expect_node(&mut self, want: EventType, node: &Node) -> WatchEvent {
        let e = self.expect(want).await;
        assert_eq!(
            node_of(&e),
            node,
            "{}: {want:?} with another record",
            self.what
        );
        e
    }

    /// The next `n` events, each of type `want`: the nodes they carry.
    pub async fn expect_nodes(&mut self, want: EventType, n: usize) -> Vec<Node> {
        let mut nodes = Vec::new();
        for _ in 0..n {
            nodes.push(node_of(&self.expect(want).await).clone());
        }
        nodes
    }

    /// The next event, which must be of type `want` and carry `service`.
    pub async fn expect_service(&mut self, want: EventType, service: &Service) -> WatchEvent {
        let e = self.expect(want).await;
        assert_eq!(
            service_of(&e),
            service,
            "{}: {want:?} with another record",
            self.what
        );
        e
    }

    /// The start of a stream: the INITIAL events up to SYNCED. Checks that
    /// the INITIAL events of one service carry one revision (its
    /// snapshot's), above 0, and that SYNCED names what is watched (`group`
    /// resolved, `service` as asked) with revision 0.
    pub async fn initial(&mut self, group: &str, service: &str) -> Vec<WatchEvent> {
        let mut events: Vec<WatchEvent> = Vec::new();
        loop {
            let e = self.next().await;
            match kind(&e) {
                EventType::Initial => {
                    let n = node_of(&e);
                    assert_eq!(n.service_group, group, "{}: {e:?}", self.what);
                    if !service.is_empty() {
                        assert_eq!(n.service_name, service, "{}: {e:?}", self.what);
                    }
                    assert!(
                        e.revision > 0,
                        "{}: INITIAL at revision 0: {e:?}",
                        self.what
                    );
                    if let Some(first) = events
                        .iter()
                        .find(|f| node_of(f).service_name == n.service_name)
                    {
                        assert_eq!(
                            e.revision, first.revision,
                            "{}: INITIAL events of one service must share its snapshot's revision",
                            self.what
                        );
                    }
                    events.push(e);
                }
                EventType::Synced => {
                    self.check_synced(&e, group, service);
                    return events;
                }
                _ => panic!(
                    "{}: expected INITIAL or SYNCED at the start, got {e:?}",
                    self.what
                ),
            }
        }
    }

    /// A RESYNC (revision 0), then the state it restarts from: the
    /// INITIAL events up to SYNCED, as [`Watch::initial`] checks them.
    pub async fn resync(&mut self, group: &str, service: &str) -> Vec<WatchEvent> {
        let e = self.next().await;
        self.resync_from(&e, group, service).await
    }

    /// [`Watch::resync`] where the RESYNC is `e`, an event the test has
    /// already read (after the changes buffered before it).
    pub async fn resync_from(
        &mut self,
        e: &WatchEvent,
        group: &str,
        service: &str,
    ) -> Vec<WatchEvent> {
        assert_eq!(
            kind(e),
            EventType::Resync,
            "{}: expected RESYNC, got {e:?}",
            self.what
        );
        assert_eq!(
            e.revision, 0,
            "{}: RESYNC carries revision 0: {e:?}",
            self.what
        );
        self.initial(group, service).await
    }

    /// The end of the stream, which must be an error status (and not one
    /// more event, or a plain end).
    pub async fn end(mut self) -> Status {
        match self.message().await {
            Err(s) => s,
            Ok(Some(e)) => panic!("{}: expected the stream to end, got {e:?}", self.what),
            Ok(None) => panic!("{}: the stream ended without a status", self.what),
        }
    }

    /// The error a watch request must be refused with: on the call itself,
    /// or as the first message of the stream.
    pub async fn refusal(c: &mut Client, req: WatchServiceRequest) -> Status {
        let what = format!("WatchService {req:?}");
        match c.watch_service(req).await {
            Err(s) => s,
            Ok(response) => {
                let mut stream = Self {
                    stream: response.into_inner(),
                    what: what.clone(),
                    last_sequence: 0,
                    opened_ms: now_ms(),
                    seen: Vec::new(),
                };
                match stream.message().await {
                    Err(s) => s,
                    Ok(Some(e)) => panic!("{what}: expected an error, got the event {e:?}"),
                    Ok(None) => panic!("{what}: expected an error, the stream just ended"),
                }
            }
        }
    }

    #[track_caller]
    pub fn check_synced(&self, e: &WatchEvent, group: &str, service: &str) {
        assert_eq!(kind(e), EventType::Synced, "{}: {e:?}", self.what);
        assert_eq!(
            e.revision, 0,
            "{}: SYNCED carries revision 0: {e:?}",
            self.what
        );
        assert_eq!(
            (e.service_group.as_str(), e.service_name.as_str()),
            (group, service),
            "{}: SYNCED should name what is watched: {e:?}",
            self.what
        );
        assert!(
            e.node.is_none() && e.service.is_none(),
            "{}: SYNCED carries no record: {e:?}",
            self.what
        );
    }
}

/// What one watcher of a fault test has put together from its events,
/// and the promises it saw broken: each service's changes must come with
/// increasing revisions above its snapshot's, INITIAL events only between
/// a (re)start and its SYNCED, RESYNC at revision 0.
#[derive(Debug, Default)]
pub struct WatcherState {
    /// (service, node) -> node, as the events tell it.
    pub nodes: BTreeMap<(String, String), Node>,
    /// Between a RESYNC (or the stream's start) and its SYNCED: the state
    /// being rebuilt from INITIAL events.
    pub rebuilding: Option<BTreeMap<(String, String), Node>>,
    /// When each RESYNC arrived.
    pub resyncs: Vec<Instant>,
    /// When the last SYNCED after a RESYNC arrived.
    pub last_resynced: Option<Instant>,
    /// The highest revision seen of each service since the last (re)start:
    /// the changes of one service keep one order, their revisions increase
    /// (a group watch promises no order across services).
    pub revisions: HashMap<String, u64>,
    /// Broken promises.
    pub problems: Vec<String>,
    pub events: u64,
}

impl WatcherState {
    /// Takes one event in, noting any broken promise.
    pub fn apply(&mut self, e: &WatchEvent) {
        self.events += 1;
        let t = kind(e);
        if matches!(
            t,
            EventType::NodeAdded
                | EventType::NodeUpdated
                | EventType::NodeRemoved
                | EventType::NodeExpired
        ) {
            let max = self.revisions.entry(e.service_name.clone()).or_default();
            if e.revision <= *max {
                self.problems.push(format!(
                    "{}'s revision did not increase: {} after {} at sequence {}: {t:?} {}",
                    e.service_name,
                    e.revision,
                    max,
                    e.sequence,
                    e.node.as_ref().map(|n| n.node_name.as_str()).unwrap_or("")
                ));
            }
            *max = (*max).max(e.revision);
        }
        let key = |n: &Node| (n.service_name.clone(), n.node_name.clone());
        match t {
            EventType::Resync => {
                if e.revision != 0 {
                    self.problems
                        .push(format!("RESYNC with revision {}: {e:?}", e.revision));
                }
                self.resyncs.push(Instant::now());
                self.rebuilding = Some(BTreeMap::new());
                self.revisions.clear();
            }
            EventType::Initial => {
                let n = node_of(e);
                let rev = self.revisions.entry(n.service_name.clone()).or_default();
                *rev = (*rev).max(e.revision);
                match self.rebuilding.as_mut() {
                    Some(state) => {
                        state.insert(key(n), n.clone());
                    }
                    None => self
                        .problems
                        .push(format!("INITIAL outside a (re)start: {e:?}")),
                }
            }
            EventType::Synced => match self.rebuilding.take() {
                Some(state) => {
                    self.nodes = state;
                    if !self.resyncs.is_empty() {
                        self.last_resynced = Some(Instant::now());
                    }
                }
                None => self
                    .problems
                    .push(format!("SYNCED outside a (re)start: {e:?}")),
            },
            EventType::NodeAdded | EventType::NodeUpdated => {
                let n = node_of(e);
                self.nodes.insert(key(n), n.clone());
            }
            EventType::NodeRemoved | EventType::NodeExpired => {
                let n = node_of(e);
                self.nodes.remove(&key(n));
            }
            _ => {}
        }
    }
}
