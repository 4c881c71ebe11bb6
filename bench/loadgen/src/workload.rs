//! The data both systems hold and the calls each scenario makes.
//!
//! A node is the same in both: discovered gets it as a `RegisterNode`
//! request; etcd gets it as a JSON value shaped like the envelope discovered
//! stores in Redis (`{"registered_at":..,"updated_at":..,"expires_at":..,
//! "record":{..}}`), under `/discovered/<group>/<service>/nodes/<node>`,
//! so both store and return records of about the same size.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use prost::Message;
use tonic::client::Grpc;
use tonic::transport::{Channel, Endpoint};

use crate::lean;
use crate::proto::discovered::discovery_client::DiscoveryClient;
use crate::proto::discovered::{GetNodesRequest, RegisterNodeRequest};
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::lease_client::LeaseClient;
use crate::proto::etcdserverpb::{LeaseGrantRequest, PutRequest, RangeRequest};
use crate::stats::Failure;

/// The group every benchmark service is in (discovered's default).
pub const GROUP: &str = "default";
/// The service that the read scenarios look up, unless told otherwise.
pub const READ_SERVICE: &str = "bench-read";
/// The service that the write scenarios register nodes of.
pub const WRITE_SERVICE: &str = "bench-write";
/// TTL of the seeded read-set nodes: long enough never to expire during a
/// run, but set, so reads return records carrying an expiry as live ones do.
pub const SEED_TTL_SECONDS: i64 = 3600;

/// Opens `count` HTTP/2 connections to `url`, one per channel.
pub async fn connect(url: &str, count: usize) -> anyhow::Result<Vec<Channel>> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .with_context(|| format!("bad URL {url:?}"))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .tcp_nodelay(true);
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        channels.push(
            endpoint
                .connect()
                .await
                .with_context(|| format!("cannot connect to {url}"))?,
        );
    }
    Ok(channels)
}

/// The name of node `index`: `node-0007`.
pub fn node_name(index: u64) -> String {
    format!("node-{index:04}")
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The facts of node `index`, as a discovered registration.
pub fn register_request(service: &str, index: u64, ttl_seconds: i64) -> RegisterNodeRequest {
    let name = node_name(index);
    RegisterNodeRequest {
        service_group: GROUP.into(),
        service_name: service.into(),
        ip: vec![format!("10.20.{}.{}", index / 250, index % 250 + 1)],
        port: 8443,
        fqdn: format!("{name}.{service}.bench.internal"),
        os: "Debian GNU/Linux 12".into(),
        platform_name: "Linux".into(),
        arch: "x86_64".into(),
        cpu_count: 8,
        memory_mb: 32768,
        last_boot: Some(prost_types::Timestamp {
            seconds: 1_700_000_000 + index as i64,
            nanos: 0,
        }),
        metadata: HashMap::from([
            ("zone".to_string(), format!("zone-{}", index % 3)),
            ("version".to_string(), "2.14.1".to_string()),
            ("role".to_string(), "api".to_string()),
        ]),
        node_name: name,
        ttl_seconds: Some(ttl_seconds),
        auto: Some(false),
        // One id per node, as an agent sends: a re-registration is then
        // identical and publishes no change.
        instance_id: format!("bench-instance-{index}"),
        // Serving, no locality, no weight: stored as before these fields.
        ..Default::default()
    }
}

/// The same node as etcd stores it: the JSON envelope discovered would
/// keep in Redis for `request`.
pub fn etcd_value(request: &RegisterNodeRequest) -> Vec<u8> {
    let now = now_millis();
    let ttl = request.ttl_seconds.unwrap_or(0);
    let boot = request.last_boot.unwrap_or_default();
    let mut metadata: Vec<_> = request.metadata.iter().collect();
    metadata.sort();
    let metadata: serde_json::Map<_, _> = metadata
        .into_iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::from(v.clone())))
        .collect();
    serde_json::json!({
        "registered_at": now,
        "updated_at": now,
        "expires_at": (ttl > 0).then(|| now + ttl * 1000),
        "record": {
            "ip": request.ip,
            "port": request.port,
            "fqdn": request.fqdn,
            "os": request.os,
            "platform_name": request.platform_name,
            "arch": request.arch,
            "cpu_count": request.cpu_count,
            "memory_mb": request.memory_mb,
            "last_boot": { "seconds": boot.seconds, "nanos": boot.nanos },
            "metadata": metadata,
        }
    })
    .to_string()
    .into_bytes()
}

/// The etcd key of a node.
pub fn etcd_key(service: &str, node: &str) -> Vec<u8> {
    format!("{}{node}", etcd_prefix(service)).into_bytes()
}

/// The etcd key prefix of a service's nodes (ends with `/`).
pub fn etcd_prefix(service: &str) -> String {
    format!("/discovered/{GROUP}/{service}/nodes/")
}

/// A Range over every key starting with `prefix`.
pub fn range_request(prefix: &str, serializable: bool) -> RangeRequest {
    let key = prefix.as_bytes().to_vec();
    // The end of a prefix range: the prefix with its last byte + 1 (the
    // prefix ends in '/', never 0xff).
    let mut range_end = key.clone();
    if let Some(last) = range_end.last_mut() {
        *last += 1;
    }
    RangeRequest {
        key,
        range_end,
        serializable,
        ..Default::default()
    }
}

/// Sizes of one node record, for the report.
#[derive(Debug, Clone, Copy)]
pub struct RecordSizes {
    /// Encoded RegisterNode request, bytes.
    pub register_request: usize,
    /// JSON value stored in etcd, bytes.
    pub etcd_value: usize,
}

/// The record sizes of a typical node.
pub fn record_sizes(ttl_seconds: i64) -> RecordSizes {
    let request = register_request(WRITE_SERVICE, 7, ttl_seconds);
    RecordSizes {
        register_request: request.encoded_len(),
        etcd_value: etcd_value(&request).len(),
    }
}

/// Registers the read set in discovered: `nodes` nodes of `service`, then
/// checks that GetNodes returns them all.
pub async fn seed_discovered(channel: Channel, service: &str, nodes: u64) -> anyhow::Result<()> {
    let mut client = DiscoveryClient::new(channel);
    for i in 0..nodes {
        client
            .register_node(register_request(service, i, SEED_TTL_SECONDS))
            .await
            .context("seeding discovered")?;
    }
    let got = client
        .get_nodes(get_nodes_request(service))
        .await
        .context("checking the discovered seed")?
        .into_inner()
        .nodes
        .len();
    ensure!(
        got as u64 == nodes,
        "discovered GetNodes returned {got} nodes after seeding {nodes}"
    );
    Ok(())
}

/// Grants an etcd lease of `ttl_seconds`; returns its ID.
pub async fn grant_lease(channel: Channel, ttl_seconds: i64) -> anyhow::Result<i64> {
    let lease = LeaseClient::new(channel)
        .lease_grant(LeaseGrantRequest {
            ttl: ttl_seconds,
            id: 0,
        })
        .await
        .context("etcd LeaseGrant")?
        .into_inner();
    if !lease.error.is_empty() {
        bail!("etcd LeaseGrant: {}", lease.error);
    }
    Ok(lease.id)
}

/// Puts the read set in etcd (`nodes` nodes of `service`), attached to one
/// lease like the discovered nodes' TTL, then checks that a Range returns
/// it all.
pub async fn seed_etcd(channel: Channel, service: &str, nodes: u64) -> anyhow::Result<()> {
    let lease = grant_lease(channel.clone(), SEED_TTL_SECONDS).await?;
    let mut kv = KvClient::new(channel);
    for i in 0..nodes {
        kv.put(put_request(service, i, SEED_TTL_SECONDS, lease))
            .await
            .context("seeding etcd")?;
    }
    let got = kv
        .range(range_request(&etcd_prefix(service), false))
        .await
        .context("checking the etcd seed")?
        .into_inner()
        .kvs
        .len();
    ensure!(
        got as u64 == nodes,
        "etcd Range returned {got} keys after seeding {nodes}"
    );
    Ok(())
}

/// The Put of node `index` of `service`, attached to `lease`.
pub fn put_request(service: &str, index: u64, ttl_seconds: i64, lease: i64) -> PutRequest {
    let node = register_request(service, index, ttl_seconds);
    PutRequest {
        key: etcd_key(service, &node.node_name),
        value: etcd_value(&node),
        lease,
        prev_kv: false,
    }
}

/// The GetNodes of a service.
pub fn get_nodes_request(service: &str) -> GetNodesRequest {
    GetNodesRequest {
        service_group: GROUP.into(),
        service_name: service.into(),
    }
}

/// One GetNodes call; fails unless it returns `expected` nodes.
pub async fn get_nodes(
    mut grpc: Grpc<Channel>,
    request: GetNodesRequest,
    expected: usize,
) -> Result<(), Failure> {
    let response = lean::get_nodes(&mut grpc, request).await?;
    if response.nodes.len() != expected {
        return Err(Failure::BadResponse("node count"));
    }
    Ok(())
}

/// One etcd Range call; fails unless it returns `expected` keys.
pub async fn range(
    mut grpc: Grpc<Channel>,
    request: RangeRequest,
    expected: usize,
) -> Result<(), Failure> {
    let response = lean::range(&mut grpc, request).await?;
    if response.kvs.len() != expected {
        return Err(Failure::BadResponse("key count"));
    }
    Ok(())
}

/// One RegisterNode call; fails unless the node comes back with its name
/// and an expiry.
pub async fn register_node(
    mut client: DiscoveryClient<Channel>,
    request: RegisterNodeRequest,
) -> Result<(), Failure> {
    let name = request.node_name.clone();
    let node = client.register_node(request).await?.into_inner();
    if node.node_name != name || node.expires_at.is_none() {
        return Err(Failure::BadResponse("registered node"));
    }
    Ok(())
}

/// One etcd Put call; fails unless etcd answers with a revision.
pub async fn put(mut client: KvClient<Channel>, request: PutRequest) -> Result<(), Failure> {
    let response = client.put(request).await?.into_inner();
    if response.header.is_none_or(|h| h.revision <= 0) {
        return Err(Failure::BadResponse("put header"));
    }
    Ok(())
}
