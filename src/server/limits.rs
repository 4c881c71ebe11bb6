//! Message size limits and the status an oversized request gets.

use http::{HeaderValue, Response};

/// Largest request the server decodes. The largest valid request (every
/// string and 64 metadata entries at their 4 KiB bounds) is about 600 KiB.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Largest response the server encodes (a GetNodes of a large service).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// tonic reports a request over the decoding limit as OUT_OF_RANGE; gRPC
/// convention (and our error table) says RESOURCE_EXHAUSTED. The status of
/// a request that fails to decode travels in the response headers, so it
/// can be rewritten here.
pub fn oversized_is_resource_exhausted<B>(mut response: Response<B>) -> Response<B> {
    let headers = response.headers_mut();
    let oversized = headers.get("grpc-status").is_some_and(|s| s == "11")
        && headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| {
                m.contains("message%20length%20too%20large")
                    || m.contains("message length too large")
            });
    if oversized {
        headers.insert("grpc-status", HeaderValue::from_static("8"));
    }
    response
}
