//! The `discovered` binary; everything lives in the library's `cli` module.

fn main() -> std::process::ExitCode {
    discovered::cli::main()
}
