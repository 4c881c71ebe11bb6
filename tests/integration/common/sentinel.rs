//! [`SentinelFixture`]: a Redis Sentinel deployment of real processes on
//! 127.0.0.1, as an operator would run it: one master, two replicas
//! (`redis-server --replicaof`) and three `redis-sentinel` processes, each
//! with its own config file, quorum 2, `down-after-milliseconds 2000` and
//! `failover-timeout 3000`. (With 1000, a sentinel on this busy 2-core
//! machine now and then took the just-promoted master for down and failed
//! over a second time: a failure of the fixture, not of the server.) Everything is killed on drop, also when a test
//! panics (the sentinels' logs are then kept, and their folder printed).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::AsyncConnectionConfig;

use super::{RedisServer, WAIT, free_port};

/// The master name the fixture's sentinels monitor.
pub const MASTER_NAME: &str = "discovered-ha";

/// How long one command to one fixture process may take (connect and
/// answer): a killed process must not stall a poll.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

/// Finds `redis-sentinel`, or fails the test saying how to get it.
pub fn redis_sentinel_binary() -> PathBuf {
    super::find_binary(
        "redis-sentinel",
        "the Sentinel tests need a real Redis Sentinel",
    )
}

/// Sends `cmd` to the Redis or Sentinel on `127.0.0.1:port` over a
/// connection of its own, bounded by [`COMMAND_TIMEOUT`] for the connect
/// and for the answer.
pub async fn command_on<T: redis::FromRedisValue>(
    port: u16,
    cmd: &redis::Cmd,
) -> Result<T, String> {
    let attempt = async {
        let client =
            redis::Client::open(format!("redis://127.0.0.1:{port}/")).map_err(|e| e.to_string())?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| e.to_string())?;
        cmd.query_async::<T>(&mut conn)
            .await
            .map_err(|e| e.to_string())
    };
    tokio::time::timeout(COMMAND_TIMEOUT * 2, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer from 127.0.0.1:{port}")))
}

/// A `SENTINEL <args...>` command.
fn sentinel_cmd(args: &[&str]) -> redis::Cmd {
    let mut cmd = redis::cmd("SENTINEL");
    for a in args {
        cmd.arg(*a);
    }
    cmd
}

/// One `redis-sentinel` process.
struct Sentinel {
    port: u16,
    child: Option<Child>,
}

/// One master, two replicas and three sentinels on 127.0.0.1 (see the
/// module documentation). Killed on drop.
pub struct SentinelFixture {
    /// The data nodes; `nodes[0]` is the master at start. A node the test
    /// killed stays in the list (its port names it).
    pub nodes: Vec<RedisServer>,
    sentinels: Vec<Sentinel>,
    dir: PathBuf,
}

impl SentinelFixture {
    /// Starts the data nodes, waits until both replicas are in sync with
    /// the master, then starts the sentinels and waits until each answers.
    /// It does not wait for the sentinels to find each other: see
    /// [`SentinelFixture::wait_ready`].
    pub async fn start() -> Self {
        let sentinel_binary = redis_sentinel_binary();
        let dir = std::env::temp_dir().join(format!(
            "discovered-sentinel-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("create the fixture's folder");
        let node_dir = |i: usize| {
            let d = dir.join(format!("node-{i}"));
            std::fs::create_dir_all(&d).expect("create a node's folder");
            d.to_string_lossy().into_owned()
        };
        // Every node gets its own folder (a replica writes the master's
        // RDB there) and syncs at once (the default diskless sync waits
        // 5 s for more replicas to join).
        let master_dir = node_dir(0);
        let master =
            RedisServer::start_with(&["--dir", &master_dir, "--repl-diskless-sync-delay", "0"]);
        let master_port = master.port.to_string();
        let mut fixture = Self {
            nodes: vec![master],
            sentinels: Vec::new(),
            dir: dir.clone(),
        };
        for i in 1..=2 {
            let d = node_dir(i);
            fixture.nodes.push(RedisServer::start_with(&[
                "--dir",
                &d,
                "--repl-diskless-sync-delay",
                "0",
                "--replicaof",
                "127.0.0.1",
                &master_port,
            ]));
        }
        fixture.wait_replicas_in_sync().await;

        for i in 0..3 {
            let port = free_port();
            let conf = dir.join(format!("sentinel-{i}.conf"));
            let log = dir.join(format!("sentinel-{i}.log"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\n\
                     bind 127.0.0.1\n\
                     daemonize no\n\
                     protected-mode no\n\
                     dir {dir}\n\
                     logfile {log}\n\
                     sentinel resolve-hostnames no\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 2000\n\
                     sentinel failover-timeout {MASTER_NAME} 3000\n",
                    dir = dir.display(),
                    log = log.display(),
                ),
            )
            .expect("write a sentinel config");
            let child = Command::new(&sentinel_binary)
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("cannot spawn redis-sentinel");
            fixture.sentinels.push(Sentinel {
                port,
                child: Some(child),
            });
        }
        let deadline = Instant::now() + WAIT;
        for s in &fixture.sentinels {
            while std::net::TcpStream::connect(("127.0.0.1", s.port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "redis-sentinel on port {} did not start within {WAIT:?}",
                    s.port
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        fixture
    }

    /// Waits (at most [`WAIT`]) until the master reports two replicas
    /// online and both replicas report their link to it up.
    async fn wait_replicas_in_sync(&self) {
        let master = self.nodes[0].port;
        let deadline = Instant::now() + WAIT;
        loop {
            let info: Result<String, _> =
                command_on(master, redis::cmd("INFO").arg("replication")).await;
            let mut up = 0;
            for r in &self.nodes[1..] {
                let info: Result<String, _> =
                    command_on(r.port, redis::cmd("INFO").arg("replication")).await;
                if info.is_ok_and(|i| i.contains("master_link_status:up")) {
                    up += 1;
                }
            }
            let online = info
                .as_deref()
                .map(|i| i.matches("state=online").count())
                .unwrap_or(0);
            if up == 2 && online == 2 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the replicas did not sync with the master within {WAIT:?}: master says {info:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The master name the sentinels monitor.
    pub fn master_name(&self) -> &str {
        MASTER_NAME
    }

    /// `127.0.0.1:port` of every sentinel, in order (killed ones too).
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect()
    }

    /// `redis+sentinel://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3/<name>`.
    pub fn url(&self) -> String {
        format!(
            "redis+sentinel://{}/{}",
            self.sentinel_addrs().join(","),
            self.master_name()
        )
    }

    /// The ports of the sentinels not killed by the test.
    fn live_sentinels(&self) -> Vec<u16> {
        self.sentinels
            .iter()
            .filter(|s| s.child.is_some())
            .map(|s| s.port)
            .collect()
    }

    /// The master's port as one sentinel tells it, if it answers.
    pub async fn master_port_per(sentinel_port: u16) -> Option<u16> {
        let addr: Option<(String, u16)> = command_on(
            sentinel_port,
            &sentinel_cmd(&["GET-MASTER-ADDR-BY-NAME", MASTER_NAME]),
        )
        .await
        .ok()?;
        addr.map(|(_, port)| port)
    }

    /// The master's port, as the first live sentinel that answers tells
    /// it (`SENTINEL GET-MASTER-ADDR-BY-NAME`).
    pub async fn current_master_port(&self) -> u16 {
        for port in self.live_sentinels() {
            if let Some(master) = Self::master_port_per(port).await {
                return master;
            }
        }
        panic!("no live sentinel names a master for {MASTER_NAME}");
    }

    /// The first word of `ROLE` on the data node at `port` (`master`,
    /// `slave`), or the error.
    pub async fn role(port: u16) -> Result<String, String> {
        let role: redis::Value = command_on(port, &redis::cmd("ROLE")).await?;
        match role {
            redis::Value::Array(items) => match items.first() {
                Some(redis::Value::BulkString(b)) => Ok(String::from_utf8_lossy(b).into_owned()),
                other => Err(format!("unexpected ROLE answer {other:?}")),
            },
            other => Err(format!("unexpected ROLE answer {other:?}")),
        }
    }

    /// SIGKILLs the data node that is master now (per the sentinels), as
    /// a crash would. Returns its port.
    pub async fn kill_master(&mut self) -> u16 {
        let port = self.current_master_port().await;
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("the master {port} is not a node of the fixture"));
        node.kill();
        port
    }

    /// `SENTINEL FAILOVER <name>` on the first live sentinel, tried again
    /// for at most [`WAIT`] while it answers `-NOGOODSLAVE` (no replica
    /// known to be good yet) or `-INPROG` (a failover is running). Returns
    /// the port of the master it fails over from.
    pub async fn manual_failover(&self) -> u16 {
        let old = self.current_master_port().await;
        let sentinel = self.live_sentinels()[0];
        let deadline = Instant::now() + WAIT;
        loop {
            let answer: Result<redis::Value, String> =
                command_on(sentinel, &sentinel_cmd(&["FAILOVER", MASTER_NAME])).await;
            match answer {
                Ok(_) => return old,
                Err(e) if e.contains("NOGOODSLAVE") || e.contains("INPROG") => {
                    assert!(
                        Instant::now() < deadline,
                        "SENTINEL FAILOVER still refused after {WAIT:?}: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("SENTINEL FAILOVER {MASTER_NAME} on {sentinel}: {e}"),
            }
        }
    }

    /// SIGKILLs sentinel `i` (0, 1 or 2) and waits for it to be gone.
    pub fn kill_sentinel(&mut self, i: usize) {
        if let Some(mut child) = self.sentinels[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// What one sentinel says about the master, or why it is not ready:
    /// it must see the master up, two replicas in sync, two other
    /// sentinels, and CKQUORUM must pass.
    async fn not_ready(sentinel: u16, master: u16) -> Option<String> {
        let fields: HashMap<String, String> =
            match command_on(sentinel, &sentinel_cmd(&["MASTER", MASTER_NAME])).await {
                Ok(f) => f,
                Err(e) => return Some(format!("sentinel {sentinel}: SENTINEL MASTER: {e}")),
            };
        let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or("?");
        if get("port") != master.to_string()
            || get("flags") != "master"
            || get("num-slaves") != "2"
            || get("num-other-sentinels") != "2"
        {
            return Some(format!(
                "sentinel {sentinel}: master port {} flags {} num-slaves {} num-other-sentinels {}",
                get("port"),
                get("flags"),
                get("num-slaves"),
                get("num-other-sentinels")
            ));
        }
        let replicas: Vec<HashMap<String, String>> =
            match command_on(sentinel, &sentinel_cmd(&["REPLICAS", MASTER_NAME])).await {
                Ok(r) => r,
                Err(e) => return Some(format!("sentinel {sentinel}: SENTINEL REPLICAS: {e}")),
            };
        for r in &replicas {
            let get = |k: &str| r.get(k).map(String::as_str).unwrap_or("?");
            if get("flags") != "slave" || get("master-link-status") != "ok" {
                return Some(format!(
                    "sentinel {sentinel}: replica {} flags {} master-link-status {}",
                    get("port"),
                    get("flags"),
                    get("master-link-status")
                ));
            }
        }
        if let Err(e) =
            command_on::<String>(sentinel, &sentinel_cmd(&["CKQUORUM", MASTER_NAME])).await
        {
            return Some(format!("sentinel {sentinel}: CKQUORUM: {e}"));
        }
        None
    }

    /// Waits (at most [`WAIT`]) until every live sentinel sees the same
    /// master, its two replicas in sync and the two other sentinels, and
    /// `SENTINEL CKQUORUM` passes: a failover can start from here.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + WAIT;
        let master = self.current_master_port().await;
        loop {
            let mut problems = Vec::new();
            for s in self.live_sentinels() {
                if let Some(p) = Self::not_ready(s, master).await {
                    problems.push(p);
                }
            }
            if problems.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinels were not ready within {WAIT:?}: {problems:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls every live sentinel (every 20 ms, at most [`WAIT`]) until all
    /// of them name one master other than `old_port`; returns when that
    /// was first seen.
    pub async fn wait_new_master(&self, old_port: u16) -> Instant {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut seen = Vec::new();
            for s in self.live_sentinels() {
                seen.push((s, Self::master_port_per(s).await));
            }
            let now = Instant::now();
            let first = seen[0].1;
            if first.is_some_and(|p| p != old_port) && seen.iter().all(|(_, p)| *p == first) {
                return now;
            }
            assert!(
                now < deadline,
                "the sentinels did not agree on a master other than {old_port} within \
                 {WAIT:?}: (sentinel, master) = {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (at most `bound`) until the data node at `port` answers
    /// `ROLE` with `role` (`master`, `slave`); returns when it did.
    pub async fn wait_role(port: u16, role: &str, bound: Duration) -> Instant {
        let deadline = Instant::now() + bound;
        loop {
            let now_role = Self::role(port).await;
            if now_role.as_deref() == Ok(role) {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "the node on {port} did not become {role} within {bound:?}: ROLE says {now_role:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for SentinelFixture {
    fn drop(&mut self) {
        for i in 0..self.sentinels.len() {
            self.kill_sentinel(i);
        }
        for n in &mut self.nodes {
            n.kill();
        }
        if std::thread::panicking() {
            eprintln!(
                "sentinel fixture: configs and logs kept in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
