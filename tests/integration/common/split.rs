//! [`SplitProxy`]: an in-process HTTP/2 proxy that sends a gRPC client's
//! writes to one server and its reads and watches to another, so a test
//! written against one server checks two servers sharing a store (a write
//! must be visible, and watched, on the other server, as on a Redis
//! Cluster behind several stateless `discovered` replicas).
//!
//! The client stays a plain [`Client`](super::Client) on a [`Channel`]
//! to the proxy: the test bodies do not know there are two servers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tonic::body::Body;
use tonic::transport::Channel;
use tower::ServiceExt;

/// The gRPC service the methods below belong to (`package discovered.v1;
/// service Discovery` in `proto/discovered/v1/discovery.proto`).
pub const DISCOVERY: &str = "discovered.v1.Discovery";

/// The methods of [`DISCOVERY`] that change the registry: they go to the
/// writing server. Every other path (GetService, GetNodes, ListServices,
/// ListServiceGroups, WatchService; health and reflection too) goes to the
/// reading server.
pub const WRITES: [&str; 6] = [
    "RegisterService",
    "RegisterNode",
    "Heartbeat",
    "RemoveNode",
    "RemoveService",
    "RemoveServiceGroup",
];

/// Which server a request of `path` (`/package.Service/Method`) goes to:
/// true for the writing one.
pub fn is_write(path: &str) -> bool {
    path.strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .is_some_and(|(service, method)| service == DISCOVERY && WRITES.contains(&method))
}

/// How many requests went each way.
#[derive(Debug, Default)]
struct Forwarded {
    writes: AtomicUsize,
    reads: AtomicUsize,
}

/// The proxy, listening on 127.0.0.1 until dropped (which also ends every
/// connection and stream through it).
pub struct SplitProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    forwarded: Arc<Forwarded>,
    task: JoinHandle<()>,
}

impl SplitProxy {
    /// Listens on 127.0.0.1:0 and forwards writes to `writes` and
    /// everything else to `reads`.
    pub async fn start(writes: Channel, reads: Channel) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the split proxy");
        let addr = listener.local_addr().expect("the split proxy's address");
        let forwarded = Arc::new(Forwarded::default());
        let counts = forwarded.clone();
        let task = tokio::spawn(async move {
            // Aborting this task drops the set, which aborts every
            // connection: nothing outlives the proxy.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (writes, reads, counts) = (writes.clone(), reads.clone(), counts.clone());
                let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let write = is_write(req.uri().path());
                    let (target, count) = if write {
                        (writes.clone(), &counts.writes)
                    } else {
                        (reads.clone(), &counts.reads)
                    };
                    count.fetch_add(1, Ordering::Relaxed);
                    forward(target, req)
                });
                connections.spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                // Reap the connections that ended.
                while connections.try_join_next().is_some() {}
            }
        });
        Self {
            addr,
            forwarded,
            task,
        }
    }

    /// `http://addr`, for a client to connect to.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many requests went to the writing server so far.
    pub fn writes(&self) -> usize {
        self.forwarded.writes.load(Ordering::Relaxed)
    }

    /// How many requests went to the reading server so far.
    pub fn reads(&self) -> usize {
        self.forwarded.reads.load(Ordering::Relaxed)
    }
}

impl Drop for SplitProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends `req` on `target` and returns its answer, body streamed both
/// ways (a watch stays open as long as the client keeps it). A request the
/// channel cannot send is answered UNAVAILABLE, as a client would see it
/// without the proxy.
async fn forward(
    target: Channel,
    req: http::Request<Incoming>,
) -> Result<http::Response<Body>, Infallible> {
    let req = req.map(Body::new);
    match target.oneshot(req).await {
        Ok(response) => Ok(response),
        Err(e) => Ok(tonic::Status::unavailable(format!("split proxy: {e}")).into_http()),
    }
}
