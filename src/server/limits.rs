//! Message size limits and the status an oversized request gets; the
//! limits on streams and connections an operator sets.

use std::time::Duration;

use http::{HeaderValue, Response};

pub use super::read_cache::DEFAULT_READ_CACHE_BYTES;
pub use super::watch::{DEFAULT_MAX_WATCH_STREAMS, DEFAULT_WATCH_BUFFER_BYTES};

/// The default of `--max-concurrent-streams`: hyper's own default, which
/// hyper drops (advertising no limit at all) when the builder is given
/// `None`, as tonic's server does unless one is set.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 200;
/// The default of `--http2-keepalive-interval`.
pub const DEFAULT_HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// The default of `--http2-keepalive-timeout`.
pub const DEFAULT_HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// The default of `--handshake-timeout`: far more than any client on a
/// working network needs to send 24 bytes after connecting.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The default of `--idle-timeout`. A client that calls every few minutes
/// keeps its connection; one that went quiet gives its descriptor back,
/// and gRPC clients reconnect on their next call without an error.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Bounds on what clients may hold open, and how the server finds
/// connections whose client is gone.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Streams one HTTP/2 connection may have open at once (HTTP/2's
    /// SETTINGS_MAX_CONCURRENT_STREAMS): a client waits for a free one.
    pub max_concurrent_streams: u32,
    /// Watch streams the server keeps open over all connections; a new
    /// one beyond them is refused with RESOURCE_EXHAUSTED.
    pub max_watch_streams: usize,
    /// Bytes HTTP/2 holds per stream for a client that does not read
    /// (hyper's per-stream send buffer; its own default is 400 KB): for a
    /// watch, encoded events. Past them the stream stops taking changes
    /// and, once too far behind, sends RESYNC when its client reads again.
    pub watch_buffer_bytes: usize,
    /// Bytes of GetNodes and GetService answers the read cache keeps (least recently used
    /// out first); 0 caches nothing.
    pub read_cache_bytes: usize,
    /// How often the server pings each connection; `None` sends no pings.
    pub http2_keepalive_interval: Option<Duration>,
    /// How long a ping may go unanswered before the connection is closed.
    pub http2_keepalive_timeout: Duration,
    /// How long a new connection has to send the HTTP/2 preface before it
    /// is closed.
    pub handshake_timeout: Duration,
    /// How long a connection may have no open call or watch before it is
    /// sent a GOAWAY and closed; `None`: for ever.
    pub idle_timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            max_watch_streams: DEFAULT_MAX_WATCH_STREAMS,
            watch_buffer_bytes: DEFAULT_WATCH_BUFFER_BYTES,
            read_cache_bytes: DEFAULT_READ_CACHE_BYTES,
            http2_keepalive_interval: Some(DEFAULT_HTTP2_KEEPALIVE_INTERVAL),
            http2_keepalive_timeout: DEFAULT_HTTP2_KEEPALIVE_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
        }
    }
}

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
