//! Where the registry lives in Redis, from a URL or from separate settings.

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo, RedisError};

/// Why Redis settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `redis://` or `rediss://` URL does not parse.
    #[error("bad Redis URL: {0}")]
    Url(#[source] RedisError),
    /// The host and port make no Redis address.
    #[error("bad Redis address: {0}")]
    Address(#[source] RedisError),
}

/// Where the registry lives in Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// The server and how to log in.
    pub info: ConnectionInfo,
    /// First part of every key (`discovered` by default).
    pub key_prefix: String,
    /// Whether the server may add the keyspace-notification flags it needs
    /// with CONFIG SET (off for managed Redis that forbids CONFIG).
    pub config_set: bool,
}

impl RedisConfig {
    /// From a `redis://` or `rediss://` URL.
    pub fn from_url(url: &str, key_prefix: &str) -> Result<Self, ConfigError> {
        let info = url.into_connection_info().map_err(ConfigError::Url)?;
        Ok(Self::new(info, key_prefix))
    }

    /// From the original library's parameters.
    pub fn from_parts(
        host: &str,
        port: u16,
        db: i64,
        username: Option<&str>,
        password: Option<&str>,
        key_prefix: &str,
    ) -> Result<Self, ConfigError> {
        let mut settings = RedisConnectionInfo::default().set_db(db);
        if let Some(u) = username {
            settings = settings.set_username(u);
        }
        if let Some(p) = password {
            settings = settings.set_password(p);
        }
        let info = ConnectionAddr::Tcp(host.into(), port)
            .into_connection_info()
            .map_err(ConfigError::Address)?
            .set_redis_settings(settings);
        Ok(Self::new(info, key_prefix))
    }

    fn new(info: ConnectionInfo, key_prefix: &str) -> Self {
        Self {
            info,
            key_prefix: key_prefix.into(),
            config_set: true,
        }
    }
}
