//! The `discovered.v1.Discovery` service: requests in, store calls out.
//!
//! Every handler validates its request, calls the [`Registry`], and turns
//! the result into the response message or a `Status`. No Redis here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::status::{group_not_found, node_not_found, other_instance, service_not_found};
use super::watch::{self, Filter, WatchSlots, WatchStream};
use crate::model::{
    InvalidField, NodeSpec, PageRequest, ServiceKey, ServiceSpec, validate_name,
    validate_page_size, validate_ttl,
};
use crate::proto::timestamp;
use crate::proto::v1 as pb;
use crate::proto::v1::discovery_server::Discovery;
use crate::store::{NodeRegistration, Registry, Removal, Renewal};

/// Server-wide defaults that requests may override.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// The group used when a request leaves `service_group` empty.
    pub service_group: String,
    /// The node TTL used when a request leaves `ttl_seconds` out.
    pub node_ttl: Option<Duration>,
    /// Whether to fill in what the server can know about a node (its
    /// address) when a request leaves `auto` out.
    pub auto: bool,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            service_group: "default".into(),
            node_ttl: None,
            auto: true,
        }
    }
}

/// The registry API over one [`Registry`].
pub struct DiscoveryService {
    registry: Arc<dyn Registry>,
    defaults: Defaults,
    /// Cancelled when the server begins to shut down: watch streams end.
    shutdown: CancellationToken,
    /// The open watch streams, against `--max-watch-streams`.
    watch_slots: WatchSlots,
}

impl DiscoveryService {
    /// The service over `registry`; its watch streams end with UNAVAILABLE
    /// when `shutdown` is cancelled.
    pub fn new(
        registry: Arc<dyn Registry>,
        defaults: Defaults,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            registry,
            defaults,
            shutdown,
            watch_slots: WatchSlots::new(
                watch::DEFAULT_MAX_WATCH_STREAMS,
                watch::DEFAULT_WATCH_BUFFER_BYTES,
            ),
        }
    }

    /// Allows at most `max` open watch streams (a new one beyond them is
    /// refused with RESOURCE_EXHAUSTED), each holding at most
    /// `buffer_bytes` of events its client has not taken.
    pub fn with_watch_limits(self, max: usize, buffer_bytes: usize) -> Self {
        Self {
            watch_slots: WatchSlots::new(max, buffer_bytes),
            ..self
        }
    }

    fn key(&self, group: &str, service: &str) -> Result<ServiceKey, Status> {
        Ok(ServiceKey::new(
            group_or_default(group, &self.defaults.service_group)?,
            name("service_name", service)?,
        ))
    }

    fn page(size: u32, token: String) -> Result<PageRequest, Status> {
        let size = validate_page_size("page_size", size)?;
        let after = if token.is_empty() {
            None
        } else {
            validate_name("page_token", &token)?;
            Some(token)
        };
        Ok(PageRequest { size, after })
    }
}

/// The TTL a registration asks for: its own, else the server's default;
/// zero or negative means none.
fn ttl(requested: Option<i64>, default: Option<Duration>) -> Result<Option<Duration>, Status> {
    match requested {
        Some(s) => Ok(validate_ttl("ttl_seconds", s)?),
        None => Ok(default),
    }
}

/// A group name, or the server's default when left empty.
fn group_or_default(value: &str, default: &str) -> Result<String, InvalidField> {
    if value.is_empty() {
        return Ok(default.to_string());
    }
    name("service_group", value)
}

/// A required name field.
fn name(field: &str, value: &str) -> Result<String, InvalidField> {
    validate_name(field, value)?;
    Ok(value.to_string())
}

/// An optional name field: empty means not given.
fn optional_name<'a>(field: &str, value: &'a str) -> Result<Option<&'a str>, Status> {
    if value.is_empty() {
        return Ok(None);
    }
    validate_name(field, value)?;
    Ok(Some(value))
}

/// The caller's address as a node address (IPv4-mapped IPv6 unwrapped).
fn peer_ip(peer: Option<SocketAddr>) -> Option<String> {
    peer.map(|a| a.ip().to_canonical().to_string())
}

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type WatchServiceStream = WatchStream;

    async fn watch_service(
        &self,
        request: Request<pb::WatchServiceRequest>,
    ) -> Result<Response<Self::WatchServiceStream>, Status> {
        let r = request.into_inner();
        let group = group_or_default(&r.service_group, &self.defaults.service_group)?;
        let service = if r.service_name.is_empty() {
            None
        } else {
            Some(name("service_name", &r.service_name)?)
        };
        let slot = self.watch_slots.acquire()?;
        Ok(Response::new(watch::start(
            self.registry.clone(),
            Filter { group, service },
            r.send_initial.unwrap_or(true),
            self.shutdown.clone(),
            slot,
        )))
    }

    async fn register_service(
        &self,
        request: Request<pb::RegisterServiceRequest>,
    ) -> Result<Response<pb::Service>, Status> {
        let r = request.into_inner();
        let key = self.key(&r.service_group, &r.service_name)?;
        let spec = ServiceSpec::try_from(r)?;
        let record = self.registry.register_service(key, spec).await?;
        Ok(Response::new(record.into()))
    }

    async fn register_node(
        &self,
        request: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let peer = request.remote_addr();
        let r = request.into_inner();
        let key = self.key(&r.service_group, &r.service_name)?;
        let node = name("node_name", &r.node_name)?;
        let ttl = ttl(r.ttl_seconds, self.defaults.node_ttl)?;
        let auto = r.auto.unwrap_or(self.defaults.auto);
        let mut spec = NodeSpec::try_from(r)?;
        if auto && spec.ip.is_empty() {
            spec.ip.extend(peer_ip(peer));
        }
        let keep_instance = spec.instance_id.is_empty();
        if keep_instance {
            spec.instance_id = crate::model::new_instance_id();
        }
        let record = self
            .registry
            .register_node(NodeRegistration {
                key,
                name: node,
                spec,
                ttl,
                keep_instance,
            })
            .await?;
        Ok(Response::new(record.into()))
    }

    async fn get_service(
        &self,
        request: Request<pb::GetServiceRequest>,
    ) -> Result<Response<pb::Service>, Status> {
        let r = request.into_inner();
        let key = self.key(&r.service_group, &r.service_name)?;
        let Some(mut record) = self.registry.get_service(&key).await? else {
            return Err(service_not_found(&key));
        };
        if r.reveal_credentials {
            // Opened only here: a value the server cannot open fails the
            // reveal alone, with a message naming the service, not the value.
            record.spec.auth_credentials = self
                .registry
                .reveal_credentials(&record)
                .map_err(|e| Status::failed_precondition(e.to_string()))?;
        }
        Ok(Response::new(pb::Service::from_record(
            record,
            r.reveal_credentials,
        )))
    }

    async fn get_nodes(
        &self,
        request: Request<pb::GetNodesRequest>,
    ) -> Result<Response<pb::GetNodesResponse>, Status> {
        let r = request.into_inner();
        let key = self.key(&r.service_group, &r.service_name)?;
        let nodes = self.registry.get_nodes(&key).await?;
        Ok(Response::new(pb::GetNodesResponse {
            nodes: nodes.into_iter().map(pb::Node::from).collect(),
        }))
    }

    async fn list_services(
        &self,
        request: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let r = request.into_inner();
        let group = group_or_default(&r.service_group, &self.defaults.service_group)?;
        let page = Self::page(r.page_size, r.page_token)?;
        let page = self.registry.list_services(&group, page).await?;
        Ok(Response::new(pb::ListServicesResponse {
            service_names: page.names,
            next_page_token: page.next.unwrap_or_default(),
        }))
    }

    async fn list_service_groups(
        &self,
        request: Request<pb::ListServiceGroupsRequest>,
    ) -> Result<Response<pb::ListServiceGroupsResponse>, Status> {
        let r = request.into_inner();
        let page = Self::page(r.page_size, r.page_token)?;
        let page = self.registry.list_groups(page).await?;
        Ok(Response::new(pb::ListServiceGroupsResponse {
            service_groups: page.names,
            next_page_token: page.next.unwrap_or_default(),
        }))
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        let r = request.into_inner();
        let key = self.key(&r.service_group, &r.service_name)?;
        let node = name("node_name", &r.node_name)?;
        let instance = optional_name("instance_id", &r.instance_id)?;
        match self.registry.remove_node(&key, &node, instance).await? {
            Removal::Removed => Ok(Response::new(pb::RemoveNodeResponse { removed: true })),
            Removal::Missing if r.allow_missing => {
                Ok(Response::new(pb::RemoveNodeResponse { removed: false }))
            }
            Removal::Missing => Err(node_not_found(&key, &node)),
            Removal::OtherInstance(owner) => Err(other_instance(&node, &owner)),
        }
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let r = request.into_inner();
        let key = self.key(&r.service_group, &r.service_name)?;
        let node = name("node_name", &r.node_name)?;
        let ttl = ttl(r.ttl_seconds, self.defaults.node_ttl)?;
        let instance = optional_name("instance_id", &r.instance_id)?;
        match self.registry.heartbeat(&key, &node, ttl, instance).await? {
            Renewal::Renewed(expires_at) => Ok(Response::new(pb::HeartbeatResponse {
                expires_at: expires_at.map(timestamp),
            })),
            Renewal::Missing => Err(node_not_found(&key, &node)),
            Renewal::OtherInstance(owner) => Err(other_instance(&node, &owner)),
        }
    }

    async fn remove_service(
        &self,
        request: Request<pb::RemoveServiceRequest>,
    ) -> Result<Response<pb::RemoveServiceResponse>, Status> {
        let r = request.into_inner();
        let key = self.key(&r.service_group, &r.service_name)?;
        match self.registry.remove_service(&key).await? {
            Some(nodes_removed) => Ok(Response::new(pb::RemoveServiceResponse {
                removed: true,
                nodes_removed,
            })),
            None if r.allow_missing => Ok(Response::new(pb::RemoveServiceResponse::default())),
            None => Err(service_not_found(&key)),
        }
    }

    async fn remove_service_group(
        &self,
        request: Request<pb::RemoveServiceGroupRequest>,
    ) -> Result<Response<pb::RemoveServiceGroupResponse>, Status> {
        let r = request.into_inner();
        // Never defaulted: leaving the field out must not wipe the default
        // group.
        if r.service_group.is_empty() {
            return Err(Status::invalid_argument(
                "service_group: required for RemoveServiceGroup (it is never defaulted)",
            ));
        }
        let group = name("service_group", &r.service_group)?;
        match self.registry.remove_group(&group).await? {
            Some(services_removed) => Ok(Response::new(pb::RemoveServiceGroupResponse {
                removed: true,
                services_removed,
            })),
            None if r.allow_missing => Ok(Response::new(pb::RemoveServiceGroupResponse::default())),
            None => Err(group_not_found(&group)),
        }
    }
}
