//! The `discovered.v1.Discovery` service: requests in, store calls out.
//!
//! Every handler validates its request, calls the [`Registry`], and turns
//! the result into the response message or a `Status`. No Redis here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::audit::{Audit, what};
use super::auth::caller;
use super::read_cache::{Answer, DEFAULT_READ_CACHE_BYTES, ReadCache};
use super::reply::EncodedReply;
use super::status::{group_not_found, node_not_found, other_instance, service_not_found};
use super::watch::{self, Filter, WatchSlots, WatchStream};
use crate::auth::{Action, Auth, Caller};
use crate::model::{
    InvalidField, MAX_PAGE_SIZE, NodeSpec, Page, PageRequest, ServiceKey, ServiceSpec,
    validate_name, validate_page_size, validate_ttl,
};
use crate::proto::timestamp;
use crate::proto::v1 as pb;
use crate::proto::v1::discovery_server::Discovery;
use crate::store::{NodeRegistration, Registry, Removal, Renewal, StoreError};

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
    /// Each service's encoded GetNodes (and GetService) answer, while
    /// nothing changed it.
    cache: Arc<ReadCache>,
    /// Whether calls must come with a [`Caller`] (the server has an auth
    /// file). The auth layer refuses calls without one before they get
    /// here; this makes sure a handler never serves one anyway.
    auth: Option<Arc<Auth>>,
}

impl DiscoveryService {
    /// The service over `registry`; its watch streams end with UNAVAILABLE
    /// when `shutdown` is cancelled.
    pub fn new(
        registry: Arc<dyn Registry>,
        defaults: Defaults,
        shutdown: CancellationToken,
    ) -> Self {
        let cache = Arc::new(ReadCache::new(DEFAULT_READ_CACHE_BYTES));
        cache.follow(&registry);
        Self {
            registry,
            defaults,
            shutdown,
            watch_slots: WatchSlots::new(watch::DEFAULT_MAX_WATCH_STREAMS),
            cache,
            auth: None,
        }
    }

    /// Caches at most `bytes` of GetNodes and GetService answers
    /// (`--read-cache-bytes`; 0: none).
    pub fn with_read_cache(self, bytes: usize) -> Self {
        self.cache.set_budget(bytes);
        self
    }

    /// Requires every call to come with a [`Caller`] and checks what it
    /// may do (`true` when the server has an auth file).
    pub fn with_auth(self, auth: Option<Arc<Auth>>) -> Self {
        Self { auth, ..self }
    }

    /// Whether `caller` may do `action` on `group` (and `service`; `None`
    /// for the whole group). Without an auth file everyone may do
    /// everything.
    fn allow(
        &self,
        caller: Option<&Caller>,
        action: Action,
        group: &str,
        service: Option<&str>,
    ) -> Result<(), Status> {
        match caller {
            Some(c) => Ok(c.authorize(action, group, service)?),
            None if self.auth.is_some() => Err(Status::unauthenticated("no credentials")),
            None => Ok(()),
        }
    }

    /// Like [`DiscoveryService::allow`] for one service.
    fn allow_key(
        &self,
        caller: Option<&Caller>,
        action: Action,
        key: &ServiceKey,
    ) -> Result<(), Status> {
        self.allow(caller, action, &key.group, Some(&key.service))
    }

    /// Allows at most `max` open watch streams (a new one beyond them is
    /// refused with RESOURCE_EXHAUSTED).
    pub fn with_max_watch_streams(self, max: usize) -> Self {
        Self {
            watch_slots: WatchSlots::new(max),
            ..self
        }
    }

    /// The count of open streams this service takes its places from, to
    /// share with the other streaming services of the server (xDS).
    pub fn watch_slots(&self) -> WatchSlots {
        self.watch_slots.clone()
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
        mut request: Request<pb::WatchServiceRequest>,
    ) -> Result<Response<Self::WatchServiceStream>, Status> {
        let caller = caller(&mut request);
        let r = request.into_inner();
        let group = group_or_default(&r.service_group, &self.defaults.service_group)?;
        let service = if r.service_name.is_empty() {
            None
        } else {
            Some(name("service_name", &r.service_name)?)
        };
        self.allow(
            caller.as_ref(),
            Action::WatchService,
            &group,
            service.as_deref(),
        )?;
        let slot = self.watch_slots.acquire()?;
        let access = match (&self.auth, caller) {
            (Some(auth), Some(caller)) => Some(watch::Access::new(auth.clone(), caller)),
            _ => None,
        };
        Ok(Response::new(watch::start(
            self.registry.clone(),
            Filter { group, service },
            r.send_initial.unwrap_or(true),
            self.shutdown.clone(),
            slot,
            access,
        )))
    }

    async fn register_service(
        &self,
        mut request: Request<pb::RegisterServiceRequest>,
    ) -> Result<Response<pb::Service>, Status> {
        let caller = caller(&mut request);
        let audit = Audit::new("RegisterService", caller.as_ref(), request.remote_addr());
        let r = request.into_inner();
        let key = self.key(&r.service_group, &r.service_name)?;
        let target = what(&key.group, Some(&key.service), None);
        audit.check(
            &target,
            self.allow_key(caller.as_ref(), Action::RegisterService, &key),
        )?;
        let spec = ServiceSpec::try_from(r)?;
        let cached = key.clone();
        let result = self.registry.register_service(key, spec).await;
        // Even an identical record: the answer shows the new updated_at.
        self.cache.invalidate(&cached);
        let result = result.map_err(Status::from);
        audit.record(&target, &result);
        Ok(Response::new(result?.into()))
    }

    async fn register_node(
        &self,
        mut request: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let peer = request.remote_addr();
        let caller = caller(&mut request);
        let audit = Audit::new("RegisterNode", caller.as_ref(), request.remote_addr());
        let r = request.into_inner();
        let key = self.key(&r.service_group, &r.service_name)?;
        let node = name("node_name", &r.node_name)?;
        let target = what(&key.group, Some(&key.service), Some(&node));
        audit.check(
            &target,
            self.allow_key(caller.as_ref(), Action::RegisterNode, &key),
        )?;
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
        let cached = key.clone();
        let result = self
            .registry
            .register_node(NodeRegistration {
                key,
                name: node,
                spec,
                ttl,
                keep_instance,
                actor: caller.as_ref().map(Caller::actor),
            })
            .await
            .map_err(Status::from);
        // Even a renewal: the answer shows the new deadline.
        self.cache.invalidate(&cached);
        // Registering the same again only renews the node, like a
        // heartbeat: no audit line (nodes that re-register to stay listed
        // would fill the log).
        if result.as_ref().map_or(true, |r| r.changed) {
            audit.record(&target, &result);
        }
        Ok(Response::new(result?.record.into()))
    }

    async fn get_service(
        &self,
        mut request: Request<pb::GetServiceRequest>,
    ) -> Result<Response<pb::Service>, Status> {
        let caller = caller(&mut request);
        let r = request.into_inner();
        let key = self.key(&r.service_group, &r.service_name)?;
        let action = if r.reveal_credentials {
            Action::RevealCredentials
        } else {
            Action::GetService
        };
        self.allow_key(caller.as_ref(), action, &key)?;
        if r.reveal_credentials {
            // Never cached: opened only here, so a value the server cannot
            // open fails the reveal alone, with a message naming the
            // service, not the value.
            let Some(mut record) = self.registry.get_service(&key).await? else {
                return Err(service_not_found(&key));
            };
            record.spec.auth_credentials = self
                .registry
                .reveal_credentials(&record)
                .map_err(|e| Status::failed_precondition(e.to_string()))?;
            return Ok(Response::new(pb::Service::from_record(record, true)));
        }
        // The cache holds the encoded answer; this RPC's response type is
        // shared with ListServices and WatchEvent, so it is decoded again
        // (a few strings) rather than served as bytes: what the cache
        // saves is the two Redis round trips.
        let feed = self.registry.feed();
        if let Some(answer) = self.cache.get(&key, Answer::Service, feed) {
            let service = pb::Service::decode(answer)
                .map_err(|e| Status::internal(format!("a cached answer does not decode: {e}")))?;
            return Ok(Response::new(service));
        }
        let ticket = self.cache.ticket(&key, feed);
        let Some(record) = self.registry.get_service(&key).await? else {
            return Err(service_not_found(&key));
        };
        // Only a registered service's answer is kept (see read_cache).
        let registered = record.registered_at.is_some();
        let service = pb::Service::from_record(record, false);
        if let Some(ticket) = ticket.filter(|_| registered) {
            let answer = service.encode_to_vec().into();
            let feed = self.registry.feed();
            self.cache
                .put(&key, Answer::Service, ticket, feed, answer, None);
        }
        Ok(Response::new(service))
    }

    async fn get_nodes(
        &self,
        mut request: Request<pb::GetNodesRequest>,
    ) -> Result<Response<EncodedReply>, Status> {
        let caller = caller(&mut request);
        let r = request.into_inner();
        let key = self.key(&r.service_group, &r.service_name)?;
        self.allow_key(caller.as_ref(), Action::GetNodes, &key)?;
        let feed = self.registry.feed();
        if let Some(answer) = self.cache.get(&key, Answer::Nodes, feed) {
            return Ok(Response::new(EncodedReply(answer)));
        }
        let ticket = self.cache.ticket(&key, feed);
        let nodes = self.registry.get_nodes(&key).await?;
        let valid_until = nodes.iter().filter_map(|n| n.expires_at).min();
        let reply = EncodedReply::of(&pb::GetNodesResponse {
            nodes: nodes.into_iter().map(pb::Node::from).collect(),
        });
        if let Some(ticket) = ticket {
            let feed = self.registry.feed();
            self.cache.put(
                &key,
                Answer::Nodes,
                ticket,
                feed,
                reply.0.clone(),
                valid_until,
            );
        }
        Ok(Response::new(reply))
    }

    async fn list_services(
        &self,
        mut request: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let caller = caller(&mut request);
        let r = request.into_inner();
        let group = group_or_default(&r.service_group, &self.defaults.service_group)?;
        self.allow(caller.as_ref(), Action::ListServices, &group, None)?;
        let page = Self::page(r.page_size, r.page_token)?;
        let page = match caller.filter(|c| c.scope.services.is_some()) {
            // Only what the scope covers (see `scoped_page`).
            Some(c) => {
                let registry = &self.registry;
                let group = group.as_str();
                scoped_page(
                    page,
                    |p| registry.list_services(group, p),
                    |name| c.lists(Some(group), name),
                )
                .await?
            }
            None => self.registry.list_services(&group, page).await?,
        };
        Ok(Response::new(pb::ListServicesResponse {
            service_names: page.names,
            next_page_token: page.next.unwrap_or_default(),
        }))
    }

    async fn list_service_groups(
        &self,
        mut request: Request<pb::ListServiceGroupsRequest>,
    ) -> Result<Response<pb::ListServiceGroupsResponse>, Status> {
        let caller = caller(&mut request);
        let r = request.into_inner();
        let group = &self.defaults.service_group;
        self.allow(caller.as_ref(), Action::ListServiceGroups, group, None)?;
        let page = Self::page(r.page_size, r.page_token)?;
        let page = match caller.filter(|c| c.scope.groups.is_some()) {
            Some(c) => {
                let registry = &self.registry;
                scoped_page(
                    page,
                    |p| registry.list_groups(p),
                    |name| c.lists(None, name),
                )
                .await?
            }
            None => self.registry.list_groups(page).await?,
        };
        Ok(Response::new(pb::ListServiceGroupsResponse {
            service_groups: page.names,
            next_page_token: page.next.unwrap_or_default(),
        }))
    }

    async fn remove_node(
        &self,
        mut request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        let caller = caller(&mut request);
        let audit = Audit::new("RemoveNode", caller.as_ref(), request.remote_addr());
        let r = request.into_inner();
        let key = self.key(&r.service_group, &r.service_name)?;
        let node = name("node_name", &r.node_name)?;
        let target = what(&key.group, Some(&key.service), Some(&node));
        audit.check(
            &target,
            self.allow_key(caller.as_ref(), Action::RemoveNode, &key),
        )?;
        let instance = optional_name("instance_id", &r.instance_id)?;
        let actor = caller.as_ref().map(Caller::actor);
        let removal = self
            .registry
            .remove_node(&key, &node, instance, actor.as_ref())
            .await;
        self.cache.invalidate(&key);
        let result = removal
            .map_err(Status::from)
            .and_then(|removal| match removal {
                Removal::Removed => Ok(pb::RemoveNodeResponse { removed: true }),
                Removal::Missing if r.allow_missing => {
                    Ok(pb::RemoveNodeResponse { removed: false })
                }
                Removal::Missing => Err(node_not_found(&key, &node)),
                Removal::OtherInstance(owner) => Err(other_instance(&node, &owner)),
            });
        audit.record(&target, &result);
        result.map(Response::new)
    }

    async fn heartbeat(
        &self,
        mut request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let caller = caller(&mut request);
        let r = request.into_inner();
        let key = self.key(&r.service_group, &r.service_name)?;
        self.allow_key(caller.as_ref(), Action::Heartbeat, &key)?;
        let node = name("node_name", &r.node_name)?;
        let ttl = ttl(r.ttl_seconds, self.defaults.node_ttl)?;
        let instance = optional_name("instance_id", &r.instance_id)?;
        let renewal = self
            .registry
            .heartbeat(
                &key,
                &node,
                ttl,
                instance,
                caller.as_ref().map(Caller::actor).as_ref(),
            )
            .await;
        // The answer shows the node's deadline.
        self.cache.invalidate(&key);
        match renewal? {
            Renewal::Renewed(expires_at) => Ok(Response::new(pb::HeartbeatResponse {
                expires_at: expires_at.map(timestamp),
            })),
            Renewal::Missing => Err(node_not_found(&key, &node)),
            Renewal::OtherInstance(owner) => Err(other_instance(&node, &owner)),
        }
    }

    async fn remove_service(
        &self,
        mut request: Request<pb::RemoveServiceRequest>,
    ) -> Result<Response<pb::RemoveServiceResponse>, Status> {
        let caller = caller(&mut request);
        let audit = Audit::new("RemoveService", caller.as_ref(), request.remote_addr());
        let r = request.into_inner();
        let key = self.key(&r.service_group, &r.service_name)?;
        let target = what(&key.group, Some(&key.service), None);
        audit.check(
            &target,
            self.allow_key(caller.as_ref(), Action::RemoveService, &key),
        )?;
        let removal = self.registry.remove_service(&key).await;
        self.cache.invalidate(&key);
        let result = removal
            .map_err(Status::from)
            .and_then(|removed| match removed {
                Some(nodes_removed) => Ok(pb::RemoveServiceResponse {
                    removed: true,
                    nodes_removed,
                }),
                None if r.allow_missing => Ok(pb::RemoveServiceResponse::default()),
                None => Err(service_not_found(&key)),
            });
        audit.record(&target, &result);
        result.map(Response::new)
    }

    async fn remove_service_group(
        &self,
        mut request: Request<pb::RemoveServiceGroupRequest>,
    ) -> Result<Response<pb::RemoveServiceGroupResponse>, Status> {
        let caller = caller(&mut request);
        let audit = Audit::new("RemoveServiceGroup", caller.as_ref(), request.remote_addr());
        let r = request.into_inner();
        // Never defaulted: leaving the field out must not wipe the default
        // group.
        if r.service_group.is_empty() {
            return Err(Status::invalid_argument(
                "service_group: required for RemoveServiceGroup (it is never defaulted)",
            ));
        }
        let group = name("service_group", &r.service_group)?;
        audit.check(
            &group,
            self.allow(caller.as_ref(), Action::RemoveServiceGroup, &group, None),
        )?;
        let removal = self.registry.remove_group(&group).await;
        self.cache.invalidate_group(&group);
        let result = removal
            .map_err(Status::from)
            .and_then(|removed| match removed {
                Some(services_removed) => Ok(pb::RemoveServiceGroupResponse {
                    removed: true,
                    services_removed,
                }),
                None if r.allow_missing => Ok(pb::RemoveServiceGroupResponse::default()),
                None => Err(group_not_found(&group)),
            });
        audit.record(&group, &result);
        result.map(Response::new)
    }
}

/// One page of a listing that shows only the names `keep` allows (a scoped
/// caller's groups or services): pages through the registry's own listing
/// (`fetch`) from `want.after` until it has a page of kept names or the
/// listing ends. The next-page token is the last name shown, so it never
/// names something the scope hides.
///
/// The whole listing may be read for one page when the scope covers few of
/// many names; scoped callers are agents and tools, whose listings are rare.
async fn scoped_page<F, Fut>(
    want: PageRequest,
    mut fetch: F,
    keep: impl Fn(&str) -> bool,
) -> Result<Page, StoreError>
where
    F: FnMut(PageRequest) -> Fut,
    Fut: std::future::Future<Output = Result<Page, StoreError>>,
{
    let mut kept = Vec::new();
    let mut after = want.after;
    loop {
        let page = fetch(PageRequest {
            size: MAX_PAGE_SIZE,
            after: after.take(),
        })
        .await?;
        kept.extend(page.names.into_iter().filter(|n| keep(n)));
        // One more than asked tells whether there is a next page.
        if kept.len() > want.size {
            break;
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let next = if kept.len() > want.size {
        kept.truncate(want.size);
        kept.last().cloned()
    } else {
        None
    };
    Ok(Page { names: kept, next })
}
