//! The expiry scenarios: how late the news of many nodes expiring together
//! reaches a watcher.
//!
//! discovered: `nodes` nodes of a fresh service registered in a burst with
//! the same TTL; a WatchService stream on the service records when each
//! node's NODE_EXPIRED arrives, and the lag is that time minus the node's
//! `expires_at` (the server's clock, which is this machine's). etcd: the
//! same number of keys put on one lease granted just before; a Watch on
//! their prefix records each DELETE, and the lag is from the lease's end
//! (its grant plus its TTL). An event that has not arrived `settle` after
//! the last deadline counts as an error.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures::StreamExt;
use tonic::client::Grpc;
use tonic::transport::Channel;

use crate::cpu::CpuWatch;
use crate::driver::Measured;
use crate::fanout::{Target, rss_bytes};
use crate::lean;
use crate::proto::discovered::discovery_client::DiscoveryClient;
use crate::proto::discovered::{EventType, WatchServiceRequest};
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::stats::{Failure, Recorder};
use crate::workload;

/// etcd's event type of a deletion (`mvccpb.Event.EventType.DELETE`).
const ETCD_DELETE: i32 = 1;

/// How one expiry scenario runs.
#[derive(Debug, Clone)]
pub struct ExpiryPlan {
    /// Nodes (keys) that expire together.
    pub nodes: usize,
    /// Their TTL, seconds.
    pub ttl_secs: i64,
    /// Registrations (puts) in flight while they are written.
    pub concurrency: usize,
    /// How long after the last deadline events may still arrive.
    pub settle: Duration,
}

/// Milliseconds since the Unix epoch, now.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A fresh name per run, so that earlier runs leave nothing behind.
fn fresh_service(nodes: usize) -> String {
    format!("bench-expiry-{nodes}-{}", now_ms())
}

/// Runs one expiry scenario against `url`; `server_pid` is the process
/// whose RSS is reported.
pub async fn run(
    target: Target,
    url: &str,
    plan: &ExpiryPlan,
    cpu: &CpuWatch,
    server_pid: Option<u32>,
) -> anyhow::Result<Measured> {
    let channels = workload::connect(url, 4).await?;
    let service = fresh_service(plan.nodes);
    let writing = tokio::time::Instant::now();
    let (deadlines, events) = match target {
        Target::Discovered => discovered(&channels, &service, plan).await?,
        Target::Etcd => etcd(&channels, &service, plan).await?,
    };
    eprintln!(
        "  {} written in {:.2} s, expiring {} s after",
        plan.nodes,
        writing.elapsed().as_secs_f64(),
        plan.ttl_secs
    );
    let last = deadlines.values().copied().max().unwrap_or_else(now_ms);
    // The measured window: from the first deadline to the last event.
    let first = deadlines.values().copied().min().unwrap_or_else(now_ms);
    tokio::time::sleep(Duration::from_millis((first - now_ms()).max(0) as u64)).await;
    let before = cpu.snapshot();
    let started = tokio::time::Instant::now();
    let until = last + plan.settle.as_millis() as i64;
    let arrivals = events.collect(plan.nodes, until).await?;
    let window = started.elapsed();
    let after = cpu.snapshot();
    let rss = server_pid.and_then(rss_bytes);

    let mut recorder = Recorder::default();
    for (name, deadline) in &deadlines {
        match arrivals.get(name) {
            Some(&at) => {
                recorder.record(Duration::from_millis((at - deadline).max(0) as u64), Ok(()))
            }
            None => recorder.record(Duration::ZERO, Err(Failure::BadResponse("event missed"))),
        }
    }
    Ok(Measured {
        summary: recorder.summary(window),
        warmup_errors: 0,
        cpu: cpu.cores(&before, &after, window),
        other_cpu: cpu.others(&before, &after, window),
        rss_bytes: rss,
    })
}

/// Where the expiry events come from: a task that records, per node name,
/// when its event arrived (ms since the epoch).
struct Events {
    task: tokio::task::JoinHandle<anyhow::Result<HashMap<String, i64>>>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Events {
    /// Waits until `want` events arrived or the clock passes `until` (ms
    /// since the epoch); returns what arrived.
    async fn collect(self, want: usize, until: i64) -> anyhow::Result<HashMap<String, i64>> {
        let Events { mut task, stop } = self;
        let wait = Duration::from_millis((until - now_ms()).max(0) as u64);
        match tokio::time::timeout(wait, &mut task).await {
            Ok(done) => done.context("event reader panicked")?,
            Err(_) => {
                let _ = stop.send(());
                let got = task.await.context("event reader panicked")??;
                eprintln!("  {} of {want} expiry events arrived in time", got.len());
                Ok(got)
            }
        }
    }
}

/// Spawns a reader of `stream` that keeps the arrival time of each item
/// `name_of` names, until it has `want` of them or is stopped.
fn read_events<S, T>(
    stream: S,
    want: usize,
    name_of: impl Fn(T) -> Vec<String> + Send + 'static,
) -> Events
where
    S: futures::Stream<Item = Result<T, tonic::Status>> + Send + Unpin + 'static,
    T: Send + 'static,
{
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut stream = stream;
        let mut arrivals = HashMap::with_capacity(want);
        while arrivals.len() < want {
            let item = tokio::select! {
                item = stream.next() => item,
                _ = &mut stopped => break,
            };
            let Some(item) = item else {
                bail!("the watch ended after {} expiry events", arrivals.len());
            };
            let at = now_ms();
            for name in name_of(item.context("watch")?) {
                arrivals.entry(name).or_insert(at);
            }
        }
        Ok(arrivals)
    });
    Events { task, stop }
}

/// discovered: watches the service, registers the nodes; returns each
/// node's `expires_at` and the events' reader.
async fn discovered(
    channels: &[Channel],
    service: &str,
    plan: &ExpiryPlan,
) -> anyhow::Result<(HashMap<String, i64>, Events)> {
    let mut grpc = Grpc::new(channels[0].clone());
    let request = WatchServiceRequest {
        service_group: workload::GROUP.into(),
        service_name: service.into(),
        send_initial: Some(false),
    };
    let mut stream = lean::watch_service::<lean::NamedEvent>(&mut grpc, request)
        .await
        .context("WatchService")?;
    // In place once SYNCED arrives.
    loop {
        let event = stream
            .message()
            .await
            .context("WatchService")?
            .context("the watch ended before SYNCED")?;
        if event.r#type == EventType::Synced as i32 {
            break;
        }
    }
    let events = read_events(stream, plan.nodes, |e: lean::NamedEvent| {
        let expired = e.r#type == EventType::NodeExpired as i32;
        e.node
            .filter(|_| expired)
            .map(|n| n.node_name)
            .into_iter()
            .collect()
    });
    let clients: Vec<_> = channels.iter().cloned().map(DiscoveryClient::new).collect();
    let deadlines = write_all(plan, |i| {
        let mut client = clients[i % clients.len()].clone();
        let request = workload::register_request(service, i as u64, plan.ttl_secs);
        async move {
            let node = client
                .register_node(request)
                .await
                .context("RegisterNode")?
                .into_inner();
            let at = node.expires_at.context("a node without expires_at")?;
            anyhow::Ok((
                node.node_name,
                at.seconds * 1000 + i64::from(at.nanos) / 1_000_000,
            ))
        }
    })
    .await?;
    Ok((deadlines, events))
}

/// etcd: grants a lease, watches the prefix, puts the keys on the lease;
/// returns the lease's end for every key and the events' reader.
async fn etcd(
    channels: &[Channel],
    service: &str,
    plan: &ExpiryPlan,
) -> anyhow::Result<(HashMap<String, i64>, Events)> {
    let prefix = workload::etcd_prefix(service);
    let mut grpc = Grpc::new(channels[0].clone());
    let mut stream = lean::etcd_watch(&mut grpc, &prefix)
        .await
        .context("etcd Watch")?;
    loop {
        let response = stream
            .message()
            .await
            .context("etcd Watch")?
            .context("the watch ended before it was created")?;
        if response.created {
            break;
        }
    }
    let events = read_events(stream, plan.nodes, |r: lean::LeanWatchResponse| {
        r.events
            .into_iter()
            .filter(|e| e.r#type == ETCD_DELETE)
            .filter_map(|e| e.kv)
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect()
    });
    let granted = now_ms();
    let lease = workload::grant_lease(channels[0].clone(), plan.ttl_secs).await?;
    let end = granted + plan.ttl_secs * 1000;
    let clients: Vec<_> = channels.iter().cloned().map(KvClient::new).collect();
    let deadlines = write_all(plan, |i| {
        let mut client = clients[i % clients.len()].clone();
        let request = workload::put_request(service, i as u64, plan.ttl_secs, lease);
        async move {
            let key = String::from_utf8_lossy(&request.key).into_owned();
            client.put(request).await.context("etcd Put")?;
            anyhow::Ok((key, end))
        }
    })
    .await?;
    Ok((deadlines, events))
}

/// Makes `plan.nodes` writes, `plan.concurrency` at a time; each returns
/// what it wrote and its deadline (ms since the epoch). Fails if a deadline
/// passed before the last write returned: every node must be written before
/// any expires.
async fn write_all<F, Fut>(plan: &ExpiryPlan, write: F) -> anyhow::Result<HashMap<String, i64>>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(String, i64)>>,
{
    let written = futures::stream::iter(0..plan.nodes)
        .map(write)
        .buffer_unordered(plan.concurrency)
        .collect::<Vec<_>>()
        .await;
    let deadlines: HashMap<String, i64> = written.into_iter().collect::<anyhow::Result<_>>()?;
    if deadlines.values().any(|&d| d <= now_ms()) {
        bail!(
            "writing {} nodes took longer than their TTL ({} s): raise --expiry-ttl",
            plan.nodes,
            plan.ttl_secs
        );
    }
    Ok(deadlines)
}
