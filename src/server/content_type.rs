//! Requests that are not gRPC get HTTP 415.
//!
//! tonic routes by path alone and serves any content type as gRPC: a JSON
//! POST to `/discovered.v1.Discovery/GetNodes` with a valid frame in its
//! body is answered. The gRPC over HTTP/2 spec says a server SHOULD answer
//! a Content-Type that does not begin with `application/grpc` with HTTP
//! 415 (Unsupported Media Type), so that a plain HTTP client does not take
//! a gRPC error (which rides on HTTP 200) for a success.

use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use http::{Request, Response, StatusCode, header::CONTENT_TYPE};
use tower::{Layer, Service};

/// Wraps a service in [`GrpcOnly`].
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcOnlyLayer;

impl<S> Layer<S> for GrpcOnlyLayer {
    type Service = GrpcOnly<S>;

    fn layer(&self, inner: S) -> GrpcOnly<S> {
        GrpcOnly { inner }
    }
}

/// Passes gRPC requests (`application/grpc`, `application/grpc+proto`...)
/// to the inner service and answers anything else with an empty HTTP 415.
#[derive(Debug, Clone)]
pub struct GrpcOnly<S> {
    inner: S,
}

impl<S, B, R> Service<Request<B>> for GrpcOnly<S>
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

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if is_grpc(&request) {
            return Either::Left(self.inner.call(request));
        }
        tracing::debug!(
            content_type = ?request.headers().get(CONTENT_TYPE),
            path = request.uri().path(),
            "not a gRPC request: 415"
        );
        let mut response = Response::new(R::default());
        *response.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        Either::Right(ready(Ok(response)))
    }
}

/// Whether the request's Content-Type is gRPC's (any `application/grpc`
/// subtype; gRPC-Web is not served).
fn is_grpc<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(content_type: Option<&str>) -> Request<()> {
        let mut b = Request::builder();
        if let Some(ct) = content_type {
            b = b.header(CONTENT_TYPE, ct);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn only_grpc_content_types_are_grpc() {
        assert!(is_grpc(&with(Some("application/grpc"))));
        assert!(is_grpc(&with(Some("application/grpc+proto"))));
        assert!(!is_grpc(&with(Some("application/json"))));
        assert!(!is_grpc(&with(Some("text/plain"))));
        assert!(!is_grpc(&with(None)));
    }
}
