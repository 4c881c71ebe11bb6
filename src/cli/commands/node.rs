//! `register-node`, `heartbeat`, `nodes` and `remove-node`.

use clap::Args;

use super::{Command, Conn, Group};
use crate::cli::output::{self, Printed};
use crate::cli::parse_meta;
use crate::client::{Client, ClientError};
use crate::proto::v1 as pb;

/// Flags of `discovered register-node`.
#[derive(Debug, Args)]
pub struct RegisterNodeArgs {
    /// The service the node belongs to.
    service: String,
    /// The node's name.
    node: String,
    /// An address of the node (IPv4 or IPv6); repeat for more. Without any,
    /// the server records the address the call comes from (unless started
    /// with --no-auto).
    #[arg(long = "ip", value_name = "ADDR")]
    ip: Vec<String>,
    /// The port the node serves on.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=65535))]
    port: u32,
    /// Seconds until the node expires unless registered again or
    /// heartbeated; 0 or less: never. Absent: the server's default.
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    ttl: Option<i64>,
    /// The registrant's identity for this life of the node; heartbeat and
    /// remove-node that give it act only on this registration. Absent: the
    /// server makes one (printed in the INSTANCE column).
    #[arg(long, value_name = "ID", default_value = "", hide_default_value = true)]
    instance_id: String,
    /// A label, as key=value; repeat for more.
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
    meta: Vec<(String, String)>,
    /// Fill what the flags leave out with this machine's facts: addresses,
    /// fqdn, OS, platform, architecture, CPUs, memory, boot time and
    /// metadata kernel_version. Explicit flags win.
    #[arg(long)]
    auto: bool,
    #[command(flatten)]
    group: Group,
    #[command(flatten)]
    conn: Conn,
}

impl Command for RegisterNodeArgs {
    fn conn(&self) -> &Conn {
        &self.conn
    }

    async fn run(self, client: &Client) -> Result<Printed, ClientError> {
        let mut req = pb::RegisterNodeRequest {
            service_group: self.group.group,
            service_name: self.service,
            node_name: self.node,
            ip: self.ip,
            port: self.port,
            metadata: self.meta.into_iter().collect(),
            ttl_seconds: self.ttl,
            instance_id: self.instance_id,
            ..Default::default()
        };
        if self.auto {
            crate::agent::with_host_facts(&mut req);
        }
        let node = client.register_node(req).await?;
        Ok(output::node(&node))
    }
}

/// Flags of `discovered heartbeat`.
#[derive(Debug, Args)]
pub struct HeartbeatArgs {
    /// The service the node belongs to.
    service: String,
    /// The node's name.
    node: String,
    /// The TTL from now on, in seconds; 0 or less: the node no longer
    /// expires. Absent: the server's default.
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    ttl: Option<i64>,
    /// Renew only if the node is this instance's registration
    /// (FAILED_PRECONDITION, exit code 6, otherwise).
    #[arg(long, value_name = "ID", default_value = "", hide_default_value = true)]
    instance_id: String,
    #[command(flatten)]
    group: Group,
    #[command(flatten)]
    conn: Conn,
}

impl Command for HeartbeatArgs {
    fn conn(&self) -> &Conn {
        &self.conn
    }

    async fn run(self, client: &Client) -> Result<Printed, ClientError> {
        let expires = client
            .heartbeat(
                &self.group.group,
                &self.service,
                &self.node,
                self.ttl,
                &self.instance_id,
            )
            .await?;
        Ok(output::renewed(&self.service, &self.node, &expires))
    }
}

/// Flags of `discovered nodes`.
#[derive(Debug, Args)]
pub struct NodesArgs {
    /// The service's name.
    service: String,
    #[command(flatten)]
    group: Group,
    #[command(flatten)]
    conn: Conn,
}

impl Command for NodesArgs {
    fn conn(&self) -> &Conn {
        &self.conn
    }

    async fn run(self, client: &Client) -> Result<Printed, ClientError> {
        let nodes = client.get_nodes(&self.group.group, &self.service).await?;
        Ok(output::nodes(&nodes))
    }
}

/// Flags of `discovered remove-node`.
#[derive(Debug, Args)]
pub struct RemoveNodeArgs {
    /// The service the node belongs to.
    service: String,
    /// The node's name.
    node: String,
    /// Remove the node only if it is this instance's registration
    /// (FAILED_PRECONDITION, exit code 6, otherwise).
    #[arg(long, value_name = "ID", default_value = "", hide_default_value = true)]
    instance_id: String,
    /// Succeed (exit code 0, removed=false) when the node does not exist.
    #[arg(long)]
    allow_missing: bool,
    #[command(flatten)]
    group: Group,
    #[command(flatten)]
    conn: Conn,
}

impl Command for RemoveNodeArgs {
    fn conn(&self) -> &Conn {
        &self.conn
    }

    async fn run(self, client: &Client) -> Result<Printed, ClientError> {
        let removed = client
            .remove_node(pb::RemoveNodeRequest {
                service_group: self.group.group,
                service_name: self.service,
                node_name: self.node.clone(),
                allow_missing: self.allow_missing,
                instance_id: self.instance_id,
            })
            .await?;
        Ok(output::node_removed(&self.node, removed))
    }
}
