//! The connection layer: every request-path Redis command goes through
//! [`RedisPool`].
//!
//! It wraps a bb8 pool of multiplexed connections (made by `bb8-redis`)
//! with what a server needs on top: a bound on every call, so a dead Redis
//! turns into UNAVAILABLE instead of a hang; retirement of connections that
//! failed, so the pool heals by itself after Redis restarts; and reloading
//! of Lua scripts that a restarted Redis has forgotten. Sentinel and
//! Cluster support belong here too: callers only see [`RedisPool::query`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bb8::{ManageConnection, Pool, RunError};
use bb8_redis::RedisConnectionManager;
use redis::aio::MultiplexedConnection;
use redis::{
    ConnectionAddr, ConnectionInfo, ErrorKind, FromRedisValue, Pipeline, RedisError, Script,
    ServerErrorKind,
};

use crate::store::{StoreError, StoreResult};

/// How long a caller waits for a pooled connection.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one pipeline may take, connection wait excluded.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Most connections in the pool. Each is multiplexed and shared by every
/// caller that draws it, so two suffice; the second keeps one slow reply
/// from holding up everything.
const POOL_SIZE: u32 = 2;

/// A pooled connection and whether it has failed. The flag is shared with
/// the clones handed to callers, so a failure seen by any of them retires
/// the connection.
pub struct PooledConn {
    conn: MultiplexedConnection,
    broken: Arc<AtomicBool>,
}

/// Makes pooled connections with `bb8-redis` and retires the ones that
/// failed (bb8-redis alone never reports a connection as broken).
pub struct Manager {
    inner: RedisConnectionManager,
}

impl ManageConnection for Manager {
    type Connection = PooledConn;
    type Error = RedisError;

    async fn connect(&self) -> Result<PooledConn, RedisError> {
        let conn = self.inner.connect().await?;
        Ok(PooledConn {
            conn,
            broken: Arc::new(AtomicBool::new(false)),
        })
    }

    async fn is_valid(&self, conn: &mut PooledConn) -> Result<(), RedisError> {
        self.inner.is_valid(&mut conn.conn).await
    }

    fn has_broken(&self, conn: &mut PooledConn) -> bool {
        conn.broken.load(Ordering::Relaxed)
    }
}

/// A bounded, self-healing pool of Redis connections.
#[derive(Clone)]
pub struct RedisPool {
    pool: Pool<Manager>,
    addr: String,
    scripts: &'static [&'static Script],
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
    /// A pool for `info`. Connects lazily; see [`RedisPool::check`] to fail
    /// fast at start. `scripts` are reloaded when Redis says it lost them.
    pub fn new(info: ConnectionInfo, scripts: &'static [&'static Script]) -> StoreResult<Self> {
        let addr = display_addr(&info);
        let inner = RedisConnectionManager::new(info)
            .map_err(|e| StoreError::Internal(format!("bad Redis settings: {e}")))?;
        let pool = Pool::builder()
            .max_size(POOL_SIZE)
            .connection_timeout(CONNECTION_TIMEOUT)
            // A PING before every use would double the round trips; failed
            // connections are retired through `has_broken` instead.
            .test_on_check_out(false)
            .build_unchecked(Manager { inner });
        Ok(Self {
            pool,
            addr,
            scripts,
        })
    }

    /// `host:port` of the Redis server, for messages.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Connects once and sends PING, returning the error as Redis gave it:
    /// used at start to report an unreachable server or bad credentials.
    pub async fn check(&self) -> Result<(), RedisError> {
        let conn = self.pool.dedicated_connection();
        let mut conn = tokio::time::timeout(CONNECTION_TIMEOUT, conn)
            .await
            .map_err(|_| RedisError::from((ErrorKind::Io, "timed out connecting")))??;
        redis::cmd("PING")
            .query_async::<String>(&mut conn.conn)
            .await
            .map(|_| ())
    }

    /// Runs a pipeline and converts its replies. Connection failures and
    /// timeouts become [`StoreError::Unavailable`]; a Redis that forgot the
    /// scripts gets them again and the pipeline runs once more (every
    /// pipeline we send is safe to repeat).
    pub async fn query<T: FromRedisValue>(&self, pipe: &Pipeline) -> StoreResult<T> {
        match self.try_query(pipe).await {
            Err(QueryError::Redis(e))
                if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) =>
            {
                self.load_scripts().await?;
                self.try_query(pipe).await.map_err(|e| self.store_error(e))
            }
            other => other.map_err(|e| self.store_error(e)),
        }
    }

    async fn load_scripts(&self) -> StoreResult<()> {
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
        let (mut conn, broken) = self.shared_connection().await?;
        match tokio::time::timeout(QUERY_TIMEOUT, pipe.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if is_connection_error(&e) {
                    broken.store(true, Ordering::Relaxed);
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
    async fn shared_connection(
        &self,
    ) -> Result<(MultiplexedConnection, Arc<AtomicBool>), QueryError> {
        loop {
            let pooled = self.pool.get().await.map_err(|e| match e {
                RunError::User(e) => QueryError::Redis(e),
                RunError::TimedOut => QueryError::Timeout,
            })?;
            if !pooled.broken.load(Ordering::Relaxed) {
                return Ok((pooled.conn.clone(), pooled.broken.clone()));
            }
        }
    }

    fn store_error(&self, e: QueryError) -> StoreError {
        match e {
            QueryError::Timeout => {
                StoreError::Unavailable(format!("Redis at {} did not answer in time", self.addr))
            }
            QueryError::Redis(e) if is_unavailable(&e) => {
                StoreError::Unavailable(format!("Redis at {}: {e}", self.addr))
            }
            QueryError::Redis(e) => StoreError::Internal(format!("Redis at {}: {e}", self.addr)),
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

/// Whether the error means "Redis is not there right now" rather than a bug.
fn is_unavailable(e: &RedisError) -> bool {
    is_connection_error(e)
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
            )
        )
}
