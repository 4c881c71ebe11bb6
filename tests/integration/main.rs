//! The integration tests, as one test binary (one link step instead of one
//! per file; cargo finds `tests/integration/main.rs` by itself). Each module
//! is what used to be a file of its own under `tests/`; `common` is the
//! support kit they share.
//!
//! A new test file goes next to this one, as `mod name;` below, and takes
//! the kit with `use crate::common::*;` (not `mod common;`).

mod common;

mod agent;
mod auth;
mod binary;
mod cli;
mod client;
mod cluster;
mod cluster_events;
mod cluster_faults;
mod conformance;
mod decoding;
mod decoding_framing;
mod heartbeat;
mod host_facts;
mod large;
mod limits;
mod migration;
mod nofile;
mod ownership;
mod read_cache;
mod redis_scripts;
mod redis_store;
mod refused_writes;
mod secrets;
mod sentinel;
mod side_port;
mod side_services;
mod storm;
mod tls;
mod watch;
mod watch_faults;
mod xds;
