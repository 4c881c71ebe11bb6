//! The `discovered` binary; everything lives in the library's `cli` module.

/// jemalloc, so that memory goes back to the OS after a burst (issue 11;
/// `cargo bench --bench streams`, numbers in bench/README.md). 2026-11-29,
/// 5 s after 20,000 watch streams opened and closed (peak ~505-550 MiB):
/// glibc malloc still held 340-455 MiB (MALLOC_ARENA_MAX=2: 380-430),
/// mimalloc ~805 MiB, jemalloc with its defaults 335-390 MiB, jemalloc
/// with the settings below 21 MiB (baseline ~11). And after 1,000 streams
/// that fell behind read again and closed: glibc ~970 MiB, this 33 MiB.
/// It costs ~1 MiB at rest and ~27.5 instead of ~25.5 KiB per open stream.
/// Only the binary sets it: the library leaves the allocator to its users.
#[cfg(unix)]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings (the `_RJEM_MALLOC_CONF` environment variable can
/// override them): a background thread purges unused pages after about a
/// second, also while the server is idle. Without it jemalloc purges only
/// when the server allocates, with a 10 s decay (the 335-390 MiB above).
#[cfg(unix)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &u8 = &b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:1000\0"[0];

fn main() -> std::process::ExitCode {
    discovered::cli::main()
}
