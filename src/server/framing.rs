//! Request bodies whose gRPC framing is broken get INVALID_ARGUMENT.
//!
//! A gRPC request body is a run of messages, each behind a 5-byte frame
//! header (a compressed flag, then the message's length as a big-endian
//! u32). tonic answers a body that ends inside a frame ("Unexpected EOF
//! decoding stream.") or that carries no message on a call that takes one
//! ("Missing request message.") with INTERNAL, before any handler runs:
//! the caller's mistake then looks like a bug of ours. [`FramingLayer`]
//! follows the frame headers as the body passes through, and where the body
//! ends mid-frame, or without a message on a call that takes exactly one,
//! ends it with an INVALID_ARGUMENT [`Status`] as the body's error instead.
//! tonic turns a request body's error into the call's status by finding a
//! `Status` in the error's chain (`Status::from_error`), so that status is
//! what the client gets.
//!
//! Everything else about the frames stays tonic's and the codec's: a
//! compressed flag without `grpc-encoding` (INTERNAL, as the compression
//! spec asks), a second message on a call that takes one (INTERNAL,
//! [`super::codec::RequestCodec`]), the size limit. tonic decodes each
//! frame as soon as it is whole, so those are found before the body ends,
//! which is the only point where this layer has anything to say.
//!
//! A refusal is logged at debug with the peer by
//! [`super::codec::LogRefusedLayer`], which recognises these messages
//! through [`is_refusal`].

use std::error::Error as StdError;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Request;
use http_body::{Body, Frame, SizeHint};
use prost::bytes::Bytes;
use tonic::Status;
use tower::{Layer, Service};

/// The error type of a [`FramedBody`]: whatever the inner body fails with,
/// or a [`Status`] of ours.
type BoxError = Box<dyn StdError + Send + Sync>;

/// The size of a gRPC frame header: a compressed flag and a u32 length.
const HEADER_LEN: u8 = 5;

/// How the message of a refusal for a body cut off inside a frame begins.
const CUT_OFF: &str = "request body ends ";
/// How the message of a refusal for a body without a message begins.
const NO_MESSAGE: &str = "request has no message";

/// Whether `message` (a status message) is one of this layer's refusals.
pub(super) fn is_refusal(message: &str) -> bool {
    message.starts_with(CUT_OFF) || message.starts_with(NO_MESSAGE)
}

/// Wraps a service in [`Framing`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FramingLayer;

impl<S> Layer<S> for FramingLayer {
    type Service = Framing<S>;

    fn layer(&self, inner: S) -> Framing<S> {
        Framing { inner }
    }
}

/// Passes each request on with its body in a [`FramedBody`].
#[derive(Debug, Clone)]
pub(crate) struct Framing<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Framing<S>
where
    S: Service<Request<FramedBody<B>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let needs_message = takes_one_message(request.uri().path());
        self.inner
            .call(request.map(|body| FramedBody::new(body, needs_message)))
    }
}

/// Whether the call at `path` takes exactly one request message: every RPC
/// of Discovery and of Health is unary or server streaming. Reflection is
/// bidirectional: a client may send no message and close, so an empty body
/// there is no error.
fn takes_one_message(path: &str) -> bool {
    use crate::proto::v1::discovery_server::SERVICE_NAME as DISCOVERY;
    use tonic_health::pb::health_server::SERVICE_NAME as HEALTH;
    let service = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .map(|(service, _method)| service);
    matches!(service, Some(s) if s == DISCOVERY || s == HEALTH)
}

/// A request body that passes its frames through untouched and, where the
/// data ends, checks the gRPC framing: a body cut off inside a frame, or
/// without a message when `needs_message`, ends in an INVALID_ARGUMENT
/// [`Status`] error instead.
#[derive(Debug)]
pub(crate) struct FramedBody<B> {
    inner: B,
    tracker: FrameTracker,
    /// Whether the call must carry a message (see [`takes_one_message`]).
    needs_message: bool,
    /// Whether the end of the data has been checked; after that, frames
    /// (none but the end) pass as they come.
    checked: bool,
    /// Whether the refusal has been yielded: the body is over.
    refused: bool,
}

impl<B> FramedBody<B> {
    fn new(inner: B, needs_message: bool) -> Self {
        Self {
            inner,
            tracker: FrameTracker::default(),
            needs_message,
            checked: false,
            refused: false,
        }
    }

    /// What the body's end says: `Ok` if it is a proper one.
    fn verdict(&self) -> Result<(), Status> {
        self.tracker.finish(self.needs_message)
    }

    /// Checks the end of the data; `Some` is the refusal to yield.
    fn check_end(&mut self) -> Option<BoxError> {
        self.checked = true;
        let status = self.verdict().err()?;
        self.refused = true;
        Some(Box::new(status))
    }
}

impl<B> Body for FramedBody<B>
where
    // Unpin, so the body needs no pin projection: hyper's and tonic's
    // request bodies are.
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.refused {
            return Poll::Ready(None);
        }
        let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            // The client's reset, a connection error...: tonic's to answer.
            Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            None if this.checked => return Poll::Ready(None),
            None => return Poll::Ready(this.check_end().map(Err)),
        };
        if let Some(data) = frame.data_ref() {
            this.tracker.feed(data);
            return Poll::Ready(Some(Ok(frame)));
        }
        // Trailers come last: the data has ended. tonic takes request
        // trailers for the end of the messages without checking its
        // buffer, so the check cannot wait for the body's end.
        if !this.checked
            && let Some(refusal) = this.check_end()
        {
            return Poll::Ready(Some(Err(refusal)));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        // tonic's `Body::new` drops a body that says it has ended (an empty
        // one) without polling it: one with a refusal still to yield must
        // not say so.
        self.refused || (self.inner.is_end_stream() && (self.checked || self.verdict().is_ok()))
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Where a body is in its run of frames, followed chunk by chunk without
/// keeping any data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// In a frame header, `seen` bytes of it read (0: between frames), the
    /// length assembled from those read so far.
    Header { seen: u8, len: u32 },
    /// In a message of `len` bytes, `left` of them still to come (never 0).
    Message { len: u32, left: u32 },
}

/// Follows the gRPC frames of a body across its chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FrameTracker {
    position: Position,
    /// Whether any frame has begun.
    any: bool,
}

impl Default for FrameTracker {
    fn default() -> Self {
        Self {
            position: Position::Header { seen: 0, len: 0 },
            any: false,
        }
    }
}

impl FrameTracker {
    /// Moves past `chunk`, the next bytes of the body.
    fn feed(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            match &mut self.position {
                Position::Header { seen, len } => {
                    self.any = true;
                    let take = usize::from(HEADER_LEN - *seen).min(chunk.len());
                    for &byte in &chunk[..take] {
                        // Byte 0 is the compressed flag; 1 to 4 the length.
                        if *seen > 0 {
                            *len = (*len << 8) | u32::from(byte);
                        }
                        *seen += 1;
                    }
                    chunk = &chunk[take..];
                    if *seen == HEADER_LEN {
                        self.position = match *len {
                            0 => Position::Header { seen: 0, len: 0 },
                            len => Position::Message { len, left: len },
                        };
                    }
                }
                Position::Message { left, .. } => {
                    // `left` is at most u32::MAX, so it fits a usize on any
                    // target tonic runs on, and `take` fits `left`.
                    let take = chunk.len().min(*left as usize);
                    *left -= take as u32;
                    chunk = &chunk[take..];
                    if *left == 0 {
                        self.position = Position::Header { seen: 0, len: 0 };
                    }
                }
            }
        }
    }

    /// What the body ending here means: `Ok` between frames (after at least
    /// one when `needs_message`), else the INVALID_ARGUMENT to answer.
    fn finish(&self, needs_message: bool) -> Result<(), Status> {
        let message = match self.position {
            Position::Header { seen: 0, .. } if needs_message && !self.any => {
                format!("{NO_MESSAGE}: a unary/server-streaming call takes exactly one")
            }
            Position::Header { seen: 0, .. } => return Ok(()),
            Position::Header { seen, .. } => {
                format!("{CUT_OFF}inside a gRPC message: {seen} of {HEADER_LEN} header bytes")
            }
            Position::Message { len, left } => format!(
                "{CUT_OFF}{left} bytes short of the {len}-byte message its frame header announces"
            ),
        };
        Err(Status::invalid_argument(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use tonic::Code;

    /// A frame of `len` declared bytes carrying `bytes`.
    fn frame(len: u32, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend(len.to_be_bytes());
        out.extend(bytes);
        out
    }

    /// The tracker after `body` fed in chunks cut at `cuts` (offsets).
    fn fed(body: &[u8], cuts: &[usize]) -> FrameTracker {
        let mut tracker = FrameTracker::default();
        let mut from = 0;
        for &cut in cuts.iter().chain([&body.len()]) {
            tracker.feed(&body[from..cut]);
            from = cut;
        }
        tracker
    }

    /// Every way of cutting `body` into up to three chunks.
    fn all_cuts(body: &[u8]) -> Vec<Vec<usize>> {
        let n = body.len();
        let mut out = vec![vec![]];
        for a in 0..=n {
            out.push(vec![a]);
            for b in a..=n {
                out.push(vec![a, b]);
            }
        }
        out
    }

    fn message_of(result: Result<(), Status>) -> String {
        let status = result.expect_err("a refusal");
        assert_eq!(status.code(), Code::InvalidArgument);
        status.message().to_owned()
    }

    #[test]
    fn whole_frames_end_well_wherever_the_chunks_are_cut() {
        let mut body = frame(3, b"abc");
        body.extend(frame(0, b""));
        body.extend(frame(1, b"z"));
        for cuts in all_cuts(&body) {
            let tracker = fed(&body, &cuts);
            assert_eq!(
                tracker.finish(true).map_err(|s| s.to_string()),
                Ok(()),
                "{cuts:?}"
            );
        }
    }

    #[test]
    fn an_empty_message_is_a_message() {
        assert!(fed(&frame(0, b""), &[]).finish(true).is_ok());
    }

    #[test]
    fn a_body_cut_in_a_header_says_how_much_of_it_came() {
        let mut body = frame(2, b"ab");
        body.extend([0, 0, 0]);
        for cuts in all_cuts(&body) {
            assert_eq!(
                message_of(fed(&body, &cuts).finish(true)),
                "request body ends inside a gRPC message: 3 of 5 header bytes",
                "{cuts:?}"
            );
        }
    }

    #[test]
    fn a_body_cut_in_a_message_says_how_short_it_is() {
        let body = frame(42, &[7; 32]);
        for cuts in all_cuts(&body) {
            assert_eq!(
                message_of(fed(&body, &cuts).finish(false)),
                "request body ends 10 bytes short of the 42-byte message its frame header announces",
                "{cuts:?}"
            );
        }
        // A length that needs all four bytes, and nothing of the message.
        let big = frame(0x0102_0304, b"");
        assert_eq!(
            message_of(fed(&big, &[1, 2, 3, 4]).finish(false)),
            format!(
                "request body ends {0} bytes short of the {0}-byte message its frame header announces",
                0x0102_0304
            )
        );
    }

    #[test]
    fn no_message_is_refused_only_where_one_is_needed() {
        let tracker = FrameTracker::default();
        assert!(tracker.finish(false).is_ok());
        assert_eq!(
            message_of(tracker.finish(true)),
            "request has no message: a unary/server-streaming call takes exactly one"
        );
        assert!(is_refusal(&message_of(tracker.finish(true))));
    }

    #[test]
    fn only_single_message_services_need_a_message() {
        assert!(takes_one_message("/discovered.v1.Discovery/GetNodes"));
        assert!(takes_one_message("/grpc.health.v1.Health/Watch"));
        assert!(!takes_one_message(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        ));
        assert!(!takes_one_message("/discovered.v1.DiscoveryX/GetNodes"));
        assert!(!takes_one_message("/discovered.v1.Discovery"));
    }

    /// A body of `chunks`, then trailers if `trailers`.
    fn body_of(
        chunks: &[&[u8]],
        trailers: bool,
    ) -> impl Body<Data = Bytes, Error = BoxError> + Unpin {
        let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        if trailers {
            frames.push(Ok(Frame::trailers(http::HeaderMap::new())));
        }
        StreamBody::new(futures::stream::iter(frames))
    }

    #[tokio::test]
    async fn the_body_passes_its_data_and_ends_in_the_refusal() {
        let whole = frame(2, b"ab");
        let got = read_all(FramedBody::new(
            body_of(&[&whole[..3], &whole[3..]], false),
            true,
        ))
        .await;
        assert_eq!(got.map_err(|s| s.to_string()), Ok(whole.clone()));

        let cut = read_all(FramedBody::new(body_of(&[&whole[..6]], false), true)).await;
        assert!(message_of(cut.map(drop)).contains("1 bytes short"));

        // The check also holds where trailers end the data.
        let cut = read_all(FramedBody::new(body_of(&[&whole[..3]], true), true)).await;
        assert!(message_of(cut.map(drop)).contains("3 of 5 header bytes"));
        let whole_then_trailers = read_all(FramedBody::new(body_of(&[&whole], true), true)).await;
        assert!(whole_then_trailers.is_ok());
    }

    #[tokio::test]
    async fn an_empty_body_does_not_say_it_has_ended_before_its_refusal() {
        let empty = FramedBody::new(http_body_util::Empty::<Bytes>::new(), true);
        assert!(!empty.is_end_stream());
        let status = read_all(empty).await.expect_err("a refusal");
        assert!(status.message().starts_with(NO_MESSAGE));

        // Where no message is needed, empty is a proper end.
        let fine = FramedBody::new(http_body_util::Empty::<Bytes>::new(), false);
        assert!(fine.is_end_stream());
    }

    /// Collects a framed body: its data, or the status it ended with.
    async fn read_all<B>(body: FramedBody<B>) -> Result<Vec<u8>, Status>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        match body.collect().await {
            Ok(collected) => Ok(collected.to_bytes().to_vec()),
            Err(e) => Err(*e.downcast::<Status>().expect("a Status")),
        }
    }
}
