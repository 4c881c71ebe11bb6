//! The reload trigger: one signal (SIGHUP in the CLI) that every reloadable
//! part of the server (the TLS certificate, and whatever else reads a file)
//! follows.

use std::sync::Arc;

use tokio::sync::watch;

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
