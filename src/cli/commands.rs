//! The client commands of `discovered`: register, look up, remove and
//! watch services and nodes on a running server, through
//! [`crate::client::Client`].
//!
//! Every command takes `--server` (host:port or an http:// URL, env
//! `DISCOVERED_SERVER`) and `--output table|json`; all but `remove-group`
//! take `--group` (env `DISCOVERED_GROUP`; empty means the server's default
//! group). Results go to stdout (see [`super::output`] for the JSON shapes;
//! timestamps are RFC 3339 strings in UTC).
//!
//! A failed call prints the gRPC status as one line on stderr, e.g.
//! `error: NOT_FOUND: service "x" not found`, and exits with:
//!
//! | exit code | meaning                                              |
//! |-----------|------------------------------------------------------|
//! | 0         | success (`watch`: interrupted with SIGINT/SIGTERM)   |
//! | 1         | any other gRPC status, or a local failure            |
//! | 2         | command-line usage error (from clap)                 |
//! | 3         | NOT_FOUND                                            |
//! | 4         | INVALID_ARGUMENT (also a malformed --server address) |
//! | 5         | UNAVAILABLE, including "cannot connect to the server"|
//! | 6         | FAILED_PRECONDITION (e.g. wrong --instance-id)       |

use std::collections::HashMap;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use futures::StreamExt;
use serde_json::{Value, json};
use tonic::Code;

use super::output::{self, Output, emit};
use super::parse_meta;
use super::runtime::{self, Threads};
use crate::client::{Client, ClientError, Event};
use crate::proto::v1 as pb;

/// Where to connect and how to print.
#[derive(Debug, Args)]
pub struct Conn {
    /// The discovered server: host:port or an http:// URL.
    #[arg(long, env = "DISCOVERED_SERVER", default_value = "127.0.0.1:50051")]
    server: String,

    /// Output format: aligned columns for people, or JSON for scripts
    /// (timestamps as RFC 3339 UTC strings).
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

/// The service group to act in.
#[derive(Debug, Args)]
pub struct Group {
    /// The service group; empty means the server's default group.
    #[arg(
        long,
        env = "DISCOVERED_GROUP",
        default_value = "",
        hide_default_value = true
    )]
    group: String,
}

/// The client commands (flattened into the top-level command list).
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Register a service, or replace its record whole.
    RegisterService(RegisterServiceArgs),
    /// Register a node of a service, or replace its record whole.
    RegisterNode(RegisterNodeArgs),
    /// Renew a node's TTL.
    Heartbeat(HeartbeatArgs),
    /// Show a service's record.
    GetService(GetServiceArgs),
    /// List the live nodes of a service.
    Nodes(NodesArgs),
    /// List the services of a group.
    Services(ServicesArgs),
    /// List the service groups.
    Groups(GroupsArgs),
    /// Remove one node.
    RemoveNode(RemoveNodeArgs),
    /// Remove a service with all its nodes.
    RemoveService(RemoveServiceArgs),
    /// Remove a service group with all its services and nodes.
    RemoveGroup(RemoveGroupArgs),
    /// Print the nodes of a service (or of every service in the group), then
    /// every change, one line per event, until interrupted.
    Watch(WatchArgs),
}

/// Flags of `discovered register-service`.
#[derive(Debug, Args)]
pub struct RegisterServiceArgs {
    /// The service's name.
    name: String,
    /// Where the service is offered, e.g. a URL or host:port.
    #[arg(long, default_value = "", hide_default_value = true)]
    endpoint: String,
    /// A descriptive type for the endpoint, e.g. "http" or "grpc".
    #[arg(long, default_value = "", hide_default_value = true)]
    endpoint_type: String,
    /// The kind of authentication the endpoint requires, e.g. "basic".
    #[arg(long, default_value = "", hide_default_value = true)]
    auth_type: String,
    /// Credentials for the endpoint (returned only to get-service
    /// --reveal-credentials).
    #[arg(long, default_value = "", hide_default_value = true)]
    auth_credentials: String,
    /// A descriptive label for the backend behind the service.
    #[arg(long, default_value = "", hide_default_value = true)]
    backend: String,
    /// A human-readable description.
    #[arg(long, default_value = "", hide_default_value = true)]
    description: String,
    /// A label, as key=value; repeat for more.
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
    meta: Vec<(String, String)>,
    #[command(flatten)]
    group: Group,
    #[command(flatten)]
    conn: Conn,
}

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

/// Flags of `discovered get-service`.
#[derive(Debug, Args)]
pub struct GetServiceArgs {
    /// The service's name.
    name: String,
    /// Show the service's auth credentials (hidden otherwise).
    #[arg(long)]
    reveal_credentials: bool,
    #[command(flatten)]
    group: Group,
    #[command(flatten)]
    conn: Conn,
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

/// Flags of `discovered services`.
#[derive(Debug, Args)]
pub struct ServicesArgs {
    #[command(flatten)]
    group: Group,
    #[command(flatten)]
    conn: Conn,
}

/// Flags of `discovered groups`.
#[derive(Debug, Args)]
pub struct GroupsArgs {
    #[command(flatten)]
    conn: Conn,
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

/// Flags of `discovered remove-service`.
#[derive(Debug, Args)]
pub struct RemoveServiceArgs {
    /// The service's name.
    name: String,
    /// Succeed (exit code 0, removed=false) when the service does not exist.
    #[arg(long)]
    allow_missing: bool,
    #[command(flatten)]
    group: Group,
    #[command(flatten)]
    conn: Conn,
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

/// Flags of `discovered watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The service to watch; absent: every service in the group.
    service: Option<String>,
    #[command(flatten)]
    group: Group,
    #[command(flatten)]
    conn: Conn,
}

/// The proto name of a gRPC status code, e.g. `NOT_FOUND`.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The exit code for a failed call (see the table in the module docs).
fn exit_code(code: Code) -> u8 {
    match code {
        Code::NotFound => 3,
        Code::InvalidArgument => 4,
        Code::Unavailable => 5,
        Code::FailedPrecondition => 6,
        _ => 1,
    }
}

/// `CODE: message` on one line.
fn error_line(e: &ClientError) -> String {
    let message = match e {
        ClientError::Status(s) => s.message().to_string(),
        other => other.to_string(),
    };
    let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
    format!("{}: {message}", code_name(e.code()))
}

/// Runs a client command; returns the process exit code.
pub fn run(cmd: ClientCommand) -> ExitCode {
    runtime::block_on(Threads::One, async {
        match dispatch(cmd).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => runtime::fail(error_line(&e), ExitCode::from(exit_code(e.code()))),
        }
    })
}

fn print(output: Output, json: Value, table: impl FnOnce() -> String) {
    match output {
        Output::Json => emit(&json.to_string()),
        Output::Table => emit(&table()),
    }
}

fn metadata(meta: Vec<(String, String)>) -> HashMap<String, String> {
    meta.into_iter().collect()
}

async fn dispatch(cmd: ClientCommand) -> Result<(), ClientError> {
    match cmd {
        ClientCommand::RegisterService(a) => {
            let client = Client::connect(&a.conn.server).await?;
            let service = client
                .register_service(pb::RegisterServiceRequest {
                    service_group: a.group.group,
                    service_name: a.name,
                    endpoint: a.endpoint,
                    endpoint_type: a.endpoint_type,
                    auth_type: a.auth_type,
                    auth_credentials: a.auth_credentials,
                    backend: a.backend,
                    description: a.description,
                    metadata: metadata(a.meta),
                })
                .await?;
            print(a.conn.output, output::service_json(&service), || {
                output::service_table(&service)
            });
        }
        ClientCommand::RegisterNode(a) => {
            let client = Client::connect(&a.conn.server).await?;
            let mut req = pb::RegisterNodeRequest {
                service_group: a.group.group,
                service_name: a.service,
                node_name: a.node,
                ip: a.ip,
                port: a.port,
                metadata: metadata(a.meta),
                ttl_seconds: a.ttl,
                instance_id: a.instance_id,
                ..Default::default()
            };
            if a.auto {
                crate::agent::with_host_facts(&mut req);
            }
            let node = client.register_node(req).await?;
            print(a.conn.output, output::node_json(&node), || {
                output::nodes_table(std::slice::from_ref(&node))
            });
        }
        ClientCommand::Heartbeat(a) => {
            let client = Client::connect(&a.conn.server).await?;
            let expires = client
                .heartbeat(&a.group.group, &a.service, &a.node, a.ttl, &a.instance_id)
                .await?;
            let json = json!({
                "service_name": a.service,
                "node_name": a.node,
                "expires_at": output::time_json(&expires),
            });
            print(a.conn.output, json, || {
                let when = expires
                    .as_ref()
                    .map_or_else(|| "never".to_string(), output::rfc3339);
                output::table(&["NAME", "EXPIRES"], &[vec![a.node.clone(), when]])
            });
        }
        ClientCommand::GetService(a) => {
            let client = Client::connect(&a.conn.server).await?;
            let service = client
                .get_service(&a.group.group, &a.name, a.reveal_credentials)
                .await?;
            print(a.conn.output, output::service_json(&service), || {
                output::service_table(&service)
            });
        }
        ClientCommand::Nodes(a) => {
            let client = Client::connect(&a.conn.server).await?;
            let nodes = client.get_nodes(&a.group.group, &a.service).await?;
            let json = Value::Array(nodes.iter().map(output::node_json).collect());
            print(a.conn.output, json, || output::nodes_table(&nodes));
        }
        ClientCommand::Services(a) => {
            let client = Client::connect(&a.conn.server).await?;
            let names = client.list_services(&a.group.group).await?;
            print(a.conn.output, json!(names), || {
                output::names_table("SERVICE", &names)
            });
        }
        ClientCommand::Groups(a) => {
            let client = Client::connect(&a.conn.server).await?;
            let names = client.list_groups().await?;
            print(a.conn.output, json!(names), || {
                output::names_table("GROUP", &names)
            });
        }
        ClientCommand::RemoveNode(a) => {
            let client = Client::connect(&a.conn.server).await?;
            let removed = client
                .remove_node(pb::RemoveNodeRequest {
                    service_group: a.group.group,
                    service_name: a.service,
                    node_name: a.node.clone(),
                    allow_missing: a.allow_missing,
                    instance_id: a.instance_id,
                })
                .await?;
            print(a.conn.output, json!({ "removed": removed }), || {
                if removed {
                    format!("removed node {}", a.node)
                } else {
                    format!("node {} did not exist", a.node)
                }
            });
        }
        ClientCommand::RemoveService(a) => {
            let client = Client::connect(&a.conn.server).await?;
            let r = client
                .remove_service(pb::RemoveServiceRequest {
                    service_group: a.group.group,
                    service_name: a.name.clone(),
                    allow_missing: a.allow_missing,
                })
                .await?;
            let json = json!({ "removed": r.removed, "nodes_removed": r.nodes_removed });
            print(a.conn.output, json, || {
                if r.removed {
                    format!(
                        "removed service {} with {} node(s)",
                        a.name, r.nodes_removed
                    )
                } else {
                    format!("service {} did not exist", a.name)
                }
            });
        }
        ClientCommand::RemoveGroup(a) => {
            let client = Client::connect(&a.conn.server).await?;
            let r = client
                .remove_group(pb::RemoveServiceGroupRequest {
                    service_group: a.group.clone(),
                    allow_missing: a.allow_missing,
                })
                .await?;
            let json = json!({ "removed": r.removed, "services_removed": r.services_removed });
            print(a.conn.output, json, || {
                if r.removed {
                    format!(
                        "removed group {} with {} service(s)",
                        a.group, r.services_removed
                    )
                } else {
                    format!("group {} did not exist", a.group)
                }
            });
        }
        ClientCommand::Watch(a) => watch(a).await?,
    }
    Ok(())
}

/// The event's name as in the proto, without the `EVENT_TYPE_` prefix.
fn event_name(e: &Event) -> &'static str {
    let name = e.event_type().as_str_name();
    name.strip_prefix("EVENT_TYPE_").unwrap_or(name)
}

/// One watch event as a JSON object: `type`, `group`, `service` (the
/// service name, null on markers of a group watch), and `node` (the node
/// record) on INITIAL/NODE_* or `service_record` on SERVICE_* events.
/// Markers (SYNCED, RESYNC) carry the group as given with --group.
fn event_json(e: &Event, group: &str, service: Option<&str>) -> Value {
    let mut v = json!({ "type": event_name(e) });
    let (g, s): (String, Option<String>) = match e {
        Event::Initial(n)
        | Event::NodeAdded(n)
        | Event::NodeUpdated(n)
        | Event::NodeRemoved(n)
        | Event::NodeExpired(n) => {
            v["node"] = output::node_json(n);
            (n.service_group.clone(), Some(n.service_name.clone()))
        }
        Event::ServiceRegistered(r) | Event::ServiceUpdated(r) | Event::ServiceRemoved(r) => {
            v["service_record"] = output::service_json(r);
            (r.service_group.clone(), Some(r.service_name.clone()))
        }
        Event::Synced | Event::Resync => (group.to_string(), service.map(str::to_string)),
    };
    v["group"] = json!(g);
    v["service"] = json!(s);
    v
}

/// One watch event as a line of text.
fn event_text(e: &Event) -> String {
    let name = event_name(e);
    match e {
        Event::Initial(n)
        | Event::NodeAdded(n)
        | Event::NodeUpdated(n)
        | Event::NodeRemoved(n)
        | Event::NodeExpired(n) => format!(
            "{name:<18}  {}/{}  {}  {}  {}",
            n.service_group,
            n.service_name,
            n.node_name,
            if n.ip.is_empty() {
                "-".to_string()
            } else {
                n.ip.join(",")
            },
            n.port
        ),
        Event::ServiceRegistered(r) | Event::ServiceUpdated(r) | Event::ServiceRemoved(r) => {
            format!("{name:<18}  {}/{}", r.service_group, r.service_name)
        }
        Event::Synced | Event::Resync => name.to_string(),
    }
}

async fn watch(a: WatchArgs) -> Result<(), ClientError> {
    let client = Client::connect(&a.conn.server).await?;
    let service = a.service.clone().unwrap_or_default();
    let mut events = client.watch(&a.group.group, &service);
    let stop = super::signal::shutdown();
    tokio::pin!(stop);
    loop {
        let event = tokio::select! {
            _ = &mut stop => return Ok(()),
            e = events.next() => e,
        };
        let Some(event) = event else {
            return Ok(());
        };
        let event = event?;
        match a.conn.output {
            Output::Json => {
                emit(&event_json(&event, &a.group.group, a.service.as_deref()).to_string())
            }
            Output::Table => emit(&event_text(&event)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_table() {
        assert_eq!(exit_code(Code::NotFound), 3);
        assert_eq!(exit_code(Code::InvalidArgument), 4);
        assert_eq!(exit_code(Code::Unavailable), 5);
        assert_eq!(exit_code(Code::FailedPrecondition), 6);
        assert_eq!(exit_code(Code::Internal), 1);
    }

    #[test]
    fn errors_are_one_line() {
        let e = ClientError::Status(tonic::Status::not_found("no\nservice"));
        assert_eq!(error_line(&e), "NOT_FOUND: no service");
    }
}
