//! xDS: gRPC's own service discovery (Envoy's
//! `AggregatedDiscoveryService`, state of the world), so that any gRPC
//! client with an xDS bootstrap file resolves `xds:///payments` from the
//! registry and balances its calls over the service's nodes, without code
//! of ours (issue 15).
//!
//! - [`names`]: which service a resource name stands for;
//! - [`resources`]: the Listener, RouteConfiguration, Cluster and
//!   ClusterLoadAssignment of a service;
//! - [`stream`]: one client's stream, its subscriptions and answers;
//! - [`assignments`]: the services' endpoint assignments, shared by every
//!   stream and made once per change.
//!
//! It is served on the gRPC port behind the same layers as the registry
//! API: with an auth file, an xDS client needs an identity that may watch
//! the services it asks for. Each stream counts against
//! `--max-watch-streams`, and ends with UNAVAILABLE when the server stops,
//! like a watch.

mod assignments;
pub mod names;
pub mod resources;
mod stream;

use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest,
};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::WatchSlots;
use super::auth::caller;
use super::limits;
use crate::auth::Auth;
use crate::store::Registry;
use stream::{AdsStream, Outgoing};

/// Responses queued per stream before its task waits for the client: an
/// xDS client reads what it is sent, and a slow one only delays its own
/// next push, which then holds the latest state.
const QUEUED_RESPONSES: usize = 4;

/// What every stream of one server shares.
struct Shared {
    /// The endpoint assignments, made once per change for every stream.
    assignments: Arc<assignments::Assignments>,
    /// The group of a Listener name that says none.
    default_group: String,
    auth: Option<Arc<Auth>>,
    stopping: CancellationToken,
    /// Starts every version string: versions of two processes (or of one
    /// before and after a restart) never look alike.
    boot: String,
    /// `DiscoveryResponse.control_plane`, for a client's logs.
    identifier: String,
}

/// The ADS service over one registry.
#[derive(Clone)]
pub struct XdsService {
    shared: Arc<Shared>,
    slots: WatchSlots,
}

impl std::fmt::Debug for XdsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsService")
            .field("default_group", &self.shared.default_group)
            .finish_non_exhaustive()
    }
}

impl XdsService {
    /// Serves `registry`, naming services of `default_group` when a
    /// Listener name says no group; streams take places in `slots` and end
    /// when `stopping` is cancelled.
    pub fn new(
        registry: Arc<dyn Registry>,
        default_group: String,
        auth: Option<Arc<Auth>>,
        stopping: CancellationToken,
        slots: WatchSlots,
    ) -> Self {
        let shared = Shared {
            assignments: assignments::Assignments::new(registry, stopping.clone()),
            default_group,
            auth,
            stopping,
            boot: format!("{:08x}", rand::random::<u32>()),
            identifier: format!("discovered {}", env!("CARGO_PKG_VERSION")),
        };
        Self {
            shared: Arc::new(shared),
            slots,
        }
    }

    /// The gRPC service, with our message size limits.
    pub fn into_server(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
            .max_decoding_message_size(limits::MAX_REQUEST_BYTES)
            .max_encoding_message_size(limits::MAX_RESPONSE_BYTES)
    }
}

type Responses = Pin<Box<dyn Stream<Item = Outgoing> + Send + 'static>>;
type DeltaResponses =
    Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsService {
    type StreamAggregatedResourcesStream = Responses;
    type DeltaAggregatedResourcesStream = DeltaResponses;

    async fn stream_aggregated_resources(
        &self,
        mut request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let caller = caller(&mut request);
        let slot = self.slots.acquire()?;
        // Subscribed before anything is read, so no change falls between a
        // read and the feed.
        let changes = self.shared.assignments.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUED_RESPONSES);
        let stream = AdsStream::new(self.shared.clone(), caller, tx, slot);
        tokio::spawn(stream.run(request.into_inner(), changes));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        // No gRPC client speaks incremental xDS; Envoy falls back to
        // state of the world when configured for it.
        Err(Status::unimplemented(
            "incremental (delta) xDS is not served: use state-of-the-world ADS",
        ))
    }
}
