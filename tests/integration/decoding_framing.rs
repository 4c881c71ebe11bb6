//! Request bodies that are not well-formed gRPC: bad frames and non-gRPC
//! requests, sent as raw HTTP/2 requests (headers and body bytes as given)
//! to a live server. Each gets the answer the gRPC spec asks for where it
//! names one; a body cut off inside a frame, or without a message, gets
//! ours (framing.rs); the others are pinned at what tonic answers, so a
//! change shows. The server keeps serving after all of them.

use http_body_util::{BodyExt, Full};
use prost::Message;
use prost::bytes::Bytes;
use tonic::{Code, Status};
use tower::ServiceExt;

use discovered::proto::v1::GetNodesRequest;

use crate::common::*;

/// gRPC's request headers.
const GRPC: [(&str, &str); 2] = [("content-type", "application/grpc"), ("te", "trailers")];

/// What the server answered: the HTTP status, and the gRPC status if there
/// is one (from the headers of a trailers-only answer, or the trailers).
#[derive(Debug)]
struct Answer {
    http: http::StatusCode,
    grpc: Option<Status>,
}

/// POSTs `body` to GetNodes with `headers`, as it is.
async fn post(t: &TestServer, headers: &[(&str, &str)], body: Vec<u8>) -> Answer {
    post_to(t, "/discovered.v1.Discovery/GetNodes", headers, body).await
}

/// POSTs `body` to `path` with `headers`, as it is.
async fn post_to(t: &TestServer, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Answer {
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("{}{path}", t.server.url()));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(tonic::body::Body::new(Full::new(Bytes::from(body))))
        .expect("request");
    let call = t.channel.clone().oneshot(request);
    let response = within("an answer", call).await.expect("HTTP/2 exchange");
    let http = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.expect("response body");
    let grpc = Status::from_header_map(&headers)
        .or_else(|| body.trailers().and_then(Status::from_header_map));
    Answer { http, grpc }
}

/// A gRPC frame: compressed flag, declared length, bytes.
fn frame(flag: u8, len: usize, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend(u32::try_from(len).expect("length").to_be_bytes());
    out.extend(bytes);
    out
}

/// Asserts a gRPC answer (HTTP 200) with `code`.
fn assert_code(answer: &Answer, code: Code, what: &str) {
    assert_eq!(answer.http, http::StatusCode::OK, "{what}: {answer:?}");
    let got = answer.grpc.as_ref().map(|s| s.code());
    assert_eq!(got, Some(code), "{what}: {answer:?}");
}

/// Asserts a gRPC answer (HTTP 200) with INVALID_ARGUMENT and `message`.
fn assert_refused(answer: &Answer, message: &str, what: &str) {
    assert_code(answer, Code::InvalidArgument, what);
    let got = answer.grpc.as_ref().map(Status::message);
    assert_eq!(got, Some(message), "{what}: {answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decoding_bad_frames_and_non_grpc_requests() {
    let t = TestServer::start(Backend::Redis).await;
    let msg = GetNodesRequest {
        service_group: "g".into(),
        service_name: "s".into(),
    }
    .encode_to_vec();
    let ok = post(&t, &GRPC, frame(0, msg.len(), &msg)).await;
    assert_code(&ok, Code::Ok, "a valid frame");

    // The compression spec: a compressed flag without a grpc-encoding MUST
    // fail with INTERNAL; an encoding the server lacks is UNIMPLEMENTED.
    let flagged = post(&t, &GRPC, frame(1, msg.len(), &msg)).await;
    assert_code(&flagged, Code::Internal, "compressed flag, no encoding");
    let snappy = [GRPC[0], GRPC[1], ("grpc-encoding", "snappy")];
    let unknown = post(&t, &snappy, frame(1, msg.len(), &msg)).await;
    assert_code(&unknown, Code::Unimplemented, "unknown grpc-encoding");
    // Neither 0 nor 1 is no compressed flag at all: a protocol error.
    let flag7 = post(&t, &GRPC, frame(7, msg.len(), &msg)).await;
    assert_code(&flag7, Code::Internal, "compressed flag 7");

    // Over the size limit, by the declared length alone (limits.rs).
    let huge = post(&t, &GRPC, frame(0, u32::MAX as usize, &msg)).await;
    assert_code(&huge, Code::ResourceExhausted, "declared length 4 GiB");

    // A body that ends inside a frame, or has none on a call that takes
    // one message: the caller's mistake, INVALID_ARGUMENT naming it
    // (framing.rs; tonic alone answers INTERNAL).
    let short_header = post(&t, &GRPC, vec![0, 0, 0]).await;
    assert_refused(
        &short_header,
        "request body ends inside a gRPC message: 3 of 5 header bytes",
        "3 bytes of a frame header",
    );
    let truncated = post(&t, &GRPC, frame(0, msg.len() + 10, &msg)).await;
    assert_refused(
        &truncated,
        &format!(
            "request body ends 10 bytes short of the {}-byte message its frame header announces",
            msg.len() + 10
        ),
        "a frame 10 bytes short",
    );
    let empty = post(&t, &GRPC, Vec::new()).await;
    assert_refused(
        &empty,
        "request has no message: a unary/server-streaming call takes exactly one",
        "no frame",
    );

    // Health's RPCs take one message too; reflection's stream may carry
    // none (a client may open it and close it unused).
    let health = post_to(&t, "/grpc.health.v1.Health/Check", &GRPC, Vec::new()).await;
    assert_refused(
        &health,
        "request has no message: a unary/server-streaming call takes exactly one",
        "no frame to Health/Check",
    );
    let reflection = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
    let unused = post_to(&t, reflection, &GRPC, Vec::new()).await;
    assert_code(&unused, Code::Ok, "no frame to ServerReflectionInfo");

    // Every Discovery RPC takes one message: a second is a protocol
    // error (the codec's INTERNAL, as grpc-java), not silently dropped.
    let mut two = frame(0, msg.len(), &msg);
    two.extend(frame(0, msg.len(), &msg));
    let twice = post(&t, &GRPC, two).await;
    assert_code(&twice, Code::Internal, "two messages on a unary call");

    // Not gRPC at all: HTTP 415, as the gRPC over HTTP/2 spec says.
    let json = [("content-type", "application/json")];
    for headers in [&json[..], &[]] {
        let answer = post(&t, headers, frame(0, msg.len(), &msg)).await;
        assert_eq!(
            answer.http,
            http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{headers:?}: {answer:?}"
        );
    }

    let ok = post(&t, &GRPC, frame(0, msg.len(), &msg)).await;
    assert_code(&ok, Code::Ok, "a valid frame after the bad ones");
}
