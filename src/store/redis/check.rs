//! The start-up check: whether Redis answers, and with what it says so, in
//! one line (see [`CheckError`]).

use std::time::Duration;

use super::cluster::ClusterLink;
use super::master::Master;
use super::pool;
use super::sentinel::{self, ResolveError};
use super::shards;
use super::subscriber;

/// How long the check waits to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why [`RedisRegistry::check`] found Redis unusable; each says where
/// (`host:port`), for a one-line message at start.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Sentinel could not name a master: no sentinel answered, they do not
    /// know the name, or none names a master that is up.
    #[error("{0}")]
    Master(#[from] ResolveError),
    /// Redis refused the username or password.
    #[error("Redis at {addr} refused the credentials: {source}")]
    Credentials {
        /// `host:port` of Redis.
        addr: String,
        /// What Redis said.
        source: redis::RedisError,
    },
    /// Redis could not be reached or did not answer PING.
    #[error("cannot reach Redis at {addr}: {source}")]
    Unreachable {
        /// `host:port` of Redis.
        addr: String,
        /// What went wrong.
        source: redis::RedisError,
    },
    /// CONFIG SET of the notification flags failed (a managed Redis, say).
    #[error(
        "cannot enable keyspace notifications on Redis at {addr}: {source}. Set notify-keyspace-events to include '{flags}' in the Redis configuration and start with --no-config-set",
        flags = subscriber::REQUIRED_FLAGS
    )]
    Notifications {
        /// `host:port` of Redis.
        addr: String,
        /// What went wrong.
        source: redis::RedisError,
    },
    /// Data of an older key layout could not be moved over.
    #[error("cannot move the registry at {addr} to the current key layout: {reason}")]
    Migration {
        /// Where Redis is.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The change subscription did not come up in time.
    #[error("cannot subscribe to change notifications on Redis at {addr}")]
    NotSubscribed {
        /// `host:port` of Redis.
        addr: String,
    },
}

impl CheckError {
    /// Why connecting and PING failed: refused credentials or no answer.
    pub(super) fn connecting(addr: String, source: redis::RedisError) -> Self {
        let refused = source.kind() == redis::ErrorKind::AuthenticationFailed
            || source
                .code()
                .is_some_and(|c| c == "WRONGPASS" || c == "NOAUTH");
        if refused {
            Self::Credentials { addr, source }
        } else {
            Self::Unreachable { addr, source }
        }
    }
}

/// [`super::RedisRegistry::check`] on one Redis: returns its `host:port`.
pub async fn master(master: &Master, config_set: bool) -> Result<String, CheckError> {
    let info = master.resolve().await?;
    let addr = pool::display_addr(&info);
    let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, sentinel::connect(&info))
        .await
        .unwrap_or_else(|_| Err((redis::ErrorKind::Io, "timed out connecting").into()))
        .map_err(|source| CheckError::connecting(addr.clone(), source))?;
    redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .map_err(|source| CheckError::connecting(addr.clone(), source))?;
    if config_set {
        subscriber::ensure_notifications(&mut conn)
            .await
            .map_err(|source| CheckError::Notifications {
                addr: addr.clone(),
                source,
            })?;
    }
    Ok(addr)
}

/// [`super::RedisRegistry::check`] on a cluster: returns its description.
pub async fn cluster(link: &ClusterLink, config_set: bool) -> Result<String, CheckError> {
    let addr = link.seeds_text();
    let mut conn = link
        .connection()
        .await
        .map_err(|source| CheckError::connecting(addr.clone(), source))?;
    redis::cmd("PING")
        .query_async::<redis::Value>(&mut conn)
        .await
        .map_err(|source| CheckError::connecting(addr.clone(), source))?;
    if config_set {
        shards::ensure_notifications(link, None)
            .await
            .map_err(|(addr, source)| CheckError::Notifications { addr, source })?;
    }
    Ok(addr)
}
