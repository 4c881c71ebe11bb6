//! The `discovered` command line.
//!
//! One module per subcommand (`serve`, `agent`, and the client commands in
//! `commands`), plus what they share: `logging`, `signal` (SIGINT/SIGTERM),
//! `runtime` (start-up and exit), `output` (tables and JSON) and
//! `parse_meta` here.

mod agent;
mod commands;
mod connect;
mod logging;
mod nofile;
mod output;
mod runtime;
mod serve;
mod signal;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

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
    // Boxed: the server's flags make this variant many times the others.
    Serve(Box<serve::ServeArgs>),
    /// Keep this machine's node registered: register with its host facts,
    /// heartbeat every ttl/3, re-register after outages, remove on
    /// SIGINT/SIGTERM.
    Agent(agent::AgentArgs),
    // The client commands (register-service, nodes, watch, ...), listed
    // at this level; their exit codes are documented in `commands`.
    #[command(flatten)]
    Client(commands::ClientCommand),
}

/// Parses the command line and runs it; returns the process exit code.
/// A bad or missing flag is one line on stderr and exit code 2.
pub fn main() -> std::process::ExitCode {
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|cli| (cli, m)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            eprintln!("{}", one_line(&e.render().to_string()));
            return std::process::ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Serve(args) => {
            let on_command_line = matches
                .subcommand_matches("serve")
                .map(serve::secrets_on_command_line)
                .unwrap_or_default();
            serve::run(*args, on_command_line)
        }
        Command::Agent(args) => agent::run(args, token_on_command_line(&matches)),
        Command::Client(cmd) => {
            for flag in token_on_command_line(&matches) {
                eprintln!("warning: {}", secret_flag_warning(flag));
            }
            commands::run(cmd)
        }
    }
}

/// `--token`, if the subcommand's token came from the command line.
fn token_on_command_line(matches: &ArgMatches) -> Vec<&'static str> {
    matches
        .subcommand()
        .map(|(_, sub)| secrets_given_as_flags(sub, &[("token", "--token")]))
        .unwrap_or_default()
}

/// The flags among `secrets` (`(argument id, flag)`) whose value came from
/// the command line rather than the environment: it shows in `ps` and in
/// shell history, so the command warns, naming the flag, never the value.
/// `serve` checks its passwords with it; a client command's `--token` can
/// be added the same way.
fn secrets_given_as_flags(
    matches: &ArgMatches,
    secrets: &[(&str, &'static str)],
) -> Vec<&'static str> {
    secrets
        .iter()
        .filter(|(id, _)| matches.value_source(id) == Some(ValueSource::CommandLine))
        .map(|(_, flag)| *flag)
        .collect()
}

/// Warns once per flag in `flags` (see [`secrets_given_as_flags`]): call
/// after logging is set up.
fn warn_secrets_on_command_line(flags: &[&str]) {
    for flag in flags {
        tracing::warn!(flag = %flag, "{}", secret_flag_warning(flag));
    }
}

/// What to say about a secret given as `flag`: where it shows, and the
/// environment variable to use instead. Never the value.
fn secret_flag_warning(flag: &str) -> String {
    let env = format!(
        "DISCOVERED_{}",
        flag.trim_start_matches('-')
            .replace('-', "_")
            .to_uppercase()
    );
    format!(
        "a secret was given on the command line with {flag}, where other users can read it in the process list; set {env} instead"
    )
}

/// The first paragraph of a clap error as one line, pointing at --help:
/// scripts and operators read one line.
fn one_line(message: &str) -> String {
    let first: Vec<&str> = message
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    format!("{} (see --help)", first.join(" "))
}

/// A `--meta KEY=VALUE` flag as a pair; the key must not be empty.
fn parse_meta(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::{one_line, parse_meta};

    #[test]
    fn meta_is_key_equals_value() {
        assert_eq!(parse_meta("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_meta("a="), Ok(("a".into(), String::new())));
        assert!(parse_meta("=b").is_err());
        assert!(parse_meta("ab").is_err());
    }

    #[test]
    fn clap_errors_become_one_line() {
        let msg = "error: the following required arguments were not provided:\n  --service <SERVICE>\n\nUsage: discovered agent --service <SERVICE>\n";
        assert_eq!(
            one_line(msg),
            "error: the following required arguments were not provided: --service <SERVICE> (see --help)"
        );
    }
}
