//! How records are stored: the envelope of server times around a
//! registered record, as JSON.
//!
//! The Rust side writes the record (`record` below, with serde); the
//! scripts wrap it in the envelope and read parts of it back without a
//! JSON parser, by position (`lua/record.lua`). The positions they rely on
//! are named here, once:
//!
//! - an envelope starts `{"registered_at":<ms>,"updated_at":<ms>,` and a
//!   node envelope goes on `"expires_at":<ms or null>,`; the scripts write
//!   every envelope, so this part is theirs alone;
//! - a node record starts with [`NODE_RECORD_HEAD`] and the instance id:
//!   `instance_id` is the first field of [`NodeSpec`], and serde writes
//!   fields in declaration order. The unit test below and
//!   `tests/redis_scripts.rs` fail if either side moves.

use serde::{Deserialize, Serialize};

use crate::model::{Millis, NodeRecord, NodeSpec, ServiceKey, ServiceRecord, ServiceSpec};
use crate::store::{StoreError, StoreResult};

/// The literal of [`NODE_RECORD_HEAD`], for `concat!` (the scripts get it
/// as the Lua constant `NODE_RECORD_HEAD`, see `scripts/mod.rs`).
macro_rules! node_record_head {
    () => {
        r#"{"instance_id":""#
    };
}
pub(super) use node_record_head;

/// How every stored node record begins; the instance id follows, up to the
/// next `"` (ids never contain one). The scripts find the id there.
pub const NODE_RECORD_HEAD: &str = node_record_head!();

/// The literal of [`CREDENTIALS_FIELD`], for `concat!`.
macro_rules! credentials_field {
    () => {
        r#""auth_credentials":""#
    };
}
pub(super) use credentials_field;

/// How `auth_credentials` begins in a stored service record: the key and
/// the opening quote of its JSON string. `lua/prelude.lua` finds it there
/// to blank the credentials in every change it publishes.
pub const CREDENTIALS_FIELD: &str = credentials_field!();

/// How a record is stored: the server's times around the registered record.
#[derive(Deserialize)]
struct Envelope<T> {
    registered_at: Millis,
    updated_at: Millis,
    #[serde(default)]
    expires_at: Option<Millis>,
    /// The identity that registered a node, when the registry was
    /// protected; scripts write it between `expires_at` and the record.
    #[serde(default)]
    owner: Option<String>,
    record: T,
}

impl Envelope<ServiceSpec> {
    /// The record of service `key` this envelope holds.
    fn into_service(self, key: &ServiceKey) -> ServiceRecord {
        ServiceRecord {
            key: key.clone(),
            spec: self.record,
            registered_at: Some(self.registered_at),
            updated_at: Some(self.updated_at),
        }
    }
}

impl Envelope<NodeSpec> {
    /// The record of node `name` of service `key` this envelope holds.
    fn into_node(self, key: &ServiceKey, name: &str) -> NodeRecord {
        NodeRecord {
            key: key.clone(),
            name: name.into(),
            spec: self.record,
            registered_at: self.registered_at,
            updated_at: self.updated_at,
            expires_at: self.expires_at,
            owner: self.owner,
        }
    }
}

/// A registered record as the scripts take it: JSON, fields in declaration
/// order (which [`NODE_RECORD_HEAD`] relies on).
pub fn encode<T: Serialize>(record: &T) -> StoreResult<String> {
    serde_json::to_string(record).map_err(|e| StoreError::Internal(format!("encoding record: {e}")))
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, raw: &str) -> StoreResult<Envelope<T>> {
    serde_json::from_str(raw)
        .map_err(|e| StoreError::Internal(format!("corrupt {what} record: {e}")))
}

/// The service record stored as `raw`.
pub(super) fn service_record(key: &ServiceKey, raw: &str) -> StoreResult<ServiceRecord> {
    Ok(decode::<ServiceSpec>("service", raw)?.into_service(key))
}

/// The node record stored as `raw`.
pub(super) fn node_record(key: &ServiceKey, name: &str, raw: &str) -> StoreResult<NodeRecord> {
    Ok(decode::<NodeSpec>("node", raw)?.into_node(key, name))
}

/// The node record in the envelope of a change message.
pub(super) fn node_from_json(
    key: &ServiceKey,
    name: &str,
    stored: serde_json::Value,
) -> serde_json::Result<NodeRecord> {
    Ok(serde_json::from_value::<Envelope<NodeSpec>>(stored)?.into_node(key, name))
}

/// The service record in the envelope of a change message.
pub(super) fn service_from_json(
    key: &ServiceKey,
    stored: serde_json::Value,
) -> serde_json::Result<ServiceRecord> {
    Ok(serde_json::from_value::<Envelope<ServiceSpec>>(stored)?.into_service(key))
}

/// The live, readable nodes among `(name, stored)` pairs of one service, in
/// name order. One unreadable record (written by hand, say) must not hide
/// the others.
pub(super) fn live_nodes(
    key: &ServiceKey,
    all: Vec<(String, String)>,
    now: Millis,
) -> Vec<NodeRecord> {
    let mut nodes: Vec<NodeRecord> = all
        .into_iter()
        .filter_map(|(name, raw)| match node_record(key, &name, &raw) {
            Ok(node) => Some(node),
            Err(e) => {
                tracing::warn!(service = ?key, node = %name, error = %e, "skipping unreadable node record");
                None
            }
        })
        // Expired but not yet swept: already gone for readers.
        .filter(|node| !node.is_expired(now))
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_record_starts_with_its_instance_id() {
        let spec = NodeSpec {
            instance_id: "0123abcd".into(),
            ip: vec!["10.0.0.1".into()],
            port: 80,
            ..NodeSpec::default()
        };
        let raw = encode(&spec).unwrap();
        let rest = raw
            .strip_prefix(NODE_RECORD_HEAD)
            .unwrap_or_else(|| panic!("{raw} does not start with {NODE_RECORD_HEAD}"));
        assert!(rest.starts_with("0123abcd\","), "{raw}");
        assert_eq!(NODE_RECORD_HEAD, r#"{"instance_id":""#);
    }

    #[test]
    fn a_service_record_holds_the_credentials_field() {
        let spec = ServiceSpec {
            auth_type: "basic".into(),
            auth_credentials: "u:\"p\\".into(),
            ..ServiceSpec::default()
        };
        let raw = encode(&spec).unwrap();
        assert!(
            raw.contains(r#""auth_credentials":"u:\"p\\","#),
            "{raw} does not hold {CREDENTIALS_FIELD}"
        );
    }

    #[test]
    fn an_unreadable_node_hides_no_other() {
        let key = ServiceKey::new("g", "s");
        let good = |exp: &str| {
            format!(
                r#"{{"registered_at":1,"updated_at":2,"expires_at":{exp},"record":{{"port":80}}}}"#
            )
        };
        let nodes = live_nodes(
            &key,
            vec![
                ("b".into(), good("null")),
                ("bad".into(), "{".into()),
                ("gone".into(), good("5")),
                ("a".into(), good("50")),
            ],
            10,
        );
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
    }
}
