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
//! - it holds what h2 writes (up to [`HOLD_BYTES`]) until h2 flushes, so
//!   that a frame's header and its payload, and the frames of several
//!   answers, go out in one system call: h2 writes a large DATA frame's
//!   header and payload apart without vectored writes;
//! - the first write of a batch and its flush yield (the task wakes
//!   itself and returns `Pending`), which
//!   puts the connection behind the tasks already woken: the streams among
//!   them add their frames, and one write takes them all. It yields again
//!   while the last yield brought more bytes, up to [`MAX_YIELDS`] times
//!   and [`BATCH_BYTES`]: tokio runs at most 256 queued tasks between two
//!   turns of the connection, and the woken streams of one connection are
//!   spread over 10,000. A connection that has nothing else to do writes
//!   one scheduler turn later.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most yields before one flush.
const MAX_YIELDS: u8 = 8;
/// Bytes waiting that are flushed without yielding again.
const BATCH_BYTES: usize = 8 * 1024;
/// Most bytes held between flushes; a larger write goes out at once, with
/// what was held before it.
const HOLD_BYTES: usize = 16 * 1024;

/// An IO whose writes are batched; see the module documentation.
pub(crate) struct Batched<IO> {
    inner: IO,
    /// Bytes written to this IO and not yet to `inner`.
    held: BytesMut,
    /// Yields since the last flush (which starts the next batch).
    yields: u8,
    /// Bytes held at the last yield.
    offered: usize,
}

impl<IO> Batched<IO> {
    pub(crate) fn new(inner: IO) -> Self {
        Self {
            inner,
            held: BytesMut::new(),
            yields: 0,
            offered: 0,
        }
    }

    /// Whether to yield before flushing: on the first attempt, and while
    /// the batch keeps growing, within the bounds.
    fn yields_now(&mut self) -> bool {
        let len = self.held.len();
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
    /// Holds `buf` if it fits with what is held already; otherwise writes
    /// what is held and `buf` together (one vectored write).
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.held.is_empty() && this.yields == 0 {
            // The first write of a batch yields too: h2 keeps the bytes
            // and adds the frames that come meanwhile before writing again.
            this.yields = 1;
            this.offered = buf.len();
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if this.held.len() + buf.len() <= HOLD_BYTES {
            this.held.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        loop {
            if this.held.is_empty() {
                return Pin::new(&mut this.inner).poll_write(cx, buf);
            }
            let parts = [IoSlice::new(&this.held), IoSlice::new(buf)];
            let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, &parts))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let held = this.held.len();
            this.held.advance(n.min(held));
            if n > held {
                return Poll::Ready(Ok(n - held));
            }
        }
    }

    /// `false`: see the module documentation. With vectored writes h2
    /// chains every DATA frame of more than 256 bytes and flushes before
    /// buffering the next frame.
    fn is_write_vectored(&self) -> bool {
        false
    }

    /// Yields while the batch grows (see the module documentation), then
    /// writes everything held.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.held.is_empty() && this.yields_now() {
            // Woken during its own poll, a tokio task is queued behind the
            // tasks already woken (a yield), not run next.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        while !this.held.is_empty() {
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &this.held))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            this.held.advance(n);
        }
        this.yields = 0;
        // An idle connection keeps no buffer.
        if this.held.capacity() > HOLD_BYTES {
            this.held = BytesMut::new();
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
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
    fn a_batch_yields_while_it_grows_within_bounds() {
        let (a, _b) = tokio::io::duplex(1 << 20);
        let mut batched = Batched::new(a);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut w = Pin::new(&mut batched);
        // The first write of a batch yields; the same bytes again are held.
        assert!(w.as_mut().poll_write(&mut cx, b"x").is_pending());
        assert!(matches!(
            w.as_mut().poll_write(&mut cx, b"x"),
            Poll::Ready(Ok(1))
        ));
        assert_eq!(w.held.len(), 1);
        // Nothing came meanwhile: the flush writes.
        assert!(w.as_mut().poll_flush(&mut cx).is_ready());
        assert!(w.held.is_empty());
        // A batch that keeps growing yields up to MAX_YIELDS times.
        assert!(w.as_mut().poll_write(&mut cx, b"y").is_pending());
        for n in 2..=usize::from(MAX_YIELDS) {
            // More than the write that yielded offered: the batch grew.
            assert!(w.as_mut().poll_write(&mut cx, b"yy").is_ready());
            assert!(w.as_mut().poll_flush(&mut cx).is_pending(), "yield {n}");
        }
        assert!(w.as_mut().poll_write(&mut cx, b"y").is_ready());
        assert!(w.as_mut().poll_flush(&mut cx).is_ready());
        assert!(w.held.is_empty());
        // A write larger than what may be held goes out with what was held.
        assert!(w.as_mut().poll_write(&mut cx, b"z").is_pending());
        assert!(w.as_mut().poll_write(&mut cx, b"z").is_ready());
        let huge = vec![8u8; HOLD_BYTES + 1];
        assert!(matches!(w.as_mut().poll_write(&mut cx, &huge), Poll::Ready(Ok(n)) if n > 0));
        assert!(w.held.is_empty());
    }
}
