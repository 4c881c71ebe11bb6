//! One ADS stream (state of the world): what the client subscribed to per
//! type, what it holds, and when to answer.
//!
//! The rules (Envoy's xDS protocol, as gRPC clients follow it):
//! - every request names all the resources of its type the client wants;
//!   the first request of each type on a stream is always answered;
//! - a response of LDS or CDS holds every subscribed resource (one left
//!   out would be deleted), one of RDS or EDS only those that changed;
//! - nothing is sent that the client already holds, so an ACK gets no
//!   answer, and nothing it rejected (a NACK: `error_detail` set) is sent
//!   again until the registry gives something else to send;
//! - a request whose nonce is not the last one sent for its type answers
//!   an older response: it is ignored, the client's next request repeats
//!   the full subscription anyway.
//!
//! Every well-formed service name is answered, known or not (an unknown
//! service has no endpoints): a client waits 15 s for a resource that
//! never comes before it gives up, so answering "nothing here" must be
//! prompt. Names that are malformed or that the caller may not read are
//! left out, with a `resource_errors` entry saying why.
//!
//! Endpoint changes come from the same change feed as WatchService: a
//! change of a service the stream subscribed to makes its assignment
//! anew, and it goes out if it differs from what the client holds.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{ControlPlane, Node};
use envoy_types::pb::envoy::service::discovery::v3::{
    DiscoveryRequest, DiscoveryResponse, ResourceError, ResourceName,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc;
use tokio::sync::{broadcast, mpsc};
use tonic::{Code, Status, Streaming};

use super::Shared;
use super::assignments::Changed;
use super::names::{listener_service, resource_name, service};
use super::resources::{self, Kind, hash_of};
use crate::auth::{Action, Caller};
use crate::metrics::{OpenStream, metrics};
use crate::model::ServiceKey;
use crate::server::WatchSlot;

/// How long before assignments the store could not read are tried again
/// (Redis down: its RESYNC on return usually comes first).
const RETRY: Duration = Duration::from_secs(1);

/// How much of a NACK's message, and how many of the rejected response's
/// resource names, the log shows: the client writes the message.
const NACK_LOGGED_CHARS: usize = 500;
const NACK_LOGGED_NAMES: usize = 20;

/// A response on its way to the client, or the status ending the stream.
pub type Outgoing = Result<DiscoveryResponse, Status>;

/// One type's subscription on one stream.
#[derive(Debug, Default)]
struct Subscription {
    /// The names the client asked for last.
    names: BTreeSet<String>,
    /// What the client holds: each resource's hash as last sent.
    sent: HashMap<String, u64>,
    /// Names already refused (a `resource_errors` entry): said once.
    refused: HashSet<String>,
    /// The nonce of the last response of this type; `None` before the
    /// first.
    nonce: Option<String>,
    /// How many responses of this type went out (the version's counter).
    responses: u64,
    /// What the last response held, by name and hash (for the log of a
    /// NACK).
    last: HashMap<String, u64>,
    /// The nonce of the last response the client rejected.
    nacked: Option<String>,
}

/// Why a name gets no resource.
enum Refusal {
    /// Not a name we serve, or not one the caller may read: tell it.
    Told(Code, String),
    /// The store did not answer: try again later.
    Unavailable,
}

/// A stream's state; [`AdsStream::run`] drives it.
pub struct AdsStream {
    shared: Arc<Shared>,
    caller: Option<Caller>,
    /// The client's identity from its first request, for logs.
    node: Option<Node>,
    subs: [Subscription; 4],
    /// Nonces are unique across types on the stream.
    nonces: u64,
    /// Endpoint names whose assignment could not be read, to try again.
    retry: BTreeSet<String>,
    out: mpsc::Sender<Outgoing>,
    _slot: WatchSlot,
    _open: OpenStream,
}

/// The client went away: nothing more to send.
struct Gone;

impl AdsStream {
    /// A stream for `caller` (`None` without auth), answering on `out`;
    /// `slot` is its place among the server's open streams.
    pub fn new(
        shared: Arc<Shared>,
        caller: Option<Caller>,
        out: mpsc::Sender<Outgoing>,
        slot: WatchSlot,
    ) -> Self {
        Self {
            shared,
            caller,
            node: None,
            subs: Default::default(),
            nonces: 0,
            retry: BTreeSet::new(),
            out,
            _slot: slot,
            _open: OpenStream::new(&metrics().xds_streams),
        }
    }

    /// Answers the client's requests and pushes changes until the client
    /// leaves, the server stops (UNAVAILABLE) or a reload of the auth file
    /// takes the caller's access away.
    pub async fn run(
        mut self,
        mut requests: Streaming<DiscoveryRequest>,
        mut changes: broadcast::Receiver<Changed>,
    ) {
        let stopping = self.shared.stopping.clone();
        let mut reloads = self.shared.auth.as_ref().map(|a| a.reloads());
        let retry = tokio::time::sleep(RETRY);
        tokio::pin!(retry);
        let ended = loop {
            let retrying = !self.retry.is_empty();
            let mut retried = false;
            let step = tokio::select! {
                () = stopping.cancelled() => {
                    break Some(Status::unavailable("the server is shutting down; reconnect to another"));
                }
                () = self.out.closed() => break None,
                request = requests.message() => match request {
                    Ok(Some(request)) => self.on_request(request).await,
                    // The client closed its side.
                    Ok(None) => break None,
                    // A request that could not be read (too large, say):
                    // the client learns why, instead of a bare end.
                    Err(status) => break Some(status),
                },
                event = changes.recv() => {
                    let mut dirty = BTreeSet::new();
                    self.on_change(event, &mut dirty);
                    // Take what else is waiting: one push for a burst.
                    loop {
                        let event = match changes.try_recv() {
                            Ok(event) => Ok(event),
                            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                                Err(broadcast::error::RecvError::Lagged(n))
                            }
                            Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed) => break,
                        };
                        self.on_change(event, &mut dirty);
                    }
                    self.push_endpoints(dirty).await
                }
                () = &mut retry, if retrying => {
                    retried = true;
                    let names = std::mem::take(&mut self.retry);
                    self.push_endpoints(names).await
                }
                Some(()) = reloaded(&mut reloads) => match self.recheck_access() {
                    Ok(()) => self.after_reload().await,
                    Err(status) => break Some(status),
                },
            };
            if step.is_err() {
                break None;
            }
            // Names to try again: a new wait, unless one is under way (a
            // retry that failed again starts another).
            if !self.retry.is_empty() && (!retrying || retried) {
                retry.as_mut().reset(tokio::time::Instant::now() + RETRY);
            }
        };
        if let Some(status) = ended {
            tracing::debug!(node = ?self.node_id(), status = %status.message(), "ADS stream ends");
            let _ = self.out.send(Err(status)).await;
        }
    }

    fn node_id(&self) -> &str {
        self.node.as_ref().map_or("", |n| n.id.as_str())
    }

    async fn on_request(&mut self, request: DiscoveryRequest) -> Result<(), Gone> {
        if self.node.is_none() {
            // Only the first request is sure to carry it.
            self.node = request.node.clone();
            let caller = self.caller.as_ref().map_or("", |c| c.name.as_str());
            tracing::debug!(node = ?self.node_id(), %caller, "ADS stream opened");
        }
        let Some(kind) = Kind::from_type_url(&request.type_url) else {
            tracing::debug!(node = ?self.node_id(), type_url = ?request.type_url, "ADS request for a type we do not serve: ignored");
            return Ok(());
        };
        let sub = &mut self.subs[kind.index()];
        let answers_last = sub.nonce.as_deref() == Some(request.response_nonce.as_str());
        if !request.response_nonce.is_empty() && !answers_last && sub.nonce.is_some() {
            // About an older response; a newer one is on its way to the
            // client, whose answer to it will say everything again.
            tracing::debug!(node = ?self.node_id(), kind = kind.short(), nonce = ?request.response_nonce, "stale nonce: ignored");
            return Ok(());
        }
        let first = sub.nonce.is_none();
        if let (true, Some(error)) = (answers_last, &request.error_detail)
            && sub.nacked.as_ref() != sub.nonce.as_ref()
        {
            // Once per response: a client repeating its NACK is not logged
            // or counted again. What was sent stays recorded as sent: the
            // same content is never sent again (a client that rejects it
            // would reject it again, in a loop), only something new.
            sub.nacked = sub.nonce.clone();
            metrics().xds_nacks.with_label_values(&[kind.short()]).inc();
            let message: String = error.message.chars().take(NACK_LOGGED_CHARS).collect();
            let resources: Vec<&String> = sub.last.keys().take(NACK_LOGGED_NAMES).collect();
            tracing::warn!(
                node = ?self.node.as_ref().map_or("", |n| n.id.as_str()),
                kind = kind.short(),
                version = ?request.version_info,
                ?resources,
                error = ?message,
                "an xDS client rejected our configuration (NACK); it keeps its previous one, and this one is not sent again"
            );
        }
        let names: BTreeSet<String> = request.resource_names.into_iter().collect();
        if !first && names == sub.names {
            // An ACK, a NACK, or the same subscription again: nothing the
            // client asks for is new, and changes come as pushes.
            return Ok(());
        }
        if !kind.is_whole_set() {
            // Forgotten, so that subscribing again sends it again. (LDS
            // and CDS compare their whole set with what was sent: a name
            // dropped from it is a change to send.)
            sub.sent.retain(|n, _| names.contains(n));
        }
        sub.refused.retain(|n| names.contains(n));
        if kind == Kind::Endpoints {
            self.retry.retain(|n| names.contains(n));
        }
        let sub = &mut self.subs[kind.index()];
        sub.names = names;
        let wanted: Vec<String> = sub.names.iter().cloned().collect();
        self.respond(kind, wanted, first).await
    }

    /// Notes which subscribed assignments `event` may change.
    fn on_change(
        &mut self,
        event: Result<Changed, broadcast::error::RecvError>,
        dirty: &mut BTreeSet<String>,
    ) {
        let endpoints = &self.subs[Kind::Endpoints.index()].names;
        match event {
            Ok(Changed::Service(key)) => {
                let name = resource_name(&key);
                if endpoints.contains(&name) {
                    dirty.insert(name);
                }
            }
            // Changes may have been missed: look at everything again.
            Ok(Changed::All) | Err(broadcast::error::RecvError::Lagged(_)) => {
                dirty.extend(endpoints.iter().cloned());
            }
            Err(broadcast::error::RecvError::Closed) => {}
        }
    }

    /// Sends the assignments among `names` that changed.
    async fn push_endpoints(&mut self, names: BTreeSet<String>) -> Result<(), Gone> {
        if names.is_empty() {
            return Ok(());
        }
        self.respond(Kind::Endpoints, names.into_iter().collect(), false)
            .await
    }

    /// Builds the resources of `names` and sends what the rules say
    /// (module doc); `first`: the type's first request on this stream.
    async fn respond(&mut self, kind: Kind, names: Vec<String>, first: bool) -> Result<(), Gone> {
        let mut built: Vec<(String, Any, u64)> = Vec::new();
        let mut errors = Vec::new();
        for name in names {
            match self.build(kind, &name).await {
                Ok((any, hash)) => built.push((name, any, hash)),
                Err(Refusal::Told(code, message)) => {
                    if self.subs[kind.index()].refused.insert(name.clone()) {
                        tracing::debug!(node = ?self.node_id(), kind = kind.short(), name = ?name, %message, "xDS resource refused");
                        errors.push(resource_error(name, code, message));
                    }
                }
                Err(Refusal::Unavailable) => {
                    self.retry.insert(name);
                }
            }
        }
        let sub = &mut self.subs[kind.index()];
        if kind.is_whole_set() {
            let set: HashMap<String, u64> = built.iter().map(|(n, _, h)| (n.clone(), *h)).collect();
            if set == sub.sent && !first && errors.is_empty() {
                return Ok(());
            }
        } else {
            built.retain(|(name, _, hash)| sub.sent.get(name) != Some(hash));
            if built.is_empty() && !first && errors.is_empty() {
                return Ok(());
            }
        }
        if kind.is_whole_set() {
            sub.sent.clear();
        }
        sub.last = built.iter().map(|(n, _, h)| (n.clone(), *h)).collect();
        sub.sent
            .extend(sub.last.iter().map(|(n, h)| (n.clone(), *h)));
        sub.responses += 1;
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        sub.nonce = Some(nonce.clone());
        let response = DiscoveryResponse {
            version_info: format!("{}-{}", self.shared.boot, sub.responses),
            resources: built.into_iter().map(|(_, any, _)| any).collect(),
            type_url: kind.type_url(),
            nonce,
            control_plane: Some(ControlPlane {
                identifier: self.shared.identifier.clone(),
            }),
            resource_errors: errors,
            ..Default::default()
        };
        metrics()
            .xds_responses
            .with_label_values(&[kind.short()])
            .inc();
        self.out.send(Ok(response)).await.map_err(|_| Gone)
    }

    /// The resource `name` of `kind`, if the name is one we serve and the
    /// caller may read it.
    async fn build(&self, kind: Kind, name: &str) -> Result<(Any, u64), Refusal> {
        let key = self.resolve(kind, name)?;
        let any = match kind {
            Kind::Listener => resources::listener(name, &key),
            Kind::Route => resources::route(&key),
            Kind::Cluster => resources::cluster(&key),
            Kind::Endpoints => {
                let assignment = self.shared.assignments.get(&key).await.map_err(|e| {
                    tracing::debug!(error = %e, %name, "reading a service's nodes for xDS failed; trying again");
                    Refusal::Unavailable
                })?;
                return Ok((assignment.any.clone(), assignment.hash));
            }
        };
        let hash = hash_of(&any);
        Ok((any, hash))
    }

    /// The service `name` stands for, if the caller may read it.
    fn resolve(&self, kind: Kind, name: &str) -> Result<ServiceKey, Refusal> {
        let key = match kind {
            Kind::Listener => listener_service(name, &self.shared.default_group),
            _ => service(name),
        }
        .map_err(|why| Refusal::Told(Code::NotFound, why))?;
        if let Some(caller) = &self.caller {
            caller
                .authorize(Action::WatchService, &key.group, Some(&key.service))
                .map_err(|denied| Refusal::Told(Code::PermissionDenied, denied.to_string()))?;
        }
        Ok(key)
    }

    /// After a reload of the auth file: the caller's identity as it is
    /// now, or the status ending the stream when it lost its entry or the
    /// right to read a service it was being sent (as watches end). Names
    /// refused from the start are no loss.
    fn recheck_access(&mut self) -> Result<(), Status> {
        let (Some(auth), Some(caller)) = (&self.shared.auth, &self.caller) else {
            return Ok(());
        };
        let Some(now) = auth.policy().again(caller) else {
            return Err(Status::unauthenticated(format!(
                "{:?} is no longer in the server's auth file: this stream ends",
                caller.name
            )));
        };
        self.caller = Some(now);
        for kind in Kind::ALL {
            for name in self.subs[kind.index()].sent.keys() {
                if let Err(Refusal::Told(Code::PermissionDenied, why)) = self.resolve(kind, name) {
                    return Err(Status::permission_denied(why));
                }
            }
        }
        Ok(())
    }

    /// After a reload that left the stream open: names refused before may
    /// be allowed now, so each type's subscription is answered again (what
    /// the client already holds is not resent).
    async fn after_reload(&mut self) -> Result<(), Gone> {
        for kind in Kind::ALL {
            let sub = &mut self.subs[kind.index()];
            if sub.nonce.is_none() || sub.refused.is_empty() {
                continue;
            }
            sub.refused.clear();
            let names: Vec<String> = sub.names.iter().cloned().collect();
            self.respond(kind, names, false).await?;
        }
        Ok(())
    }
}

/// Completes when the auth file was reloaded; never without one.
async fn reloaded(reloads: &mut Option<tokio::sync::watch::Receiver<u64>>) -> Option<()> {
    match reloads {
        Some(r) => r.changed().await.ok(),
        None => std::future::pending().await,
    }
}

fn resource_error(name: String, code: Code, message: String) -> ResourceError {
    ResourceError {
        resource_name: Some(ResourceName {
            name,
            ..Default::default()
        }),
        error_detail: Some(rpc::Status {
            code: code as i32,
            message,
            details: Vec::new(),
        }),
    }
}
