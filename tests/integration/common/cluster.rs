//! A Redis Cluster on 127.0.0.1 (issue 13): three masters with a replica
//! each, made by `redis-cli --cluster create`, every node killed and the
//! folder removed when dropped (also when a test fails).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{RedisServer, WAIT, find_binary_in, free_port};

/// Masters of the fixture; each has one replica.
pub const MASTERS: usize = 3;

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
        let cli = find_binary_in("redis-cli", "redis-tools", "the Cluster tests create one");
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

    /// `redis+cluster://host:port,...` with every node as a seed.
    pub fn url(&self) -> String {
        Self::url_of(&self.seeds())
    }

    /// `redis+cluster://` with the seeds `seeds` (`host:port` each).
    pub fn url_of(seeds: &[String]) -> String {
        format!("redis+cluster://{}", seeds.join(","))
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
            [
                "cluster_state:ok",
                "cluster_slots_ok:16384",
                &format!("cluster_known_nodes:{}", 2 * MASTERS),
                &format!("cluster_size:{MASTERS}"),
            ]
            .iter()
            .all(|want| info.lines().any(|l| l.trim() == *want))
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

impl Drop for ClusterFixture {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
