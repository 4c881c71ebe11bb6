//! The gRPC server: the Discovery service, health, reflection, limits and
//! graceful shutdown around one [`Registry`].

mod accept;
mod audit;
mod auth;
mod batched;
mod call_metrics;
pub(crate) mod codec;
mod connection;
mod content_type;
mod discovery;
mod framing;
mod health;
pub mod limits;
mod on_wake;
mod peer;
pub(crate) mod read_cache;
pub(crate) mod reload;
pub(crate) mod reply;
mod status;
pub mod tls;
mod watch;
pub mod xds;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

pub use discovery::{Defaults, DiscoveryService};
pub use limits::Limits;
pub use peer::PeerCertificate;
pub use reload::Reload;
pub use tls::{TlsConfig, TlsError, TlsFiles};
pub use watch::{WatchSlot, WatchSlots};

use crate::proto::v1::discovery_server::DiscoveryServer;
use crate::store::Registry;
use tonic_health::pb::health_server::{Health, HealthServer};

/// How long in-flight calls may run after shutdown begins.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a server is set up with besides its registry.
#[derive(Debug, Clone)]
pub struct Settings {
    /// What a request that leaves a field out gets.
    pub defaults: Defaults,
    /// Bounds on streams and connections.
    pub limits: Limits,
    /// How long in-flight calls may run after shutdown begins.
    pub drain: Duration,
    /// Who may call, from `--auth-file`; `None` lets everyone do everything
    /// (as before auth existed). The server re-reads the file while it
    /// runs ([`crate::auth::Auth::watch`]).
    pub auth: Option<Arc<crate::auth::Auth>>,
    /// Serve TLS with these files (and require client certificates when
    /// they name a client CA); plaintext when `None`.
    pub tls: Option<TlsFiles>,
    /// The trigger every reloadable part follows (the CLI fires it on
    /// SIGHUP): the TLS files are read again at once when it fires.
    pub reload: Reload,
    /// Serve the HTTP side port ([`crate::http`]: metrics, Prometheus
    /// service discovery, the dashboard) on this address; off when `None`.
    pub http_listen: Option<SocketAddr>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            defaults: Defaults::default(),
            limits: Limits::default(),
            drain: DEFAULT_DRAIN_TIMEOUT,
            auth: None,
            tls: None,
            reload: Reload::new(),
            http_listen: None,
        }
    }
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection service could not be built from our descriptors.
    #[error("reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The TLS files could not be loaded at start.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The HTTP side port's address cannot be bound.
    #[error("cannot listen on {addr} (--http-listen): {source}")]
    HttpListen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The server task panicked or was cancelled.
    #[error("server task failed: {0}")]
    Task(String),
}

/// Serves the registry on `listener` until `shutdown` completes, then stops
/// accepting and lets in-flight calls finish for at most `settings.drain`.
pub async fn serve(
    registry: Arc<dyn Registry>,
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let Settings {
        defaults,
        limits,
        drain,
        auth,
        tls,
        reload,
        http_listen,
    } = settings;
    let tls = tls.map(TlsConfig::load).transpose()?.map(Arc::new);
    // Stops following the files when `serve` returns, however it returns.
    let _following = follow_files(tls.as_ref(), auth.as_ref(), &reload).drop_guard();
    let (reporter, health) = tonic_health::server::health_reporter();
    let monitor = tokio::spawn(health::monitor(registry.clone(), reporter));

    let stopping = CancellationToken::new();
    // However `serve` ends (returned, or its task aborted), what follows
    // `stopping` stops too: the xDS assignments' follower among them.
    let _stop_followers = stopping.clone().drop_guard();
    let default_group = defaults.service_group.clone();
    let service = DiscoveryService::new(registry.clone(), defaults, stopping.clone())
        .with_max_watch_streams(limits.max_watch_streams)
        .with_read_cache(limits.read_cache_bytes)
        .with_auth(auth.clone());
    let xds = xds::XdsService::new(
        registry.clone(),
        default_group,
        auth.clone(),
        stopping.clone(),
        service.watch_slots(),
    );
    if let Some(addr) = http_listen {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::HttpListen { addr, source })?;
        tracing::info!(%addr, "HTTP side port: /metrics, /sd/prometheus and the dashboard");
        let side = crate::http::SidePort {
            registry: registry.clone(),
            auth: auth.clone(),
            tls: tls.clone(),
            stopping: stopping.clone(),
        };
        tokio::spawn(Arc::new(side).serve(listener));
    }
    let service = grpc_service(service, xds, health, auth)?;

    // Shutdown starts when `shutdown` completes; the drain clock starts then.
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        // Watch streams never end by themselves: end them (UNAVAILABLE) so
        // the drain can finish.
        stopping.cancel();
        let _ = started_tx.send(());
    };
    let server = connection::serve(incoming(listener), service, limits, tls, signal);
    tokio::pin!(server);
    tokio::select! {
        () = &mut server => {}
        Ok(()) = started_rx => {
            tracing::info!(drain = ?drain, "shutting down: no new calls, draining in-flight ones");
            if tokio::time::timeout(drain, &mut server).await.is_err() {
                // A planned stop all the same: the calls still open are
                // cut, and the process exits normally.
                tracing::warn!(drain = ?drain, "in-flight calls or idle clients did not finish in time; stopping anyway");
            }
        }
    }
    monitor.abort();
    Ok(())
}

/// Starts following the files the server reads again while it runs (TLS
/// certificates, the auth file): on change and on every `reload` trigger.
/// Cancelling the returned token stops them.
fn follow_files(
    tls: Option<&Arc<TlsConfig>>,
    auth: Option<&Arc<crate::auth::Auth>>,
    reload: &Reload,
) -> CancellationToken {
    let stop = CancellationToken::new();
    if let Some(tls) = tls {
        let follow = reload::follow(tls.clone(), reload.subscribe(), stop.clone());
        tokio::spawn(follow);
    }
    if let Some(auth) = auth {
        let follow = reload::follow(auth.clone(), reload.subscribe(), stop.clone());
        tokio::spawn(follow);
    }
    stop
}

/// Every service the port serves (health, reflection, the registry) with
/// the layers each request passes through, outermost first.
fn grpc_service(
    discovery: DiscoveryService,
    xds: xds::XdsService,
    health: HealthServer<impl Health>,
    auth: Option<Arc<crate::auth::Auth>>,
) -> Result<impl connection::GrpcService, ServeError> {
    let discovery = DiscoveryServer::new(discovery)
        .max_decoding_message_size(limits::MAX_REQUEST_BYTES)
        .max_encoding_message_size(limits::MAX_RESPONSE_BYTES);
    let routes = tonic::service::Routes::new(health)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(discovery)
        .add_service(xds.into_server())
        .prepare();
    Ok(tower::ServiceBuilder::new()
        .layer(content_type::GrpcOnlyLayer)
        // Outside every other layer: it counts the status the client gets.
        .layer(call_metrics::CallMetricsLayer)
        .layer(framing::FramingLayer)
        .layer(codec::LogRefusedLayer)
        .map_response(limits::oversized_is_resource_exhausted)
        // Innermost, so that the connection's extensions (the client
        // certificate) are there, and refusals are plain gRPC statuses.
        .layer(auth::AuthLayer::new(auth))
        .service(routes))
}

/// Server reflection over every descriptor we serve. Both reflection
/// versions serve all of them, so a client of either (grpcurl 1.8 speaks
/// only v1alpha) sees the same list.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .include_reflection_service(false)
}

/// Accepted connections with TCP_NODELAY: without it, Nagle's algorithm
/// and delayed ACKs hold small responses back for tens of milliseconds.
/// TCP keepalive finds clients that vanished without closing.
/// [`accept::Accepting`] keeps accept errors (the open-file limit) from
/// spinning the accept loop.
fn incoming(listener: TcpListener) -> accept::Accepting {
    accept::Accepting::new(
        TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_secs(60))),
    )
}

/// A server running in this process, for tests and embedding.
pub struct RunningServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    tls: bool,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl RunningServer {
    /// Starts a server for `registry` on `addr` (port 0 picks a free one).
    pub async fn start(
        registry: Arc<dyn Registry>,
        defaults: Defaults,
        addr: SocketAddr,
    ) -> std::io::Result<Self> {
        let settings = Settings {
            defaults,
            ..Settings::default()
        };
        Self::start_with(registry, settings, addr).await
    }

    /// Like [`RunningServer::start`], with every setting given.
    pub async fn start_with(
        registry: Arc<dyn Registry>,
        settings: Settings,
        addr: SocketAddr,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let tls = settings.tls.is_some();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(registry, settings, listener, async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            addr,
            tls,
            stop: Some(stop),
            task,
        })
    }

    /// `http://addr` (`https://addr` with TLS), for a client to connect to.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops the server and waits for it to drain.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => Err(ServeError::Task(e.to_string())),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl reload::Reloadable for crate::auth::Auth {
    fn reload_if_changed(&self) {
        let _ = crate::auth::Auth::reload_if_changed(self);
    }

    fn reload_forced(&self) {
        let _ = self.reload_now();
    }
}
