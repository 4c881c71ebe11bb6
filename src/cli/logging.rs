//! Logs on stderr, for the long-running subcommands (`serve`, `agent`).

use std::io::IsTerminal;

use clap::ValueEnum;

/// How logs are written to stderr.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The levels without RUST_LOG: ours at info; redis-rs's only at error,
/// since its cluster connection warns about every node it fails to reach,
/// which the server already says once, in its own words (at start, and
/// when a shard fails over).
const DEFAULT_LEVELS: &str = "info,redis=error";

/// Sends `tracing` to stderr in `format`, at the levels RUST_LOG asks for
/// ([`DEFAULT_LEVELS`] without it): stdout stays free for what a command
/// prints.
pub(super) fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LEVELS));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal: in a file, a pipe or a
        // log collector the escape codes are noise around every field.
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
