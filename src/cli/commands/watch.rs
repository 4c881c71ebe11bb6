//! `watch`: the one command that prints until it is stopped.

use clap::Args;
use futures::{Stream, StreamExt};

use super::{Conn, Group};
use crate::cli::output::{self, Printed};
use crate::client::{Client, ClientError};

/// Flags of `discovered watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The service to watch; absent: every service in the group.
    service: Option<String>,
    #[command(flatten)]
    group: Group,
    #[command(flatten)]
    pub(super) conn: Conn,
}

impl WatchArgs {
    /// The watch's events, each ready to print. The stream does not end by
    /// itself (the client reopens a broken watch), only with an error the
    /// server gives for the request.
    pub(super) fn run(
        self,
        client: &Client,
    ) -> impl Stream<Item = Result<Printed, ClientError>> + use<> {
        let events = client.watch(&self.group.group, self.service.as_deref().unwrap_or(""));
        events.map(move |event| {
            event.map(|e| output::event(&e, &self.group.group, self.service.as_deref()))
        })
    }
}
