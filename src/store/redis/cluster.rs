//! Redis Cluster: the connection that requests share, and the cluster's
//! shape (which masters serve which slots) for the subscriber.
//!
//! redis-rs's cluster connection keeps a multiplexed connection to every
//! node, routes each request to the owner of its slot, follows MOVED and
//! ASK, and refreshes the slot map on its own; it is cloned cheaply, so
//! one serves every caller of a pool. What it does not do for us: bound a
//! call (its default retry waits alone exceed 1 s), and subscribe on every
//! master (keyspace events are node-local), which `shards.rs` does with
//! the [`Topology`] read here.

use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{ConnectionInfo, RedisError, RedisResult};
use tokio::sync::Mutex;

use super::pool::display_addr;
use super::sentinel;

/// How long connecting to the cluster (reading its slots) may take; the
/// first connect can hang otherwise (redis-rs#1953).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one node may take to answer before redis-rs counts the try as
/// failed.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(1500);
/// Retries after MOVED, TRYAGAIN, CLUSTERDOWN or a lost connection, with
/// short waits: a call is bounded at 2 s overall, and redis-rs's default
/// wait of at least 1.28 s would spend that on one retry.
const RETRIES: u32 = 4;
const MIN_RETRY_WAIT_MS: u64 = 50;
const MAX_RETRY_WAIT_MS: u64 = 400;

/// The request connection to one cluster, made on first use (and again
/// after a failed first connect).
pub struct ClusterLink {
    seeds: Vec<ConnectionInfo>,
    client: ClusterClient,
    conn: Mutex<Option<ClusterConnection>>,
}

impl std::fmt::Debug for ClusterLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterLink")
            .field("seeds", &self.describe())
            .finish()
    }
}

impl ClusterLink {
    /// A link to the cluster that `seeds` belong to, with a reply bound of
    /// `timeout` per call.
    pub fn new(seeds: Vec<ConnectionInfo>, timeout: Duration) -> RedisResult<Self> {
        let client = ClusterClientBuilder::new(seeds.clone())
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT.min(timeout))
            .overall_response_timeout(Some(timeout))
            .retries(RETRIES)
            .min_retry_wait(MIN_RETRY_WAIT_MS)
            .max_retry_wait(MAX_RETRY_WAIT_MS)
            .build()?;
        Ok(Self {
            seeds,
            client,
            conn: Mutex::new(None),
        })
    }

    /// The shared connection, connecting first if there is none yet.
    pub async fn connection(&self) -> RedisResult<ClusterConnection> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = conn.as_ref() {
            return Ok(c.clone());
        }
        let made = tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_async_connection())
            .await
            .map_err(|_| {
                RedisError::from((redis::ErrorKind::Io, "timed out connecting to the cluster"))
            })??;
        *conn = Some(made.clone());
        Ok(made)
    }

    /// `cluster at host:port,...`, for messages.
    pub fn describe(&self) -> String {
        let seeds: Vec<String> = self.seeds.iter().map(display_addr).collect();
        format!("cluster at {}", seeds.join(","))
    }

    /// The first seed's `host:port`, for messages about the whole cluster.
    pub fn first_seed(&self) -> String {
        display_addr(&self.seeds[0])
    }

    /// How to reach the node at `host:port`: the seeds' login and TLS.
    pub fn node(&self, host: &str, port: u16) -> ConnectionInfo {
        sentinel::with_addr(&self.seeds[0], host, port)
    }

    /// The cluster's shape as any answering node sees it: the seeds are
    /// asked in turn, then the nodes of `known` (the last shape), so a
    /// lost seed does not matter once the cluster was found.
    pub async fn topology(&self, known: Option<&Topology>) -> RedisResult<Topology> {
        let mut asked: Vec<ConnectionInfo> = self.seeds.clone();
        if let Some(t) = known {
            asked.extend(t.nodes.iter().map(|n| self.node(&n.host, n.port)));
        }
        let mut last = None;
        for info in &asked {
            let read = async {
                let mut conn = sentinel::connect(info).await?;
                redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query_async::<String>(&mut conn)
                    .await
            };
            match tokio::time::timeout(CONNECT_TIMEOUT, read).await {
                Ok(Ok(text)) => return Ok(Topology::parse(&text)),
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some((redis::ErrorKind::Io, "timed out reading CLUSTER NODES").into())
                }
            }
        }
        Err(last.unwrap_or_else(|| (redis::ErrorKind::Io, "no cluster node to ask").into()))
    }
}

/// One node of the cluster as `CLUSTER NODES` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// The node's id.
    pub id: String,
    /// Where it listens for clients.
    pub host: String,
    /// Its client port.
    pub port: u16,
    /// Whether it is a master (else a replica).
    pub master: bool,
    /// Whether the cluster agrees it has failed.
    pub failed: bool,
    /// Its slots (masters), as listed: ranges, and slots being migrated.
    pub slots: Vec<String>,
}

/// The cluster's nodes, sorted by id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Topology {
    /// Every node that has an address.
    pub nodes: Vec<ClusterNode>,
}

impl Topology {
    /// Reads the text of `CLUSTER NODES`: `<id> <ip:port@cport[,host]>
    /// <flags> <master> <ping> <pong> <epoch> <link> <slot> ...`.
    pub fn parse(text: &str) -> Self {
        let mut nodes: Vec<ClusterNode> = text
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() < 8 {
                    return None;
                }
                let addr = f[1].split(['@', ',']).next()?;
                let (host, port) = addr.rsplit_once(':')?;
                let flags: Vec<&str> = f[2].split(',').collect();
                if flags.contains(&"noaddr") || host.is_empty() {
                    return None;
                }
                Some(ClusterNode {
                    id: f[0].into(),
                    host: host.into(),
                    port: port.parse().ok()?,
                    master: flags.contains(&"master"),
                    failed: flags.contains(&"fail"),
                    slots: f[8..].iter().map(|s| s.to_string()).collect(),
                })
            })
            .collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Self { nodes }
    }

    /// The masters that serve: not failed, and owning slots (a master
    /// without slots, being added, holds none of our keys).
    pub fn masters(&self) -> impl Iterator<Item = &ClusterNode> {
        self.nodes
            .iter()
            .filter(|n| n.master && !n.failed && !n.slots.is_empty())
    }

    /// What the subscriber must follow: each serving master with its
    /// slots. Any difference means keys may have moved between nodes (a
    /// failover, a slot migration), so messages could have been missed or
    /// come out of order.
    pub fn shape(&self) -> Vec<(String, String, u16, Vec<String>)> {
        self.masters()
            .map(|n| (n.id.clone(), n.host.clone(), n.port, n.slots.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "\
b1 127.0.0.1:7001@17001 master - 0 1 2 connected 5461-10922
a0 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 [5000->-b1]
c2 127.0.0.1:7002@17002 master,fail - 0 1 3 disconnected 10923-16383
d3 127.0.0.1:7003@17003 slave a0 0 1 1 connected
e4 :0@0 master,noaddr - 0 0 0 disconnected
";

    #[test]
    fn reads_cluster_nodes() {
        let t = Topology::parse(NODES);
        let ids: Vec<&str> = t.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["a0", "b1", "c2", "d3"]);
        let masters: Vec<&str> = t.masters().map(|n| n.id.as_str()).collect();
        assert_eq!(masters, ["a0", "b1"]);
        assert_eq!(t.nodes[0].port, 7000);
        assert_eq!(t.nodes[0].slots, ["0-5460", "[5000->-b1]"]);
        assert!(!t.nodes[3].master);
    }

    #[test]
    fn a_moved_slot_changes_the_shape() {
        let before = Topology::parse(NODES);
        let after = Topology::parse(&NODES.replace(" [5000->-b1]", ""));
        assert_ne!(before.shape(), after.shape());
        // Ping times and epochs do not count.
        let later = Topology::parse(&NODES.replace(" 0 1 2 connected", " 9 9 2 connected"));
        assert_eq!(before.shape(), later.shape());
    }
}
