//! WatchService as a client sees it: the INITIAL/SYNCED start, the change
//! events each operation sends, their order, sequence and revision, and
//! which streams see which changes. Every test body runs twice, once on the
//! memory store and once on a real Redis (see the `conformance!` list at
//! the end).

use std::collections::{BTreeMap, BTreeSet};

use crate::common::*;
use discovered::proto::v1::*;
use discovered::server::Defaults;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// [`full_node`] with a TTL.
fn node(group: &str, service: &str, name: &str, i: u32, ttl: Option<i64>) -> RegisterNodeRequest {
    RegisterNodeRequest {
        ttl_seconds: ttl,
        ..full_node(group, service, name, i)
    }
}

async fn remove_node(c: &mut Client, group: &str, service: &str, name: &str) {
    let r = try_remove_node(c, group, service, name, false)
        .await
        .unwrap_or_else(|s| panic!("RemoveNode {group}/{service}/{name}: {s:?}"));
    assert!(
        r.removed,
        "RemoveNode {group}/{service}/{name} removed nothing"
    );
}

async fn remove_service(c: &mut Client, group: &str, service: &str) -> RemoveServiceResponse {
    try_remove_service(c, group, service, false)
        .await
        .unwrap_or_else(|s| panic!("RemoveService {group}/{service}: {s:?}"))
}

/// Node records keyed by (service, node name), for order-free comparison.
fn by_name<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> BTreeMap<(String, String), Node> {
    nodes
        .into_iter()
        .map(|n| ((n.service_name.clone(), n.node_name.clone()), n.clone()))
        .collect()
}

/// The nodes of INITIAL events, keyed by (service, node name).
fn initial_nodes(events: &[WatchEvent]) -> BTreeMap<(String, String), Node> {
    let map = by_name(events.iter().map(node_of));
    assert_eq!(map.len(), events.len(), "a node sent twice: {events:#?}");
    map
}

#[track_caller]
fn assert_increasing(revisions: &[u64], what: &str) {
    for w in revisions.windows(2) {
        assert!(
            w[0] < w[1],
            "{what}: revisions must strictly increase: {revisions:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// The whole life of a service through one stream: its state first, then
/// each kind of change, in order, each with the record it is about.
async fn initial_then_changes(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;
    let registered = register_service(c, full_service("shop", "payments")).await;
    register_node(c, node("shop", "payments", "n1", 1, None)).await;
    register_node(c, node("shop", "payments", "n2", 2, None)).await;
    let existing = get_nodes(c, "shop", "payments").await;
    assert_eq!(existing.len(), 2);

    let mut w = Watch::open(c, "shop", "payments", None).await;
    let initial = w.initial("shop", "payments").await;
    assert_eq!(initial.len(), 2, "one INITIAL per node: {initial:#?}");
    assert_eq!(
        initial_nodes(&initial),
        by_name(&existing),
        "INITIAL records must be GetNodes' records"
    );
    assert_eq!(w.last_sequence, 3, "INITIAL, INITIAL, SYNCED");
    let snapshot_revision = initial[0].revision;

    // Writes elsewhere (a sibling service of the group, the same service
    // name in another group) are not this stream's business: the next
    // event is the node added after them.
    register_node(c, bare_node("shop", "payments-eu", "x1", None)).await;
    register_node(c, bare_node("other", "payments", "x1", None)).await;
    let added = register_node(c, node("shop", "payments", "n3", 3, None)).await;
    w.expect_node(EventType::NodeAdded, &added).await;

    // A changed field: NODE_UPDATED with the new record.
    let mut req = node("shop", "payments", "n3", 3, None);
    req.port = 9999;
    let updated = register_node(c, req).await;
    assert_eq!(updated.registered_at, added.registered_at);
    let e = w.expect_node(EventType::NodeUpdated, &updated).await;
    assert_eq!(node_of(&e).port, 9999);

    // RemoveNode: NODE_REMOVED with the node's last record, addresses too.
    remove_node(c, "shop", "payments", "n3").await;
    let e = w.expect_node(EventType::NodeRemoved, &updated).await;
    assert_eq!(node_of(&e).ip, ["10.1.0.3", "fd00::3"]);

    // A node with a TTL: NODE_ADDED, then NODE_EXPIRED with its record
    // once the TTL runs out.
    let short = register_node(c, node("shop", "payments", "n4", 4, Some(1))).await;
    assert!(short.expires_at.is_some());
    w.expect_node(EventType::NodeAdded, &short).await;
    let e = w.expect_node(EventType::NodeExpired, &short).await;
    assert_eq!(node_of(&e).ip, ["10.1.0.4", "fd00::4"]);
    assert!(
        ms(&e.time) >= ms(&short.expires_at),
        "expired before its deadline: {e:?}"
    );

    // The service's record changes (credentials still set): SERVICE_UPDATED
    // with the new record, credentials left out.
    let mut req = full_service("shop", "payments");
    req.description = "Payments, now with refunds".into();
    req.auth_credentials = "user:n3w-s3cret".into();
    let service_updated = register_service(c, req).await;
    assert_eq!(service_updated.registered_at, registered.registered_at);
    let e = w
        .expect_service(EventType::ServiceUpdated, &service_updated)
        .await;
    assert_eq!(service_of(&e).description, "Payments, now with refunds");
    let revealed = get_service(c, "shop", "payments", true)
        .await
        .expect("GetService");
    assert_eq!(
        revealed.auth_credentials, "user:n3w-s3cret",
        "the credentials are set, so their absence from the event means something"
    );

    // RemoveService: NODE_REMOVED for each node it had, then
    // SERVICE_REMOVED with its record.
    let r = remove_service(c, "shop", "payments").await;
    assert!(r.removed);
    assert_eq!(r.nodes_removed, 2);
    let removed = w.expect_nodes(EventType::NodeRemoved, 2).await;
    assert_eq!(
        by_name(&removed),
        by_name(&existing),
        "NODE_REMOVED must carry each remaining node's last record"
    );
    w.expect_service(EventType::ServiceRemoved, &service_updated)
        .await;

    // Nothing else came with the removal: the next event is a new node.
    let again = register_node(c, node("shop", "payments", "n5", 5, None)).await;
    w.expect_node(EventType::NodeAdded, &again).await;

    let changes = &w.seen()[3..];
    for e in changes {
        assert_eq!(about(e), ("shop", "payments"), "{e:?}");
    }
    let revisions: Vec<u64> = changes.iter().map(|e| e.revision).collect();
    assert!(
        revisions[0] > snapshot_revision,
        "changes after the snapshot must have higher revisions: snapshot {snapshot_revision}, changes {revisions:?}"
    );
    assert_increasing(&revisions, "change events");
    let sequences: Vec<u64> = changes.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (4..4 + changes.len() as u64).collect::<Vec<_>>());
}

/// A re-registration that changes no field sends nothing: neither for a
/// node (whatever its TTL) nor for a service.
async fn identical_reregistration_is_silent(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;
    let mut w = Watch::open(c, "shop", "payments", None).await;
    assert!(w.initial("shop", "payments").await.is_empty());

    let a = register_node(c, node("shop", "payments", "a", 1, None)).await;
    w.expect_node(EventType::NodeAdded, &a).await;

    // The same record again, then with a TTL, then with another TTL:
    // timestamps and deadlines change, fields do not.
    let same = register_node(c, node("shop", "payments", "a", 1, None)).await;
    assert!(same.expires_at.is_none());
    let with_ttl = register_node(c, node("shop", "payments", "a", 1, Some(3600))).await;
    assert!(
        with_ttl.expires_at.is_some(),
        "the TTL was taken: {with_ttl:?}"
    );
    let other_ttl = register_node(c, node("shop", "payments", "a", 1, Some(7200))).await;
    assert!(ms(&other_ttl.expires_at) > ms(&with_ttl.expires_at));
    assert_eq!(other_ttl.registered_at, a.registered_at);

    let b = register_node(c, node("shop", "payments", "b", 2, None)).await;
    let e = w.expect(EventType::NodeAdded).await;
    assert_eq!(
        node_of(&e),
        &b,
        "re-registering a node unchanged must send nothing"
    );

    // The service had no record (only nodes): its first registration is
    // SERVICE_REGISTERED; the same registration again sends nothing.
    let registered = register_service(c, full_service("shop", "payments")).await;
    w.expect_service(EventType::ServiceRegistered, &registered)
        .await;
    let again = register_service(c, full_service("shop", "payments")).await;
    assert_eq!(again.registered_at, registered.registered_at);

    let mut req = node("shop", "payments", "a", 1, None);
    req.fqdn = "a.renamed.example.com".into();
    let changed = register_node(c, req).await;
    let e = w.expect(EventType::NodeUpdated).await;
    assert_eq!(
        node_of(&e),
        &changed,
        "re-registering a service unchanged must send nothing"
    );
    assert_eq!(node_of(&e).fqdn, "a.renamed.example.com");

    // A node's record may equal its old one exactly after a change back:
    // that is a change, and it is sent.
    let back = register_node(c, node("shop", "payments", "a", 1, None)).await;
    w.expect_node(EventType::NodeUpdated, &back).await;
}

/// A node's status, locality and weight are part of its record: draining
/// it (or moving it, or reweighting it) is NODE_UPDATED and shows in
/// GetNodes, the same again is silent, and a draining node stays listed.
async fn status_locality_and_weight_changes_are_updates(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;
    let mut w = Watch::open(c, "shop", "payments", None).await;
    assert!(w.initial("shop", "payments").await.is_empty());
    let a = register_node(c, node("shop", "payments", "a", 1, None)).await;
    assert_eq!(a.status, NodeStatus::Serving as i32);
    assert_eq!(a.weight, 11);
    assert_eq!(
        a.locality.as_ref().map(|l| l.sub_zone.as_str()),
        Some("rack-1")
    );
    w.expect_node(EventType::NodeAdded, &a).await;

    let mut draining = node("shop", "payments", "a", 1, None);
    draining.status = NodeStatus::Draining as i32;
    let drained = register_node(c, draining.clone()).await;
    assert_eq!(drained.status, NodeStatus::Draining as i32);
    w.expect_node(EventType::NodeUpdated, &drained).await;
    let listed = get_nodes(c, "shop", "payments").await;
    assert_eq!(listed.len(), 1, "a draining node stays listed");
    assert_eq!(listed[0].status, NodeStatus::Draining as i32);
    // The same draining registration again sends nothing: the next event
    // is the reweighting.
    register_node(c, draining.clone()).await;
    let mut heavier = draining;
    heavier.weight = 500;
    let reweighted = register_node(c, heavier.clone()).await;
    let e = w.expect(EventType::NodeUpdated).await;
    assert_eq!(node_of(&e), &reweighted, "the same again must send nothing");
    assert_eq!(node_of(&e).weight, 500);
    // Moved to no locality at all, and serving again (unspecified).
    let mut moved = heavier;
    moved.locality = None;
    moved.status = NodeStatus::Unspecified as i32;
    let serving = register_node(c, moved).await;
    assert_eq!(serving.status, NodeStatus::Serving as i32);
    assert_eq!(serving.locality, None);
    w.expect_node(EventType::NodeUpdated, &serving).await;
}

/// A watch of a whole group (empty service_name) sees every service of the
/// group and nothing of other groups, however similar their names.
async fn group_watch_sees_every_service(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;
    register_service(c, full_service("shop", "payments")).await;
    register_node(c, node("shop", "payments", "p1", 1, None)).await;
    register_node(c, node("shop", "payments", "p2", 2, None)).await;
    register_node(c, node("shop", "orders", "o1", 3, None)).await;
    // A registered service without nodes has no INITIAL event.
    register_service(c, full_service("shop", "catalog")).await;
    register_node(c, node("other", "payments", "x1", 4, None)).await;
    register_node(c, node("shop-eu", "payments", "y1", 5, None)).await;
    register_node(c, node("sho", "orders", "z1", 6, None)).await;
    let mut expected = get_nodes(c, "shop", "payments").await;
    expected.extend(get_nodes(c, "shop", "orders").await);
    assert_eq!(expected.len(), 3);

    let mut w = Watch::open(c, "shop", "", None).await;
    let initial = w.initial("shop", "").await;
    assert_eq!(
        initial_nodes(&initial),
        by_name(&expected),
        "INITIAL must cover every node of the group's services, and only those"
    );

    // A node in another group, then one in the group: only the latter.
    register_node(c, node("other", "orders", "x2", 7, None)).await;
    let o2 = register_node(c, node("shop", "orders", "o2", 8, None)).await;
    let e = w.expect_node(EventType::NodeAdded, &o2).await;
    assert_eq!(about(&e), ("shop", "orders"));

    // A service registered in a group whose name starts like ours.
    register_service(c, full_service("shop-eu", "inventory")).await;
    let inventory = register_service(c, full_service("shop", "inventory")).await;
    w.expect_service(EventType::ServiceRegistered, &inventory)
        .await;

    // A changed node elsewhere, then a changed node here.
    let mut req = node("other", "payments", "x1", 4, None);
    req.port = 1;
    register_node(c, req).await;
    let mut req = node("shop", "payments", "p2", 2, None);
    req.port = 2;
    let p2 = register_node(c, req).await;
    w.expect_node(EventType::NodeUpdated, &p2).await;

    // A removed node elsewhere, then here.
    remove_node(c, "shop-eu", "payments", "y1").await;
    remove_node(c, "shop", "payments", "p1").await;
    let e = w.expect(EventType::NodeRemoved).await;
    let n = node_of(&e);
    assert_eq!(
        (n.service_name.as_str(), n.node_name.as_str()),
        ("payments", "p1")
    );

    // A removed service elsewhere, then one here (known only by its nodes).
    remove_service(c, "other", "payments").await;
    remove_service(c, "sho", "orders").await;
    let orders = get_nodes(c, "shop", "orders").await;
    remove_service(c, "shop", "orders").await;
    let removed = w.expect_nodes(EventType::NodeRemoved, 2).await;
    assert_eq!(by_name(&removed), by_name(&orders));
    let e = w.expect(EventType::ServiceRemoved).await;
    let s = service_of(&e);
    assert_eq!(
        (s.service_group.as_str(), s.service_name.as_str()),
        ("shop", "orders")
    );

    // And a service of the group that had no nodes when the stream began.
    register_node(c, node("shop-eu", "catalog", "y2", 9, None)).await;
    let c1 = register_node(c, node("shop", "catalog", "c1", 10, None)).await;
    w.expect_node(EventType::NodeAdded, &c1).await;
}

/// send_initial=false: the stream starts with SYNCED and then carries
/// changes only.
async fn send_initial_false(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;
    register_service(c, full_service("shop", "payments")).await;
    register_node(c, node("shop", "payments", "n1", 1, None)).await;
    register_node(c, node("shop", "payments", "n2", 2, None)).await;

    let mut w = Watch::open(c, "shop", "payments", Some(false)).await;
    let e = w.next().await;
    w.check_synced(&e, "shop", "payments");
    assert_eq!(e.sequence, 1, "SYNCED comes first: {e:?}");

    let n3 = register_node(c, node("shop", "payments", "n3", 3, None)).await;
    let e = w.expect_node(EventType::NodeAdded, &n3).await;
    assert_eq!(e.sequence, 2);
    assert!(e.revision > 0);
    let mut req = node("shop", "payments", "n1", 1, None);
    req.os = "Debian GNU/Linux 13".into();
    let n1 = register_node(c, req).await;
    let e2 = w.expect(EventType::NodeUpdated).await;
    assert_eq!(node_of(&e2), &n1);
    assert!(e2.revision > e.revision);

    // send_initial=true is the same as leaving it out: the state first.
    let mut full = Watch::open(c, "shop", "payments", Some(true)).await;
    let initial = full.initial("shop", "payments").await;
    assert_eq!(
        initial_nodes(&initial),
        by_name(&get_nodes(c, "shop", "payments").await)
    );
}

/// RemoveServiceGroup: for each service, NODE_REMOVED per node, then
/// SERVICE_REMOVED, each with its record.
async fn remove_group_events(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;
    let payments = register_service(c, full_service("shop", "payments")).await;
    register_node(c, node("shop", "payments", "p1", 1, None)).await;
    register_node(c, node("shop", "payments", "p2", 2, None)).await;
    // Known only by its node: no record of its own.
    register_node(c, node("shop", "orders", "o1", 3, None)).await;
    // Registered, without nodes.
    let catalog = register_service(c, full_service("shop", "catalog")).await;
    // A group whose name starts like ours: untouched.
    register_node(c, node("shop-eu", "payments", "y1", 4, None)).await;
    let mut nodes = get_nodes(c, "shop", "payments").await;
    nodes.extend(get_nodes(c, "shop", "orders").await);

    let mut w = Watch::open(c, "shop", "", None).await;
    let initial = w.initial("shop", "").await;
    assert_eq!(initial_nodes(&initial), by_name(&nodes));

    let r = try_remove_group(c, "shop", false)
        .await
        .expect("RemoveServiceGroup");
    assert!(r.removed);
    assert_eq!(r.services_removed, 3);

    // Three nodes and three services: six events. Each service's come in
    // its own order, above its snapshot's revision; the services' removals
    // may interleave.
    let events = w.next_n(6).await;
    for service in ["payments", "orders", "catalog"] {
        let revisions: Vec<u64> = events
            .iter()
            .filter(|e| e.service_name == service)
            .map(|e| e.revision)
            .collect();
        let snapshot = initial
            .iter()
            .find(|e| e.service_name == service)
            .map_or(0, |e| e.revision);
        assert!(
            revisions[0] > snapshot,
            "{service}: {revisions:?} after {snapshot}"
        );
        assert_increasing(
            &revisions,
            &format!("RemoveServiceGroup events of {service}"),
        );
    }

    let mut removed_nodes = Vec::new();
    let mut removed_services: BTreeMap<String, Service> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.service_group, "shop", "{e:?}");
        assert!(
            !removed_services.contains_key(&e.service_name),
            "an event about {:?} after its SERVICE_REMOVED: {events:#?}",
            e.service_name
        );
        match kind(e) {
            EventType::NodeRemoved => removed_nodes.push(node_of(e).clone()),
            EventType::ServiceRemoved => {
                let s = service_of(e).clone();
                // Every node of this service came before it.
                let before: BTreeSet<&str> = events[..i]
                    .iter()
                    .filter(|p| p.service_name == e.service_name)
                    .map(|p| node_of(p).node_name.as_str())
                    .collect();
                let of_service: BTreeSet<&str> = nodes
                    .iter()
                    .filter(|n| n.service_name == e.service_name)
                    .map(|n| n.node_name.as_str())
                    .collect();
                assert_eq!(
                    before, of_service,
                    "SERVICE_REMOVED of {:?} must follow its nodes' NODE_REMOVED: {events:#?}",
                    e.service_name
                );
                removed_services.insert(s.service_name.clone(), s);
            }
            _ => panic!("unexpected event for RemoveServiceGroup: {e:?} in {events:#?}"),
        }
    }
    assert_eq!(
        by_name(&removed_nodes),
        by_name(&nodes),
        "NODE_REMOVED must carry each node's last record"
    );
    assert_eq!(
        removed_services.keys().collect::<Vec<_>>(),
        ["catalog", "orders", "payments"]
    );
    assert_eq!(removed_services["payments"], payments);
    assert_eq!(removed_services["catalog"], catalog);
    let orders = &removed_services["orders"];
    assert_eq!(
        (orders.endpoint.as_str(), orders.registered_at),
        ("", None),
        "a service known only by its nodes has a bare record: {orders:?}"
    );

    // Nothing else: the next event is a new node of the (new) group, after
    // a write to the look-alike group.
    register_node(c, node("shop-eu", "payments", "y2", 5, None)).await;
    let fresh = register_node(c, node("shop", "payments", "p3", 6, None)).await;
    w.expect_node(EventType::NodeAdded, &fresh).await;
}

/// An empty service_group is the server's default group, for the watch as
/// for the registrations.
async fn default_group(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;
    let d1 = register_node(c, node("", "payments", "d1", 1, None)).await;
    assert_eq!(d1.service_group, "default");

    let mut w = Watch::open(c, "", "payments", None).await;
    let initial = w.initial("default", "payments").await;
    assert_eq!(initial_nodes(&initial), by_name([&d1]));

    let d2 = register_node(c, node("default", "payments", "d2", 2, None)).await;
    let e = w.expect_node(EventType::NodeAdded, &d2).await;
    assert_eq!(e.service_group, "default");
    register_node(c, node("other", "payments", "x1", 3, None)).await;
    let d3 = register_node(c, node("", "payments", "d3", 4, None)).await;
    let e = w.expect_node(EventType::NodeAdded, &d3).await;
    assert_eq!(e.service_group, "default");

    // Naming the default group is the same as leaving it out.
    let mut named = Watch::open(c, "default", "", None).await;
    let initial = named.initial("default", "").await;
    assert_eq!(initial_nodes(&initial), by_name([&d1, &d2, &d3]));

    // The default is the server's: with another one, "" means that one.
    let mut t = TestServer::start_with(
        backend,
        Defaults {
            service_group: "main".into(),
            ..Defaults::default()
        },
    )
    .await;
    let c = &mut t.client;
    let m1 = register_node(c, node("", "payments", "m1", 5, None)).await;
    assert_eq!(m1.service_group, "main");
    let mut w = Watch::open(c, "", "", None).await;
    let initial = w.initial("main", "").await;
    assert_eq!(initial_nodes(&initial), by_name([&m1]));
    register_node(c, node("default", "payments", "x2", 6, None)).await;
    let m2 = register_node(c, node("main", "payments", "m2", 7, None)).await;
    w.expect_node(EventType::NodeAdded, &m2).await;
    let m3 = register_node(c, node("", "orders", "m3", 8, None)).await;
    let e = w.expect_node(EventType::NodeAdded, &m3).await;
    assert_eq!(e.service_group, "main");
}

/// A watch with a bad name is refused with INVALID_ARGUMENT naming the
/// field.
async fn invalid_watch_request(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;
    let long = "x".repeat(129);
    for bad in ["a:b", "a*", "{x}", "has space", "ä", long.as_str()] {
        for (field, req) in [
            (
                "service_name",
                WatchServiceRequest {
                    service_group: "shop".into(),
                    service_name: bad.into(),
                    send_initial: None,
                },
            ),
            (
                "service_group",
                WatchServiceRequest {
                    service_group: bad.into(),
                    service_name: "payments".into(),
                    send_initial: None,
                },
            ),
            (
                "service_group",
                WatchServiceRequest {
                    service_group: bad.into(),
                    service_name: String::new(),
                    send_initial: Some(false),
                },
            ),
        ] {
            let what = format!("WatchService with {field} {bad:?}");
            assert_invalid(&Watch::refusal(c, req).await, field, &what);
        }
    }
    // The longest names are fine, and so is the server afterwards.
    let longest = "y".repeat(128);
    let mut w = Watch::open(c, &longest, &longest, None).await;
    assert!(w.initial(&longest, &longest).await.is_empty());
    let n = register_node(c, node(&longest, &longest, "n1", 1, None)).await;
    w.expect_node(EventType::NodeAdded, &n).await;
}

/// A node registered again after it expired is a new node: NODE_EXPIRED,
/// then NODE_ADDED (never NODE_UPDATED), whether or not the server had
/// swept the expired node yet.
async fn reregister_after_expiry(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;
    let mut w = Watch::open(c, "shop", "payments", None).await;
    assert!(w.initial("shop", "payments").await.is_empty());

    let first = register_node(c, node("shop", "payments", "n1", 1, Some(1))).await;
    w.expect_node(EventType::NodeAdded, &first).await;
    w.expect_node(EventType::NodeExpired, &first).await;

    let second = register_node(c, node("shop", "payments", "n1", 1, None)).await;
    w.expect_node(EventType::NodeAdded, &second).await;
    assert!(
        ms(&second.registered_at) > ms(&first.registered_at),
        "an expired node registered again starts afresh: {second:?}"
    );

    // Registered again as soon as reads stop showing it, which may be
    // before or after the server's sweep noticed it: the stream tells the
    // same story either way, once.
    let short = register_node(c, node("shop", "payments", "n2", 2, Some(1))).await;
    w.expect_node(EventType::NodeAdded, &short).await;
    eventually("n2 to expire", || {
        let mut c = c.clone();
        async move {
            let gone = get_nodes(&mut c, "shop", "payments")
                .await
                .iter()
                .all(|n| n.node_name != "n2");
            gone.then_some(())
        }
    })
    .await;
    let renewed = register_node(c, node("shop", "payments", "n2", 2, None)).await;
    w.expect_node(EventType::NodeExpired, &short).await;
    w.expect_node(EventType::NodeAdded, &renewed).await;
    let n3 = register_node(c, node("shop", "payments", "n3", 3, None)).await;
    let e = w.expect(EventType::NodeAdded).await;
    assert_eq!(node_of(&e), &n3, "the expiry must be reported exactly once");
}

/// Clients that open watches and go away leave a server that still serves.
async fn client_disconnect(backend: Backend) {
    let t = TestServer::start(backend).await;
    let mut c = t.client.clone();
    let n1 = register_node(&mut c, node("shop", "payments", "n1", 1, None)).await;

    let mut watches = Vec::new();
    for i in 0..20 {
        let mut w = if i % 2 == 0 {
            Watch::open(&mut c, "shop", "payments", None).await
        } else {
            Watch::open(&mut c, "shop", "", None).await
        };
        let initial = w
            .initial("shop", if i % 2 == 0 { "payments" } else { "" })
            .await;
        assert_eq!(initial_nodes(&initial), by_name([&n1]));
        watches.push(w);
    }
    assert_eq!(t.hub.receivers(), 20);
    drop(watches);
    eventually("the dropped watches to be cleaned up", || {
        let n = t.hub.receivers();
        async move { (n == 0).then_some(()) }
    })
    .await;

    let mut w = Watch::open(&mut c, "shop", "payments", None).await;
    let initial = w.initial("shop", "payments").await;
    assert_eq!(initial_nodes(&initial), by_name([&n1]));
    let n2 = register_node(&mut c, node("shop", "payments", "n2", 2, None)).await;
    w.expect_node(EventType::NodeAdded, &n2).await;
    assert_eq!(
        by_name(&get_nodes(&mut c, "shop", "payments").await),
        by_name([&n1, &n2])
    );
    let listed = c
        .list_services(ListServicesRequest {
            service_group: "shop".into(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .expect("ListServices")
        .into_inner();
    assert_eq!(listed.service_names, ["payments"]);
}

/// Streams that start while another client writes: each stream's INITIAL
/// state plus its changes is the registry's state, with no change lost and
/// none told twice (a change both in the snapshot and sent after it would
/// be a NODE_ADDED for a node the stream already has).
async fn consistent_start_under_writes(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;
    for i in 0..5 {
        register_node(c, node("shop", "payments", &format!("a{i}"), i, None)).await;
    }
    let writer = {
        let mut c = c.clone();
        tokio::spawn(async move {
            let name = |i: u32| format!("w{i:03}");
            for i in 0..200u32 {
                register_node(&mut c, bare_node("shop", "payments", &name(i), None)).await;
                if i % 4 == 3 {
                    remove_node(&mut c, "shop", "payments", &name(i - 2)).await;
                }
                if i % 5 == 4 {
                    let mut req = bare_node("shop", "payments", &name(i - 1), None);
                    req.port = 1;
                    register_node(&mut c, req).await;
                }
            }
        })
    };
    let mut readers = Vec::new();
    for _ in 0..10 {
        let mut w = Watch::open(c, "shop", "payments", None).await;
        readers.push(tokio::spawn(async move {
            let mut state = initial_nodes(&w.initial("shop", "payments").await);
            loop {
                let e = w.next().await;
                let n = node_of(&e).clone();
                let key = (n.service_name.clone(), n.node_name.clone());
                match kind(&e) {
                    EventType::NodeAdded => assert!(
                        state.insert(key, n).is_none(),
                        "NODE_ADDED for a node the stream already had: {e:?}"
                    ),
                    EventType::NodeUpdated => assert!(
                        state.insert(key, n).is_some(),
                        "NODE_UPDATED for a node the stream did not have: {e:?}"
                    ),
                    EventType::NodeRemoved => assert!(
                        state.remove(&key).is_some(),
                        "NODE_REMOVED for a node the stream did not have: {e:?}"
                    ),
                    _ => panic!("unexpected event: {e:?}"),
                }
                if e.node.as_ref().is_some_and(|n| n.node_name == "zz-marker") {
                    return state;
                }
            }
        }));
        tokio::task::yield_now().await;
    }
    writer
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    register_node(c, bare_node("shop", "payments", "zz-marker", None)).await;
    let want = by_name(&get_nodes(c, "shop", "payments").await);
    assert_eq!(want.len(), 5 + 200 - 50 + 1);
    for reader in readers {
        let state = reader
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        assert_eq!(
            state, want,
            "INITIAL plus changes must add up to the registry's state"
        );
    }
}

conformance!(
    initial_then_changes,
    identical_reregistration_is_silent,
    status_locality_and_weight_changes_are_updates,
    group_watch_sees_every_service,
    send_initial_false,
    remove_group_events,
    default_group,
    invalid_watch_request,
    reregister_after_expiry,
    client_disconnect,
    consistent_start_under_writes,
);
