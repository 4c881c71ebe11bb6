//! `discovered agent`: keeps this machine's node registered.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::connect::ConnectArgs;
use super::logging::{self, LogFormat};
use super::parse_meta;
use super::runtime::{self, Threads};
use crate::agent::{self, AgentConfig};
use crate::proto::v1 as pb;

/// Flags of `discovered agent`. Each also reads an environment variable.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The discovered server: host:port or an http:// or https:// URL
    /// (host:port speaks TLS when --tls-ca is given).
    #[arg(long, env = "DISCOVERED_SERVER", default_value = "127.0.0.1:50051")]
    server: String,

    #[command(flatten)]
    connect: ConnectArgs,

    /// The service group; empty means the server's default group.
    #[arg(long, env = "DISCOVERED_GROUP", default_value = "")]
    group: String,

    /// The service this node belongs to.
    #[arg(long, env = "DISCOVERED_SERVICE")]
    service: String,

    /// The node's name [default: this machine's hostname].
    #[arg(long, env = "DISCOVERED_NODE")]
    node: Option<String>,

    /// The port the node serves on.
    #[arg(long, env = "DISCOVERED_PORT", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=65535))]
    port: u32,

    /// An address the node is reached at (an IP); repeat for more. Without
    /// it the machine's own addresses are found (with auto), and loopback
    /// is never among them.
    #[arg(
        long = "ip",
        value_name = "IP",
        env = "DISCOVERED_IP",
        value_delimiter = ','
    )]
    ip: Vec<String>,

    /// The node's TTL in seconds (at least 1); the agent heartbeats every
    /// third of it.
    #[arg(long, env = "DISCOVERED_TTL", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    ttl: u64,

    /// A label, as key=value; repeat for more.
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
    meta: Vec<(String, String)>,

    /// Do not discover this machine's facts (addresses, OS, CPUs, memory,
    /// boot time); register only what the flags say.
    #[arg(long, env = "DISCOVERED_NO_AUTO")]
    no_auto: bool,

    /// The region the node runs in (its locality, with --zone and
    /// --sub-zone).
    #[arg(long, env = "DISCOVERED_REGION", default_value = "")]
    region: String,

    /// The zone within the region.
    #[arg(long, env = "DISCOVERED_ZONE", default_value = "")]
    zone: String,

    /// The sub-zone within the zone.
    #[arg(long, env = "DISCOVERED_SUB_ZONE", default_value = "")]
    sub_zone: String,

    /// The node's share of its service's calls relative to the others (1 to
    /// 1000000; 0 leaves it unset, counted as 1).
    #[arg(long, env = "DISCOVERED_WEIGHT", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    weight: u32,

    /// On SIGINT/SIGTERM, mark the node draining (still listed, no new
    /// calls) and wait this many seconds before removing it; 0 removes it
    /// at once.
    #[arg(long, env = "DISCOVERED_DRAIN_SECONDS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=3600))]
    drain_seconds: u64,
}

/// Runs the agent until SIGINT or SIGTERM; returns the exit code.
/// `secret_flags` are the secrets given on the command line (warned about
/// once logging is up).
pub fn run(args: AgentArgs, secret_flags: Vec<&'static str>) -> ExitCode {
    logging::init(LogFormat::Text);
    super::warn_secrets_on_command_line(&secret_flags);
    let node = args
        .node
        .clone()
        .unwrap_or_else(|| crate::hostfacts::gather().hostname);
    let connect = match args.connect.options() {
        Ok(c) => c,
        Err(e) => return runtime::fail(e.to_string(), ExitCode::FAILURE),
    };
    let config = AgentConfig {
        server: args.server,
        connect,
        group: args.group,
        service: args.service,
        node,
        port: args.port,
        ip: args.ip,
        ttl: Duration::from_secs(args.ttl),
        metadata: args.meta.into_iter().collect::<HashMap<_, _>>(),
        auto: !args.no_auto,
        locality: locality(args.region, args.zone, args.sub_zone),
        weight: args.weight,
        drain: Duration::from_secs(args.drain_seconds),
    };
    runtime::block_on(Threads::PerCore, async {
        runtime::finish(agent::run(config, super::signal::shutdown()).await)
    })
}

/// The locality the flags give; `None` when they give none.
fn locality(region: String, zone: String, sub_zone: String) -> Option<pb::Locality> {
    let l = pb::Locality {
        region,
        zone,
        sub_zone,
    };
    (l != pb::Locality::default()).then_some(l)
}
