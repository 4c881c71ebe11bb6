//! The reload trigger: one signal (SIGHUP in the CLI) that every reloadable
//! part of the server (the TLS certificate, and whatever else reads a file)
//! follows.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A shared "reload now" trigger. Cheap to clone; clones trigger the same
/// reloads. Each reloadable part [`subscribe`](Reload::subscribe)s and
/// reloads whenever the counter changes, so one [`trigger`](Reload::trigger)
/// reaches all of them, however many there are; a part that is busy when
/// two triggers come reloads once, which is all a reload needs.
#[derive(Debug, Clone)]
pub struct Reload {
    count: Arc<watch::Sender<u64>>,
}

impl Default for Reload {
    fn default() -> Self {
        Self {
            count: Arc::new(watch::channel(0).0),
        }
    }
}

impl Reload {
    /// A trigger nobody has subscribed to yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every subscriber to reload now.
    pub fn trigger(&self) {
        self.count.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver whose `changed()` completes after each later trigger.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.count.subscribe()
    }
}

/// How often a followed file is read to see whether it changed.
pub(crate) const POLL: Duration = Duration::from_secs(2);

/// A part of the server that reads files and can read them again.
pub(crate) trait Reloadable: Send + Sync + 'static {
    /// Reads the files again if they changed since the last look; a
    /// failure keeps what is in force and is logged by the part.
    fn reload_if_changed(&self);
    /// Reads the files again whether or not they changed (a trigger).
    fn reload_forced(&self);
}

/// Keeps `part` following its files until `stop` is cancelled: a look
/// every [`POLL`] (which catches edits and Kubernetes' symlink swaps alike),
/// and a reload at once on every trigger of `reload`. Reads run on the
/// blocking pool: a file on a slow mount must not hold up a worker.
pub(crate) async fn follow<R: Reloadable>(
    part: Arc<R>,
    mut reload: watch::Receiver<u64>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut triggers = true;
    loop {
        let forced = tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => false,
            changed = reload.changed(), if triggers => match changed {
                Ok(()) => true,
                // Nobody can trigger any more: polling goes on.
                Err(_) => {
                    triggers = false;
                    continue;
                }
            },
        };
        let part = part.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if forced {
                part.reload_forced();
            } else {
                part.reload_if_changed();
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_trigger_reaches_every_subscriber() {
        let reload = Reload::new();
        let (mut a, mut b) = (reload.subscribe(), reload.clone().subscribe());
        assert!(!a.has_changed().unwrap());
        reload.trigger();
        a.changed().await.unwrap();
        b.changed().await.unwrap();
    }
}
