//! A RESYNC storm (issue 11): hundreds of watches of a large group take a
//! new snapshot at once. Small calls and the health probe must go on
//! answering while the snapshots are read: a load balancer acting on
//! health must not pull a healthy server during an ordinary RESYNC.

use std::time::{Duration, Instant};

use discovered::proto::v1::*;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::common::*;

/// Nodes of the watched group (one service, `g/big`).
const NODES: usize = 2_000;
/// Watch streams of the whole group.
const WATCHERS: usize = 300;
/// Client connections the streams are spread over (HTTP/2 bounds the
/// concurrent streams of one).
const CHANNELS: usize = 10;
/// How often the prober calls GetNodes and the health poller asks.
const PROBE_EVERY: Duration = Duration::from_millis(20);
/// How long the initial snapshots and the storm may take in all.
const STORM_WAIT: Duration = Duration::from_secs(120);

/// Reads one event of a raw stream, failing on an error or its end.
async fn next_event(stream: &mut tonic::Streaming<WatchEvent>) -> Result<WatchEvent, String> {
    match stream.message().await {
        Ok(Some(e)) => Ok(e),
        Ok(None) => Err("the stream ended".into()),
        Err(s) => Err(format!("the stream failed: {s:?}")),
    }
}

/// Reads INITIAL events up to SYNCED and returns how many there were.
async fn initial_count(stream: &mut tonic::Streaming<WatchEvent>) -> Result<usize, String> {
    let mut count = 0;
    loop {
        let e = next_event(stream).await?;
        match kind(&e) {
            EventType::Initial => count += 1,
            EventType::Synced => return Ok(count),
            other => return Err(format!("{other:?} amid the snapshot: {e:?}")),
        }
    }
}

/// One watch of group `g` (a raw stream: 300 [`Watch`]es would keep every
/// event): its initial snapshot, a `ready` signal, then a RESYNC and the
/// new snapshot, whose size it returns.
async fn watcher(mut client: Client, ready: mpsc::Sender<()>) -> Result<usize, String> {
    let mut stream = client
        .watch_service(WatchServiceRequest {
            service_group: "g".into(),
            service_name: String::new(),
            send_initial: None,
        })
        .await
        .map_err(|s| format!("WatchService failed: {s:?}"))?
        .into_inner();
    let first = initial_count(&mut stream).await?;
    if first != NODES {
        return Err(format!("initial snapshot of {first} nodes"));
    }
    let _ = ready.send(()).await;
    let e = next_event(&mut stream).await?;
    if kind(&e) != EventType::Resync {
        return Err(format!("expected RESYNC, got {e:?}"));
    }
    initial_count(&mut stream).await
}

/// What a probing task saw: its calls, the failed ones, the slowest.
#[derive(Debug, Default)]
struct Probes {
    calls: u32,
    failures: Vec<String>,
    slowest: Duration,
}

impl Probes {
    fn record(&mut self, took: Duration, failure: Option<String>) {
        self.calls += 1;
        self.slowest = self.slowest.max(took);
        self.failures.extend(failure);
    }
}

/// Calls GetNodes of `probe/small` every [`PROBE_EVERY`] until `stop`.
async fn probe_calls(mut client: Client, stop: CancellationToken) -> Probes {
    let mut probes = Probes::default();
    while !stop.is_cancelled() {
        let start = Instant::now();
        let reply = client
            .get_nodes(GetNodesRequest {
                service_group: "probe".into(),
                service_name: "small".into(),
            })
            .await;
        let failure = match reply {
            Ok(r) if r.get_ref().nodes.len() == 1 => None,
            Ok(r) => Some(format!("{} nodes", r.get_ref().nodes.len())),
            Err(s) => Some(format!("{:?}: {}", s.code(), s.message())),
        };
        probes.record(start.elapsed(), failure);
        tokio::time::sleep(PROBE_EVERY).await;
    }
    probes
}

/// Asks the server's health every [`PROBE_EVERY`] until `stop`; any answer
/// but SERVING is a failure.
async fn poll_health(channel: Channel, stop: CancellationToken) -> Probes {
    let mut probes = Probes::default();
    while !stop.is_cancelled() {
        let start = Instant::now();
        let status = health_on(&channel, "").await;
        let failure = (status != Some(ServingStatus::Serving)).then(|| format!("{status:?}"));
        probes.record(start.elapsed(), failure);
        tokio::time::sleep(PROBE_EVERY).await;
    }
    probes
}

/// Opens [`WATCHERS`] watches of `g` over [`CHANNELS`] connections and
/// waits for every initial snapshot.
async fn open_watchers(t: &TestServer) -> Vec<tokio::task::JoinHandle<Result<usize, String>>> {
    let mut clients = Vec::new();
    for _ in 0..CHANNELS {
        clients.push(connect(&t.server.url()).await);
    }
    let (ready_tx, mut ready) = mpsc::channel(WATCHERS);
    let watchers: Vec<_> = (0..WATCHERS)
        .map(|i| tokio::spawn(watcher(clients[i % CHANNELS].clone(), ready_tx.clone())))
        .collect();
    drop(ready_tx);
    within_storm("every initial snapshot", async {
        for _ in 0..WATCHERS {
            ready
                .recv()
                .await
                .expect("a watcher failed before its initial SYNCED");
        }
    })
    .await;
    watchers
}

/// Like [`within`], with the bound a storm of snapshots needs.
async fn within_storm<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STORM_WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {STORM_WAIT:?} waiting for: {what}"))
}

/// Makes every watcher resync: a registry key expiring is a change no
/// change message describes (see `subscriber.rs`).
async fn expire_a_registry_key(redis: &RedisServer) {
    let mut conn = redis.connection().await;
    let key = "discovered:v2:storm-trigger";
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(1)
        .arg("PX")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    // Reading an expired key expires it at once (and sends the event).
    let _: bool = redis::cmd("EXISTS")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_storm_of_large_snapshots_starves_neither_small_calls_nor_health() {
    let mut t = TestServer::start(Backend::Redis).await;
    seed_nodes(t.redis(), "g", "big", NODES).await;
    register_node(&mut t.client, bare_node("probe", "small", "p1", None)).await;
    let watchers = open_watchers(&t).await;

    let stop = CancellationToken::new();
    let calls = tokio::spawn(probe_calls(t.client.clone(), stop.clone()));
    let health = tokio::spawn(poll_health(t.channel.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let storm = Instant::now();
    expire_a_registry_key(t.redis()).await;
    let resynced = within_storm("every watcher's RESYNC and SYNCED", async {
        let mut resynced = Vec::new();
        for w in watchers {
            resynced.push(w.await.expect("watcher task"));
        }
        resynced
    })
    .await;
    let storm = storm.elapsed();
    stop.cancel();
    let calls = calls.await.unwrap();
    let health = health.await.unwrap();
    eprintln!(
        "storm of {WATCHERS} snapshots of {NODES} nodes: {storm:?}; GetNodes: {} calls, {} failed, slowest {:?}; health: {} polls, {} not SERVING, slowest {:?}",
        calls.calls,
        calls.failures.len(),
        calls.slowest,
        health.calls,
        health.failures.len(),
        health.slowest
    );

    let failed: Vec<&String> = resynced.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {WATCHERS} watchers failed; the first: {:?}",
        failed.len(),
        failed.first()
    );
    assert!(
        resynced.iter().all(|r| r.as_ref().ok() == Some(&NODES)),
        "a resync without every node"
    );
    assert!(
        calls.failures.is_empty(),
        "GetNodes failed during the storm: {:?}",
        calls.failures
    );
    assert!(
        health.failures.is_empty(),
        "health was not SERVING during the storm: {:?}",
        health.failures
    );
}
