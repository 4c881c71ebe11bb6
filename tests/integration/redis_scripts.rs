//! The contract between the Rust side of the Redis backend and its Lua
//! scripts, run on a real Redis: the records the Rust code writes are the
//! ones the scripts read, and the arguments the typed calls push are the
//! ones the scripts take.

use crate::common::RedisServer;
use discovered::model::{NodeSpec, ServiceKey};
use discovered::store::redis::Keys;
use discovered::store::redis::record::{self, NODE_RECORD_HEAD};
use discovered::store::redis::scripts::{
    self, Heartbeat, NodeRemoval, NodeRenewal, NodeWrite, RegisterNode, RemoveNode, ScriptCall,
};
use futures::StreamExt;
use redis::aio::MultiplexedConnection;

/// Runs one script call, loading the scripts first (a fresh Redis has none).
async fn run<S: ScriptCall>(conn: &mut MultiplexedConnection, keys: &Keys, call: S) -> S::Reply {
    let mut pipe = redis::pipe();
    for script in scripts::all() {
        pipe.load_script(script).ignore();
    }
    call.add_to(&mut pipe, keys);
    let (reply,): (S::Reply,) = pipe.query_async(conn).await.expect("script call");
    reply
}

fn spec(instance_id: &str, port: u32) -> NodeSpec {
    NodeSpec {
        instance_id: instance_id.into(),
        ip: vec!["10.0.0.1".into()],
        port,
        fqdn: "pay-1.example".into(),
        metadata: [("zone".to_string(), "a".to_string())].into(),
        ..NodeSpec::default()
    }
}

/// Registers `spec` as node `pay-1` the way the registry does; returns the
/// stored envelope.
async fn register(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    service: &ServiceKey,
    spec: &NodeSpec,
    keep_instance: bool,
) -> String {
    let record = record::encode(spec).expect("encode");
    let call = RegisterNode {
        service,
        node: "pay-1",
        record: &record,
        now: 1_000,
        expires_at: None,
        keep_instance,
        actor: None,
        // The registry lists a service before its first write.
        listed_now: true,
    };
    match run(conn, keys, call).await {
        NodeWrite::Stored { envelope, .. } => envelope,
        other => panic!("register without auth refused: {other:?}"),
    }
}

/// The `record` of a stored envelope, as JSON.
fn record_of(stored: &str) -> serde_json::Value {
    let envelope: serde_json::Value = serde_json::from_str(stored).expect("envelope is JSON");
    envelope["record"].clone()
}

#[tokio::test]
async fn the_scripts_find_the_instance_id_the_rust_code_writes() {
    let redis = RedisServer::start();
    let mut conn = redis.connection().await;
    let keys = Keys::new("discovered");
    let service = ServiceKey::new("default", "payments");
    register(&mut conn, &keys, &service, &spec("a1b2c3", 80), false).await;

    let heartbeat = |instance| Heartbeat {
        service: &service,
        node: "pay-1",
        now: 2_000,
        expires_at: None,
        instance: Some(instance),
        actor: None,
    };
    // The id the scripts read is the one Rust wrote: a mismatch names it,
    // a match renews.
    assert_eq!(
        run(&mut conn, &keys, heartbeat("other")).await,
        NodeRenewal::OtherInstance("a1b2c3".into())
    );
    assert_eq!(
        run(&mut conn, &keys, heartbeat("a1b2c3")).await,
        NodeRenewal::Renewed
    );
    let removal = RemoveNode {
        service: &service,
        node: "pay-1",
        instance: Some("other"),
        now: 3_000,
        actor: None,
    };
    assert_eq!(
        run(&mut conn, &keys, removal).await,
        NodeRemoval::OtherInstance("a1b2c3".into())
    );
    let written = record::encode(&spec("a1b2c3", 80)).expect("encode");
    assert!(written.starts_with(NODE_RECORD_HEAD), "{written}");
}

#[tokio::test]
async fn a_kept_instance_id_replaces_the_fresh_one_in_place() {
    let redis = RedisServer::start();
    let mut conn = redis.connection().await;
    let keys = Keys::new("discovered");
    let service = ServiceKey::new("default", "payments");
    register(&mut conn, &keys, &service, &spec("first", 80), false).await;

    // A registration naming no instance carries a fresh id; the script
    // swaps in the live node's own and keeps the rest of the record.
    let stored = register(&mut conn, &keys, &service, &spec("fresh", 8443), true).await;
    let expected = record::encode(&spec("first", 8443)).expect("encode");
    let expected_json: serde_json::Value = serde_json::from_str(&expected).expect("JSON");
    assert_eq!(record_of(&stored), expected_json);
    assert!(
        stored.ends_with(&format!(r#","record":{expected}}}"#)),
        "the stored record is not byte for byte the Rust encoding: {stored}"
    );
}

#[tokio::test]
async fn a_change_is_published_where_and_when_the_call_says() {
    let redis = RedisServer::start();
    let mut conn = redis.connection().await;
    let keys = Keys::new("discovered");
    let service = ServiceKey::new("default", "payments");
    let mut pubsub = redis::Client::open(redis.url())
        .expect("redis url")
        .get_async_pubsub()
        .await
        .expect("pubsub connection");
    pubsub
        .subscribe(keys.changes_channel())
        .await
        .expect("subscribe");

    register(&mut conn, &keys, &service, &spec("a1b2c3", 80), false).await;

    let msg = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        pubsub.on_message().next(),
    )
    .await
    .expect("a change within 10 s")
    .expect("subscription open");
    let payload: String = msg.get_payload().expect("text payload");
    let change: serde_json::Value = serde_json::from_str(&payload).expect("change is JSON");
    assert_eq!(change["type"], "node_added", "{payload}");
    assert_eq!(change["time"], 1_000, "{payload}");
    assert_eq!(change["group"], "default", "{payload}");
    assert_eq!(change["service"], "payments", "{payload}");
    assert_eq!(change["node"], "pay-1", "{payload}");
    let revision: u64 = redis::cmd("GET")
        .arg(keys.revision(&service))
        .query_async(&mut conn)
        .await
        .expect("revision");
    assert_eq!(change["revision"], revision, "{payload}");
    assert_eq!(change["stored"]["record"]["instance_id"], "a1b2c3");
}
