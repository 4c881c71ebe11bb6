//! Nodes belong to the identity that registered them (issue 12): with an
//! actor given, a live node registered by another identity cannot be
//! registered again, renewed or removed, except by an admin; the same
//! identity can, including a new instance of it taking the node over. The
//! store's rule, on the memory store and on a real Redis (where the Lua
//! scripts apply it).

use std::sync::Arc;
use std::time::Duration;

use discovered::model::{Actor, NodeSpec, ServiceKey};
use discovered::store::{MemoryRegistry, NodeRegistration, Registry, StoreError};

use crate::common::*;

fn actor(name: &str) -> Actor {
    Actor {
        name: name.into(),
        admin: false,
    }
}

fn admin() -> Actor {
    Actor {
        name: "ops".into(),
        admin: true,
    }
}

/// A registration of node `n1` of default/payments by `actor` as instance
/// `instance`, on `port`, with a TTL of `ttl` seconds.
fn registration(actor: Option<Actor>, instance: &str, port: u32, ttl: u64) -> NodeRegistration {
    NodeRegistration {
        key: ServiceKey::new("default", "payments"),
        name: "n1".into(),
        spec: NodeSpec {
            instance_id: instance.into(),
            ip: vec!["10.0.0.1".into()],
            port,
            ..Default::default()
        },
        ttl: Some(Duration::from_secs(ttl)),
        keep_instance: false,
        actor,
    }
}

fn assert_not_owner<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) {
    match result {
        Err(StoreError::NotOwner { node, owner }) => {
            assert_eq!(
                (node.as_str(), owner.as_str()),
                ("n1", "payments-agent"),
                "{what}"
            );
        }
        other => panic!("{what}: expected NotOwner, got {other:?}"),
    }
}

async fn nodes_are_owned_by_who_registered_them(registry: Arc<dyn Registry>) {
    let key = ServiceKey::new("default", "payments");
    let owner = actor("payments-agent");
    let record = registry
        .register_node(registration(Some(owner.clone()), "i1", 80, 60))
        .await
        .expect("register")
        .record;
    assert_eq!(record.owner.as_deref(), Some("payments-agent"));
    let again = registry
        .register_node(registration(Some(owner.clone()), "i1", 80, 60))
        .await
        .expect("the same again");
    assert!(!again.changed, "registering the same again only renews");

    // Another identity: refused, and nothing changes (port, deadline).
    let intruder = actor("orders-agent");
    assert_not_owner(
        registry
            .register_node(registration(Some(intruder.clone()), "evil", 6666, 1))
            .await,
        "another identity re-registering",
    );
    assert_not_owner(
        registry
            .heartbeat(
                &key,
                "n1",
                Some(Duration::from_secs(1)),
                None,
                Some(&intruder),
            )
            .await,
        "another identity renewing",
    );
    assert_not_owner(
        registry
            .remove_node(&key, "n1", None, Some(&intruder))
            .await,
        "another identity removing",
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let nodes = registry.get_nodes(&key).await.expect("get nodes");
    assert_eq!(nodes.len(), 1, "the refused 1 s TTL did not take");
    assert_eq!(nodes[0].spec.port, 80);
    assert_eq!(nodes[0].spec.instance_id, "i1");
    assert_eq!(nodes[0].owner.as_deref(), Some("payments-agent"));

    // The same identity: a new instance takes the node over, and renews.
    let taken = registry
        .register_node(registration(Some(owner.clone()), "i2", 81, 60))
        .await
        .expect("a new instance of the owner")
        .record;
    assert_eq!(taken.spec.instance_id, "i2");
    registry
        .heartbeat(
            &key,
            "n1",
            Some(Duration::from_secs(60)),
            Some("i2"),
            Some(&owner),
        )
        .await
        .expect("the owner renews");

    // An admin may do anything; a node it registers again becomes its own,
    // which is a change even when the record is the same.
    let ops = admin();
    let claimed = registry
        .register_node(registration(Some(ops.clone()), "i2", 81, 60))
        .await
        .expect("an admin registers the same record");
    assert!(claimed.changed, "a new owner is a change");
    assert_eq!(claimed.record.owner.as_deref(), Some("ops"));
    registry
        .heartbeat(&key, "n1", Some(Duration::from_secs(60)), None, Some(&ops))
        .await
        .expect("an admin renews");
    let record = registry
        .register_node(registration(Some(ops.clone()), "i3", 82, 60))
        .await
        .expect("an admin registers again")
        .record;
    assert_eq!(record.owner.as_deref(), Some("ops"));
    registry
        .remove_node(&key, "n1", None, Some(&ops))
        .await
        .expect("an admin removes");

    // A node registered without auth has no owner: the first identity to
    // register it again owns it. Without auth nothing is checked, and a
    // node keeps the owner it has.
    registry
        .register_node(registration(None, "plain", 90, 60))
        .await
        .expect("without auth");
    let record = registry
        .register_node(registration(Some(owner.clone()), "i4", 91, 60))
        .await
        .expect("claiming an unowned node")
        .record;
    assert_eq!(record.owner.as_deref(), Some("payments-agent"));
    let record = registry
        .register_node(registration(None, "plain2", 92, 60))
        .await
        .expect("without auth")
        .record;
    assert_eq!(record.owner.as_deref(), Some("payments-agent"));
    assert_not_owner(
        registry
            .register_node(registration(Some(intruder), "evil", 6666, 60))
            .await,
        "the kept owner still applies",
    );

    // An expired node belongs to no one any more.
    registry
        .register_node(registration(Some(owner), "i5", 93, 1))
        .await
        .expect("register with a short TTL");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let record = registry
        .register_node(registration(Some(actor("orders-agent")), "i6", 94, 60))
        .await
        .expect("an expired node can be registered by anyone")
        .record;
    assert_eq!(record.owner.as_deref(), Some("orders-agent"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_nodes_are_owned_by_who_registered_them() {
    nodes_are_owned_by_who_registered_them(Arc::new(MemoryRegistry::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_nodes_are_owned_by_who_registered_them() {
    let redis = RedisServer::start();
    nodes_are_owned_by_who_registered_them(Arc::new(redis_registry(&redis).await)).await;
}
