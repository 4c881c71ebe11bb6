//! The kit of the fault tests (Sentinel failovers, Cluster faults): watch
//! streams read by tasks of their own into a [`WatcherState`] and checked
//! against GetNodes after the fault, and [`Findings`], every check of a
//! test collected with its timeline and reported together at the end, so
//! one run tells everything that went wrong.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use discovered::proto::v1::*;
use futures::StreamExt;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{Client, Proc, WAIT, Watch, WatcherState, connect, kind};

/// The longest any call may take, fault or not: calls that cannot be
/// served (no master, a shard down) fail with UNAVAILABLE within about
/// 2 s, never hang (issue 13).
pub const CALL_BOUND: Duration = Duration::from_secs(3);

/// How many of one watcher's own problems are listed (the rest counted).
const WATCHER_PROBLEMS: usize = 5;

/// A real agent keeping node `agent-<i>` of `group`/`service` registered
/// through the server at `url`, with a TTL of `ttl` seconds (it
/// heartbeats every third of it).
pub fn spawn_agent(url: &str, group: &str, service: &str, i: usize, ttl: u64) -> Proc {
    Proc::spawn(
        &format!(
            "agent --server {url} --group {group} --service {service} --node agent-{i} \
             --port 9000 --ttl {ttl}"
        ),
        &[],
    )
}

/// How many of `errors` (as the fault tests' loads record a status:
/// `Code: message`) there are of each code.
pub fn count_by_code<'a>(errors: impl IntoIterator<Item = &'a String>) -> BTreeMap<&'a str, usize> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for e in errors {
        *counts.entry(e.split(':').next().unwrap_or("")).or_default() += 1;
    }
    counts
}

/// When `holds` first answered true, polled every 50 ms until
/// `deadline`; None if it never did.
pub async fn first_held<F, Fut>(deadline: Instant, mut holds: F) -> Option<Instant>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    while Instant::now() < deadline {
        if holds().await {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// One watch stream, read by a task of its own into a [`WatcherState`].
pub struct Watcher {
    pub what: String,
    group: String,
    /// The services it covers.
    services: Vec<String>,
    pub state: Arc<Mutex<WatcherState>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    // The client must live as long as its stream.
    _client: Client,
}

impl Watcher {
    /// Opens a watch of `group`/`service` (`""`: the whole group, covering
    /// the services `all`) on a connection of its own.
    pub async fn open(url: &str, group: &str, service: &str, all: &[String]) -> Self {
        Self::start(url, group, service, all, false).await
    }

    /// [`Watcher::open`], then waits for its SYNCED: the state it starts
    /// from is whole before the fault.
    pub async fn open_synced(url: &str, group: &str, service: &str, all: &[String]) -> Self {
        Self::start(url, group, service, all, true).await
    }

    async fn start(url: &str, group: &str, service: &str, all: &[String], synced: bool) -> Self {
        let mut client = connect(url).await;
        let mut w = Watch::open(&mut client, group, service, None).await;
        let state = Arc::new(Mutex::new(WatcherState {
            rebuilding: Some(BTreeMap::new()),
            ..Default::default()
        }));
        if synced {
            loop {
                let e = w.next().await;
                state.lock().unwrap().apply(&e);
                if kind(&e) == EventType::Synced {
                    break;
                }
            }
        }
        let (stop, mut stopped) = oneshot::channel::<()>();
        let record = state.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    e = w.next() => record.lock().unwrap().apply(&e),
                }
            }
        });
        Self {
            what: format!("watch of {group}/{service:?}"),
            group: group.to_string(),
            services: if service.is_empty() {
                all.to_vec()
            } else {
                vec![service.to_string()]
            },
            state,
            stop: Some(stop),
            task,
            _client: client,
        }
    }

    /// Stops reading; a panic of the reading task (the stream failed or
    /// ended, an event broke what every event promises, nothing for WAIT)
    /// is returned as a problem.
    pub async fn finish(&mut self) -> Option<String> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(()) => None,
            Err(e) if e.is_panic() => {
                let p = e.into_panic();
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Some(format!("{}: the reader failed: {msg}", self.what))
            }
            Err(e) => Some(format!("{}: the reader: {e}", self.what)),
        }
    }
}

/// A node without `expires_at`, which heartbeats renew without an event.
pub fn comparable(n: &Node) -> Node {
    Node {
        expires_at: None,
        ..n.clone()
    }
}

/// The nodes of `services` of `group` as GetNodes returns them now,
/// comparable (see [`comparable`]), and whether every GetNodes answered
/// (within [`CALL_BOUND`]).
pub async fn get_nodes_state(
    c: &Client,
    group: &str,
    services: &[String],
) -> (BTreeMap<(String, String), Node>, bool) {
    let answers: Vec<Option<Vec<Node>>> = futures::stream::iter(services.iter().cloned())
        .map(|s| {
            let mut c = c.clone();
            async move {
                let r = tokio::time::timeout(
                    CALL_BOUND,
                    c.get_nodes(GetNodesRequest {
                        service_group: group.into(),
                        service_name: s,
                    }),
                )
                .await;
                match r {
                    Ok(Ok(r)) => Some(r.into_inner().nodes),
                    _ => None,
                }
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let ok = answers.iter().all(Option::is_some);
    let want = answers
        .into_iter()
        .flatten()
        .flatten()
        .map(|n| {
            (
                (n.service_name.clone(), n.node_name.clone()),
                comparable(&n),
            )
        })
        .collect();
    (want, ok)
}

/// None when `w` has resynced after `t_fault`, is not rebuilding, and
/// holds the state GetNodes returns; what differs otherwise.
pub async fn diff_with_get_nodes(c: &Client, w: &Watcher, t_fault: Instant) -> Option<String> {
    let (want, ok) = get_nodes_state(c, &w.group, &w.services).await;
    let st = w.state.lock().unwrap();
    let have: BTreeMap<_, _> = st
        .nodes
        .iter()
        .map(|(k, n)| (k.clone(), comparable(n)))
        .collect();
    let resynced = st.last_resynced.is_some_and(|at| at >= t_fault);
    if ok && resynced && st.rebuilding.is_none() && have == want {
        return None;
    }
    let missing: Vec<_> = want
        .keys()
        .filter(|k| !have.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = have
        .keys()
        .filter(|k| !want.contains_key(*k))
        .take(5)
        .collect();
    let differ: Vec<_> = want
        .iter()
        .filter(|(k, n)| have.get(*k).is_some_and(|h| h != *n))
        .map(|(k, _)| k)
        .take(3)
        .collect();
    Some(format!(
        "RESYNCs at {:?} after the fault began, resynced {resynced}, rebuilding {}, GetNodes \
         answered {ok}; {} nodes vs {} in GetNodes; missing {missing:?}, extra {extra:?}, \
         different {differ:?}",
        resyncs_after(&st, t_fault),
        st.rebuilding.is_some(),
        have.len(),
        want.len()
    ))
}

/// When each RESYNC of `st` arrived, after `t_fault`.
fn resyncs_after(st: &WatcherState, t_fault: Instant) -> Vec<Duration> {
    st.resyncs
        .iter()
        .map(|r| r.saturating_duration_since(t_fault))
        .collect()
}

/// Waits until `w` has resynced after `t_fault` and holds the state
/// GetNodes returns, until `deadline`; the last difference otherwise.
async fn wait_matches_get_nodes(
    c: &Client,
    w: &Watcher,
    t_fault: Instant,
    deadline: Instant,
) -> Result<(), String> {
    loop {
        let Some(diff) = diff_with_get_nodes(c, w, t_fault).await else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            return Err(diff);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every watcher: a RESYNC after the fault began (`t_fault`), then (all
/// within WAIT) exactly the state GetNodes returns; per-service revisions
/// increasing; its reader did not fail.
pub async fn check_watchers(
    f: &mut Findings,
    c: &Client,
    watchers: &mut [Watcher],
    t_fault: Instant,
) {
    let deadline = Instant::now() + WAIT;
    for w in watchers.iter() {
        check_watcher(f, c, w, t_fault, deadline).await;
    }
    for w in watchers.iter_mut() {
        if let Some(p) = w.finish().await {
            f.problem(p);
        }
    }
}

/// One watcher: its RESYNCs on the timeline; a problem if it did not
/// match GetNodes after a RESYNC by `deadline`, and each of its own (the
/// first [`WATCHER_PROBLEMS`] listed, the rest counted in one more).
async fn check_watcher(
    f: &mut Findings,
    c: &Client,
    w: &Watcher,
    t_fault: Instant,
    deadline: Instant,
) {
    let matched = wait_matches_get_nodes(c, w, t_fault, deadline).await;
    let st = w.state.lock().unwrap();
    f.note(format!(
        "{}: {} events, RESYNC at {:?} after the fault began",
        w.what,
        st.events,
        resyncs_after(&st, t_fault)
    ));
    if let Err(diff) = matched {
        f.problem(format!(
            "{}: no RESYNC then the state of GetNodes within {WAIT:?}: {diff}",
            w.what
        ));
    }
    for p in st.problems.iter().take(WATCHER_PROBLEMS) {
        f.problem(format!("{}: {p}", w.what));
    }
    if st.problems.len() > WATCHER_PROBLEMS {
        f.problem(format!(
            "{}: {} more problems",
            w.what,
            st.problems.len() - WATCHER_PROBLEMS
        ));
    }
}

/// What a fault test found: the timeline it tells and the problems, all
/// reported together at the end.
#[derive(Default)]
pub struct Findings {
    timeline: Vec<String>,
    problems: Vec<String>,
}

impl Findings {
    pub fn note(&mut self, line: String) {
        self.timeline.push(line);
    }

    pub fn problem(&mut self, problem: String) {
        self.problems.push(problem);
    }

    /// Prints the timeline; fails the test listing every problem with it.
    pub fn assert_clean(self, what: &str) {
        let report = self.timeline.join("\n  ");
        eprintln!("{what}: timeline:\n  {report}");
        assert!(
            self.problems.is_empty(),
            "{what}: {} problems:\n- {}\ntimeline:\n  {report}",
            self.problems.len(),
            self.problems.join("\n- ")
        );
    }
}
