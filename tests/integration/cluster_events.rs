//! Keyspace events are node-local on Redis Cluster: a key of ours expired
//! on any master (something other than `discovered` changed the registry)
//! must reach the watchers as a RESYNC, whichever master holds it.

use crate::common::*;

/// A key under our prefix that the master on `port` holds, found by
/// trying tags until one lands in its slots.
async fn key_on(t: &mut TestServer, port: u16) -> String {
    let topology = t.cluster().topology().await;
    for i in 0.. {
        let key = format!("discovered:v2:{{probe-{i}}}:stray");
        let slot = t.cluster().keyslot(&key).await;
        if topology.owner(slot).is_some_and(|m| m.port == port) {
            return key;
        }
    }
    unreachable!("some tag lands on every master")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_expiring_on_any_master_resyncs_the_watchers() {
    let mut t = TestServer::start(Backend::Cluster).await;
    register_node(&mut t.client, bare_node("g", "s", "n1", None)).await;
    let mut w = Watch::open(&mut t.client, "g", "", None).await;
    assert_eq!(w.initial("g", "").await.len(), 1);
    let masters: Vec<u16> = t
        .cluster()
        .topology()
        .await
        .masters()
        .iter()
        .map(|m| m.port)
        .collect();
    assert_eq!(masters.len(), 3, "{masters:?}");
    for port in masters {
        let key = key_on(&mut t, port).await;
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("node url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the master");
        let () = redis::cmd("SET")
            .arg(&key)
            .arg(1)
            .arg("PX")
            .arg(1)
            .query_async(&mut conn)
            .await
            .expect("SET PX");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        // Reading an expired key expires it at once (and sends the event).
        let _: bool = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("EXISTS");
        let state = w.resync("g", "").await;
        assert_eq!(
            state.len(),
            1,
            "{key} expired on master {port}: the resync restates the one node"
        );
        assert_eq!(node_of(&state[0]).node_name, "n1");
    }
}
