//! Domain types of the registry and the rules their fields obey.
//!
//! Nothing here knows about protobuf or Redis: the server converts requests
//! into these types, and every store keeps and returns them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch: how the registry stores its own times.
pub type Millis = i64;

/// The current time in milliseconds since the Unix epoch.
pub fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// When a node registered or renewed at `now` with `ttl` expires: `None`
/// for a node that never does.
pub fn expiry(now: Millis, ttl: Option<Duration>) -> Option<Millis> {
    ttl.map(|ttl| now.saturating_add(ttl.as_millis().try_into().unwrap_or(Millis::MAX)))
}

/// A fresh instance id, for one life of a node: 128 random bits in hex.
pub fn new_instance_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Longest group, service or node name.
pub const MAX_NAME_LEN: usize = 128;
/// Longest free-text field, metadata key or metadata value, in bytes.
pub const MAX_STRING_LEN: usize = 4096;
/// Most metadata entries on one record.
pub const MAX_METADATA_ENTRIES: usize = 64;
/// Most addresses on one node.
pub const MAX_ADDRESSES: usize = 16;
/// Longest node TTL a registration may ask for: one year.
pub const MAX_TTL_SECONDS: i64 = 365 * 24 * 3600;
/// Page size used when a request asks for 0.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page size a request may ask for.
pub const MAX_PAGE_SIZE: usize = 1000;

/// A field that broke a rule; becomes INVALID_ARGUMENT naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidField {
    /// The request field, as named in the proto.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl InvalidField {
    /// A rule broken by `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Checks a group, service or node name: 1 to 128 characters of ASCII
/// letters, digits, `.`, `_` and `-`. Anything else could break a Redis
/// key or pattern, so it is refused rather than escaped.
///
/// ```
/// use discovered::model::validate_name;
///
/// assert!(validate_name("service_name", "payments-v2").is_ok());
/// let err = validate_name("service_name", "pay:ments").unwrap_err();
/// assert_eq!(err.field, "service_name");
/// assert!(err.to_string().starts_with("service_name: "));
/// ```
pub fn validate_name(field: &str, value: &str) -> Result<(), InvalidField> {
    let ok_chars = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if value.is_empty() || value.len() > MAX_NAME_LEN || !ok_chars {
        let shown: String = value.chars().take(40).collect();
        return Err(InvalidField::new(
            field,
            format!(
                "must be 1 to {MAX_NAME_LEN} characters of letters, digits, '.', '_' or '-' (got {shown:?})"
            ),
        ));
    }
    Ok(())
}

/// Checks a free-text field against the 4 KiB bound.
pub fn validate_text(field: &str, value: &str) -> Result<(), InvalidField> {
    if value.len() > MAX_STRING_LEN {
        return Err(InvalidField::new(
            field,
            format!(
                "must be at most {MAX_STRING_LEN} bytes (got {})",
                value.len()
            ),
        ));
    }
    Ok(())
}

/// Checks a metadata map: at most 64 entries, keys non-empty, keys and
/// values at most 4 KiB.
pub fn validate_metadata(field: &str, map: &BTreeMap<String, String>) -> Result<(), InvalidField> {
    if map.len() > MAX_METADATA_ENTRIES {
        return Err(InvalidField::new(
            field,
            format!(
                "must have at most {MAX_METADATA_ENTRIES} entries (got {})",
                map.len()
            ),
        ));
    }
    for (k, v) in map {
        if k.is_empty() {
            return Err(InvalidField::new(field, "keys must not be empty"));
        }
        validate_text(&format!("{field}[{k:.40}]"), v)?;
        if k.len() > MAX_STRING_LEN {
            return Err(InvalidField::new(
                field,
                format!("keys must be at most {MAX_STRING_LEN} bytes"),
            ));
        }
    }
    Ok(())
}

/// Checks a node's addresses: at most 16, each an IPv4 or IPv6 address.
/// Returns them in canonical form (`::1`, not `0:0:0:0:0:0:0:1`).
pub fn validate_addresses(field: &str, ips: &[String]) -> Result<Vec<String>, InvalidField> {
    if ips.len() > MAX_ADDRESSES {
        return Err(InvalidField::new(
            field,
            format!(
                "must have at most {MAX_ADDRESSES} addresses (got {})",
                ips.len()
            ),
        ));
    }
    ips.iter()
        .map(|ip| {
            ip.trim()
                .parse::<IpAddr>()
                .map(|a| a.to_string())
                .map_err(|_| {
                    let shown: String = ip.chars().take(60).collect();
                    InvalidField::new(field, format!("{shown:?} is not an IPv4 or IPv6 address"))
                })
        })
        .collect()
}

/// Checks a requested TTL in seconds: `None` for none (zero or negative),
/// an error beyond [`MAX_TTL_SECONDS`].
pub fn validate_ttl(
    field: &str,
    seconds: i64,
) -> Result<Option<std::time::Duration>, InvalidField> {
    match seconds {
        s if s <= 0 => Ok(None),
        s if s > MAX_TTL_SECONDS => Err(InvalidField::new(
            field,
            format!("must be at most {MAX_TTL_SECONDS} seconds (one year); got {s}"),
        )),
        s => Ok(Some(std::time::Duration::from_secs(s as u64))),
    }
}

/// Checks a requested page size and applies the default for 0.
pub fn validate_page_size(field: &str, size: u32) -> Result<usize, InvalidField> {
    match size as usize {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n > MAX_PAGE_SIZE => Err(InvalidField::new(
            field,
            format!("must be at most {MAX_PAGE_SIZE} (got {n})"),
        )),
        n => Ok(n),
    }
}

/// Identifies one service: its group and its name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// The service group.
    pub group: String,
    /// The service name within the group.
    pub service: String,
}

impl ServiceKey {
    /// A key from a group and a service name.
    pub fn new(group: impl Into<String>, service: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            service: service.into(),
        }
    }
}

/// A point in wall-clock time with the precision protobuf gives it (a
/// machine's boot time, for instance).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WallTime {
    /// Seconds since the Unix epoch.
    pub seconds: i64,
    /// Nanoseconds within the second.
    pub nanos: i32,
}

/// What a service registration says about the service; replaced whole on
/// each registration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceSpec {
    /// Where the service is offered.
    pub endpoint: String,
    /// A descriptive type for the endpoint.
    pub endpoint_type: String,
    /// The authentication the endpoint requires.
    pub auth_type: String,
    /// Credentials for the endpoint; shown only on request.
    pub auth_credentials: String,
    /// A label for the backend behind the service.
    pub backend: String,
    /// A human-readable description.
    pub description: String,
    /// Free-form labels.
    pub metadata: BTreeMap<String, String>,
}

impl ServiceSpec {
    /// Checks every field against its bound.
    pub fn validate(&self) -> Result<(), InvalidField> {
        validate_text("endpoint", &self.endpoint)?;
        validate_text("endpoint_type", &self.endpoint_type)?;
        validate_text("auth_type", &self.auth_type)?;
        validate_text("auth_credentials", &self.auth_credentials)?;
        validate_text("backend", &self.backend)?;
        validate_text("description", &self.description)?;
        validate_metadata("metadata", &self.metadata)
    }
}

/// A stored service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRecord {
    /// Which service this is.
    pub key: ServiceKey,
    /// What was registered; default for a service known only by its nodes.
    pub spec: ServiceSpec,
    /// First registration; `None` for a service known only by its nodes.
    pub registered_at: Option<Millis>,
    /// Last write; `None` for a service known only by its nodes.
    pub updated_at: Option<Millis>,
}

impl ServiceRecord {
    /// The record of a service that is listed because a node of it was
    /// registered, but that was never registered itself.
    pub fn implicit(key: ServiceKey) -> Self {
        Self {
            key,
            spec: ServiceSpec::default(),
            registered_at: None,
            updated_at: None,
        }
    }
}

/// Whether a node takes new calls; separate from its presence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Takes new calls.
    #[default]
    Serving,
    /// Finishes what it has, takes nothing new; stays listed.
    Draining,
}

impl NodeStatus {
    /// Whether this is the default, [`NodeStatus::Serving`] (left out of
    /// stored records, so that a record from before the field existed and
    /// the same node registered again compare equal).
    pub fn is_serving(&self) -> bool {
        *self == NodeStatus::Serving
    }
}

/// Where a node runs: region, zone within it, sub-zone within that.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Locality {
    /// The region, e.g. "eu-west".
    pub region: String,
    /// The zone within the region.
    pub zone: String,
    /// The sub-zone within the zone.
    pub sub_zone: String,
}

impl Locality {
    /// Whether no part is set.
    pub fn is_empty(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.sub_zone.is_empty()
    }
}

/// The largest node weight: a service's weights must sum within 32 bits
/// in xDS, even with thousands of nodes.
pub const MAX_WEIGHT: u32 = 1_000_000;

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// What a node registration says about the node; replaced whole on each
/// registration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeSpec {
    /// The registrant's identity for this life of the node. First, so that
    /// the Redis scripts find it at a fixed place in the stored JSON.
    pub instance_id: String,
    /// The node's addresses, canonical form.
    pub ip: Vec<String>,
    /// The port the node serves on.
    pub port: u32,
    /// Fully qualified domain name.
    pub fqdn: String,
    /// Operating system name and version.
    pub os: String,
    /// The OS type: Linux, Windows, Darwin.
    pub platform_name: String,
    /// Machine architecture.
    pub arch: String,
    /// Logical CPUs.
    pub cpu_count: u32,
    /// Total physical memory in MiB.
    pub memory_mb: u64,
    /// When the node's machine last booted.
    pub last_boot: Option<WallTime>,
    /// Free-form labels.
    pub metadata: BTreeMap<String, String>,
    /// Whether it takes new calls. The fields from here on are left out of
    /// the stored record at their defaults, so records written before they
    /// existed read and compare the same.
    #[serde(skip_serializing_if = "NodeStatus::is_serving")]
    pub status: NodeStatus,
    /// Where it runs.
    #[serde(skip_serializing_if = "Locality::is_empty")]
    pub locality: Locality,
    /// Its share of the service's calls; 0: unset (counted as 1).
    #[serde(skip_serializing_if = "is_zero")]
    pub weight: u32,
}

impl NodeSpec {
    /// Checks every field against its bound and puts the addresses in
    /// canonical form.
    pub fn validate(&mut self) -> Result<(), InvalidField> {
        self.ip = validate_addresses("ip", &self.ip)?;
        validate_text("fqdn", &self.fqdn)?;
        validate_text("os", &self.os)?;
        validate_text("platform_name", &self.platform_name)?;
        validate_text("arch", &self.arch)?;
        validate_text("locality.region", &self.locality.region)?;
        validate_text("locality.zone", &self.locality.zone)?;
        validate_text("locality.sub_zone", &self.locality.sub_zone)?;
        if self.weight > MAX_WEIGHT {
            return Err(InvalidField::new(
                "weight",
                format!("must be at most {MAX_WEIGHT} (got {})", self.weight),
            ));
        }
        validate_metadata("metadata", &self.metadata)
    }
}

/// A stored node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// The service the node belongs to.
    pub key: ServiceKey,
    /// The node's name, unique within its service.
    pub name: String,
    /// What was registered.
    pub spec: NodeSpec,
    /// First registration of this node (kept across re-registrations).
    pub registered_at: Millis,
    /// Last registration.
    pub updated_at: Millis,
    /// When the node expires unless registered again; `None`: never.
    pub expires_at: Option<Millis>,
    /// The identity that registered it, when the registry was protected
    /// (issue 12); `None` for a node registered without auth.
    pub owner: Option<String>,
}

/// Who writes a node when the registry is protected: the authenticated
/// identity's name, and whether it may change nodes others registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The token's or certificate identity's name from the auth file.
    pub name: String,
    /// An admin may change any node; anyone else only the nodes it
    /// registered (and those registered without auth).
    pub admin: bool,
}

impl Actor {
    /// Whether this actor may register again, renew or remove a live node
    /// registered by `owner`.
    pub fn may_change(&self, owner: Option<&str>) -> bool {
        self.admin || owner.is_none_or(|o| o == self.name)
    }
}

impl NodeRecord {
    /// Whether the node's TTL has run out at `now`.
    pub fn is_expired(&self, now: Millis) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
}

/// A request for one page of a name listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// At most this many names.
    pub size: usize,
    /// Start after this name; `None` for the first page.
    pub after: Option<String>,
}

/// One page of a name listing, in name order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// The names on this page.
    pub names: Vec<String>,
    /// The token of the next page; `None` on the last page.
    pub next: Option<String>,
}

impl Page {
    /// Builds a page from up to `size + 1` names in order: the extra one,
    /// if present, only says that another page follows.
    ///
    /// ```
    /// use discovered::model::Page;
    ///
    /// let page = Page::from_lookahead(vec!["a".into(), "b".into(), "c".into()], 2);
    /// assert_eq!(page.names, ["a", "b"]);
    /// assert_eq!(page.next.as_deref(), Some("b"));
    /// ```
    pub fn from_lookahead(mut names: Vec<String>, size: usize) -> Self {
        let next = if names.len() > size {
            names.truncate(size);
            names.last().cloned()
        } else {
            None
        };
        Self { names, next }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_serving_node_without_locality_or_weight_is_stored_as_before() {
        // Records written before these fields existed must compare equal
        // to the same node registered again (no spurious NODE_UPDATED).
        let spec = NodeSpec {
            port: 80,
            ..NodeSpec::default()
        };
        let json = serde_json::to_string(&spec).unwrap();
        for field in ["status", "locality", "weight"] {
            assert!(!json.contains(field), "{field} in {json}");
        }
        let old: NodeSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(old, spec);
        let draining = NodeSpec {
            status: NodeStatus::Draining,
            locality: Locality {
                zone: "z".into(),
                ..Locality::default()
            },
            weight: 3,
            ..spec
        };
        let json = serde_json::to_string(&draining).unwrap();
        assert!(json.contains(r#""status":"draining""#), "{json}");
        assert_eq!(serde_json::from_str::<NodeSpec>(&json).unwrap(), draining);
    }

    #[test]
    fn names_follow_the_rules() {
        for good in ["a", "payments", "pay-1.eu_west", &"x".repeat(128)] {
            assert!(validate_name("service_name", good).is_ok(), "{good}");
        }
        for bad in ["", "a:b", "a*", "{x}", "a b", "ä", &"x".repeat(129), "a/b"] {
            let err = validate_name("node_name", bad).unwrap_err();
            assert_eq!(err.field, "node_name", "{bad}");
        }
    }

    #[test]
    fn addresses_are_canonical() {
        let ips = validate_addresses("ip", &["10.0.0.1".into(), "0:0:0:0:0:0:0:1".into()]).unwrap();
        assert_eq!(ips, vec!["10.0.0.1", "::1"]);
        assert!(validate_addresses("ip", &["10.0.0.256".into()]).is_err());
        assert!(validate_addresses("ip", &vec!["::1".to_string(); 17]).is_err());
    }

    #[test]
    fn page_lookahead() {
        let p = Page::from_lookahead(vec!["a".into(), "b".into(), "c".into()], 2);
        assert_eq!(p.names, vec!["a", "b"]);
        assert_eq!(p.next.as_deref(), Some("b"));
        let p = Page::from_lookahead(vec!["a".into()], 2);
        assert_eq!(p.next, None);
    }
}
