//! The registry as JSON, for the dashboard's API and Prometheus's
//! service discovery: one shape of a node for both.

use serde_json::{Map, Value, json};

use crate::model::{NodeRecord, NodeStatus};

/// A node as the dashboard shows it (times in milliseconds since the
/// epoch).
pub fn node(n: &NodeRecord) -> Value {
    let s = &n.spec;
    json!({
        "group": n.key.group,
        "service": n.key.service,
        "name": n.name,
        "ip": s.ip,
        "port": s.port,
        "status": status(s.status),
        "region": s.locality.region,
        "zone": s.locality.zone,
        "sub_zone": s.locality.sub_zone,
        "weight": s.weight,
        "instance_id": s.instance_id,
        "fqdn": s.fqdn,
        "os": s.os,
        "platform_name": s.platform_name,
        "arch": s.arch,
        "cpu_count": s.cpu_count,
        "memory_mb": s.memory_mb,
        "last_boot_ms": s.last_boot.map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000),
        "metadata": s.metadata,
        "registered_at_ms": n.registered_at,
        "updated_at_ms": n.updated_at,
        "expires_at_ms": n.expires_at,
    })
}

/// A status as the JSON says it.
pub fn status(s: NodeStatus) -> &'static str {
    match s {
        NodeStatus::Serving => "serving",
        NodeStatus::Draining => "draining",
    }
}

/// A node as a Prometheus HTTP SD target group, if it has an address and
/// a port to scrape: `ip:port` (IPv6 in brackets) with the node's facts as
/// `__meta_discovered_*` labels, which relabelling can keep.
pub fn sd_target(n: &NodeRecord) -> Option<Value> {
    let s = &n.spec;
    let ip: std::net::IpAddr = s.ip.first()?.parse().ok()?;
    if s.port == 0 {
        return None;
    }
    let target = std::net::SocketAddr::new(ip, u16::try_from(s.port).ok()?).to_string();
    let mut labels = Map::new();
    let mut label = |name: &str, value: &str| {
        labels.insert(format!("__meta_discovered_{name}"), Value::from(value));
    };
    label("group", &n.key.group);
    label("service", &n.key.service);
    label("node", &n.name);
    label("status", status(s.status));
    label("region", &s.locality.region);
    label("zone", &s.locality.zone);
    label("sub_zone", &s.locality.sub_zone);
    label("instance_id", &s.instance_id);
    for (key, value) in &s.metadata {
        label(&format!("metadata_{}", label_name(key)), value);
    }
    Some(json!({ "targets": [target], "labels": labels }))
}

/// A metadata key as a label name: characters Prometheus does not allow
/// in one become `_`.
fn label_name(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeSpec, ServiceKey};

    fn record(ip: &str, port: u32) -> NodeRecord {
        NodeRecord {
            key: ServiceKey::new("shop", "payments"),
            name: "pay-1".into(),
            spec: NodeSpec {
                ip: vec![ip.into()],
                port,
                metadata: [("app.kubernetes.io/name".to_string(), "pay".to_string())].into(),
                ..Default::default()
            },
            registered_at: 1,
            updated_at: 2,
            expires_at: Some(3),
            owner: None,
        }
    }

    #[test]
    fn a_node_is_a_target_with_its_labels() {
        let t = sd_target(&record("::1", 8080)).unwrap();
        assert_eq!(t["targets"][0], "[::1]:8080");
        assert_eq!(t["labels"]["__meta_discovered_group"], "shop");
        assert_eq!(t["labels"]["__meta_discovered_node"], "pay-1");
        assert_eq!(t["labels"]["__meta_discovered_status"], "serving");
        assert_eq!(
            t["labels"]["__meta_discovered_metadata_app_kubernetes_io_name"],
            "pay"
        );
    }

    #[test]
    fn nodes_without_an_address_or_port_are_no_targets() {
        assert!(sd_target(&record("10.0.0.1", 0)).is_none());
        let mut none = record("10.0.0.1", 80);
        none.spec.ip.clear();
        assert!(sd_target(&none).is_none());
    }

    #[test]
    fn the_dashboard_node_has_its_times_and_facts() {
        let v = node(&record("10.0.0.1", 80));
        assert_eq!(v["expires_at_ms"], 3);
        assert_eq!(v["status"], "serving");
        assert_eq!(v["ip"][0], "10.0.0.1");
        assert!(v["last_boot_ms"].is_null());
    }
}
