//! Writing the HTTP/2 frames of many streams in one system call.
//!
//! One change to 10,000 watch streams over 100 connections is 10,000 DATA
//! frames. Each stream's frame reaches its connection from the stream's
//! own poll, and the connection's task runs right after (tokio runs the
//! task just woken next), so every frame was written on its own: a system
//! call per frame, and as much again in the kernel's loopback delivery.
//! [`Batched`] makes the connection write in batches:
//! - it tells h2 it has no vectored writes, so h2 copies DATA frames of up
//!   to 1 KiB (a change event is ~400 bytes) into its 16 KiB write buffer
//!   instead of handing each to the socket apart;
//! - a write yields (the task wakes itself and returns `Pending`), which
//!   puts the connection behind the tasks already woken: the streams among
//!   them add their frames to h2's buffer, and one write takes them all.
//!   It yields again while the last yield brought more bytes, up to
//!   [`MAX_YIELDS`] times and [`BATCH_BYTES`]: tokio runs at most 256
//!   queued tasks between two turns of the connection, and the woken
//!   streams of one connection are spread over 10,000. A connection that
//!   has nothing else to do writes one scheduler turn later.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most yields before one write.
const MAX_YIELDS: u8 = 8;
/// Bytes waiting that are written without yielding again.
const BATCH_BYTES: usize = 8 * 1024;

/// An IO whose writes are batched; see the module documentation.
pub(crate) struct Batched<IO> {
    inner: IO,
    /// Yields since the last flush (which starts the next batch).
    yields: u8,
    /// Bytes offered at the last yield.
    offered: usize,
}

impl<IO> Batched<IO> {
    pub(crate) fn new(inner: IO) -> Self {
        Self {
            inner,
            yields: 0,
            offered: 0,
        }
    }

    /// Whether to yield before writing `len` bytes: on the first attempt,
    /// and while the batch keeps growing, within the bounds.
    fn yields_for(&mut self, len: usize) -> bool {
        let growing = self.yields == 0 || len > self.offered;
        if growing && self.yields < MAX_YIELDS && len < BATCH_BYTES {
            self.yields += 1;
            self.offered = len;
            return true;
        }
        false
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Batched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Batched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.yields_for(buf.len()) {
            // Woken during its own poll, a tokio task is queued behind the
            // tasks already woken (a yield), not run next.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    /// `false`: see the module documentation. With vectored writes h2
    /// chains every DATA frame of more than 256 bytes and writes it before
    /// buffering the next frame.
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.yields = 0;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn every_byte_arrives_in_order_across_batches() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut batched = Batched::new(a);
        for i in 0..100u8 {
            batched.write_all(&[i; 300]).await.unwrap();
            if i % 7 == 0 {
                batched.flush().await.unwrap();
            }
        }
        batched.shutdown().await.unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        let want: Vec<u8> = (0..100u8).flat_map(|i| [i; 300]).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_write_yields_while_its_batch_grows_within_bounds() {
        let (a, _b) = tokio::io::duplex(1 << 16);
        let mut batched = Batched::new(a);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut w = Pin::new(&mut batched);
        let data = vec![7u8; BATCH_BYTES];
        // The first attempt yields; the same bytes again are written.
        assert!(w.as_mut().poll_write(&mut cx, &data[..10]).is_pending());
        let written = w.as_mut().poll_write(&mut cx, &data[..10]);
        assert!(matches!(written, Poll::Ready(Ok(10))));
        assert!(w.as_mut().poll_flush(&mut cx).is_ready());
        // A batch that keeps growing yields up to MAX_YIELDS times.
        for n in 1..=usize::from(MAX_YIELDS) {
            let attempt = w.as_mut().poll_write(&mut cx, &data[..n]);
            assert!(attempt.is_pending(), "yield {n}");
        }
        let n = usize::from(MAX_YIELDS) + 1;
        let written = w.as_mut().poll_write(&mut cx, &data[..n]);
        assert!(matches!(written, Poll::Ready(Ok(_))));
        assert!(w.as_mut().poll_flush(&mut cx).is_ready());
        // A full batch is written at once.
        assert!(w.as_mut().poll_write(&mut cx, &data).is_ready());
    }
}
