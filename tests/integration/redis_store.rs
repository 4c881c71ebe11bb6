//! Redis-specific behaviour: what is left in Redis after removals, what a
//! GetNodes costs, and what happens when Redis dies and comes back.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::common::*;
use discovered::proto::v1::*;
use discovered::server::Settings;
use redis::AsyncCommands;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

async fn all_keys(t: &mut TestServer) -> Vec<String> {
    let mut conn = t.redis().connection().await;
    let mut keys: Vec<String> = conn.keys("*").await.expect("KEYS");
    keys.sort();
    keys
}

/// Every deadline hint, from all shards, sorted.
async fn deadline_members(t: &mut TestServer) -> Vec<String> {
    let mut conn = t.redis().connection().await;
    let mut members = Vec::new();
    for shard in 0..discovered::store::redis::DEADLINE_SHARDS {
        let key = discovered::store::redis::Keys::new("discovered").deadlines(shard);
        let some: Vec<String> = conn.zrange(key, 0, -1).await.expect("ZRANGE");
        members.extend(some);
    }
    members.sort();
    members
}

/// The shard key holding the deadline hint of `member`.
fn deadlines_key_of(t: &[String], member_shard_hint: &str) -> Option<String> {
    t.iter()
        .find(|k| k.ends_with(":deadlines") && k.contains(member_shard_hint))
        .cloned()
}

#[tokio::test]
async fn removing_a_service_and_a_group_leaves_no_key_behind() {
    let mut t = TestServer::start(Backend::Redis).await;
    let c = &mut t.client;
    // Group "shop": two services, nodes with and without TTLs.
    register_service(c, bare_service("shop", "cart")).await;
    register_node(c, bare_node("shop", "cart", "c1", Some(300))).await;
    register_node(c, bare_node("shop", "cart", "c2", None)).await;
    register_node(c, bare_node("shop", "orders", "o1", Some(300))).await;
    // Group "ops": kept, to show removal is scoped.
    register_service(c, bare_service("ops", "metrics")).await;
    register_node(c, bare_node("ops", "metrics", "m1", Some(300))).await;

    let removed = c
        .remove_service(RemoveServiceRequest {
            service_group: "shop".into(),
            service_name: "cart".into(),
            allow_missing: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((removed.removed, removed.nodes_removed), (true, 2));
    let keys = all_keys(&mut t).await;
    // Only its revision stays: a service's revisions never go back, also
    // when it is registered again (see keys.rs).
    assert!(
        keys.iter()
            .filter(|k| k.contains("shop/cart"))
            .all(|k| k == "discovered:v2:{shop/cart}:rev"),
        "keys of shop/cart left: {keys:?}"
    );
    assert!(
        !deadline_members(&mut t)
            .await
            .contains(&"shop/cart/c1".to_string()),
        "deadline entry of a removed node left behind"
    );

    let removed = t
        .client
        .remove_service_group(RemoveServiceGroupRequest {
            service_group: "shop".into(),
            allow_missing: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((removed.removed, removed.services_removed), (true, 1));
    let keys = all_keys(&mut t).await;
    let hint = deadlines_key_of(&keys, "{dl").expect("the hint of ops/metrics/m1");
    let mut want = vec![
        hint,
        "discovered:v2:{listing}:group:ops:services".to_string(),
        "discovered:v2:{listing}:groups".to_string(),
        "discovered:v2:{ops/metrics}:listed".to_string(),
        "discovered:v2:{ops/metrics}:nodes".to_string(),
        "discovered:v2:{ops/metrics}:rev".to_string(),
        "discovered:v2:{ops/metrics}:service".to_string(),
        "discovered:v2:{shop/cart}:rev".to_string(),
        "discovered:v2:{shop/orders}:rev".to_string(),
    ];
    want.sort();
    assert_eq!(
        keys, want,
        "only the ops group's keys (and the revisions) may remain"
    );
    assert_eq!(deadline_members(&mut t).await, vec!["ops/metrics/m1"]);
    let mut conn = t.redis().connection().await;
    let groups: Vec<String> = conn
        .zrange("discovered:v2:{listing}:groups", 0, -1)
        .await
        .unwrap();
    assert_eq!(groups, vec!["ops"]);

    // Removing the last group leaves only the services' revisions, which
    // watchers rely on never going back.
    t.client
        .remove_service_group(RemoveServiceGroupRequest {
            service_group: "ops".into(),
            allow_missing: false,
        })
        .await
        .unwrap();
    assert_eq!(
        all_keys(&mut t).await,
        vec![
            "discovered:v2:{ops/metrics}:rev",
            "discovered:v2:{shop/cart}:rev",
            "discovered:v2:{shop/orders}:rev",
        ]
    );
}

#[tokio::test]
async fn expired_nodes_are_removed_from_redis() {
    let mut t = TestServer::start(Backend::Redis).await;
    register_node(&mut t.client, bare_node("default", "api", "short", Some(1))).await;
    register_node(&mut t.client, bare_node("default", "api", "long", None)).await;
    let conn = t.redis().connection().await;
    eventually("the expired node's hash field to be swept", || {
        let mut conn = conn.clone();
        async move {
            let fields: Vec<String> = conn.hkeys("discovered:v2:{default/api}:nodes").await.ok()?;
            (fields == vec!["long".to_string()]).then_some(())
        }
    })
    .await;
    drop(conn);
    let members = deadline_members(&mut t).await;
    assert!(members.is_empty(), "deadline entry left: {members:?}");
}

/// Commands sent by `n` GetNodes calls, leaving out the ones the server's
/// background tasks send on their own (health PING, the expiry sweep) and
/// our own INFO.
async fn commands_for_get_nodes(t: &mut TestServer, n: usize) -> BTreeMap<String, u64> {
    let mut conn = t.redis().connection().await;
    let before = command_calls(&mut conn).await;
    for _ in 0..n {
        assert_eq!(get_nodes(&mut t.client, "", "payments").await.len(), 20);
    }
    let after = command_calls(&mut conn).await;
    after
        .into_iter()
        .filter(|(name, _)| !matches!(name.as_str(), "ping" | "zrangebyscore" | "info"))
        .filter_map(|(name, calls)| {
            let delta = calls - before.get(&name).copied().unwrap_or(0);
            (delta > 0).then_some((name, delta))
        })
        .collect()
}

#[tokio::test]
async fn get_nodes_cost_does_not_grow_with_the_keyspace() {
    // What a read costs Redis: the read cache off (a cached answer costs
    // no command at all, see read_cache.rs).
    let redis = RedisServer::start();
    let registry = redis_registry(&redis).await;
    let hub = registry.hub();
    let settings = Settings {
        limits: discovered::server::Limits {
            read_cache_bytes: 0,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut t = TestServer::on_with((Arc::new(registry), hub), Some(redis), settings).await;
    for i in 0..20 {
        register_node(
            &mut t.client,
            bare_node("default", "payments", &format!("pay-{i}"), Some(600)),
        )
        .await;
    }
    let small = commands_for_get_nodes(&mut t, 10).await;
    assert_eq!(
        small,
        BTreeMap::from([("hgetall".to_string(), 10)]),
        "a GetNodes should be exactly one HGETALL"
    );

    let mut conn = t.redis().connection().await;
    for chunk in 0..100 {
        let pairs: Vec<(String, String)> = (0..1000)
            .map(|i| (format!("unrelated:{chunk}:{i}"), "x".repeat(32)))
            .collect();
        let _: () = conn.mset(&pairs).await.unwrap();
    }
    let size: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
    assert!(size >= 100_000, "DBSIZE {size}");

    let large = commands_for_get_nodes(&mut t, 10).await;
    assert_eq!(
        large, small,
        "GetNodes cost grew with 100,000 unrelated keys"
    );
}

async fn wait_health(t: &TestServer, want: ServingStatus) {
    for service in ["", "discovered.v1.Discovery"] {
        eventually(
            &format!("health of {service:?} to become {want:?}"),
            || async move { (health(t, service).await == Some(want)).then_some(()) },
        )
        .await;
    }
}

#[tokio::test]
async fn redis_down_gives_unavailable_and_not_serving_then_recovers() {
    let mut t = TestServer::start(Backend::Redis).await;
    register_service(&mut t.client, bare_service("default", "payments")).await;
    wait_health(&t, ServingStatus::Serving).await;

    t.redis().kill();

    let err = within(
        "GetService with Redis down",
        t.client.get_service(GetServiceRequest {
            service_group: String::new(),
            service_name: "payments".into(),
            reveal_credentials: false,
        }),
    )
    .await
    .expect_err("Redis is down");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let err = within(
        "RegisterNode with Redis down",
        t.client
            .register_node(bare_node("default", "payments", "p1", None)),
    )
    .await
    .expect_err("Redis is down");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    wait_health(&t, ServingStatus::NotServing).await;

    // Back, empty (no persistence): calls work again without a restart of
    // the server, and health follows.
    t.redis().restart();
    wait_health(&t, ServingStatus::Serving).await;
    let registered =
        register_node_eventually(&t.client, bare_node("default", "payments", "p1", None)).await;
    assert_eq!(registered.node_name, "p1");
    assert_eq!(get_nodes(&mut t.client, "", "payments").await.len(), 1);
    // A script-backed call after the restart: Redis forgot the scripts.
    let removed = t
        .client
        .remove_node(RemoveNodeRequest {
            service_group: String::new(),
            service_name: "payments".into(),
            node_name: "p1".into(),
            allow_missing: false,
            instance_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(removed.removed);
}

/// RegisterNode racing RemoveService of the same service, from two
/// processes: whichever runs first, a service that has a node is listed.
/// (Each write is one MULTI/EXEC; Redis rarely splits a small pipeline
/// anyway, so this guards the invariant more than it provokes the race.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_racing_its_services_removal_is_never_left_unlisted() {
    use discovered::model::{NodeSpec, PageRequest, ServiceKey};
    use discovered::store::{NodeRegistration, Registry};

    let mut t = TestServer::start(Backend::Redis).await;
    // Registries of their own: two more server processes, as far as Redis
    // can tell.
    let a = redis_registry(t.redis()).await;
    let b = redis_registry(t.redis()).await;
    let mut unlisted = Vec::new();
    for i in 0..400 {
        let key = ServiceKey::new("race", format!("s{i:03}"));
        let reg = NodeRegistration {
            key: key.clone(),
            name: "n".into(),
            spec: NodeSpec {
                ip: vec!["10.0.0.1".into()],
                ..Default::default()
            },
            ttl: None,
            keep_instance: true,
            actor: None,
        };
        // The service exists first, so the removal has work to do.
        a.register_node(reg.clone()).await.expect("register");
        let (registered, removed) = tokio::join!(a.register_node(reg), b.remove_service(&key));
        registered.expect("register");
        removed.expect("remove");
        let has_nodes = !a.get_nodes(&key).await.expect("get_nodes").is_empty();
        let listed = a
            .list_services(
                "race",
                PageRequest {
                    size: 1000,
                    after: None,
                },
            )
            .await
            .expect("list")
            .names
            .contains(&key.service);
        if has_nodes && !listed {
            unlisted.push(key.service);
        }
    }
    assert!(
        unlisted.is_empty(),
        "services with nodes but unlisted: {unlisted:?}"
    );
}

/// Redis forgetting the scripts (a restart, a failover to a replica that
/// never loaded them, SCRIPT FLUSH) costs one retry, also for the writes
/// sent as several steps, and leaves nothing half done.
#[tokio::test]
async fn writes_survive_redis_forgetting_the_scripts() {
    let mut t = TestServer::start(Backend::Redis).await;
    let flush = |t: &mut TestServer| {
        let redis = t.redis().url();
        async move {
            let client = redis::Client::open(redis).expect("client");
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .expect("connect");
            let () = redis::cmd("SCRIPT")
                .arg("FLUSH")
                .query_async(&mut conn)
                .await
                .expect("SCRIPT FLUSH");
        }
    };
    flush(&mut t).await;
    register_service(&mut t.client, bare_service("g", "s")).await;
    flush(&mut t).await;
    register_node(&mut t.client, bare_node("g", "s", "n1", Some(300))).await;
    let listed = t
        .client
        .list_services(ListServicesRequest {
            service_group: "g".into(),
            ..Default::default()
        })
        .await
        .expect("ListServices")
        .into_inner();
    assert_eq!(listed.service_names, ["s"]);
    flush(&mut t).await;
    t.client
        .remove_service(RemoveServiceRequest {
            service_group: "g".into(),
            service_name: "s".into(),
            ..Default::default()
        })
        .await
        .expect("RemoveService");
    assert_eq!(all_keys(&mut t).await, ["discovered:v2:{g/s}:rev"]);
}

#[tokio::test]
async fn each_pool_names_its_connections() {
    use discovered::store::redis::Purpose;

    let mut t = TestServer::start(Backend::Redis).await;
    let mut client = t.client.clone();
    // A call, a snapshot (a watch) and a few health probes use each pool.
    assert!(get_nodes(&mut client, "g", "s").await.is_empty());
    let mut w = Watch::open(&mut client, "g", "s", None).await;
    assert!(w.initial("g", "s").await.is_empty());
    let conn = t.redis().connection().await;
    let names = eventually("every pool connected", || {
        let mut conn = conn.clone();
        async move {
            let list: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut conn)
                .await
                .ok()?;
            let all = [Purpose::Requests, Purpose::LargeReads, Purpose::Health];
            all.iter()
                .all(|p| list.contains(&format!("name={} ", p.client_name())))
                .then_some(list)
        }
    })
    .await;
    assert!(names.contains("name=discovered-requests "), "{names}");
}
