//! A master that refuses writes: with `min-replicas-to-write` set and no
//! replica in reach, Redis answers NOREPLICAS, also to the commands of a
//! MULTI/EXEC (where redis-rs reports an aborted transaction). Callers must
//! see UNAVAILABLE, a state to retry, never INTERNAL; and reads go on.

use tonic::Code;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_without_its_replicas_gives_unavailable_not_internal() {
    let mut t = TestServer::start(Backend::Redis).await;
    let node = register_node_eventually(&t.client, bare_node("", "payments", "n1", None)).await;
    // From now on this Redis refuses every write: it has no replica.
    let mut conn = t.redis().connection().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("min-replicas-to-write")
        .arg("1")
        .query_async(&mut conn)
        .await
        .expect("CONFIG SET min-replicas-to-write");

    // RegisterNode is a MULTI/EXEC; RemoveNode a single script call.
    let err = within(
        "RegisterNode while Redis refuses writes",
        t.client
            .register_node(bare_node("", "payments", "n2", None)),
    )
    .await
    .expect_err("Redis refuses writes");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let err = within(
        "RemoveNode while Redis refuses writes",
        t.client
            .remove_node(discovered::proto::v1::RemoveNodeRequest {
                service_name: "payments".into(),
                node_name: "n1".into(),
                ..Default::default()
            }),
    )
    .await
    .expect_err("Redis refuses writes");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(get_nodes(&mut t.client, "", "payments").await, [node]);
}

/// Refused writes make the pool suspect the master moved, but the node is
/// still the master: watchers keep their stream, with no RESYNC (a RESYNC
/// every suspicion made every watcher reload its whole state every 250 ms
/// for as long as the writes were refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_writes_cost_watchers_no_resync() {
    let mut t = TestServer::start(Backend::Redis).await;
    let mut w = Watch::open(&mut t.client, "default", "payments", None).await;
    w.initial("default", "payments").await;
    let mut conn = t.redis().connection().await;
    let set_min_replicas = |n: &'static str| {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("SET").arg("min-replicas-to-write").arg(n);
        cmd
    };
    let _: () = set_min_replicas("1")
        .query_async(&mut conn)
        .await
        .expect("CONFIG SET min-replicas-to-write 1");
    // Refused writes over a second: several suspicions' worth.
    for i in 0..6 {
        let refused = within(
            "RegisterNode while Redis refuses writes",
            t.client
                .register_node(bare_node("", "payments", &format!("r{i}"), None)),
        )
        .await
        .expect_err("Redis refuses writes");
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let _: () = set_min_replicas("0")
        .query_async(&mut conn)
        .await
        .expect("CONFIG SET min-replicas-to-write 0");
    let node = register_node_eventually(&t.client, bare_node("", "payments", "n1", None)).await;
    // The next event is the registration itself, not a RESYNC.
    w.expect_node(discovered::proto::v1::EventType::NodeAdded, &node)
        .await;
}
