//! Rendering of the client commands' results: aligned text tables for
//! people, JSON for scripts.
//!
//! JSON follows the proto field names (`service_group`, `node_name`, `ip`,
//! ...). Timestamps are RFC 3339 strings in UTC with millisecond precision
//! (`2026-01-02T03:04:05.678Z`), or `null` when unset (a node without a
//! TTL has `"expires_at": null`).

use std::io::Write;

use clap::ValueEnum;
use prost_types::Timestamp;
use serde_json::{Map, Value, json};

use crate::client::Event;
use crate::proto::v1 as pb;

/// How a command prints its result on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns (or key/value lines for one record).
    Table,
    /// JSON: one value per command; for `watch`, one object per line.
    Json,
}

/// Writes `text` (plus a newline) to stdout and flushes. A closed pipe
/// (`discovered nodes x | head -1`) is not an error worth reporting.
pub fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}

/// A timestamp as RFC 3339 in UTC with milliseconds.
pub fn rfc3339(t: &Timestamp) -> String {
    let secs = t.seconds;
    let millis = t.nanos.clamp(0, 999_999_999) / 1_000_000;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// (year, month, day) of a day count since 1970-01-01 (proleptic
/// Gregorian; Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m as u32, d as u32)
}

/// A timestamp as JSON: an RFC 3339 string, or null when unset.
pub fn time_json(t: &Option<Timestamp>) -> Value {
    t.as_ref()
        .map_or(Value::Null, |t| Value::String(rfc3339(t)))
}

fn metadata_json(m: &std::collections::HashMap<String, String>) -> Value {
    // Sorted keys, so output is stable.
    let sorted: std::collections::BTreeMap<_, _> = m.iter().collect();
    let map: Map<String, Value> = sorted
        .into_iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    Value::Object(map)
}

/// A node record as a JSON object.
pub fn node_json(n: &pb::Node) -> Value {
    json!({
        "service_group": n.service_group,
        "service_name": n.service_name,
        "node_name": n.node_name,
        "ip": n.ip,
        "port": n.port,
        "fqdn": n.fqdn,
        "os": n.os,
        "platform_name": n.platform_name,
        "arch": n.arch,
        "cpu_count": n.cpu_count,
        "memory_mb": n.memory_mb,
        "last_boot": time_json(&n.last_boot),
        "metadata": metadata_json(&n.metadata),
        "registered_at": time_json(&n.registered_at),
        "updated_at": time_json(&n.updated_at),
        "expires_at": time_json(&n.expires_at),
        "instance_id": n.instance_id,
    })
}

/// A service record as a JSON object.
pub fn service_json(s: &pb::Service) -> Value {
    json!({
        "service_group": s.service_group,
        "service_name": s.service_name,
        "endpoint": s.endpoint,
        "endpoint_type": s.endpoint_type,
        "auth_type": s.auth_type,
        "auth_credentials": s.auth_credentials,
        "backend": s.backend,
        "description": s.description,
        "metadata": metadata_json(&s.metadata),
        "registered_at": time_json(&s.registered_at),
        "updated_at": time_json(&s.updated_at),
    })
}

/// Rows under a header, columns padded to their widest cell and separated
/// by two spaces; the last column is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut s = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            if i == last {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut lines = vec![line(headers.to_vec())];
    for row in rows {
        lines.push(line(row.iter().map(String::as_str).collect()));
    }
    lines.join("\n")
}

fn or_dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.into() }
}

fn time_or(t: &Option<Timestamp>, none: &str) -> String {
    t.as_ref().map_or_else(|| none.to_string(), rfc3339)
}

/// Nodes as a table: NAME, ADDRESSES, PORT, EXPIRES, INSTANCE.
pub fn nodes_table(nodes: &[pb::Node]) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                n.node_name.clone(),
                or_dash(&n.ip.join(",")),
                n.port.to_string(),
                time_or(&n.expires_at, "never"),
                or_dash(&n.instance_id),
            ]
        })
        .collect();
    table(&["NAME", "ADDRESSES", "PORT", "EXPIRES", "INSTANCE"], &rows)
}

/// One name per line under a header.
pub fn names_table(header: &str, names: &[String]) -> String {
    let rows: Vec<Vec<String>> = names.iter().map(|n| vec![n.clone()]).collect();
    table(&[header], &rows)
}

fn metadata_text(m: &std::collections::HashMap<String, String>) -> String {
    let sorted: std::collections::BTreeMap<_, _> = m.iter().collect();
    let parts: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}={v}")).collect();
    or_dash(&parts.join(","))
}

/// One service record as FIELD/VALUE lines.
pub fn service_table(s: &pb::Service) -> String {
    let credentials = if s.auth_credentials.is_empty() {
        "-".to_string()
    } else {
        s.auth_credentials.clone()
    };
    let rows = vec![
        vec!["group".into(), s.service_group.clone()],
        vec!["name".into(), s.service_name.clone()],
        vec!["endpoint".into(), or_dash(&s.endpoint)],
        vec!["endpoint_type".into(), or_dash(&s.endpoint_type)],
        vec!["auth_type".into(), or_dash(&s.auth_type)],
        vec!["auth_credentials".into(), credentials],
        vec!["backend".into(), or_dash(&s.backend)],
        vec!["description".into(), or_dash(&s.description)],
        vec!["metadata".into(), metadata_text(&s.metadata)],
        vec!["registered_at".into(), time_or(&s.registered_at, "-")],
        vec!["updated_at".into(), time_or(&s.updated_at, "-")],
    ];
    table(&["FIELD", "VALUE"], &rows)
}

/// A command's result in both forms, for [`Printed::print`] to pick one.
#[derive(Debug)]
pub struct Printed {
    json: Value,
    table: String,
}

impl Printed {
    /// Writes the form `output` asks for to stdout (see [`emit`]).
    pub fn print(&self, output: Output) {
        match output {
            Output::Json => emit(&self.json.to_string()),
            Output::Table => emit(&self.table),
        }
    }
}

/// A service record: JSON object, or FIELD/VALUE lines.
pub fn service(s: &pb::Service) -> Printed {
    Printed {
        json: service_json(s),
        table: service_table(s),
    }
}

/// One node record: JSON object, or a table of one row.
pub fn node(n: &pb::Node) -> Printed {
    Printed {
        json: node_json(n),
        table: nodes_table(std::slice::from_ref(n)),
    }
}

/// Node records: JSON array, or a table.
pub fn nodes(nodes: &[pb::Node]) -> Printed {
    Printed {
        json: Value::Array(nodes.iter().map(node_json).collect()),
        table: nodes_table(nodes),
    }
}

/// Names: JSON array of strings, or one per line under `header`.
pub fn names(header: &str, names: &[String]) -> Printed {
    Printed {
        json: json!(names),
        table: names_table(header, names),
    }
}

/// A heartbeat's result: the node's new deadline (`never` in a table,
/// null in JSON, for a node without a TTL).
pub fn renewed(service: &str, node: &str, expires: &Option<Timestamp>) -> Printed {
    Printed {
        json: json!({
            "service_name": service,
            "node_name": node,
            "expires_at": time_json(expires),
        }),
        table: table(
            &["NAME", "EXPIRES"],
            &[vec![node.to_string(), time_or(expires, "never")]],
        ),
    }
}

/// A remove-node's result.
pub fn node_removed(node: &str, removed: bool) -> Printed {
    Printed {
        json: json!({ "removed": removed }),
        table: if removed {
            format!("removed node {node}")
        } else {
            format!("node {node} did not exist")
        },
    }
}

/// A remove-service's result.
pub fn service_removed(service: &str, r: &pb::RemoveServiceResponse) -> Printed {
    Printed {
        json: json!({ "removed": r.removed, "nodes_removed": r.nodes_removed }),
        table: if r.removed {
            format!("removed service {service} with {} node(s)", r.nodes_removed)
        } else {
            format!("service {service} did not exist")
        },
    }
}

/// A remove-group's result.
pub fn group_removed(group: &str, r: &pb::RemoveServiceGroupResponse) -> Printed {
    Printed {
        json: json!({ "removed": r.removed, "services_removed": r.services_removed }),
        table: if r.removed {
            format!(
                "removed group {group} with {} service(s)",
                r.services_removed
            )
        } else {
            format!("group {group} did not exist")
        },
    }
}

/// One watch event. JSON: an object with `type`, `group`, `service` (the
/// service name, null on markers of a group watch), and `node` (the node
/// record) on INITIAL/NODE_* or `service_record` on SERVICE_* events;
/// markers (SYNCED, RESYNC) carry the watch's `group` and `service`, as
/// given. Table: one line of text.
pub fn event(e: &Event, group: &str, service: Option<&str>) -> Printed {
    let name = event_name(e);
    let mut json = json!({ "type": name });
    let (table, g, s): (String, String, Option<String>) = match e {
        Event::Initial(n)
        | Event::NodeAdded(n)
        | Event::NodeUpdated(n)
        | Event::NodeRemoved(n)
        | Event::NodeExpired(n) => {
            json["node"] = node_json(n);
            let ip = if n.ip.is_empty() {
                "-".to_string()
            } else {
                n.ip.join(",")
            };
            let line = format!(
                "{name:<18}  {}/{}  {}  {ip}  {}",
                n.service_group, n.service_name, n.node_name, n.port
            );
            (line, n.service_group.clone(), Some(n.service_name.clone()))
        }
        Event::ServiceRegistered(r) | Event::ServiceUpdated(r) | Event::ServiceRemoved(r) => {
            json["service_record"] = service_json(r);
            let line = format!("{name:<18}  {}/{}", r.service_group, r.service_name);
            (line, r.service_group.clone(), Some(r.service_name.clone()))
        }
        Event::Synced | Event::Resync => (
            name.to_string(),
            group.to_string(),
            service.map(str::to_string),
        ),
    };
    json["group"] = json!(g);
    json["service"] = json!(s);
    Printed { json, table }
}

/// The event's name as in the proto, without the `EVENT_TYPE_` prefix.
fn event_name(e: &Event) -> &'static str {
    let name = e.event_type().as_str_name();
    name.strip_prefix("EVENT_TYPE_").unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = |seconds, nanos| rfc3339(&Timestamp { seconds, nanos });
        assert_eq!(t(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(t(951_782_400, 0), "2000-02-29T00:00:00.000Z");
        assert_eq!(t(1_700_000_000, 123_456_789), "2023-11-14T22:13:20.123Z");
        assert_eq!(t(-1, 0), "1969-12-31T23:59:59.000Z");
    }

    #[test]
    fn tables_align() {
        let rows = vec![
            vec!["a".to_string(), "long-value".to_string(), "x".to_string()],
            vec!["bbbb".to_string(), "v".to_string(), "y".to_string()],
        ];
        assert_eq!(
            table(&["K", "V", "Z"], &rows),
            "K     V           Z\na     long-value  x\nbbbb  v           y"
        );
    }
}
