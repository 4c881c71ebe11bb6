//! WatchService under load and faults: several servers on one Redis, Redis
//! restarting under open streams, a thousand watchers on one subscription,
//! slow and vanished watchers.

use std::time::Duration;

use crate::common::*;
use discovered::proto::v1::*;

/// A watch of `payments` in the default group, which has no node yet: it
/// starts with SYNCED.
async fn watch_empty(c: &mut Client) -> Watch {
    let mut w = Watch::open(c, "", "payments", None).await;
    assert!(w.initial("default", "payments").await.is_empty());
    w
}

#[tokio::test]
async fn a_registration_through_one_server_reaches_a_watcher_on_another() {
    let redis = RedisServer::start();
    let mut a = TestServer::sharing(&redis).await;
    let mut b = TestServer::sharing(&redis).await;
    let mut w = watch_empty(&mut b.client).await;
    let node = register_node(&mut a.client, bare_node("", "payments", "pay-1", None)).await;
    let e = w.expect(EventType::NodeAdded).await;
    assert_eq!(e.node, Some(node));
    assert_eq!(e.sequence, 2);
    // And the other way round, through B's own writes as well.
    a.client
        .remove_node(RemoveNodeRequest {
            service_name: "payments".into(),
            node_name: "pay-1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let e = w.expect(EventType::NodeRemoved).await;
    assert_eq!(node_of(&e).ip, vec!["10.0.0.1"]);
}

async fn keyspace_flags(redis: &RedisServer) -> String {
    let mut conn = redis.connection().await;
    let (_, flags): (String, String) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(&mut conn)
        .await
        .unwrap();
    flags
}

#[tokio::test]
async fn a_watch_survives_a_redis_restart_with_a_resync() {
    let mut t = TestServer::start(Backend::Redis).await;
    register_node(&mut t.client, bare_node("", "payments", "old", None)).await;
    let mut w = Watch::open(&mut t.client, "", "payments", None).await;
    let initial = w.initial("default", "payments").await;
    let names: Vec<&str> = initial
        .iter()
        .map(|e| node_of(e).node_name.as_str())
        .collect();
    assert_eq!(names, ["old"]);
    let flags = keyspace_flags(t.redis()).await;
    assert!(
        flags.contains('K') && flags.contains('x') && flags.contains('e'),
        "{flags}"
    );

    // Restart empty, with notifications off, as a fresh Redis would be.
    t.redis().restart();
    // RESYNC, then the new state: empty.
    assert!(w.resync("default", "payments").await.is_empty());
    let flags = keyspace_flags(t.redis()).await;
    assert!(
        flags.contains('K') && flags.contains('x') && flags.contains('e'),
        "flags not re-applied: {flags}"
    );

    // And the stream goes on with new changes.
    let node = register_node_eventually(&t.client, bare_node("", "payments", "new", None)).await;
    let e = w.expect(EventType::NodeAdded).await;
    assert_eq!(e.node, Some(node));
}

/// Clients of `redis` with a subscription (sub or psub above 0).
async fn subscribed_clients(redis: &RedisServer) -> Vec<String> {
    let mut conn = redis.connection().await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .unwrap();
    list.lines()
        .filter(|line| {
            line.split(' ')
                .any(|field| matches!(field.split_once('='), Some(("sub" | "psub", n)) if n != "0"))
        })
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn a_thousand_watchers_share_one_redis_subscription() {
    let t = TestServer::start(Backend::Redis).await;
    // HTTP/2 limits concurrent streams per connection: spread them.
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(connect(&t.server.url()).await);
    }
    let mut streams = Vec::new();
    for i in 0..1000 {
        streams.push(watch_empty(&mut clients[i % 10]).await);
    }
    assert_eq!(t.hub.receivers(), 1000);

    let node = clients[0]
        .clone()
        .register_node(bare_node("", "payments", "pay-1", None))
        .await
        .unwrap()
        .into_inner();
    for w in &mut streams {
        let e = w.expect(EventType::NodeAdded).await;
        assert_eq!(e.node.as_ref(), Some(&node));
    }
    let subscribed = subscribed_clients(t.redis.as_ref().unwrap()).await;
    assert_eq!(subscribed.len(), 1, "subscribed clients: {subscribed:#?}");

    // Gone watchers are cleaned up at once: no receiver left behind.
    drop(streams);
    eventually("every watcher to be cleaned up", || {
        let n = t.hub.receivers();
        async move { (n == 0).then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn a_slow_watcher_gets_a_resync_and_never_stalls_the_others() {
    let t = TestServer::start(Backend::Memory).await;
    // Separate connections: on one HTTP/2 connection an unread stream
    // would use up the connection's flow-control window in the client.
    let url = t.server.url();
    // The clients must live as long as their streams: a dropped channel
    // takes its connection with it.
    let (mut slow_client, mut fast_client) = (connect(&url).await, connect(&url).await);
    let mut slow = watch_empty(&mut slow_client).await;
    let mut fast = watch_empty(&mut fast_client).await;

    // More changes than the fan-out, the stream buffer and the HTTP/2
    // windows hold, while the slow watcher reads nothing and the fast one
    // reads everything.
    const CHANGES: u64 = 8000;
    let reader = tokio::spawn(async move {
        // Watch checks that no sequence number is skipped.
        for _ in 0..CHANGES {
            fast.expect(EventType::NodeAdded).await;
        }
        assert_eq!(fast.last_sequence, 1 + CHANGES, "the fast watcher skipped");
    });
    let mut writers = Vec::new();
    for w in 0..8 {
        let mut c = t.client.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..CHANGES / 8 {
                let mut node = bare_node("", "payments", &format!("n{w}-{i}"), None);
                // Big enough that the events overflow the client's HTTP/2
                // window (megabytes) as well as the server's buffers.
                node.metadata.insert("blob".into(), "x".repeat(2048));
                c.register_node(node).await.unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    reader
        .await
        .expect("the fast watcher saw every change in order");

    // The slow watcher: whatever it had buffered, then RESYNC, the whole
    // current state, SYNCED; never a silent gap (Watch checks every
    // sequence number).
    let resync = loop {
        let e = slow.next().await;
        if kind(&e) != EventType::NodeAdded {
            break e;
        }
    };
    let initial = slow.resync_from(&resync, "default", "payments").await;
    assert_eq!(
        initial.len() as u64,
        CHANGES,
        "the resync must carry the whole state"
    );
}

#[tokio::test]
async fn a_silently_dead_subscription_is_found_and_replaced() {
    let mut t = TestServer::start(Backend::Redis).await;
    let mut w = watch_empty(&mut t.client).await;
    // Frozen: no connection closes, so only the subscriber's own PING can
    // tell that its connection no longer answers.
    t.redis().signal("STOP");
    tokio::time::sleep(Duration::from_secs(8)).await;
    t.redis().signal("CONT");
    assert!(w.resync("default", "payments").await.is_empty());
    // And changes flow again over the new subscription.
    let node = register_node_eventually(&t.client, bare_node("", "payments", "n", None)).await;
    assert_eq!(w.expect(EventType::NodeAdded).await.node, Some(node));
}
