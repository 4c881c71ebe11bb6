//! Slow but healthy: calls on a large registry (a 50,000-node service)
//! take longer than redis-rs's default response timeout of 500 ms in a debug
//! build, and must neither fail nor cost a connection (a timed-out reply
//! retires its connection).

use discovered::proto::v1::*;

use crate::common::*;

const NODES: usize = 50_000;

/// Connections Redis has accepted since it started.
async fn connections_received(redis: &RedisServer) -> u64 {
    let mut conn = redis.connection().await;
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut conn)
        .await
        .expect("INFO stats");
    info.lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("total_connections_received in INFO stats")
}

/// `name(age s)` of every client connected to `redis`: each pool names
/// its connections (`Purpose::client_name`), so a failure shows which
/// pool reconnected.
async fn client_names(redis: &RedisServer) -> String {
    let mut conn = redis.connection().await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .expect("CLIENT LIST");
    let field = |line: &str, key: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(key))
            .unwrap_or("?")
            .to_string()
    };
    list.lines()
        .map(|l| {
            format!(
                "{}({} s, {})",
                field(l, "name="),
                field(l, "age="),
                field(l, "cmd=")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_service_is_read_watched_and_removed_without_errors_or_new_connections() {
    let mut t = TestServer::start(Backend::Redis).await;
    seed_nodes(t.redis(), "g", "big", NODES).await;
    // Warm the pools: the request connections, and the large-read ones
    // that snapshots and group removals use, exist from here on.
    for _ in 0..4 {
        assert!(get_nodes(&mut t.client, "g", "small").await.is_empty());
        let mut w = Watch::open(&mut t.client, "g", "small", None).await;
        assert!(w.initial("g", "small").await.is_empty());
        try_remove_group(&mut t.client, "none", true)
            .await
            .expect("RemoveServiceGroup of a missing group");
    }
    let before = connections_received(t.redis()).await;

    // (GetNodes of all 50,000 is some 6 MB: past gRPC's default 4 MB
    // message limit of clients; a watch sends one node per event.)
    let mut w = Watch::open(&mut t.client, "g", "", None).await;
    let initial = w.initial("g", "").await;
    assert_eq!(initial.len(), NODES);
    let removed = within(
        "RemoveServiceGroup of 50,000 nodes",
        t.client.remove_service_group(RemoveServiceGroupRequest {
            service_group: "g".into(),
            allow_missing: false,
        }),
    )
    .await
    .expect("RemoveServiceGroup of a large group")
    .into_inner();
    assert_eq!(removed.services_removed, 1);
    assert!(get_nodes(&mut t.client, "g", "big").await.is_empty());

    // Our own connections in between: this test's two INFO calls only.
    let after = connections_received(t.redis()).await;
    assert_eq!(
        after - before,
        1,
        "the server opened new Redis connections during slow calls; the clients now: {}",
        client_names(t.redis()).await
    );
}
