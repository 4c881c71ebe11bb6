//! The stream of accepted connections the server runs on, made safe at the
//! open-file limit (issue 11).
//!
//! tonic's [`TcpIncoming`] yields accept errors as `Err` items, and
//! `serve_with_incoming_shutdown` logs them at trace level and polls again
//! at once. At EMFILE/ENFILE the pending connection stays in the backlog,
//! the listener stays readable and every accept fails the same way: the
//! loop spins a core, new clients hang and nothing shows at the default
//! level. [`Accepting`] wraps it: it never yields an error, waits
//! [`BACKOFF`] after one that is not the connection's own, and logs a warn
//! line at most once per [`WARN_EVERY`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_stream::Stream;
use tonic::transport::server::TcpIncoming;

/// How long accepting pauses after an error that is not one connection's:
/// long enough that a full fd table costs no CPU, short enough that a
/// freed descriptor is used soon.
pub(crate) const BACKOFF: Duration = Duration::from_millis(50);

/// At most one warn line per this long, so a server at its limit does not
/// flood its log at 20 lines a second.
pub(crate) const WARN_EVERY: Duration = Duration::from_secs(1);

/// [`TcpIncoming`] (which sets TCP_NODELAY and keepalive on each accepted
/// socket) without its error items: see the module documentation.
pub(crate) struct Accepting {
    inner: TcpIncoming,
    /// Set after an error that will recur at once if accept is retried.
    backoff: Option<Pin<Box<Sleep>>>,
    log: ErrorLog,
}

impl Accepting {
    /// Wraps `inner`.
    pub(crate) fn new(inner: TcpIncoming) -> Self {
        Self {
            inner,
            backoff: None,
            log: ErrorLog::default(),
        }
    }

    /// Counts and maybe logs `e`; arms the back-off unless `e` was only
    /// about the connection being accepted.
    fn on_error(&mut self, e: &io::Error) {
        let per_connection = is_per_connection(e);
        if per_connection {
            // The client gave up before we accepted it: nothing is wrong
            // with the server, and the next accept is a different client.
            tracing::debug!(error = %e, "accepting a connection failed");
        } else {
            self.backoff = Some(Box::pin(tokio::time::sleep(BACKOFF)));
        }
        if let Some(errors) = self.log.record(Instant::now(), !per_connection) {
            tracing::warn!(
                "accepting connections failed, retrying every {BACKOFF:?}: {e}{}; {errors} accept errors since the last such line",
                hint(e)
            );
        }
    }
}

impl Stream for Accepting {
    type Item = io::Result<TcpStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Every field is Unpin (the sleep is boxed).
        let this = self.get_mut();
        loop {
            if let Some(sleep) = this.backoff.as_mut() {
                ready!(sleep.as_mut().poll(cx));
                this.backoff = None;
            }
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                Some(Err(e)) => this.on_error(&e),
                other => return Poll::Ready(other),
            }
        }
    }
}

/// Whether `e` concerns only the connection accept was taking (it was
/// reset or aborted while queued), so the next accept may well succeed.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

/// What to do about `e`, when it is the open-file limit.
fn hint(e: &io::Error) -> &'static str {
    #[cfg(unix)]
    match e.raw_os_error() {
        Some(libc::EMFILE) => {
            return " (the process's open-file limit: raise it with `ulimit -n`, LimitNOFILE= in a systemd unit or --ulimit nofile= with docker)";
        }
        Some(libc::ENFILE) => return " (the system-wide open-file limit: fs.file-max)",
        _ => {}
    }
    let _ = e;
    ""
}

/// Rate limit of the accept warn line: counts errors between lines.
#[derive(Debug, Default)]
pub(crate) struct ErrorLog {
    /// Errors since the last line, this one included once recorded.
    since_last: u64,
    /// When the last line was written.
    last: Option<Instant>,
}

impl ErrorLog {
    /// Counts one error at `now`. Returns the count to log, and starts a
    /// new count, when `serious` and no line was written in the last
    /// [`WARN_EVERY`]; per-connection errors are only counted.
    pub(crate) fn record(&mut self, now: Instant, serious: bool) -> Option<u64> {
        self.since_last += 1;
        let due = self
            .last
            .is_none_or(|last| now.duration_since(last) >= WARN_EVERY);
        if !(serious && due) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.since_last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_at_most_once_per_second_with_the_count_since_the_last_line() {
        let mut log = ErrorLog::default();
        let t0 = Instant::now();
        assert_eq!(log.record(t0, true), Some(1), "the first error is logged");
        for i in 1..20 {
            let at = t0 + BACKOFF * i;
            assert_eq!(log.record(at, true), None, "error {i} within a second");
        }
        assert_eq!(log.record(t0 + WARN_EVERY, true), Some(20));
        assert_eq!(log.record(t0 + WARN_EVERY * 3, true), Some(1));
    }

    #[test]
    fn per_connection_errors_are_counted_but_never_logged() {
        let mut log = ErrorLog::default();
        let t0 = Instant::now();
        assert_eq!(log.record(t0, false), None);
        assert_eq!(log.record(t0, false), None);
        assert_eq!(log.record(t0, true), Some(3));
    }

    #[test]
    fn only_connection_errors_are_per_connection() {
        let aborted = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert!(is_per_connection(&aborted));
        #[cfg(unix)]
        {
            let emfile = io::Error::from_raw_os_error(libc::EMFILE);
            assert!(!is_per_connection(&emfile));
            assert!(hint(&emfile).contains("ulimit -n"));
        }
    }
}
