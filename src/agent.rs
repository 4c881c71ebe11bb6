//! The node-side agent: keeps one node registered for as long as it runs.
//!
//! It registers the node (with the machine's facts unless told not to) under
//! a fresh instance id, heartbeats every ttl/3, registers again when a
//! heartbeat says the node is gone (it expired while the server or Redis
//! was away), and removes its own registration when it stops. Failures are
//! retried with exponential backoff and jitter, capped at ttl/3, and logged
//! once per change of state rather than once per retry.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tonic::Code;

use crate::backoff::Backoff;
use crate::client::{Client, ClientError};
use crate::hostfacts;
use crate::proto::v1 as pb;

/// What the agent keeps registered.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `host:port` or URL of a `discovered` server.
    pub server: String,
    /// The group; empty for the server's default.
    pub group: String,
    /// The service the node belongs to.
    pub service: String,
    /// The node's name.
    pub node: String,
    /// The port the node serves on.
    pub port: u32,
    /// The node's TTL; the agent heartbeats every third of it.
    pub ttl: Duration,
    /// Extra labels.
    pub metadata: HashMap<String, String>,
    /// Fill in the machine's facts (addresses, OS, CPUs, memory, ...).
    pub auto: bool,
}

/// The registration the agent sends: explicit values first, the machine's
/// facts where those leave a field empty.
pub fn registration(config: &AgentConfig, instance_id: &str) -> pb::RegisterNodeRequest {
    let mut req = pb::RegisterNodeRequest {
        service_group: config.group.clone(),
        service_name: config.service.clone(),
        node_name: config.node.clone(),
        port: config.port,
        metadata: config.metadata.clone(),
        ttl_seconds: Some(config.ttl.as_secs() as i64),
        // The agent sends the facts itself; the server must not put the
        // connection's address in their place.
        auto: Some(false),
        instance_id: instance_id.into(),
        ..Default::default()
    };
    if config.auto {
        with_host_facts(&mut req);
    }
    req
}

/// Fills the fields of `req` that it leaves empty with this machine's
/// facts (see [`hostfacts`]); explicit values win. Blocks briefly (files,
/// the resolver).
pub fn with_host_facts(req: &mut pb::RegisterNodeRequest) {
    hostfacts::gather().fill(req);
}

/// What the agent last saw, so each change is logged once.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Starting,
    Registered,
    Failing(Code),
}

/// The wait after `failures` consecutive failures: 200 ms doubling, capped
/// at `cap`, jittered so a fleet does not retry in step.
fn backoff(failures: u32, cap: Duration) -> Duration {
    Backoff::new(Duration::from_millis(200), cap)
        .jittered()
        .delay(failures.saturating_sub(1))
}

/// Runs until `shutdown` completes, then removes the node (this instance's
/// registration only) and returns.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ClientError> {
    let client = Client::lazy(&config.server)?;
    let instance_id = crate::model::new_instance_id();
    // Gathering facts reads files and asks the resolver: off the runtime.
    let request = {
        let (config, id) = (config.clone(), instance_id.clone());
        tokio::task::spawn_blocking(move || registration(&config, &id)).await
    }
    .unwrap_or_else(|e| {
        tracing::warn!(error = %e, "gathering host facts failed; registering without them");
        registration(
            &AgentConfig {
                auto: false,
                ..config.clone()
            },
            &instance_id,
        )
    });
    let interval = config.ttl / 3;
    let mut state = State::Starting;
    let mut registered = false;
    let mut failures = 0u32;
    tracing::info!(server = %config.server, service = %config.service, node = %config.node, instance_id = %instance_id, ttl = ?config.ttl, "agent starting");
    tokio::pin!(shutdown);
    loop {
        let outcome = if registered {
            client
                .heartbeat(
                    &config.group,
                    &config.service,
                    &config.node,
                    Some(config.ttl.as_secs() as i64),
                    &instance_id,
                )
                .await
                .map(|_| ())
        } else {
            client.register_node(request.clone()).await.map(|_| ())
        };
        let next_state = match &outcome {
            Ok(()) => State::Registered,
            Err(e) => State::Failing(e.code()),
        };
        match outcome {
            Ok(()) => {
                if !registered || state != State::Registered {
                    tracing::info!(node = %config.node, "node registered; heartbeating every {:?}", interval);
                }
                registered = true;
                failures = 0;
            }
            Err(e) if e.code() == Code::NotFound => {
                // Gone while we could not renew it: register again now.
                tracing::warn!(node = %config.node, "node was gone (expired or removed); registering it again");
                registered = false;
                failures = 0;
                state = State::Starting;
                continue;
            }
            Err(e) if e.code() == Code::FailedPrecondition => {
                // Another instance took the name over (a rolling restart):
                // stop renewing; stealing it back would make them flap.
                tracing::warn!(node = %config.node, error = %e, "another instance owns the node now; no longer renewing it");
                shutdown.as_mut().await;
                return Ok(());
            }
            Err(e) => {
                failures += 1;
                if state != next_state {
                    tracing::warn!(node = %config.node, error = %e, "cannot reach the registry; retrying with backoff (logged again when this changes)");
                }
                if e.code() == Code::InvalidArgument {
                    return Err(e);
                }
            }
        }
        state = next_state;
        let wait = if failures == 0 {
            interval
        } else {
            backoff(failures, interval)
        };
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    // Remove our own registration only: a successor's stays.
    let removal = client.remove_node(pb::RemoveNodeRequest {
        service_group: config.group.clone(),
        service_name: config.service.clone(),
        node_name: config.node.clone(),
        allow_missing: true,
        instance_id,
    });
    match tokio::time::timeout(Duration::from_secs(5), removal).await {
        Ok(Ok(_)) => tracing::info!(node = %config.node, "node removed; agent stopped"),
        Ok(Err(e)) => {
            tracing::warn!(node = %config.node, error = %e, "could not remove the node; it will expire")
        }
        Err(_) => {
            tracing::warn!(node = %config.node, "removing the node timed out; it will expire")
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let cap = Duration::from_secs(10);
        for failures in 1..40 {
            let d = backoff(failures, cap);
            assert!(d <= cap, "{failures}: {d:?}");
            assert!(d >= Duration::from_millis(100), "{failures}: {d:?}");
        }
        assert!(backoff(30, cap) >= cap / 2);
    }

    #[test]
    fn explicit_values_win_over_facts() {
        let config = AgentConfig {
            server: "127.0.0.1:1".into(),
            group: String::new(),
            service: "svc".into(),
            node: "n1".into(),
            port: 8080,
            ttl: Duration::from_secs(30),
            metadata: HashMap::from([("kernel_version".to_string(), "mine".to_string())]),
            auto: true,
        };
        let req = registration(&config, "abc");
        assert_eq!(req.metadata["kernel_version"], "mine");
        assert_eq!(req.instance_id, "abc");
        assert_eq!(req.ttl_seconds, Some(30));
        assert!(req.cpu_count > 0);
        let bare = registration(
            &AgentConfig {
                auto: false,
                ..config
            },
            "abc",
        );
        assert!(bare.ip.is_empty() && bare.os.is_empty() && bare.cpu_count == 0);
    }
}
