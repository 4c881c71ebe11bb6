//! The typed Rust client, against a real server.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::common::{RedisServer, bare_node, eventually, free_port, redis_registry, within};
use discovered::client::{Client, ClientResult, Event};
use discovered::proto::v1::*;
use discovered::server::{Defaults, RunningServer};
use discovered::store::Registry;
use futures::{Stream, StreamExt};
use tonic::Code;

/// A server on `addr` over a registry of its own on `redis`.
async fn serve(redis: &RedisServer, addr: SocketAddr) -> RunningServer {
    let registry: Arc<dyn Registry> = Arc::new(redis_registry(redis).await);
    RunningServer::start(registry, Defaults::default(), addr)
        .await
        .expect("start server")
}

/// The next event of the typed client's watch, which must come.
async fn next(s: &mut (impl Stream<Item = ClientResult<Event>> + Unpin)) -> Event {
    within("the next watch event", s.next())
        .await
        .expect("stream ended")
        .expect("watch error")
}

#[tokio::test]
async fn calls_and_a_watch_that_survives_a_server_restart() {
    let redis = RedisServer::start();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let server = serve(&redis, addr).await;
    let client = Client::connect(&addr.to_string()).await.unwrap();

    let registered = client
        .register_node(bare_node("", "payments", "pay-1", Some(30)))
        .await
        .unwrap();
    let expires_at = client
        .heartbeat("", "payments", "pay-1", Some(60), &registered.instance_id)
        .await
        .unwrap();
    let node = Node {
        expires_at,
        ..registered
    };
    assert_eq!(
        client.get_nodes("", "payments").await.unwrap(),
        vec![node.clone()]
    );
    assert_eq!(client.list_services("").await.unwrap(), vec!["payments"]);
    assert_eq!(client.list_groups().await.unwrap(), vec!["default"]);
    let err = client.get_service("", "nope", false).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client.get_nodes("", "a:b").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let mut events = Box::pin(client.watch("", "payments"));
    assert_eq!(next(&mut events).await, Event::Initial(node.clone()));
    assert_eq!(next(&mut events).await, Event::Synced);

    // The server goes away (its streams end with UNAVAILABLE) and a new
    // one comes up on the same address, on the same Redis.
    server.stop().await.unwrap();
    let registered = client
        .register_node(bare_node("", "payments", "pay-2", None))
        .await;
    assert_eq!(registered.unwrap_err().code(), Code::Unavailable);
    let server = serve(&redis, addr).await;
    assert_eq!(next(&mut events).await, Event::Resync);
    assert_eq!(next(&mut events).await, Event::Initial(node.clone()));
    assert_eq!(next(&mut events).await, Event::Synced);

    // The same client works again, and the watch goes on.
    let added = eventually("the client to recover", || async {
        client
            .register_node(bare_node("", "payments", "pay-2", None))
            .await
            .ok()
    })
    .await;
    assert_eq!(next(&mut events).await, Event::NodeAdded(added));
    assert!(
        client
            .remove_node(RemoveNodeRequest {
                service_name: "payments".into(),
                node_name: "pay-1".into(),
                instance_id: node.instance_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
    );
    assert_eq!(next(&mut events).await, Event::NodeRemoved(node.clone()));
    drop(server);
}

#[tokio::test]
async fn a_refused_watch_ends_with_its_error() {
    let redis = RedisServer::start();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _server = serve(&redis, addr).await;
    let client = Client::connect(&addr.to_string()).await.unwrap();
    let mut events = Box::pin(client.watch("", "bad:name"));
    let first = within("the refused watch's error", events.next())
        .await
        .expect("one item");
    assert_eq!(first.unwrap_err().code(), Code::InvalidArgument);
    assert!(
        events.next().await.is_none(),
        "the stream ends after a final error"
    );
}
