//! Serving accepted connections: one HTTP/2 connection per task, with the
//! limits tonic's own server loop does not offer (issue 11).
//!
//! tonic 0.14's `Server` drives hyper for us but exposes neither an idle
//! nor a handshake timeout, nor hyper's per-stream send buffer, and it
//! switches off hyper's defence against reset floods unless configured.
//! So the server runs tonic's routes on hyper directly:
//! - **handshake timeout**: a connection must finish its TLS handshake
//!   (when the server has TLS) and send the HTTP/2 client preface within
//!   [`Limits::handshake_timeout`], or it is closed. Otherwise a client that connects and says nothing holds a file
//!   descriptor for good: keepalive pings start only once HTTP/2 has.
//! - **idle timeout**: a connection with no open stream (call or watch)
//!   for [`Limits::idle_timeout`] gets a GOAWAY and is closed.
//!   GOAWAY, unlike a plain close, lets a client that was about to send
//!   retry on a new connection. Pings do not count as activity.
//! - **send buffer**: hyper buffers up to 400 KB per stream for a client
//!   that does not take what is sent; [`Limits::watch_buffer_bytes`]
//!   bounds it lower.
//! - **batched writes**: the frames of many streams go out in one write
//!   ([`Batched`]).
//! - **TLS**: the handshake happens here (tokio-rustls), with the
//!   configuration current when the connection arrives (see
//!   [`super::tls`]); a verified client certificate's names go to every
//!   request as a [`PeerCertificate`].
//! - shutdown: on the signal every connection gets a GOAWAY, open calls
//!   finish, and [`serve`] returns when the last connection has closed.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::body::Body;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tower::Service;

use super::accept::Accepting;
use super::batched::Batched;
use super::limits::Limits;
use super::peer::PeerCertificate;
use super::tls::TlsConfig;

/// The bytes an HTTP/2 client sends first (RFC 9113, section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The service every request goes to: tonic's routes with our layers.
pub(crate) trait GrpcService:
    Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send>
    + Clone
    + Send
    + 'static
{
}

impl<S> GrpcService for S where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send>
        + Clone
        + Send
        + 'static
{
}

/// Serves every connection `incoming` yields with `service` until
/// `shutdown` completes; then stops accepting (the listening socket is
/// closed at once), sends every connection a GOAWAY and returns once all
/// of them have closed.
pub(crate) async fn serve<S: GrpcService>(
    mut incoming: Accepting,
    service: S,
    limits: Limits,
    tls: Option<Arc<TlsConfig>>,
    shutdown: impl Future<Output = ()>,
) {
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        // Unset, hyper would advertise no limit: one connection could open
        // streams until memory runs out.
        .max_concurrent_streams(limits.max_concurrent_streams)
        // Pings find a client that vanished (or stopped reading) long
        // before TCP keepalive would, and close its connection and streams.
        .keep_alive_interval(limits.http2_keepalive_interval)
        .keep_alive_timeout(limits.http2_keepalive_timeout)
        .max_send_buf_size(limits.watch_buffer_bytes);
    let http2 = Arc::new(http2);
    let stopping = CancellationToken::new();
    let connections = TaskTracker::new();
    {
        let mut shutdown = pin!(shutdown);
        loop {
            let tcp = tokio::select! {
                () = &mut shutdown => break,
                tcp = incoming.next() => match tcp {
                    Some(Ok(tcp)) => tcp,
                    // `Accepting` yields no errors; an end is the end.
                    Some(Err(_)) | None => break,
                },
            };
            let conn = Connection {
                http2: http2.clone(),
                service: service.clone(),
                limits: limits.clone(),
                tls: tls.clone(),
                stopping: stopping.clone(),
            };
            connections.spawn(conn.run(tcp));
        }
        // Dropping the listener here refuses new clients during the drain
        // instead of leaving them to hang in the backlog.
        drop(incoming);
    }
    stopping.cancel();
    connections.close();
    connections.wait().await;
}

/// One accepted connection and what it is served with.
struct Connection<S> {
    http2: Arc<hyper::server::conn::http2::Builder<TokioExecutor>>,
    service: S,
    limits: Limits,
    tls: Option<Arc<TlsConfig>>,
    stopping: CancellationToken,
}

impl<S: GrpcService> Connection<S> {
    async fn run(self, tcp: TcpStream) {
        let info = tcp.connect_info();
        let peer = info.remote_addr();
        // One budget for the TLS handshake and the HTTP/2 preface.
        let deadline = Instant::now() + self.limits.handshake_timeout;
        let Some(tls) = self.tls.clone() else {
            return self.serve(tcp, info, None, deadline).await;
        };
        let stream = match tokio::time::timeout_at(deadline, tls.acceptor().accept(tcp)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(peer = ?peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(peer = ?peer, "closing a connection that did not finish the TLS handshake within --handshake-timeout");
                return;
            }
        };
        // Present only when a client CA is configured, and then verified.
        let certificate = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| PeerCertificate::from_der(leaf).unwrap_or_default());
        if let Some(c) = &certificate {
            tracing::debug!(peer = ?peer, subjects = ?c.subjects, "client certificate verified");
        }
        self.serve(stream, info, certificate, deadline).await;
    }

    /// Serves HTTP/2 on `io` (plain TCP or TLS) once its preface is in.
    async fn serve<IO>(
        self,
        io: IO,
        info: TcpConnectInfo,
        certificate: Option<PeerCertificate>,
        deadline: Instant,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = info.remote_addr();
        let io = match await_preface(io, deadline).await {
            Ok(io) => io,
            Err(why) => {
                tracing::debug!(peer = ?peer, "closing a connection that {why}");
                return;
            }
        };
        let (streams, open) = watch::channel(0usize);
        let service = Tracked {
            inner: self.service,
            info,
            certificate,
            streams: Arc::new(streams),
        };
        let conn = self.http2.serve_connection(
            TokioIo::new(Batched::new(io)),
            TowerToHyperService::new(service),
        );
        let mut conn = pin!(conn);
        let mut idle = pin!(idle_for(open, self.limits.idle_timeout));
        let mut closing = false;
        loop {
            tokio::select! {
                done = conn.as_mut() => {
                    if let Err(e) = done {
                        tracing::debug!(peer = ?peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                () = self.stopping.cancelled(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                () = &mut idle, if !closing => {
                    closing = true;
                    tracing::debug!(peer = ?peer, timeout = ?self.limits.idle_timeout, "closing an idle connection (--idle-timeout)");
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Reads the HTTP/2 client preface by `deadline` and returns `io` with it
/// put back in front (hyper reads it again). Reading rather than peeking
/// works on a TLS stream as on a socket. Err says what the client did
/// instead; a client that sends something else is refused as soon as its
/// bytes differ, without waiting for 24 of them.
async fn await_preface<IO: AsyncRead + Unpin>(
    mut io: IO,
    deadline: Instant,
) -> Result<Rewind<IO>, &'static str> {
    let read = async {
        let mut buf = [0u8; PREFACE.len()];
        let mut n = 0;
        while n < PREFACE.len() {
            let got = io.read(&mut buf[n..]).await.map_err(|_| "failed")?;
            if got == 0 {
                return Err("closed before speaking HTTP/2");
            }
            n += got;
            if buf[..n] != PREFACE[..n] {
                return Err("does not speak HTTP/2 (gRPC needs it)");
            }
        }
        Ok(())
    };
    tokio::time::timeout_at(deadline, read)
        .await
        .unwrap_or(Err("sent no HTTP/2 preface within --handshake-timeout"))?;
    Ok(Rewind::new(Bytes::from_static(PREFACE), io))
}

/// An IO that yields `head` before what `inner` reads: bytes taken off a
/// stream to look at, given back.
struct Rewind<IO> {
    head: Bytes,
    inner: IO,
}

impl<IO> Rewind<IO> {
    fn new(head: Bytes, inner: IO) -> Self {
        Self { head, inner }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.head.is_empty() {
            let n = self.head.len().min(buf.remaining());
            let head = self.head.split_to(n);
            buf.put_slice(&head);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Completes once no stream has been open for `timeout`; never when
/// `timeout` is `None`.
async fn idle_for(mut open: watch::Receiver<usize>, timeout: Option<Duration>) {
    let Some(timeout) = timeout else {
        return std::future::pending().await;
    };
    loop {
        // The sender lives in the connection's service, so as long as the
        // connection: an error means it is going anyway.
        if open.wait_for(|n| *n == 0).await.is_err() {
            return std::future::pending().await;
        }
        let busy = tokio::time::timeout(timeout, open.wait_for(|n| *n > 0)).await;
        if busy.is_err() {
            return;
        }
    }
}

/// The connection's service: passes each request on with the connection's
/// address (as tonic's own server does, for `Request::remote_addr`) and
/// its verified client certificate, if any, and counts the request as an open stream until its response body is done.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    info: TcpConnectInfo,
    certificate: Option<PeerCertificate>,
    streams: Arc<watch::Sender<usize>>,
}

impl<S: GrpcService> Service<Request<Incoming>> for Tracked<S> {
    type Response = Response<Counted>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Counted>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let open = OpenStream::new(self.streams.clone());
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(self.info.clone());
        if let Some(certificate) = &self.certificate {
            request.extensions_mut().insert(certificate.clone());
        }
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| Counted { body, _open: open }))
        })
    }
}

/// One open stream in its connection's count, taken back when dropped.
struct OpenStream(Arc<watch::Sender<usize>>);

impl OpenStream {
    fn new(streams: Arc<watch::Sender<usize>>) -> Self {
        streams.send_modify(|n| *n += 1);
        Self(streams)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// A response body that keeps its stream counted as open until it is
/// dropped: a watch stays open as long as its body does.
struct Counted {
    body: Body,
    _open: OpenStream,
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_preface_is_read_then_replayed_before_the_rest() {
        let (mut client, server) = tokio::io::duplex(64);
        use tokio::io::AsyncWriteExt;
        // In pieces, as a slow client sends it.
        client.write_all(&PREFACE[..5]).await.unwrap();
        let reading = tokio::spawn(await_preface(
            server,
            Instant::now() + Duration::from_secs(5),
        ));
        tokio::task::yield_now().await;
        client.write_all(&PREFACE[5..]).await.unwrap();
        client.write_all(b"rest").await.unwrap();
        drop(client);
        let mut io = reading.await.unwrap().unwrap();
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, [&PREFACE[..], b"rest"].concat());
    }

    #[tokio::test]
    async fn another_protocol_is_refused_at_its_first_bytes() {
        let (mut client, server) = tokio::io::duplex(64);
        use tokio::io::AsyncWriteExt;
        // Fewer than 24 bytes, and the connection stays open.
        client.write_all(b"GET / HTTP/1.1").await.unwrap();
        let refused = await_preface(server, Instant::now() + Duration::from_secs(3600)).await;
        assert!(refused.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_fires_only_after_a_whole_timeout_without_streams() {
        let (tx, rx) = watch::channel(0usize);
        let timeout = Duration::from_secs(10);
        let mut idle = pin!(idle_for(rx, Some(timeout)));
        // Busy before the timeout: the clock starts again when it ends.
        tokio::time::sleep(Duration::from_secs(9)).await;
        tx.send_modify(|n| *n += 1);
        assert!(futures::poll!(idle.as_mut()).is_pending());
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(
            futures::poll!(idle.as_mut()).is_pending(),
            "a stream is open"
        );
        tx.send_modify(|n| *n -= 1);
        assert!(futures::poll!(idle.as_mut()).is_pending());
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(futures::poll!(idle.as_mut()).is_pending());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(futures::poll!(idle.as_mut()).is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn no_idle_timeout_never_fires() {
        let (_tx, rx) = watch::channel(0usize);
        let mut idle = pin!(idle_for(rx, None));
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(futures::poll!(idle.as_mut()).is_pending());
    }
}
