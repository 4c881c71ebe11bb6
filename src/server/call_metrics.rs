//! Counts every gRPC call by method and status code, and times the unary
//! ones ([`crate::metrics`]). The status is read where the client reads
//! it: the headers of a trailers-only answer, else the trailers at the end
//! of the body; a body dropped before its trailers is a call the client
//! cancelled (or the connection lost).

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::Code;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::metrics::metrics;
use crate::proto::code_name;

/// The methods counted under their own name; anything else (an unknown
/// path, which a client can make up without end) is `other`.
const METHODS: &[(&str, bool)] = &[
    // (name, streams)
    ("RegisterService", false),
    ("RegisterNode", false),
    ("Heartbeat", false),
    ("GetService", false),
    ("GetNodes", false),
    ("ListServices", false),
    ("ListServiceGroups", false),
    ("RemoveNode", false),
    ("RemoveService", false),
    ("RemoveServiceGroup", false),
    ("WatchService", true),
    ("StreamAggregatedResources", true),
    ("DeltaAggregatedResources", true),
    ("Check", false),
    ("Watch", true),
    ("ServerReflectionInfo", true),
];

/// Wraps a service in [`CallMetrics`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CallMetricsLayer;

impl<S> Layer<S> for CallMetricsLayer {
    type Service = CallMetrics<S>;

    fn layer(&self, inner: S) -> CallMetrics<S> {
        CallMetrics { inner }
    }
}

/// Counts and times the calls `inner` answers.
#[derive(Debug, Clone)]
pub struct CallMetrics<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for CallMetrics<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let name = request.uri().path().rsplit('/').next().unwrap_or("");
        let (method, streams) = METHODS
            .iter()
            .find(|(m, _)| *m == name)
            .copied()
            .unwrap_or(("other", false));
        let call = Call {
            method,
            streams,
            start: Instant::now(),
        };
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            if let Some(code) = status(response.headers()) {
                call.finish(code);
                return Ok(response);
            }
            Ok(response.map(|body| {
                Body::new(Metered {
                    body,
                    call: Some(call),
                })
            }))
        })
    }
}

/// One call being counted.
#[derive(Debug, Clone, Copy)]
struct Call {
    method: &'static str,
    streams: bool,
    start: Instant,
}

impl Call {
    fn finish(self, code: Code) {
        let m = metrics();
        m.grpc_requests
            .with_label_values(&[self.method, code_name(code)])
            .inc();
        if !self.streams {
            m.grpc_duration
                .with_label_values(&[self.method])
                .observe(self.start.elapsed().as_secs_f64());
        }
    }
}

fn status(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(Code::from_i32(value.parse().ok()?))
}

/// An answer's body that counts its call when its status goes by.
struct Metered {
    body: Body,
    /// Until counted.
    call: Option<Call>,
}

impl HttpBody for Metered {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        let code = match &frame {
            Some(Ok(f)) => f.trailers_ref().map(|t| status(t).unwrap_or(Code::Unknown)),
            Some(Err(_)) => Some(Code::Internal),
            // Ended without trailers: not a gRPC answer we can read.
            None => Some(Code::Unknown),
        };
        if let Some(code) = code
            && let Some(call) = self.call.take()
        {
            call.finish(code);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            call.finish(Code::Cancelled);
        }
    }
}
