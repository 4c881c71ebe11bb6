//! `discovered serve`: runs the gRPC server on Redis or in memory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::logging::{self, LogFormat};
use super::nofile;
use super::runtime::{self, Threads};

use crate::auth::{Auth, AuthFileError};
use crate::model::{InvalidField, validate_name, validate_ttl};
use crate::server::{self, Defaults, Limits, Reload, ServeError, Settings, TlsFiles, limits};
use crate::store::redis::{CheckError, ConfigError, DataNode};
use crate::store::secrets::SecretKeyError;
use crate::store::{MemoryRegistry, RedisConfig, RedisRegistry, Registry, SecretKey, StoreError};

/// Why `discovered serve` stopped with an error: printed as one line,
/// exit code 1.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// A flag broke a rule.
    #[error(transparent)]
    Flag(#[from] InvalidField),
    /// The Redis flags do not name a usable Redis.
    #[error(transparent)]
    RedisConfig(#[from] ConfigError),
    /// The Redis store could not be set up.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Redis does not answer as the server needs at start.
    #[error(transparent)]
    Check(#[from] CheckError),
    /// The auth file cannot be read or is not valid.
    #[error(transparent)]
    Auth(#[from] AuthFileError),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The TLS files cannot be used.
    #[error(transparent)]
    Tls(#[from] server::TlsError),
    /// The secret key cannot be used.
    #[error(transparent)]
    SecretKey(#[from] SecretKeyError),
    /// A secrets flag does not fit the other flags.
    #[error("{0}")]
    Secrets(String),
    /// An address other machines can reach, with nothing protecting it.
    #[error(
        "refusing to serve {0} with neither TLS nor an auth file: anyone who can reach it could remove every service and redirect any node. Give --tls-cert/--tls-key and --auth-file (see the README's Security section), listen on a loopback address, or pass --insecure to serve it open anyway"
    )]
    Unprotected(SocketAddr),
    /// The gRPC server failed.
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Flags of `discovered serve`. Each also reads an environment variable.
#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "DISCOVERED_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,

    /// Also serve HTTP on this address: /metrics (Prometheus),
    /// /sd/prometheus (Prometheus service discovery) and a read-only
    /// dashboard at /. Off unless given; protected like the gRPC port.
    #[arg(long, env = "DISCOVERED_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,

    /// Redis to keep the registry in, as a redis:// or rediss:// URL,
    /// redis+sentinel://[user:password@]host1:port1,host2:port2/<master-name>[/<db>]
    /// (rediss+sentinel:// for TLS to the data nodes) for the master that
    /// Redis Sentinel names, or
    /// redis+cluster://[user:password@]host1:port1,host2:port2 (rediss+cluster://
    /// for TLS) for a Redis Cluster reached through any of those nodes.
    /// Without it (and without any --redis-* flag) the registry is kept in
    /// memory, for this process only.
    #[arg(long, env = "DISCOVERED_REDIS_URL", conflicts_with_all = ["redis_host", "redis_port", "redis_db", "redis_username", "redis_password", "redis_sentinels", "redis_master_name", "redis_cluster_nodes"])]
    redis_url: Option<String>,

    /// Redis Cluster nodes to start from, host:port,... (port 6379 when
    /// left out; some of the nodes are enough): the registry spreads over
    /// the cluster's shards and follows its failovers and resharding.
    #[arg(long, env = "DISCOVERED_REDIS_CLUSTER_NODES", value_delimiter = ',', conflicts_with_all = ["redis_host", "redis_port", "redis_db", "redis_sentinels", "redis_master_name"])]
    redis_cluster_nodes: Vec<String>,

    /// Redis Sentinel addresses, host:port,... (port 26379 when left out):
    /// the registry lives on the master they name, and follows failovers.
    #[arg(long, env = "DISCOVERED_REDIS_SENTINELS", value_delimiter = ',', conflicts_with_all = ["redis_host", "redis_port"])]
    redis_sentinels: Vec<String>,

    /// The name the sentinels monitor the master under [default with
    /// --redis-sentinels: mymaster].
    #[arg(
        long,
        env = "DISCOVERED_REDIS_MASTER_NAME",
        requires = "redis_sentinels"
    )]
    redis_master_name: Option<String>,

    /// The sentinels' own ACL user, if they require one (--redis-username
    /// is the data nodes').
    #[arg(long, env = "DISCOVERED_REDIS_SENTINEL_USERNAME")]
    redis_sentinel_username: Option<String>,

    /// The sentinels' own password, if they require one (--redis-password
    /// is the data nodes'); prefer the environment variable.
    #[arg(
        long,
        env = "DISCOVERED_REDIS_SENTINEL_PASSWORD",
        hide_env_values = true
    )]
    redis_sentinel_password: Option<String>,

    /// Redis host [default when another --redis-* flag is given: localhost].
    #[arg(long, env = "DISCOVERED_REDIS_HOST")]
    redis_host: Option<String>,

    /// Redis port [default when another --redis-* flag is given: 6379].
    #[arg(long, env = "DISCOVERED_REDIS_PORT")]
    redis_port: Option<u16>,

    /// Redis database index [default when another --redis-* flag is given: 0].
    #[arg(long, env = "DISCOVERED_REDIS_DB")]
    redis_db: Option<i64>,

    /// Redis ACL user name (Redis 6+); omit for the default user.
    #[arg(long, env = "DISCOVERED_REDIS_USERNAME")]
    redis_username: Option<String>,

    /// Redis password (AUTH); prefer the environment variable, which does
    /// not show in the process list.
    #[arg(long, env = "DISCOVERED_REDIS_PASSWORD", hide_env_values = true)]
    redis_password: Option<String>,

    /// PEM file of the CA certificates to trust for TLS to Redis
    /// (rediss:// URL), instead of the system's roots: for a Redis whose
    /// certificate a private CA signed.
    #[arg(long, env = "DISCOVERED_REDIS_TLS_CA", value_name = "FILE")]
    redis_tls_ca: Option<std::path::PathBuf>,

    /// File holding the 32-byte key, as 64 hex digits (`openssl rand -hex
    /// 32 > key`), that encrypts services' auth_credentials in Redis.
    /// Without it they are stored as given.
    #[arg(long, env = "DISCOVERED_SECRET_KEY_FILE", value_name = "FILE")]
    secret_key_file: Option<std::path::PathBuf>,

    /// First part of every Redis key, so several registries can share one
    /// Redis database: letters, digits, '.', '_' or '-' (1 to 128), like a
    /// name, since a glob character would widen the keyspace-notification
    /// pattern and a brace would break the keys' hash tags.
    #[arg(long, env = "DISCOVERED_KEY_PREFIX", default_value = "discovered")]
    key_prefix: String,

    /// Do not add the keyspace-notification flags the server needs with
    /// CONFIG SET (for a managed Redis that forbids CONFIG): the operator
    /// has set notify-keyspace-events to include "Kxe".
    #[arg(long, env = "DISCOVERED_NO_CONFIG_SET")]
    no_config_set: bool,

    /// The group used when a request leaves service_group empty.
    #[arg(long, env = "DISCOVERED_SERVICE_GROUP", default_value = "default")]
    service_group: String,

    /// Default node TTL in seconds, for registrations that give none; 0 or
    /// less (or leaving it out) means nodes never expire.
    #[arg(long, env = "DISCOVERED_NODE_TTL", allow_negative_numbers = true)]
    node_ttl: Option<i64>,

    /// Serve on an address other machines can reach with neither TLS nor
    /// an auth file (refused without it: anyone on the network could
    /// change the registry).
    #[arg(long, env = "DISCOVERED_INSECURE")]
    insecure: bool,

    /// Do not fill in a node's address from the caller when a registration
    /// gives none (a request's `auto` field still overrides this).
    #[arg(long, env = "DISCOVERED_NO_AUTO")]
    no_auto: bool,

    /// Seconds that in-flight calls may take to finish after SIGINT/SIGTERM.
    #[arg(long, env = "DISCOVERED_DRAIN_TIMEOUT", default_value_t = 10)]
    drain_timeout: u64,

    /// Streams one HTTP/2 connection may have open at once (calls and
    /// watches); a client past it waits for one of its streams to end.
    #[arg(long, env = "DISCOVERED_MAX_CONCURRENT_STREAMS", default_value_t = limits::DEFAULT_MAX_CONCURRENT_STREAMS, value_parser = clap::value_parser!(u32).range(1..))]
    max_concurrent_streams: u32,

    /// Watch streams the server keeps open over all connections; a new
    /// watch beyond them is refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "DISCOVERED_MAX_WATCH_STREAMS", default_value_t = limits::DEFAULT_MAX_WATCH_STREAMS as u64, value_parser = clap::value_parser!(u64).range(1..))]
    max_watch_streams: u64,

    /// Bytes HTTP/2 holds per stream for a client that does not read (a
    /// watch's events); past them a watch stops taking changes, and a
    /// client that fell too far behind gets RESYNC and the current state
    /// when it reads again.
    #[arg(long, env = "DISCOVERED_WATCH_BUFFER_BYTES", default_value_t = limits::DEFAULT_WATCH_BUFFER_BYTES as u64, value_parser = clap::value_parser!(u64).range(1024..=64 * 1024 * 1024))]
    watch_buffer_bytes: u64,

    /// Bytes of GetNodes and GetService answers the server keeps, so that
    /// a read of a service that has not changed is served without asking
    /// Redis (least recently used out first); 0 turns the cache off.
    #[arg(long, env = "DISCOVERED_READ_CACHE_BYTES", default_value_t = limits::DEFAULT_READ_CACHE_BYTES as u64, value_parser = clap::value_parser!(u64).range(0..=16 * 1024 * 1024 * 1024))]
    read_cache_bytes: u64,

    /// Seconds between the server's HTTP/2 pings on each connection, which
    /// find clients that are gone; 0 sends none.
    #[arg(long, env = "DISCOVERED_HTTP2_KEEPALIVE_INTERVAL", default_value_t = limits::DEFAULT_HTTP2_KEEPALIVE_INTERVAL.as_secs())]
    http2_keepalive_interval: u64,

    /// Seconds a ping may go unanswered before the server closes the
    /// connection (and every stream on it).
    #[arg(long, env = "DISCOVERED_HTTP2_KEEPALIVE_TIMEOUT", default_value_t = limits::DEFAULT_HTTP2_KEEPALIVE_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    http2_keepalive_timeout: u64,

    /// Seconds a new connection has to send the HTTP/2 preface before the
    /// server closes it.
    #[arg(long, env = "DISCOVERED_HANDSHAKE_TIMEOUT", default_value_t = limits::DEFAULT_HANDSHAKE_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    handshake_timeout: u64,

    /// Seconds a connection may have no open call or watch before the
    /// server closes it (with a GOAWAY, so clients reconnect cleanly);
    /// 0 keeps idle connections for ever.
    #[arg(long, env = "DISCOVERED_IDLE_TIMEOUT", default_value_t = limits::DEFAULT_IDLE_TIMEOUT.as_secs())]
    idle_timeout: u64,

    /// Tokens and client-certificate identities that may call the server,
    /// with their roles and scopes (TOML; see the README's Security
    /// section). Without it every client may do everything. Re-read when
    /// it changes; a bad new version is logged and the old one kept.
    #[arg(long, env = "DISCOVERED_AUTH_FILE")]
    auth_file: Option<PathBuf>,

    /// Serve TLS with this certificate chain (PEM, leaf first); needs
    /// --tls-key. Reloaded when the file changes and on SIGHUP.
    #[arg(long, env = "DISCOVERED_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM); needs --tls-cert.
    #[arg(long, env = "DISCOVERED_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Require a client certificate issued by one of these CAs (PEM
    /// bundle): mutual TLS. Needs --tls-cert.
    #[arg(long, env = "DISCOVERED_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,

    /// Log format (levels follow RUST_LOG, default info).
    #[arg(long, env = "DISCOVERED_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// Prints no field: the flags hold passwords, and nothing may print them.
impl std::fmt::Debug for ServeArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServeArgs { .. }")
    }
}

impl ServeArgs {
    /// What requests that leave fields out get; the names are checked.
    fn defaults(&self) -> Result<Defaults, Failure> {
        validate_name("--service-group", &self.service_group)?;
        // Checked even for the in-memory store, so a bad value is found
        // before the day Redis is configured.
        validate_name("--key-prefix", &self.key_prefix)?;
        Ok(Defaults {
            service_group: self.service_group.clone(),
            node_ttl: match self.node_ttl {
                Some(s) => validate_ttl("--node-ttl", s)?,
                None => None,
            },
            auto: !self.no_auto,
        })
    }

    /// The stream and connection bounds the flags set.
    fn limits(&self) -> Limits {
        Limits {
            max_concurrent_streams: self.max_concurrent_streams,
            max_watch_streams: usize::try_from(self.max_watch_streams).unwrap_or(usize::MAX),
            watch_buffer_bytes: usize::try_from(self.watch_buffer_bytes).unwrap_or(usize::MAX),
            read_cache_bytes: usize::try_from(self.read_cache_bytes).unwrap_or(usize::MAX),
            http2_keepalive_interval: (self.http2_keepalive_interval > 0)
                .then(|| Duration::from_secs(self.http2_keepalive_interval)),
            http2_keepalive_timeout: Duration::from_secs(self.http2_keepalive_timeout),
            handshake_timeout: Duration::from_secs(self.handshake_timeout),
            idle_timeout: (self.idle_timeout > 0).then(|| Duration::from_secs(self.idle_timeout)),
        }
    }

    /// The TLS files, or `None` for plaintext (clap makes sure that the
    /// certificate and the key come together).
    fn tls(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }

    /// The Redis settings, or `None` for the in-memory store.
    fn redis_config(&self) -> Result<Option<RedisConfig>, Failure> {
        let Some(mut config) = self.redis_parts()? else {
            if self.secret_key_file.is_some() {
                return Err(Failure::Secrets(
                    "--secret-key-file needs Redis: the in-memory store keeps credentials in this process only".into(),
                ));
            }
            if self.redis_tls_ca.is_some() {
                return Err(ConfigError::Tls("--redis-tls-ca needs Redis".into()).into());
            }
            return Ok(None);
        };
        config.config_set = !self.no_config_set;
        if let Some(path) = &self.redis_tls_ca {
            let pem = std::fs::read(path).map_err(|e| {
                ConfigError::Tls(format!(
                    "cannot read --redis-tls-ca {}: {e}",
                    path.display()
                ))
            })?;
            config = config.with_tls_ca(pem)?;
        }
        if let Some(path) = &self.secret_key_file {
            config.secret_key = Some(SecretKey::from_file(path)?);
        }
        Ok(Some(config))
    }

    fn redis_parts(&self) -> Result<Option<RedisConfig>, ConfigError> {
        let sentinel_auth = (
            self.redis_sentinel_username.as_deref(),
            self.redis_sentinel_password.as_deref(),
        );
        if let Some(url) = &self.redis_url {
            let config = RedisConfig::from_url(url, &self.key_prefix)?;
            return config.with_sentinel_auth(sentinel_auth).map(Some);
        }
        if !self.redis_cluster_nodes.is_empty() {
            return RedisConfig::from_cluster_nodes(
                &self.redis_cluster_nodes,
                self.redis_username.as_deref(),
                self.redis_password.as_deref(),
                &self.key_prefix,
            )
            .map(Some);
        }
        if !self.redis_sentinels.is_empty() {
            let data = DataNode {
                db: self.redis_db.unwrap_or(0),
                username: self.redis_username.as_deref(),
                password: self.redis_password.as_deref(),
                sentinel_username: sentinel_auth.0,
                sentinel_password: sentinel_auth.1,
            };
            let name = self.redis_master_name.as_deref().unwrap_or("mymaster");
            return RedisConfig::from_sentinels(
                &self.redis_sentinels,
                name,
                data,
                &self.key_prefix,
            )
            .map(Some);
        }
        let any_part = self.redis_host.is_some()
            || self.redis_port.is_some()
            || self.redis_db.is_some()
            || self.redis_username.is_some()
            || self.redis_password.is_some();
        if !any_part {
            return Ok(None);
        }
        RedisConfig::from_parts(
            self.redis_host.as_deref().unwrap_or("localhost"),
            self.redis_port.unwrap_or(6379),
            self.redis_db.unwrap_or(0),
            self.redis_username.as_deref(),
            self.redis_password.as_deref(),
            &self.key_prefix,
        )?
        .with_sentinel_auth(sentinel_auth)
        .map(Some)
    }
}

/// The secret-bearing flags of `serve` whose value came from the command
/// line (see [`super::secrets_given_as_flags`]); `--redis-url` only when
/// it holds a password.
pub fn secrets_on_command_line(matches: &clap::ArgMatches) -> Vec<&'static str> {
    let mut secrets = vec![
        ("redis_password", "--redis-password"),
        ("redis_sentinel_password", "--redis-sentinel-password"),
    ];
    let url_has_password = matches
        .get_one::<String>("redis_url")
        .is_some_and(|url| url_has_password(url));
    if url_has_password {
        secrets.push(("redis_url", "--redis-url"));
    }
    super::secrets_given_as_flags(matches, &secrets)
}

/// Whether a Redis URL carries a password: `user:password@`, `:password@`
/// or a `sentinel_password=` parameter.
fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (authority, query) = match rest.split_once('?') {
        Some((a, q)) => (a, q),
        None => (rest, ""),
    };
    let authority = authority.split('/').next().unwrap_or_default();
    let in_userinfo = authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.split_once(':').is_some_and(|(_, p)| !p.is_empty()));
    in_userinfo || query.contains("sentinel_password=")
}

/// Runs the server until SIGINT or SIGTERM; returns the exit code.
/// `secret_flags` are the secret-bearing flags given on the command line,
/// warned about once logging is up.
pub fn run(args: ServeArgs, secret_flags: Vec<&'static str>) -> ExitCode {
    logging::init(args.log_format);
    super::warn_secrets_on_command_line(&secret_flags);
    // Before the runtime opens its descriptors, and once logs can say so.
    nofile::raise();
    runtime::block_on(Threads::PerCore, async {
        runtime::finish(serve(args).await)
    })
}

async fn serve(args: ServeArgs) -> Result<(), Failure> {
    // First, so that a signal during the start (the Redis check can take
    // seconds) stops the server cleanly or reloads, instead of killing it.
    let shutdown = super::signal::shutdown();
    let reload = Reload::new();
    super::signal::reload_on_sighup(reload.clone());
    // rediss:// needs a TLS crypto provider; installing it twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let defaults = args.defaults()?;
    // Like Redis's protected mode: open only on loopback unless asked.
    let protected = args.auth_file.is_some() || args.tls_cert.is_some();
    for addr in std::iter::once(args.listen).chain(args.http_listen) {
        if !protected && !args.insecure && !addr.ip().is_loopback() {
            return Err(Failure::Unprotected(addr));
        }
    }
    // Before Redis: a bad file is a mistake to report at once.
    let auth = args.auth_file.as_deref().map(Auth::load).transpose()?;
    let registry = registry(&args).await?;
    let limits = args.limits();
    let tls = args.tls();
    // Checked before listening, so a bad file ends the start with one line
    // naming it (the server loads them again, and then follows them).
    if let Some(files) = &tls {
        server::TlsConfig::load(files.clone())?;
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| Failure::Listen {
            addr: args.listen,
            source,
        })?;
    let settings = Settings {
        defaults,
        limits,
        drain: Duration::from_secs(args.drain_timeout),
        auth,
        tls,
        // One SIGHUP reloads everything that can be reloaded.
        reload,
        http_listen: args.http_listen,
    };
    log_start(&args, registry.as_ref(), &settings);
    server::serve(registry, settings, listener, shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}

/// The store the flags name: Redis, checked to answer, or memory.
async fn registry(args: &ServeArgs) -> Result<Arc<dyn Registry>, Failure> {
    Ok(match args.redis_config()? {
        Some(config) => {
            let redis = RedisRegistry::new(config)?;
            redis.check().await?;
            Arc::new(redis)
        }
        None => {
            tracing::warn!(
                "no Redis configured: using the in-memory store (single process, lost on exit); pass --redis-url to share and keep the registry"
            );
            Arc::new(MemoryRegistry::new())
        }
    })
}

/// The start line with every setting (never a secret), and what protects
/// the server.
fn log_start(args: &ServeArgs, registry: &dyn Registry, settings: &Settings) {
    let (defaults, limits, tls) = (&settings.defaults, &settings.limits, &settings.tls);
    tracing::info!(
        listen = %args.listen,
        http_listen = ?args.http_listen,
        store = %registry.describe(),
        default_group = %defaults.service_group,
        node_ttl = ?defaults.node_ttl,
        auto = defaults.auto,
        // Whether a key is in use, never the key or its file's content.
        credentials_encrypted = args.secret_key_file.is_some(),
        max_concurrent_streams = limits.max_concurrent_streams,
        max_watch_streams = limits.max_watch_streams,
        watch_buffer_bytes = limits.watch_buffer_bytes,
        http2_keepalive_interval = ?limits.http2_keepalive_interval,
        http2_keepalive_timeout = ?limits.http2_keepalive_timeout,
        handshake_timeout = ?limits.handshake_timeout,
        idle_timeout = ?limits.idle_timeout,
        auth_file = ?args.auth_file,
        tls = tls.is_some(),
        mutual_tls = tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        "discovered serving"
    );
    match &settings.auth {
        Some(a) => {
            let policy = a.policy();
            tracing::info!(
                path = %a.path().display(),
                tokens = policy.file().tokens.len(),
                identities = policy.file().identities.len(),
                "auth file loaded: calls need a token or a client certificate"
            );
        }
        None => tracing::warn!(
            "no --auth-file: every client may do everything, removing services included"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::url_has_password;

    #[test]
    fn a_url_password_is_found() {
        assert!(url_has_password("redis://u:pw@h:1/0"));
        assert!(url_has_password("rediss://:pw@h:1"));
        assert!(url_has_password(
            "redis+sentinel://h:1/m?sentinel_password=x"
        ));
        assert!(!url_has_password("redis://u@h:1/0"));
        assert!(!url_has_password("redis://h:1/0"));
        assert!(!url_has_password("redis://h:1/0#insecure"));
    }
}
