//! Reads the change messages the write scripts publish (see
//! `lua/prelude.lua`): `{"revision":..,"time":..,"type":"node_added",
//! "group":..,"service":..,"node":..,"stored":<the stored envelope>}`.

use serde::Deserialize;

use super::Envelope;
use crate::model::{NodeSpec, ServiceKey, ServiceRecord, ServiceSpec};
use crate::store::{Change, ChangeEvent};

#[derive(Deserialize)]
struct Published {
    revision: u64,
    time: i64,
    #[serde(rename = "type")]
    kind: String,
    group: String,
    service: String,
    node: String,
    stored: serde_json::Value,
}

/// The change a published message describes.
pub fn parse(payload: &str) -> Result<ChangeEvent, String> {
    let p: Published = serde_json::from_str(payload).map_err(|e| e.to_string())?;
    let key = ServiceKey::new(p.group, p.service);
    let node = |stored: serde_json::Value| {
        serde_json::from_value::<Envelope<NodeSpec>>(stored)
            .map(|env| env.into_record(&key, &p.node))
            .map_err(|e| e.to_string())
    };
    let service = |stored: serde_json::Value| -> Result<ServiceRecord, String> {
        if stored.is_null() {
            // A service known only through its nodes has no record.
            return Ok(ServiceRecord::implicit(key.clone()));
        }
        serde_json::from_value::<Envelope<ServiceSpec>>(stored)
            .map(|env| env.into_record(&key))
            .map_err(|e| e.to_string())
    };
    let change = match p.kind.as_str() {
        "node_added" => Change::NodeAdded(node(p.stored)?),
        "node_updated" => Change::NodeUpdated(node(p.stored)?),
        "node_removed" => Change::NodeRemoved(node(p.stored)?),
        "node_expired" => Change::NodeExpired(node(p.stored)?),
        "service_registered" => Change::ServiceRegistered(service(p.stored)?),
        "service_updated" => Change::ServiceUpdated(service(p.stored)?),
        "service_removed" => Change::ServiceRemoved(service(p.stored)?),
        other => return Err(format!("unknown change type {other:?}")),
    };
    Ok(ChangeEvent {
        change,
        revision: p.revision,
        time: p.time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_node_change() {
        let msg = r#"{"revision":7,"time":1000,"type":"node_expired","group":"g","service":"s","node":"n","stored":{"registered_at":1,"updated_at":2,"expires_at":3,"record":{"ip":["10.0.0.1"],"port":80}}}"#;
        let ev = parse(msg).unwrap();
        assert_eq!(ev.revision, 7);
        let Change::NodeExpired(node) = ev.change else {
            panic!("wrong change: {:?}", ev.change)
        };
        assert_eq!(node.name, "n");
        assert_eq!(node.spec.ip, vec!["10.0.0.1"]);
        assert_eq!(node.expires_at, Some(3));
    }

    #[test]
    fn an_implicit_service_removal_has_a_bare_record() {
        let msg = r#"{"revision":8,"time":1000,"type":"service_removed","group":"g","service":"s","node":"","stored":null}"#;
        let ev = parse(msg).unwrap();
        assert_eq!(
            ev.change,
            Change::ServiceRemoved(ServiceRecord::implicit(ServiceKey::new("g", "s")))
        );
    }
}
