//! Redis Sentinel: which node is the master now, and when that changes.
//!
//! The master is found by asking every sentinel `SENTINEL MASTER <name>`
//! and taking, among the entries no sentinel flags as down or in a failover,
//! the one with the highest `config-epoch`; its `ROLE` must then say
//! master. (redis-rs's own lookup takes the first sentinel's answer, and the
//! failover leader keeps naming the old master for seconds after the others
//! switched: see the README's "High availability" section.)
//!
//! A switch is noticed by subscribing to `+switch-master` on every sentinel
//! ([`watch_switches`]), so that one dead sentinel does not blind the
//! server; the caller bumps its generation of connections on each.

use std::time::Duration;

use futures::StreamExt;
use futures::future::join_all;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Value};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;

/// The port a sentinel listens on when an address names none.
pub const DEFAULT_PORT: u16 = 26379;

/// How long asking one sentinel, or checking a master's ROLE, may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// Waits between attempts to subscribe to one sentinel again.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));

/// The sentinels that name the master, and how to log in to them.
#[derive(Clone, PartialEq, Eq)]
pub struct Sentinels {
    /// `host:port` of each sentinel.
    pub addrs: Vec<(String, u16)>,
    /// The name the sentinels monitor the master under.
    pub master_name: String,
    /// The sentinels' own user, if they require one.
    pub username: Option<String>,
    /// The sentinels' own password, if they require one.
    pub password: Option<String>,
}

/// The password redacted, as redis-rs does for the data nodes'.
impl std::fmt::Debug for Sentinels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sentinels")
            .field("addrs", &self.addrs)
            .field("master_name", &self.master_name)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Why no master could be found.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    /// No sentinel answered.
    #[error("cannot reach any sentinel at {addrs}: {reason}")]
    Unreachable {
        /// The sentinels asked.
        addrs: String,
        /// What the last one said.
        reason: String,
    },
    /// The sentinels that answered do not monitor this name.
    #[error("the sentinels at {addrs} do not know a master named {name:?}")]
    UnknownMaster {
        /// The master name asked for.
        name: String,
        /// The sentinels asked.
        addrs: String,
    },
    /// The sentinels know the name but none names a master that is up.
    #[error("the sentinels at {addrs} name no reachable master for {name:?} (failing over?)")]
    NoMaster {
        /// The master name asked for.
        name: String,
        /// The sentinels asked.
        addrs: String,
    },
}

/// One sentinel's view of the master.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    host: String,
    port: u16,
    epoch: u64,
}

impl Sentinels {
    /// The sentinels' addresses as `a:1, b:2`, for messages.
    pub fn addrs_text(&self) -> String {
        self.addrs
            .iter()
            .map(|(h, p)| format!("{h}:{p}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// How to reach the sentinel at `host:port`.
    fn info(&self, (host, port): &(String, u16)) -> ConnectionInfo {
        let mut settings = redis::RedisConnectionInfo::default();
        if let Some(u) = &self.username {
            settings = settings.set_username(u);
        }
        if let Some(p) = &self.password {
            settings = settings.set_password(p);
        }
        ConnectionAddr::Tcp(host.clone(), *port)
            .into_connection_info()
            .expect("a TCP address is always a connection info")
            .set_redis_settings(settings)
    }

    /// The current master's address: asks every sentinel at once, then
    /// checks the chosen node's ROLE through `data` (the data nodes'
    /// settings, with the master's address put in).
    pub async fn resolve(&self, data: &ConnectionInfo) -> Result<ConnectionInfo, ResolveError> {
        let answers = join_all(self.addrs.iter().map(|a| self.ask(a))).await;
        let mut reason = String::from("no sentinel given");
        let (mut reached, mut known) = (0, false);
        let mut candidates = Vec::new();
        for answer in answers {
            match answer {
                Answer::Unreachable(why) => reason = why,
                Answer::Unknown => reached += 1,
                Answer::Known(c) => {
                    (reached, known) = (reached + 1, true);
                    candidates.extend(c);
                }
            }
        }
        if reached == 0 {
            return Err(ResolveError::Unreachable {
                addrs: self.addrs_text(),
                reason,
            });
        }
        if !known {
            return Err(ResolveError::UnknownMaster {
                name: self.master_name.clone(),
                addrs: self.addrs_text(),
            });
        }
        // The newest configuration wins; each address is checked once.
        candidates.sort_by(|a, b| (b.epoch, &a.host, a.port).cmp(&(a.epoch, &b.host, b.port)));
        candidates.dedup_by(|a, b| (&a.host, a.port) == (&b.host, b.port));
        for c in candidates {
            let info = with_addr(data, &c.host, c.port);
            if is_master(&info).await {
                return Ok(info);
            }
        }
        Err(ResolveError::NoMaster {
            name: self.master_name.clone(),
            addrs: self.addrs_text(),
        })
    }

    /// One sentinel's answer about our master.
    async fn ask(&self, addr: &(String, u16)) -> Answer {
        let info = self.info(addr);
        let asked = async {
            let mut conn = connect(&info).await?;
            redis::cmd("SENTINEL")
                .arg("MASTER")
                .arg(&self.master_name)
                .query_async::<Value>(&mut conn)
                .await
        };
        match tokio::time::timeout(ASK_TIMEOUT, asked).await {
            Err(_) => Answer::Unreachable(format!("{}:{} did not answer in time", addr.0, addr.1)),
            Ok(Err(e)) if e.to_string().contains("No such master") => Answer::Unknown,
            Ok(Err(e)) => Answer::Unreachable(format!("{}:{}: {e}", addr.0, addr.1)),
            Ok(Ok(reply)) => Answer::Known(candidate(reply)),
        }
    }
}

/// What one sentinel said about our master.
enum Answer {
    /// It did not answer (the reason, for the message).
    Unreachable(String),
    /// It does not monitor a master of that name.
    Unknown,
    /// It monitors it: the master, unless it sees it down or failing over.
    Known(Option<Candidate>),
}

/// The master entry of a `SENTINEL MASTER` reply, unless the sentinel sees
/// it down or in a failover (the failover leader keeps naming the old
/// master until the failover ends).
fn candidate(reply: Value) -> Option<Candidate> {
    let fields: Vec<String> = redis::from_redis_value(reply).ok()?;
    let get = |name: &str| {
        fields
            .chunks(2)
            .find(|kv| kv.len() == 2 && kv[0] == name)
            .map(|kv| kv[1].as_str())
    };
    let flags = get("flags")?;
    let usable = flags.split(',').any(|f| f == "master")
        && !flags
            .split(',')
            .any(|f| matches!(f, "s_down" | "o_down" | "failover_in_progress"));
    usable.then(|| Candidate {
        host: get("ip").unwrap_or_default().to_string(),
        port: get("port").and_then(|p| p.parse().ok()).unwrap_or(0),
        epoch: get("config-epoch")
            .and_then(|e| e.parse().ok())
            .unwrap_or(0),
    })
}

/// `data` with its address replaced by `host:port` (TLS kept).
pub fn with_addr(data: &ConnectionInfo, host: &str, port: u16) -> ConnectionInfo {
    let addr = match data.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host: host.into(),
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host.into(), port),
    };
    data.clone().set_addr(addr)
}

/// A connection with our own timeouts: redis-rs would otherwise end any
/// reply after 500 ms, which a large but healthy reply can take.
pub async fn connect(info: &ConnectionInfo) -> redis::RedisResult<MultiplexedConnection> {
    let client = redis::Client::open(info.clone())?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(ASK_TIMEOUT))
        .set_response_timeout(None);
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// Whether the node at `info` answers `ROLE` as a master.
pub async fn is_master(info: &ConnectionInfo) -> bool {
    role(info).await.as_deref() == Some("master")
}

/// What the node at `info` answers to `ROLE` (`master`, `slave`, ...);
/// `None` if it does not answer in time.
pub async fn role(info: &ConnectionInfo) -> Option<String> {
    let role = async {
        let mut conn = connect(info).await?;
        redis::cmd("ROLE").query_async::<Value>(&mut conn).await
    };
    match tokio::time::timeout(ASK_TIMEOUT, role).await {
        Ok(Ok(Value::Array(items))) => match items.into_iter().next() {
            Some(Value::BulkString(b)) => String::from_utf8(b).ok(),
            _ => None,
        },
        _ => None,
    }
}

/// Listens for `+switch-master` of our master on every sentinel until
/// `stop`, calling `switched` for each (several sentinels announce the same
/// switch; the caller must not mind).
pub async fn watch_switches(
    sentinels: Sentinels,
    switched: impl Fn(&str) + Clone + Send + 'static,
    stop: CancellationToken,
) {
    let tasks = sentinels.addrs.iter().map(|addr| {
        let (sentinels, info) = (sentinels.clone(), sentinels.info(addr));
        let (switched, stop) = (switched.clone(), stop.clone());
        tokio::spawn(async move { listen(&sentinels, info, switched, stop).await })
    });
    join_all(tasks).await;
}

/// One sentinel's `+switch-master` channel, resubscribed after failures.
async fn listen(
    sentinels: &Sentinels,
    info: ConnectionInfo,
    switched: impl Fn(&str),
    stop: CancellationToken,
) {
    let mut attempt = 0;
    loop {
        let subscribed = async {
            let mut pubsub = redis::Client::open(info.clone())?
                .get_async_pubsub()
                .await?;
            pubsub.subscribe("+switch-master").await?;
            redis::RedisResult::Ok(pubsub)
        };
        let pubsub = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(ASK_TIMEOUT, subscribed) => r,
        };
        if let Ok(Ok(pubsub)) = pubsub {
            attempt = 0;
            let mut messages = pubsub.into_on_message();
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => return,
                    m = messages.next() => m,
                };
                let Some(msg) = msg else { break };
                // "<name> <old-ip> <old-port> <new-ip> <new-port>"
                let payload: String = msg.get_payload().unwrap_or_default();
                let mut parts = payload.split_whitespace();
                if parts.next() == Some(sentinels.master_name.as_str()) {
                    switched(&payload);
                }
            }
        }
        let wait = BACKOFF.delay(attempt);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(fields: &[(&str, &str)]) -> Value {
        Value::Array(
            fields
                .iter()
                .flat_map(|(k, v)| [k, v])
                .map(|s| Value::BulkString(s.as_bytes().to_vec()))
                .collect(),
        )
    }

    #[test]
    fn a_master_that_is_down_or_failing_over_is_no_candidate() {
        let up = reply(&[
            ("ip", "10.0.0.1"),
            ("port", "6380"),
            ("flags", "master"),
            ("config-epoch", "7"),
        ]);
        assert_eq!(
            candidate(up),
            Some(Candidate {
                host: "10.0.0.1".into(),
                port: 6380,
                epoch: 7
            })
        );
        for flags in [
            "master,s_down",
            "master,o_down",
            "master,failover_in_progress",
        ] {
            let r = reply(&[("ip", "h"), ("port", "1"), ("flags", flags)]);
            assert_eq!(candidate(r), None, "{flags}");
        }
    }
}
