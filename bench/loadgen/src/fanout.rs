//! The fan-out scenarios: how fast one change reaches many watch streams.
//!
//! `streams` watch streams of one service (discovered: WatchService; etcd:
//! one Watch call per stream, each with one watch on the service's key
//! prefix), spread over at least 100 HTTP/2 connections with at most 100
//! streams each. Once every stream is in place (discovered: SYNCED; etcd:
//! `created`), the load generator writes a changed node `writes` times,
//! `spacing` apart (discovered: RegisterNode; etcd: Put), and records for
//! each stream and write the time from sending the write to receiving its
//! event. An event that does not arrive within `settle` after the last
//! write counts as an error. The server's RSS is read with the streams
//! open, after the streams are in place and after the writes (the larger).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Streaming;
use tonic::client::Grpc;
use tonic::transport::Channel;

use crate::cpu::CpuWatch;
use crate::driver::Measured;
use crate::lean;
use crate::proto::discovered::discovery_client::DiscoveryClient;
use crate::proto::discovered::{EventType, WatchServiceRequest};
use crate::proto::etcdserverpb::PutRequest;
use crate::stats::{Failure, Recorder};
use crate::workload;

/// Most streams on one connection.
const STREAMS_PER_CONNECTION: usize = 100;
/// Fewest connections the streams are spread over.
const MIN_CONNECTIONS: usize = 100;

/// How one fan-out scenario runs.
#[derive(Debug, Clone)]
pub struct FanoutPlan {
    /// Watch streams.
    pub streams: usize,
    /// Changes written once every stream is in place.
    pub writes: u64,
    /// Time between two writes.
    pub spacing: Duration,
    /// How long after the last write events may still arrive.
    pub settle: Duration,
    /// How long the streams may take to be in place.
    pub open_timeout: Duration,
}

/// Which system the streams watch.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    Discovered,
    Etcd,
}

/// When each write was sent, in nanoseconds after `base` (0: not yet).
struct Sent {
    base: Instant,
    at: Vec<AtomicU64>,
}

impl Sent {
    fn latency(&self, seq: u64) -> Option<Duration> {
        let at = self.at.get(seq as usize)?.load(Ordering::Acquire);
        (at > 0).then(|| self.base.elapsed().saturating_sub(Duration::from_nanos(at)))
    }

    fn mark(&self, seq: u64) {
        let nanos = self.base.elapsed().as_nanos().max(1) as u64;
        self.at[seq as usize].store(nanos, Ordering::Release);
    }
}

/// VmRSS of `pid` in bytes, from `/proc/<pid>/status`.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Streams in place, and streams that got every write.
#[derive(Default)]
struct Counts {
    ready: AtomicUsize,
    done: AtomicUsize,
}

/// What one stream saw: a latency per write it got.
type StreamResult = Result<Vec<Duration>, String>;

/// Runs one fan-out scenario against `url`; `server_pid` is the process
/// whose RSS is reported.
pub async fn run(
    target: Target,
    url: &str,
    plan: &FanoutPlan,
    cpu: &CpuWatch,
    server_pid: Option<u32>,
) -> anyhow::Result<Measured> {
    let connections = MIN_CONNECTIONS.max(plan.streams.div_ceil(STREAMS_PER_CONNECTION));
    let channels = workload::connect(url, connections).await?;
    // A service of its own per run, so that earlier runs leave nothing.
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let service = format!("bench-fanout-{}-{nonce}", plan.streams);
    let key = workload::etcd_key(&service, "fanout-node");
    let prefix = workload::etcd_prefix(&service);

    // The node exists before the streams open (write 0, not measured).
    write(target, &channels[0], &service, &key, 0).await?;

    let sent = Arc::new(Sent {
        base: Instant::now(),
        at: (0..=plan.writes).map(|_| AtomicU64::new(0)).collect(),
    });
    let counts = Arc::new(Counts::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    // One task per connection, following all of its streams.
    let mut tasks = Vec::with_capacity(connections);
    for (c, channel) in channels.iter().enumerate() {
        let n = plan.streams / connections + usize::from(c < plan.streams % connections);
        let follow = Follow {
            writes: plan.writes,
            sent: Arc::clone(&sent),
            counts: Arc::clone(&counts),
            stop: stop_rx.clone(),
        };
        let channel = channel.clone();
        tasks.push(match target {
            Target::Discovered => {
                tokio::spawn(discovered_streams(channel, n, service.clone(), follow))
            }
            Target::Etcd => tokio::spawn(etcd_streams(
                channel,
                n,
                prefix.clone(),
                key.clone(),
                follow,
            )),
        });
    }
    let deadline = Instant::now() + plan.open_timeout;
    while counts.ready.load(Ordering::Acquire) < plan.streams {
        if Instant::now() >= deadline {
            let _ = stop_tx.send(true);
            let mut first_error = None;
            for task in tasks {
                for result in task.await.unwrap_or_default() {
                    if let Err(e) = result {
                        first_error.get_or_insert(e);
                    }
                }
            }
            bail!(
                "only {} of {} streams in place after {:?}; first error: {}",
                counts.ready.load(Ordering::Acquire),
                plan.streams,
                plan.open_timeout,
                first_error.unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the server settle after the burst of opens.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_open = server_pid.and_then(rss_bytes);

    let before = cpu.snapshot();
    let started = Instant::now();
    let mut write_errors = 0;
    for seq in 1..=plan.writes {
        tokio::time::sleep_until(started + plan.spacing * (seq - 1) as u32).await;
        sent.mark(seq);
        if let Err(e) = write(
            target,
            &channels[seq as usize % connections],
            &service,
            &key,
            seq,
        )
        .await
        {
            eprintln!("  write {seq} failed: {e:#}");
            write_errors += 1;
        }
    }
    // Wait until every stream has every event, or `settle` has passed.
    let settle_until = Instant::now() + plan.settle;
    while Instant::now() < settle_until && counts.done.load(Ordering::Acquire) < plan.streams {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let window = started.elapsed();
    let after = cpu.snapshot();
    let rss_after = server_pid.and_then(rss_bytes);
    let _ = stop_tx.send(true);

    let mut recorder = Recorder::default();
    let results = futures::future::join_all(tasks).await;
    for result in results.into_iter().flat_map(|r| r.unwrap_or_default()) {
        match result {
            Ok(latencies) => {
                let missed = plan.writes.saturating_sub(latencies.len() as u64);
                for l in latencies {
                    recorder.record(l, Ok(()));
                }
                for _ in 0..missed {
                    recorder.record(Duration::ZERO, Err(Failure::BadResponse("event missed")));
                }
            }
            Err(_) => {
                for _ in 0..plan.writes {
                    recorder.record(Duration::ZERO, Err(Failure::BadResponse("stream failed")));
                }
            }
        }
    }
    for _ in 0..write_errors {
        recorder.record(Duration::ZERO, Err(Failure::BadResponse("write failed")));
    }
    drop(channels);
    Ok(Measured {
        summary: recorder.summary(window),
        warmup_errors: 0,
        cpu: cpu.cores(&before, &after, window),
        other_cpu: cpu.others(&before, &after, window),
        rss_bytes: rss_open.max(rss_after),
    })
}

/// Write number `seq`: the node with `seq` in its metadata (discovered), or
/// a Put of the key whose value carries it (etcd; the key's version is then
/// `seq + 1`).
async fn write(
    target: Target,
    channel: &Channel,
    service: &str,
    key: &[u8],
    seq: u64,
) -> anyhow::Result<()> {
    let mut node = workload::register_request(service, 0, 3600);
    node.node_name = "fanout-node".into();
    node.metadata.insert("seq".into(), seq.to_string());
    match target {
        Target::Discovered => {
            DiscoveryClient::new(channel.clone())
                .register_node(node)
                .await
                .context("RegisterNode")?;
        }
        Target::Etcd => {
            let value = workload::etcd_value(&node);
            crate::proto::etcdserverpb::kv_client::KvClient::new(channel.clone())
                .put(PutRequest {
                    key: key.to_vec(),
                    value,
                    lease: 0,
                    prev_kv: false,
                })
                .await
                .context("etcd Put")?;
        }
    }
    Ok(())
}

/// What a connection's task needs to follow its streams.
struct Follow {
    writes: u64,
    sent: Arc<Sent>,
    counts: Arc<Counts>,
    stop: watch::Receiver<bool>,
}

/// One stream's progress.
struct Progress {
    latencies: Vec<Duration>,
    /// In place (SYNCED, or etcd's `created`).
    ready: bool,
    /// Which writes it has seen, by number.
    seen: Vec<bool>,
    failed: Option<String>,
}

impl Progress {
    fn new(writes: u64) -> Self {
        Self {
            latencies: Vec::with_capacity(writes as usize),
            ready: false,
            seen: vec![false; writes as usize + 1],
            failed: None,
        }
    }

    /// Counts the stream in place, once.
    fn in_place(&mut self, counts: &Counts) {
        if !std::mem::replace(&mut self.ready, true) {
            counts.ready.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Records the arrival of write `seq`, once.
    fn got(&mut self, seq: u64, follow: &Follow) {
        let Some(seen) = self.seen.get_mut(seq as usize).filter(|_| seq > 0) else {
            return;
        };
        if std::mem::replace(seen, true) {
            return;
        }
        if let Some(l) = follow.sent.latency(seq) {
            self.latencies.push(l);
            if self.latencies.len() as u64 == follow.writes {
                follow.counts.done.fetch_add(1, Ordering::AcqRel);
            }
        }
    }
}

/// Follows every stream of one connection from one task, handing each
/// item to `on_item` with its stream's progress, until `follow.stop`. A
/// stream's event wakes this task rather than a task per stream: the load
/// generator shares the cores with the server, so what it spends per
/// event is taken from the server.
async fn follow_streams<T>(
    streams: Vec<Result<Streaming<T>, String>>,
    follow: Follow,
    on_item: impl Fn(&mut Progress, T, &Follow) -> Result<(), String>,
) -> Vec<StreamResult> {
    let mut progress: Vec<Progress> = streams
        .iter()
        .map(|_| Progress::new(follow.writes))
        .collect();
    let mut open = Vec::new();
    for (i, stream) in streams.into_iter().enumerate() {
        match stream {
            Ok(stream) => open.push(
                stream
                    .map(move |item| (i, Some(item)))
                    .chain(futures::stream::once(async move { (i, None) }))
                    .boxed(),
            ),
            Err(e) => progress[i].failed = Some(e),
        }
    }
    let mut merged = futures::stream::select_all(open);
    let mut stop = follow.stop.clone();
    let stopped = stop.changed();
    tokio::pin!(stopped);
    loop {
        let (i, item) = tokio::select! {
            next = merged.next() => match next {
                Some(next) => next,
                None => break,
            },
            _ = &mut stopped => break,
        };
        let p = &mut progress[i];
        if p.failed.is_some() {
            continue;
        }
        p.failed = match item {
            Some(Ok(item)) => on_item(p, item, &follow).err(),
            Some(Err(status)) => Some(format!("stream: {status}")),
            None => Some("stream ended".into()),
        };
    }
    progress
        .into_iter()
        .map(|p| p.failed.map_or(Ok(p.latencies), Err))
        .collect()
}

/// `n` discovered watch streams of `service` on one connection: each
/// counts itself in place at SYNCED, then records the latency of each
/// NODE_ADDED / NODE_UPDATED of a write. Events are decoded lean (see
/// [`crate::lean`]).
async fn discovered_streams(
    channel: Channel,
    n: usize,
    service: String,
    follow: Follow,
) -> Vec<StreamResult> {
    let request = WatchServiceRequest {
        service_group: workload::GROUP.into(),
        service_name: service,
        send_initial: Some(true),
    };
    let opens = (0..n).map(|_| {
        let (channel, request) = (channel.clone(), request.clone());
        async move {
            lean::watch_service::<lean::LeanEvent>(&mut Grpc::new(channel), request)
                .await
                .map_err(|s| format!("WatchService: {s}"))
        }
    });
    let streams = futures::future::join_all(opens).await;
    follow_streams(streams, follow, |p, event: lean::LeanEvent, follow| {
        match EventType::try_from(event.r#type) {
            Ok(EventType::Synced) => p.in_place(&follow.counts),
            Ok(EventType::NodeAdded | EventType::NodeUpdated) => {
                let seq = event
                    .node
                    .as_ref()
                    .and_then(|n| n.metadata("seq"))
                    .and_then(|s| s.parse::<u64>().ok());
                if let Some(seq) = seq {
                    p.got(seq, follow);
                }
            }
            Ok(EventType::Resync) => return Err("RESYNC".into()),
            _ => {}
        }
        Ok(())
    })
    .await
}

/// `n` etcd Watch calls on one connection, each with one watch on
/// `prefix`: each counts itself in place at `created`, then records the
/// latency of each Put of `key`. Decoded lean as well.
async fn etcd_streams(
    channel: Channel,
    n: usize,
    prefix: String,
    key: Vec<u8>,
    follow: Follow,
) -> Vec<StreamResult> {
    let opens = (0..n).map(|_| {
        let (channel, prefix) = (channel.clone(), prefix.clone());
        async move {
            lean::etcd_watch(&mut Grpc::new(channel), &prefix)
                .await
                .map_err(|s| format!("Watch: {s}"))
        }
    });
    let streams = futures::future::join_all(opens).await;
    follow_streams(
        streams,
        follow,
        |p, response: lean::LeanWatchResponse, follow| {
            if response.canceled {
                return Err(format!("watch canceled: {}", response.cancel_reason));
            }
            if response.created {
                p.in_place(&follow.counts);
            }
            for event in response.events {
                let Some(kv) = event.kv else { continue };
                // The key's version is the write's number plus one.
                if kv.key == key && kv.version >= 2 {
                    p.got(kv.version as u64 - 1, follow);
                }
            }
            Ok(())
        },
    )
    .await
}
