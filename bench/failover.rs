//! Failover timeline of `discovered` over Redis Sentinel (see bench/README.md).
//!
//! `cargo bench --bench failover`. For each scenario (`kill -9` of the
//! master, `SENTINEL FAILOVER`) and setting (Redis defaults, then
//! `min-replicas-to-write 1` + `min-replicas-max-lag 1`) it starts fresh
//! processes on free 127.0.0.1 ports (1 master + 2 replicas, 3 sentinels,
//! `discovered serve --redis-url redis+sentinel://...`, 3 agents), runs 20
//! watchers and a writer (RegisterNode of a fresh node every 10 ms) in this
//! process, causes the fault and measures what clients see. Its processes
//! are killed by PID (a Drop guard, also on panic and Ctrl-C). Prints a
//! markdown table, then each run's raw numbers. `KEEP_WORK=1` keeps the logs.

use std::collections::{BTreeMap, HashSet};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use std::{fmt::Display, fs, path::PathBuf};

use discovered::client::{Client, Event};
use discovered::proto::v1::RegisterNodeRequest;
use futures::{StreamExt, future::join_all};
use redis::aio::MultiplexedConnection;
use tokio::task::JoinSet;
use tokio::time::{MissedTickBehavior, interval, sleep, timeout};

/// The master name the sentinels monitor.
const MASTER: &str = "m";
/// The `discovered` binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_discovered");
/// Watchers of the default group, one connection each.
const WATCHERS: usize = 20;
/// Seconds observed after the fault (the writer stops 1 s before the end).
/// Lost writes are counted then, or once the old master has become a
/// replica if that is later (at most `CONVERT_LIMIT`).
const WINDOW: f64 = 15.0;
/// The longest wait, in seconds after the fault, for that conversion.
const CONVERT_LIMIT: f64 = 25.0;
/// A RegisterNode unanswered after this counts as failed ("client timeout").
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// When the bench started; every time is in seconds since then.
static START: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Seconds since [`START`].
fn now() -> f64 {
    START.elapsed().as_secs_f64()
}

type Res<T> = Result<T, String>;

/// Errors as messages that say what failed.
trait Context<T> {
    fn ctx(self, what: impl Display) -> Res<T>;
}

impl<T, E: Display> Context<T> for Result<T, E> {
    fn ctx(self, what: impl Display) -> Res<T> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

/// Locks, ignoring poison (a panicking task has already reported itself).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The processes of one run and their temp dir; dropping it kills them by PID.
struct Procs {
    dir: PathBuf,
    children: Vec<(String, Child)>,
}

impl Procs {
    /// No processes yet, and a fresh temp dir named after `tag`.
    fn new(tag: &str) -> Res<Self> {
        let name = format!("discovered-failover.{}.{tag}", std::process::id());
        let dir = std::env::temp_dir().join(name);
        fs::create_dir_all(&dir).ctx(dir.display())?;
        let children = Vec::new();
        Ok(Self { dir, children })
    }

    /// Runs `program` with `args` (split at spaces), output in `<dir>/<name>.log`.
    fn spawn(&mut self, name: &str, program: &str, args: &str) -> Res<()> {
        let log = fs::File::create(self.dir.join(format!("{name}.log"))).ctx(name)?;
        let mut command = Command::new(program);
        command.args(args.split_whitespace()).stdin(Stdio::null());
        command.stdout(log.try_clone().ctx(name)?).stderr(log);
        let child = command.spawn().map_err(|e| match (e.kind(), program) {
            (std::io::ErrorKind::NotFound, "redis-server" | "redis-sentinel") => {
                format!("{program} not found: apt-get install {program}")
            }
            _ => format!("cannot start {program}: {e}"),
        })?;
        self.children.push((name.into(), child));
        Ok(())
    }

    /// Runs `program` (redis-server or redis-sentinel) on `<dir>/<name>/conf`
    /// holding `conf`, with `<dir>/<name>` as its working dir.
    fn spawn_redis(&mut self, name: &str, program: &str, conf: &str) -> Res<()> {
        let dir = self.dir.join(name);
        fs::create_dir_all(&dir).ctx(dir.display())?;
        let path = dir.join("conf");
        let text = format!("{conf}bind 127.0.0.1\ndir {}\n", dir.display());
        fs::write(&path, text).ctx(path.display())?;
        self.spawn(name, program, &path.display().to_string())
    }

    /// SIGKILL to the process started as `name`.
    fn kill(&mut self, name: &str) -> Res<()> {
        let found = self.children.iter_mut().find(|(n, _)| n == name);
        let (_, child) = found.ok_or(format!("no process {name}"))?;
        child.kill().ctx(format!("kill {name}"))?;
        child.wait().map(drop).ctx(format!("wait for {name}"))
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, child) in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var("KEEP_WORK").is_ok_and(|v| v == "1") {
            eprintln!("[failover] kept {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// `n` distinct free ports on 127.0.0.1 (all bound at once, then released).
fn free_ports(n: usize) -> Res<Vec<u16>> {
    let bind = |_| std::net::TcpListener::bind("127.0.0.1:0");
    let held: Result<Vec<_>, _> = (0..n).map(bind).collect();
    let port = |l: &std::net::TcpListener| Ok(l.local_addr().ctx("free port")?.port());
    held.ctx("no free port")?.iter().map(port).collect()
}

/// A connection to the Redis server or sentinel on 127.0.0.1:`port`.
async fn connect(port: u16) -> Res<MultiplexedConnection> {
    let addr = format!("127.0.0.1:{port}");
    let client = redis::Client::open(format!("redis://{addr}/")).ctx(&addr)?;
    let conn = client.get_multiplexed_async_connection();
    timeout(Duration::from_secs(2), conn)
        .await
        .ctx(&addr)?
        .ctx(addr)
}

/// `command` (split at spaces) on `conn`, bounded to 2 s.
async fn ask<T: redis::FromRedisValue>(conn: &mut MultiplexedConnection, command: &str) -> Res<T> {
    let mut cmd = redis::Cmd::new();
    for word in command.split_whitespace() {
        cmd.arg(word);
    }
    let reply = timeout(Duration::from_secs(2), cmd.query_async(conn)).await;
    reply.ctx(command)?.ctx(command)
}

/// `command` on a fresh connection to 127.0.0.1:`port`.
async fn query<T: redis::FromRedisValue>(port: u16, command: &str) -> Res<T> {
    let reply = ask(&mut connect(port).await?, command).await;
    reply.ctx(format!("127.0.0.1:{port}"))
}

/// Calls `check` every 100 ms until it holds; fails after `limit` seconds.
async fn wait<F: Future<Output = bool>>(what: &str, limit: f64, check: impl Fn() -> F) -> Res<()> {
    let holds = || async { check().await.then_some(()) };
    let answers = poll((100, now(), limit, true), holds).await;
    match answers.last() {
        Some((_, Some(()))) => Ok(()),
        _ => Err(format!("{what}: not within {limit} s")),
    }
}

/// Whether the sentinel on `port` counts 3 usable sentinels and sees both
/// replicas linked to the master.
async fn sentinel_ready(port: u16) -> bool {
    let quorum = query::<String>(port, "SENTINEL CKQUORUM m").await;
    let replicas = query::<Vec<Vec<String>>>(port, "SENTINEL REPLICAS m").await;
    let has = |r: &[String], pair: [&str; 2]| r.chunks(2).any(|c| c == pair);
    let linked = |r: &&Vec<_>| has(r, ["flags", "slave"]) && has(r, ["master-link-status", "ok"]);
    quorum.is_ok_and(|q| q.starts_with("OK 3 usable"))
        && replicas.is_ok_and(|r| r.iter().filter(linked).count() == 2)
}

/// Starts the master (`ports[0]`), two replicas (`ports[1..3]`) and three
/// sentinels (`ports[3..6]`); with `min_replicas`, CONFIG SETs
/// `min-replicas-to-write 1` + `min-replicas-max-lag 1` on the data nodes.
async fn start_redis(procs: &mut Procs, ports: &[u16], min_replicas: bool) -> Res<()> {
    let master = ports[0];
    for (i, port) in ports[..3].iter().enumerate() {
        let mut conf = format!("port {port}\nsave \"\"\n");
        if i > 0 {
            conf += &format!("replicaof 127.0.0.1 {master}\n");
        }
        procs.spawn_redis(&format!("redis{i}"), "redis-server", &conf)?;
    }
    for &port in &ports[..3] {
        let ping = || async move { query::<String>(port, "PING").await.is_ok() };
        wait(&format!("redis-server on {port} answers PING"), 10.0, ping).await?;
        if min_replicas {
            let set = "CONFIG SET min-replicas-to-write 1 min-replicas-max-lag 1";
            query::<String>(port, set).await?;
        }
    }
    for (i, port) in ports[3..6].iter().enumerate() {
        let mut conf = format!("port {port}\nsentinel resolve-hostnames no\n");
        conf += &format!("sentinel monitor {MASTER} 127.0.0.1 {master} 2\n");
        conf += &format!("sentinel down-after-milliseconds {MASTER} 1000\n");
        conf += &format!("sentinel failover-timeout {MASTER} 3000\n");
        procs.spawn_redis(&format!("sentinel{i}"), "redis-sentinel", &conf)?;
    }
    let ready = || async { join_all(ports[3..6].iter().map(|&p| sentinel_ready(p))).await };
    let all_ready = || async { ready().await.into_iter().all(|r| r) };
    wait("sentinels: CKQUORUM OK, 2 replicas linked", 30.0, all_ready).await
}

/// How many nodes the service `agents` lists: the agents' a1..a3 (None:
/// GetNodes failed or took over 2 s).
async fn agent_count(client: &Client) -> Option<usize> {
    let nodes = timeout(Duration::from_secs(2), client.get_nodes("", "agents")).await;
    Some(nodes.ok()?.ok()?.len())
}

/// Starts `discovered serve` on `addr` over the sentinels on `ports`, then
/// the 3 agents; returns a client once their nodes are listed.
async fn start_discovered(procs: &mut Procs, ports: &[u16], addr: &str) -> Res<Client> {
    let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let url = format!("redis+sentinel://{}/{MASTER}", hosts.join(","));
    let args = format!("serve --listen {addr} --redis-url {url}");
    procs.spawn("discovered", BIN, &args)?;
    let up = || async { Client::connect(addr).await.is_ok() };
    wait("discovered serve accepts connections", 20.0, up).await?;
    for i in 1..=3 {
        let args = format!("agent --server {addr} --service agents --node a{i} --ttl 3 --no-auto");
        procs.spawn(&format!("agent{i}"), BIN, &args)?;
    }
    let client = Client::connect(addr).await.ctx(addr)?;
    let all = || async { agent_count(&client).await == Some(3) };
    wait("the 3 agents' nodes in GetNodes", 20.0, all).await?;
    Ok(client)
}

/// Each watcher's RESYNC (true) and SYNCED (false) marks, with their times.
type Marks = Arc<Mutex<Vec<Vec<(f64, bool)>>>>;

/// Starts the watchers of the default group; returns once each has had its
/// first SYNCED.
async fn start_watchers(addr: &str, tasks: &mut JoinSet<()>) -> Res<Marks> {
    let marks: Marks = Arc::new(Mutex::new(vec![Vec::new(); WATCHERS]));
    for i in 0..WATCHERS {
        let (client, marks) = (Client::connect(addr).await.ctx(addr)?, marks.clone());
        tasks.spawn(async move {
            let mut events = std::pin::pin!(client.watch("", ""));
            while let Some(event) = events.next().await {
                let mark = match event {
                    Ok(Event::Resync) => true,
                    Ok(Event::Synced) => false,
                    Ok(_) => continue,
                    Err(e) => return eprintln!("[failover] watcher {i} ended: {e}"),
                };
                lock(&marks)[i].push((now(), mark));
            }
        });
    }
    let synced = || async { lock(&marks).iter().all(|w| w.iter().any(|m| !m.1)) };
    wait("every watcher's first SYNCED", 15.0, synced).await?;
    Ok(marks)
}

/// One RegisterNode of the writer: its node, start, end and error.
struct Call(String, f64, f64, Option<String>);

/// Registers a fresh node every 10 ms until `stop`, each call on its own
/// task (a slow call does not hold back the next), and logs every call.
async fn writer(client: Client, calls: Arc<Mutex<Vec<Call>>>, stop: Arc<AtomicBool>) {
    let mut tick = interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut inflight = JoinSet::new();
    for i in 0u32.. {
        tick.tick().await;
        if stop.load(Relaxed) {
            break;
        }
        while inflight.try_join_next().is_some() {}
        let (client, calls, node) = (client.clone(), calls.clone(), format!("w{i:05}"));
        let mut req = RegisterNodeRequest::default();
        (req.service_name, req.node_name) = ("writes".into(), node.clone());
        (req.port, req.ttl_seconds) = (1, Some(0));
        inflight.spawn(async move {
            let start = now();
            let error = match timeout(CALL_TIMEOUT, client.register_node(req)).await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("client timeout".into()),
            };
            lock(&calls).push(Call(node, start, now(), error));
        });
    }
    while inflight.join_next().await.is_some() {}
}

/// Calls `probe` every `every` ms until `limit` s after `t0`, or its first
/// `Some` if `until_some`: its answers, at seconds from `t0`.
async fn poll<T, F: Future<Output = Option<T>>>(
    (every, t0, limit, until_some): (u64, f64, f64, bool),
    probe: impl Fn() -> F,
) -> Vec<(f64, Option<T>)> {
    let (mut answers, mut tick) = (Vec::new(), interval(Duration::from_millis(every)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    while now() - t0 < limit {
        tick.tick().await;
        let answer = probe().await;
        let done = until_some && answer.is_some();
        answers.push((now() - t0, answer));
        if done {
            break;
        }
    }
    answers
}

/// The master a majority of the sentinels behind `conns` names.
async fn majority(conns: &[MultiplexedConnection]) -> Option<String> {
    let get = |mut c: MultiplexedConnection| async move {
        ask::<Vec<String>>(&mut c, "SENTINEL GET-MASTER-ADDR-BY-NAME m").await
    };
    let answers = join_all(conns.iter().cloned().map(get)).await;
    let named: Vec<String> = answers.into_iter().flatten().map(|a| a.join(":")).collect();
    let majority = |a: &&String| named.iter().filter(|b| b == a).count() * 2 > conns.len();
    named.iter().find(majority).cloned()
}

/// What one run saw, in seconds from the fault.
struct Run {
    /// Each new master a majority of the sentinels named, and when.
    switches: Vec<(f64, String)>,
    /// When the old master reported `role:slave` (SENTINEL FAILOVER only).
    converted: Option<f64>,
    calls: Vec<Call>,
    /// The nodes acknowledged by RegisterNode but missing at the end.
    lost: HashSet<String>,
    marks: Marks,
    polls: Polls,
}

/// GetNodes polls of the agents' nodes: (s, how many of the 3; None: failed).
type Polls = Vec<(f64, Option<usize>)>;

/// One run on fresh processes: `kill` -9 the master, or SENTINEL FAILOVER.
async fn run_one(kill: bool, min_replicas: bool) -> Res<Run> {
    let mut procs = Procs::new(&format!("{kill}.{min_replicas}"))?;
    let ports = free_ports(7)?;
    let addr = format!("127.0.0.1:{}", ports[6]);
    start_redis(&mut procs, &ports, min_replicas).await?;
    let client = start_discovered(&mut procs, &ports[3..6], &addr).await?;
    let mut tasks = JoinSet::new();
    let marks = start_watchers(&addr, &mut tasks).await?;
    let (calls, stop) = (Arc::default(), Arc::new(AtomicBool::new(false)));
    let writing = tokio::spawn(writer(client.clone(), Arc::clone(&calls), stop.clone()));
    sleep(Duration::from_secs(2)).await;
    let sentinels = join_all(ports[3..6].iter().map(|&p| connect(p))).await;
    let sentinels = sentinels.into_iter().collect::<Res<Vec<_>>>()?;
    let (mut switches, t0) = (vec![(0.0, format!("127.0.0.1:{}", ports[0]))], now());
    let fault = async {
        let fault = match kill {
            true => procs.kill("redis0"),
            false => query::<()>(ports[3], "SENTINEL FAILOVER m").await,
        };
        sleep(Duration::from_secs_f64(t0 + WINDOW - 1.0 - now())).await;
        stop.store(true, Relaxed);
        fault
    };
    let slave = |i: String| i.contains("role:slave").then_some(());
    let converted = || async { slave(query(ports[0], "INFO replication").await.ok()?) };
    let convert_limit = if kill { 0.0 } else { CONVERT_LIMIT };
    let (fault, named, polls, converted) = tokio::join!(
        fault,
        poll((20, t0, WINDOW, false), || majority(&sentinels)),
        poll((50, t0, WINDOW, false), || agent_count(&client)),
        poll((100, t0, convert_limit, true), converted),
    );
    fault?;
    let _ = writing.await;
    let nodes = client.get_nodes("", "writes").await;
    let listed: HashSet<_> = nodes
        .ctx("GetNodes")?
        .into_iter()
        .map(|n| n.node_name)
        .collect();
    let mut calls = std::mem::take(&mut *lock(&calls));
    let mut lost = HashSet::new();
    for Call(node, start, end, error) in calls.iter_mut() {
        (*start, *end) = (*start - t0, *end - t0);
        if error.is_none() && !listed.contains(node) {
            lost.insert(node.clone());
        }
    }
    tasks.shutdown().await;
    for mark in lock(&marks).iter_mut().flatten() {
        mark.0 -= t0;
    }
    for (t, named) in named {
        if let Some(master) = named
            && switches.last().is_some_and(|s| s.1 != master)
        {
            switches.push((t, master));
        }
    }
    switches.remove(0);
    let converted = converted.into_iter().find_map(|(t, a)| a.map(|()| t));
    Ok(Run {
        switches,
        converted,
        calls,
        lost,
        marks,
        polls,
    })
}

/// "1.23", or "never" for None.
fn secs(t: Option<f64>) -> String {
    t.map_or("never".into(), |t| format!("{t:.2}"))
}

/// "first..last" of `times`.
fn span(times: &[f64]) -> String {
    let (first, last) = (times.first().copied(), times.last().copied());
    format!("{}..{}", secs(first), secs(last))
}

/// The writer's cells (first write, writes back, longest call, failed
/// calls, lost before / after `announced`) and raw lines.
fn writes(calls: &[Call], lost: &HashSet<String>, announced: f64) -> ([String; 5], String) {
    let (mut first, mut longest, mut last_bad) = (None, (0.0, 0.0), 0.0);
    let (mut errors, mut lost_at) = (BTreeMap::<&str, (usize, &str)>::new(), Vec::new());
    for Call(node, start, end, error) in calls {
        let kept = !lost.contains(node);
        if *end >= 0.0 && end - start > longest.1 - longest.0 {
            longest = (*start, *end);
        }
        if error.is_none() && *start >= 0.0 && first.is_none_or(|f| f > *end) {
            first = Some(*end);
        }
        if error.is_some() || !kept {
            last_bad = start.max(last_bad);
        }
        if let Some(e) = error.as_deref().filter(|_| *end >= 0.0) {
            let kind = e.split(':').next().unwrap_or(e);
            errors.entry(kind).or_insert((0, e)).0 += 1;
        } else if !kept {
            lost_at.push(*end);
        }
    }
    let mut back = None;
    for Call(_, start, end, error) in calls {
        if error.is_none() && *start > last_bad && back.is_none_or(|b| b > *end) {
            back = Some(*end);
        }
    }
    let before = lost_at.iter().filter(|&&t| t < announced).count();
    let failed: usize = errors.values().map(|e| e.0).sum();
    let lost_cell = format!("{before} / {}", lost_at.len() - before);
    let took = format!("{:.2}", longest.1 - longest.0);
    let cells = [secs(first), secs(back), took, failed.to_string(), lost_cell];
    let acked = calls.iter().filter(|c| c.3.is_none()).count();
    let mut raw = format!("  writes: {acked} acknowledged; longest call {longest:.2?} s\n");
    for (n, example) in errors.values() {
        raw += &format!("  {n} failed, e.g. {example}\n");
    }
    (
        cells,
        raw + &format!(
            "  lost: {} acknowledged at {} s",
            lost_at.len(),
            span(&lost_at)
        ),
    )
}

/// When every watcher had had a RESYNC after the fault and then a SYNCED,
/// and a raw line.
fn resynced(marks: &[Vec<(f64, bool)>]) -> (String, String) {
    let (mut done, mut resyncs) = (Vec::new(), Vec::new());
    for marks in marks {
        let after: Vec<_> = marks.iter().filter(|m| m.0 >= 0.0).collect();
        resyncs.push(after.iter().filter(|m| m.1).count());
        let resync = after.iter().position(|m| m.1).unwrap_or(after.len());
        done.extend(after[resync..].iter().find(|m| !m.1).map(|m| m.0));
    }
    let all = (done.len() == marks.len()).then(|| done.iter().copied().fold(0.0, f64::max));
    (secs(all), format!("  RESYNCs per watcher: {resyncs:?}"))
}

/// When all 3 agents' nodes were listed for good (the first poll after the
/// last failed or short one), and a raw line.
fn agents_back(polls: &Polls) -> (String, String) {
    let bad: Vec<f64> = polls
        .iter()
        .filter(|p| p.1 != Some(3))
        .map(|p| p.0)
        .collect();
    let last_bad = bad.last().copied().unwrap_or(f64::MIN);
    let back = polls.iter().find(|p| p.0 > last_bad).map(|p| p.0);
    let failed = polls.iter().filter(|p| p.1.is_none()).count();
    let raw = format!("  agents: {} of {} polls short", bad.len(), polls.len());
    (
        secs(back),
        format!("{raw} ({failed} failed), at {} s", span(&bad)),
    )
}

/// One run's table cells after the scenario and setting, and its raw numbers.
fn report(run: &Run) -> (String, String) {
    let announced = run.switches.first().map(|d| d.0);
    let ([first, back, took, failed, lost], writes) =
        writes(&run.calls, &run.lost, announced.unwrap_or(f64::MAX));
    let (resynced, resyncs) = resynced(&lock(&run.marks));
    let (agents, polled) = agents_back(&run.polls);
    let detected: Vec<_> = run.switches.iter().map(|s| secs(Some(s.0))).collect();
    let detected = if detected.is_empty() {
        "never".into()
    } else {
        detected.join(", ")
    };
    let cells = [detected, first, back, resynced, agents, took, failed, lost];
    let named: Vec<_> = run
        .switches
        .iter()
        .map(|(t, a)| format!("{a} at {t:.2} s"))
        .collect();
    let mut raw = format!("sentinels named {}", named.join(", then "));
    raw += &format!("; old master a replica at {} s\n", secs(run.converted));
    let raw = format!("{raw}{writes}\n{resyncs}\n{polled}");
    (cells.join(" | ") + " |", raw)
}

#[tokio::main]
async fn main() -> ExitCode {
    let (mut rows, mut raws) = (String::new(), String::new());
    let all = async {
        for (kill, scenario) in [(true, "kill -9 master"), (false, "SENTINEL FAILOVER")] {
            for (min_replicas, setting) in [(false, "defaults"), (true, "min-replicas 1")] {
                eprintln!("[failover] {scenario}, {setting}");
                let (row, raw) = report(&run_one(kill, min_replicas).await?);
                rows += &format!("| {scenario} | {setting} | {row}\n");
                raws += &format!("\n{scenario}, {setting}: {raw}\n");
            }
        }
        Res::Ok(())
    };
    let result = tokio::select! {
        r = all => r,
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
    };
    let mut head = "scenario | setting | detected s | first write s | writes back s".to_string();
    head += " | watchers resynced s | agents back s | longest call s | failed calls";
    println!("\n| {head} | writes lost before / after announce |");
    println!("|{}\n{rows}{raws}", " --- |".repeat(10));
    let Err(e) = result else {
        return ExitCode::SUCCESS;
    };
    eprintln!("[failover] stopped: {e}");
    ExitCode::FAILURE
}
