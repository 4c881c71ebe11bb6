//! The client commands of `discovered`: register, look up, remove and
//! watch services and nodes on a running server, through
//! [`crate::client::Client`].
//!
//! Every command takes `--server` (host:port or an http:// or https://
//! URL, env `DISCOVERED_SERVER`), the TLS and token flags of
//! [`super::connect`] and `--output table|json`; all but `remove-group`
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
//!
//! Each command is its flags plus a [`Command::run`] that makes its calls
//! and returns what to print, in one file per family (`service`, `node`,
//! `group`, `watch`); connecting, printing and exit codes are done here,
//! once.

mod group;
mod node;
mod service;
mod watch;

use std::process::ExitCode;

use clap::{Args, Subcommand};
use futures::StreamExt;
use tonic::Code;

use super::connect::ConnectArgs;
use super::output::{Output, Printed};
use super::runtime::{self, Threads};
use crate::client::{Client, ClientError};
use crate::proto::code_name;

/// Where to connect and how to print.
#[derive(Debug, Args)]
pub struct Conn {
    /// The discovered server: host:port or an http:// or https:// URL
    /// (host:port speaks TLS when --tls-ca is given).
    #[arg(long, env = "DISCOVERED_SERVER", default_value = "127.0.0.1:50051")]
    server: String,

    #[command(flatten)]
    connect: ConnectArgs,

    /// Output format: aligned columns for people, or JSON for scripts
    /// (timestamps as RFC 3339 UTC strings).
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

impl Conn {
    /// Connects now: a server that cannot be reached fails the command
    /// before anything is sent.
    async fn connect(&self) -> Result<Client, ClientError> {
        Client::connect_with(&self.server, &self.connect.options()?).await
    }
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
    RegisterService(service::RegisterServiceArgs),
    /// Register a node of a service, or replace its record whole.
    RegisterNode(node::RegisterNodeArgs),
    /// Renew a node's TTL.
    Heartbeat(node::HeartbeatArgs),
    /// Show a service's record.
    GetService(service::GetServiceArgs),
    /// List the live nodes of a service.
    Nodes(node::NodesArgs),
    /// List the services of a group.
    Services(service::ServicesArgs),
    /// List the service groups.
    Groups(group::GroupsArgs),
    /// Remove one node.
    RemoveNode(node::RemoveNodeArgs),
    /// Remove a service with all its nodes.
    RemoveService(service::RemoveServiceArgs),
    /// Remove a service group with all its services and nodes.
    RemoveGroup(group::RemoveGroupArgs),
    /// Print the nodes of a service (or of every service in the group), then
    /// every change, one line per event, until interrupted.
    Watch(watch::WatchArgs),
}

/// A client command that answers once: its calls, and the result to print.
trait Command {
    /// Where to connect and how to print.
    fn conn(&self) -> &Conn;

    /// Makes the command's calls on `client`.
    async fn run(self, client: &Client) -> Result<Printed, ClientError>;
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

/// Runs `cmd` on its own connection: one line per command.
async fn dispatch(cmd: ClientCommand) -> Result<(), ClientError> {
    match cmd {
        ClientCommand::RegisterService(a) => once(a).await,
        ClientCommand::RegisterNode(a) => once(a).await,
        ClientCommand::Heartbeat(a) => once(a).await,
        ClientCommand::GetService(a) => once(a).await,
        ClientCommand::Nodes(a) => once(a).await,
        ClientCommand::Services(a) => once(a).await,
        ClientCommand::Groups(a) => once(a).await,
        ClientCommand::RemoveNode(a) => once(a).await,
        ClientCommand::RemoveService(a) => once(a).await,
        ClientCommand::RemoveGroup(a) => once(a).await,
        ClientCommand::Watch(a) => follow(a).await,
    }
}

/// Connects, runs `cmd` and prints its result.
async fn once(cmd: impl Command) -> Result<(), ClientError> {
    let output = cmd.conn().output;
    let client = cmd.conn().connect().await?;
    cmd.run(&client).await?.print(output);
    Ok(())
}

/// Connects and prints each event of the watch as it comes, until the
/// stream ends or SIGINT/SIGTERM (a success: that is how a watch stops).
async fn follow(args: watch::WatchArgs) -> Result<(), ClientError> {
    let output = args.conn.output;
    let client = args.conn.connect().await?;
    let events = args.run(&client);
    let stop = super::signal::shutdown();
    tokio::pin!(events, stop);
    loop {
        let event = tokio::select! {
            _ = &mut stop => return Ok(()),
            e = events.next() => e,
        };
        match event {
            Some(printed) => printed?.print(output),
            None => return Ok(()),
        }
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
        // A status tonic made of a failed connection says only "transport
        // error": its causes say why (a refused client certificate, say).
        ClientError::Status(s) => {
            let mut message = s.message().to_string();
            let mut source = std::error::Error::source(s);
            while let Some(cause) = source {
                let text = cause.to_string();
                if !message.contains(&text) {
                    message = format!("{message}: {text}");
                }
                source = cause.source();
            }
            message
        }
        other => other.to_string(),
    };
    let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
    format!("{}: {message}", code_name(e.code()))
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
