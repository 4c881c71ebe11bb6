//! `discovered`: a service-discovery server that speaks gRPC and keeps its
//! state in Redis (or, for one process, in memory).
//!
//! - [`model`]: the registry's domain types and validation rules.
//! - [`store`]: the [`store::Registry`] trait and its backends.
//! - [`server`]: the gRPC services on top of a registry.
//! - [`client`]: a typed Rust client, with a watch that survives restarts.
//! - [`cli`]: the `discovered` command line.
//! - [`hostfacts`]: the facts of the machine a node runs on, for its
//!   registration.

pub mod agent;
pub mod backoff;
pub mod cli;
pub mod client;
pub mod hostfacts;
pub mod model;
pub mod proto;
pub mod server;
pub mod store;
