//! Heartbeat and instance ownership, on both backends.

use std::time::Duration;

use crate::common::*;
use discovered::proto::v1::*;
use discovered::server::Defaults;
use tonic::Code;

fn beat(name: &str, ttl: Option<i64>, instance: &str) -> HeartbeatRequest {
    HeartbeatRequest {
        service_group: String::new(),
        service_name: "payments".into(),
        node_name: name.into(),
        ttl_seconds: ttl,
        instance_id: instance.into(),
    }
}

fn remove(name: &str, instance: &str) -> RemoveNodeRequest {
    RemoveNodeRequest {
        service_name: "payments".into(),
        node_name: name.into(),
        instance_id: instance.into(),
        ..Default::default()
    }
}

fn owned(name: &str, ttl: Option<i64>, instance: &str) -> RegisterNodeRequest {
    RegisterNodeRequest {
        instance_id: instance.into(),
        ..bare_node("", "payments", name, ttl)
    }
}

/// The nodes of `payments` in the default group.
async fn nodes(c: &mut Client) -> Vec<Node> {
    get_nodes(c, "", "payments").await
}

async fn heartbeat_renews_the_ttl(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;
    let node = register_node(c, owned("p1", Some(1), "")).await;
    let first_deadline = ms(&node.expires_at);
    let renewed = c
        .heartbeat(beat("p1", Some(60), ""))
        .await
        .unwrap()
        .into_inner();
    let new_deadline = ms(&renewed.expires_at);
    assert!(
        new_deadline >= first_deadline + 58_000,
        "{first_deadline} -> {new_deadline}"
    );
    // Past the old deadline and a few sweeps more, the node is still there,
    // with its record untouched and the new deadline.
    wait_past(first_deadline + 1000).await;
    let listed = nodes(c).await;
    assert_eq!(listed.len(), 1, "the renewed node expired");
    assert_eq!(ms(&listed[0].expires_at), new_deadline);
    assert_eq!(
        listed[0].updated_at, node.updated_at,
        "a heartbeat is not a write"
    );
    assert_eq!(listed[0].instance_id, node.instance_id);

    // ttl 0: no expiry from now on.
    let forever = c
        .heartbeat(beat("p1", Some(0), ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(forever.expires_at, None);
    assert_eq!(nodes(c).await[0].expires_at, None);
}

async fn heartbeat_uses_the_server_default_ttl(backend: Backend) {
    let defaults = Defaults {
        node_ttl: Some(Duration::from_secs(30)),
        ..Defaults::default()
    };
    let mut t = TestServer::start_with(backend, defaults).await;
    let c = &mut t.client;
    register_node(c, owned("p1", Some(0), "")).await;
    let before = now_ms();
    let renewed = c
        .heartbeat(beat("p1", None, ""))
        .await
        .unwrap()
        .into_inner();
    let deadline = ms(&renewed.expires_at);
    assert!(
        deadline >= before + 29_000 && deadline <= now_ms() + 31_000,
        "{deadline}"
    );
}

async fn heartbeat_of_a_missing_or_expired_node_is_not_found(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;
    let err = c.heartbeat(beat("ghost", Some(30), "")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let node = register_node(c, owned("short", Some(1), "")).await;
    wait_past(ms(&node.expires_at)).await;
    let err = c.heartbeat(beat("short", Some(30), "")).await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::NotFound,
        "an expired node must be registered again: {err:?}"
    );
    assert!(
        nodes(c).await.is_empty(),
        "the heartbeat revived an expired node"
    );
}

async fn heartbeat_sends_no_watch_event(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;
    register_node(c, owned("p1", Some(30), "")).await;
    let mut w = Watch::open(c, "", "payments", None).await;
    assert_eq!(w.initial("default", "payments").await.len(), 1);
    c.heartbeat(beat("p1", Some(60), "")).await.unwrap();
    register_node(c, owned("p2", None, "")).await;
    let e = w.expect(EventType::NodeAdded).await;
    assert_eq!(node_of(&e).node_name, "p2");
}

async fn instance_ids_are_generated_and_kept(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;
    let first = register_node(c, owned("p1", None, "")).await;
    assert_eq!(first.instance_id.len(), 32, "{first:?}");
    assert!(first.instance_id.bytes().all(|b| b.is_ascii_hexdigit()));
    let again = register_node(c, owned("p1", None, "")).await;
    assert_eq!(
        again.instance_id, first.instance_id,
        "a re-registration naming no instance keeps it"
    );
    let other = register_node(c, owned("p2", None, "")).await;
    assert_ne!(other.instance_id, first.instance_id);
    let named = register_node(c, owned("p1", None, "agent-7")).await;
    assert_eq!(named.instance_id, "agent-7");
    assert_eq!(nodes(c).await[0].instance_id, "agent-7");
}

async fn only_the_owning_instance_renews_or_removes(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;
    register_node(c, owned("p1", Some(30), "old-life")).await;
    // A rolling restart: the new process registers the same node name.
    register_node(c, owned("p1", Some(30), "new-life")).await;

    let err = c
        .heartbeat(beat("p1", Some(30), "old-life"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("instance_id"), "{err:?}");
    let err = c.remove_node(remove("p1", "old-life")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let listed = nodes(c).await;
    assert_eq!(listed.len(), 1, "the old instance removed its successor");
    assert_eq!(listed[0].instance_id, "new-life");

    c.heartbeat(beat("p1", Some(30), "new-life")).await.unwrap();
    let removed = c
        .remove_node(remove("p1", "new-life"))
        .await
        .unwrap()
        .into_inner();
    assert!(removed.removed);
    assert!(nodes(c).await.is_empty());
    // Without an instance_id anyone may remove (an operator cleaning up).
    register_node(c, owned("p2", None, "someone")).await;
    assert!(
        c.remove_node(remove("p2", ""))
            .await
            .unwrap()
            .into_inner()
            .removed
    );
}

async fn a_refused_removal_keeps_the_node_expiring(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;
    let node = register_node(c, owned("p1", Some(1), "mine")).await;
    let err = c.remove_node(remove("p1", "not-mine")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    wait_past(ms(&node.expires_at)).await;
    eventually("the node to expire", || {
        let mut c = c.clone();
        async move { nodes(&mut c).await.is_empty().then_some(()) }
    })
    .await;
}

async fn bad_instance_ids_are_invalid(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;
    register_node(c, owned("p1", None, "ok")).await;
    for bad in ["a:b", "has space", "{x}", &"x".repeat(129)] {
        let err = c.register_node(owned("p1", None, bad)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
        assert!(err.message().starts_with("instance_id"), "{err:?}");
        let err = c.heartbeat(beat("p1", Some(5), bad)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
        let err = c.remove_node(remove("p1", bad)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
    }
    let err = c.heartbeat(beat("a:b", Some(5), "")).await.unwrap_err();
    assert!(err.message().starts_with("node_name"), "{err:?}");
    assert_eq!(
        nodes(c).await[0].instance_id,
        "ok",
        "a refused call changed the node"
    );
}

conformance!(
    heartbeat_renews_the_ttl,
    heartbeat_uses_the_server_default_ttl,
    heartbeat_of_a_missing_or_expired_node_is_not_found,
    heartbeat_sends_no_watch_event,
    instance_ids_are_generated_and_kept,
    only_the_owning_instance_renews_or_removes,
    a_refused_removal_keeps_the_node_expiring,
    bad_instance_ids_are_invalid,
);
