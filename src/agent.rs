//! The node-side agent: keeps one node registered for as long as it runs.
//!
//! It registers the node (with the machine's facts unless told not to) under
//! a fresh instance id, heartbeats every ttl/3, registers again when a
//! heartbeat says the node is gone (it expired while the server or Redis
//! was away), and removes its own registration when it stops, after
//! marking it draining for `drain` when one is set (so that clients stop
//! sending it new calls before it goes: a rolling restart loses none).
//! Failures are
//! retried with exponential backoff and jitter, capped at ttl/3, and logged
//! once per change of state rather than once per retry.

use std::collections::HashMap;
use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::time::Duration;

use tonic::Code;

use crate::backoff::Backoff;
use crate::client::{Client, ClientError, ConnectOptions};
use crate::hostfacts;
use crate::proto::v1 as pb;

/// What the agent keeps registered.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `host:port` or URL of a `discovered` server.
    pub server: String,
    /// TLS and token for reaching it.
    pub connect: ConnectOptions,
    /// The group; empty for the server's default.
    pub group: String,
    /// The service the node belongs to.
    pub service: String,
    /// The node's name.
    pub node: String,
    /// The port the node serves on.
    pub port: u32,
    /// The addresses the node is reached at; when empty, the machine's
    /// own (with `auto`), which never include loopback.
    pub ip: Vec<String>,
    /// The node's TTL; the agent heartbeats every third of it.
    pub ttl: Duration,
    /// Extra labels.
    pub metadata: HashMap<String, String>,
    /// Fill in the machine's facts (addresses, OS, CPUs, memory, ...).
    pub auto: bool,
    /// Where the node runs, if said.
    pub locality: Option<pb::Locality>,
    /// Its share of the service's calls; 0: unset.
    pub weight: u32,
    /// At shutdown, how long the node stays listed as draining before it
    /// is removed; zero removes it at once.
    pub drain: Duration,
}

/// The registration the agent sends: explicit values first, the machine's
/// facts where those leave a field empty.
pub fn registration(config: &AgentConfig, instance_id: &str) -> pb::RegisterNodeRequest {
    let mut req = pb::RegisterNodeRequest {
        service_group: config.group.clone(),
        service_name: config.service.clone(),
        node_name: config.node.clone(),
        port: config.port,
        ip: config.ip.clone(),
        metadata: config.metadata.clone(),
        ttl_seconds: Some(config.ttl.as_secs() as i64),
        // The agent sends the facts itself; the server must not put the
        // connection's address in their place.
        auto: Some(false),
        instance_id: instance_id.into(),
        locality: config.locality.clone(),
        weight: config.weight,
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

/// Where the agent stands; each variant says what it does next.
#[derive(Debug)]
enum State {
    /// Not registered (at start, or the node was found gone): send the
    /// registration.
    Registering(Option<Outage>),
    /// Registered: renew the node's TTL.
    Renewing(Option<Outage>),
    /// Between two calls: wait (the heartbeat interval, or a backoff after
    /// a failure), then go on to the state inside; a shutdown cuts it short.
    Waiting(Duration, Box<State>),
    /// Another instance registered the node over ours (a rolling restart):
    /// send nothing more, and at shutdown leave the node to its owner.
    TakenOver,
    /// Shut down: remove our own registration, then finish.
    Stopping,
}

/// Failed calls in a row, so an outage is logged once rather than once per
/// retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Outage {
    /// The status of the last failure; a different one is logged again.
    code: Code,
    /// How many; the backoff grows with them.
    failures: u32,
}

/// The call that [`State::Registering`] or [`State::Renewing`] sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    /// RegisterNode, with this run's instance id.
    Register,
    /// Heartbeat, for this run's instance id only.
    Heartbeat,
}

impl Call {
    /// The state that sends this call again.
    fn again(self, outage: Option<Outage>) -> State {
        match self {
            Call::Register => State::Registering(outage),
            Call::Heartbeat => State::Renewing(outage),
        }
    }
}

/// The next state, or the end of the run with its result.
type Step = ControlFlow<Result<(), ClientError>, State>;

/// What one run of the agent sends, fixed when it starts.
struct Agent {
    config: AgentConfig,
    client: Client,
    instance_id: String,
    request: pb::RegisterNodeRequest,
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
    let agent = Agent::new(config).await?;
    tokio::pin!(shutdown);
    let mut state = State::Registering(None);
    loop {
        state = match agent.step(state, shutdown.as_mut()).await {
            ControlFlow::Continue(next) => next,
            ControlFlow::Break(result) => return result,
        };
    }
}

impl Agent {
    /// A fresh instance id and its registration, for a server reached
    /// lazily: the agent starts whether or not the server is up.
    async fn new(config: AgentConfig) -> Result<Self, ClientError> {
        let client = Client::lazy_with(&config.server, &config.connect)?;
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
        tracing::info!(server = %config.server, service = %config.service, node = %config.node, instance_id = %instance_id, ttl = ?config.ttl, "agent starting");
        Ok(Self {
            config,
            client,
            instance_id,
            request,
        })
    }

    /// The heartbeat interval, which also caps the backoff.
    fn interval(&self) -> Duration {
        self.config.ttl / 3
    }

    /// Does what `state` says and moves on.
    async fn step(&self, state: State, shutdown: Pin<&mut impl Future<Output = ()>>) -> Step {
        match state {
            // Registering: send the registration, then see how it went.
            State::Registering(outage) => self.send(Call::Register, outage).await,
            // Renewing: send a heartbeat, then see how it went.
            State::Renewing(outage) => self.send(Call::Heartbeat, outage).await,
            // Waiting: the interval or a backoff, unless a shutdown comes first.
            State::Waiting(wait, then) => tokio::select! {
                _ = shutdown => ControlFlow::Continue(State::Stopping),
                _ = tokio::time::sleep(wait) => ControlFlow::Continue(*then),
            },
            // Taken over: idle until shutdown, then finish without removing.
            State::TakenOver => {
                shutdown.await;
                ControlFlow::Break(Ok(()))
            }
            // Stopping: drain, remove our own registration, then finish.
            State::Stopping => {
                self.drain().await;
                self.remove().await;
                ControlFlow::Break(Ok(()))
            }
        }
    }

    /// Sends `call`, then moves on as [`Agent::after`] says.
    async fn send(&self, call: Call, outage: Option<Outage>) -> Step {
        let sent = match call {
            Call::Register => self
                .client
                .register_node(self.request.clone())
                .await
                .map(drop),
            Call::Heartbeat => self.heartbeat().await,
        };
        self.after(call, outage, sent)
    }

    /// The state that follows `call`'s outcome, `sent`, after the run of
    /// failures `outage`; each change is logged once.
    fn after(&self, call: Call, outage: Option<Outage>, sent: Result<(), ClientError>) -> Step {
        let node = &self.config.node;
        let next = match sent {
            // Registered or renewed: renew after the interval. Logged when
            // it is news: a registration, or the end of an outage.
            Ok(()) => {
                if call == Call::Register || outage.is_some() {
                    tracing::info!(node = %node, "node registered; heartbeating every {:?}", self.interval());
                }
                State::Waiting(self.interval(), Box::new(State::Renewing(None)))
            }
            // Gone while we could not renew it: register again now.
            Err(e) if e.code() == Code::NotFound => {
                tracing::warn!(node = %node, "node was gone (expired or removed); registering it again");
                State::Registering(None)
            }
            // Another instance took the name over (a rolling restart): stop
            // renewing; stealing it back would make them flap.
            Err(e) if e.code() == Code::FailedPrecondition => {
                tracing::warn!(node = %node, error = %e, "another instance owns the node now; no longer renewing it");
                State::TakenOver
            }
            // Failed: send the same call again after a backoff. Logged when
            // the outage starts or its status changes; a refused request
            // ends the run, as retrying cannot help it.
            Err(e) => {
                let code = e.code();
                let failures = outage.map_or(0, |o| o.failures) + 1;
                if outage.map(|o| o.code) != Some(code) {
                    tracing::warn!(node = %node, error = %e, "cannot reach the registry; retrying with backoff (logged again when this changes)");
                }
                if code == Code::InvalidArgument {
                    return ControlFlow::Break(Err(e));
                }
                let retry = call.again(Some(Outage { code, failures }));
                State::Waiting(backoff(failures, self.interval()), Box::new(retry))
            }
        };
        ControlFlow::Continue(next)
    }

    /// Registers the node as draining and waits `config.drain`, when set,
    /// renewing it meanwhile: it stays listed, and clients stop sending it
    /// new calls.
    async fn drain(&self) {
        let config = &self.config;
        if config.drain.is_zero() {
            return;
        }
        let draining = pb::RegisterNodeRequest {
            status: pb::NodeStatus::Draining as i32,
            ..self.request.clone()
        };
        let marked =
            tokio::time::timeout(Duration::from_secs(5), self.client.register_node(draining));
        match marked.await {
            Ok(Ok(_)) => {
                tracing::info!(node = %config.node, drain = ?config.drain, "node draining; removing it after the drain")
            }
            Ok(Err(e)) => {
                tracing::warn!(node = %config.node, error = %e, "could not mark the node draining; draining anyway")
            }
            Err(_) => {
                tracing::warn!(node = %config.node, "marking the node draining timed out; draining anyway")
            }
        }
        // Renewed meanwhile: a drain longer than the TTL must not end in
        // an expiry.
        let end = tokio::time::Instant::now() + config.drain;
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            tokio::time::sleep(left.min(self.interval())).await;
            if tokio::time::Instant::now() < end {
                let renewal = tokio::time::timeout(Duration::from_secs(5), self.heartbeat());
                if let Ok(Err(e)) = renewal.await {
                    tracing::warn!(node = %config.node, error = %e, "renewing the draining node failed");
                }
            }
        }
    }

    /// Renews this instance's registration of the node.
    async fn heartbeat(&self) -> Result<(), ClientError> {
        let config = &self.config;
        self.client
            .heartbeat(
                &config.group,
                &config.service,
                &config.node,
                Some(config.ttl.as_secs() as i64),
                &self.instance_id,
            )
            .await
            .map(drop)
    }

    /// Removes our own registration only: a successor's stays.
    async fn remove(&self) {
        let config = &self.config;
        let removal = self.client.remove_node(pb::RemoveNodeRequest {
            service_group: config.group.clone(),
            service_name: config.service.clone(),
            node_name: config.node.clone(),
            allow_missing: true,
            instance_id: self.instance_id.clone(),
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
    }
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

    /// An agent for a server nobody listens on: only `after` is called.
    async fn agent() -> Agent {
        Agent::new(AgentConfig {
            server: "127.0.0.1:1".into(),
            connect: ConnectOptions::default(),
            group: String::new(),
            service: "svc".into(),
            node: "n1".into(),
            port: 0,
            ip: Vec::new(),
            ttl: Duration::from_secs(30),
            metadata: HashMap::new(),
            auto: false,
            locality: None,
            weight: 0,
            drain: Duration::ZERO,
        })
        .await
        .expect("a lazy client")
    }

    fn failed(code: Code) -> Result<(), ClientError> {
        Err(tonic::Status::new(code, "test").into())
    }

    #[tokio::test]
    async fn transitions() {
        let a = agent().await;
        let renew = |step: Step| match step {
            ControlFlow::Continue(State::Waiting(wait, next)) => (wait, *next),
            other => panic!("{other:?}"),
        };
        let (wait, next) = renew(a.after(Call::Register, None, Ok(())));
        assert_eq!(wait, Duration::from_secs(10));
        assert!(matches!(next, State::Renewing(None)), "{next:?}");

        let (wait, next) = renew(a.after(Call::Heartbeat, None, failed(Code::Unavailable)));
        assert!(wait <= Duration::from_millis(200), "{wait:?}");
        let State::Renewing(Some(outage)) = next else {
            panic!("{next:?}")
        };
        assert_eq!((outage.code, outage.failures), (Code::Unavailable, 1));
        let (_, next) = renew(a.after(Call::Register, Some(outage), failed(Code::Unknown)));
        assert!(
            matches!(next, State::Registering(Some(o)) if o.failures == 2 && o.code == Code::Unknown),
            "{next:?}"
        );

        let gone = a.after(Call::Heartbeat, Some(outage), failed(Code::NotFound));
        assert!(
            matches!(gone, ControlFlow::Continue(State::Registering(None))),
            "{gone:?}"
        );
        let taken = a.after(Call::Heartbeat, None, failed(Code::FailedPrecondition));
        assert!(
            matches!(taken, ControlFlow::Continue(State::TakenOver)),
            "{taken:?}"
        );
        let refused = a.after(Call::Register, None, failed(Code::InvalidArgument));
        assert!(matches!(refused, ControlFlow::Break(Err(_))), "{refused:?}");
    }

    #[test]
    fn explicit_values_win_over_facts() {
        let config = AgentConfig {
            server: "127.0.0.1:1".into(),
            connect: ConnectOptions::default(),
            group: String::new(),
            service: "svc".into(),
            node: "n1".into(),
            port: 8080,
            ip: vec!["10.9.8.7".into()],
            ttl: Duration::from_secs(30),
            metadata: HashMap::from([("kernel_version".to_string(), "mine".to_string())]),
            auto: true,
            locality: Some(pb::Locality {
                zone: "eu-1".into(),
                ..Default::default()
            }),
            weight: 5,
            drain: Duration::ZERO,
        };
        let req = registration(&config, "abc");
        assert_eq!(req.metadata["kernel_version"], "mine");
        assert_eq!(req.instance_id, "abc");
        assert_eq!(req.ttl_seconds, Some(30));
        assert_eq!(req.weight, 5);
        assert_eq!(req.ip, ["10.9.8.7"], "the given address, not the machine's");
        assert_eq!(req.locality.as_ref().map(|l| l.zone.as_str()), Some("eu-1"));
        assert!(req.cpu_count > 0);
        let bare = registration(
            &AgentConfig {
                auto: false,
                ..config
            },
            "abc",
        );
        assert!(bare.os.is_empty() && bare.cpu_count == 0);
        assert_eq!(
            bare.ip,
            ["10.9.8.7"],
            "given addresses are sent without auto too"
        );
    }
}
