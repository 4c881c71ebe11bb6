//! The support kit of the integration tests: real `redis-server`
//! processes on free ports, killed on drop; in-process `discovered` servers
//! reached through the generated gRPC client; the real binary as a child
//! process; and one way to wait for anything ([`WAIT`], [`eventually`],
//! [`within`], [`wait_past`]).
//!
//! - [`requests`]: request builders with every field set.
//! - [`calls`]: the gRPC calls as tests make them (health too), and status
//!   checks.
//! - [`watch`]: [`Watch`], a watch stream whose every event is checked.
//! - [`pki`]: certificates and PEM files for the TLS tests.
//! - [`sentinel`]: [`SentinelFixture`], a master, two replicas and three
//!   sentinels.
//! - [`cluster`]: [`ClusterFixture`], a Redis Cluster of three masters with
//!   a replica each.
//! - [`faults`]: watchers checked against GetNodes after a fault, and
//!   [`Findings`], the fault tests' report.
//! - [`split`]: [`SplitProxy`], writes to one server and reads to another.
//! - [`tls_redis`]: [`TlsRedis`], a TLS-only Redis with an ACL user.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use discovered::model::ServiceKey;
use discovered::proto::v1::discovery_client::DiscoveryClient;
use discovered::server::{Defaults, RunningServer, Settings};
use discovered::store::redis::Keys;
use discovered::store::{Hub, MemoryRegistry, RedisConfig, RedisRegistry, Registry};
use tonic::transport::Channel;

pub mod calls;
pub mod cluster;
pub mod faults;
pub mod pki;
pub mod requests;
pub mod sentinel;
pub mod split;
pub mod tls_redis;
pub mod watch;

pub use calls::*;
pub use cluster::ClusterFixture;
pub use faults::*;
pub use requests::*;
pub use sentinel::*;
pub use split::SplitProxy;
pub use tls_redis::*;
pub use watch::*;

/// How long anything a test waits for may take: an event, a state, a call,
/// a process. Every wait ends as soon as what it waits for is there, so
/// this bounds how long a failing test hangs; it is also the bound that
/// tells a slow answer (a call stuck on a dead Redis, an expiry left to
/// Redis's own lazy sampling, which lags by seconds) from a right one, so
/// it stays at 10 s. Clock waits ([`wait_past`]) are bounded by their
/// deadline instead.
pub const WAIT: Duration = Duration::from_secs(10);

/// Finds `redis-server`, or fails the test saying how to get it.
pub fn redis_server_binary() -> PathBuf {
    find_binary("redis-server", "these tests need a real Redis")
}

/// Finds the Debian package's binary `name` on PATH (or in /usr/bin,
/// /usr/sbin), or fails the test saying why it is needed (`why`) and how to
/// install it (the package has the binary's name).
pub fn find_binary(name: &str, why: &str) -> PathBuf {
    find_binary_in(name, name, why)
}

/// [`find_binary`] for a binary of Debian package `package`.
pub fn find_binary_in(name: &str, package: &str, why: &str) -> PathBuf {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    for dir in candidates
        .iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")].iter())
    {
        let path = dir.join(name);
        if path.is_file() {
            return path;
        }
    }
    panic!(
        "{name} not found on PATH: {why}. Install it with `apt-get install {package}` \
         (./scripts/test does this for you)"
    );
}

/// A free TCP port on 127.0.0.1 (free when asked; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// A `redis-server` child process on 127.0.0.1, without persistence. Killed
/// when dropped, also when the test panics.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    extra_args: Vec<String>,
}

impl RedisServer {
    /// Starts Redis on a free port and waits until it answers.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts Redis with extra `--name value` arguments (e.g. requirepass).
    pub fn start_with(extra_args: &[&str]) -> Self {
        let mut server = Self {
            port: free_port(),
            child: None,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new(redis_server_binary())
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--protected-mode", "no"])
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not start within {WAIT:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:port/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The process id of the running Redis (None once killed).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is running (not killed by the test).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills Redis (SIGKILL, like a crash: `Child::kill` sends SIGKILL on
    /// Unix) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to the Redis process: STOP
    /// freezes it without closing a single connection, as a partition would.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis is running").id();
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{sig} {pid} failed");
    }

    /// Starts Redis again on the same port, empty (no persistence).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// A plain (non-pooled) connection for checking what is stored.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to test redis")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes `count` nodes (`n1`, `n2`...) of `group`/`service` straight into
/// `redis` (the scripts' own record layout, see `lua/record.lua`), with the
/// listings that make the service and its group known, in one script:
/// registering them one call at a time would take most of a test's time.
pub async fn seed_nodes(redis: &RedisServer, group: &str, service: &str, count: usize) {
    let keys = Keys::new("discovered");
    let key = ServiceKey::new(group, service);
    // No reply bound: tens of thousands of nodes take longer than
    // redis-rs's default of 500 ms on a busy machine.
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let mut conn = redis::Client::open(redis.url())
        .expect("redis url")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect to test redis");
    let fill = r#"
        local now = ARGV[1]
        for i = 1, tonumber(ARGV[2]) do
          redis.call('HSET', KEYS[1], 'n' .. i, '{"registered_at":' .. now .. ',"updated_at":' .. now
            .. ',"expires_at":null,"record":{"instance_id":"i' .. i .. '","ip":["10.1.0.1"],"port":8080,'
            .. '"fqdn":"host-' .. i .. '.example.org","os":"Debian GNU/Linux 12","metadata":{"zone":"a"}}}')
        end
        redis.call('ZADD', KEYS[2], 0, ARGV[3])
        redis.call('ZADD', KEYS[3], 0, ARGV[4])
        redis.call('SET', KEYS[4], now * 1000)
        redis.call('SET', KEYS[5], '1')
    "#;
    let _: () = redis::Script::new(fill)
        .key(keys.nodes(&key))
        .key(keys.groups())
        .key(keys.group_services(group))
        .key(keys.revision(&key))
        .key(keys.listed(&key))
        .arg(now_ms())
        .arg(count)
        .arg(group)
        .arg(service)
        .invoke_async(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("seeding {count} nodes of {group}/{service}: {e}"));
}

/// A registry of its own through `url`, checked to answer: another
/// server process, as far as Redis can tell (its own connections).
/// `what` names the deployment in a failure.
pub async fn registry_at(url: &str, what: &str) -> RedisRegistry {
    let config = RedisConfig::from_url(url, "discovered")
        .unwrap_or_else(|e| panic!("RedisConfig::from_url({url:?}): {e}"));
    let registry = RedisRegistry::new(config).expect("redis registry");
    registry
        .check()
        .await
        .unwrap_or_else(|e| panic!("the {what} answers through {url}: {e}"));
    registry
}

/// A registry of its own on `redis`, checked to answer.
pub async fn redis_registry(redis: &RedisServer) -> RedisRegistry {
    registry_at(&redis.url(), "test redis").await
}

/// A registry of its own on the Sentinel deployment `fixture`, through
/// its `redis+sentinel://` URL, checked to answer.
pub async fn sentinel_registry(fixture: &SentinelFixture) -> RedisRegistry {
    registry_at(&fixture.url(), "Sentinel deployment").await
}

/// A registry of its own on the Redis Cluster `fixture`, through its
/// `redis+cluster://` URL with every node as a seed, checked to answer.
pub async fn cluster_registry(fixture: &ClusterFixture) -> RedisRegistry {
    registry_at(&fixture.url(), "Redis Cluster").await
}

/// The `discovered` binary of this build.
pub const BIN: &str = env!("CARGO_BIN_EXE_discovered");

/// Splits a command line into arguments at whitespace. An argument that
/// contains spaces is written in single quotes: `--description 'Takes
/// money'`.
pub fn argv(line: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut rest = line.trim_start();
    while !rest.is_empty() {
        let (arg, after) = match rest.strip_prefix('\'') {
            Some(quoted) => quoted
                .split_once('\'')
                .unwrap_or_else(|| panic!("unclosed quote in {line:?}")),
            None => rest.split_at(rest.find(char::is_whitespace).unwrap_or(rest.len())),
        };
        args.push(arg.to_string());
        rest = after.trim_start();
    }
    args
}

/// Keeps the developer's environment (`RUST_LOG`, `DISCOVERED_*`) from
/// configuring a `discovered` child process.
pub fn scrub_env(cmd: &mut Command) -> &mut Command {
    cmd.env_remove("RUST_LOG");
    for (k, _) in std::env::vars() {
        if k.starts_with("DISCOVERED_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// A `discovered` child process, killed if the test ends early.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    /// Runs `discovered` with the arguments of `line` (see [`argv`]) and
    /// the extra environment `envs`.
    pub fn spawn(line: &str, envs: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(BIN);
        scrub_env(&mut cmd)
            .args(argv(line))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Self {
            child: cmd.spawn().expect("spawn discovered"),
        }
    }

    /// Waits for the process to exit (at most [`WAIT`]) and returns its
    /// status and stderr.
    pub fn wait(mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "discovered did not exit within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        (status, stderr)
    }

    /// Like [`Proc::wait`], but lets the test's own runtime (its gRPC
    /// clients) keep running meanwhile, as a real client would.
    pub async fn wait_async(self) -> (ExitStatus, String) {
        tokio::task::spawn_blocking(move || self.wait())
            .await
            .expect("wait task")
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }
}

/// Checks that `discovered serve ...` exited 1 with one line on stderr,
/// starting `error: `, that contains each of `needles`; and that stderr
/// contains none of `unwanted` (e.g. a panic's words).
#[track_caller]
pub fn assert_one_error_line(
    what: &str,
    (status, stderr): (ExitStatus, String),
    needles: &[&str],
    unwanted: &[&str],
) {
    assert_eq!(
        status.code(),
        Some(1),
        "{what}: exit status; stderr: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what}: one line on stderr, got {stderr:?}");
    assert!(
        lines[0].starts_with("error: "),
        "{what}: the line starts with `error: `: {stderr:?}"
    );
    for n in needles {
        assert!(
            lines[0].contains(n),
            "{what}: the line names {n}: {stderr:?}"
        );
    }
    assert!(
        !unwanted.iter().any(|u| stderr.contains(u)),
        "{what}: {stderr}"
    );
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which store a conformance test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Redis,
    /// A [`SentinelFixture`], reached through its `redis+sentinel://` URL.
    Sentinel,
    /// A [`ClusterFixture`] shared by two servers, each with a registry of
    /// its own: the client's writes go to one, its reads and watches to the
    /// other (see [`SplitProxy`]).
    Cluster,
}

/// A client on a connection of its own to the server at `url`: for tests
/// that need streams on separate HTTP/2 connections (flow control and the
/// concurrent-stream limit are per connection).
pub async fn connect(url: &str) -> Client {
    let channel = Channel::from_shared(url.to_string())
        .expect("server url")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    Client::new(channel)
}

/// An in-process `discovered` server on 127.0.0.1 with a client, and the
/// Redis behind it when the backend is Redis.
///
/// On [`Backend::Cluster`] these are two servers behind a [`SplitProxy`]:
/// `server` is the one that takes the writes, `split` holds the proxy (the
/// client's and `channel`'s end) and the reading server, and `hub` is the
/// reading server's, where the watch streams are.
pub struct TestServer {
    pub server: RunningServer,
    pub client: DiscoveryClient<Channel>,
    pub channel: Channel,
    pub redis: Option<RedisServer>,
    /// The Sentinel deployment behind the server, for
    /// [`Backend::Sentinel`].
    pub sentinel: Option<SentinelFixture>,
    /// The registry's fan-out: counts the open watch streams.
    pub hub: Hub,
    /// The proxy and the reading server, for [`Backend::Cluster`].
    pub split: Option<Split>,
    /// The Redis Cluster behind both servers, for [`Backend::Cluster`];
    /// last, so the servers stop before their Redis does.
    pub cluster: Option<ClusterFixture>,
}

/// The second server of a [`Backend::Cluster`] test server, and the proxy
/// in front of both.
pub struct Split {
    /// Forwards the client's writes to the writing server and the rest to
    /// `reader`.
    pub proxy: SplitProxy,
    /// The server that answers reads and watches.
    pub reader: RunningServer,
    /// The writing server's fan-out (no watch stream should land there).
    pub writer_hub: Hub,
}

impl TestServer {
    /// A server with default settings on `backend`.
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, Defaults::default()).await
    }

    /// A server with `defaults` on `backend`.
    pub async fn start_with(backend: Backend, defaults: Defaults) -> Self {
        let (store, redis): ((Arc<dyn Registry>, Hub), _) = match backend {
            Backend::Memory => {
                let registry = MemoryRegistry::new();
                let hub = registry.hub();
                ((Arc::new(registry), hub), None)
            }
            Backend::Redis => {
                let redis = RedisServer::start();
                let registry = redis_registry(&redis).await;
                let hub = registry.hub();
                ((Arc::new(registry), hub), Some(redis))
            }
            Backend::Sentinel => {
                let fixture = SentinelFixture::start().await;
                let registry = sentinel_registry(&fixture).await;
                let hub = registry.hub();
                let mut t = Self::on((Arc::new(registry), hub), None, defaults).await;
                t.sentinel = Some(fixture);
                return t;
            }
            Backend::Cluster => {
                let settings = Settings {
                    defaults,
                    ..Settings::default()
                };
                return Self::cluster_with(settings).await;
            }
        };
        Self::on(store, redis, defaults).await
    }

    /// A server with default settings and a registry of its own on a
    /// `redis` that other servers share.
    pub async fn sharing(redis: &RedisServer) -> Self {
        let registry = redis_registry(redis).await;
        let hub = registry.hub();
        Self::on((Arc::new(registry), hub), None, Defaults::default()).await
    }

    /// A server over an existing registry.
    pub async fn on(
        (registry, hub): (Arc<dyn Registry>, Hub),
        redis: Option<RedisServer>,
        defaults: Defaults,
    ) -> Self {
        let settings = Settings {
            defaults,
            ..Settings::default()
        };
        Self::on_with((registry, hub), redis, settings).await
    }

    /// Two servers with `settings` on a new [`ClusterFixture`], each with a
    /// registry of its own, behind a [`SplitProxy`] that sends the client's
    /// writes to the first and its reads and watches to the second.
    pub async fn cluster_with(settings: Settings) -> Self {
        let fixture = tokio::task::spawn_blocking(ClusterFixture::start)
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let writer = cluster_registry(&fixture).await;
        let reader = cluster_registry(&fixture).await;
        let (writer_hub, hub) = (writer.hub(), reader.hub());
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let server = RunningServer::start_with(Arc::new(writer), settings.clone(), addr)
            .await
            .expect("start the writing server");
        // The reading server answers from Redis on every read: the
        // conformance bodies read right after they write, and a read cache
        // makes a write through another server visible only once its
        // change message arrives (read_cache.rs tests that bound).
        let mut settings = settings;
        settings.limits.read_cache_bytes = 0;
        let reader = RunningServer::start_with(Arc::new(reader), settings, addr)
            .await
            .expect("start the reading server");
        let proxy = SplitProxy::start(
            connect_channel(&server.url()).await,
            connect_channel(&reader.url()).await,
        )
        .await;
        let channel = connect_channel(&proxy.url()).await;
        Self {
            server,
            client: DiscoveryClient::new(channel.clone()),
            channel,
            redis: None,
            sentinel: None,
            hub,
            split: Some(Split {
                proxy,
                reader,
                writer_hub,
            }),
            cluster: Some(fixture),
        }
    }

    /// An in-memory server with every setting given (limits, say).
    pub async fn memory_with(settings: Settings) -> Self {
        let registry = MemoryRegistry::new();
        let hub = registry.hub();
        Self::on_with((Arc::new(registry), hub), None, settings).await
    }

    /// A server over an existing registry, with every setting given.
    pub async fn on_with(
        (registry, hub): (Arc<dyn Registry>, Hub),
        redis: Option<RedisServer>,
        settings: Settings,
    ) -> Self {
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let server = RunningServer::start_with(registry, settings, addr)
            .await
            .expect("start server");
        let channel = connect_channel(&server.url()).await;
        Self {
            server,
            client: DiscoveryClient::new(channel.clone()),
            channel,
            redis,
            sentinel: None,
            hub,
            split: None,
            cluster: None,
        }
    }

    /// The Redis behind the server; panics for the memory backend.
    pub fn redis(&mut self) -> &mut RedisServer {
        self.redis.as_mut().expect("this test server has no Redis")
    }

    /// The Redis Cluster behind the servers; panics for the other
    /// backends.
    pub fn cluster(&mut self) -> &mut ClusterFixture {
        self.cluster
            .as_mut()
            .expect("this test server has no Redis Cluster")
    }

    /// The Sentinel deployment behind the server; panics for the other
    /// backends.
    pub fn sentinel(&mut self) -> &mut SentinelFixture {
        self.sentinel
            .as_mut()
            .expect("this test server has no Sentinel deployment")
    }
}

/// A channel to the plaintext server at `url`, connected.
async fn connect_channel(url: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .expect("url")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to the test server at {url}: {e}"))
}

/// Calls per command since Redis started, from INFO commandstats.
pub async fn command_calls(
    conn: &mut redis::aio::MultiplexedConnection,
) -> std::collections::BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

/// Writes an auth file of `read` tokens at `path`, each `(name, token,
/// extra lines)` (a scope such as `groups = ["shop"]`), by rename, as
/// operators are told to.
pub fn write_read_tokens(path: &std::path::Path, entries: &[(&str, &str, &str)]) {
    let file: String = entries
        .iter()
        .map(|(name, token, extra)| {
            format!(
                "[[token]]\nname = \"{name}\"\nsha256 = \"{}\"\nrole = \"read\"\n{extra}\n",
                discovered::auth::hash_token(token)
            )
        })
        .collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, file).expect("write auth file");
    std::fs::rename(&tmp, path).expect("rename auth file");
}

/// An auth file of `read` tokens (see [`write_read_tokens`]), loaded; the
/// file itself is gone.
pub fn read_tokens(entries: &[(&str, &str, &str)]) -> Arc<discovered::auth::Auth> {
    let dir = TempDir::new("read-tokens");
    let path = dir.0.join("auth.toml");
    write_read_tokens(&path, entries);
    discovered::auth::Auth::load(&path).expect("valid auth file")
}

/// A directory of its own under the system's temporary one, removed on
/// drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new directory whose name says `what`.
    pub fn new(what: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("discovered-{what}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Wall-clock milliseconds since the epoch, as the server counts them.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// A timestamp that must be set, in milliseconds since the epoch.
#[track_caller]
pub fn ms(t: &Option<prost_types::Timestamp>) -> i64 {
    let t = t.as_ref().expect("timestamp should be set");
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

/// Sleeps until the wall clock is past `t` ms (a deadline a test set, so
/// it needs no other bound).
pub async fn wait_past(t: i64) {
    loop {
        let left = t + 1 - now_ms();
        if left <= 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(left as u64)).await;
    }
}

/// Awaits `fut`, or panics saying that `what` did not happen within
/// [`WAIT`]: for a call that must not hang, or an event that must come.
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {WAIT:?}"))
}

/// Polls `check` every 20 ms until it returns `Some`, or panics with
/// `what` after [`WAIT`]. For waiting on time-based behaviour without
/// assuming how fast the machine is.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Generates `mod memory`, `mod redis`, `mod sentinel` and `mod cluster`,
/// each running the listed async test bodies (`async fn name(backend:
/// Backend)`) against its backend, on
/// a multi-threaded runtime as in production: the server's tasks (the Redis
/// subscriber, each stream) run in parallel with the test's clients, so an
/// ordering that only holds when they take turns fails here.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Memory).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Redis).await;
                }
            )*
        }
        mod sentinel {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Sentinel).await;
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Cluster).await;
                }
            )*
        }
    };
}
pub(crate) use conformance;
