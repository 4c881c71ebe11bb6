//! A typed Rust client for `discovered.v1.Discovery`.
//!
//! [`Client`] wraps the generated stub: it takes `host:port` or an
//! `http://` URL, fills in the defaults the server applies anyway, and
//! turns WatchService into a [`Stream`] of [`Event`]s that outlives the
//! server: when the stream breaks (the server restarted, or shut down and
//! another took its address), the client reconnects with a capped backoff
//! and surfaces [`Event::Resync`], followed by the state again.
//!
//! ```no_run
//! use discovered::client::{Client, Event};
//! use discovered::proto::v1::RegisterNodeRequest;
//! use futures::StreamExt;
//!
//! # async fn demo() -> Result<(), discovered::client::ClientError> {
//! let client = Client::connect("127.0.0.1:50051").await?;
//! let node = client
//!     .register_node(RegisterNodeRequest {
//!         service_name: "payments".into(),
//!         node_name: "pay-1".into(),
//!         port: 8443,
//!         ttl_seconds: Some(30),
//!         ..Default::default()
//!     })
//!     .await?;
//! client.heartbeat("", "payments", "pay-1", Some(30), &node.instance_id).await?;
//! for node in client.get_nodes("", "payments").await? {
//!     println!("{} at {:?}:{}", node.node_name, node.ip, node.port);
//! }
//! let mut events = client.watch("", "payments");
//! while let Some(event) = events.next().await {
//!     match event? {
//!         Event::NodeAdded(n) | Event::Initial(n) => println!("up: {}", n.node_name),
//!         Event::NodeRemoved(n) | Event::NodeExpired(n) => println!("down: {}", n.node_name),
//!         Event::Resync => println!("state follows again"),
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! A server with TLS, mutual TLS or token auth is reached with
//! [`Client::connect_with`] and [`ConnectOptions`]:
//!
//! ```no_run
//! use discovered::client::{Client, ConnectOptions, TlsOptions};
//!
//! # async fn demo() -> Result<(), discovered::client::ClientError> {
//! let options = ConnectOptions {
//!     tls: Some(TlsOptions {
//!         ca_pem: std::fs::read("ca.pem").ok(),
//!         // For mutual TLS: (certificate chain, key), PEM.
//!         identity: None,
//!         domain: None,
//!     }),
//!     token: Some("s3cret".into()),
//! };
//! let client = Client::connect_with("https://discovery.internal:50051", &options).await?;
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use futures::Stream;
use prost_types::Timestamp;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use crate::backoff::Backoff;
use crate::proto::v1::discovery_client::DiscoveryClient;
use crate::proto::v1::{self as pb, EventType};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address is not `host:port` or an `http://` URL.
    #[error("bad server address {0:?}: {1}")]
    Address(String, String),
    /// The connection options cannot be used (the token is not a valid
    /// header value, say). The message never holds the token.
    #[error("{0}")]
    Options(String),
    /// The server could not be reached.
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    /// The server answered with an error status.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] Status),
}

impl ClientError {
    /// The gRPC status code of the failure (UNAVAILABLE when the server
    /// could not be reached).
    pub fn code(&self) -> Code {
        match self {
            ClientError::Address(..) | ClientError::Options(..) => Code::InvalidArgument,
            ClientError::Connect(..) => Code::Unavailable,
            ClientError::Status(s) => s.code(),
        }
    }
}

/// Result of a client call.
pub type ClientResult<T> = Result<T, ClientError>;

/// One change or marker of a watch, typed (see `EventType` in the proto
/// for what each promises).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A node that exists when the stream starts or restarts.
    Initial(pb::Node),
    /// Every INITIAL event has been sent: the receiver holds the state.
    Synced,
    /// A node appeared.
    NodeAdded(pb::Node),
    /// A field of a node's record changed.
    NodeUpdated(pb::Node),
    /// A node was removed; its last record.
    NodeRemoved(pb::Node),
    /// A node's TTL ran out; its last record.
    NodeExpired(pb::Node),
    /// A service was registered.
    ServiceRegistered(pb::Service),
    /// A service's record changed.
    ServiceUpdated(pb::Service),
    /// A service was removed.
    ServiceRemoved(pb::Service),
    /// Changes may have been missed (the server said so, or the stream
    /// broke and the client reconnected): the state follows again.
    Resync,
}

impl Event {
    /// The typed event of a WatchEvent; `None` for a type this client does
    /// not know (from a newer server).
    pub fn from_proto(e: pb::WatchEvent) -> Option<Self> {
        let node = e.node;
        let service = e.service;
        Some(match EventType::try_from(e.r#type).ok()? {
            EventType::Initial => Event::Initial(node?),
            EventType::Synced => Event::Synced,
            EventType::NodeAdded => Event::NodeAdded(node?),
            EventType::NodeUpdated => Event::NodeUpdated(node?),
            EventType::NodeRemoved => Event::NodeRemoved(node?),
            EventType::NodeExpired => Event::NodeExpired(node?),
            EventType::ServiceRegistered => Event::ServiceRegistered(service?),
            EventType::ServiceUpdated => Event::ServiceUpdated(service?),
            EventType::ServiceRemoved => Event::ServiceRemoved(service?),
            EventType::Resync => Event::Resync,
            EventType::Unspecified => return None,
        })
    }

    /// The proto's type of this event, the inverse of [`Event::from_proto`];
    /// its `as_str_name` is the name the CLI prints.
    pub fn event_type(&self) -> EventType {
        match self {
            Event::Initial(_) => EventType::Initial,
            Event::Synced => EventType::Synced,
            Event::NodeAdded(_) => EventType::NodeAdded,
            Event::NodeUpdated(_) => EventType::NodeUpdated,
            Event::NodeRemoved(_) => EventType::NodeRemoved,
            Event::NodeExpired(_) => EventType::NodeExpired,
            Event::ServiceRegistered(_) => EventType::ServiceRegistered,
            Event::ServiceUpdated(_) => EventType::ServiceUpdated,
            Event::ServiceRemoved(_) => EventType::ServiceRemoved,
            Event::Resync => EventType::Resync,
        }
    }
}

/// How to reach a server besides its address: TLS and a bearer token.
/// The default is plaintext without a token ([`Client::connect`]).
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Speak TLS (the address may then be `host:port` or `https://`).
    pub tls: Option<TlsOptions>,
    /// Sent as `authorization: Bearer <token>` with every call.
    pub token: Option<Token>,
}

/// TLS to the server, PEM throughout.
#[derive(Clone, Default)]
pub struct TlsOptions {
    /// The CA certificates to trust for the server's certificate. Required:
    /// this client carries no system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate chain and its key, for mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name to check the server's certificate against, when it is not
    /// the address's host.
    pub domain: Option<String>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret: say only whether there is one.
        f.debug_struct("TlsOptions")
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .field("identity", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

/// A bearer token. Its `Debug` hides it, so it never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// The token as given.
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl From<String> for Token {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for Token {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Adds `authorization: Bearer <token>` to every call (nothing without a
/// token). The value is marked sensitive: HTTP/2 does not put it in its
/// header compression table, and its `Debug` does not show it.
#[derive(Debug, Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    fn new(token: Option<&Token>) -> ClientResult<Self> {
        let Some(token) = token else {
            return Ok(Self(None));
        };
        let mut value: MetadataValue<Ascii> =
            format!("Bearer {}", token.secret()).parse().map_err(|_| {
                ClientError::Options("the token holds characters a header cannot carry".to_string())
            })?;
        value.set_sensitive(true);
        Ok(Self(Some(value)))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The generated stub as [`Client`] uses it: over a channel, with the
/// token (if any) added to every call.
pub type Stub = DiscoveryClient<InterceptedService<Channel, Bearer>>;

/// A connection to a `discovered` server. Cheap to clone; clones share the
/// connection.
#[derive(Debug, Clone)]
pub struct Client {
    stub: Stub,
}

/// The endpoint for `host:port` or a URL: `http://` by default, `https://`
/// when `tls` is given.
fn endpoint(addr: &str, tls: Option<&TlsOptions>) -> ClientResult<Endpoint> {
    let bad = |why: &str| ClientError::Address(addr.into(), why.into());
    let url = if addr.contains("://") {
        addr.to_string()
    } else if tls.is_some() {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    };
    let https = url.starts_with("https://");
    let endpoint = Endpoint::from_shared(url)
        .map(|e| {
            e.connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_while_idle(true)
        })
        .map_err(|e| ClientError::Address(addr.into(), e.to_string()))?;
    match (https, tls) {
        (false, None) => Ok(endpoint),
        // tonic would quietly speak plaintext to an http:// URL.
        (false, Some(_)) => Err(bad("TLS options need an https:// URL (or host:port)")),
        (true, None) => Err(bad("https:// needs a CA to trust (TLS options)")),
        (true, Some(tls)) => endpoint
            .tls_config(tls_config(tls)?)
            .map_err(|e| ClientError::Options(format!("TLS setup failed: {e}"))),
    }
}

/// tonic's TLS settings for `tls`.
fn tls_config(tls: &TlsOptions) -> ClientResult<ClientTlsConfig> {
    let Some(ca) = &tls.ca_pem else {
        return Err(ClientError::Options(
            "TLS needs a CA certificate to trust".to_string(),
        ));
    };
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some((cert, key)) = &tls.identity {
        config = config.identity(Identity::from_pem(cert, key));
    }
    if let Some(domain) = &tls.domain {
        config = config.domain_name(domain.clone());
    }
    Ok(config)
}

impl ConnectOptions {
    /// The stub for `channel` with these options' token.
    fn stub(&self, channel: Channel) -> ClientResult<Stub> {
        Ok(DiscoveryClient::with_interceptor(
            channel,
            Bearer::new(self.token.as_ref())?,
        ))
    }
}

/// The wait after `failures` failed reconnects: 100 ms doubling to 2 s.
const RECONNECT: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));

impl Client {
    /// Connects now, in plaintext; fails if the server cannot be reached.
    pub async fn connect(addr: &str) -> ClientResult<Self> {
        Self::connect_with(addr, &ConnectOptions::default()).await
    }

    /// Connects now with `options` (TLS, token); fails if the server
    /// cannot be reached or the TLS handshake fails.
    pub async fn connect_with(addr: &str, options: &ConnectOptions) -> ClientResult<Self> {
        let channel = endpoint(addr, options.tls.as_ref())?
            .connect()
            .await
            .map_err(|e| ClientError::Connect(addr.into(), error_chain(&e)))?;
        Ok(Self {
            stub: options.stub(channel)?,
        })
    }

    /// Connects on first use and reconnects after failures by itself: for
    /// long-running callers (the agent) that must outlive a server outage.
    pub fn lazy(addr: &str) -> ClientResult<Self> {
        Self::lazy_with(addr, &ConnectOptions::default())
    }

    /// Like [`Client::lazy`], with `options` (TLS, token).
    pub fn lazy_with(addr: &str, options: &ConnectOptions) -> ClientResult<Self> {
        let channel = endpoint(addr, options.tls.as_ref())?.connect_lazy();
        Ok(Self {
            stub: options.stub(channel)?,
        })
    }

    /// The generated stub, for calls this wrapper does not cover (with the
    /// token, if any, on every call).
    pub fn stub(&self) -> Stub {
        self.stub.clone()
    }

    /// Registers or replaces a service.
    pub async fn register_service(
        &self,
        req: pb::RegisterServiceRequest,
    ) -> ClientResult<pb::Service> {
        Ok(self.stub.clone().register_service(req).await?.into_inner())
    }

    /// Registers or replaces a node.
    pub async fn register_node(&self, req: pb::RegisterNodeRequest) -> ClientResult<pb::Node> {
        Ok(self.stub.clone().register_node(req).await?.into_inner())
    }

    /// Renews a node's TTL; returns its new deadline. An empty `instance_id`
    /// renews whoever registered it.
    pub async fn heartbeat(
        &self,
        group: &str,
        service: &str,
        node: &str,
        ttl_seconds: Option<i64>,
        instance_id: &str,
    ) -> ClientResult<Option<Timestamp>> {
        let req = pb::HeartbeatRequest {
            service_group: group.into(),
            service_name: service.into(),
            node_name: node.into(),
            ttl_seconds,
            instance_id: instance_id.into(),
        };
        Ok(self
            .stub
            .clone()
            .heartbeat(req)
            .await?
            .into_inner()
            .expires_at)
    }

    /// A service's record (credentials only when `reveal_credentials`).
    pub async fn get_service(
        &self,
        group: &str,
        service: &str,
        reveal_credentials: bool,
    ) -> ClientResult<pb::Service> {
        let req = pb::GetServiceRequest {
            service_group: group.into(),
            service_name: service.into(),
            reveal_credentials,
        };
        Ok(self.stub.clone().get_service(req).await?.into_inner())
    }

    /// The live nodes of a service.
    pub async fn get_nodes(&self, group: &str, service: &str) -> ClientResult<Vec<pb::Node>> {
        let req = pb::GetNodesRequest {
            service_group: group.into(),
            service_name: service.into(),
        };
        Ok(self.stub.clone().get_nodes(req).await?.into_inner().nodes)
    }

    /// Every service name of a group, all pages.
    pub async fn list_services(&self, group: &str) -> ClientResult<Vec<String>> {
        let mut names = Vec::new();
        let mut token = String::new();
        loop {
            let req = pb::ListServicesRequest {
                service_group: group.into(),
                page_size: 1000,
                page_token: token,
            };
            let page = self.stub.clone().list_services(req).await?.into_inner();
            names.extend(page.service_names);
            if page.next_page_token.is_empty() {
                return Ok(names);
            }
            token = page.next_page_token;
        }
    }

    /// Every group name, all pages.
    pub async fn list_groups(&self) -> ClientResult<Vec<String>> {
        let mut names = Vec::new();
        let mut token = String::new();
        loop {
            let req = pb::ListServiceGroupsRequest {
                page_size: 1000,
                page_token: token,
            };
            let page = self
                .stub
                .clone()
                .list_service_groups(req)
                .await?
                .into_inner();
            names.extend(page.service_groups);
            if page.next_page_token.is_empty() {
                return Ok(names);
            }
            token = page.next_page_token;
        }
    }

    /// Removes a node; `instance_id` (if not empty) must own it.
    pub async fn remove_node(&self, req: pb::RemoveNodeRequest) -> ClientResult<bool> {
        Ok(self
            .stub
            .clone()
            .remove_node(req)
            .await?
            .into_inner()
            .removed)
    }

    /// Removes a service with its nodes.
    pub async fn remove_service(
        &self,
        req: pb::RemoveServiceRequest,
    ) -> ClientResult<pb::RemoveServiceResponse> {
        Ok(self.stub.clone().remove_service(req).await?.into_inner())
    }

    /// Removes a group with its services.
    pub async fn remove_group(
        &self,
        req: pb::RemoveServiceGroupRequest,
    ) -> ClientResult<pb::RemoveServiceGroupResponse> {
        Ok(self
            .stub
            .clone()
            .remove_service_group(req)
            .await?
            .into_inner())
    }

    /// Watches a service (or, with an empty `service`, a whole group): the
    /// state, then every change. The stream ends only when dropped, or with
    /// one error for a request the server refuses (INVALID_ARGUMENT, say);
    /// a broken stream is reopened (backoff 100 ms doubling to 2 s) and the
    /// reopening is surfaced as [`Event::Resync`] before the state.
    pub fn watch(
        &self,
        group: &str,
        service: &str,
    ) -> impl Stream<Item = ClientResult<Event>> + use<> {
        let (tx, rx) = mpsc::channel(64);
        let req = pb::WatchServiceRequest {
            service_group: group.into(),
            service_name: service.into(),
            send_initial: Some(true),
        };
        tokio::spawn(watch_loop(self.stub.clone(), req, tx));
        ReceiverStream::new(rx)
    }
}

/// Statuses after which reopening the same watch cannot help.
fn is_final(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::Unimplemented
            | Code::PermissionDenied
            | Code::Unauthenticated
    )
}

/// An error with its causes, which for a failed TLS handshake hold the
/// reason ("transport error" alone says nothing).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line = format!("{line}: {text}");
        }
        source = cause.source();
    }
    line
}

async fn watch_loop(
    mut stub: Stub,
    req: pb::WatchServiceRequest,
    tx: mpsc::Sender<ClientResult<Event>>,
) {
    let mut failures = 0u32;
    let mut opened_before = false;
    loop {
        let opened = tokio::select! {
            _ = tx.closed() => return,
            r = stub.watch_service(req.clone()) => r,
        };
        match opened {
            Ok(response) => {
                if opened_before && tx.send(Ok(Event::Resync)).await.is_err() {
                    return;
                }
                opened_before = true;
                let mut stream = response.into_inner();
                loop {
                    let message = tokio::select! {
                        _ = tx.closed() => return,
                        m = stream.message() => m,
                    };
                    match message {
                        Ok(Some(e)) => {
                            failures = 0;
                            if let Some(event) = Event::from_proto(e)
                                && tx.send(Ok(event)).await.is_err()
                            {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(status) if is_final(status.code()) => {
                            let _ = tx.send(Err(status.into())).await;
                            return;
                        }
                        Err(_) => break,
                    }
                }
            }
            Err(status) if is_final(status.code()) => {
                let _ = tx.send(Err(status.into())).await;
                return;
            }
            Err(_) => {}
        }
        failures += 1;
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep(RECONNECT.delay(failures)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_round_trip() {
        let (node, service) = (pb::Node::default(), pb::Service::default());
        let events = [
            Event::Initial(node.clone()),
            Event::Synced,
            Event::NodeAdded(node.clone()),
            Event::NodeUpdated(node.clone()),
            Event::NodeRemoved(node.clone()),
            Event::NodeExpired(node.clone()),
            Event::ServiceRegistered(service.clone()),
            Event::ServiceUpdated(service.clone()),
            Event::ServiceRemoved(service.clone()),
            Event::Resync,
        ];
        for event in events {
            let wire = pb::WatchEvent {
                r#type: event.event_type().into(),
                node: Some(node.clone()),
                service: Some(service.clone()),
                ..Default::default()
            };
            assert_eq!(Event::from_proto(wire), Some(event));
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(
            endpoint("127.0.0.1:50051", None).unwrap().uri().to_string(),
            "http://127.0.0.1:50051/"
        );
        assert_eq!(
            endpoint("http://h:1", None).unwrap().uri().to_string(),
            "http://h:1/"
        );
        assert!(endpoint("not a url at all", None).is_err());
        let tls = TlsOptions {
            ca_pem: Some(Vec::new()),
            ..TlsOptions::default()
        };
        assert_eq!(
            endpoint("h:1", Some(&tls)).unwrap().uri().to_string(),
            "https://h:1/"
        );
        assert!(endpoint("http://h:1", Some(&tls)).is_err());
        assert!(endpoint("https://h:1", None).is_err());
    }

    #[test]
    fn the_token_never_shows() {
        let token = Token::from("s3cret-token");
        let options = ConnectOptions {
            token: Some(token.clone()),
            ..ConnectOptions::default()
        };
        assert!(!format!("{options:?}").contains("s3cret"));
        let bearer = Bearer::new(Some(&token)).unwrap();
        assert!(!format!("{bearer:?}").contains("s3cret"));
        let mut bearer = bearer;
        let request = bearer.call(tonic::Request::new(())).unwrap();
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer s3cret-token"
        );
        let bad = Bearer::new(Some(&Token::from("s3cret\nx"))).unwrap_err();
        assert!(!bad.to_string().contains("s3cret"));
    }
}
