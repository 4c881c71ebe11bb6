//! `discovered`: a service-discovery server that speaks gRPC and keeps its
//! state in Redis (or, for one process, in memory).
//!
//! # Layout
//!
//! - [`proto`]: the API types generated from the proto, and their
//!   conversions to and from the domain types.
//! - [`model`]: the registry's domain types and validation rules.
//! - [`client`]: a typed Rust client, with a watch that survives restarts.
//! - [`auth`]: tokens, certificate identities, roles and scopes (feature
//!   `server`).
//! - [`backoff`]: the one exponential backoff every retry loop uses.
//! - [`agent`]: keeps one node registered (feature `agent`).
//! - [`hostfacts`]: the facts of the machine a node runs on, for its
//!   registration (feature `agent`).
//! - [`store`]: the [`store::Registry`] trait and its backends (feature
//!   `server`).
//! - [`server`]: the gRPC services on top of a registry (feature `server`).
//! - [`cli`]: the `discovered` command line (feature `server`).
//!
//! # Features
//!
//! `server` (on by default, implies `agent`) builds everything. With
//! `default-features = false` the crate is the API types, the model and the
//! client, without Redis, the server or the command line; add `agent` for
//! the node agent.

#[cfg(feature = "agent")]
pub mod agent;
#[cfg(feature = "server")]
pub mod auth;
pub mod backoff;
#[cfg(feature = "server")]
pub mod cli;
pub mod client;
#[cfg(feature = "agent")]
pub mod hostfacts;
#[cfg(feature = "server")]
pub mod http;
#[cfg(feature = "server")]
pub mod metrics;
pub mod model;
pub mod proto;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod store;
