//! The signals: the one that stops `serve`, `agent` and `watch`, and
//! SIGHUP, which makes `serve` reload its files.

use crate::server::Reload;

/// Completes on SIGINT or SIGTERM.
pub(super) async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the server");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
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
