//! The integration tests, as one test binary (one link step instead of one
//! per file). Each module is what used to be a file of its own under
//! `tests/`; `common` is the support kit they share.

mod common;

mod agent;
mod binary;
mod cli;
mod client;
mod conformance;
mod heartbeat;
mod host_facts;
mod redis_store;
mod side_services;
mod watch;
mod watch_faults;
