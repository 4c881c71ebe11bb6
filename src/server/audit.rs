//! The audit log (issue 12): one line for every call that changes the
//! registry, whether it was allowed or not.
//!
//! Lines go to the `discovered::audit` target at info level (so
//! `RUST_LOG=info` shows them and `RUST_LOG=warn,discovered::audit=info`
//! shows only them) with: `who` (the token's name or the certificate
//! identity from the auth file, `anonymous` without one), `from` (the
//! client's address), `call` (the RPC), `what` (group, service, node) and
//! `outcome` (`ok`, or the status code and its message). Never a secret:
//! callers are named by their entries' names, and no request field that
//! can hold one (credentials, metadata) is written. Heartbeats, and
//! registrations of exactly what is there, renew a deadline and change
//! nothing registered, so they have no line.

use std::fmt::Display;
use std::net::SocketAddr;

use tonic::Status;

use crate::auth::Caller;

/// The target of audit lines.
pub const TARGET: &str = "discovered::audit";

/// Who makes a change and from where, taken from the request before the
/// handler consumes it.
pub(crate) struct Audit {
    who: String,
    from: Option<SocketAddr>,
    call: &'static str,
}

impl Audit {
    /// The audit of `call` by `caller` (`None` without an auth file) from
    /// `from`.
    pub(crate) fn new(
        call: &'static str,
        caller: Option<&Caller>,
        from: Option<SocketAddr>,
    ) -> Self {
        Self {
            who: caller.map_or_else(|| "anonymous".into(), |c| c.name.clone()),
            from,
            call,
        }
    }

    /// Writes the line of the call on `what`, ended by `result`.
    pub(crate) fn record<T>(&self, what: &dyn Display, result: &Result<T, Status>) {
        let outcome = match result {
            Ok(_) => "ok".to_string(),
            Err(status) => format!("{:?}: {}", status.code(), status.message()),
        };
        tracing::info!(
            target: TARGET,
            who = %self.who,
            from = %self.from.map_or_else(|| "unknown".into(), |a| a.to_string()),
            call = self.call,
            what = %what,
            outcome,
            "registry change"
        );
    }

    /// Passes `check` on, writing a line first when it refused the call.
    pub(crate) fn check(
        &self,
        what: &dyn Display,
        check: Result<(), Status>,
    ) -> Result<(), Status> {
        if check.is_err() {
            self.record(what, &check);
        }
        check
    }
}

/// `group/service` or `group/service/node`, for the `what` of a line.
pub(crate) fn what(group: &str, service: Option<&str>, node: Option<&str>) -> String {
    [Some(group), service, node]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("/")
}
