//! WatchService under load and faults: several servers on one Redis, Redis
//! restarting under open streams, a thousand watchers on one subscription,
//! slow and vanished watchers.

use std::sync::Arc;
use std::time::Duration;

use crate::common::{Backend, RedisServer, TestServer, bare_node, eventually};
use discovered::proto::v1::discovery_client::DiscoveryClient;
use discovered::proto::v1::*;
use discovered::server::Defaults;
use discovered::store::{Hub, RedisConfig, RedisRegistry, Registry};
use tonic::Streaming;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(15);

async fn watch(client: &mut DiscoveryClient<Channel>, service: &str) -> Streaming<WatchEvent> {
    client
        .watch_service(WatchServiceRequest {
            service_group: String::new(),
            service_name: service.into(),
            send_initial: None,
        })
        .await
        .expect("WatchService")
        .into_inner()
}

async fn next(stream: &mut Streaming<WatchEvent>) -> WatchEvent {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("no watch event within 15 s")
        .expect("watch stream failed")
        .expect("watch stream ended")
}

fn kind(e: &WatchEvent) -> EventType {
    EventType::try_from(e.r#type).unwrap_or(EventType::Unspecified)
}

async fn expect(stream: &mut Streaming<WatchEvent>, want: EventType) -> WatchEvent {
    let e = next(stream).await;
    assert_eq!(kind(&e), want, "unexpected event: {e:?}");
    e
}

async fn registry_on(redis: &RedisServer) -> (Arc<dyn Registry>, Hub) {
    let config = RedisConfig::from_url(&redis.url(), "discovered").expect("config");
    let registry = RedisRegistry::new(config).expect("registry");
    registry.check().await.expect("redis answers");
    let hub = registry.hub();
    (Arc::new(registry), hub)
}

#[tokio::test]
async fn a_registration_through_one_server_reaches_a_watcher_on_another() {
    let redis = RedisServer::start();
    let mut a = TestServer::on(registry_on(&redis).await, None, Defaults::default()).await;
    let mut b = TestServer::on(registry_on(&redis).await, None, Defaults::default()).await;
    let mut stream = watch(&mut b.client, "payments").await;
    expect(&mut stream, EventType::Synced).await;
    let node = a
        .client
        .register_node(bare_node("", "payments", "pay-1", None))
        .await
        .unwrap()
        .into_inner();
    let e = expect(&mut stream, EventType::NodeAdded).await;
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
    let e = expect(&mut stream, EventType::NodeRemoved).await;
    assert_eq!(e.node.unwrap().ip, vec!["10.0.0.1"]);
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
    t.client
        .register_node(bare_node("", "payments", "old", None))
        .await
        .unwrap();
    let mut stream = watch(&mut t.client, "payments").await;
    assert_eq!(
        expect(&mut stream, EventType::Initial)
            .await
            .node
            .unwrap()
            .node_name,
        "old"
    );
    expect(&mut stream, EventType::Synced).await;
    let flags = keyspace_flags(t.redis.as_ref().unwrap()).await;
    assert!(
        flags.contains('K') && flags.contains('x') && flags.contains('e'),
        "{flags}"
    );

    // Restart empty, with notifications off, as a fresh Redis would be.
    t.redis().restart();
    let e = expect(&mut stream, EventType::Resync).await;
    assert_eq!(e.revision, 0);
    // The new state: empty.
    expect(&mut stream, EventType::Synced).await;
    let flags = keyspace_flags(t.redis.as_ref().unwrap()).await;
    assert!(
        flags.contains('K') && flags.contains('x') && flags.contains('e'),
        "flags not re-applied: {flags}"
    );

    // And the stream goes on with new changes.
    let node = eventually("a registration after the restart", WAIT, || {
        let mut c = t.client.clone();
        async move {
            c.register_node(bare_node("", "payments", "new", None))
                .await
                .ok()
        }
    })
    .await
    .into_inner();
    let e = expect(&mut stream, EventType::NodeAdded).await;
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
        let channel = Channel::from_shared(t.server.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        clients.push(DiscoveryClient::new(channel));
    }
    let mut streams = Vec::new();
    for i in 0..1000 {
        let mut s = watch(&mut clients[i % 10], "payments").await;
        expect(&mut s, EventType::Synced).await;
        streams.push(s);
    }
    assert_eq!(t.hub.receivers(), 1000);

    let node = clients[0]
        .clone()
        .register_node(bare_node("", "payments", "pay-1", None))
        .await
        .unwrap()
        .into_inner();
    for s in &mut streams {
        let e = expect(s, EventType::NodeAdded).await;
        assert_eq!(e.node.as_ref(), Some(&node));
    }
    let subscribed = subscribed_clients(t.redis.as_ref().unwrap()).await;
    assert_eq!(subscribed.len(), 1, "subscribed clients: {subscribed:#?}");

    // Gone watchers are cleaned up at once: no receiver left behind.
    drop(streams);
    eventually("every watcher to be cleaned up", WAIT, || {
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
    let connect = || async {
        let channel = Channel::from_shared(t.server.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        DiscoveryClient::new(channel)
    };
    // The clients must live as long as their streams: a dropped channel
    // takes its connection with it.
    let (mut slow_client, mut fast_client) = (connect().await, connect().await);
    let mut slow = watch(&mut slow_client, "payments").await;
    expect(&mut slow, EventType::Synced).await;
    let mut fast = watch(&mut fast_client, "payments").await;
    expect(&mut fast, EventType::Synced).await;

    // More changes than the fan-out, the stream buffer and the HTTP/2
    // windows hold, while the slow watcher reads nothing and the fast one
    // reads everything.
    const CHANGES: u64 = 8000;
    let reader = tokio::spawn(async move {
        let mut last = 1;
        for _ in 0..CHANGES {
            let e = expect(&mut fast, EventType::NodeAdded).await;
            assert_eq!(e.sequence, last + 1, "the fast watcher skipped");
            last = e.sequence;
        }
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
    // current state, SYNCED; never a silent gap.
    let mut seen_resync = false;
    let mut initial = 0;
    let mut sequence = 1;
    loop {
        let e = next(&mut slow).await;
        assert_eq!(e.sequence, sequence + 1, "sequence gap");
        sequence = e.sequence;
        match kind(&e) {
            EventType::NodeAdded if !seen_resync => {}
            EventType::Resync => seen_resync = true,
            EventType::Initial if seen_resync => initial += 1,
            EventType::Synced if seen_resync => break,
            other => panic!("unexpected {other:?} (resync seen: {seen_resync})"),
        }
    }
    assert_eq!(initial, CHANGES, "the resync must carry the whole state");
}

#[tokio::test]
async fn a_silently_dead_subscription_is_found_and_replaced() {
    let mut t = TestServer::start(Backend::Redis).await;
    let mut stream = watch(&mut t.client, "payments").await;
    expect(&mut stream, EventType::Synced).await;
    // Frozen: no connection closes, so only the subscriber's own PING can
    // tell that its connection no longer answers.
    t.redis().signal("STOP");
    tokio::time::sleep(Duration::from_secs(8)).await;
    t.redis().signal("CONT");
    let e = expect(&mut stream, EventType::Resync).await;
    assert_eq!(e.revision, 0);
    expect(&mut stream, EventType::Synced).await;
    // And changes flow again over the new subscription.
    let node = eventually("a registration after the thaw", WAIT, || {
        let mut c = t.client.clone();
        async move {
            c.register_node(bare_node("", "payments", "n", None))
                .await
                .ok()
        }
    })
    .await
    .into_inner();
    assert_eq!(
        expect(&mut stream, EventType::NodeAdded).await.node,
        Some(node)
    );
}
