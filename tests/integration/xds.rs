//! The xDS (ADS, state of the world) protocol as a client sees it, on a
//! real server: the four resources of a service and their shape, pushes on
//! each kind of change, ACK, NACK, stale nonces, unknown and malformed
//! names, several services on one stream, group naming, auth and shutdown
//! (issue 15). The real gRPC clients (grpcio, grpc-js-xds) are driven by
//! the example suites (`examples/python/test_xds.py`,
//! `examples/node/test/xds.test.js`); this file holds the protocol's edges
//! those clients never show.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use discovered::proto::v1 as pb;
use discovered::server::Settings;
use discovered::server::xds::resources::Kind;
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    HealthStatus, address, config_source, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, route, route_action};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc;
use prost::{Message, Name};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Streaming};

use crate::common::*;

/// How long a stream must stay quiet to count as not answering.
const QUIET: Duration = Duration::from_millis(300);

/// One ADS stream: requests in, responses out.
struct Ads {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl Ads {
    /// Opens a stream on `channel`, with `token` when given.
    async fn open(channel: Channel) -> Self {
        Self::try_open(channel, None)
            .await
            .expect("open the ADS stream")
    }

    async fn try_open(channel: Channel, token: Option<&str>) -> Result<Self, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        let mut request = Request::new(ReceiverStream::new(rx));
        if let Some(t) = token {
            let value = format!("Bearer {t}").parse().expect("header");
            request.metadata_mut().insert("authorization", value);
        }
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let rx = client
            .stream_aggregated_resources(request)
            .await?
            .into_inner();
        Ok(Self { tx, rx })
    }

    /// Sends a request for `names` of `kind`, answering `nonce` (empty
    /// for a first request) with `version`, as a NACK when `error` is
    /// given.
    async fn request(
        &self,
        kind: Kind,
        names: &[&str],
        version: &str,
        nonce: &str,
        error: Option<&str>,
    ) {
        let request = DiscoveryRequest {
            version_info: version.into(),
            node: Some(envoy_types::pb::envoy::config::core::v3::Node {
                id: "xds-test".into(),
                ..Default::default()
            }),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            type_url: kind.type_url(),
            response_nonce: nonce.into(),
            error_detail: error.map(|m| rpc::Status {
                code: Code::InvalidArgument as i32,
                message: m.into(),
                details: vec![],
            }),
            ..Default::default()
        };
        self.tx.send(request).await.expect("stream open");
    }

    /// Subscribes to `names` of `kind` for the first time.
    async fn subscribe(&self, kind: Kind, names: &[&str]) {
        self.request(kind, names, "", "", None).await;
    }

    /// ACKs `r`, still subscribed to `names`.
    async fn ack(&self, r: &DiscoveryResponse, names: &[&str]) {
        let kind = Kind::from_type_url(&r.type_url).expect("one of our types");
        self.request(kind, names, &r.version_info, &r.nonce, None)
            .await;
    }

    /// The next response.
    async fn recv(&mut self) -> DiscoveryResponse {
        within("an ADS response", self.rx.message())
            .await
            .expect("a response, not an error")
            .expect("the stream still open")
    }

    /// The next response, which must be of `kind`.
    async fn recv_kind(&mut self, kind: Kind) -> DiscoveryResponse {
        let r = self.recv().await;
        assert_eq!(
            r.type_url,
            kind.type_url(),
            "expected a {} response: {r:?}",
            kind.short()
        );
        assert!(!r.nonce.is_empty() && !r.version_info.is_empty(), "{r:?}");
        assert!(
            r.resources.iter().all(|a| a.type_url == r.type_url),
            "{r:?}"
        );
        r
    }

    /// Asserts that nothing comes for a while.
    async fn silent(&mut self, why: &str) {
        if let Ok(r) = tokio::time::timeout(QUIET, self.rx.message()).await {
            panic!("{why}: expected no response, got {r:?}");
        }
    }

    /// Subscribes to `names` of `kind`, takes the response, ACKs it.
    async fn fetch(&mut self, kind: Kind, names: &[&str]) -> DiscoveryResponse {
        self.subscribe(kind, names).await;
        let r = self.recv_kind(kind).await;
        self.ack(&r, names).await;
        r
    }
}

fn decode<T: Message + Name + Default>(any: &Any) -> T {
    assert_eq!(any.type_url, T::type_url());
    T::decode(any.value.as_slice()).expect("decodes")
}

/// The endpoints of an assignment: `ip:port` to health, with the locality
/// zone.
fn endpoints(cla: &ClusterLoadAssignment) -> BTreeMap<String, (HealthStatus, String)> {
    let mut out = BTreeMap::new();
    for locality in &cla.endpoints {
        assert!(
            locality.load_balancing_weight.is_some_and(|w| w.value >= 1),
            "{cla:?}"
        );
        let zone = locality
            .locality
            .as_ref()
            .expect("locality present")
            .zone
            .clone();
        for e in &locality.lb_endpoints {
            let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                panic!("no endpoint in {e:?}");
            };
            let Some(address::Address::SocketAddress(sa)) = &ep.address.as_ref().unwrap().address
            else {
                panic!("no socket address in {ep:?}");
            };
            let Some(socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else {
                panic!("no port in {sa:?}");
            };
            let health = HealthStatus::try_from(e.health_status).expect("known health");
            out.insert(format!("{}:{port}", sa.address), (health, zone.clone()));
        }
    }
    out
}

/// The single assignment a response holds.
fn assignment(r: &DiscoveryResponse) -> ClusterLoadAssignment {
    assert_eq!(r.resources.len(), 1, "one assignment: {r:?}");
    decode(&r.resources[0])
}

fn node(service: &str, name: &str, port: u32) -> pb::RegisterNodeRequest {
    pb::RegisterNodeRequest {
        service_name: service.into(),
        node_name: name.into(),
        ip: vec!["127.0.0.1".into()],
        port,
        auto: Some(false),
        ..Default::default()
    }
}

/// Registers `req` through the test server's client.
async fn register(t: &mut TestServer, req: pb::RegisterNodeRequest) {
    register_node(&mut t.client, req).await;
}

/// An ADS stream on `t` subscribed to every type of `service` (default
/// group), each response ACKed; returns the endpoint response.
async fn subscribed(t: &TestServer, service: &str) -> (Ads, DiscoveryResponse) {
    let mut ads = Ads::open(t.channel.clone()).await;
    let name = format!("default/{service}");
    ads.fetch(Kind::Listener, &[service]).await;
    ads.fetch(Kind::Route, &[&name]).await;
    ads.fetch(Kind::Cluster, &[&name]).await;
    let eds = ads.fetch(Kind::Endpoints, &[&name]).await;
    (ads, eds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_resolves_through_all_four_types_as_grpc_requires() {
    let mut t = TestServer::start(Backend::Memory).await;
    let mut a = node("payments", "a", 7001);
    a.locality = Some(pb::Locality {
        region: "eu".into(),
        zone: "eu-1".into(),
        sub_zone: String::new(),
    });
    a.weight = 5;
    register(&mut t, a).await;
    register(&mut t, node("payments", "b", 7002)).await;
    let mut ads = Ads::open(t.channel.clone()).await;

    let lds = ads.fetch(Kind::Listener, &["payments"]).await;
    assert_eq!(lds.resources.len(), 1);
    let listener: Listener = decode(&lds.resources[0]);
    assert_eq!(listener.name, "payments", "named exactly as asked");
    let manager: HttpConnectionManager = decode(
        listener
            .api_listener
            .unwrap()
            .api_listener
            .as_ref()
            .unwrap(),
    );
    let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = manager.route_specifier else {
        panic!("routes through RDS: {manager:?}");
    };
    assert_eq!(rds.route_config_name, "default/payments");
    assert!(matches!(
        rds.config_source.unwrap().config_source_specifier,
        Some(config_source::ConfigSourceSpecifier::Ads(_))
    ));
    let router = manager.http_filters.last().expect("a filter");
    let Some(http_filter::ConfigType::TypedConfig(config)) = &router.config_type else {
        panic!("the router has a typed config: {router:?}");
    };
    assert_eq!(
        config.type_url,
        Router::type_url(),
        "the last filter is the router"
    );

    let rds = ads.fetch(Kind::Route, &["default/payments"]).await;
    let routes: RouteConfiguration = decode(&rds.resources[0]);
    assert_eq!(routes.name, "default/payments");
    let host = &routes.virtual_hosts[0];
    assert_eq!(host.domains, ["*"]);
    let Some(route::Action::Route(action)) = &host.routes.last().unwrap().action else {
        panic!("a route action: {host:?}");
    };
    assert_eq!(
        action.cluster_specifier,
        Some(route_action::ClusterSpecifier::Cluster(
            "default/payments".into()
        ))
    );

    let cds = ads.fetch(Kind::Cluster, &["default/payments"]).await;
    let cluster: Cluster = decode(&cds.resources[0]);
    assert_eq!(cluster.name, "default/payments");
    assert_eq!(
        cluster.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32
        ))
    );
    assert_eq!(cluster.lb_policy, cluster::LbPolicy::RoundRobin as i32);
    let eds_config = cluster.eds_cluster_config.unwrap();
    assert_eq!(eds_config.service_name, "default/payments");
    let limit = &cluster.circuit_breakers.unwrap().thresholds[0];
    assert_eq!(
        limit.max_requests.unwrap().value,
        u32::MAX,
        "no cap of 1,024 calls in flight"
    );

    let eds = ads.fetch(Kind::Endpoints, &["default/payments"]).await;
    let cla = assignment(&eds);
    assert_eq!(cla.cluster_name, "default/payments");
    assert_eq!(
        endpoints(&cla),
        BTreeMap::from([
            (
                "127.0.0.1:7001".to_string(),
                (HealthStatus::Healthy, "eu-1".to_string())
            ),
            (
                "127.0.0.1:7002".to_string(),
                (HealthStatus::Healthy, String::new())
            ),
        ])
    );
    let eu = cla
        .endpoints
        .iter()
        .find(|l| l.locality.as_ref().unwrap().zone == "eu-1")
        .unwrap();
    assert_eq!(
        eu.load_balancing_weight.unwrap().value,
        5,
        "the locality weighs its nodes' weights"
    );
    assert_eq!(eu.lb_endpoints[0].load_balancing_weight.unwrap().value, 5);

    // Every response had its own nonce; ACKs get no answer.
    let nonces: std::collections::BTreeSet<_> = [&lds, &rds, &cds, &eds]
        .iter()
        .map(|r| r.nonce.clone())
        .collect();
    assert_eq!(nonces.len(), 4);
    ads.silent("after four ACKs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_change_is_one_endpoint_push() {
    let mut t = TestServer::start(Backend::Memory).await;
    register(&mut t, node("payments", "a", 7001)).await;
    let (mut ads, first) = subscribed(&t, "payments").await;
    let names = ["default/payments"];
    let mut last_nonce = first.nonce.clone();
    let mut next = async |ads: &mut Ads, what: &str| {
        let r = ads.recv_kind(Kind::Endpoints).await;
        assert_ne!(r.nonce, last_nonce, "{what}: a new nonce");
        last_nonce = r.nonce.clone();
        ads.ack(&r, &names).await;
        endpoints(&assignment(&r))
    };

    register(&mut t, node("payments", "b", 7002)).await;
    let now = next(&mut ads, "added").await;
    assert_eq!(
        now.keys().collect::<Vec<_>>(),
        ["127.0.0.1:7001", "127.0.0.1:7002"]
    );

    // A registration that changes nothing, and a heartbeat, push nothing.
    register(&mut t, node("payments", "b", 7002)).await;
    ads.silent("an unchanged registration").await;

    let mut draining = node("payments", "b", 7002);
    draining.status = pb::NodeStatus::Draining as i32;
    register(&mut t, draining).await;
    let now = next(&mut ads, "drained").await;
    assert_eq!(
        now["127.0.0.1:7002"].0,
        HealthStatus::Draining,
        "still listed, draining"
    );
    assert_eq!(now["127.0.0.1:7001"].0, HealthStatus::Healthy);

    let removed = try_remove_node(&mut t.client, "default", "payments", "b", false).await;
    assert!(removed.is_ok(), "{removed:?}");
    let now = next(&mut ads, "removed").await;
    assert_eq!(now.keys().collect::<Vec<_>>(), ["127.0.0.1:7001"]);

    let mut short = node("payments", "c", 7003);
    short.ttl_seconds = Some(1);
    register(&mut t, short).await;
    let now = next(&mut ads, "added with a TTL").await;
    assert!(now.contains_key("127.0.0.1:7003"));
    let now = next(&mut ads, "expired").await;
    assert_eq!(
        now.keys().collect::<Vec<_>>(),
        ["127.0.0.1:7001"],
        "the expired node is gone"
    );

    // A change to another service reaches no one here.
    register(&mut t, node("orders", "x", 7100)).await;
    ads.silent("a change to a service not subscribed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_is_logged_and_the_same_config_is_not_sent_again() {
    let mut t = TestServer::start(Backend::Memory).await;
    register(&mut t, node("payments", "a", 7001)).await;
    let (mut ads, first) = subscribed(&t, "payments").await;
    let names = ["default/payments"];

    register(&mut t, node("payments", "b", 7002)).await;
    let rejected = ads.recv_kind(Kind::Endpoints).await;
    // Rejected: the client keeps the version it had, names the nonce.
    ads.request(
        Kind::Endpoints,
        &names,
        &first.version_info,
        &rejected.nonce,
        Some("bad endpoints"),
    )
    .await;
    ads.silent("a NACK is not answered with the same assignment")
        .await;
    // Asking again with the same subscription does not bring it back.
    ads.request(
        Kind::Endpoints,
        &names,
        &first.version_info,
        &rejected.nonce,
        None,
    )
    .await;
    ads.silent("the rejected assignment is not sent again")
        .await;

    // Something new to send: it goes out.
    register(&mut t, node("payments", "c", 7003)).await;
    let fresh = ads.recv_kind(Kind::Endpoints).await;
    assert_eq!(endpoints(&assignment(&fresh)).len(), 3);
    assert_ne!(fresh.version_info, rejected.version_info);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_a_stale_nonce_is_ignored() {
    let mut t = TestServer::start(Backend::Memory).await;
    let (mut ads, _) = subscribed(&t, "payments").await;
    register(&mut t, node("payments", "a", 7001)).await;
    let older = ads.recv_kind(Kind::Endpoints).await;
    register(&mut t, node("payments", "b", 7002)).await;
    let newer = ads.recv_kind(Kind::Endpoints).await;

    // The client's answer to the older push, adding a service: stale.
    let both = ["default/payments", "default/orders"];
    ads.request(
        Kind::Endpoints,
        &both,
        &older.version_info,
        &older.nonce,
        None,
    )
    .await;
    ads.silent("a request with a stale nonce").await;
    // The same on the newest nonce is answered, with the new service.
    ads.request(
        Kind::Endpoints,
        &both,
        &newer.version_info,
        &newer.nonce,
        None,
    )
    .await;
    let r = ads.recv_kind(Kind::Endpoints).await;
    let names: Vec<String> = r
        .resources
        .iter()
        .map(|a| decode::<ClusterLoadAssignment>(a).cluster_name)
        .collect();
    assert_eq!(
        names,
        ["default/orders"],
        "only what the client does not hold yet"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_service_is_answered_at_once_with_no_endpoints() {
    let mut t = TestServer::start(Backend::Memory).await;
    let started = std::time::Instant::now();
    let (mut ads, eds) = subscribed(&t, "nosuch").await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered promptly: {:?}",
        started.elapsed()
    );
    let cla = assignment(&eds);
    assert_eq!(cla.cluster_name, "default/nosuch");
    assert!(cla.endpoints.is_empty(), "{cla:?}");
    register(&mut t, node("nosuch", "a", 7001)).await;
    let r = ads.recv_kind(Kind::Endpoints).await;
    assert_eq!(
        endpoints(&assignment(&r)).len(),
        1,
        "its first node is pushed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_services_share_one_stream_and_names_select_groups() {
    let mut t = TestServer::start(Backend::Memory).await;
    let mut ads = Ads::open(t.channel.clone()).await;
    let listeners = [
        "a",
        "b:50051",
        "shop/c",
        "xdstp://shop/envoy.config.listener.v3.Listener/d",
    ];
    let lds = ads.fetch(Kind::Listener, &listeners).await;
    let routes: BTreeMap<String, String> = lds
        .resources
        .iter()
        .map(|any| {
            let l: Listener = decode(any);
            let m: HttpConnectionManager =
                decode(l.api_listener.unwrap().api_listener.as_ref().unwrap());
            let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = m.route_specifier else {
                panic!("rds");
            };
            (l.name, rds.route_config_name)
        })
        .collect();
    assert_eq!(
        routes,
        BTreeMap::from([
            ("a".into(), "default/a".into()),
            ("b:50051".into(), "default/b".into()),
            ("shop/c".into(), "shop/c".into()),
            (
                "xdstp://shop/envoy.config.listener.v3.Listener/d".into(),
                "shop/d".into()
            ),
        ])
    );

    // Both services' endpoints on one stream, in one response.
    let eds = ads.fetch(Kind::Endpoints, &["default/a", "shop/c"]).await;
    assert_eq!(eds.resources.len(), 2);

    // Unsubscribing a listener: the whole set comes again, without it.
    ads.request(Kind::Listener, &["a"], &lds.version_info, &lds.nonce, None)
        .await;
    let fewer = ads.recv_kind(Kind::Listener).await;
    assert_eq!(fewer.resources.len(), 1);
    assert_eq!(decode::<Listener>(&fewer.resources[0]).name, "a");
    ads.ack(&fewer, &["a"]).await;

    // Unsubscribing endpoints: no answer, and no more pushes for them.
    ads.request(
        Kind::Endpoints,
        &["default/a"],
        &eds.version_info,
        &eds.nonce,
        None,
    )
    .await;
    ads.silent("an endpoint unsubscription").await;
    register(
        &mut t,
        pb::RegisterNodeRequest {
            service_group: "shop".into(),
            ..node("c", "x", 7001)
        },
    )
    .await;
    ads.silent("a change to an unsubscribed service").await;
    register(&mut t, node("a", "y", 7002)).await;
    let r = ads.recv_kind(Kind::Endpoints).await;
    assert_eq!(assignment(&r).cluster_name, "default/a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_names_are_left_out_with_an_error_that_says_why() {
    let t = TestServer::start(Backend::Memory).await;
    let mut ads = Ads::open(t.channel.clone()).await;
    ads.subscribe(Kind::Listener, &["payments", "bad name!"])
        .await;
    let lds = ads.recv_kind(Kind::Listener).await;
    assert_eq!(lds.resources.len(), 1, "the good one is served");
    assert_eq!(lds.resource_errors.len(), 1, "{lds:?}");
    let error = &lds.resource_errors[0];
    assert_eq!(error.resource_name.as_ref().unwrap().name, "bad name!");
    let detail = error.error_detail.as_ref().unwrap();
    assert_eq!(detail.code, Code::NotFound as i32);
    assert!(detail.message.contains("service"), "{detail:?}");

    ads.subscribe(Kind::Endpoints, &["no-group-here"]).await;
    let eds = ads.recv_kind(Kind::Endpoints).await;
    assert!(eds.resources.is_empty());
    assert!(
        eds.resource_errors[0]
            .error_detail
            .as_ref()
            .unwrap()
            .message
            .contains("group/service"),
        "{eds:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_stream_is_answered_whatever_version_it_claims() {
    let mut t = TestServer::start(Backend::Memory).await;
    register(&mut t, node("payments", "a", 7001)).await;
    let (ads, eds) = subscribed(&t, "payments").await;
    drop(ads);
    // A client back from a broken stream (or from another server) sends
    // the version it has and no nonce, or one from the old stream.
    let mut again = Ads::open(t.channel.clone()).await;
    again
        .request(
            Kind::Endpoints,
            &["default/payments"],
            &eds.version_info,
            "",
            None,
        )
        .await;
    let r = again.recv_kind(Kind::Endpoints).await;
    assert_eq!(endpoints(&assignment(&r)).len(), 1);
    again
        .request(Kind::Listener, &["payments"], "old-version", "12345", None)
        .await;
    let r = again.recv_kind(Kind::Listener).await;
    assert_eq!(
        r.resources.len(),
        1,
        "a nonce this stream never sent is a first request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_auth_file_xds_clients_need_read_access_to_each_service() {
    let auth = read_tokens(&[
        ("reader", "read-all", ""),
        ("shop-only", "read-shop", "groups = [\"shop\"]"),
    ]);
    let t = TestServer::memory_with(Settings {
        auth: Some(auth),
        ..Settings::default()
    })
    .await;

    // No token: the stream is refused (the first response or the call).
    let refused = async {
        let mut ads = Ads::try_open(t.channel.clone(), None).await?;
        ads.subscribe(Kind::Listener, &["payments"]).await;
        ads.rx.message().await.map(|_| ())
    };
    let status = within("a refusal", refused)
        .await
        .expect_err("no token: refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    let mut ads = Ads::try_open(t.channel.clone(), Some("read-shop"))
        .await
        .expect("open");
    ads.subscribe(Kind::Listener, &["payments", "shop/payments"])
        .await;
    let lds = ads.recv_kind(Kind::Listener).await;
    let served: Vec<String> = lds
        .resources
        .iter()
        .map(|a| decode::<Listener>(a).name)
        .collect();
    assert_eq!(served, ["shop/payments"]);
    let error = &lds.resource_errors[0];
    assert_eq!(error.resource_name.as_ref().unwrap().name, "payments");
    assert_eq!(
        error.error_detail.as_ref().unwrap().code,
        Code::PermissionDenied as i32
    );

    let mut ads = Ads::try_open(t.channel.clone(), Some("read-all"))
        .await
        .expect("open");
    ads.subscribe(Kind::Listener, &["payments"]).await;
    assert_eq!(ads.recv_kind(Kind::Listener).await.resources.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_count_against_the_watch_limit_and_end_when_the_server_stops() {
    let mut settings = Settings::default();
    settings.limits.max_watch_streams = 1;
    let t = TestServer::memory_with(settings).await;
    let mut ads = Ads::open(t.channel.clone()).await;
    ads.fetch(Kind::Listener, &["payments"]).await;
    let second = async {
        let mut ads = Ads::try_open(t.channel.clone(), None).await?;
        ads.subscribe(Kind::Listener, &["payments"]).await;
        ads.rx.message().await.map(|_| ())
    };
    let status = within("the second stream's refusal", second)
        .await
        .expect_err("over the limit");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    let TestServer { server, .. } = t;
    let stopped = tokio::spawn(server.stop());
    let end = within("the stream's end", ads.rx.message()).await;
    let status = end.expect_err("ends with a status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    within("the server's stop", stopped).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_another_server_on_the_same_redis_is_pushed() {
    let mut writer = TestServer::start(Backend::Redis).await;
    let reader = TestServer::sharing(writer.redis()).await;
    let (mut ads, _) = subscribed(&reader, "payments").await;
    register(&mut writer, node("payments", "a", 7001)).await;
    let r = ads.recv_kind(Kind::Endpoints).await;
    assert_eq!(endpoints(&assignment(&r)).len(), 1);

    // Redis restarts: the feed is made anew, and changes still arrive.
    writer.redis().restart();
    let mut b = node("payments", "b", 7002);
    b.status = pb::NodeStatus::Draining as i32;
    register_node_eventually(&writer.client, b).await;
    // A RESYNC after the restart may push the same state first.
    let drained = within("the draining node reaches the xDS stream", async {
        loop {
            let r = ads.recv_kind(Kind::Endpoints).await;
            if let Some((health, _)) = endpoints(&assignment(&r)).get("127.0.0.1:7002") {
                break *health;
            }
        }
    })
    .await;
    assert_eq!(drained, HealthStatus::Draining);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_of_one_service_cost_one_read_per_change() {
    let mut settings = Settings::default();
    // Only the xDS reads are counted: GetNodes's cache plays no part.
    settings.limits.read_cache_bytes = 0;
    let redis = RedisServer::start();
    let registry = redis_registry(&redis).await;
    let hub = registry.hub();
    let mut t = TestServer::on_with((Arc::new(registry), hub), Some(redis), settings).await;
    let mut conn = t.redis().connection().await;
    let reads = |stats: &BTreeMap<String, u64>| stats.get("hgetall").copied().unwrap_or(0);

    // What a registration reads by itself, with no xDS client of it.
    let before = command_calls(&mut conn).await;
    register(&mut t, node("orders", "x", 7100)).await;
    let alone = reads(&command_calls(&mut conn).await) - reads(&before);

    let mut streams = Vec::new();
    for _ in 0..20 {
        streams.push(subscribed(&t, "payments").await.0);
    }
    let before = command_calls(&mut conn).await;
    register(&mut t, node("payments", "a", 7001)).await;
    for ads in &mut streams {
        let r = ads.recv_kind(Kind::Endpoints).await;
        assert_eq!(endpoints(&assignment(&r)).len(), 1);
    }
    let with_clients = reads(&command_calls(&mut conn).await) - reads(&before);
    assert!(
        with_clients <= alone + 1,
        "20 clients of one service: {with_clients} reads of nodes for one change (a registration alone: {alone})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_the_store_cannot_read_is_sent_once_it_can() {
    let mut t = TestServer::start(Backend::Redis).await;
    register(&mut t, node("payments", "a", 7001)).await;
    let mut ads = Ads::open(t.channel.clone()).await;
    ads.fetch(Kind::Listener, &["payments"]).await;
    t.redis().kill();
    // Redis is down: the assignment cannot be read. The first request is
    // answered all the same, without it (a no-op to the client): an empty
    // assignment would tell the client the service has no nodes.
    ads.subscribe(Kind::Endpoints, &["default/payments"]).await;
    let first = ads.recv_kind(Kind::Endpoints).await;
    assert!(first.resources.is_empty(), "{first:?}");
    ads.silent("an assignment the store cannot read").await;
    t.redis().restart();
    // The test's Redis keeps nothing across a restart: the service is
    // empty now, and that is what the client learns once Redis answers.
    let r = ads.recv_kind(Kind::Endpoints).await;
    let cla = assignment(&r);
    assert_eq!(
        cla.cluster_name, "default/payments",
        "sent once Redis answers"
    );
    assert!(cla.endpoints.is_empty(), "{cla:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_reload_ends_a_stream_only_when_it_takes_away_what_was_sent() {
    let dir = TempDir::new("xds-reload");
    let path = dir.0.join("auth.toml");
    let shop_only = [("reader", "read-token", "groups = [\"shop\"]")];
    write_read_tokens(&path, &shop_only);
    let auth = discovered::auth::Auth::load(&path).expect("auth file");
    let t = TestServer::memory_with(Settings {
        auth: Some(auth.clone()),
        ..Settings::default()
    })
    .await;
    let mut ads = Ads::try_open(t.channel.clone(), Some("read-token"))
        .await
        .expect("open");
    let names = ["payments", "shop/payments"];
    ads.subscribe(Kind::Listener, &names).await;
    let lds = ads.recv_kind(Kind::Listener).await;
    assert_eq!(lds.resources.len(), 1, "shop/payments only");
    ads.ack(&lds, &names).await;

    // A reload that changes nothing: `payments` was never sent, so the
    // stream goes on (told of the refusal again).
    auth.reload_now().expect("reload");
    let again = ads.recv_kind(Kind::Listener).await;
    assert_eq!(again.resources.len(), 1);
    assert_eq!(again.resource_errors.len(), 1, "{again:?}");
    ads.ack(&again, &names).await;

    // Access to every group: the refused listener comes now.
    write_read_tokens(&path, &[("reader", "read-token", "")]);
    auth.reload_now().expect("reload");
    let both = ads.recv_kind(Kind::Listener).await;
    assert_eq!(both.resources.len(), 2, "{both:?}");
    ads.ack(&both, &names).await;

    // Access to another group only: what was sent is taken away.
    write_read_tokens(&path, &[("reader", "read-token", "groups = [\"other\"]")]);
    auth.reload_now().expect("reload");
    let end = within("the stream's end", ads.rx.message()).await;
    let status = end.expect_err("ended with a status");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
}
