//! Benchmark: how late NODE_EXPIRED arrives after a node's deadline, with
//! 10,000 other live nodes holding TTLs.
//!
//! Starts its own `redis-server` on a free port (127.0.0.1) and a server in
//! this process, registers the 10,000 long-lived nodes and 200 short-lived
//! probe nodes (3 s TTL, deadlines spread over a second), watches the probe
//! service and measures, for each NODE_EXPIRED, the time from the node's
//! `expires_at` to the event's arrival.
//!
//! ```sh
//! cargo run --release --example expiry_lag
//! ```

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use discovered::proto::v1::discovery_client::DiscoveryClient;
use discovered::proto::v1::*;
use discovered::server::{Defaults, RunningServer};
use discovered::store::{RedisConfig, RedisRegistry, Registry};

const LIVE_NODES: usize = 10_000;
const PROBES: usize = 200;
const PROBE_TTL_SECONDS: i64 = 3;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn node(service: &str, name: String, ttl: i64) -> RegisterNodeRequest {
    RegisterNodeRequest {
        service_name: service.into(),
        node_name: name,
        ip: vec!["10.1.2.3".into()],
        port: 8080,
        ttl_seconds: Some(ttl),
        ..Default::default()
    }
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut redis = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start redis-server (apt-get install redis-server): {e}"))?;
    let result = run(port).await;
    let _ = redis.kill();
    let _ = redis.wait();
    result
}

async fn run(port: u16) -> Result<(), Box<dyn std::error::Error>> {
    let url = format!("redis://127.0.0.1:{port}/");
    let mut registry = None;
    for _ in 0..100 {
        let r = RedisRegistry::new(RedisConfig::from_url(&url, "discovered")?)?;
        if r.check().await.is_ok() {
            registry = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let registry: Arc<dyn Registry> = Arc::new(registry.ok_or("redis-server did not answer")?);
    let server =
        RunningServer::start(registry, Defaults::default(), "127.0.0.1:0".parse()?).await?;
    let client = DiscoveryClient::connect(server.url()).await?;

    println!("registering {LIVE_NODES} live nodes with a 1 h TTL ...");
    let mut tasks = Vec::new();
    for w in 0..16 {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..LIVE_NODES).step_by(16) {
                c.register_node(node("bulk", format!("bulk-{i}"), 3600))
                    .await?;
            }
            Ok::<_, tonic::Status>(())
        }));
    }
    for t in tasks {
        t.await??;
    }

    let mut stream = client
        .clone()
        .watch_service(WatchServiceRequest {
            service_name: "probe".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let first = stream.message().await?.ok_or("stream ended")?;
    assert_eq!(first.r#type, EventType::Synced as i32);

    println!(
        "registering {PROBES} probe nodes with a {PROBE_TTL_SECONDS} s TTL, spread over 1 s ..."
    );
    let mut c = client.clone();
    for i in 0..PROBES {
        c.register_node(node("probe", format!("probe-{i}"), PROBE_TTL_SECONDS))
            .await?;
        tokio::time::sleep(Duration::from_millis(1000 / PROBES as u64)).await;
    }

    let mut lags = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while lags.len() < PROBES {
        let Ok(msg) = tokio::time::timeout_at(deadline, stream.message()).await else {
            break;
        };
        let event = msg?.ok_or("stream ended")?;
        if event.r#type != EventType::NodeExpired as i32 {
            continue;
        }
        let arrived = now_ms();
        let expires = event
            .node
            .and_then(|n| n.expires_at)
            .map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
            .ok_or("NODE_EXPIRED without expires_at")?;
        lags.push(arrived - expires);
    }
    lags.sort_unstable();
    if lags.is_empty() {
        return Err("no NODE_EXPIRED event within 30 s".into());
    }
    println!(
        "NODE_EXPIRED within 30 s: {} of {PROBES}; lag after the deadline p50 {} ms, p99 {} ms, max {} ms ({} other live nodes with TTLs)",
        lags.len(),
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags[lags.len() - 1],
        LIVE_NODES,
    );
    server.stop().await?;
    Ok(())
}
