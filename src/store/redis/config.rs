//! Where the registry lives in Redis, from a URL or from separate settings:
//! one Redis at a fixed address, or the master that Redis Sentinel names.

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo, RedisError};

use super::sentinel::{self, Sentinels};
use crate::store::SecretKey;

/// Why Redis settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `redis://` or `rediss://` URL does not parse.
    #[error("bad Redis URL: {0}")]
    Url(#[source] RedisError),
    /// The host and port make no Redis address.
    #[error("bad Redis address: {0}")]
    Address(#[source] RedisError),
    /// The TLS settings cannot be used.
    #[error("bad Redis TLS settings: {0}")]
    Tls(String),
    /// The Sentinel settings are incomplete or do not parse.
    #[error("bad Sentinel settings: {0}")]
    Sentinel(String),
    /// The Cluster settings are incomplete or do not parse.
    #[error("bad Redis Cluster settings: {0}")]
    Cluster(String),
}

/// Which Redis the registry's commands go to.
#[derive(Debug, Clone)]
pub enum Target {
    /// One Redis at a fixed address.
    Direct(ConnectionInfo),
    /// The master that the sentinels name, wherever it is now.
    Sentinel {
        /// The sentinels and the master's name.
        sentinels: Sentinels,
        /// How to log in to the data nodes (database, user, password, TLS);
        /// the address is the master's, filled in when it is found.
        data: ConnectionInfo,
    },
    /// A Redis Cluster, found through any of these nodes (with the login
    /// and TLS every node takes); database 0, the only one Cluster has.
    Cluster {
        /// The seed nodes.
        seeds: Vec<ConnectionInfo>,
    },
}

impl Target {
    /// The database our keys live in.
    pub fn db(&self) -> i64 {
        match self {
            Target::Direct(info) | Target::Sentinel { data: info, .. } => {
                info.redis_settings().db()
            }
            Target::Cluster { .. } => 0,
        }
    }

    /// Where the registry lives, for messages: `host:port`, or the master
    /// name and the sentinels.
    pub fn describe(&self) -> String {
        match self {
            Target::Direct(info) => super::pool::display_addr(info),
            Target::Sentinel { sentinels, .. } => format!(
                "master {:?} of the sentinels at {}",
                sentinels.master_name,
                sentinels.addrs_text()
            ),
            Target::Cluster { seeds } => format!(
                "cluster at {}",
                seeds
                    .iter()
                    .map(super::pool::display_addr)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }
}

/// Where the registry lives in Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// The server (or the sentinels) and how to log in.
    pub target: Target,
    /// First part of every key (`discovered` by default).
    pub key_prefix: String,
    /// Whether the server may add the keyspace-notification flags it needs
    /// with CONFIG SET (off for managed Redis that forbids CONFIG).
    pub config_set: bool,
    /// The key that seals `auth_credentials` at rest; `None` stores them
    /// as given (and still reads sealed ones as "cannot reveal").
    pub secret_key: Option<SecretKey>,
}

impl RedisConfig {
    /// From a `redis://` or `rediss://` URL, or a Sentinel URL
    /// `redis+sentinel://[user:password@]host1[:port1],host2[:port2],.../<master-name>[/<db>]`
    /// (`rediss+sentinel://` for TLS to the data nodes; user and password
    /// are the data nodes'; the sentinels' own go in the query as
    /// `sentinel_username` and `sentinel_password`), or a Redis Cluster URL
    /// `redis+cluster://[user:password@]host1[:port1],host2[:port2],...`
    /// (`rediss+cluster://` for TLS) naming some of its nodes.
    pub fn from_url(url: &str, key_prefix: &str) -> Result<Self, ConfigError> {
        if let Some((tls, rest)) = cluster_scheme(url) {
            return parse_cluster_url(tls, rest).map(|t| Self::with_target(t, key_prefix));
        }
        if let Some((tls, rest)) = sentinel_scheme(url) {
            return parse_sentinel_url(tls, rest).map(|t| Self::with_target(t, key_prefix));
        }
        let info = url.into_connection_info().map_err(ConfigError::Url)?;
        Ok(Self::new(info, key_prefix))
    }

    /// From separate Sentinel settings: sentinel addresses `host[:port]`
    /// (port 26379 when left out), the master's name, and the data nodes'
    /// database and credentials.
    pub fn from_sentinels(
        addrs: &[String],
        master_name: &str,
        data: DataNode<'_>,
        key_prefix: &str,
    ) -> Result<Self, ConfigError> {
        let addrs = addrs
            .iter()
            .map(|a| parse_host_port(a))
            .collect::<Result<Vec<_>, _>>()?;
        let target = sentinel_target(addrs, master_name, data, false)?;
        Ok(Self::with_target(target, key_prefix))
    }

    /// From Redis Cluster seed nodes `host[:port]` (port 6379 when left
    /// out) and the login every node takes.
    pub fn from_cluster_nodes(
        addrs: &[String],
        username: Option<&str>,
        password: Option<&str>,
        key_prefix: &str,
    ) -> Result<Self, ConfigError> {
        let addrs = addrs
            .iter()
            .map(|a| parse_node_addr(a))
            .collect::<Result<Vec<_>, _>>()?;
        let target = cluster_target(addrs, username, password, false)?;
        Ok(Self::with_target(target, key_prefix))
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

    /// The sentinels' own user and password, given apart from the URL (from
    /// the environment, say): refused unless the target is Sentinel.
    pub fn with_sentinel_auth(
        mut self,
        (username, password): (Option<&str>, Option<&str>),
    ) -> Result<Self, ConfigError> {
        if username.is_none() && password.is_none() {
            return Ok(self);
        }
        let Target::Sentinel { sentinels, .. } = &mut self.target else {
            return Err(ConfigError::Sentinel(
                "a sentinel username or password needs a Sentinel setup (--redis-sentinels or a redis+sentinel:// URL)".into(),
            ));
        };
        if let Some(u) = username {
            sentinels.username = Some(u.into());
        }
        if let Some(p) = password {
            sentinels.password = Some(p.into());
        }
        Ok(self)
    }

    /// Trusts the PEM certificates `ca_pem` (a private CA's) for TLS to
    /// Redis (`rediss://`), instead of the system's roots. Only for one
    /// Redis at a fixed address: refused with Sentinel, and for a
    /// `redis://` target, where it would silently do nothing.
    pub fn with_tls_ca(mut self, ca_pem: Vec<u8>) -> Result<Self, ConfigError> {
        let Target::Direct(info) = &self.target else {
            return Err(ConfigError::Tls(
                "--redis-tls-ca is not supported with Sentinel or Cluster yet".into(),
            ));
        };
        if !matches!(info.addr(), ConnectionAddr::TcpTls { .. }) {
            return Err(ConfigError::Tls(
                "--redis-tls-ca needs TLS to Redis: a rediss:// URL".into(),
            ));
        }
        let certs = redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca_pem),
        };
        let client = redis::Client::build_with_tls(info.clone(), certs)
            .map_err(|e| ConfigError::Tls(format!("cannot use the CA certificates: {e}")))?;
        self.target = Target::Direct(client.get_connection_info().clone());
        Ok(self)
    }

    fn new(info: ConnectionInfo, key_prefix: &str) -> Self {
        Self::with_target(Target::Direct(info), key_prefix)
    }

    fn with_target(target: Target, key_prefix: &str) -> Self {
        Self {
            target,
            key_prefix: key_prefix.into(),
            config_set: true,
            secret_key: None,
        }
    }
}

/// The data nodes' settings behind Sentinel, and the sentinels' own login.
#[derive(Debug, Clone, Default)]
pub struct DataNode<'a> {
    /// The database of our keys.
    pub db: i64,
    /// The data nodes' user.
    pub username: Option<&'a str>,
    /// The data nodes' password.
    pub password: Option<&'a str>,
    /// The sentinels' user, if they require one.
    pub sentinel_username: Option<&'a str>,
    /// The sentinels' password, if they require one.
    pub sentinel_password: Option<&'a str>,
}

fn sentinel_target(
    addrs: Vec<(String, u16)>,
    master_name: &str,
    data: DataNode<'_>,
    tls: bool,
) -> Result<Target, ConfigError> {
    if addrs.is_empty() {
        return Err(ConfigError::Sentinel("no sentinel address given".into()));
    }
    crate::model::validate_name("master name", master_name)
        .map_err(|e| ConfigError::Sentinel(e.to_string()))?;
    let mut settings = RedisConnectionInfo::default().set_db(data.db);
    if let Some(u) = data.username {
        settings = settings.set_username(u);
    }
    if let Some(p) = data.password {
        settings = settings.set_password(p);
    }
    // The address is a placeholder until the master is found.
    let addr = if tls {
        ConnectionAddr::TcpTls {
            host: String::new(),
            port: 0,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(String::new(), 0)
    };
    let data_info = addr
        .into_connection_info()
        .map_err(ConfigError::Address)?
        .set_redis_settings(settings);
    Ok(Target::Sentinel {
        sentinels: Sentinels {
            addrs,
            master_name: master_name.into(),
            username: data.sentinel_username.map(str::to_string),
            password: data.sentinel_password.map(str::to_string),
        },
        data: data_info,
    })
}

/// `Some(tls, rest)` for a `redis+cluster://` or `rediss+cluster://` URL.
fn cluster_scheme(url: &str) -> Option<(bool, &str)> {
    if let Some(rest) = url.strip_prefix("redis+cluster://") {
        Some((false, rest))
    } else {
        url.strip_prefix("rediss+cluster://")
            .map(|rest| (true, rest))
    }
}

/// The part of a Cluster URL after its scheme.
fn parse_cluster_url(tls: bool, rest: &str) -> Result<Target, ConfigError> {
    let bad = |why: String| {
        ConfigError::Cluster(format!(
            "{why} (want redis+cluster://[user:password@]host[:port],host[:port],...)"
        ))
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?']) {
        return Err(bad(format!(
            "{authority:?} has a path or query: a Cluster has database 0 only"
        )));
    }
    let (username, password, hosts) = split_userinfo(authority)?;
    let addrs = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(parse_node_addr)
        .collect::<Result<Vec<_>, _>>()?;
    let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
    cluster_target(
        addrs,
        some(&username).as_deref(),
        some(&password).as_deref(),
        tls,
    )
}

fn cluster_target(
    addrs: Vec<(String, u16)>,
    username: Option<&str>,
    password: Option<&str>,
    tls: bool,
) -> Result<Target, ConfigError> {
    if addrs.is_empty() {
        return Err(ConfigError::Cluster("no cluster node given".into()));
    }
    let mut settings = RedisConnectionInfo::default();
    if let Some(u) = username {
        settings = settings.set_username(u);
    }
    if let Some(p) = password {
        settings = settings.set_password(p);
    }
    let seeds = addrs
        .into_iter()
        .map(|(host, port)| node_info(&host, port, tls, &settings))
        .collect::<Result<_, _>>()?;
    Ok(Target::Cluster { seeds })
}

/// The connection settings of one node: `settings`' login at `host:port`.
pub fn node_info(
    host: &str,
    port: u16,
    tls: bool,
    settings: &RedisConnectionInfo,
) -> Result<ConnectionInfo, ConfigError> {
    let addr = if tls {
        ConnectionAddr::TcpTls {
            host: host.into(),
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host.into(), port)
    };
    Ok(addr
        .into_connection_info()
        .map_err(ConfigError::Address)?
        .set_redis_settings(settings.clone()))
}

/// `[user[:password]@]hosts` of a URL: the user and password
/// percent-decoded (empty when not given), and the hosts.
fn split_userinfo(authority: &str) -> Result<(String, String, &str), ConfigError> {
    let Some((userinfo, hosts)) = authority.rsplit_once('@') else {
        return Ok((String::new(), String::new(), authority));
    };
    let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    Ok((decode(user)?, decode(pass)?, hosts))
}

/// A cluster node's `host[:port]` or `[v6]:port`; 6379 when no port is
/// given.
fn parse_node_addr(s: &str) -> Result<(String, u16), ConfigError> {
    split_host_port(s, 6379)
        .ok_or_else(|| ConfigError::Cluster(format!("bad cluster node address {s:?}")))
}

/// `Some(tls, rest)` for a `redis+sentinel://` or `rediss+sentinel://` URL.
fn sentinel_scheme(url: &str) -> Option<(bool, &str)> {
    if let Some(rest) = url.strip_prefix("redis+sentinel://") {
        Some((false, rest))
    } else {
        url.strip_prefix("rediss+sentinel://")
            .map(|rest| (true, rest))
    }
}

/// The part of a Sentinel URL after its scheme.
fn parse_sentinel_url(tls: bool, rest: &str) -> Result<Target, ConfigError> {
    let bad = |why: &str| {
        ConfigError::Sentinel(format!(
            "{why} (want redis+sentinel://[user:password@]host[:port],.../<master-name>[/<db>])"
        ))
    };
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = rest.split_once('/').ok_or_else(|| bad("no master name"))?;
    let (username, password, hosts) = split_userinfo(authority)?;
    let addrs = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(parse_host_port)
        .collect::<Result<Vec<_>, _>>()?;
    let mut path = path.trim_end_matches('/').splitn(2, '/');
    let master = path.next().unwrap_or_default();
    if master.is_empty() {
        return Err(bad("no master name"));
    }
    let db = match path.next() {
        Some(db) => db
            .parse()
            .map_err(|_| bad(&format!("database {db:?} is not a number")))?,
        None => 0,
    };
    let (mut sentinel_username, mut sentinel_password) = (None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sentinel_username", v)) => sentinel_username = Some(decode(v)?),
            Some(("sentinel_password", v)) => sentinel_password = Some(decode(v)?),
            _ => return Err(bad(&format!("unknown parameter {pair:?}"))),
        }
    }
    fn some(s: &str) -> Option<&str> {
        (!s.is_empty()).then_some(s)
    }
    let data = DataNode {
        db,
        username: some(&username),
        password: some(&password),
        sentinel_username: sentinel_username.as_deref(),
        sentinel_password: sentinel_password.as_deref(),
    };
    sentinel_target(addrs, &decode(master)?, data, tls)
}

/// A sentinel's `host[:port]` or `[v6]:port`; the sentinel port when none
/// is given.
fn parse_host_port(s: &str) -> Result<(String, u16), ConfigError> {
    split_host_port(s, sentinel::DEFAULT_PORT)
        .ok_or_else(|| ConfigError::Sentinel(format!("bad sentinel address {s:?}")))
}

/// `host[:port]` or `[v6]:port`, with `default_port` when none is given.
fn split_host_port(s: &str, default_port: u16) -> Option<(String, u16)> {
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default_port,
    };
    (!host.is_empty() && port != 0).then(|| (host.to_string(), port))
}

/// Percent-decodes one URL part.
fn decode(s: &str) -> Result<String, ConfigError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| ConfigError::Sentinel(format!("bad percent-encoding in {s:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ConfigError::Sentinel(format!("{s:?} is not UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentinel(url: &str) -> (Sentinels, ConnectionInfo) {
        match RedisConfig::from_url(url, "p").expect(url).target {
            Target::Sentinel { sentinels, data } => (sentinels, data),
            _ => panic!("{url} is no Sentinel URL"),
        }
    }

    #[test]
    fn a_sentinel_url_names_the_sentinels_the_master_and_the_data_nodes() {
        let (s, data) = sentinel(
            "redis+sentinel://app:p%40ss@10.0.0.1:26380,10.0.0.2,[::1]:5/mymaster/3?sentinel_password=sp",
        );
        assert_eq!(
            s.addrs,
            [
                ("10.0.0.1".to_string(), 26380),
                ("10.0.0.2".to_string(), 26379),
                ("::1".to_string(), 5)
            ]
        );
        assert_eq!(s.master_name, "mymaster");
        assert_eq!(s.password.as_deref(), Some("sp"));
        assert_eq!(s.username, None);
        assert_eq!(data.redis_settings().db(), 3);
        assert_eq!(data.redis_settings().username(), Some("app"));
        assert_eq!(data.redis_settings().password(), Some("p@ss"));
        assert!(matches!(data.addr(), ConnectionAddr::Tcp(..)));
        let (_, data) = sentinel("rediss+sentinel://h/m");
        assert!(matches!(data.addr(), ConnectionAddr::TcpTls { .. }));
        assert_eq!(data.redis_settings().db(), 0);
    }

    #[test]
    fn a_cluster_url_names_its_seeds_and_login() {
        let config = RedisConfig::from_url("redis+cluster://u:p%21@h1:7000,h2,[::1]:7002/", "p")
            .expect("cluster url");
        let Target::Cluster { seeds } = config.target else {
            panic!("not a cluster target")
        };
        let addrs: Vec<String> = seeds.iter().map(super::super::pool::display_addr).collect();
        assert_eq!(addrs, ["h1:7000", "h2:6379", "::1:7002"]);
        assert!(
            seeds
                .iter()
                .all(|s| s.redis_settings().password() == Some("p!"))
        );
        assert!(
            seeds
                .iter()
                .all(|s| s.redis_settings().username() == Some("u"))
        );
        let Target::Cluster { seeds } = RedisConfig::from_url("rediss+cluster://h:1", "p")
            .expect("tls")
            .target
        else {
            panic!("not a cluster target")
        };
        assert!(matches!(seeds[0].addr(), ConnectionAddr::TcpTls { .. }));
        for bad in [
            "redis+cluster://",
            "redis+cluster://h:x",
            "redis+cluster://h:1/3",
        ] {
            let e = RedisConfig::from_url(bad, "p").expect_err(bad);
            assert!(e.to_string().starts_with("bad Redis Cluster"), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_sentinel_urls_say_why() {
        for url in [
            "redis+sentinel://h1,h2",
            "redis+sentinel://h1/",
            "redis+sentinel:///m",
            "redis+sentinel://h:x/m",
            "redis+sentinel://h/m/zero",
            "redis+sentinel://h/m?other=1",
        ] {
            let e = RedisConfig::from_url(url, "p").expect_err(url);
            assert!(
                e.to_string().starts_with("bad Sentinel settings"),
                "{url}: {e}"
            );
        }
    }
}
