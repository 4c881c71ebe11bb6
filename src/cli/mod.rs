//! The `discovered` command line.

mod agent;
mod serve;

use clap::{Parser, Subcommand};

/// A service-discovery server: services register their nodes, clients
/// look them up. Speaks gRPC; keeps its state in Redis, or in memory for a
/// single process.
#[derive(Debug, Parser)]
#[command(name = "discovered", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gRPC server.
    Serve(serve::ServeArgs),
    /// Keep this machine's node registered: register with its host facts,
    /// heartbeat every ttl/3, re-register after outages, remove on
    /// SIGINT/SIGTERM.
    Agent(agent::AgentArgs),
}

/// Parses the command line and runs it; returns the process exit code.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Agent(args) => agent::run(args),
    }
}
