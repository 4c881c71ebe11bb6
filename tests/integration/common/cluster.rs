//! A Redis Cluster on 127.0.0.1 (issue 13): three masters with a replica
//! each, made by `redis-cli --cluster create`, every node killed and the
//! folder removed when dropped (also when a test fails).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::task::JoinHandle;

use super::{RedisServer, WAIT, command_on, find_binary_in, free_port};

/// Masters of the fixture; each has one replica.
pub const MASTERS: usize = 3;

/// Slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// Finds `redis-cli`, or fails the test saying how to get it.
pub fn redis_cli() -> PathBuf {
    find_binary_in("redis-cli", "redis-tools", "the Cluster tests create one")
}

/// One node as one node's `CLUSTER NODES` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// The node id (40 hex digits).
    pub id: String,
    pub port: u16,
    /// Flagged `master` (else `slave`).
    pub master: bool,
    /// The master a replica follows (None for a master).
    pub follows: Option<String>,
    /// Flagged `fail` or `fail?` by the node that told.
    pub failing: bool,
    /// The slots it serves, as inclusive ranges (importing and migrating
    /// markers left out).
    pub slots: Vec<(u16, u16)>,
}

impl ClusterNode {
    /// Whether it serves `slot`.
    pub fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| a <= slot && slot <= b)
    }

    /// How many slots it serves.
    pub fn slot_count(&self) -> usize {
        self.slots
            .iter()
            .map(|&(a, b)| usize::from(b - a) + 1)
            .sum()
    }
}

/// The cluster as one node sees it (`CLUSTER NODES`, parsed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub nodes: Vec<ClusterNode>,
    /// Slots with an `[slot->-id]` or `[slot-<-id]` marker: a migration
    /// under way.
    pub migrating: usize,
}

impl Topology {
    /// Parses `CLUSTER NODES`: `<id> <ip:port@bus> <flags> <master|-> <ping>
    /// <pong> <epoch> <link> <slot ranges...>`.
    pub fn parse(text: &str) -> Self {
        let mut nodes = Vec::new();
        let mut migrating = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let f: Vec<&str> = line.split_whitespace().collect();
            assert!(f.len() >= 8, "a CLUSTER NODES line: {line:?}");
            let addr = f[1].split('@').next().unwrap_or("");
            let port = addr
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("a port in CLUSTER NODES: {line:?}"));
            let flags: Vec<&str> = f[2].split(',').collect();
            let mut slots = Vec::new();
            for r in &f[8..] {
                if r.starts_with('[') {
                    migrating += 1;
                    continue;
                }
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                let parse = |x: &str| -> u16 {
                    x.parse()
                        .unwrap_or_else(|_| panic!("a slot range in CLUSTER NODES: {line:?}"))
                };
                slots.push((parse(a), parse(b)));
            }
            nodes.push(ClusterNode {
                id: f[0].to_string(),
                port,
                master: flags.contains(&"master"),
                follows: (f[3] != "-").then(|| f[3].to_string()),
                failing: flags.iter().any(|x| *x == "fail" || *x == "fail?"),
                slots,
            });
        }
        Self { nodes, migrating }
    }

    /// The masters serving at least one slot, by port.
    pub fn masters(&self) -> Vec<&ClusterNode> {
        let mut m: Vec<&ClusterNode> = self
            .nodes
            .iter()
            .filter(|n| n.master && !n.slots.is_empty())
            .collect();
        m.sort_by_key(|n| n.port);
        m
    }

    /// The master serving `slot`, if any.
    pub fn owner(&self, slot: u16) -> Option<&ClusterNode> {
        self.nodes.iter().find(|n| n.master && n.owns(slot))
    }

    pub fn by_id(&self, id: &str) -> Option<&ClusterNode> {
        self.nodes.iter().find(|n| n.id == id)
    }

    pub fn by_port(&self, port: u16) -> Option<&ClusterNode> {
        self.nodes.iter().find(|n| n.port == port)
    }

    /// The replicas following the master `id`.
    pub fn replicas_of(&self, id: &str) -> Vec<&ClusterNode> {
        self.nodes
            .iter()
            .filter(|n| n.follows.as_deref() == Some(id))
            .collect()
    }

    /// Owner id of every slot (None: unserved), for comparing views.
    fn slot_map(&self) -> Vec<Option<&str>> {
        let mut map = vec![None; usize::from(SLOTS)];
        for n in self.nodes.iter().filter(|n| n.master) {
            for &(a, b) in &n.slots {
                for s in a..=b {
                    map[usize::from(s)] = Some(n.id.as_str());
                }
            }
        }
        map
    }
}

/// One command a master ran, as `MONITOR` showed it.
#[derive(Debug, Clone)]
pub struct Sampled {
    /// The master's port.
    pub port: u16,
    /// The command, upper-case.
    pub command: String,
    /// The keys it names (EVAL/EVALSHA: the `numkeys` after the script).
    pub keys: Vec<String>,
    /// Run by a script (`[0 lua]`), not sent by a client.
    pub from_script: bool,
}

/// The key arguments of `args` (the command first), as Redis's own key
/// specs place them for the commands a registry sends: none for commands
/// that name no key, every argument for the multi-key ones, `numkeys` of
/// them after the script for EVAL and EVALSHA, the first argument
/// otherwise.
pub fn command_keys(args: &[String]) -> Vec<String> {
    let Some(cmd) = args.first() else {
        return Vec::new();
    };
    let rest = &args[1..];
    match cmd.to_ascii_uppercase().as_str() {
        "EVAL" | "EVALSHA" | "EVAL_RO" | "EVALSHA_RO" | "FCALL" | "FCALL_RO" => {
            let n: usize = rest.get(1).and_then(|n| n.parse().ok()).unwrap_or(0);
            rest.iter().skip(2).take(n).cloned().collect()
        }
        "DEL" | "UNLINK" | "EXISTS" | "MGET" | "TOUCH" | "WATCH" => rest.to_vec(),
        "MSET" | "MSETNX" => rest.iter().step_by(2).cloned().collect(),
        "PING" | "INFO" | "CLUSTER" | "CONFIG" | "CLIENT" | "PUBLISH" | "SPUBLISH"
        | "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" | "UNSUBSCRIBE" | "PUNSUBSCRIBE" | "SCRIPT"
        | "SELECT" | "HELLO" | "READONLY" | "READWRITE" | "AUTH" | "MULTI" | "EXEC" | "DISCARD"
        | "REPLCONF" | "COMMAND" | "ECHO" | "TIME" | "ROLE" | "DBSIZE" | "SCAN" | "MONITOR"
        | "ASKING" | "QUIT" | "RESET" | "FUNCTION" | "LATENCY" | "SLOWLOG" | "MEMORY" | "WAIT"
        | "PUBSUB" | "KEYS" => Vec::new(),
        _ => rest.first().cloned().into_iter().collect(),
    }
}

/// Splits one `MONITOR` line, `<time> [<db> <client>|lua] "ARG" "ARG"...`,
/// into whether a script ran it and its arguments (with the `sdscatrepr`
/// escapes undone). None for a line of another shape (`OK`).
pub fn parse_monitor_line(line: &str) -> Option<(bool, Vec<String>)> {
    let line = line.strip_prefix('+').unwrap_or(line);
    let open = line.find('[')?;
    let close = open + line[open..].find(']')?;
    let from_script = line[open..close].ends_with("lua");
    let mut args = Vec::new();
    let mut chars = line[close + 1..].chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ' ') {
            chars.next();
        }
        match chars.next() {
            None => break,
            Some('"') => {}
            Some(_) => return None,
        }
        let mut bytes: Vec<u8> = Vec::new();
        loop {
            match chars.next()? {
                '"' => break,
                '\\' => match chars.next()? {
                    'n' => bytes.push(b'\n'),
                    'r' => bytes.push(b'\r'),
                    't' => bytes.push(b'\t'),
                    'a' => bytes.push(7),
                    'b' => bytes.push(8),
                    'x' => {
                        let hex: String = [chars.next()?, chars.next()?].iter().collect();
                        bytes.push(u8::from_str_radix(&hex, 16).ok()?);
                    }
                    c => {
                        let mut buf = [0; 4];
                        bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                },
                c => {
                    let mut buf = [0; 4];
                    bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        args.push(String::from_utf8_lossy(&bytes).into_owned());
    }
    (!args.is_empty()).then_some((from_script, args))
}

/// The `calls` of every command in `INFO commandstats` (`cmdstat_<name>:
/// calls=N,...`), by command name.
pub fn parse_commandstats(info: &str) -> BTreeMap<String, u64> {
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

/// `CLUSTER INFO`'s `cluster_state` of the node on `port` (an error when it
/// does not answer).
async fn cluster_state(port: u16) -> Result<String, String> {
    let info: String = command_on(port, redis::cmd("CLUSTER").arg("INFO")).await?;
    Ok(info
        .lines()
        .find_map(|l| l.trim().strip_prefix("cluster_state:"))
        .unwrap_or("?")
        .to_string())
}

/// `CLUSTER NODES` of the node on `port`, parsed.
pub async fn topology_of(port: u16) -> Result<Topology, String> {
    let text: String = command_on(port, redis::cmd("CLUSTER").arg("NODES")).await?;
    Ok(Topology::parse(&text))
}

/// Polls (every 50 ms, at most `bound`) until `check` over the views of
/// every node in `ports` returns Some; panics with the last reason.
async fn wait_views<T>(
    ports: &[u16],
    bound: Duration,
    what: &str,
    check: impl Fn(&[(u16, Topology, String)]) -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + bound;
    loop {
        let mut views = Vec::new();
        let mut problem = None;
        for &p in ports {
            match (topology_of(p).await, cluster_state(p).await) {
                (Ok(t), Ok(s)) => views.push((p, t, s)),
                (Err(e), _) | (_, Err(e)) => problem = Some(format!("node {p}: {e}")),
            }
        }
        let reason = match problem {
            Some(p) => p,
            None => match check(&views) {
                Ok(v) => return v,
                Err(r) => r,
            },
        };
        assert!(
            Instant::now() < deadline,
            "{what}: not within {bound:?}: {reason}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every view says `cluster_state:ok` and all views agree on which master
/// serves each slot, with every slot served and no migration under way.
fn agreed(views: &[(u16, Topology, String)]) -> Result<(), String> {
    let (p0, t0, _) = &views[0];
    let map0 = t0.slot_map();
    for (p, t, state) in views {
        if state != "ok" {
            return Err(format!("node {p}: cluster_state:{state}"));
        }
        if t.migrating > 0 {
            return Err(format!("node {p}: {} slots migrating", t.migrating));
        }
        let map = t.slot_map();
        if let Some(s) = map.iter().position(Option::is_none) {
            return Err(format!("node {p}: slot {s} unserved"));
        }
        if map != map0 {
            let s = (0..map.len()).find(|&s| map[s] != map0[s]).unwrap_or(0);
            return Err(format!(
                "nodes {p0} and {p} disagree on slot {s}: {:?} vs {:?}",
                map0[s], map[s]
            ));
        }
    }
    Ok(())
}

/// The six nodes of a cluster and the folder of their configuration.
pub struct ClusterFixture {
    /// Every node, masters first as `redis-cli --cluster create` assigned
    /// them at start (a failover can change which is which).
    pub nodes: Vec<RedisServer>,
    dir: PathBuf,
}

impl ClusterFixture {
    /// Starts six nodes with cluster mode on, joins them into a cluster of
    /// three masters with one replica each, and waits until every node
    /// reports the whole cluster healthy.
    pub fn start() -> Self {
        let cli = redis_cli();
        let dir = std::env::temp_dir().join(format!(
            "discovered-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("create the fixture's folder");
        let dir_arg = dir.to_string_lossy().into_owned();
        let mut fixture = Self {
            nodes: Vec::new(),
            dir,
        };
        for i in 0..2 * MASTERS {
            let conf = format!("nodes-{i}.conf");
            // A bus port of its own: by default it is the port + 10000,
            // which does not exist for a free port above 55535 (Redis
            // then refuses to start) and may be taken below it.
            let bus = free_port().to_string();
            fixture.nodes.push(RedisServer::start_with(&[
                "--dir",
                &dir_arg,
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus,
                "--cluster-config-file",
                &conf,
                // Failover within about 2.5 s (measured in redis-ha.md).
                "--cluster-node-timeout",
                "1000",
                // A shard down leaves the other shards serving.
                "--cluster-require-full-coverage",
                "no",
                "--repl-diskless-sync-delay",
                "0",
            ]));
        }
        let out = Command::new(cli)
            .arg("--cluster")
            .arg("create")
            .args(fixture.seeds())
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        fixture.wait_healthy();
        fixture
    }

    /// `127.0.0.1:port` of every node, for seeds.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect()
    }

    /// `redis+cluster://127.0.0.1:p1,...`: every node as a seed.
    pub fn url(&self) -> String {
        format!("redis+cluster://{}", self.seeds().join(","))
    }

    /// The ports of the nodes the test has not killed.
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.port)
            .collect()
    }

    /// The cluster as the first live node that answers sees it.
    pub async fn topology(&self) -> Topology {
        let mut errors = Vec::new();
        for p in self.live_ports() {
            match topology_of(p).await {
                Ok(t) => return t,
                Err(e) => errors.push(format!("{p}: {e}")),
            }
        }
        panic!("no live cluster node answers CLUSTER NODES: {errors:?}");
    }

    /// `CLUSTER KEYSLOT` of every key, asked of the first live node, in one
    /// pipeline.
    pub async fn keyslots(&self, keys: &[String]) -> Vec<u16> {
        if keys.is_empty() {
            return Vec::new();
        }
        let port = self.live_ports()[0];
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to a cluster node");
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("CLUSTER").arg("KEYSLOT").arg(k);
        }
        pipe.query_async(&mut conn).await.expect("CLUSTER KEYSLOT")
    }

    /// `CLUSTER KEYSLOT` of `key`.
    pub async fn keyslot(&self, key: &str) -> u16 {
        self.keyslots(&[key.to_string()]).await[0]
    }

    /// The master serving `key` now.
    pub async fn master_of(&self, key: &str) -> ClusterNode {
        let slot = self.keyslot(key).await;
        let t = self.topology().await;
        t.owner(slot)
            .cloned()
            .unwrap_or_else(|| panic!("no master serves slot {slot} of {key}: {t:?}"))
    }

    /// SIGKILLs the node on `port` (by its PID, as a crash would). Returns
    /// the PID it had.
    pub fn kill(&mut self, port: u16) -> u32 {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("{port} is not a node of the fixture"));
        let pid = node.pid().expect("the node is running");
        node.kill();
        pid
    }

    /// Waits until every live node agrees that `slot` is served by a
    /// master other than `old_id`, says `cluster_state:ok` and agrees on
    /// every slot (after a kill, [`WAIT`] at most). Returns the new master.
    pub async fn wait_promoted(&self, slot: u16, old_id: &str) -> ClusterNode {
        let ports = self.live_ports();
        wait_views(&ports, WAIT, "a new master for the slot", |views| {
            agreed(views)?;
            match views[0].1.owner(slot) {
                Some(n) if n.id != old_id => Ok(n.clone()),
                other => Err(format!("slot {slot} still served by {other:?}")),
            }
        })
        .await
    }

    /// Waits until every live node agrees on every slot and says
    /// `cluster_state:ok` ([`WAIT`] at most).
    pub async fn wait_agreed(&self) -> Topology {
        let ports = self.live_ports();
        wait_views(&ports, WAIT, "the nodes to agree", |views| {
            agreed(views)?;
            Ok(views[0].1.clone())
        })
        .await
    }

    /// `CLUSTER FAILOVER` on the replica on `port`, then waits until every
    /// live node sees it as a master serving its old master's slots, the
    /// old master as its replica, and all agree ([`WAIT`] at most).
    /// Returns the old master.
    pub async fn failover(&self, port: u16) -> ClusterNode {
        let before = self.topology().await;
        let replica = before
            .by_port(port)
            .unwrap_or_else(|| panic!("{port} is not in {before:?}"));
        let old_id = replica
            .follows
            .clone()
            .unwrap_or_else(|| panic!("{port} is not a replica: {replica:?}"));
        let old = before.by_id(&old_id).expect("its master").clone();
        let id = replica.id.clone();
        let ok: String = command_on(port, redis::cmd("CLUSTER").arg("FAILOVER"))
            .await
            .unwrap_or_else(|e| panic!("CLUSTER FAILOVER on {port}: {e}"));
        assert_eq!(ok, "OK", "CLUSTER FAILOVER on {port}");
        let ports = self.live_ports();
        wait_views(&ports, WAIT, "the manual failover", |views| {
            agreed(views)?;
            for (p, t, _) in views {
                let new = t.by_id(&id).expect("the replica is known");
                let demoted = t.by_id(&old_id).expect("the old master is known");
                if !new.master || new.slot_count() != old.slot_count() {
                    return Err(format!("node {p} sees {new:?}"));
                }
                if demoted.follows.as_deref() != Some(id.as_str()) {
                    return Err(format!("node {p} sees the old master as {demoted:?}"));
                }
            }
            Ok(())
        })
        .await;
        old
    }

    /// Moves `slots` slots from the master `from_id` to the master `to_id`
    /// with `redis-cli --cluster reshard`, then waits until every live
    /// node agrees on the new map and says `cluster_state:ok`. Returns the
    /// slots that moved.
    pub async fn reshard(&self, from_id: &str, to_id: &str, slots: usize) -> Vec<u16> {
        let before = self.topology().await;
        let from = before.by_id(from_id).expect("the source master").clone();
        let out = tokio::process::Command::new(redis_cli())
            .arg("--cluster")
            .arg("reshard")
            .arg(format!("127.0.0.1:{}", self.live_ports()[0]))
            .args(["--cluster-from", from_id, "--cluster-to", to_id])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
            .kill_on_drop(true)
            .output()
            .await
            .expect("run redis-cli --cluster reshard");
        assert!(
            out.status.success(),
            "redis-cli --cluster reshard failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let after = self.wait_agreed().await;
        let to = after.by_id(to_id).expect("the target master");
        let moved: Vec<u16> = (0..SLOTS).filter(|&s| from.owns(s) && to.owns(s)).collect();
        assert_eq!(moved.len(), slots, "slots moved by the reshard");
        moved
    }

    /// `INFO commandstats` of the node on `port`: calls by command.
    pub async fn commandstats(port: u16) -> BTreeMap<String, u64> {
        let info: String = command_on(port, redis::cmd("INFO").arg("commandstats"))
            .await
            .unwrap_or_else(|e| panic!("INFO commandstats on {port}: {e}"));
        parse_commandstats(&info)
    }

    /// [`ClusterFixture::commandstats`] of every master now, by port.
    pub async fn master_commandstats(&self) -> BTreeMap<u16, BTreeMap<String, u64>> {
        let mut all = BTreeMap::new();
        for m in self.topology().await.masters() {
            all.insert(m.port, Self::commandstats(m.port).await);
        }
        all
    }

    /// Starts sampling every command each master runs during `window`,
    /// through a `MONITOR` connection to each (commands scripts run
    /// included, flagged); returns once every MONITOR is attached, with
    /// the task that collects the sample. MONITOR slows a busy Redis down:
    /// keep windows short.
    pub async fn start_monitor(&self, window: Duration) -> JoinHandle<Vec<Sampled>> {
        let mut readers = Vec::new();
        for m in self.topology().await.masters() {
            readers.push(monitor_one(m.port, window).await);
        }
        tokio::spawn(async move {
            let mut all = Vec::new();
            for t in readers {
                all.extend(t.await.expect("a MONITOR task"));
            }
            all
        })
    }

    /// `CLUSTER NODES` of the node on `port`.
    fn nodes_text(port: u16) -> String {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("url");
        let mut conn = client.get_connection().expect("connect to a cluster node");
        redis::cmd("CLUSTER")
            .arg("NODES")
            .query(&mut conn)
            .expect("CLUSTER NODES")
    }

    /// `CLUSTER INFO` of the node on `port`, as `field:value` lines.
    pub fn info(port: u16) -> String {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("url");
        let mut conn = client.get_connection().expect("connect to a cluster node");
        redis::cmd("CLUSTER")
            .arg("INFO")
            .query(&mut conn)
            .expect("CLUSTER INFO")
    }

    /// Waits until every node sees all six nodes, three shards and every
    /// slot served.
    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + WAIT;
        let healthy = |port: u16| {
            let info = Self::info(port);
            let state_ok = [
                "cluster_state:ok",
                "cluster_slots_ok:16384",
                &format!("cluster_known_nodes:{}", 2 * MASTERS),
                &format!("cluster_size:{MASTERS}"),
            ]
            .iter()
            .all(|want| info.lines().any(|l| l.trim() == *want));
            // Every node also knows each replica as one: the roles spread
            // by gossip after the slots do, and the fault tests need the
            // replica of the master they fail.
            state_ok
                && Self::nodes_text(port)
                    .lines()
                    .filter(|l| l.contains("slave"))
                    .count()
                    == MASTERS
        };
        while !self.nodes.iter().all(|n| healthy(n.port)) {
            assert!(
                Instant::now() < deadline,
                "the cluster was not healthy within {WAIT:?}: {}",
                Self::info(self.nodes[0].port)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Attaches `MONITOR` to the node on `port` (its `+OK` read), and reads
/// it for `window` in a task of its own.
async fn monitor_one(port: u16, window: Duration) -> JoinHandle<Vec<Sampled>> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("connect to {port} for MONITOR: {e}"));
    let (read, mut write) = stream.into_split();
    write.write_all(b"MONITOR\r\n").await.expect("send MONITOR");
    let mut lines = BufReader::new(read).lines();
    let ok = tokio::time::timeout(WAIT, lines.next_line()).await;
    assert!(
        matches!(&ok, Ok(Ok(Some(l))) if l == "+OK"),
        "MONITOR on {port}: {ok:?}"
    );
    tokio::spawn(async move {
        // Kept open until the window ends.
        let _write = write;
        let mut sampled = Vec::new();
        let end = tokio::time::Instant::now() + window;
        while let Ok(line) = tokio::time::timeout_at(end, lines.next_line()).await {
            let Some(line) = line.unwrap_or_else(|e| panic!("MONITOR on {port}: {e}")) else {
                break;
            };
            if let Some((from_script, args)) = parse_monitor_line(&line) {
                sampled.push(Sampled {
                    port,
                    command: args[0].to_ascii_uppercase(),
                    keys: command_keys(&args),
                    from_script,
                });
            }
        }
        sampled
    })
}

/// Counts by key, over every sampled command that names it, most first.
pub fn key_counts(sampled: &[Sampled]) -> Vec<(String, usize)> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for s in sampled {
        let mut keys: Vec<&str> = s.keys.iter().map(String::as_str).collect();
        keys.sort_unstable();
        keys.dedup();
        for k in keys {
            *counts.entry(k).or_default() += 1;
        }
    }
    let mut v: Vec<(String, usize)> = counts
        .into_iter()
        .map(|(k, n)| (k.to_string(), n))
        .collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

impl Drop for ClusterFixture {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
