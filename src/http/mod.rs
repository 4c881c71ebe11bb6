//! The HTTP side port (`--http-listen`), for operators:
//!
//! - `/metrics`: the server's metrics in Prometheus's text format
//!   ([`crate::metrics`]);
//! - `/sd/prometheus`: every live node as a Prometheus HTTP service
//!   discovery target, optionally `?group=` / `?service=`;
//! - `/`: a read-only dashboard (its files are in the binary), fed by
//!   `/api/registry` (what is registered) and `/api/events` (its changes,
//!   as Server-Sent Events).
//!
//! It follows the gRPC port's protection: HTTPS with the same certificate
//! when the server has one (client certificates too, when it requires
//! them), and with an auth file `/metrics` needs any valid identity and the
//! registry's contents need one that may read them (a service outside the
//! caller's scope is left out). The dashboard's files hold no registry data
//! and are open to all.

mod events;
mod json;
mod registry;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::auth::{Auth, Caller};
use crate::model::{ServiceKey, validate_name};
use crate::server::{PeerCertificate, TlsConfig};
use crate::store::Registry;
use registry::Selection;

/// How long a client has for the TLS handshake, and for a request's head.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections open at once; more are closed as they come. Operators'
/// tools need a handful: the bound keeps a client from taking the file
/// descriptors the gRPC port shares.
const MAX_CONNECTIONS: usize = 1024;
/// Streams (event streams, mostly) on one HTTP/2 connection at once.
const MAX_STREAMS_PER_CONNECTION: u32 = 16;
/// How often an idle HTTP/2 connection is pinged, and how long the answer
/// may take, before it is closed.
const KEEPALIVE: Duration = Duration::from_secs(30);

type Body = BoxBody<Bytes, Infallible>;

/// What the side port serves from.
pub struct SidePort {
    /// The registry.
    pub registry: Arc<dyn Registry>,
    /// The auth file, when the server has one.
    pub auth: Option<Arc<Auth>>,
    /// HTTPS with this, when the server serves TLS.
    pub tls: Option<Arc<TlsConfig>>,
    /// Cancelled when the server stops: event streams end, no new
    /// connections.
    pub stopping: CancellationToken,
}

impl SidePort {
    /// Serves `listener` until `stopping` is cancelled.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let room = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let (tcp, peer) = tokio::select! {
                () = self.stopping.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::debug!(error = %e, "HTTP side port: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = room.clone().try_acquire_owned() else {
                tracing::debug!(
                    ?peer,
                    max = MAX_CONNECTIONS,
                    "HTTP side port: too many connections; closing a new one"
                );
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                this.connection(tcp, peer).await;
                drop(permit);
            });
        }
    }

    async fn connection(self: Arc<Self>, tcp: TcpStream, peer: std::net::SocketAddr) {
        let _ = tcp.set_nodelay(true);
        let Some(tls) = self.tls.clone() else {
            return self.http(tcp, None).await;
        };
        let stream =
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.http_acceptor().accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(?peer, error = %e, "HTTP side port: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
        let certificate = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| PeerCertificate::from_der(leaf).unwrap_or_default());
        self.http(stream, certificate).await;
    }

    /// HTTP/1.1 or HTTP/2 on one connection, until it closes or the server
    /// stops.
    async fn http<IO>(self: Arc<Self>, io: IO, certificate: Option<PeerCertificate>)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let certificate = Arc::new(certificate);
        let this = self.clone();
        let service = hyper::service::service_fn(move |request| {
            let (this, certificate) = (this.clone(), certificate.clone());
            async move { Ok::<_, Infallible>(this.answer(request, certificate.as_ref().as_ref()).await) }
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HANDSHAKE_TIMEOUT);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE);
        let conn = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            () = self.stopping.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
            }
        }
    }

    async fn answer<B>(
        &self,
        request: Request<B>,
        certificate: Option<&PeerCertificate>,
    ) -> Response<Body> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served here");
        }
        let path = request.uri().path().to_string();
        let query = query(request.uri().query().unwrap_or(""));
        match path.as_str() {
            "/" => asset(
                "text/html; charset=utf-8",
                include_str!("dashboard/index.html"),
            ),
            "/assets/app.js" => asset(
                "text/javascript; charset=utf-8",
                include_str!("dashboard/app.js"),
            ),
            "/assets/app.css" => {
                asset("text/css; charset=utf-8", include_str!("dashboard/app.css"))
            }
            "/metrics" | "/sd/prometheus" | "/api/registry" | "/api/events" => {
                let caller = match self.authenticate(&request, certificate) {
                    Ok(caller) => caller,
                    Err(why) => return refused(&path, StatusCode::UNAUTHORIZED, why),
                };
                match path.as_str() {
                    "/metrics" => self.metrics(),
                    "/sd/prometheus" => self.sd(&query, caller.as_ref()).await,
                    "/api/registry" => self.registry(caller.as_ref()).await,
                    _ => self.events(caller),
                }
            }
            _ => text(StatusCode::NOT_FOUND, "not found"),
        }
    }

    /// The caller by the same rules as the gRPC port: a bearer token, else
    /// a client certificate an identity names; `None` without an auth
    /// file.
    fn authenticate<B>(
        &self,
        request: &Request<B>,
        certificate: Option<&PeerCertificate>,
    ) -> Result<Option<Caller>, String> {
        let Some(auth) = &self.auth else {
            return Ok(None);
        };
        auth.policy()
            .authenticate(
                request.headers().get(AUTHORIZATION).map(|v| v.as_bytes()),
                certificate.map(|c| c.subjects.as_slice()),
            )
            .map(Some)
            .map_err(|e| e.to_string())
    }

    fn metrics(&self) -> Response<Body> {
        let m = crate::metrics::metrics();
        if let Some(pool) = self.registry.pool_state() {
            m.store_pool
                .with_label_values(&["idle"])
                .set(i64::from(pool.idle));
            m.store_pool
                .with_label_values(&["in_use"])
                .set(i64::from(pool.in_use));
        }
        let mut response = Response::new(full(m.encode()));
        response.headers_mut().insert(
            CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
    }

    async fn sd(&self, query: &HashMap<String, String>, caller: Option<&Caller>) -> Response<Body> {
        let mut selection = Selection::default();
        for (param, slot) in [
            ("group", &mut selection.group),
            ("service", &mut selection.service),
        ] {
            if let Some(value) = query.get(param) {
                if let Err(e) = validate_name(param, value) {
                    return text(StatusCode::BAD_REQUEST, &e.to_string());
                }
                *slot = Some(value.clone());
            }
        }
        if let (Some(c), Some(group), Some(service)) =
            (caller, &selection.group, &selection.service)
            && !registry::may_read(Some(c), &ServiceKey::new(group, service))
        {
            return text(
                StatusCode::FORBIDDEN,
                &format!(
                    "{:?} may not read service {service:?} of group {group:?}",
                    c.name
                ),
            );
        }
        match registry::read(&self.registry, &selection, caller).await {
            Ok(services) => {
                let targets: Vec<_> = services
                    .iter()
                    .flat_map(|(_, nodes)| nodes.iter().filter_map(json::sd_target))
                    .collect();
                json_answer(StatusCode::OK, &serde_json::Value::from(targets))
            }
            Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        }
    }

    async fn registry(&self, caller: Option<&Caller>) -> Response<Body> {
        let services = match registry::read(&self.registry, &Selection::default(), caller).await {
            Ok(s) => s,
            Err(e) => {
                return json_answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"error": e.to_string()}),
                );
            }
        };
        let mut groups: Vec<(String, Vec<serde_json::Value>)> = Vec::new();
        for (key, nodes) in services {
            let service = json!({
                "name": key.service,
                "nodes": nodes.iter().map(json::node).collect::<Vec<_>>(),
            });
            match groups.last_mut() {
                Some((g, list)) if *g == key.group => list.push(service),
                _ => groups.push((key.group, vec![service])),
            }
        }
        let groups: Vec<_> = groups
            .into_iter()
            .map(|(name, services)| json!({"name": name, "services": services}))
            .collect();
        let body = json!({"server_time_ms": crate::model::now_millis(), "groups": groups});
        json_answer(StatusCode::OK, &body)
    }

    fn events(&self, caller: Option<Caller>) -> Response<Body> {
        // Subscribed before the stream says it is ready.
        let changes = self.registry.subscribe();
        let reader = events::Reader {
            auth: self.auth.clone(),
            caller,
        };
        let stream = events::stream(changes, reader, self.stopping.clone());
        let mut response = Response::new(StreamBody::new(stream).boxed());
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(CACHE_CONTROL, http::HeaderValue::from_static("no-cache"));
        response
    }
}

/// The query string's parameters (percent-decoded; the last of a name
/// wins).
fn query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).and_then(|&b| hex(b)),
                bytes.get(i + 2).and_then(|&b| hex(b)),
            ) {
                (Some(high), Some(low)) => {
                    out.push((high * 16 + low) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

fn asset(content_type: &'static str, body: &'static str) -> Response<Body> {
    let mut response = Response::new(full(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}

fn text(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = Response::new(full(format!("{message}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json_answer(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// A refusal: JSON under `/api/`, plain text elsewhere.
fn refused(path: &str, status: StatusCode, why: String) -> Response<Body> {
    if path.starts_with("/api/") {
        json_answer(status, &json!({"error": why}))
    } else {
        text(status, &why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_decoded() {
        let q = query("group=shop&service=pay%2Dments+x&empty&bad=%zz%4");
        assert_eq!(q["group"], "shop");
        assert_eq!(q["service"], "pay-ments x");
        assert_eq!(q["empty"], "");
        assert_eq!(q["bad"], "%zz%4", "a malformed escape stays as it is");
        assert!(query("").is_empty());
    }
}
