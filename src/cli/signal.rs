//! The signals: the one that stops `serve`, `agent` and `watch`, and
//! SIGHUP, which makes `serve` reload its files.

use crate::server::Reload;

/// Completes on SIGINT or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled: a signal that comes while
/// the server is still starting (checking Redis, binding) then stops it
/// cleanly instead of killing it by the signal's default action. Call from
/// within the runtime.
pub(super) fn shutdown() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut int), Ok(mut term)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                (int, term) => {
                    let e = int.err().or(term.err()).map(|e| e.to_string());
                    tracing::warn!(error = ?e, "cannot listen for SIGINT and SIGTERM; falling back to Ctrl-C only");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Fires `reload` on every SIGHUP, for as long as the process runs (a task
/// of the current runtime). Without it SIGHUP would end the process.
pub(super) fn reload_on_sighup(reload: Reload) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; files are still reloaded when they change");
                return;
            }
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading");
                reload.trigger();
            }
        });
    }
    #[cfg(not(unix))]
    let _ = reload;
}
