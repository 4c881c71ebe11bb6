//! Starting the async runtime and ending the process, the same way for
//! every subcommand.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

/// The threads a subcommand's runtime gets.
pub(super) enum Threads {
    /// One: a client command waits on a call or two, or on one stream.
    One,
    /// A worker per core: the server, and the agent beside its host's work.
    PerCore,
}

/// Runs `main` on a new runtime and returns its exit code; if no runtime
/// can start, says so on stderr and fails.
pub(super) fn block_on(threads: Threads, main: impl Future<Output = ExitCode>) -> ExitCode {
    let runtime = match threads {
        Threads::One => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Threads::PerCore => tokio::runtime::Runtime::new(),
    };
    match runtime {
        Ok(runtime) => runtime.block_on(main),
        Err(e) => fail(
            format_args!("cannot start the async runtime: {e}"),
            ExitCode::FAILURE,
        ),
    }
}

/// Success, or [`fail`] with exit code 1.
pub(super) fn finish(result: Result<(), impl Display>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e, ExitCode::FAILURE),
    }
}

/// Writes `error: MESSAGE` to stderr and returns `code`. One plain line,
/// whatever the log format: it is what an operator or a script reads when
/// a command fails.
pub(super) fn fail(message: impl Display, code: ExitCode) -> ExitCode {
    eprintln!("error: {message}");
    code
}
