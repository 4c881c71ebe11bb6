//! Authentication as a tower layer: with an auth file, every request but a
//! health check must carry a valid identity ([`crate::auth::Policy::authenticate`]),
//! which goes into the request's extensions as a [`Caller`]; the handlers
//! then authorize what the request does ([`Caller::authorize`]), since only
//! they know the group and service it names.
//!
//! Health (`grpc.health.v1.Health`) stays open so that load balancers and
//! orchestrators need no token. Reflection needs a valid identity, of any
//! role: it describes the API, not the registry's contents.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use http::header::AUTHORIZATION;
use http::{Request, Response};
use tonic::Status;
use tower::{Layer, Service};

use super::peer::PeerCertificate;
use crate::auth::{Auth, Caller, Denied};

/// The path prefix of the health service, which needs no identity.
const HEALTH: &str = "/grpc.health.v1.Health/";

/// Wraps a service in [`Authenticate`]; without an auth file it passes
/// every request on untouched.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    auth: Option<Arc<Auth>>,
}

impl AuthLayer {
    /// Authenticates with `auth`, or not at all when `None`.
    pub fn new(auth: Option<Arc<Auth>>) -> Self {
        Self { auth }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Authenticate<S> {
        Authenticate {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// Refuses requests without a valid identity (UNAUTHENTICATED) and hands
/// the [`Caller`] of the others to the handlers.
#[derive(Debug, Clone)]
pub struct Authenticate<S> {
    inner: S,
    auth: Option<Arc<Auth>>,
}

impl<S, B, R> Service<Request<B>> for Authenticate<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    R: Default,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Response<R>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let Some(auth) = &self.auth else {
            return Either::Left(self.inner.call(request));
        };
        if request.uri().path().starts_with(HEALTH) {
            return Either::Left(self.inner.call(request));
        }
        // The policy in force now: a reload applies from the next request.
        let policy = auth.policy();
        let caller = policy.authenticate(
            request
                .headers()
                .get(AUTHORIZATION)
                .map(http::HeaderValue::as_bytes),
            request
                .extensions()
                .get::<PeerCertificate>()
                .map(|c| c.subjects.as_slice()),
        );
        match caller {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Either::Left(self.inner.call(request))
            }
            Err(why) => {
                tracing::debug!(path = request.uri().path(), reason = %why, "unauthenticated call refused");
                Either::Right(ready(Ok(
                    Status::unauthenticated(why.to_string()).into_http()
                )))
            }
        }
    }
}

impl From<Denied> for Status {
    fn from(e: Denied) -> Self {
        Status::permission_denied(e.to_string())
    }
}

/// Who a handler's request is from: the [`Caller`] the layer found, or
/// `None` when the server runs without an auth file.
/// Taken out of the request, not cloned: a handler reads it once.
pub(crate) fn caller<T>(request: &mut tonic::Request<T>) -> Option<Caller> {
    request.extensions_mut().remove::<Caller>()
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;
    use crate::auth::hash_token;

    /// An inner service that answers with the caller it was handed (its
    /// name in the `caller` header), or "none".
    #[derive(Clone)]
    struct Echo;

    impl Service<Request<()>> for Echo {
        type Response = Response<String>;
        type Error = Infallible;
        type Future = Ready<Result<Response<String>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Request<()>) -> Self::Future {
            let body = match request.extensions().get::<Caller>() {
                Some(c) => format!("{} {:?} {}", c.name, c.how, c.role),
                None => "none".into(),
            };
            ready(Ok(Response::new(body)))
        }
    }

    fn auth() -> Arc<Auth> {
        // A directory per call: the tests run in parallel.
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("discovered-auth-layer-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("auth.toml");
        std::fs::write(
            &path,
            format!(
                "[[token]]\nname = \"ops\"\nsha256 = \"{}\"\nrole = \"admin\"\n\
                 [[identity]]\nsubject = \"spiffe://example.org/agent\"\nrole = \"register\"\n",
                hash_token("ops-token")
            ),
        )
        .unwrap();
        let auth = Auth::load(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        auth
    }

    async fn call(
        layer: &AuthLayer,
        path: &str,
        token: Option<&str>,
        cert: Option<&[&str]>,
    ) -> Response<String> {
        let mut request = Request::builder().uri(path);
        if let Some(t) = token {
            request = request.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let mut request = request.body(()).unwrap();
        if let Some(subjects) = cert {
            request.extensions_mut().insert(PeerCertificate {
                subjects: subjects.iter().map(|s| s.to_string()).collect(),
            });
        }
        let mut service = layer.layer(Echo);
        service.call(request).await.unwrap()
    }

    fn grpc_status(r: &Response<String>) -> Option<(String, String)> {
        let code = r.headers().get("grpc-status")?.to_str().ok()?.to_string();
        let message = r
            .headers()
            .get("grpc-message")
            .map(|m| m.to_str().unwrap().to_string())
            .unwrap_or_default();
        Some((code, message))
    }

    const NODES: &str = "/discovered.v1.Discovery/GetNodes";

    #[tokio::test]
    async fn a_verified_certificate_named_by_an_identity_authenticates() {
        let layer = AuthLayer::new(Some(auth()));
        let r = call(&layer, NODES, None, Some(&["spiffe://example.org/agent"])).await;
        assert_eq!(r.body(), "spiffe://example.org/agent Certificate register");
        // A token takes precedence over the certificate.
        let r = call(
            &layer,
            NODES,
            Some("ops-token"),
            Some(&["spiffe://example.org/agent"]),
        )
        .await;
        assert_eq!(r.body(), "ops Token admin");
        // An invalid token is refused, certificate or not.
        let r = call(
            &layer,
            NODES,
            Some("bad"),
            Some(&["spiffe://example.org/agent"]),
        )
        .await;
        assert_eq!(grpc_status(&r).unwrap().0, "16");
        // A certificate no identity names is refused.
        let r = call(&layer, NODES, None, Some(&["spiffe://example.org/other"])).await;
        let (code, message) = grpc_status(&r).unwrap();
        assert_eq!(code, "16");
        assert!(message.contains("spiffe"), "{message}");
    }

    #[tokio::test]
    async fn health_is_open_and_the_rest_is_not() {
        let layer = AuthLayer::new(Some(auth()));
        let r = call(&layer, "/grpc.health.v1.Health/Check", None, None).await;
        assert_eq!(r.body(), "none");
        let r = call(&layer, NODES, None, None).await;
        assert_eq!(grpc_status(&r).unwrap().0, "16");
        let r = call(
            &layer,
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            None,
            None,
        )
        .await;
        assert_eq!(grpc_status(&r).unwrap().0, "16");
    }

    #[tokio::test]
    async fn without_an_auth_file_nothing_changes() {
        let layer = AuthLayer::new(None);
        let r = call(&layer, NODES, Some("anything"), None).await;
        assert_eq!(r.body(), "none");
    }
}
