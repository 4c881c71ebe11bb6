//! The conformance suite: the Discovery API as a client sees it. Every test
//! body runs on every backend: the memory store, a real Redis, Sentinel,
//! and Redis Cluster with two servers (writes through one, reads and
//! watches through the other; see the `conformance!` list at the end).

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;
use discovered::proto::v1::*;
use discovered::server::Defaults;
use prost_types::Timestamp;
use tonic::{Code, Status};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// What the API should return for `req`, registered in `group`, without
/// the server's timestamps.
fn service_from(req: &RegisterServiceRequest, group: &str, reveal: bool) -> Service {
    Service {
        service_group: group.into(),
        service_name: req.service_name.clone(),
        endpoint: req.endpoint.clone(),
        endpoint_type: req.endpoint_type.clone(),
        auth_type: req.auth_type.clone(),
        auth_credentials: if reveal {
            req.auth_credentials.clone()
        } else {
            String::new()
        },
        backend: req.backend.clone(),
        description: req.description.clone(),
        metadata: req.metadata.clone(),
        registered_at: None,
        updated_at: None,
    }
}

fn service_without_times(s: &Service) -> Service {
    Service {
        registered_at: None,
        updated_at: None,
        ..s.clone()
    }
}

/// What the API should return for `req` (explicit, canonical addresses),
/// registered in `group`, without the server's timestamps.
fn node_from(req: &RegisterNodeRequest, group: &str) -> Node {
    Node {
        service_group: group.into(),
        service_name: req.service_name.clone(),
        node_name: req.node_name.clone(),
        ip: req.ip.clone(),
        port: req.port,
        fqdn: req.fqdn.clone(),
        os: req.os.clone(),
        platform_name: req.platform_name.clone(),
        arch: req.arch.clone(),
        cpu_count: req.cpu_count,
        memory_mb: req.memory_mb,
        last_boot: req.last_boot,
        metadata: req.metadata.clone(),
        registered_at: None,
        updated_at: None,
        expires_at: None,
        instance_id: req.instance_id.clone(),
        // Unspecified registers a serving node; an empty locality is none.
        status: if req.status == NodeStatus::Unspecified as i32 {
            NodeStatus::Serving as i32
        } else {
            req.status
        },
        locality: req.locality.clone().filter(|l| *l != Locality::default()),
        weight: req.weight,
    }
}

fn node_without_times(n: &Node) -> Node {
    Node {
        registered_at: None,
        updated_at: None,
        expires_at: None,
        ..n.clone()
    }
}

/// Polls GetNodes until the node names are exactly `want`.
async fn wait_for_node_names(c: &Client, group: &str, service: &str, want: &[&str]) -> Vec<Node> {
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    let what = format!("nodes of {group}/{service} to be {want:?}");
    eventually(&what, || {
        let mut c = c.clone();
        let (group, service, want) = (group.to_string(), service.to_string(), want.clone());
        async move {
            let nodes = get_nodes(&mut c, &group, &service).await;
            (node_names(&nodes) == want).then_some(nodes)
        }
    })
    .await
}

/// Everything a client can see of one service, its group, and the groups.
#[derive(Debug, PartialEq)]
struct Snapshot {
    service: Service,
    nodes: Vec<Node>,
    services: Vec<String>,
    groups: Vec<String>,
}

async fn snapshot(c: &mut Client, group: &str, service: &str) -> Snapshot {
    Snapshot {
        service: get_service(c, group, service, true)
            .await
            .expect("snapshot GetService"),
        nodes: get_nodes(c, group, service).await,
        services: services(c, group).await,
        groups: groups(c).await,
    }
}

/// A change to a request, that makes one field invalid.
type Mutation<'a, R> = Box<dyn Fn(&mut R) + 'a>;

/// Registers `changed` again with each of `cases` applied: each must be
/// refused by `register` (`call`) naming its field, and leave the registry
/// as it was `before`.
async fn refused_each<R: Clone, T>(
    c: &mut Client,
    before: &Snapshot,
    changed: &R,
    cases: &[(&str, Mutation<'_, R>)],
    mut register: impl AsyncFnMut(&mut Client, R) -> Result<T, Status>,
    call: &str,
) {
    for (field, mutate) in cases {
        let mut req = changed.clone();
        mutate(&mut req);
        let what = format!("{call} with a bad {field}");
        expect_invalid(register(c, req).await, field, &what);
        assert_eq!(
            &snapshot(c, "shop", "payments").await,
            before,
            "a refused re-registration (bad {field}) changes nothing"
        );
    }
}

/// Registers `shop/payments` (every field set) with node `n1`: the state
/// that the refusal tests check is left untouched.
async fn seed_shop_payments(c: &mut Client) {
    register_service(c, full_service("shop", "payments")).await;
    register_node(c, full_node("shop", "payments", "n1", 1)).await;
}

// ---------------------------------------------------------------------------
// 1-3. Services
// ---------------------------------------------------------------------------

async fn register_and_get_service_round_trip(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;

    let req = full_service("shop", "payments");
    let before = now_ms();
    let reg = register_service(c, req.clone()).await;
    let after = now_ms();
    assert_eq!(
        service_without_times(&reg),
        service_from(&req, "shop", false)
    );
    let registered = ms(&reg.registered_at);
    assert!(
        before <= registered && registered <= after,
        "registered_at {registered} should be the time of the call ({before}..={after})"
    );
    assert_eq!(
        reg.registered_at, reg.updated_at,
        "first write: registered_at == updated_at"
    );

    let got = get_service(c, "shop", "payments", true)
        .await
        .expect("GetService");
    assert_eq!(
        service_without_times(&got),
        service_from(&req, "shop", true)
    );
    assert_eq!(got.registered_at, reg.registered_at);
    assert_eq!(got.updated_at, reg.updated_at);

    // An empty group is the default group, on the way in and out.
    let req = full_service("", "billing");
    let reg = register_service(c, req.clone()).await;
    assert_eq!(reg.service_group, "default");
    assert_eq!(
        service_without_times(&reg),
        service_from(&req, "default", false)
    );
    assert_eq!(reg.registered_at, reg.updated_at);
    for group in ["", "default"] {
        let got = get_service(c, group, "billing", true)
            .await
            .unwrap_or_else(|e| panic!("GetService group {group:?}: {e}"));
        assert_eq!(
            service_without_times(&got),
            service_from(&req, "default", true)
        );
        assert_eq!(got.registered_at, reg.registered_at);
        assert_eq!(got.updated_at, reg.updated_at);
    }
    assert_eq!(services(c, "").await, ["billing"]);
    assert_eq!(services(c, "default").await, ["billing"]);
    assert_eq!(services(c, "shop").await, ["payments"]);
    assert_eq!(groups(c).await, ["default", "shop"]);

    // A name is scoped to its group.
    expect_code(
        get_service(c, "default", "payments", false).await,
        Code::NotFound,
        "payments is in shop, not in default",
    );
}

async fn reregister_service_replaces_whole_record(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;

    let first = register_service(c, full_service("shop", "payments")).await;
    // Make sure the clock has moved on, so a new updated_at must differ.
    wait_past(ms(&first.updated_at)).await;

    let replacement = RegisterServiceRequest {
        service_group: "shop".into(),
        service_name: "payments".into(),
        endpoint: "grpc://payments:9000".into(),
        endpoint_type: "grpc".into(),
        ..Default::default()
    };
    let second = register_service(c, replacement.clone()).await;
    assert_eq!(
        service_without_times(&second),
        service_from(&replacement, "shop", false)
    );
    assert_eq!(
        second.registered_at, first.registered_at,
        "registered_at kept"
    );
    assert!(
        ms(&second.updated_at) > ms(&first.updated_at),
        "updated_at should move forward: {:?} -> {:?}",
        first.updated_at,
        second.updated_at
    );

    let got = get_service(c, "shop", "payments", true)
        .await
        .expect("GetService");
    assert_eq!(
        service_without_times(&got),
        service_from(&replacement, "shop", true),
        "fields left out of the re-registration are cleared"
    );
    assert!(got.description.is_empty());
    assert!(got.metadata.is_empty());
    assert!(got.auth_credentials.is_empty());
    assert!(got.backend.is_empty());
    assert_eq!(got.registered_at, first.registered_at);
    assert_eq!(got.updated_at, second.updated_at);
    assert_eq!(services(c, "shop").await, ["payments"], "still listed once");
}

async fn credentials_only_when_revealed(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;

    let req = full_service("shop", "payments");
    let reg = register_service(c, req.clone()).await;
    assert_eq!(
        reg.auth_credentials, "",
        "RegisterService never returns credentials"
    );
    assert_eq!(reg.auth_type, "basic", "auth_type is not secret");

    let hidden = get_service(c, "shop", "payments", false)
        .await
        .expect("GetService");
    assert_eq!(hidden.auth_credentials, "");
    assert_eq!(hidden.auth_type, "basic");
    assert_eq!(
        service_without_times(&hidden),
        service_from(&req, "shop", false)
    );

    let shown = get_service(c, "shop", "payments", true)
        .await
        .expect("GetService reveal");
    assert_eq!(shown.auth_credentials, "user:s3cret");

    // A re-registration does not return them either, and replaces them.
    let mut again = req.clone();
    again.auth_credentials = "user:n3w".into();
    let reg = register_service(c, again).await;
    assert_eq!(reg.auth_credentials, "");
    let shown = get_service(c, "shop", "payments", true)
        .await
        .expect("GetService reveal");
    assert_eq!(shown.auth_credentials, "user:n3w");
    let hidden = get_service(c, "shop", "payments", false)
        .await
        .expect("GetService");
    assert_eq!(hidden.auth_credentials, "");
}

// ---------------------------------------------------------------------------
// 4-6. Nodes, implicit services, unknown services
// ---------------------------------------------------------------------------

async fn register_node_and_get_nodes_round_trip(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;

    // Registered out of order; GetNodes returns them in name order.
    let reqs = [
        full_node("shop", "payments", "n3", 3),
        full_node("shop", "payments", "n1", 1),
        full_node("shop", "payments", "n2", 2),
    ];
    let mut registered = HashMap::new();
    for req in &reqs {
        let before = now_ms();
        let node = register_node(c, req.clone()).await;
        let after = now_ms();
        assert_eq!(node_without_times(&node), node_from(req, "shop"));
        let at = ms(&node.registered_at);
        assert!(
            before <= at && at <= after,
            "registered_at is the call time"
        );
        assert_eq!(node.registered_at, node.updated_at, "first write");
        assert_eq!(node.expires_at, None, "no TTL: expires_at unset");
        registered.insert(node.node_name.clone(), node);
    }

    let got = get_nodes(c, "shop", "payments").await;
    assert_eq!(node_names(&got), ["n1", "n2", "n3"]);
    for node in &got {
        let req = reqs.iter().find(|r| r.node_name == node.node_name).unwrap();
        assert_eq!(node_without_times(node), node_from(req, "shop"));
        assert_eq!(
            node, &registered[&node.node_name],
            "GetNodes returns what RegisterNode did"
        );
    }

    // Default group through an empty service_group.
    let req = full_node("", "billing", "b1", 7);
    let node = register_node(c, req.clone()).await;
    assert_eq!(node.service_group, "default");
    assert_eq!(node_without_times(&node), node_from(&req, "default"));
    assert_eq!(
        get_nodes(c, "", "billing").await,
        std::slice::from_ref(&node)
    );
    assert_eq!(get_nodes(c, "default", "billing").await, [node]);
    // Nodes are scoped to their service and group.
    assert!(get_nodes(c, "default", "payments").await.is_empty());
    assert!(get_nodes(c, "shop", "billing").await.is_empty());
}

async fn reregister_node_replaces_whole_record(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;

    let first = register_node(c, full_node("shop", "payments", "n1", 1)).await;
    let other = register_node(c, full_node("shop", "payments", "n2", 2)).await;
    wait_past(ms(&first.updated_at)).await;

    let replacement = RegisterNodeRequest {
        service_group: "shop".into(),
        service_name: "payments".into(),
        node_name: "n1".into(),
        // Non-canonical IPv6: stored in canonical form.
        ip: vec!["0:0:0:0:0:0:0:1".into(), "192.168.1.9".into()],
        port: 9,
        ..Default::default()
    };
    let second = register_node(c, replacement.clone()).await;
    let mut want = node_from(&replacement, "shop");
    want.ip = vec!["::1".into(), "192.168.1.9".into()];
    // Named no instance: the node keeps its own.
    want.instance_id = first.instance_id.clone();
    assert_eq!(node_without_times(&second), want);
    assert_eq!(second.fqdn, "");
    assert_eq!(second.os, "");
    assert_eq!(second.cpu_count, 0);
    assert_eq!(second.memory_mb, 0);
    assert_eq!(second.last_boot, None);
    assert!(second.metadata.is_empty());
    assert_eq!(
        second.registered_at, first.registered_at,
        "registered_at kept"
    );
    assert!(
        ms(&second.updated_at) > ms(&first.updated_at),
        "updated_at should move forward: {:?} -> {:?}",
        first.updated_at,
        second.updated_at
    );

    let got = get_nodes(c, "shop", "payments").await;
    assert_eq!(got, [second, other], "n1 replaced whole, n2 untouched");
}

async fn node_of_unregistered_service_lists_it(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;

    assert!(groups(c).await.is_empty(), "a fresh registry has no groups");
    let node = register_node(c, bare_node("edge", "cache", "c1", None)).await;

    assert_eq!(services(c, "edge").await, ["cache"]);
    assert_eq!(groups(c).await, ["edge"]);
    let svc = get_service(c, "edge", "cache", true)
        .await
        .expect("GetService of a service known by its nodes");
    assert_eq!(
        svc,
        Service {
            service_group: "edge".into(),
            service_name: "cache".into(),
            ..Default::default()
        },
        "just group and name, registered_at unset"
    );
    assert_eq!(svc.registered_at, None);
    assert_eq!(get_nodes(c, "edge", "cache").await, [node]);

    // Registering the service itself later fills in the record.
    let reg = register_service(c, full_service("edge", "cache")).await;
    assert!(reg.registered_at.is_some());
    let svc = get_service(c, "edge", "cache", false)
        .await
        .expect("GetService");
    assert_eq!(svc.registered_at, reg.registered_at);
    assert_eq!(svc.endpoint, "https://cache.example.com:8443/api");
    assert_eq!(services(c, "edge").await, ["cache"], "listed once");
    assert_eq!(get_nodes(c, "edge", "cache").await.len(), 1, "node kept");
}

async fn unknown_service_lookups(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;

    // Nothing at all yet.
    assert!(get_nodes(c, "", "ghost").await.is_empty());
    expect_code(
        get_service(c, "", "ghost", false).await,
        Code::NotFound,
        "GetService of an unknown service",
    );

    // A known group, an unknown service in it.
    register_service(c, bare_service("shop", "payments")).await;
    assert!(get_nodes(c, "shop", "ghost").await.is_empty());
    let s = expect_code(
        get_service(c, "shop", "ghost", true).await,
        Code::NotFound,
        "GetService of an unknown service in a known group",
    );
    assert!(s.message().contains("ghost"), "{:?}", s.message());
    // An unknown group.
    assert!(get_nodes(c, "nowhere", "payments").await.is_empty());
    expect_code(
        get_service(c, "nowhere", "payments", false).await,
        Code::NotFound,
        "GetService in an unknown group",
    );
    assert!(services(c, "nowhere").await.is_empty());
}

// ---------------------------------------------------------------------------
// 7. TTLs
// ---------------------------------------------------------------------------

async fn node_with_ttl_expires(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;

    let keep = register_node(c, bare_node("shop", "payments", "keep", None)).await;
    assert_eq!(keep.expires_at, None);
    let before = now_ms();
    let short = register_node(c, bare_node("shop", "payments", "short", Some(1))).await;
    let lifetime = ms(&short.expires_at) - ms(&short.updated_at);
    assert!(
        (lifetime - 1000).abs() <= 100,
        "expires_at should be updated_at + 1 s, is + {lifetime} ms"
    );

    // Listed while live, never once its expires_at has passed (whether or
    // not a sweeper has removed it yet), and gone in the end; the node
    // without TTL stays. Each read is judged by when it started and ended,
    // so a slow machine cannot fail it.
    let expires = ms(&short.expires_at);
    assert!(before <= ms(&short.updated_at));
    let left = eventually("the TTL node to expire", || {
        let mut c = c.clone();
        let short = short.clone();
        async move {
            let start = now_ms();
            let listed = get_nodes(&mut c, "shop", "payments").await;
            let end = now_ms();
            let names = node_names(&listed);
            if start >= expires {
                assert_eq!(
                    names,
                    ["keep"],
                    "read at {start} ms, after expires_at {expires} ms"
                );
            }
            if end < expires {
                assert_eq!(
                    names,
                    ["keep", "short"],
                    "read by {end} ms, before expires_at {expires} ms"
                );
                assert_eq!(listed[1], short);
            }
            (names == ["keep"]).then_some(listed)
        }
    })
    .await;
    assert_eq!(left, [keep]);
}

async fn reregistering_before_expiry_extends_ttl(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;

    let first = register_node(c, bare_node("shop", "payments", "a", Some(1))).await;
    // A sentinel that expires no earlier than a's first deadline.
    let sentinel = register_node(c, bare_node("shop", "payments", "b", Some(1))).await;
    assert!(ms(&sentinel.expires_at) >= ms(&first.expires_at));

    let renewed = register_node(c, bare_node("shop", "payments", "a", Some(60))).await;
    let lifetime = ms(&renewed.expires_at) - ms(&renewed.updated_at);
    assert!(
        (lifetime - 60_000).abs() <= 100,
        "expires_at should be updated_at + 60 s, is + {lifetime} ms"
    );
    assert!(ms(&renewed.expires_at) > ms(&first.expires_at));
    if ms(&renewed.updated_at) < ms(&first.expires_at) {
        assert_eq!(
            renewed.registered_at, first.registered_at,
            "renewed before expiry: registered_at kept"
        );
    }

    // The sentinel expires; give the sweepers time past the old deadline;
    // the renewed node is still there with its new deadline.
    wait_for_node_names(c, "shop", "payments", &["a"]).await;
    wait_past(ms(&sentinel.expires_at) + 1000).await;
    let left = get_nodes(c, "shop", "payments").await;
    assert_eq!(
        left,
        std::slice::from_ref(&renewed),
        "the renewed node outlives its old TTL"
    );

    // Renewing with the same TTL moves the deadline forward.
    wait_past(ms(&renewed.updated_at)).await;
    let again = register_node(c, bare_node("shop", "payments", "a", Some(60))).await;
    assert!(ms(&again.expires_at) > ms(&renewed.expires_at));
    assert_eq!(
        again.registered_at, renewed.registered_at,
        "registered_at kept"
    );
}

async fn zero_or_negative_ttl_never_expires(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;

    for (name, ttl) in [("zero", Some(0)), ("neg", Some(-5)), ("none", None)] {
        let node = register_node(c, bare_node("shop", "payments", name, ttl)).await;
        assert_eq!(node.expires_at, None, "{name}: no expiry");
    }
    // A node that does expire, to know when time has passed.
    let sentinel = register_node(c, bare_node("shop", "payments", "short", Some(1))).await;
    wait_for_node_names(c, "shop", "payments", &["neg", "none", "zero"]).await;
    wait_past(ms(&sentinel.expires_at) + 1000).await;
    let left = get_nodes(c, "shop", "payments").await;
    assert_eq!(node_names(&left), ["neg", "none", "zero"]);
    assert!(left.iter().all(|n| n.expires_at.is_none()));
}

async fn server_default_ttl_applies(backend: Backend) {
    let mut t = TestServer::start_with(
        backend,
        Defaults {
            node_ttl: Some(Duration::from_secs(1)),
            ..Defaults::default()
        },
    )
    .await;
    let c = &mut t.client;

    let dflt = register_node(c, bare_node("shop", "payments", "dflt", None)).await;
    let lifetime = ms(&dflt.expires_at) - ms(&dflt.updated_at);
    assert!(
        (lifetime - 1000).abs() <= 100,
        "server default TTL 1 s: expires_at should be updated_at + 1 s, is + {lifetime} ms"
    );
    for (name, ttl) in [("zero", 0), ("neg", -1)] {
        let node = register_node(c, bare_node("shop", "payments", name, Some(ttl))).await;
        assert_eq!(
            node.expires_at, None,
            "{name}: an explicit ttl_seconds {ttl} overrides the default"
        );
    }
    let long = register_node(c, bare_node("shop", "payments", "long", Some(60))).await;
    let lifetime = ms(&long.expires_at) - ms(&long.updated_at);
    assert!(
        (lifetime - 60_000).abs() <= 100,
        "explicit 60 s overrides the default, got + {lifetime} ms"
    );

    wait_for_node_names(c, "shop", "payments", &["long", "neg", "zero"]).await;
    wait_past(ms(&dflt.expires_at) + 1000).await;
    assert_eq!(
        node_names(&get_nodes(c, "shop", "payments").await),
        ["long", "neg", "zero"]
    );
}

async fn expired_node_registered_again_starts_afresh(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;

    let first = register_node(c, bare_node("shop", "payments", "a", Some(1))).await;
    wait_for_node_names(c, "shop", "payments", &[]).await;
    let again = register_node(c, bare_node("shop", "payments", "a", None)).await;
    assert!(
        ms(&again.registered_at) > ms(&first.registered_at),
        "a node registered after it expired is new: registered_at {:?} -> {:?}",
        first.registered_at,
        again.registered_at
    );
    assert_eq!(again.registered_at, again.updated_at);
    assert_eq!(again.expires_at, None);
    assert_eq!(get_nodes(c, "shop", "payments").await, [again]);
}

// ---------------------------------------------------------------------------
// 8. auto
// ---------------------------------------------------------------------------

fn auto_node(name: &str, ip: &[&str], auto: Option<bool>) -> RegisterNodeRequest {
    RegisterNodeRequest {
        service_group: "shop".into(),
        service_name: "payments".into(),
        node_name: name.into(),
        ip: ip.iter().map(|s| s.to_string()).collect(),
        port: 80,
        auto,
        ..Default::default()
    }
}

/// Registers each (name, ip, auto) and checks the addresses it gets, in
/// the response and through GetNodes.
/// One auto case: node name, ip sent, auto sent, ip expected.
type AutoCase<'a> = (&'a str, &'a [&'a str], Option<bool>, &'a [&'a str]);

async fn check_auto(c: &mut Client, cases: &[AutoCase<'_>]) {
    for (name, ip, auto, want) in cases {
        let node = register_node(c, auto_node(name, ip, *auto)).await;
        assert_eq!(node.ip, *want, "{name}: ip {ip:?} auto {auto:?}");
    }
    let got = get_nodes(c, "shop", "payments").await;
    for (name, ip, auto, want) in cases {
        let node = got
            .iter()
            .find(|n| n.node_name == *name)
            .unwrap_or_else(|| panic!("{name} not in GetNodes"));
        assert_eq!(node.ip, *want, "stored {name}: ip {ip:?} auto {auto:?}");
    }
}

async fn auto_fills_the_peer_address(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    check_auto(
        &mut t.client,
        &[
            ("default", &[], None, &["127.0.0.1"]),
            ("on", &[], Some(true), &["127.0.0.1"]),
            ("off", &[], Some(false), &[]),
            ("explicit-on", &["10.1.2.3"], Some(true), &["10.1.2.3"]),
            ("explicit", &["10.1.2.3"], None, &["10.1.2.3"]),
            ("explicit-off", &["fd00::7"], Some(false), &["fd00::7"]),
        ],
    )
    .await;
}

async fn server_default_auto_off(backend: Backend) {
    let mut t = TestServer::start_with(
        backend,
        Defaults {
            auto: false,
            ..Defaults::default()
        },
    )
    .await;
    check_auto(
        &mut t.client,
        &[
            ("default", &[], None, &[]),
            ("on", &[], Some(true), &["127.0.0.1"]),
            ("off", &[], Some(false), &[]),
            ("explicit", &["10.1.2.3"], None, &["10.1.2.3"]),
            ("explicit-on", &["10.1.2.3"], Some(true), &["10.1.2.3"]),
        ],
    )
    .await;
}

// ---------------------------------------------------------------------------
// 9. Pagination
// ---------------------------------------------------------------------------

/// Pages through a listing, `fetch` returning the page a token starts:
/// each page's names and token.
async fn pages(
    mut fetch: impl AsyncFnMut(String) -> Result<(Vec<String>, String), Status>,
) -> Vec<(Vec<String>, String)> {
    let mut pages: Vec<(Vec<String>, String)> = Vec::new();
    let mut token = String::new();
    loop {
        let page = fetch(token)
            .await
            .unwrap_or_else(|e| panic!("page {}: {e}", pages.len()));
        token = page.1.clone();
        pages.push(page);
        if token.is_empty() {
            return pages;
        }
        assert!(pages.len() < 100, "pagination does not end: {pages:?}");
    }
}

/// Pages through ListServices.
async fn service_pages(c: &mut Client, group: &str, size: u32) -> Vec<(Vec<String>, String)> {
    pages(async |token| try_list_services(c, group, size, &token).await).await
}

/// Pages through ListServiceGroups.
async fn group_pages(c: &mut Client, size: u32) -> Vec<(Vec<String>, String)> {
    pages(async |token| try_list_groups(c, size, &token).await).await
}

/// Checks pages of the given sizes that together hold exactly `want`.
#[track_caller]
fn check_pages(pages: &[(Vec<String>, String)], sizes: &[usize], want: &[String]) {
    let got_sizes: Vec<usize> = pages.iter().map(|(names, _)| names.len()).collect();
    assert_eq!(got_sizes, sizes, "page sizes; pages {pages:?}");
    for (i, (_, token)) in pages.iter().enumerate() {
        assert_eq!(
            token.is_empty(),
            i + 1 == pages.len(),
            "page {i}: token {token:?}; only the last page has an empty token"
        );
    }
    let all: Vec<String> = pages.iter().flat_map(|(n, _)| n.clone()).collect();
    assert_eq!(all, want, "all names, in order, each once");
}

async fn list_services_paginates(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;

    // s0..s24: name order is not number order (s1, s10, s11, ..., s2, ...).
    let mut want: Vec<String> = (0..25).map(|i| format!("s{i}")).collect();
    for (i, name) in want.iter().enumerate().rev() {
        if i % 5 == 0 {
            // Some services exist only through a node.
            register_node(c, bare_node("shop", name, "n1", None)).await;
        } else {
            register_service(c, bare_service("shop", name)).await;
        }
    }
    // Another group's services are not listed.
    register_service(c, bare_service("other", "s-other")).await;
    register_service(c, bare_service("", "s-default")).await;
    want.sort();

    check_pages(&service_pages(c, "shop", 10).await, &[10, 10, 5], &want);
    check_pages(&service_pages(c, "shop", 0).await, &[25], &want);
    check_pages(&service_pages(c, "shop", 25).await, &[25], &want);
    check_pages(&service_pages(c, "shop", 1000).await, &[25], &want);
    check_pages(&service_pages(c, "shop", 7).await, &[7, 7, 7, 4], &want);
    check_pages(&service_pages(c, "nowhere", 10).await, &[0], &[]);
    check_pages(
        &service_pages(c, "", 10).await,
        &[1],
        &["s-default".to_string()],
    );

    expect_invalid(
        try_list_services(c, "shop", 1001, "").await,
        "page_size",
        "ListServices page_size 1001",
    );
    for token in ["a:b", "a b", "*", "{x}"] {
        expect_code(
            try_list_services(c, "shop", 10, token).await,
            Code::InvalidArgument,
            &format!("ListServices page_token {token:?}"),
        );
    }
}

async fn list_service_groups_paginates(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;

    let mut want: Vec<String> = (0..12).map(|i| format!("g{i}")).collect();
    for (i, group) in want.iter().enumerate() {
        if i % 3 == 0 {
            register_node(c, bare_node(group, "svc", "n1", None)).await;
        } else {
            register_service(c, bare_service(group, "svc")).await;
            // A second service does not list the group twice.
            register_service(c, bare_service(group, "svc2")).await;
        }
    }
    want.sort();

    check_pages(&group_pages(c, 5).await, &[5, 5, 2], &want);
    check_pages(&group_pages(c, 0).await, &[12], &want);
    check_pages(&group_pages(c, 12).await, &[12], &want);
    check_pages(&group_pages(c, 1).await, &[1; 12], &want);

    // The default group joins the listing once used.
    register_service(c, bare_service("", "x")).await;
    want.push("default".into());
    want.sort();
    check_pages(&group_pages(c, 10).await, &[10, 3], &want);

    expect_invalid(
        try_list_groups(c, 1001, "").await,
        "page_size",
        "ListServiceGroups page_size 1001",
    );
    for token in ["a:b", "a b", "*", "{x}"] {
        expect_code(
            try_list_groups(c, 10, token).await,
            Code::InvalidArgument,
            &format!("ListServiceGroups page_token {token:?}"),
        );
    }
}

// ---------------------------------------------------------------------------
// 10. Removal
// ---------------------------------------------------------------------------

async fn remove_node(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;

    register_service(c, bare_service("shop", "payments")).await;
    for name in ["n1", "n2"] {
        register_node(c, bare_node("shop", "payments", name, None)).await;
    }
    let n2 = get_nodes(c, "shop", "payments").await.pop().unwrap();

    let r = try_remove_node(c, "shop", "payments", "n1", false)
        .await
        .expect("RemoveNode");
    assert!(r.removed);
    assert_eq!(get_nodes(c, "shop", "payments").await, [n2]);

    expect_code(
        try_remove_node(c, "shop", "payments", "n1", false).await,
        Code::NotFound,
        "RemoveNode twice",
    );
    let r = try_remove_node(c, "shop", "payments", "n1", true)
        .await
        .expect("RemoveNode allow_missing");
    assert!(!r.removed);

    // Unknown service / group.
    expect_code(
        try_remove_node(c, "shop", "ghost", "n1", false).await,
        Code::NotFound,
        "RemoveNode of an unknown service",
    );
    expect_code(
        try_remove_node(c, "nowhere", "payments", "n2", false).await,
        Code::NotFound,
        "RemoveNode in an unknown group",
    );
    let r = try_remove_node(c, "shop", "ghost", "n1", true)
        .await
        .expect("RemoveNode unknown service allow_missing");
    assert!(!r.removed);

    // An expired node does not exist any more.
    register_node(c, bare_node("shop", "payments", "short", Some(1))).await;
    wait_for_node_names(c, "shop", "payments", &["n2"]).await;
    expect_code(
        try_remove_node(c, "shop", "payments", "short", false).await,
        Code::NotFound,
        "RemoveNode of an expired node",
    );

    // Removing nodes leaves the service record alone.
    let svc = get_service(c, "shop", "payments", false)
        .await
        .expect("GetService");
    assert_eq!(svc.endpoint, "http://x");
    assert_eq!(node_names(&get_nodes(c, "shop", "payments").await), ["n2"]);
}

async fn remove_service(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;

    register_service(c, full_service("shop", "payments")).await;
    for name in ["n1", "n2"] {
        register_node(c, bare_node("shop", "payments", name, None)).await;
    }
    register_node(c, bare_node("shop", "payments", "n3", Some(300))).await;
    // An expired node is not counted.
    register_node(c, bare_node("shop", "payments", "short", Some(1))).await;
    register_service(c, bare_service("shop", "orders")).await;
    let orders_node = register_node(c, bare_node("shop", "orders", "o1", None)).await;
    wait_for_node_names(c, "shop", "payments", &["n1", "n2", "n3"]).await;

    let r = try_remove_service(c, "shop", "payments", false)
        .await
        .expect("RemoveService");
    assert!(r.removed);
    assert_eq!(r.nodes_removed, 3, "live nodes removed");

    assert_eq!(services(c, "shop").await, ["orders"]);
    expect_code(
        get_service(c, "shop", "payments", false).await,
        Code::NotFound,
        "GetService after RemoveService",
    );
    assert!(get_nodes(c, "shop", "payments").await.is_empty());
    // The rest of the group is untouched.
    assert_eq!(get_nodes(c, "shop", "orders").await, [orders_node]);
    assert_eq!(
        get_service(c, "shop", "orders", false)
            .await
            .expect("orders")
            .endpoint,
        "http://x"
    );

    expect_code(
        try_remove_service(c, "shop", "payments", false).await,
        Code::NotFound,
        "RemoveService twice",
    );
    let r = try_remove_service(c, "shop", "payments", true)
        .await
        .expect("RemoveService allow_missing");
    assert!(!r.removed);
    assert_eq!(r.nodes_removed, 0);

    // A service without nodes, and one known only through its node.
    register_service(c, bare_service("shop", "lonely")).await;
    let r = try_remove_service(c, "shop", "lonely", false)
        .await
        .expect("RemoveService lonely");
    assert!(r.removed);
    assert_eq!(r.nodes_removed, 0);
    register_node(c, bare_node("shop", "implicit", "i1", None)).await;
    let r = try_remove_service(c, "shop", "implicit", false)
        .await
        .expect("RemoveService implicit");
    assert!(r.removed);
    assert_eq!(r.nodes_removed, 1);
    assert!(get_nodes(c, "shop", "implicit").await.is_empty());
    assert_eq!(services(c, "shop").await, ["orders"]);

    // Registered again after removal: a new service.
    let again = register_service(c, bare_service("shop", "payments")).await;
    assert_eq!(again.registered_at, again.updated_at);
    assert!(
        get_nodes(c, "shop", "payments").await.is_empty(),
        "old nodes gone"
    );
}

/// Asserts that `group`'s service `payments` still has the record
/// `service` and the one node `node`.
async fn assert_kept(c: &mut Client, group: &str, service: &Service, node: &Node) {
    let got = get_service(c, group, "payments", false).await;
    let got = got.unwrap_or_else(|e| panic!("GetService {group}/payments: {e}"));
    assert_eq!(&got, service, "{group}/payments");
    assert_eq!(
        get_nodes(c, group, "payments").await,
        std::slice::from_ref(node),
        "{group}/payments"
    );
}

async fn remove_service_group(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;

    // shop: two registered services with nodes, one known only by a node.
    register_service(c, bare_service("shop", "payments")).await;
    register_service(c, bare_service("shop", "orders")).await;
    register_node(c, bare_node("shop", "payments", "p1", None)).await;
    register_node(c, bare_node("shop", "payments", "p2", Some(300))).await;
    register_node(c, bare_node("shop", "implicit", "i1", None)).await;
    // Other groups, including the default one.
    let other = register_service(c, full_service("other", "payments")).await;
    let other_node = register_node(c, full_node("other", "payments", "p1", 1)).await;
    let default = register_service(c, full_service("", "payments")).await;
    let default_node = register_node(c, full_node("", "payments", "p1", 2)).await;
    assert_eq!(groups(c).await, ["default", "other", "shop"]);

    // The group is required: never the default group.
    for allow_missing in [false, true] {
        expect_invalid(
            try_remove_group(c, "", allow_missing).await,
            "service_group",
            &format!("RemoveServiceGroup with empty group, allow_missing {allow_missing}"),
        );
    }
    expect_invalid(
        try_remove_group(c, "x/y", false).await,
        "service_group",
        "RemoveServiceGroup x/y",
    );
    assert_eq!(groups(c).await, ["default", "other", "shop"]);
    assert_eq!(services(c, "default").await, ["payments"]);
    assert_kept(c, "", &default, &default_node).await;

    let r = try_remove_group(c, "shop", false)
        .await
        .expect("RemoveServiceGroup");
    assert_eq!((r.removed, r.services_removed), (true, 3));

    assert_eq!(groups(c).await, ["default", "other"]);
    assert!(services(c, "shop").await.is_empty());
    for name in ["payments", "orders", "implicit"] {
        expect_code(
            get_service(c, "shop", name, false).await,
            Code::NotFound,
            &format!("GetService shop/{name} after RemoveServiceGroup"),
        );
        assert!(get_nodes(c, "shop", name).await.is_empty(), "{name} nodes");
    }
    // Other groups are intact.
    assert_kept(c, "other", &other, &other_node).await;
    assert_kept(c, "default", &default, &default_node).await;

    expect_code(
        try_remove_group(c, "shop", false).await,
        Code::NotFound,
        "RemoveServiceGroup twice",
    );
    let r = try_remove_group(c, "shop", true)
        .await
        .expect("RemoveServiceGroup allow_missing");
    assert_eq!((r.removed, r.services_removed), (false, 0));
    expect_code(
        try_remove_group(c, "never", false).await,
        Code::NotFound,
        "RemoveServiceGroup of a group that never existed",
    );

    // The default group can be removed by naming it.
    let r = try_remove_group(c, "default", false)
        .await
        .expect("RemoveServiceGroup default");
    assert_eq!((r.removed, r.services_removed), (true, 1));
    assert_eq!(groups(c).await, ["other"]);
    assert!(get_nodes(c, "", "payments").await.is_empty());
}

async fn removing_last_service_unlists_group(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;

    register_service(c, bare_service("solo", "a")).await;
    register_node(c, bare_node("solo", "b", "n1", None)).await;
    register_service(c, bare_service("keep", "k")).await;
    assert_eq!(groups(c).await, ["keep", "solo"]);

    let r = try_remove_service(c, "solo", "a", false)
        .await
        .expect("RemoveService a");
    assert!(r.removed);
    assert_eq!(groups(c).await, ["keep", "solo"], "b still in solo");
    assert_eq!(services(c, "solo").await, ["b"]);

    let r = try_remove_service(c, "solo", "b", false)
        .await
        .expect("RemoveService b");
    assert!(r.removed);
    assert_eq!(r.nodes_removed, 1);
    assert_eq!(groups(c).await, ["keep"], "empty group unlisted");
    assert!(services(c, "solo").await.is_empty());
    expect_code(
        try_remove_group(c, "solo", false).await,
        Code::NotFound,
        "RemoveServiceGroup of a group emptied by RemoveService",
    );

    // Used again, it is listed again.
    register_service(c, bare_service("solo", "c")).await;
    assert_eq!(groups(c).await, ["keep", "solo"]);
    assert_eq!(services(c, "solo").await, ["c"]);
}

// ---------------------------------------------------------------------------
// 11. Validation
// ---------------------------------------------------------------------------

const BAD_NAMES: [&str; 8] = ["", "a:b", "a*", "{x}", "has space", "a/b", "ä", "x?"];

fn too_long_name() -> String {
    "x".repeat(129)
}

async fn invalid_service_names_are_refused(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;
    seed_shop_payments(c).await;
    // The longest name is fine.
    let longest = "y".repeat(128);
    c.register_service(bare_service("edge", &longest))
        .await
        .expect("a 128-character name is valid");
    assert_eq!(services(c, "edge").await, [longest]);
    let before = snapshot(c, "shop", "payments").await;

    let long = too_long_name();
    for bad in BAD_NAMES.iter().copied().chain([long.as_str()]) {
        let what = |call: &str| format!("{call} with service_name {bad:?}");
        expect_invalid(
            c.register_service(full_service("shop", bad)).await,
            "service_name",
            &what("RegisterService"),
        );
        expect_invalid(
            c.register_node(full_node("shop", bad, "n1", 1)).await,
            "service_name",
            &what("RegisterNode"),
        );
        expect_invalid(
            get_service(c, "shop", bad, false).await,
            "service_name",
            &what("GetService"),
        );
        expect_invalid(
            c.get_nodes(GetNodesRequest {
                service_group: "shop".into(),
                service_name: bad.into(),
            })
            .await,
            "service_name",
            &what("GetNodes"),
        );
        expect_invalid(
            try_remove_service(c, "shop", bad, true).await,
            "service_name",
            &what("RemoveService"),
        );
        expect_invalid(
            try_remove_node(c, "shop", bad, "n1", true).await,
            "service_name",
            &what("RemoveNode"),
        );
        assert_eq!(snapshot(c, "shop", "payments").await, before, "{bad:?}");
    }
}

async fn invalid_node_names_are_refused(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;
    seed_shop_payments(c).await;
    let before = snapshot(c, "shop", "payments").await;

    let long = too_long_name();
    for bad in BAD_NAMES.iter().copied().chain([long.as_str()]) {
        expect_invalid(
            c.register_node(full_node("shop", "payments", bad, 2)).await,
            "node_name",
            &format!("RegisterNode with node_name {bad:?}"),
        );
        expect_invalid(
            try_remove_node(c, "shop", "payments", bad, true).await,
            "node_name",
            &format!("RemoveNode with node_name {bad:?}"),
        );
        assert_eq!(snapshot(c, "shop", "payments").await, before, "{bad:?}");
    }
}

async fn invalid_service_groups_are_refused(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;
    seed_shop_payments(c).await;
    let before = snapshot(c, "shop", "payments").await;

    let long = too_long_name();
    // "" is the default group everywhere but RemoveServiceGroup.
    for bad in BAD_NAMES[1..].iter().copied().chain([long.as_str()]) {
        let what = |call: &str| format!("{call} with service_group {bad:?}");
        expect_invalid(
            c.register_service(full_service(bad, "payments")).await,
            "service_group",
            &what("RegisterService"),
        );
        expect_invalid(
            c.register_node(full_node(bad, "payments", "n1", 1)).await,
            "service_group",
            &what("RegisterNode"),
        );
        expect_invalid(
            get_service(c, bad, "payments", false).await,
            "service_group",
            &what("GetService"),
        );
        expect_invalid(
            c.get_nodes(GetNodesRequest {
                service_group: bad.into(),
                service_name: "payments".into(),
            })
            .await,
            "service_group",
            &what("GetNodes"),
        );
        expect_invalid(
            try_list_services(c, bad, 0, "").await,
            "service_group",
            &what("ListServices"),
        );
        expect_invalid(
            try_remove_node(c, bad, "payments", "n1", true).await,
            "service_group",
            &what("RemoveNode"),
        );
        expect_invalid(
            try_remove_service(c, bad, "payments", true).await,
            "service_group",
            &what("RemoveService"),
        );
        expect_invalid(
            try_remove_group(c, bad, true).await,
            "service_group",
            &what("RemoveServiceGroup"),
        );
        assert_eq!(snapshot(c, "shop", "payments").await, before, "{bad:?}");
    }
}

async fn invalid_service_fields_are_refused(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;
    let original = full_service("shop", "payments");
    seed_shop_payments(c).await;
    let before = snapshot(c, "shop", "payments").await;

    let big = "x".repeat(4097);
    let cases: Vec<(&str, Mutation<'_, RegisterServiceRequest>)> = vec![
        ("description", Box::new(|r| r.description = big.clone())),
        ("endpoint", Box::new(|r| r.endpoint = big.clone())),
        ("endpoint_type", Box::new(|r| r.endpoint_type = big.clone())),
        ("auth_type", Box::new(|r| r.auth_type = big.clone())),
        (
            "auth_credentials",
            Box::new(|r| r.auth_credentials = big.clone()),
        ),
        ("backend", Box::new(|r| r.backend = big.clone())),
        (
            "metadata",
            Box::new(|r| r.metadata = (0..65).map(|i| (format!("k{i}"), "v".into())).collect()),
        ),
        (
            "metadata",
            Box::new(|r| {
                r.metadata.insert("big".into(), big.clone());
            }),
        ),
        (
            "metadata",
            Box::new(|r| {
                r.metadata.insert(big.clone(), "v".into());
            }),
        ),
        (
            "metadata",
            Box::new(|r| {
                r.metadata.insert(String::new(), "v".into());
            }),
        ),
    ];
    let changed = RegisterServiceRequest {
        description: "changed".into(),
        ..original.clone()
    };
    let register = async |c: &mut Client, req| c.register_service(req).await;
    refused_each(c, &before, &changed, &cases, register, "RegisterService").await;

    // At the bounds: accepted.
    let at_bound = "x".repeat(4096);
    let req = RegisterServiceRequest {
        description: at_bound.clone(),
        endpoint: at_bound.clone(),
        metadata: (0..64)
            .map(|i| (format!("k{i}"), at_bound.clone()))
            .collect(),
        ..original.clone()
    };
    c.register_service(req.clone())
        .await
        .expect("4096-byte fields and 64 entries are within bounds");
    let got = get_service(c, "shop", "payments", true)
        .await
        .expect("GetService");
    assert_eq!(
        service_without_times(&got),
        service_from(&req, "shop", true)
    );
}

async fn invalid_node_fields_are_refused(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;
    let original = full_node("shop", "payments", "n1", 1);
    seed_shop_payments(c).await;
    let before = snapshot(c, "shop", "payments").await;

    let big = "x".repeat(4097);
    let cases: Vec<(&str, Mutation<'_, RegisterNodeRequest>)> = vec![
        ("fqdn", Box::new(|r| r.fqdn = big.clone())),
        ("os", Box::new(|r| r.os = big.clone())),
        ("platform_name", Box::new(|r| r.platform_name = big.clone())),
        ("arch", Box::new(|r| r.arch = big.clone())),
        (
            "ip",
            Box::new(|r| r.ip = (1..=17).map(|i| format!("10.0.0.{i}")).collect()),
        ),
        ("ip", Box::new(|r| r.ip = vec!["not-an-ip".into()])),
        (
            "ip",
            Box::new(|r| r.ip = vec!["10.0.0.1".into(), "10.0.0.256".into()]),
        ),
        ("port", Box::new(|r| r.port = 70000)),
        ("weight", Box::new(|r| r.weight = 1_000_001)),
        ("status", Box::new(|r| r.status = 7)),
        (
            "locality.zone",
            Box::new(|r| {
                r.locality = Some(Locality {
                    zone: big.clone(),
                    ..Default::default()
                })
            }),
        ),
        ("port", Box::new(|r| r.port = 65536)),
        (
            "last_boot",
            Box::new(|r| {
                r.last_boot = Some(Timestamp {
                    seconds: 1_700_000_000,
                    nanos: -1,
                })
            }),
        ),
        (
            "last_boot",
            Box::new(|r| {
                r.last_boot = Some(Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 1_000_000_000,
                })
            }),
        ),
        (
            "metadata",
            Box::new(|r| r.metadata = (0..65).map(|i| (format!("k{i}"), "v".into())).collect()),
        ),
        (
            "metadata",
            Box::new(|r| {
                r.metadata.insert("big".into(), big.clone());
            }),
        ),
        (
            "ttl_seconds",
            Box::new(|r| r.ttl_seconds = Some(366 * 24 * 3600)),
        ),
    ];
    let changed = RegisterNodeRequest {
        fqdn: "changed.example.com".into(),
        ..original.clone()
    };
    let register = async |c: &mut Client, req| c.register_node(req).await;
    refused_each(c, &before, &changed, &cases, register, "RegisterNode").await;

    // At the bounds: accepted.
    let req = RegisterNodeRequest {
        ip: (1..=16).map(|i| format!("10.0.0.{i}")).collect(),
        port: 65535,
        fqdn: "x".repeat(4096),
        metadata: (0..64).map(|i| (format!("k{i}"), "v".into())).collect(),
        last_boot: Some(Timestamp {
            seconds: 1_700_000_000,
            nanos: 999_999_999,
        }),
        ..original.clone()
    };
    let node = c
        .register_node(req.clone())
        .await
        .expect("16 addresses, port 65535, 4096-byte fqdn, 64 entries are within bounds")
        .into_inner();
    assert_eq!(node_without_times(&node), node_from(&req, "shop"));
    assert_eq!(get_nodes(c, "shop", "payments").await, [node]);
}

// ---------------------------------------------------------------------------
// 12. Message size
// ---------------------------------------------------------------------------

async fn oversized_request_is_resource_exhausted(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let c = &mut t.client;
    seed_shop_payments(c).await;
    let before = snapshot(c, "shop", "payments").await;

    // Under the size limit but over the field bound: the field is named.
    let mut req = full_service("shop", "payments");
    req.description = "x".repeat(900 * 1024);
    expect_invalid(
        c.register_service(req).await,
        "description",
        "a 900 KiB description",
    );

    // Over the 1 MiB limit: RESOURCE_EXHAUSTED, not a dropped connection.
    let mut client = c.clone().max_encoding_message_size(64 * 1024 * 1024);
    let mut req = full_service("shop", "payments");
    req.description = "x".repeat(2 * 1024 * 1024);
    expect_code(
        client.register_service(req).await,
        Code::ResourceExhausted,
        "a 2 MiB RegisterService",
    );
    let mut req = full_node("shop", "payments", "n1", 1);
    req.fqdn = "x".repeat(2 * 1024 * 1024);
    expect_code(
        client.register_node(req).await,
        Code::ResourceExhausted,
        "a 2 MiB RegisterNode",
    );

    // The server (and this very connection) still answers, and nothing
    // changed.
    assert_eq!(snapshot(&mut client, "shop", "payments").await, before);
    assert_eq!(snapshot(c, "shop", "payments").await, before);
    c.register_service(bare_service("shop", "after"))
        .await
        .expect("a normal call after an oversized one");
    assert_eq!(services(c, "shop").await, ["after", "payments"]);
}

conformance!(
    register_and_get_service_round_trip,
    reregister_service_replaces_whole_record,
    credentials_only_when_revealed,
    register_node_and_get_nodes_round_trip,
    reregister_node_replaces_whole_record,
    node_of_unregistered_service_lists_it,
    unknown_service_lookups,
    node_with_ttl_expires,
    reregistering_before_expiry_extends_ttl,
    zero_or_negative_ttl_never_expires,
    server_default_ttl_applies,
    expired_node_registered_again_starts_afresh,
    auto_fills_the_peer_address,
    server_default_auto_off,
    list_services_paginates,
    list_service_groups_paginates,
    remove_node,
    remove_service,
    remove_service_group,
    removing_last_service_unlists_group,
    invalid_service_names_are_refused,
    invalid_node_names_are_refused,
    invalid_service_groups_are_refused,
    invalid_service_fields_are_refused,
    invalid_node_fields_are_refused,
    oversized_request_is_resource_exhausted,
);
