//! Server memory per watch stream (issue 11; see bench/README.md).
//!
//! `cargo bench --bench streams`. Starts the release `discovered serve`
//! (in-memory store, 127.0.0.1, a free port, `--max-watch-streams 50000`)
//! and reads its VmRSS from /proc/<pid>/status:
//!
//! 1. baseline, after a few warm-up calls;
//! 2. with `STREAMS_OPEN` (20,000) WatchService streams open, each past its
//!    SYNCED, at most 200 per connection (the server's default
//!    `--max-concurrent-streams`), one `Endpoint::connect` per connection;
//! 3. 5 s after dropping all of them and their connections;
//! 4. on a fresh server, with `STREAMS_FROZEN` (1,000) streams that stop
//!    reading after SYNCED (64 KiB stream windows), after `STREAMS_ROUNDS`
//!    (25) rounds of 200 re-registered nodes with 1 KiB of metadata each
//!    in the watched service; then they read again and the RESYNCs they
//!    see are counted.
//!
//! `STREAMS_BIN` runs another build of `discovered` (allocator variants);
//! `STREAMS_LABEL` names the summary row. The server inherits the
//! environment (e.g. `MALLOC_ARENA_MAX`) except `DISCOVERED_*`, and is
//! killed by PID when done, also on panic.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use discovered::proto::v1::discovery_client::DiscoveryClient;
use discovered::proto::v1::{EventType, RegisterNodeRequest, WatchEvent, WatchServiceRequest};
use futures::future::join_all;
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout};
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

/// The stub on one connection.
type Stub = DiscoveryClient<Channel>;
/// Errors as messages.
type Res<T> = Result<T, String>;

/// Streams per connection: the server's default `--max-concurrent-streams`.
const PER_CONN: usize = 200;
/// Nodes re-registered in the frozen streams' service each round.
const NODES: usize = 200;
/// Metadata per node, bytes.
const META: usize = 1024;
/// The service the frozen streams watch.
const FROZEN_SVC: &str = "bench-frozen";

/// A count from the environment variable `name`, or `default`.
fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The server process; dropping it kills it by PID.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    /// Starts `discovered serve` on a free port and waits until it answers.
    async fn start() -> Res<Self> {
        let bin = binary();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let mut cmd = Command::new(&bin);
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")]);
        cmd.args(["--max-watch-streams", "50000"]);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("DISCOVERED_")) {
            cmd.env_remove(k);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {bin}: {e}"))?;
        let server = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while connect(&server.url, false).await.is_err() {
            if Instant::now() > deadline {
                return Err("the server did not listen within 10 s".into());
            }
            sleep(Duration::from_millis(50)).await;
        }
        Ok(server)
    }

    /// The server's resident set, KiB (VmRSS).
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the server has exited");
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .expect("VmRSS");
        line.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in kB")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A connection of its own; `frozen` ones have small HTTP/2 windows, so a
/// stream that is not read stops the server after 64 KiB.
async fn connect(url: &str, frozen: bool) -> Res<Stub> {
    let mut ep = Endpoint::from_shared(url.to_string()).map_err(|e| e.to_string())?;
    if frozen {
        ep = ep
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(1 << 20);
    }
    let channel = ep
        .connect()
        .await
        .map_err(|e| format!("connect {url}: {e}"))?;
    Ok(DiscoveryClient::new(channel).max_decoding_message_size(64 << 20))
}

/// A watch of `service`, read up to and including its SYNCED.
async fn watch_synced(mut stub: Stub, service: &str) -> Res<Streaming<WatchEvent>> {
    let req = WatchServiceRequest {
        service_name: service.into(),
        ..Default::default()
    };
    let mut stream = stub
        .watch_service(req)
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    while let Some(e) = stream.message().await.map_err(|e| e.to_string())? {
        if e.r#type() == EventType::Synced {
            return Ok(stream);
        }
    }
    Err("the stream ended before SYNCED".into())
}

/// `total` synced watches of `service` over connections of at most
/// `per_conn` streams each, with the connections (dropped together).
async fn open_many(
    url: &str,
    total: usize,
    per_conn: usize,
    frozen: bool,
    service: &str,
) -> Res<Vec<(Stub, Vec<Streaming<WatchEvent>>)>> {
    let mut set = JoinSet::new();
    for c in 0..total.div_ceil(per_conn) {
        let n = per_conn.min(total - c * per_conn);
        let (url, service) = (url.to_string(), service.to_string());
        set.spawn(async move {
            let stub = connect(&url, frozen).await?;
            let opens = (0..n).map(|_| watch_synced(stub.clone(), &service));
            let streams: Res<Vec<_>> = join_all(opens).await.into_iter().collect();
            Ok::<_, String>((stub, streams?))
        });
    }
    let mut conns = Vec::new();
    while let Some(r) = set.join_next().await {
        conns.push(r.map_err(|e| e.to_string())??);
    }
    Ok(conns)
}

/// Registers node `i` of `service` with [`META`] bytes of metadata that
/// change with `round` (so each call is a NODE_UPDATED).
async fn register(mut stub: Stub, service: &str, i: usize, round: usize) -> Res<()> {
    let blob = format!("{round:08}").repeat(META / 8);
    let req = RegisterNodeRequest {
        service_name: service.into(),
        node_name: format!("n{i:04}"),
        ip: vec!["10.0.0.1".into()],
        port: 8080,
        metadata: [("blob".to_string(), blob)].into(),
        ttl_seconds: Some(0),
        ..Default::default()
    };
    let answer = stub.register_node(req).await;
    answer.map(drop).map_err(|e| e.to_string())
}

/// Phase 1: RSS after a few warm-up calls (a node, a watch, a read).
async fn baseline(server: &Server, stub: &Stub) -> Res<u64> {
    for i in 0..5 {
        register(stub.clone(), "bench-idle", i, 0).await?;
    }
    drop(watch_synced(stub.clone(), "bench-idle").await?);
    sleep(Duration::from_secs(1)).await;
    Ok(server.rss_kib())
}

/// Phase 2 and 3: RSS with `n` open streams, then 5 s after closing them.
async fn open_and_close(server: &Server, n: usize) -> Res<(u64, u64, f64)> {
    let t = Instant::now();
    let conns = open_many(&server.url, n, PER_CONN, false, "bench-idle").await?;
    let secs = t.elapsed().as_secs_f64();
    sleep(Duration::from_secs(2)).await;
    let open = server.rss_kib();
    drop(conns);
    sleep(Duration::from_secs(5)).await;
    Ok((open, server.rss_kib(), secs))
}

/// What the frozen streams cost and saw.
struct Frozen {
    before: u64,
    during: u64,
    resyncs: usize,
    events: usize,
    after: u64,
}

/// Phase 4, on a fresh server (so that memory kept from phase 2 does not
/// hide the growth): `m` streams that stop reading after SYNCED while
/// `rounds` x [`NODES`] writes go to their service; then they read again
/// until idle.
async fn frozen(m: usize, rounds: usize) -> Res<Frozen> {
    let server = Server::start().await?;
    let stub = connect(&server.url, false).await?;
    baseline(&server, &stub).await?;
    let conns = open_many(&server.url, m, 100, true, FROZEN_SVC).await?;
    sleep(Duration::from_secs(2)).await;
    let before = server.rss_kib();
    for round in 0..rounds {
        let writes = (0..NODES).map(|i| register(stub.clone(), FROZEN_SVC, i, round + 1));
        let done: Res<Vec<()>> = join_all(writes).await.into_iter().collect();
        done?;
    }
    sleep(Duration::from_secs(5)).await;
    let during = server.rss_kib();
    let mut readers = JoinSet::new();
    for mut stream in conns.into_iter().flat_map(|(_, s)| s) {
        readers.spawn(async move {
            let (mut resync, mut events) = (false, 0);
            let idle = Duration::from_secs(3);
            while let Ok(Ok(Some(e))) = timeout(idle, stream.message()).await {
                resync |= e.r#type() == EventType::Resync;
                events += 1;
            }
            (resync, events)
        });
    }
    let (mut resyncs, mut events) = (0, 0);
    while let Some(r) = readers.join_next().await {
        let (resync, n) = r.map_err(|e| e.to_string())?;
        resyncs += usize::from(resync);
        events += n;
    }
    sleep(Duration::from_secs(5)).await;
    let after = server.rss_kib();
    Ok(Frozen {
        before,
        during,
        resyncs,
        events,
        after,
    })
}

/// `kib` as MiB with one decimal.
fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// KiB per item of the growth from `from` to `to`.
fn per(from: u64, to: u64, n: usize) -> f64 {
    (to as f64 - from as f64) / n as f64
}

/// The output of `program args`, trimmed, or "?".
fn output(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or("?".into())
}

/// The `discovered` build under test: `STREAMS_BIN`, or this package's.
fn binary() -> String {
    std::env::var("STREAMS_BIN").unwrap_or(env!("CARGO_BIN_EXE_discovered").into())
}

/// Prints one `| measure | value |` row.
fn row(measure: String, value: String) {
    println!("| {measure} | {value} |");
}

async fn run() -> Res<()> {
    let n = knob("STREAMS_OPEN", 20_000);
    let m = knob("STREAMS_FROZEN", 1_000);
    let rounds = knob("STREAMS_ROUNDS", 25);
    let server = Server::start().await?;
    let (version, commit) = (
        output(&binary(), &["--version"]),
        output("git", &["rev-parse", "--short", "HEAD"]),
    );
    println!("# watch-stream memory of {version}, commit {commit}");
    println!(
        "{}, server pid {}\n",
        output("date", &["-u", "+%F %T UTC"]),
        server.child.id()
    );
    // Connections are few (N / 200 + M / 100): no need to raise RLIMIT_NOFILE.
    let stub = connect(&server.url, false).await?;

    let base = baseline(&server, &stub).await?;
    let (open, closed, secs) = open_and_close(&server, n).await?;
    drop(server);
    let f = frozen(m, rounds).await?;

    let returned = 100.0 * per(closed, open, 1) / per(base, open, 1);
    let (kib_open, kib_frozen) = (per(base, open, n), per(f.before, f.during, m));
    println!("| measure | value |\n| --- | --- |");
    row("baseline RSS (after warm-up)".into(), mib(base));
    row(
        format!("RSS with {n} open streams (opened in {secs:.1} s)"),
        mib(open),
    );
    row("per open stream".into(), format!("{kib_open:.1} KiB"));
    let closed_text = format!("{} ({returned:.0}% of the growth returned)", mib(closed));
    row(
        format!("RSS after {n} streams opened and closed (+5 s)"),
        closed_text,
    );
    row(
        format!("RSS of a fresh server with {m} frozen streams, before the writes"),
        mib(f.before),
    );
    row(
        format!(
            "RSS after {} KiB offered to each frozen stream",
            rounds * NODES * META / 1024
        ),
        mib(f.during),
    );
    row("per frozen stream".into(), format!("{kib_frozen:.1} KiB"));
    let resyncs = format!("{} of {m} ({} events read)", f.resyncs, f.events);
    row(
        "frozen streams that saw RESYNC once reading again".into(),
        resyncs,
    );
    row(
        "RSS after the frozen streams read and closed (+5 s)".into(),
        mib(f.after),
    );
    let label = std::env::var("STREAMS_LABEL").unwrap_or("this build".into());
    let (base, closed, after) = (mib(base), mib(closed), mib(f.after));
    println!(
        "\nsummary | {label} | {base} | {kib_open:.1} KiB | {closed} ({returned:.0}%) | {kib_frozen:.1} KiB | {after} |"
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    match rt.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("streams bench failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
