//! The connection layer: every request-path Redis command goes through
//! [`RedisPool`].
//!
//! On a single Redis or Sentinel it wraps a bb8 pool of multiplexed
//! connections to the [`Master`] with what a server needs on top: a bound on every call, so a dead Redis turns
//! into UNAVAILABLE instead of a hang; retirement of connections that
//! failed or that a failover left on the old master (an older generation,
//! or a node that answers READONLY, NOREPLICAS, MASTERDOWN or LOADING), so
//! the pool heals by itself; and reloading of Lua scripts that a restarted
//! or newly promoted Redis does not have. On Redis Cluster it wraps the
//! cluster connection ([`ClusterLink`]), which heals by itself, with the
//! same bound and script reloading. Callers only see [`RedisPool::query`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bb8::{ManageConnection, Pool, RunError};
use redis::aio::MultiplexedConnection;
use redis::{
    ConnectionAddr, ConnectionInfo, ErrorKind, FromRedisValue, Pipeline, RedisError, RedisResult,
    Script, ServerErrorKind,
};

use super::cluster::ClusterLink;
use super::master::Master;
use crate::store::{StoreError, StoreResult};

/// How long a caller waits for a pooled connection. Pooled connections are
/// shared, so a healthy pool answers at once; a wait means a connection is
/// being made, which during a failover includes finding the new master.
/// With [`QUERY_TIMEOUT`] it bounds a call at 3 s.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one pipeline may take, connection wait excluded. Ours, not
/// redis-rs's (whose default of 500 ms would end a large but healthy
/// reply and retire its connection): connections are made without one.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// What a pool is for: its size, its timeout and the name its connections
/// show in Redis's `CLIENT LIST`. Each kind of traffic has a pool of its
/// own, so that one neither waits behind another nor holds it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The calls of requests. Each connection is multiplexed and shared by
    /// every caller that draws it, so two suffice; the second keeps one
    /// slow reply from holding up everything.
    Requests,
    /// Large reads (snapshots, group removals): two connections, and a
    /// timeout of 10 s, since their time grows with the group (a
    /// 50,000-node removal takes over 2 s in a debug build on a busy
    /// machine); a timeout fails only the large call itself.
    LargeReads,
    /// The health probe: one connection, so a probe never queues behind
    /// anything.
    Health,
}

impl Purpose {
    fn size(self) -> u32 {
        match self {
            Purpose::Requests | Purpose::LargeReads => 2,
            Purpose::Health => 1,
        }
    }

    fn query_timeout(self) -> Duration {
        match self {
            Purpose::LargeReads => Duration::from_secs(10),
            Purpose::Requests | Purpose::Health => QUERY_TIMEOUT,
        }
    }

    /// The `CLIENT SETNAME` of its connections, for operators reading
    /// `CLIENT LIST` (and tests telling which pool reconnected).
    pub fn client_name(self) -> &'static str {
        match self {
            Purpose::Requests => "discovered-requests",
            Purpose::LargeReads => "discovered-large-reads",
            Purpose::Health => "discovered-health",
        }
    }
}

/// A pooled connection, whether it has failed, and the generation of the
/// master it was made in. The flag is shared with the clones handed to
/// callers, so a failure seen by any of them retires the connection.
pub struct PooledConn {
    conn: MultiplexedConnection,
    broken: Arc<AtomicBool>,
    generation: u64,
}

/// Makes pooled connections to the current master and retires the ones
/// that failed or belong to an older generation.
pub struct Manager {
    master: Arc<Master>,
    purpose: Purpose,
}

impl Manager {
    /// Whether `conn` must not be used again.
    fn retired(&self, conn: &PooledConn) -> bool {
        conn.broken.load(Ordering::Relaxed) || conn.generation < self.master.generation()
    }
}

impl ManageConnection for Manager {
    type Connection = PooledConn;
    type Error = RedisError;

    async fn connect(&self) -> Result<PooledConn, RedisError> {
        let (mut conn, generation) = self.master.connect().await?;
        // Best effort: an ACL user without `client|setname` still works.
        let _ = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(self.purpose.client_name())
            .query_async::<()>(&mut conn)
            .await;
        Ok(PooledConn {
            conn,
            broken: Arc::new(AtomicBool::new(false)),
            generation,
        })
    }

    async fn is_valid(&self, conn: &mut PooledConn) -> Result<(), RedisError> {
        redis::cmd("PING")
            .query_async::<String>(&mut conn.conn)
            .await
            .map(drop)
    }

    fn has_broken(&self, conn: &mut PooledConn) -> bool {
        self.retired(conn)
    }
}

/// A bounded, self-healing pool of Redis connections.
#[derive(Clone)]
pub struct RedisPool {
    via: Via,
    scripts: &'static [&'static Script],
    query_timeout: Duration,
}

/// What a pool's connections go to.
#[derive(Clone)]
enum Via {
    /// One Redis, or the master Sentinel names.
    Master {
        pool: Pool<Manager>,
        master: Arc<Master>,
    },
    /// A Redis Cluster.
    Cluster(Arc<ClusterLink>),
}

/// The connection one call works on.
enum Conn {
    Master(MultiplexedConnection, Arc<AtomicBool>),
    Cluster(redis::cluster_async::ClusterConnection),
}

/// `host:port` (or the socket path) of a connection, for messages.
pub fn display_addr(info: &ConnectionInfo) -> String {
    match info.addr() {
        ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
        ConnectionAddr::TcpTls { host, port, .. } => format!("{host}:{port} (TLS)"),
        ConnectionAddr::Unix(path) => path.display().to_string(),
        other => format!("{other:?}"),
    }
}

impl RedisPool {
    /// A pool of connections to `master` for `purpose`. Connects lazily;
    /// see [`RedisPool::check`] to fail fast at start. `scripts` are
    /// reloaded when Redis says it lacks them. Its connections follow the
    /// master's generation.
    pub fn new(master: Arc<Master>, scripts: &'static [&'static Script], purpose: Purpose) -> Self {
        let manager = Manager {
            master: master.clone(),
            purpose,
        };
        let pool = Pool::builder()
            .max_size(purpose.size())
            .connection_timeout(CONNECTION_TIMEOUT)
            // A PING before every use would double the round trips; failed
            // connections are retired through `has_broken` instead.
            .test_on_check_out(false)
            // A failed connect fails the call that waits for it (UNAVAILABLE,
            // at once) instead of being retried inside bb8 with a backoff
            // of its own: the first call after a failover connects to the
            // new master straight away.
            .retry_connection(false)
            .build_unchecked(manager);
        Self {
            via: Via::Master { pool, master },
            scripts,
            query_timeout: purpose.query_timeout(),
        }
    }

    /// A pool on a Redis Cluster for `purpose`: one cluster connection
    /// (its own per-node connections are multiplexed), made on first use.
    pub fn cluster(
        seeds: Vec<ConnectionInfo>,
        scripts: &'static [&'static Script],
        purpose: Purpose,
    ) -> RedisResult<Self> {
        let link = ClusterLink::new(seeds, purpose.query_timeout())?;
        Ok(Self {
            via: Via::Cluster(Arc::new(link)),
            scripts,
            query_timeout: purpose.query_timeout(),
        })
    }

    /// Where the pool connects, for messages.
    /// The pool's connections by state; `None` on a cluster (redis-rs
    /// keeps those links itself).
    pub fn state(&self) -> Option<crate::store::PoolState> {
        match &self.via {
            Via::Master { pool, .. } => {
                let state = pool.state();
                Some(crate::store::PoolState {
                    idle: state.idle_connections,
                    in_use: state.connections.saturating_sub(state.idle_connections),
                })
            }
            Via::Cluster(_) => None,
        }
    }

    /// The address of the Redis it talks to, for messages.
    pub fn addr(&self) -> String {
        match &self.via {
            Via::Master { master, .. } => master.describe(),
            Via::Cluster(link) => link.describe(),
        }
    }

    /// The cluster behind the pool, if it is on one.
    pub fn cluster_link(&self) -> Option<&Arc<ClusterLink>> {
        match &self.via {
            Via::Cluster(link) => Some(link),
            Via::Master { .. } => None,
        }
    }

    /// Whether requests to different hash slots can share a pipeline (not
    /// on Cluster, where each slot may live on another node).
    pub fn mixes_slots(&self) -> bool {
        matches!(self.via, Via::Master { .. })
    }

    /// Runs a pipeline and converts its replies. Connection failures and
    /// timeouts become [`StoreError::Unavailable`]; a Redis that forgot the
    /// scripts gets them again and the pipeline runs once more (every
    /// pipeline we send is safe to repeat).
    pub async fn query<T: FromRedisValue>(&self, pipe: &Pipeline) -> StoreResult<T> {
        match self.try_query(pipe).await {
            Err(QueryError::Redis(e)) if lacks_scripts(&e) => {
                self.load_scripts().await?;
                self.try_query(pipe).await.map_err(|e| self.store_error(e))
            }
            other => other.map_err(|e| self.store_error(e)),
        }
    }

    async fn load_scripts(&self) -> StoreResult<()> {
        if let Via::Cluster(link) = &self.via {
            // SCRIPT LOAD as a command of its own, which redis-rs sends to
            // every node, replicas included (so a replica promoted later
            // has them too); in a pipeline it would reach one node only.
            let load = async {
                let mut conn = link.connection().await?;
                for script in self.scripts {
                    script.prepare_invoke().load_async(&mut conn).await?;
                }
                RedisResult::Ok(())
            };
            return match tokio::time::timeout(self.query_timeout, load).await {
                Ok(loaded) => loaded.map_err(|e| self.store_error(QueryError::Redis(e))),
                Err(_) => Err(self.store_error(QueryError::Timeout)),
            };
        }
        let mut pipe = redis::pipe();
        for script in self.scripts {
            pipe.load_script(script);
        }
        self.try_query::<Vec<String>>(&pipe)
            .await
            .map(|_| ())
            .map_err(|e| self.store_error(e))
    }

    async fn try_query<T: FromRedisValue>(&self, pipe: &Pipeline) -> Result<T, QueryError> {
        // A multiplexed connection pipelines the commands of many callers
        // over one socket, so the pooled connection goes straight back to
        // the pool and this call works on a clone. Holding it for the whole
        // call would give each connection one caller at a time: more
        // connections, smaller writes, and about a third less throughput.
        let (mut conn, broken) = match self.shared_connection().await? {
            Conn::Master(conn, broken) => (conn, broken),
            Conn::Cluster(mut conn) => {
                // The cluster connection reconnects and reroutes by itself.
                return match tokio::time::timeout(
                    self.query_timeout,
                    pipe.query_async::<T>(&mut conn),
                )
                .await
                {
                    Ok(result) => result.map_err(QueryError::Redis),
                    Err(_) => Err(QueryError::Timeout),
                };
            }
        };
        match tokio::time::timeout(self.query_timeout, pipe.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if is_connection_error(&e) || is_busy_loading(&e) {
                    broken.store(true, Ordering::Relaxed);
                }
                if is_not_master(&e)
                    && let Via::Master { master, .. } = &self.via
                {
                    // Every connection to this node is stale, not just ours.
                    master.suspect(&format!("Redis answered {e}"));
                }
                Err(QueryError::Redis(e))
            }
            Err(_) => {
                broken.store(true, Ordering::Relaxed);
                Err(QueryError::Timeout)
            }
        }
    }

    /// A clone of a pooled connection that no caller has seen fail. A
    /// connection that failed since it went back to the pool is dropped
    /// here (bb8 discards a broken connection when it is returned).
    async fn shared_connection(&self) -> Result<Conn, QueryError> {
        let (pool, master) = match &self.via {
            Via::Master { pool, master } => (pool, master),
            Via::Cluster(link) => {
                return match tokio::time::timeout(CONNECTION_TIMEOUT, link.connection()).await {
                    Ok(conn) => conn.map(Conn::Cluster).map_err(QueryError::Redis),
                    Err(_) => Err(QueryError::Timeout),
                };
            }
        };
        loop {
            let pooled = pool.get().await.map_err(|e| match e {
                RunError::User(e) => QueryError::Redis(e),
                RunError::TimedOut => QueryError::Timeout,
            })?;
            if pooled.generation < master.generation() {
                pooled.broken.store(true, Ordering::Relaxed);
            }
            if !pooled.broken.load(Ordering::Relaxed) {
                return Ok(Conn::Master(pooled.conn.clone(), pooled.broken.clone()));
            }
        }
    }

    fn store_error(&self, e: QueryError) -> StoreError {
        crate::metrics::metrics().store_errors.inc();
        match e {
            QueryError::Timeout => {
                StoreError::Unavailable(format!("Redis at {} did not answer in time", self.addr()))
            }
            QueryError::Redis(e) if is_unavailable(&e) => {
                StoreError::Unavailable(format!("Redis at {}: {e}", self.addr()))
            }
            QueryError::Redis(e) => StoreError::Internal(format!("Redis at {}: {e}", self.addr())),
        }
    }
}

enum QueryError {
    Timeout,
    Redis(RedisError),
}

/// Whether the connection itself failed (so it must not be reused).
fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

/// Whether Redis answered with one of `codes`, for the command itself or
/// for any command of a failed pipeline or transaction (where redis-rs
/// reports the first one's kind, or EXECABORT).
fn has_code(e: &RedisError, codes: &[&str]) -> bool {
    e.clone()
        .into_server_errors()
        .is_some_and(|errors| errors.iter().any(|(_, s)| codes.contains(&s.code())))
}

/// Whether the node no longer takes writes as the master: demoted to a
/// replica (READONLY), cut off from its replicas under
/// `min-replicas-to-write` (NOREPLICAS), or a replica whose master is down
/// (MASTERDOWN). The master has moved, or is about to.
fn is_not_master(e: &RedisError) -> bool {
    has_code(e, &["READONLY", "NOREPLICAS", "MASTERDOWN"])
}

/// Whether Redis has forgotten our scripts (NOSCRIPT), for a single
/// command or any command of a pipeline.
fn lacks_scripts(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) || has_code(e, &["NOSCRIPT"])
}

/// Whether the node is loading its data (just restarted or resynced).
fn is_busy_loading(e: &RedisError) -> bool {
    has_code(e, &["LOADING"])
}

/// Whether the error means "Redis is not there right now" rather than a bug.
fn is_unavailable(e: &RedisError) -> bool {
    is_connection_error(e)
        || is_not_master(e)
        || e.is_cluster_error()
        || has_code(e, &["LOADING", "TRYAGAIN", "CLUSTERDOWN"])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(code: &str) -> RedisError {
        redis::make_extension_error(code.into(), Some("refused".into()))
    }

    #[test]
    fn refusals_of_a_node_that_is_no_master_are_unavailable() {
        for code in ["NOREPLICAS", "READONLY", "MASTERDOWN"] {
            assert!(is_not_master(&refusal(code)), "{code}");
            assert!(is_unavailable(&refusal(code)), "{code}");
        }
        assert!(is_busy_loading(&refusal("LOADING")));
        assert!(!is_unavailable(&refusal("ERR")));
    }
}
