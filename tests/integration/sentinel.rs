//! Redis Sentinel: the fixture on its own, start-up errors of the real
//! binary, and failovers under load with watchers and agents attached.
//!
//! Each failover test runs a steady RegisterNode load (every call recorded:
//! start, duration, result, the node's `updated_at`), three watch streams
//! (a group watch and two service watches), three real agents and a poll
//! of the server's health, then fails the master over and checks what
//! clients saw. Every check is collected first and reported together with
//! the timeline, so one run tells everything that went wrong.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use discovered::proto::v1::*;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

// ---------------------------------------------------------------------------
// The fixture on its own (needs nothing from the server)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_fails_over_by_itself() {
    let started = Instant::now();
    let mut f = SentinelFixture::start().await;
    f.wait_ready().await;
    let ready = started.elapsed();
    let old = f.current_master_port().await;
    assert_eq!(
        old, f.nodes[0].port,
        "the first node is the master at start"
    );

    let killed = f.kill_master().await;
    assert_eq!(killed, old);
    let t_kill = Instant::now();
    let t_new = f.wait_new_master(old).await;
    let new = f.current_master_port().await;
    assert_ne!(new, old);
    assert!(
        f.nodes[1..].iter().any(|n| n.port == new),
        "the new master {new} is one of the replicas"
    );
    let t_role = SentinelFixture::wait_role(new, "master", WAIT).await;
    eprintln!(
        "fixture: ready after {ready:?}; after the kill the sentinels agreed on {new} at \
         +{:?}, it answered ROLE master by +{:?}",
        t_new - t_kill,
        t_role.saturating_duration_since(t_kill)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_fails_over_on_request() {
    let f = SentinelFixture::start().await;
    f.wait_ready().await;
    let old = f.manual_failover().await;
    let t_asked = Instant::now();
    let t_new = f.wait_new_master(old).await;
    let new = f.current_master_port().await;
    assert_ne!(new, old);
    SentinelFixture::wait_role(new, "master", WAIT).await;
    // The old master lives on, and is turned into a replica of the new one
    // (Sentinel's 10 s INFO period, see the notes: about 10-11 s).
    let t_demoted = SentinelFixture::wait_role(old, "slave", 2 * WAIT).await;
    eprintln!(
        "fixture: SENTINEL FAILOVER: the sentinels agreed on {new} at +{:?}; the old master \
         {old} became a replica at +{:?}",
        t_new - t_asked,
        t_demoted - t_asked
    );
}

// ---------------------------------------------------------------------------
// Start-up through the real binary
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_sentinel_listening_is_one_error_line_naming_the_addresses() {
    // Ports nothing listens on.
    let addrs = [
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    ];
    let needles: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let listen = format!("127.0.0.1:{}", free_port());

    let url = format!("redis+sentinel://{}/mymaster", addrs.join(","));
    let p = Proc::spawn(&format!("serve --listen {listen} --redis-url {url}"), &[]);
    assert_one_error_line("--redis-url", p.wait_async().await, &needles, &[]);

    let p = Proc::spawn(
        &format!(
            "serve --listen {listen} --redis-sentinels {} --redis-master-name mymaster",
            addrs.join(",")
        ),
        &[],
    );
    assert_one_error_line("--redis-sentinels", p.wait_async().await, &needles, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_master_name_is_one_error_line_naming_it() {
    let f = SentinelFixture::start().await;
    let addrs = f.sentinel_addrs();
    let mut needles: Vec<&str> = addrs.iter().map(String::as_str).collect();
    needles.push("no-such-master");
    let listen = format!("127.0.0.1:{}", free_port());

    let url = format!("redis+sentinel://{}/no-such-master", addrs.join(","));
    let p = Proc::spawn(&format!("serve --listen {listen} --redis-url {url}"), &[]);
    assert_one_error_line("--redis-url", p.wait_async().await, &needles, &[]);

    let sentinels = addrs.join(",");
    let p = Proc::spawn(
        &format!("serve --listen {listen}"),
        &[
            ("DISCOVERED_REDIS_SENTINELS", sentinels.as_str()),
            ("DISCOVERED_REDIS_MASTER_NAME", "no-such-master"),
        ],
    );
    assert_one_error_line(
        "DISCOVERED_REDIS_SENTINELS",
        p.wait_async().await,
        &needles,
        &[],
    );
}

/// A gRPC client of the server listening on `port`, once it listens.
async fn client_of(port: u16) -> Client {
    eventually("the server to listen", || async move {
        let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .ok()?
            .connect()
            .await
            .ok()?;
        Some(Client::new(channel))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sentinel_flags_serve() {
    let f = SentinelFixture::start().await;
    let port = free_port();
    let _server = Proc::spawn(
        &format!(
            "serve --listen 127.0.0.1:{port} --redis-sentinels {} --redis-master-name {}",
            f.sentinel_addrs().join(","),
            f.master_name()
        ),
        &[],
    );
    let mut c = client_of(port).await;
    let node = register_node_eventually(&c, bare_node("", "payments", "n1", None)).await;
    assert_eq!(get_nodes(&mut c, "", "payments").await, [node]);
    // And it is stored on the master the sentinels name.
    let master = f.current_master_port().await;
    let keys: Vec<String> = command_on(master, redis::cmd("KEYS").arg("discovered:*"))
        .await
        .expect("KEYS on the master");
    assert!(!keys.is_empty(), "nothing stored on the master {master}");
}

// ---------------------------------------------------------------------------
// Failover under load
// ---------------------------------------------------------------------------

/// The group every failover test works in.
const GROUP: &str = "ha";
/// The service the load registers into.
const LOAD_SERVICE: &str = "payments";
/// The service the agents register into.
const AGENT_SERVICE: &str = "agents";
/// The agents' TTL (seconds); they heartbeat every third of it.
const AGENT_TTL: u64 = 3;
/// How long after the new master first serves a write every agent's node
/// must be in GetNodes: one heartbeat period (ttl/3 = 1 s) plus 2 s for
/// the agent's backoff (capped at ttl/3 itself) and its retry. Not WAIT:
/// an agent that needs longer has a node missing for longer than its
/// users would accept.
const AGENT_BOUND: Duration = Duration::from_secs(AGENT_TTL / 3 + 2);
/// How soon after the sentinels agree on the new master a write must
/// succeed again.
const FIRST_WRITE_BOUND: Duration = Duration::from_secs(2);
/// Pause between two calls of the load.
const LOAD_PAUSE: Duration = Duration::from_millis(20);

/// One RegisterNode call of the load.
#[derive(Debug, Clone)]
struct Call {
    node: String,
    start: Instant,
    took: Duration,
    /// The node's `updated_at` (ms) on success; the status otherwise.
    result: Result<i64, String>,
}

impl Call {
    fn end(&self) -> Instant {
        self.start + self.took
    }
}

/// A task registering nodes `w-0`, `w-1`... one after the other.
struct Load {
    calls: Arc<Mutex<Vec<Call>>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Load {
    fn start(client: &Client) -> Self {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = oneshot::channel();
        let (mut c, record) = (client.clone(), calls.clone());
        let task = tokio::spawn(async move {
            // Bounded: a test runs for well under a minute.
            for i in 0..5000 {
                if stopped.try_recv().is_ok() {
                    return;
                }
                let node = format!("w-{i}");
                let start = Instant::now();
                let r = tokio::time::timeout(
                    WAIT,
                    c.register_node(bare_node(GROUP, LOAD_SERVICE, &node, None)),
                )
                .await;
                let took = start.elapsed();
                let result = match r {
                    Err(_) => Err(format!("no answer within {WAIT:?}")),
                    Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
                    Ok(Ok(n)) => Ok(ms(&n.into_inner().updated_at)),
                };
                record.lock().unwrap().push(Call {
                    node,
                    start,
                    took,
                    result,
                });
                tokio::time::sleep(LOAD_PAUSE).await;
            }
        });
        Self {
            calls,
            stop: Some(stop),
            task,
        }
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// The first call acknowledged (Ok) at or after `t`, waiting for it at
    /// most [`WAIT`] after `t`.
    async fn first_ok_after(&self, t: Instant) -> Option<Call> {
        while Instant::now() < t + WAIT {
            let found = self
                .calls()
                .into_iter()
                .filter(|c| c.result.is_ok() && c.end() >= t)
                .min_by_key(|c| c.end());
            if found.is_some() {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    async fn finish(mut self) -> Vec<Call> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.expect("the load task");
        self.calls()
    }
}

/// How the master is failed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failover {
    /// SIGKILL the master.
    KillMaster,
    /// `SENTINEL FAILOVER`: the old master lives on and is demoted later.
    Manual,
    /// SIGKILL sentinel 0 (the first of the URL), then the master.
    KillSentinelThenMaster,
}

/// The names of the agents' nodes present in GetNodes now (None when the
/// call fails).
async fn agent_nodes(c: &Client) -> Option<Vec<String>> {
    let r = tokio::time::timeout(
        CALL_BOUND,
        c.clone().get_nodes(GetNodesRequest {
            service_group: GROUP.into(),
            service_name: AGENT_SERVICE.into(),
        }),
    )
    .await
    .ok()?
    .ok()?;
    Some(node_names(&r.into_inner().nodes))
}

/// The findings of a failover test, the timeline starting with what `s`
/// saw of the switch.
fn findings_of(s: &Switch) -> Findings {
    let mut f = Findings::default();
    f.note(format!(
        "{:?}: old master {}, new master {}; sentinels agreed at +{:?} after the {}",
        s.how,
        s.old,
        s.new,
        s.t_new - s.t_failed,
        if s.how == Failover::Manual {
            "SENTINEL FAILOVER"
        } else {
            "kill"
        }
    ));
    f
}

/// A failover as it happened: the masters, and when.
struct Switch {
    how: Failover,
    old: u16,
    new: u16,
    /// The failover began (for [`Failover::KillSentinelThenMaster`]:
    /// before the sentinel was killed).
    t_fail: Instant,
    /// The master was killed, or `SENTINEL FAILOVER` answered.
    t_failed: Instant,
    /// The sentinels agreed on the new master.
    t_new: Instant,
}

/// Fails the master of `t` over as `how` says, and waits for the
/// sentinels to agree on a new one.
async fn fail_over(t: &mut TestServer, how: Failover) -> Switch {
    let t_fail = Instant::now();
    let old = match how {
        Failover::KillMaster => t.sentinel().kill_master().await,
        Failover::Manual => t.sentinel().manual_failover().await,
        Failover::KillSentinelThenMaster => {
            t.sentinel().kill_sentinel(0);
            // The server keeps serving with one sentinel gone.
            tokio::time::sleep(Duration::from_secs(1)).await;
            t.sentinel().kill_master().await
        }
    };
    let t_failed = Instant::now();
    let t_new = t.sentinel().wait_new_master(old).await;
    let new = t.sentinel().current_master_port().await;
    Switch {
        how,
        old,
        new,
        t_fail,
        t_failed,
        t_new,
    }
}

/// Three agents, once their nodes are registered.
async fn start_agents(url: &str, c: &Client) -> Vec<Proc> {
    let agents: Vec<Proc> = (0..3)
        .map(|i| spawn_agent(url, GROUP, AGENT_SERVICE, i, AGENT_TTL))
        .collect();
    eventually("the three agents' nodes", || async {
        agent_nodes(c).await.filter(|n| n.len() == 3)
    })
    .await;
    agents
}

/// A group watch and two watches of the load's service.
async fn open_watchers(url: &str) -> Vec<Watcher> {
    let all = [LOAD_SERVICE.to_string(), AGENT_SERVICE.to_string()];
    vec![
        Watcher::open(url, GROUP, "", &all).await,
        Watcher::open(url, GROUP, LOAD_SERVICE, &all).await,
        Watcher::open(url, GROUP, LOAD_SERVICE, &all).await,
    ]
}

/// A write acknowledged within [`FIRST_WRITE_BOUND`] of the sentinels
/// agreeing. Returns when the new master first served one (when they
/// agreed if none came).
async fn check_first_write(f: &mut Findings, load: &Load, s: &Switch) -> Instant {
    let Some(call) = load.first_ok_after(s.t_new).await else {
        f.problem(format!(
            "no write acknowledged within {WAIT:?} after the sentinels agreed"
        ));
        return s.t_new;
    };
    let after = call.end() - s.t_new;
    f.note(format!(
        "first acknowledged write after that: {} at +{after:?} (started {:?} before the \
         agreement)",
        call.node,
        s.t_new.saturating_duration_since(call.start)
    ));
    if after > FIRST_WRITE_BOUND {
        f.problem(format!(
            "the first write acknowledged after the sentinels agreed came {after:?} later \
             (bound {FIRST_WRITE_BOUND:?})"
        ));
    }
    call.end()
}

/// Every agent's node present within [`AGENT_BOUND`] of the new master
/// serving at `t_serves` (polled until WAIT to tell how late it is
/// otherwise).
async fn check_agents_back(f: &mut Findings, c: &Client, t_serves: Instant) {
    let agents_back = first_held(t_serves + WAIT, || async {
        agent_nodes(c).await.is_some_and(|n| n.len() == 3)
    })
    .await;
    match agents_back {
        Some(at) => {
            let after = at.saturating_duration_since(t_serves);
            f.note(format!("all three agents' nodes in GetNodes at +{after:?}"));
            if after > AGENT_BOUND {
                f.problem(format!(
                    "the agents' nodes were back {after:?} after the new master served \
                     (bound {AGENT_BOUND:?})"
                ));
            }
        }
        None => f.problem(format!(
            "the agents' nodes were not all back within {WAIT:?}: {:?}",
            agent_nodes(c).await
        )),
    }
}

/// A manual failover leaves the old master up and writable until
/// Sentinel demotes it: what it acknowledged meanwhile is dropped then, so
/// the checks after this wait for that. Nothing to wait for after a kill.
async fn wait_demoted(f: &mut Findings, s: &Switch) {
    if s.how != Failover::Manual {
        return;
    }
    let demoted = SentinelFixture::wait_role(s.old, "slave", 2 * WAIT).await;
    f.note(format!(
        "the old master answered ROLE slave at +{:?}",
        demoted.saturating_duration_since(s.t_new)
    ));
}

/// No call took longer than [`CALL_BOUND`]; every failed call failed with
/// UNAVAILABLE. Times are from `t_fail`, when the failover began.
fn check_calls(f: &mut Findings, calls: &[Call], t_fail: Instant) {
    let slow: Vec<&Call> = calls.iter().filter(|c| c.took > CALL_BOUND).collect();
    if !slow.is_empty() {
        f.problem(format!(
            "{} calls took longer than {CALL_BOUND:?}: {:?}",
            slow.len(),
            slow.iter()
                .take(5)
                .map(|c| (
                    &c.node,
                    c.start.saturating_duration_since(t_fail),
                    c.took,
                    &c.result
                ))
                .collect::<Vec<_>>()
        ));
    }
    let failed: Vec<&Call> = calls.iter().filter(|c| c.result.is_err()).collect();
    let errors = count_by_code(failed.iter().filter_map(|c| c.result.as_ref().err()));
    f.note(format!(
        "load: {} calls, {} failed {errors:?}, longest {:?}, failures from +{:?} to +{:?} after \
         the failover began",
        calls.len(),
        failed.len(),
        calls.iter().map(|c| c.took).max().unwrap_or_default(),
        failed
            .first()
            .map(|c| c.start.saturating_duration_since(t_fail)),
        failed
            .last()
            .map(|c| c.end().saturating_duration_since(t_fail)),
    ));
    if let Some(e) = failed
        .iter()
        .find(|c| !c.result.as_ref().unwrap_err().starts_with("Unavailable"))
    {
        f.problem(format!(
            "a call failed with something other than UNAVAILABLE: {} {:?}",
            e.node, e.result
        ));
    }
}

/// No write acknowledged after the sentinels agreed (`t_new`) is missing
/// from GetNodes; those acknowledged before and lost are only counted.
async fn check_lost_writes(f: &mut Findings, c: &Client, calls: &[Call], t_new: Instant) {
    let stored: Vec<String> = node_names(&get_nodes(&mut c.clone(), GROUP, LOAD_SERVICE).await);
    let lost_after: Vec<&Call> = calls
        .iter()
        .filter(|c| c.result.is_ok() && c.end() >= t_new && !stored.contains(&c.node))
        .collect();
    let lost_before = calls
        .iter()
        .filter(|c| c.result.is_ok() && c.end() < t_new && !stored.contains(&c.node))
        .count();
    f.note(format!(
        "acknowledged writes missing at the end: {} acknowledged after the sentinels agreed, \
         {lost_before} before",
        lost_after.len()
    ));
    if !lost_after.is_empty() {
        f.problem(format!(
            "{} writes acknowledged after the sentinels agreed are missing, e.g. {:?}",
            lost_after.len(),
            lost_after
                .iter()
                .take(5)
                .map(|c| (&c.node, c.end().saturating_duration_since(t_new), &c.result))
                .collect::<Vec<_>>()
        ));
    }
}

/// How often health is polled during a failover.
const HEALTH_POLL: Duration = Duration::from_millis(50);

/// A status of the overall server's health (None: the Check call failed
/// or took [`CALL_BOUND`]) and when it was first seen.
type HealthChange = (Instant, Option<ServingStatus>);

/// A task calling `grpc.health.v1.Health/Check` of the overall server
/// (`""`) every [`HEALTH_POLL`], recording each change of status.
struct HealthPoll {
    changes: Arc<Mutex<Vec<HealthChange>>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl HealthPoll {
    fn start(channel: &Channel) -> Self {
        let changes = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = oneshot::channel();
        let (channel, record) = (channel.clone(), changes.clone());
        let task = tokio::spawn(async move {
            // Bounded: 2000 polls are well over how long a test runs.
            for _ in 0..2000 {
                if stopped.try_recv().is_ok() {
                    return;
                }
                let status = tokio::time::timeout(CALL_BOUND, health_on(&channel, ""))
                    .await
                    .ok()
                    .flatten();
                {
                    let mut changes = record.lock().unwrap();
                    if changes.last().is_none_or(|(_, s)| *s != status) {
                        changes.push((Instant::now(), status));
                    }
                }
                tokio::time::sleep(HEALTH_POLL).await;
            }
        });
        Self {
            changes,
            stop: Some(stop),
            task,
        }
    }

    fn changes(&self) -> Vec<HealthChange> {
        self.changes.lock().unwrap().clone()
    }

    /// Waits until the changes so far satisfy `done`, at most until
    /// `until`.
    async fn wait_for(&self, until: Instant, done: impl Fn(&[HealthChange]) -> bool) {
        while Instant::now() < until && !done(&self.changes()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn finish(mut self) -> Vec<HealthChange> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.expect("the health task");
        self.changes()
    }
}

/// Each change of health as `STATUS at +time` after the failover began
/// (`STATUS from before` for the status it began with).
fn health_changes(changes: &[HealthChange], t_fail: Instant) -> String {
    let line: Vec<String> = changes
        .iter()
        .map(|(at, status)| {
            let name = status.map_or("no answer", |s| s.as_str_name());
            match at.checked_duration_since(t_fail) {
                Some(after) => format!("{name} at +{after:?}"),
                None => format!("{name} from before"),
            }
        })
        .collect();
    line.join(", ")
}

/// Health of the overall server (`""`), polled all along: after a kill
/// NOT_SERVING while no master answers (a manual failover leaves the old
/// master answering, so it need not be), and after any failover SERVING
/// again within WAIT of the sentinels agreeing.
async fn check_health(f: &mut Findings, health: HealthPoll, s: &Switch) {
    let must_go_down = s.how != Failover::Manual;
    let went_down = |ch: &[HealthChange]| {
        ch.iter()
            .any(|(at, st)| *at >= s.t_fail && *st == Some(ServingStatus::NotServing))
    };
    let serving = |ch: &[HealthChange]| {
        ch.last()
            .is_some_and(|(_, st)| *st == Some(ServingStatus::Serving))
    };
    let deadline = s.t_new + WAIT;
    health
        .wait_for(deadline, |ch| {
            serving(ch) && (went_down(ch) || !must_go_down)
        })
        .await;
    let changes = health.finish().await;
    let seen: Vec<HealthChange> = changes
        .into_iter()
        .filter(|(at, _)| *at <= deadline)
        .collect();
    let told = health_changes(&seen, s.t_fail);
    f.note(format!(
        "health of \"\" from the failover's start: {told}; the sentinels agreed at +{:?}",
        s.t_new - s.t_fail
    ));
    if must_go_down && !went_down(&seen) {
        f.problem(format!(
            "health of \"\" never NOT_SERVING after the kill (polled every {HEALTH_POLL:?}): \
             {told}"
        ));
    }
    if !serving(&seen) {
        f.problem(format!(
            "health of \"\" not SERVING again within {WAIT:?} after the sentinels agreed: {told}"
        ));
    }
}

/// Agents, watchers and a steady load on a Sentinel-backed server; the
/// master failed over as `how` says; then every check, reported together.
async fn failover_under_load(how: Failover) {
    let mut t = TestServer::start(Backend::Sentinel).await;
    t.sentinel().wait_ready().await;
    let url = t.server.url();
    let c = t.client.clone();
    let agents = start_agents(&url, &c).await;
    let mut watchers = open_watchers(&url).await;
    let load = Load::start(&c);
    let health = HealthPoll::start(&t.channel);
    // A second of steady state.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let s = fail_over(&mut t, how).await;
    let mut f = findings_of(&s);
    let t_serves = check_first_write(&mut f, &load, &s).await;
    check_agents_back(&mut f, &c, t_serves).await;
    wait_demoted(&mut f, &s).await;
    // Some more steady load on the new master.
    let until = s.t_new + Duration::from_secs(3);
    tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
    let calls = load.finish().await;
    check_calls(&mut f, &calls, s.t_fail);
    check_lost_writes(&mut f, &c, &calls, s.t_new).await;
    check_health(&mut f, health, &s).await;
    check_watchers(&mut f, &c, &mut watchers, s.t_fail).await;
    drop(agents);
    f.assert_clean(&format!("{how:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_master_under_load() {
    failover_under_load(Failover::KillMaster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_failover_under_load() {
    failover_under_load(Failover::Manual).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_sentinel_then_the_master_under_load() {
    failover_under_load(Failover::KillSentinelThenMaster).await;
}
