//! Data written in layout v1 (the layout before Redis Cluster, issue 13)
//! is migrated when a new server starts on it: written here by hand, key by
//! key, as the v1 scripts wrote it (`discovered:v1:...`, see
//! `src/store/redis/keys.rs` and `record.rs` before v2, and
//! [`seed_nodes`]), then read back through the gRPC API only.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::common::*;
use discovered::proto::v1::*;
use discovered::server::Defaults;
use discovered::store::redis::{DEADLINE_SHARDS, Keys};
use prost_types::Timestamp;
use redis::AsyncCommands;

/// A protobuf timestamp of `ms` milliseconds since the epoch.
fn ts(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A v1 node: its stored envelope and what the API must return for it.
struct V1Node {
    group: &'static str,
    service: &'static str,
    name: &'static str,
    registered_at: i64,
    updated_at: i64,
    expires_at: Option<i64>,
    /// The `"owner":"..."` an auth-protected registry wrote, if any.
    owner: Option<&'static str>,
    i: u32,
}

impl V1Node {
    fn stored(&self) -> String {
        let expires = self
            .expires_at
            .map_or_else(|| "null".to_string(), |e| e.to_string());
        let owner = self
            .owner
            .map_or_else(String::new, |o| format!(r#""owner":"{o}","#));
        let i = self.i;
        format!(
            concat!(
                r#"{{"registered_at":{},"updated_at":{},"expires_at":{},{}"record":"#,
                r#"{{"instance_id":"inst-{}","ip":["10.2.0.{}","fd00::{}"],"port":{},"#,
                r#""fqdn":"{}.example.org","os":"Debian GNU/Linux 12","platform_name":"Linux","#,
                r#""arch":"x86_64","cpu_count":{},"memory_mb":{},"#,
                r#""last_boot":{{"seconds":{},"nanos":5000}},"#,
                r#""metadata":{{"rack":"r{}","zone":"eu-1"}}}}}}"#
            ),
            self.registered_at,
            self.updated_at,
            expires,
            owner,
            self.name,
            i,
            i,
            7000 + i,
            self.name,
            2 * i,
            1024 * u64::from(i),
            1_700_000_000 + i64::from(i),
            i,
        )
    }

    fn api(&self) -> Node {
        let i = self.i;
        Node {
            service_group: self.group.into(),
            service_name: self.service.into(),
            node_name: self.name.into(),
            ip: vec![format!("10.2.0.{i}"), format!("fd00::{i}")],
            port: 7000 + i,
            fqdn: format!("{}.example.org", self.name),
            os: "Debian GNU/Linux 12".into(),
            platform_name: "Linux".into(),
            arch: "x86_64".into(),
            cpu_count: 2 * i,
            memory_mb: 1024 * u64::from(i),
            last_boot: Some(Timestamp {
                seconds: 1_700_000_000 + i64::from(i),
                nanos: 5000,
            }),
            metadata: meta(&[("rack", &format!("r{i}")), ("zone", "eu-1")]),
            registered_at: Some(ts(self.registered_at)),
            updated_at: Some(ts(self.updated_at)),
            expires_at: self.expires_at.map(ts),
            instance_id: format!("inst-{}", self.name),
            // A v1 record has none of these: a serving node, no locality.
            status: NodeStatus::Serving as i32,
            locality: None,
            weight: 0,
        }
    }
}

/// A v1 service record: its stored envelope and the API's answer.
struct V1Service {
    group: &'static str,
    service: &'static str,
    registered_at: i64,
    updated_at: i64,
}

impl V1Service {
    fn stored(&self) -> String {
        format!(
            concat!(
                r#"{{"registered_at":{},"updated_at":{},"record":{{"#,
                r#""endpoint":"https://{}.example.org/api","endpoint_type":"rest","#,
                r#""auth_type":"basic","auth_credentials":"user:secret-{}","#,
                r#""backend":"postgres","description":"The {} service","#,
                r#""metadata":{{"owner":"team-{}","tier":"1"}}}}}}"#
            ),
            self.registered_at,
            self.updated_at,
            self.service,
            self.service,
            self.service,
            self.group,
        )
    }

    fn api(&self) -> Service {
        Service {
            service_group: self.group.into(),
            service_name: self.service.into(),
            endpoint: format!("https://{}.example.org/api", self.service),
            endpoint_type: "rest".into(),
            auth_type: "basic".into(),
            auth_credentials: format!("user:secret-{}", self.service),
            backend: "postgres".into(),
            description: format!("The {} service", self.service),
            metadata: meta(&[("owner", &format!("team-{}", self.group)), ("tier", "1")]),
            registered_at: Some(ts(self.registered_at)),
            updated_at: Some(ts(self.updated_at)),
        }
    }
}

/// The v1 registry the test starts from.
struct V1 {
    services: Vec<V1Service>,
    nodes: Vec<V1Node>,
    revision: i64,
}

/// Two groups: `shop` with `payments` (a service record and three nodes:
/// no TTL, a TTL a few seconds away, a TTL an hour away with an owner) and
/// `orders` (a service record, no node); `edge` with `cache`, known only
/// through its nodes (one without TTL, one already past its deadline but
/// not yet swept); and a group `ghost` listed without services.
fn v1_registry(now: i64) -> V1 {
    let node = |service, name, expires_at, owner, i| V1Node {
        group: if service == "cache" { "edge" } else { "shop" },
        service,
        name,
        registered_at: now - 3_600_000 - i64::from(i),
        updated_at: now - 60_000 - i64::from(i),
        expires_at,
        owner,
        i,
    };
    V1 {
        services: vec![
            V1Service {
                group: "shop",
                service: "payments",
                registered_at: now - 86_400_000,
                updated_at: now - 3_600_000,
            },
            V1Service {
                group: "shop",
                service: "orders",
                registered_at: now - 7_200_000,
                updated_at: now - 7_200_000,
            },
        ],
        nodes: vec![
            node("payments", "p1", None, None, 1),
            node("payments", "p2", Some(now + 5_000), None, 2),
            node("payments", "p3", Some(now + 3_600_000), Some("agent-7"), 3),
            node("cache", "c1", None, None, 4),
            node("cache", "c2", Some(now - 1_000), None, 5),
        ],
        // v1 revisions are at least the time of the change in microseconds.
        revision: now * 1000,
    }
}

/// Writes `v1` into `redis` as the v1 scripts did, with raw commands.
async fn write_v1(redis: &RedisServer, v1: &V1) {
    let mut conn = redis.connection().await;
    let mut p = redis::pipe();
    // `ghost`: a group listed without services, as a crash could leave
    // it in v1 (readers skipped it).
    for g in ["shop", "edge", "ghost"] {
        p.zadd("discovered:v1:{listing}:groups", g, 0);
    }
    for (g, s) in [("shop", "payments"), ("shop", "orders"), ("edge", "cache")] {
        p.zadd(
            format!("discovered:v1:{{listing}}:group:{g}:services"),
            s,
            0,
        );
    }
    for s in &v1.services {
        p.set(
            format!("discovered:v1:{{{}/{}}}:service", s.group, s.service),
            s.stored(),
        );
    }
    for n in &v1.nodes {
        p.hset(
            format!("discovered:v1:{{{}/{}}}:nodes", n.group, n.service),
            n.name,
            n.stored(),
        );
        if let Some(e) = n.expires_at {
            p.zadd(
                "discovered:v1:deadlines",
                format!("{}/{}/{}", n.group, n.service, n.name),
                e,
            );
        }
    }
    p.set("discovered:v1:revision", v1.revision);
    let _: () = p
        .query_async(&mut conn)
        .await
        .expect("write the v1 registry");
    let v1_keys = keys(&mut conn, "discovered:v1:*").await;
    assert_eq!(v1_keys.len(), 9, "the v1 registry as written: {v1_keys:?}");
}

/// The keys matching `pattern`, sorted.
async fn keys(conn: &mut redis::aio::MultiplexedConnection, pattern: &str) -> Vec<String> {
    let mut keys: Vec<String> = conn.keys(pattern).await.expect("KEYS");
    keys.sort();
    keys
}

/// Every data key of layout v2 as the lead's contract names it (listings,
/// service records, node hashes, deadline shards) with its content: what a
/// second server start must leave as it is. Per-service revisions are left
/// out.
async fn v2_data(conn: &mut redis::aio::MultiplexedConnection) -> BTreeMap<String, String> {
    let mut data = BTreeMap::new();
    for key in keys(conn, "discovered:v2:*").await {
        let content = if key.ends_with(":groups")
            || key.ends_with(":services")
            || key.ends_with(":deadlines")
        {
            let members: Vec<(String, f64)> = conn
                .zrange_withscores(&key, 0, -1)
                .await
                .unwrap_or_else(|e| panic!("ZRANGE {key}: {e}"));
            format!("{members:?}")
        } else if key.ends_with(":service") {
            let record: String = conn
                .get(&key)
                .await
                .unwrap_or_else(|e| panic!("GET {key}: {e}"));
            record
        } else if key.ends_with(":nodes") {
            let nodes: BTreeMap<String, String> = conn
                .hgetall(&key)
                .await
                .unwrap_or_else(|e| panic!("HGETALL {key}: {e}"));
            format!("{nodes:?}")
        } else {
            continue;
        };
        data.insert(key, content);
    }
    data
}

/// How many entries the v2 deadline shards hold together. The shards'
/// names come from the layout's own [`Keys`]: their tags are
/// `dl<k>-<j>`, not the `dl<k>` of the contract this test was written to.
async fn deadline_entries(conn: &mut redis::aio::MultiplexedConnection) -> usize {
    let keys = Keys::new("discovered");
    let mut total = 0;
    for k in 0..DEADLINE_SHARDS {
        let n: usize = conn.zcard(keys.deadlines(k)).await.expect("ZCARD");
        total += n;
    }
    total
}

/// GetService with credentials revealed, which must succeed.
async fn service(c: &mut Client, group: &str, name: &str) -> Service {
    get_service(c, group, name, true)
        .await
        .unwrap_or_else(|e| panic!("GetService {group}/{name}: {e:?}"))
}

/// Everything the API tells about the registry: groups, their services,
/// each service's record and nodes.
async fn everything(c: &mut Client) -> Vec<(String, Vec<String>, Vec<(Service, Vec<Node>)>)> {
    let mut all = Vec::new();
    for g in groups(c).await {
        let names = services(c, &g).await;
        let mut each = Vec::new();
        for s in &names {
            let record = service(c, &g, s).await;
            each.push((record, get_nodes(c, &g, s).await));
        }
        all.push((g, names, each));
    }
    all
}

/// A server started on a Redis that holds a v1 registry finds every
/// group, service and node with all its fields; a node's TTL still ends
/// it on time, with NODE_EXPIRED on a watch; no v1 key is left; and a
/// second server starting on the migrated Redis changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_registry_is_migrated_when_a_server_starts_on_it() {
    let redis = RedisServer::start();
    let v1 = v1_registry(now_ms());
    write_v1(&redis, &v1).await;

    let t = TestServer::sharing(&redis).await;
    let mut c = t.client.clone();
    let started = now_ms();
    let [p1, p2, p3, c1, c2] = [0, 1, 2, 3, 4].map(|i| v1.nodes[i].api());
    let p2_expires = v1.nodes[1].expires_at.expect("p2 has a TTL");
    assert!(
        started < p2_expires,
        "the server took until {started} ms to start, past p2's deadline {p2_expires} ms"
    );

    // Every group, service and node, with every field as stored in v1.
    assert_eq!(groups(&mut c).await, ["edge", "shop"]);
    assert_eq!(services(&mut c, "shop").await, ["orders", "payments"]);
    assert_eq!(services(&mut c, "edge").await, ["cache"]);
    let [payments, orders] = [0, 1].map(|i| v1.services[i].api());
    assert_eq!(service(&mut c, "shop", "payments").await, payments);
    assert_eq!(service(&mut c, "shop", "orders").await, orders);
    assert_eq!(
        service(&mut c, "edge", "cache").await,
        Service {
            service_group: "edge".into(),
            service_name: "cache".into(),
            ..Default::default()
        },
        "a service known only through its nodes"
    );
    let mut w = Watch::open(&mut c, "shop", "payments", None).await;
    let initial = w.initial("shop", "payments").await;
    assert!(now_ms() < p2_expires, "the checks took past p2's deadline");
    let initial: Vec<Node> = initial
        .iter()
        .filter(|e| kind(e) == EventType::Initial)
        .map(|e| node_of(e).clone())
        .collect();
    assert_eq!(
        initial,
        [p1.clone(), p2.clone(), p3.clone()],
        "the watch's INITIAL"
    );
    assert_eq!(
        get_nodes(&mut c, "shop", "payments").await,
        [p1.clone(), p2.clone(), p3.clone()]
    );
    assert!(get_nodes(&mut c, "shop", "orders").await.is_empty());
    assert_eq!(
        get_nodes(&mut c, "edge", "cache").await,
        std::slice::from_ref(&c1),
        "c2 was past its deadline ({c2:?})"
    );

    // No v1 key is left; the v2 keys are where the contract puts them.
    let mut conn = redis.connection().await;
    assert_eq!(
        keys(&mut conn, "discovered:v1:*").await,
        Vec::<String>::new(),
        "v1 keys left after the migration"
    );
    let v2 = keys(&mut conn, "discovered:v2:*").await;
    for k in [
        "discovered:v2:{listing}:groups",
        "discovered:v2:{listing}:group:shop:services",
        "discovered:v2:{listing}:group:edge:services",
        "discovered:v2:{shop/payments}:service",
        "discovered:v2:{shop/payments}:nodes",
        "discovered:v2:{shop/orders}:service",
        "discovered:v2:{edge/cache}:nodes",
    ] {
        assert!(v2.iter().any(|a| a == k), "no {k} in {v2:?}");
    }

    // p2's TTL still ends it, on time, and a watcher is told.
    let e = w.expect(EventType::NodeExpired).await;
    let seen = now_ms();
    assert_eq!(node_of(&e).node_name, "p2", "{e:?}");
    assert!(
        seen >= p2_expires,
        "NODE_EXPIRED at {seen} ms, before p2's deadline {p2_expires} ms"
    );
    assert!(
        e.revision > v1.revision as u64,
        "a change after the migration has revision {} below v1's last, {}",
        e.revision,
        v1.revision
    );
    assert_eq!(
        get_nodes(&mut c, "shop", "payments").await,
        [p1.clone(), p3.clone()]
    );
    // The deadlines left: p3's only (c2's is swept, p2's gone with it).
    eventually("the deadline shards to hold p3's deadline only", || {
        let mut conn = conn.clone();
        async move { (deadline_entries(&mut conn).await == 1).then_some(()) }
    })
    .await;

    // A second server starting on the migrated Redis changes nothing.
    let before = everything(&mut c).await;
    let data = v2_data(&mut conn).await;
    let second = TestServer::sharing(&redis).await;
    let mut c2nd = second.client.clone();
    assert_eq!(
        everything(&mut c2nd).await,
        before,
        "read through the second"
    );
    assert_eq!(everything(&mut c).await, before, "read through the first");
    assert_eq!(
        v2_data(&mut conn).await,
        data,
        "the v2 keys after a restart"
    );
    assert_eq!(
        keys(&mut conn, "discovered:v1:*").await,
        Vec::<String>::new()
    );
    assert_eq!(deadline_entries(&mut conn).await, 1);
    assert_eq!(
        before,
        vec![
            (
                "edge".to_string(),
                vec!["cache".to_string()],
                vec![(
                    Service {
                        service_group: "edge".into(),
                        service_name: "cache".into(),
                        ..Default::default()
                    },
                    vec![c1]
                )]
            ),
            (
                "shop".to_string(),
                vec!["orders".to_string(), "payments".to_string()],
                vec![
                    (v1.services[1].api(), vec![]),
                    (payments, vec![p1, p3.clone()])
                ]
            ),
        ]
    );

    // Both servers still work on the migrated data: a write through the
    // second is watched through the first.
    let renewed = register_node(
        &mut c2nd,
        RegisterNodeRequest {
            service_group: "shop".into(),
            service_name: "payments".into(),
            node_name: "p3".into(),
            ip: p3.ip.clone(),
            port: 1,
            ttl_seconds: Some(60),
            instance_id: p3.instance_id.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        renewed.registered_at, p3.registered_at,
        "a live node keeps registered_at"
    );
    w.expect_node(EventType::NodeUpdated, &renewed).await;
}

/// Two servers starting at once on a v1 registry (replicas rolled out
/// together): the registry is moved once, nothing lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_starting_together_move_a_v1_registry_once() {
    let redis = RedisServer::start();
    let v1 = v1_registry(now_ms());
    write_v1(&redis, &v1).await;

    let (a, b) = tokio::join!(redis_registry(&redis), redis_registry(&redis));
    let (hub_a, hub_b) = (a.hub(), b.hub());
    let a = TestServer::on((Arc::new(a), hub_a), None, Defaults::default()).await;
    let b = TestServer::on((Arc::new(b), hub_b), None, Defaults::default()).await;
    let (mut ca, mut cb) = (a.client.clone(), b.client.clone());
    let [p1, p2, p3, c1, _] = [0, 1, 2, 3, 4].map(|i| v1.nodes[i].api());
    let [payments, orders] = [0, 1].map(|i| v1.services[i].api());
    let cache = Service {
        service_group: "edge".into(),
        service_name: "cache".into(),
        ..Default::default()
    };
    let want = vec![
        (
            "edge".to_string(),
            vec!["cache".to_string()],
            vec![(cache, vec![c1])],
        ),
        (
            "shop".to_string(),
            vec!["orders".to_string(), "payments".to_string()],
            vec![(orders, vec![]), (payments, vec![p1, p2, p3])],
        ),
    ];
    let got = (everything(&mut ca).await, everything(&mut cb).await);
    let p2_expires = v1.nodes[1].expires_at.expect("p2 has a TTL");
    assert!(
        now_ms() < p2_expires,
        "the starts and reads took past p2's deadline {p2_expires} ms"
    );
    assert_eq!(got.0, want, "read through the first");
    assert_eq!(got.1, want, "read through the second");
    let mut conn = redis.connection().await;
    assert_eq!(
        keys(&mut conn, "discovered:v1:*").await,
        Vec::<String>::new()
    );
}
