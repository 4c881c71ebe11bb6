//! A future that is polled only after it has woken its task.
//!
//! A watch stream checks, on every poll, whether it must end (the server
//! is stopping, the caller's access was revoked). Polling those futures
//! each time an event passes is what cost most per stream and event with
//! 10,000 streams: a `CancellationToken` locks its tree's mutex, shared by
//! every stream, and a `Notified` locks its waiter list, on every poll.
//! [`OnWake`] polls its future once to register, and after that only when
//! the future itself has called its waker: the common poll costs two
//! atomic operations.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;

/// A boxed future and the waker it is polled with; see the module
/// documentation.
pub struct OnWake<T> {
    future: Pin<Box<dyn Future<Output = T> + Send>>,
    signal: Arc<Signal>,
    /// `signal` as a waker, made once.
    waker: Waker,
}

/// What the inner future wakes: it notes that it asked to be polled, then
/// wakes the task that polls the [`OnWake`].
#[derive(Default)]
struct Signal {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<T> OnWake<T> {
    /// Wraps `future`; the first poll polls it.
    pub fn new(future: impl Future<Output = T> + Send + 'static) -> Self {
        let signal = Arc::new(Signal {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Self {
            future: Box::pin(future),
            waker: Waker::from(signal.clone()),
            signal,
        }
    }

    /// Polls the future if it has woken since it was last polled (or was
    /// never polled); otherwise `Pending`, with `cx`'s waker kept for when
    /// it does.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<T> {
        // Register first: a wake between the check and the registration
        // would otherwise go to an old waker.
        self.signal.task.register(cx.waker());
        if !self.signal.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        self.future
            .as_mut()
            .poll(&mut Context::from_waker(&self.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A future that counts its polls and completes once `ready` is sent.
    fn counted(
        polls: Arc<AtomicUsize>,
        ready: tokio::sync::oneshot::Receiver<u32>,
    ) -> impl Future<Output = u32> + Send {
        let mut ready = ready;
        std::future::poll_fn(move |cx| {
            polls.fetch_add(1, Ordering::SeqCst);
            Pin::new(&mut ready).poll(cx).map(|r| r.unwrap_or(0))
        })
    }

    #[tokio::test]
    async fn polls_the_future_only_after_it_woke() {
        let polls = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut on_wake = OnWake::new(counted(polls.clone(), rx));
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(on_wake.poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1, "the first poll registers");
        for _ in 0..10 {
            assert!(on_wake.poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1, "not polled without a wake");
        tx.send(7).unwrap();
        assert_eq!(on_wake.poll(&mut cx), Poll::Ready(7));
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn its_wake_reaches_the_task_that_polled_last() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let mut on_wake = OnWake::new(async move { rx.await.unwrap_or(0) });
        let task = tokio::spawn(async move { std::future::poll_fn(|cx| on_wake.poll(cx)).await });
        tokio::task::yield_now().await;
        tx.send(3).unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .expect("the task was woken")
            .expect("the task ran");
        assert_eq!(got, 3);
    }
}
