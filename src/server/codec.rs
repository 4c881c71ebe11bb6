//! The codec the generated Discovery server decodes requests with.
//!
//! tonic's prost codec turns every protobuf decode error into INTERNAL,
//! before any handler runs: a client sending random bytes, a wrong wire
//! type or a string that is not UTF-8 then looks like a bug of ours, and
//! nothing is logged. The gRPC status codes say a request the server cannot
//! parse is the caller's error, so [`RequestCodec`] answers it with
//! INVALID_ARGUMENT, naming the message and what is wrong. Encoding (our
//! responses) is tonic's own. [`LogRefusedLayer`] logs each refusal at
//! debug with the peer's address, which the codec does not see, and so
//! those of [`super::framing`] (a body whose gRPC frames are cut off).
//!
//! build.rs wires this in through tonic-prost-build's `codec_path`, for the
//! server only: a client that cannot decode a response keeps INTERNAL.

use std::marker::PhantomData;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::{Request, Response};
use prost::{Message, Name};
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::transport::server::TcpConnectInfo;
use tonic::{Code, Status};
use tonic_prost::ProstEncoder;
use tower::{Layer, Service};

/// How the message of every refusal by [`RequestCodec`] begins.
const REFUSED: &str = "request body is not a valid ";

/// [`tonic_prost::ProstCodec`], except that a request body that does not
/// decode as `U` is INVALID_ARGUMENT, and a second request message on the
/// call is INTERNAL. `T` is the response, `U` the request.
///
/// For RPCs that take one request message only (unary and server
/// streaming), which is all of `discovered.v1.Discovery`: a client-streaming
/// RPC would need a decoder without the one-message check.
#[derive(Debug, Clone)]
pub struct RequestCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for RequestCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

/// How tonic buffers the responses it encodes: 1 KiB to start with, and a
/// stream's messages handed to HTTP/2 once 16 KiB are encoded (tonic's
/// default is 32 KiB). tonic allocates the first buffer when the call
/// starts and each open watch keeps one: its default 8 KiB was half of
/// what an idle stream cost (80 MB with 10,000 streams). It grows for a
/// larger answer. A watch whose client does not read holds one batch in
/// HTTP/2 besides the stream's send buffer, so a smaller batch is less
/// memory pinned per frozen client; a reader that keeps up gets the same
/// events in more, smaller frames.
fn response_buffers() -> BufferSettings {
    BufferSettings::new(1024, 16 * 1024)
}

impl<T, U> Codec for RequestCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Name + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstCodec::<T, U>::raw_encoder(response_buffers())
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder {
            decoded: false,
            _pd: PhantomData,
        }
    }
}

/// Decodes the one request message `U` of a call; see [`RequestCodec`].
#[derive(Debug, Clone)]
pub struct RequestDecoder<U> {
    /// Whether the call's message has been decoded. tonic makes a decoder
    /// per call and, for a call that takes one message, decodes whatever
    /// follows it before the handler runs (to reach the trailers), then
    /// drops it: without this, a second message would pass unnoticed.
    decoded: bool,
    _pd: PhantomData<U>,
}

impl<U: Message + Name + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        if std::mem::replace(&mut self.decoded, true) {
            // INTERNAL, as grpc-java answers this cardinality violation.
            return Err(Status::internal(
                "protocol error: more than one request message on a call that takes one",
            ));
        }
        U::decode(buf)
            .map(Some)
            .map_err(|e| invalid_request(&U::full_name(), &e))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// INVALID_ARGUMENT for a body that is not a valid `message` (its full
/// protobuf name).
fn invalid_request(message: &str, error: &prost::DecodeError) -> Status {
    // prost's text starts "failed to decode Protobuf message: ", which the
    // status says better; what follows is the field path and the problem.
    let text = error.to_string();
    let problem = text
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(&text);
    Status::invalid_argument(format!("{REFUSED}{message}: {problem}"))
}

/// Wraps a service in [`LogRefused`].
#[derive(Debug, Clone, Copy, Default)]
pub struct LogRefusedLayer;

impl<S> Layer<S> for LogRefusedLayer {
    type Service = LogRefused<S>;

    fn layer(&self, inner: S) -> LogRefused<S> {
        LogRefused { inner }
    }
}

/// Logs at debug each request [`RequestCodec`] or the framing check
/// ([`super::framing::FramingLayer`]) refused, with the peer's
/// address: a client's mistake is no server error, but whoever debugs the
/// client may want to see it from this side. The refusal is read back from
/// the answer's headers (a request that fails to decode gets a
/// trailers-only answer), where the request's connection is still known.
#[derive(Debug, Clone)]
pub struct LogRefused<S> {
    inner: S,
}

impl<S, B, R> Service<Request<B>> for LogRefused<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<R>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let peer = request
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr);
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            if let Some(status) = Status::from_header_map(response.headers())
                && status.code() == Code::InvalidArgument
                && (status.message().starts_with(REFUSED)
                    || super::framing::is_refusal(status.message()))
            {
                tracing::debug!(peer = ?peer, error = status.message(), "request refused");
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_message_the_field_and_the_problem() {
        // Field 1 (service_group) holding "\xC3(", which is not UTF-8.
        let body: &[u8] = &[0x0a, 2, 0xC3, b'('];
        let error = crate::proto::v1::GetNodesRequest::decode(body).unwrap_err();
        let status = invalid_request("discovered.v1.GetNodesRequest", &error);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "request body is not a valid discovered.v1.GetNodesRequest: \
             GetNodesRequest.service_group: invalid string value: data is not UTF-8 encoded"
        );
    }
}
