//! `/api/events`: the registry's changes as Server-Sent Events, for the
//! dashboard. The stream listens to changes before it says `ready`, so a
//! client that reads the registry after `ready` misses nothing; `resync`
//! says changes were missed (read the registry again).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use http_body::Frame;
use serde_json::json;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::registry::may_read;
use crate::auth::{Auth, Caller};
use crate::store::{Change, ChangeEvent, StoreEvent};

/// How often an idle stream sends a comment, so that proxies and the
/// browser keep it open and a dead client is noticed.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Who reads the stream, re-checked against the auth file in force at
/// each event (a reload can take access away).
pub struct Reader {
    /// The auth file, when the server has one.
    pub auth: Option<Arc<Auth>>,
    /// The caller, when the server has an auth file.
    pub caller: Option<Caller>,
}

struct State {
    changes: broadcast::Receiver<StoreEvent>,
    reader: Reader,
    stopping: CancellationToken,
    keepalive: tokio::time::Interval,
    started: bool,
}

/// The event stream for `reader`, from `changes` (subscribed by the
/// caller before anything else), until `stopping`.
pub fn stream(
    changes: broadcast::Receiver<StoreEvent>,
    reader: Reader,
    stopping: CancellationToken,
) -> impl Stream<Item = Result<Frame<Bytes>, std::convert::Infallible>> + Send + 'static {
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = State {
        changes,
        reader,
        stopping,
        keepalive,
        started: false,
    };
    futures::stream::unfold(state, |mut s| async move {
        if !s.started {
            s.started = true;
            // The first tick completes at once: let it.
            s.keepalive.tick().await;
            return Some((Ok(Frame::data(frame("ready", "{}"))), s));
        }
        loop {
            let text = tokio::select! {
                () = s.stopping.cancelled() => return None,
                _ = s.keepalive.tick() => Bytes::from_static(b": keepalive\n\n"),
                event = s.changes.recv() => match event {
                    Ok(StoreEvent::Change(change)) => match s.reader.allowed(&change) {
                        Allowed::Yes => event_frame(&change),
                        Allowed::No => continue,
                        Allowed::Revoked => return None,
                    },
                    Ok(StoreEvent::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        frame("resync", "{}")
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            };
            return Some((Ok(Frame::data(text)), s));
        }
    })
}

enum Allowed {
    Yes,
    No,
    /// The caller is no longer in the auth file: the stream ends.
    Revoked,
}

impl Reader {
    fn allowed(&mut self, change: &ChangeEvent) -> Allowed {
        let (Some(auth), Some(caller)) = (&self.auth, &self.caller) else {
            return Allowed::Yes;
        };
        let Some(now) = auth.policy().again(caller) else {
            return Allowed::Revoked;
        };
        let yes = may_read(Some(&now), change.change.key());
        self.caller = Some(now);
        if yes { Allowed::Yes } else { Allowed::No }
    }
}

/// One event's frame.
fn event_frame(change: &ChangeEvent) -> Bytes {
    let node = |kind: &str, n| {
        let data = json!({"node": super::json::node(n), "revision": change.revision});
        frame(kind, &data.to_string())
    };
    let service = |kind: &str, key: &crate::model::ServiceKey| {
        let data = json!({"group": key.group, "service": key.service});
        frame(kind, &data.to_string())
    };
    match &change.change {
        Change::NodeAdded(n) => node("node_added", n),
        Change::NodeUpdated(n) => node("node_updated", n),
        Change::NodeRemoved(n) => node("node_removed", n),
        Change::NodeExpired(n) => node("node_expired", n),
        Change::ServiceRegistered(s) => service("service_registered", &s.key),
        Change::ServiceUpdated(s) => service("service_updated", &s.key),
        Change::ServiceRemoved(s) => service("service_removed", &s.key),
    }
}

/// An SSE frame; `data` is one line of JSON.
fn frame(event: &str, data: &str) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}
