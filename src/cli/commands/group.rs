//! `groups` and `remove-group`.

use clap::Args;

use super::{Command, Conn};
use crate::cli::output::{self, Printed};
use crate::client::{Client, ClientError};
use crate::proto::v1 as pb;

/// Flags of `discovered groups`.
#[derive(Debug, Args)]
pub struct GroupsArgs {
    #[command(flatten)]
    conn: Conn,
}

impl Command for GroupsArgs {
    fn conn(&self) -> &Conn {
        &self.conn
    }

    async fn run(self, client: &Client) -> Result<Printed, ClientError> {
        let names = client.list_groups().await?;
        Ok(output::names("GROUP", &names))
    }
}

/// Flags of `discovered remove-group`.
#[derive(Debug, Args)]
pub struct RemoveGroupArgs {
    /// The group to remove (required: the default group is never implied).
    group: String,
    /// Succeed (exit code 0, removed=false) when the group does not exist.
    #[arg(long)]
    allow_missing: bool,
    #[command(flatten)]
    conn: Conn,
}

impl Command for RemoveGroupArgs {
    fn conn(&self) -> &Conn {
        &self.conn
    }

    async fn run(self, client: &Client) -> Result<Printed, ClientError> {
        let removed = client
            .remove_group(pb::RemoveServiceGroupRequest {
                service_group: self.group.clone(),
                allow_missing: self.allow_missing,
            })
            .await?;
        Ok(output::group_removed(&self.group, &removed))
    }
}
