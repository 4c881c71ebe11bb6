//! Reads the change messages the write scripts publish (see
//! `lua/prelude.lua`): `{"revision":..,"time":..,"type":"node_added",
//! "group":..,"service":..,"node":..,"stored":<the stored envelope>}`.

use serde::Deserialize;
use serde::de::IntoDeserializer;
use serde::de::value::StrDeserializer;

use super::record::{node_from_json, service_from_json};
use crate::model::{ServiceKey, ServiceRecord};
use crate::store::{Change, ChangeEvent};

/// Why a change message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not a change message, or its record does not decode.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// A `type` this server does not know (a newer server's, say).
    #[error("unknown change type {0:?}")]
    UnknownKind(String),
}

/// The `type` of a change message: the one list of the kind names the
/// scripts publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ChangeKind {
    NodeAdded,
    NodeUpdated,
    NodeRemoved,
    NodeExpired,
    ServiceRegistered,
    ServiceUpdated,
    ServiceRemoved,
}

impl ChangeKind {
    fn parse(name: &str) -> Result<Self, ParseError> {
        let de: StrDeserializer<'_, serde::de::value::Error> = name.into_deserializer();
        Self::deserialize(de).map_err(|_| ParseError::UnknownKind(name.into()))
    }
}

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
pub fn parse(payload: &str) -> Result<ChangeEvent, ParseError> {
    let p: Published = serde_json::from_str(payload)?;
    let key = ServiceKey::new(p.group, p.service);
    let node = |stored| node_from_json(&key, &p.node, stored);
    let service = |stored: serde_json::Value| -> Result<ServiceRecord, ParseError> {
        if stored.is_null() {
            // A service known only through its nodes has no record.
            return Ok(ServiceRecord::implicit(key.clone()));
        }
        Ok(service_from_json(&key, stored)?)
    };
    let change = match ChangeKind::parse(&p.kind)? {
        ChangeKind::NodeAdded => Change::NodeAdded(node(p.stored)?),
        ChangeKind::NodeUpdated => Change::NodeUpdated(node(p.stored)?),
        ChangeKind::NodeRemoved => Change::NodeRemoved(node(p.stored)?),
        ChangeKind::NodeExpired => Change::NodeExpired(node(p.stored)?),
        ChangeKind::ServiceRegistered => Change::ServiceRegistered(service(p.stored)?),
        ChangeKind::ServiceUpdated => Change::ServiceUpdated(service(p.stored)?),
        ChangeKind::ServiceRemoved => Change::ServiceRemoved(service(p.stored)?),
    };
    Ok(ChangeEvent {
        change,
        revision: p.revision,
        time: p.time,
        wire: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

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

    #[test]
    fn an_unknown_kind_is_named() {
        let msg = r#"{"revision":9,"time":1000,"type":"node_moved","group":"g","service":"s","node":"n","stored":null}"#;
        let err = parse(msg).unwrap_err();
        assert_eq!(err.to_string(), r#"unknown change type "node_moved""#);
    }

    /// The kind names the scripts publish: every quoted `node_*` or
    /// `service_*` literal in them.
    fn published_kinds() -> BTreeSet<&'static str> {
        let scripts = [
            include_str!("lua/prelude.lua"),
            include_str!("lua/register_service.lua"),
            include_str!("lua/register_node.lua"),
            include_str!("lua/remove_node.lua"),
            include_str!("lua/remove_service.lua"),
            include_str!("lua/expire_node.lua"),
        ];
        scripts
            .iter()
            .flat_map(|lua| lua.match_indices('\'').map(|(at, _)| &lua[at + 1..]))
            .filter_map(|rest| rest.split_once('\'').map(|(quoted, _)| quoted))
            .filter(|s| s.starts_with("node_") || s.starts_with("service_"))
            .filter(|s| s.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .collect()
    }

    #[test]
    fn every_kind_the_scripts_publish_parses() {
        let kinds = published_kinds();
        let parsed: BTreeSet<String> = kinds
            .iter()
            .map(|k| match ChangeKind::parse(k) {
                Ok(kind) => format!("{kind:?}"),
                Err(e) => panic!("the scripts publish {k:?}, which changes.rs cannot read: {e}"),
            })
            .collect();
        // Every kind is published by some script.
        let all = [
            ChangeKind::NodeAdded,
            ChangeKind::NodeUpdated,
            ChangeKind::NodeRemoved,
            ChangeKind::NodeExpired,
            ChangeKind::ServiceRegistered,
            ChangeKind::ServiceUpdated,
            ChangeKind::ServiceRemoved,
        ];
        let all: BTreeSet<String> = all.iter().map(|k| format!("{k:?}")).collect();
        assert_eq!(parsed, all, "published: {kinds:?}");
    }
}
