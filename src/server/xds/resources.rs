//! The four resources a gRPC client needs for one service, built from the
//! registry: a Listener (an API listener whose HTTP connection manager
//! routes through RDS), a RouteConfiguration (every call to the cluster),
//! a Cluster (EDS, round robin) and the ClusterLoadAssignment of the
//! service's nodes. Pure functions, no I/O; the rules they follow are what
//! gRPC's xDS clients accept (gRFC A27): anything else is NACKed or, worse,
//! silently skipped.

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;

use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, circuit_breakers, cluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, HealthStatus, Locality as EnvoyLocality,
    RoutingPriority, SocketAddress, address, config_source, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action,
    route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use envoy_types::util::pack_any;
use prost::Name;

use super::names::resource_name;
use crate::model::{Locality, NodeRecord, NodeStatus, ServiceKey};

/// The four resource types, in the order a client asks for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// LDS: `envoy.config.listener.v3.Listener`.
    Listener,
    /// RDS: `envoy.config.route.v3.RouteConfiguration`.
    Route,
    /// CDS: `envoy.config.cluster.v3.Cluster`.
    Cluster,
    /// EDS: `envoy.config.endpoint.v3.ClusterLoadAssignment`.
    Endpoints,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 4] = [Kind::Listener, Kind::Route, Kind::Cluster, Kind::Endpoints];

    /// The kind a request's `type_url` asks for, if it is one of ours.
    pub fn from_type_url(url: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.type_url() == url)
    }

    /// The type URL of this kind's resources.
    pub fn type_url(self) -> String {
        match self {
            Kind::Listener => Listener::type_url(),
            Kind::Route => RouteConfiguration::type_url(),
            Kind::Cluster => Cluster::type_url(),
            Kind::Endpoints => ClusterLoadAssignment::type_url(),
        }
    }

    /// Short name for logs.
    pub fn short(self) -> &'static str {
        match self {
            Kind::Listener => "LDS",
            Kind::Route => "RDS",
            Kind::Cluster => "CDS",
            Kind::Endpoints => "EDS",
        }
    }

    /// Whether every response of this kind must hold every subscribed
    /// resource (LDS and CDS: a resource left out is deleted), rather than
    /// only the ones that changed (RDS and EDS).
    pub fn is_whole_set(self) -> bool {
        matches!(self, Kind::Listener | Kind::Cluster)
    }

    /// Its index in per-kind arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Route, cluster and endpoints all come through the same ADS stream.
fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

/// The Listener `name` (exactly as the client asked for it) of `key`.
pub fn listener(name: &str, key: &ServiceKey) -> Any {
    let manager = HttpConnectionManager {
        // Envoy requires one; gRPC reads none.
        stat_prefix: "discovered".into(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: resource_name(key),
        })),
        // gRPC wants the router, last, with its own type.
        http_filters: vec![HttpFilter {
            name: "router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                Router::default(),
            ))),
            ..Default::default()
        }],
        ..Default::default()
    };
    pack_any(Listener {
        name: name.into(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack_any(manager)),
        }),
        ..Default::default()
    })
}

/// The RouteConfiguration of `key`: every call goes to its cluster,
/// whatever authority the client dials it by.
pub fn route(key: &ServiceKey) -> Any {
    let name = resource_name(key);
    pack_any(RouteConfiguration {
        virtual_hosts: vec![VirtualHost {
            name: key.service.clone(),
            domains: vec!["*".into()],
            routes: vec![Route {
                // gRPC requires the last route to match every path.
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix(String::new())),
                    ..Default::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(name.clone())),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        name,
        ..Default::default()
    })
}

/// The Cluster of `key`: its endpoints from EDS, round robin.
pub fn cluster(key: &ServiceKey) -> Any {
    let name = resource_name(key);
    pack_any(Cluster {
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: name.clone(),
        }),
        lb_policy: cluster::LbPolicy::RoundRobin as i32,
        // Without it gRPC allows 1,024 calls in flight per cluster and
        // fails the others: a registry should not cap a service's load.
        circuit_breakers: Some(CircuitBreakers {
            thresholds: vec![circuit_breakers::Thresholds {
                priority: RoutingPriority::Default as i32,
                max_requests: Some(UInt32Value { value: u32::MAX }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        name,
        ..Default::default()
    })
}

/// How a node's status reads in EDS: draining nodes get no new calls
/// (gRPC and Envoy both leave DRAINING endpoints out of picks).
pub fn health(status: NodeStatus) -> HealthStatus {
    match status {
        NodeStatus::Serving => HealthStatus::Healthy,
        NodeStatus::Draining => HealthStatus::Draining,
    }
}

/// An unset weight (0) counts as 1, Envoy's default.
fn weight(node: &NodeRecord) -> u64 {
    u64::from(node.spec.weight.max(1))
}

/// The ClusterLoadAssignment of `key` from its live `nodes` (in name
/// order): one locality per distinct (region, zone, sub-zone), weighted by
/// the sum of its serving nodes' weights (at least 1: gRPC skips a
/// locality without weight, and then would not see its draining nodes
/// either). Each node is one endpoint at its first address; a node without
/// one, or without a port, is left out, as is a second node at an address
/// and port already listed (clients reject an assignment that lists one
/// twice). No nodes: no endpoints, and clients fail calls at once.
pub fn load_assignment(key: &ServiceKey, nodes: &[NodeRecord]) -> Any {
    let mut localities: BTreeMap<&Locality, Vec<&NodeRecord>> = BTreeMap::new();
    let mut seen: HashSet<(IpAddr, u32)> = HashSet::new();
    for node in nodes {
        let Some(ip) = endpoint_ip(node) else {
            continue;
        };
        if !seen.insert((ip, node.spec.port)) {
            tracing::warn!(service = %key.service, group = %key.group, node = %node.name, %ip, port = node.spec.port,
                "two nodes of one service at the same address and port: xDS lists the first by name only");
            continue;
        }
        localities
            .entry(&node.spec.locality)
            .or_default()
            .push(node);
    }
    let serving = |members: &[&NodeRecord]| -> u64 {
        members
            .iter()
            .filter(|n| n.spec.status == NodeStatus::Serving)
            .map(|n| weight(n))
            .sum::<u64>()
            .max(1)
    };
    let locality_weights = fit_u32(localities.values().map(|m| serving(m)).collect());
    let endpoints = localities
        .into_iter()
        .zip(locality_weights)
        .map(|((locality, members), locality_weight)| {
            let weights = fit_u32(members.iter().map(|n| weight(n)).collect());
            LocalityLbEndpoints {
                // Always present, even empty: gRPC refuses one without.
                locality: Some(EnvoyLocality {
                    region: locality.region.clone(),
                    zone: locality.zone.clone(),
                    sub_zone: locality.sub_zone.clone(),
                }),
                lb_endpoints: members
                    .iter()
                    .zip(weights)
                    .map(|(node, w)| lb_endpoint(node, w))
                    .collect(),
                load_balancing_weight: Some(UInt32Value {
                    value: locality_weight,
                }),
                ..Default::default()
            }
        })
        .collect();
    pack_any(ClusterLoadAssignment {
        cluster_name: resource_name(key),
        endpoints,
        ..Default::default()
    })
}

/// The address a node's endpoint is reached at: its first, if it has a
/// port to go with it. Stored addresses are canonical IP literals, which is
/// what clients require (no host names).
fn endpoint_ip(node: &NodeRecord) -> Option<IpAddr> {
    if node.spec.port == 0 || node.spec.port > u32::from(u16::MAX) {
        return None;
    }
    node.spec.ip.first()?.parse().ok()
}

fn lb_endpoint(node: &NodeRecord, weight: u32) -> LbEndpoint {
    let ip = node.spec.ip[0].clone();
    LbEndpoint {
        health_status: health(node.spec.status) as i32,
        load_balancing_weight: Some(UInt32Value { value: weight }),
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(envoy_types::pb::envoy::config::core::v3::Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: ip,
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(node.spec.port)),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Weights whose sum fits 32 bits, as clients require of the endpoints of
/// a locality and of the localities of a priority: scaled down together
/// when they do not, none below 1. (It takes thousands of nodes at the
/// largest weight to need it.)
fn fit_u32(weights: Vec<u64>) -> Vec<u32> {
    let total: u64 = weights.iter().sum();
    let divisor = total.div_ceil(u64::from(u32::MAX)).max(1);
    // Rounding up each part to 1 can overshoot by one per part: divide by
    // one more then.
    let divisor = if divisor > 1 { divisor + 1 } else { 1 };
    weights
        .into_iter()
        .map(|w| u32::try_from((w / divisor).max(1)).unwrap_or(u32::MAX))
        .collect()
}

/// A resource's content hash: equal hashes, nothing new to send.
pub fn hash_of(any: &Any) -> u64 {
    let mut h = DefaultHasher::new();
    any.value.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::model::NodeSpec;

    fn node(name: &str, ip: &str, port: u32) -> NodeRecord {
        NodeRecord {
            key: ServiceKey::new("default", "payments"),
            name: name.into(),
            spec: NodeSpec {
                ip: if ip.is_empty() {
                    vec![]
                } else {
                    vec![ip.into()]
                },
                port,
                ..Default::default()
            },
            registered_at: 0,
            updated_at: 0,
            expires_at: None,
            owner: None,
        }
    }

    fn decode(any: Any) -> ClusterLoadAssignment {
        assert_eq!(any.type_url, ClusterLoadAssignment::type_url());
        ClusterLoadAssignment::decode(any.value.as_slice()).unwrap()
    }

    fn address(e: &LbEndpoint) -> (String, u32) {
        let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
            panic!("no endpoint");
        };
        let Some(address::Address::SocketAddress(sa)) =
            ep.address.as_ref().unwrap().address.clone()
        else {
            panic!("no socket address");
        };
        let Some(socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else {
            panic!("no port");
        };
        (sa.address, port)
    }

    #[test]
    fn nodes_become_endpoints_grouped_by_locality_with_weights() {
        let key = ServiceKey::new("default", "payments");
        let mut a = node("a", "10.0.0.1", 80);
        a.spec.locality.zone = "z1".into();
        a.spec.weight = 3;
        let mut b = node("b", "10.0.0.2", 80);
        b.spec.locality.zone = "z1".into();
        b.spec.status = NodeStatus::Draining;
        b.spec.weight = 100;
        let c = node("c", "::1", 81);
        let no_ip = node("d", "", 80);
        let no_port = node("e", "10.0.0.5", 0);
        let twin = node("f", "10.0.0.1", 80);
        let cla = decode(load_assignment(&key, &[a, b, c, no_ip, no_port, twin]));
        assert_eq!(cla.cluster_name, "default/payments");
        assert_eq!(cla.endpoints.len(), 2, "{cla:?}");
        // Sorted by locality: the empty one first.
        let empty = &cla.endpoints[0];
        assert_eq!(empty.locality, Some(EnvoyLocality::default()));
        assert_eq!(empty.load_balancing_weight, Some(UInt32Value { value: 1 }));
        assert_eq!(address(&empty.lb_endpoints[0]), ("::1".into(), 81));
        let z1 = &cla.endpoints[1];
        assert_eq!(z1.locality.as_ref().unwrap().zone, "z1");
        // The draining node's weight does not count for its locality.
        assert_eq!(z1.load_balancing_weight, Some(UInt32Value { value: 3 }));
        let listed: Vec<_> = z1.lb_endpoints.iter().map(address).collect();
        assert_eq!(listed, [("10.0.0.1".into(), 80), ("10.0.0.2".into(), 80)]);
        assert_eq!(
            z1.lb_endpoints[0].health_status,
            HealthStatus::Healthy as i32
        );
        assert_eq!(
            z1.lb_endpoints[1].health_status,
            HealthStatus::Draining as i32
        );
        assert_eq!(
            z1.lb_endpoints[1].load_balancing_weight,
            Some(UInt32Value { value: 100 })
        );
    }

    #[test]
    fn a_locality_of_draining_nodes_keeps_weight_one() {
        let key = ServiceKey::new("default", "payments");
        let mut a = node("a", "10.0.0.1", 80);
        a.spec.status = NodeStatus::Draining;
        let cla = decode(load_assignment(&key, &[a]));
        assert_eq!(
            cla.endpoints[0].load_balancing_weight,
            Some(UInt32Value { value: 1 })
        );
    }

    #[test]
    fn no_nodes_is_no_endpoints() {
        let cla = decode(load_assignment(&ServiceKey::new("g", "s"), &[]));
        assert_eq!(cla.cluster_name, "g/s");
        assert!(cla.endpoints.is_empty());
    }

    #[test]
    fn weights_fit_32_bits_together() {
        assert_eq!(fit_u32(vec![1, 5, 1_000_000]), [1, 5, 1_000_000]);
        let big = vec![1_000_000u64; 10_000];
        let fitted = fit_u32(big);
        let total: u64 = fitted.iter().map(|&w| u64::from(w)).sum();
        assert!(total <= u64::from(u32::MAX), "{total}");
        assert!(fitted.iter().all(|&w| w == fitted[0] && w >= 1));
        let mixed = fit_u32(vec![1, u64::from(u32::MAX)]);
        assert_eq!(mixed[0], 1, "never below 1");
        assert!(u64::from(mixed[0]) + u64::from(mixed[1]) <= u64::from(u32::MAX));
    }
}
